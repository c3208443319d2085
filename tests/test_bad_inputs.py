"""Bad input to every command, as a hostile but realistic user gives it (issue 13).

Each row of :data:`CASES` is one command line that must fail cleanly: a non-zero exit, exactly one
line on stderr (counting warnings logged on the way) that starts ``metalab: error``, names the
offending file, flag or value (every ``needle`` of the row appears in it), and no traceback.
The runs it needs are trained once per module on tiny data: ProtoNet and 3-way MAML on the PNG
glyph fixture, MAML on sinusoids for 2 steps. ``{name}`` in a row is a path of :func:`ws`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from metalab.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from fixtures.glyphs import glyph_dataset, png_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SINUSOID = ROOT / "configs" / "sinusoid" / "maml-cpu.yaml"
LONG = "n" * 300  # one path component longer than any file system allows (255)
HUGE_SEED = str(2**64)

TINY = {
    "data": {"dataset": "folder"},
    "train": {
        "steps": 2,
        "ways": 3,
        "shots": 1,
        "queries": 2,
        "val_every": 2,
        "val_episodes": 2,
        "tensorboard": False,
    },
    "eval": {"ways": 3, "shots": 1, "queries": 2, "episodes": 4},
}


def _yaml(path: Path, algorithm: dict) -> Path:
    path.write_text(yaml.safe_dump({"algorithm": algorithm, **TINY}))
    return path


def _read_only_dir(d: Path) -> Path:
    """A folder nothing can be created in: chmod 555, or (as root, who ignores modes) a path in
    sysfs, where mkdir is not permitted."""
    d.mkdir()
    d.chmod(0o555)
    if not os.access(d, os.W_OK):
        return d
    return Path("/sys/metalab-read-only")


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse
        return e.code if isinstance(e.code, int) else 1


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict[str, str]:
    """The workspace: trained runs, good and bad data, bad configs and checkpoints."""
    d = tmp_path_factory.mktemp("bad-inputs")
    # a private registry ('off' breaks train: experiments/record.py calls None.update)
    registry = os.environ.get("METALAB_REGISTRY")
    os.environ["METALAB_REGISTRY"] = str(d / "registry.db")
    glyphs = glyph_dataset(d / "glyphs")
    p: dict[str, Path] = {"d": d, "glyphs": glyphs, "sinusoid": SINUSOID}
    p["pny"] = _yaml(d / "pn.yaml", {"name": "protonet", "hidden": 8})
    p["mamly"] = _yaml(d / "maml.yaml", {"name": "maml", "hidden": 8})
    for name, cfg, extra in (
        ("pn", p["pny"], ["--data-dir", str(glyphs)]),
        ("maml", p["mamly"], ["--data-dir", str(glyphs)]),
        ("sin", SINUSOID, ["--steps", "2", "--set", "train.val_every=0"]),
    ):
        argv = ["train", str(cfg), "--out", str(d / name), "--quiet", *extra]
        assert main(argv + ["--set", "train.tensorboard=false"]) == 0, name
        p[name] = d / name

    # config files
    bad = {
        "empty.yaml": b"",
        "comment.yaml": b"# nothing but a comment\n",
        "scalar.yaml": b"42\n",
        "string.yaml": b"protonet\n",
        "list.yaml": b"- algorithm: protonet\n- train: {steps: 1}\n",
        "latin1.yaml": "algorithm: protonet # caf\xe9\n".encode("latin-1"),
        "dup.yaml": b"algorithm: protonet\ntrain: {steps: 2}\ntrain: {steps: 3}\n",
        "dupinner.yaml": b"algorithm: protonet\ntrain: {steps: 2, steps: 3}\n",
        "unknown.yaml": b"algorithm: protonet\ntrian: {steps: 2}\n",
        "unknownkey.yaml": b"algorithm: protonet\ntrain: {setps: 2}\n",
        "unknownalgo.yaml": b"algorithm: protonett\n",
        "noname.yaml": b"algorithm: {distance: cosine}\n",
        "algolist.yaml": b"algorithm: [protonet]\n",
        "badyaml.yaml": b"algorithm: {name: protonet\ntrain: [\n",
        "tab.yaml": b"algorithm: protonet\n\ttrain: 1\n",
        "pytag.yaml": b"algorithm: !!python/object/apply:os.system [ls]\n",
        "trainlist.yaml": b"algorithm: protonet\ntrain: [1, 2]\n",
        "stepsstr.yaml": b"algorithm: protonet\ntrain: {steps: many}\n",
        "deep.yaml": b"algorithm: protonet\nx: " + b"[" * 2000 + b"]" * 2000 + b"\n",
        "binary.yaml": bytes(range(256)),
        "badalgokey.yaml": b"algorithm: {name: protonet, distanse: cosine}\n",
        "lrnan.yaml": b"algorithm: protonet\ntrain: {lr: .nan}\n",
        "stepsneg.yaml": b"algorithm: protonet\ntrain: {steps: -3}\n",
    }
    (d / "configs").mkdir()
    for name, content in bad.items():
        (d / "configs" / name).write_bytes(content)
        p["c_" + name.removesuffix(".yaml")] = d / "configs" / name

    # plain files and folders in the wrong places
    p["file"] = d / "plain.txt"
    p["file"].write_text("not what you wanted\n")
    p["emptydir"] = d / "emptydir"
    p["emptydir"].mkdir()
    p["missing"] = d / "no-such-thing"
    p["ro"] = _read_only_dir(d / "read-only")
    p["nonempty"] = d / "nonempty"
    p["nonempty"].mkdir()
    (p["nonempty"] / "notes.txt").write_text("mine\n")
    p["runlike"] = d / "runlike"
    p["runlike"].mkdir()
    (p["runlike"] / "metrics.jsonl").write_text('{"step": 1}\n')

    # checkpoints
    p["junk"] = d / "junk.pt"
    p["junk"].write_bytes(b"\x00\x01 certainly not a checkpoint " * 20)
    p["zero"] = d / "zero.pt"
    p["zero"].write_bytes(b"")
    best = (p["pn"] / "best.pt").read_bytes()
    p["torn"] = d / "torn.pt"
    p["torn"].write_bytes(best[: len(best) // 2])
    state = torch.load(p["pn"] / "best.pt", weights_only=True)
    p["nomodel"] = d / "nomodel.pt"
    torch.save({k: v for k, v in state.items() if k != "model"}, p["nomodel"])
    p["noconfig"] = d / "noconfig.pt"
    torch.save({k: v for k, v in state.items() if k != "config"}, p["noconfig"])
    p["badshape"] = d / "badshape.pt"
    torch.save(state | {"input_shape": "wide"}, p["badshape"])
    p["otheralgo"] = d / "otheralgo.pt"  # ProtoNet weights under MAML's name
    maml_cfg = torch.load(p["maml"] / "best.pt", weights_only=True)["config"]
    torch.save(state | {"algorithm": "maml", "config": maml_cfg}, p["otheralgo"])
    p["goneaway"] = d / "goneaway.pt"
    torch.save(state | {"algorithm": "alchemy"}, p["goneaway"])
    p["notdict"] = d / "notdict.pt"
    torch.save([1, 2, 3], p["notdict"])
    p["nobest"] = d / "nobest"  # a run folder with only its config
    p["nobest"].mkdir()
    (p["nobest"] / "config.yaml").write_text((p["pn"] / "config.yaml").read_text())

    # image data
    p["sup"] = glyphs / "test"
    p["q"] = glyphs / "test" / "class00" / "0.png"
    p["q2"] = glyphs / "test" / "class01" / "0.png"
    p["onecls"] = d / "onecls"
    png_folder(p["onecls"], 1, 3, 5)
    p["emptycls"] = d / "emptycls"
    png_folder(p["emptycls"], 2, 2, 6)
    (p["emptycls"] / "class02").mkdir()
    p["nested"] = d / "nested"  # a class whose images are only in a sub-folder
    png_folder(p["nested"], 2, 2, 7)
    png_folder(p["nested"] / "class02", 1, 2, 8)
    p["flat"] = d / "flat"  # images directly in the folder, no class folders
    p["flat"].mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(p["flat"] / f"{i}.png")
    p["corrupt"] = d / "corrupt.png"
    p["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    p["emptypng"] = d / "empty.png"
    p["emptypng"].write_bytes(b"")
    p["textpng"] = d / "text.png"
    p["textpng"].write_text("hello\n")
    p["corruptsup"] = d / "corruptsup"
    png_folder(p["corruptsup"], 2, 2, 9)
    (p["corruptsup"] / "class01" / "9.png").write_bytes(b"GIF89a broken")
    p["manysup"] = d / "manysup"  # more classes than the 3-way MAML head has outputs
    png_folder(p["manysup"], 5, 2, 10)
    p["twosup"] = d / "twosup"
    png_folder(p["twosup"], 2, 2, 11)

    # datasets with a defect, in the folder layout (train/ val/ test/)
    p["d_noclass"] = d / "d_noclass"
    for split in ("train", "val", "test"):
        (p["d_noclass"] / split).mkdir(parents=True)
    p["d_fewimg"] = d / "d_fewimg"
    for split in ("train", "val", "test"):
        png_folder(p["d_fewimg"] / split, 4, 1, 12)
    p["d_fewcls"] = d / "d_fewcls"
    for split in ("train", "val", "test"):
        png_folder(p["d_fewcls"] / split, 2, 6, 13)
    p["d_corrupt"] = d / "d_corrupt"
    glyph_dataset(p["d_corrupt"])
    (p["d_corrupt"] / "train" / "class03" / "2.png").write_bytes(b"\x89PNG broken")
    p["d_notest"] = d / "d_notest"
    png_folder(p["d_notest"] / "train", 4, 6, 14)
    p["d_filesplit"] = d / "d_filesplit"
    p["d_filesplit"].mkdir()
    (p["d_filesplit"] / "test").write_text("a file where the test folder should be\n")

    # challenge runs that are not
    p["notzip"] = d / "all_runs.zip"
    p["notzip"].write_text("not a zip\n")
    yield {k: str(v) for k, v in p.items()}
    if registry is None:
        del os.environ["METALAB_REGISTRY"]
    else:
        os.environ["METALAB_REGISTRY"] = registry


# (id, command line with {workspace paths}, text the one line must contain)
CASES: list[tuple[str, str, list[str]]] = [
    # --- the command line itself
    ("no-command", "", ["command"]),
    ("unknown-command", "trian", ["trian"]),
    ("unknown-flag", "eval {pn} --wayz 5", ["--wayz"]),
    ("list-extra-arg", "list protonet", ["protonet"]),
    ("list-unknown-flag", "list --all", ["--all"]),
    # --- train: the config file
    ("train-config-missing", "train {missing}.yaml --out {new}", ["no-such-thing.yaml"]),
    ("train-config-is-dir", "train {emptydir} --out {new}", ["emptydir", "is a folder"]),
    ("train-config-too-long", "train {d}/" + LONG + ".yaml --out {new}", [LONG[:40]]),
    ("train-config-empty", "train {c_empty} --out {new}", ["empty.yaml", "empty"]),
    ("train-config-comment-only", "train {c_comment} --out {new}", ["comment.yaml", "empty"]),
    ("train-config-scalar", "train {c_scalar} --out {new}", ["scalar.yaml", "mapping"]),
    ("train-config-string", "train {c_string} --out {new}", ["string.yaml", "mapping"]),
    ("train-config-list", "train {c_list} --out {new}", ["list.yaml", "mapping"]),
    ("train-config-latin1", "train {c_latin1} --out {new}", ["latin1.yaml", "UTF-8"]),
    ("train-config-binary", "train {c_binary} --out {new}", ["binary.yaml"]),
    ("train-config-dup-key", "train {c_dup} --out {new}", ["dup.yaml", "'train'", "twice"]),
    ("train-config-dup-inner", "train {c_dupinner} --out {new}", ["'steps'", "twice"]),
    ("train-config-unknown-section", "train {c_unknown} --out {new}", ["trian", "train"]),
    ("train-config-unknown-key", "train {c_unknownkey} --out {new}", ["train.setps", "steps"]),
    ("train-config-unknown-algo", "train {c_unknownalgo} --out {new}", ["protonett"]),
    ("train-config-algo-no-name", "train {c_noname} --out {new}", ["noname.yaml", "name"]),
    ("train-config-algo-list", "train {c_algolist} --out {new}", ["algolist.yaml", "name"]),
    ("train-config-bad-yaml", "train {c_badyaml} --out {new}", ["badyaml.yaml", "line"]),
    ("train-config-tab", "train {c_tab} --out {new}", ["tab.yaml"]),
    ("train-config-python-tag", "train {c_pytag} --out {new}", ["pytag.yaml"]),
    ("train-config-train-list", "train {c_trainlist} --out {new}", ["train", "mapping"]),
    ("train-config-steps-word", "train {c_stepsstr} --out {new}", ["train.steps", "many"]),
    ("train-config-too-deep", "train {c_deep} --out {new}", ["deep.yaml"]),
    ("train-config-algo-key", "train {c_badalgokey} --out {new}", ["distanse", "distance"]),
    (
        "train-algo-value",
        "train {pny} --out {new} --data-dir {glyphs} --set algorithm.distance=manhattan",
        ["manhattan"],
    ),
    ("train-config-lr-nan", "train {c_lrnan} --out {new}", ["train.lr", "nan"]),
    ("train-config-steps-neg", "train {c_stepsneg} --out {new}", ["train.steps", "-3"]),
    # --- train: numbers from flags and --set
    ("train-lr-negative", "train {pny} --out {new} --lr -1", ["--lr", "-1"]),
    ("train-lr-zero", "train {pny} --out {new} --lr 0", ["--lr", "0"]),
    ("train-lr-nan-flag", "train {pny} --out {new} --lr nan", ["--lr", "nan"]),
    ("train-lr-inf-flag", "train {pny} --out {new} --lr inf", ["--lr", "inf"]),
    ("train-lr-huge", "train {pny} --out {new} --lr 1e6", ["--lr", "1000000"]),
    ("train-lr-word", "train {pny} --out {new} --lr fast", ["--lr", "fast"]),
    ("train-set-lr-nan", "train {pny} --out {new} --set train.lr=.nan", ["train.lr", "nan"]),
    ("train-set-lr-inf", "train {pny} --out {new} --set train.lr=1e400", ["train.lr", "inf"]),
    ("train-set-lr-word", "train {pny} --out {new} --set train.lr=fast", ["train.lr", "fast"]),
    ("train-set-lr-list", "train {pny} --out {new} --set train.lr=[1]", ["train.lr"]),
    ("train-set-lr-step-0", "train {pny} --out {new} --set train.lr_step=0", ["train.lr_step"]),
    ("train-set-eval-batch-0", "train {pny} --out {new} --set eval.batch=0", ["eval.batch"]),
    ("train-seed-64bit", "train {pny} --out {new} --seed " + HUGE_SEED, ["--seed", HUGE_SEED]),
    ("train-seed-negative", "train {pny} --out {new} --seed -1", ["--seed", "-1"]),
    ("train-seed-word", "train {pny} --out {new} --seed lucky", ["--seed", "lucky"]),
    ("train-image-size-1", "train {pny} --out {new} --set data.image_size=1", ["image_size"]),
    ("train-image-size-huge", "train {pny} --out {new} --set data.image_size=99999", ["99999"]),
    ("train-channels-2", "train {pny} --out {new} --set data.channels=2", ["data.channels"]),
    ("train-grad-clip-neg", "train {pny} --out {new} --set train.grad_clip=-1", ["grad_clip"]),
    ("train-grad-clip-0", "train {pny} --out {new} --set train.grad_clip=0", ["grad_clip"]),
    ("train-lr-gamma-neg", "train {pny} --out {new} --set train.lr_gamma=-0.5", ["lr_gamma"]),
    ("train-lr-gamma-0", "train {pny} --out {new} --set train.lr_gamma=0", ["lr_gamma"]),
    ("train-lr-gamma-2", "train {pny} --out {new} --set train.lr_gamma=2", ["lr_gamma"]),
    ("train-momentum-1", "train {pny} --out {new} --set train.momentum=1", ["momentum"]),
    ("train-weight-decay-neg", "train {pny} --out {new} --set train.weight_decay=-1", ["decay"]),
    ("train-optimizer", "train {pny} --out {new} --set train.optimizer=rmsprop", ["rmsprop"]),
    ("train-schedule", "train {pny} --out {new} --set train.lr_schedule=cyclic", ["cyclic"]),
    ("train-steps-0", "train {pny} --out {new} --steps 0", ["--steps", "0"]),
    ("train-steps-neg", "train {pny} --out {new} --steps -5", ["--steps", "-5"]),
    ("train-steps-float", "train {pny} --out {new} --steps 2.5", ["--steps", "2.5"]),
    ("train-steps-1e9", "train {pny} --out {new} --steps 1e9", ["--steps", "1e9"]),
    ("train-set-steps-half", "train {pny} --out {new} --set train.steps=1.5", ["train.steps"]),
    ("train-set-steps-huge", "train {pny} --out {new} --set train.steps=1e12", ["train.steps"]),
    ("train-ways-neg", "train {pny} --out {new} --ways -1", ["--ways", "-1"]),
    ("train-shots-0", "train {pny} --out {new} --shots 0", ["--shots", "0"]),
    ("train-queries-0", "train {pny} --out {new} --queries 0", ["--queries", "0"]),
    ("train-meta-batch-0", "train {pny} --out {new} --meta-batch 0", ["--meta-batch", "0"]),
    ("train-max-minutes-neg", "train {pny} --out {new} --max-minutes -1", ["--max-minutes"]),
    ("train-max-minutes-nan", "train {pny} --out {new} --max-minutes nan", ["--max-minutes"]),
    ("train-val-episodes-0", "train {pny} --out {new} --set train.val_episodes=0", ["val_ep"]),
    ("train-checkpoint-every-0", "train {pny} --out {new} --set train.checkpoint_every=0", ["ch"]),
    ("train-log-every-0", "train {pny} --out {new} --set train.log_every=0", ["log_every"]),
    ("train-task-chunk-0", "train {pny} --out {new} --set train.task_chunk=0", ["task_chunk"]),
    ("train-eval-episodes-1e9", "train {pny} --out {new} --set eval.episodes=1e9", ["eval.epi"]),
    ("train-eval-queries-0", "train {pny} --out {new} --set eval.queries=0", ["eval.queries"]),
    ("train-rotations-45", "train {pny} --out {new} --set data.rotations=[45]", ["rotations"]),
    ("train-labels", "train {pny} --out {new} --set data.labels=some", ["data.labels", "some"]),
    ("train-tensorboard-word", "train {pny} --out {new} --set train.tensorboard=maybe", ["maybe"]),
    ("train-set-no-equals", "train {pny} --out {new} --set train.lr", ["train.lr", "key=value"]),
    ("train-set-empty-key", "train {pny} --out {new} --set .lr=1", [".lr"]),
    ("train-set-bad-yaml", "train {pny} --out {new} --set train.lr=[1", ["train.lr", "YAML"]),
    ("train-set-section-scalar", "train {pny} --out {new} --set train=3", ["train", "mapping"]),
    ("train-set-under-scalar", "train {pny} --out {new} --set train.lr.x=3", ["lr"]),
    ("train-set-unknown", "train {pny} --out {new} --set train.stpes=3", ["train.stpes"]),
    ("train-set-unknown-sect", "train {pny} --out {new} --set model.depth=3", ["model"]),
    ("train-set-algo-unknown", "train {pny} --out {new} --set algorithm=nosuch", ["nosuch"]),
    ("train-set-algo-option", "train {pny} --out {new} --set algorithm.heads=3", ["heads"]),
    ("train-set-dataset", "train {pny} --out {new} --set data.dataset=imagenet", ["imagenet"]),
    ("train-device-tpu", "train {pny} --out {new} --data-dir {glyphs} --device tpu", ["tpu"]),
    # --- train: data
    ("train-data-missing", "train {pny} --out {new} --data-dir {missing}", ["no-such-thing"]),
    ("train-data-none", "train {pny} --out {new}", ["--data-dir"]),
    ("train-data-is-file", "train {pny} --out {new} --data-dir {file}", ["plain.txt", "a file"]),
    ("train-data-empty", "train {pny} --out {new} --data-dir {emptydir}", ["emptydir"]),
    ("train-data-no-classes", "train {pny} --out {new} --data-dir {d_noclass}", ["d_noclass"]),
    (
        "train-data-few-images",
        "train {pny} --out {new} --data-dir {d_fewimg}",
        ["class00", "--shots"],
    ),
    ("train-data-few-classes", "train {pny} --out {new} --data-dir {d_fewcls}", ["3", "2"]),
    ("train-data-corrupt", "train {pny} --out {new} --data-dir {d_corrupt}", ["2.png"]),
    ("train-data-no-train", "train {pny} --out {new} --data-dir {d_filesplit}", ["train"]),
    ("train-ways-too-many", "train {pny} --out {new} --data-dir {glyphs} --ways 50", ["50"]),
    ("train-shots-too-many", "train {pny} --out {new} --data-dir {glyphs} --shots 9", ["9"]),
    ("train-data-too-long", "train {pny} --out {new} --data-dir {d}/" + LONG, [LONG[:40]]),
    (
        "train-split-missing",
        "train {pny} --out {new} --data-dir {glyphs} --set data.train_split=extra",
        ["extra"],
    ),
    # --- train: the run folder
    ("train-out-is-file", "train {pny} --data-dir {glyphs} --out {file}", ["plain.txt"]),
    ("train-out-under-file", "train {pny} --data-dir {glyphs} --out {file}/run", ["plain.txt"]),
    ("train-out-read-only", "train {pny} --data-dir {glyphs} --out {ro}/run", ["run"]),
    ("train-out-name-too-long", "train {pny} --data-dir {glyphs} --out {d}/" + LONG, [LONG[:40]]),
    (
        "train-out-path-too-long",
        "train {pny} --data-dir {glyphs} --out {d}/" + "/".join(["p" * 200] * 25),
        ["p" * 40],
    ),
    ("train-out-empty", "train {pny} --data-dir {glyphs} --out ''", ["--out", "empty"]),
    ("train-out-blank", "train {pny} --data-dir {glyphs} --out ' '", ["--out", "empty"]),
    ("train-out-existing-run", "train {pny} --data-dir {glyphs} --out {pn}", ["pn", "--resume"]),
    ("train-out-nonempty", "train {pny} --data-dir {glyphs} --out {nonempty}", ["nonempty"]),
    ("train-out-runlike", "train {pny} --data-dir {glyphs} --out {runlike}", ["metrics.jsonl"]),
    ("train-resume-nothing", "train {pny} --data-dir {glyphs} --out {d}/o2 --resume", ["o2"]),
    ("train-resume-file", "train {pny} --data-dir {glyphs} --out {file} --resume", ["plain.txt"]),
    (
        "train-resume-changed-lr",
        "train {pny} --data-dir {glyphs} --out {pn} --resume --lr 0.5",
        ["lr"],
    ),
    (
        "train-resume-changed-ways",
        "train {pny} --data-dir {glyphs} --out {pn} --resume --ways 2",
        ["ways"],
    ),
    (
        "train-resume-other-algo",
        "train {mamly} --data-dir {glyphs} --out {pn} --resume",
        ["algorithm"],
    ),
    # --- eval: what is evaluated
    ("eval-run-missing", "eval {missing}", ["no-such-thing"]),
    ("eval-run-empty-dir", "eval {emptydir}", ["emptydir"]),
    ("eval-run-only-config", "eval {nobest}", ["nobest"]),
    ("eval-run-text-file", "eval {file}", ["plain.txt"]),
    ("eval-run-too-long", "eval {d}/" + LONG, [LONG[:40]]),
    ("eval-junk-checkpoint", "eval {junk}", ["junk.pt"]),
    ("eval-zero-checkpoint", "eval {zero}", ["zero.pt"]),
    ("eval-torn-checkpoint", "eval {torn}", ["torn.pt"]),
    ("eval-no-model-key", "eval {nomodel}", ["nomodel.pt", "model"]),
    ("eval-no-config-key", "eval {noconfig}", ["noconfig.pt", "config"]),
    ("eval-bad-input-shape", "eval {badshape}", ["badshape.pt", "input_shape"]),
    ("eval-other-algo-weights", "eval {otheralgo}", ["otheralgo.pt", "maml"]),
    ("eval-unknown-algo", "eval {goneaway}", ["goneaway.pt", "alchemy"]),
    ("eval-not-a-dict", "eval {notdict}", ["notdict.pt"]),
    ("eval-checkpoint-choice", "eval {pn} --checkpoint worst", ["--checkpoint", "worst"]),
    # --- eval: numbers
    ("eval-queries-0", "eval {pn} --queries 0", ["--queries", "0"]),
    ("eval-queries-0-json", "eval {pn} --queries 0 --json", ["--queries", "0"]),
    ("eval-queries-neg", "eval {pn} --queries -1", ["--queries", "-1"]),
    ("eval-shots-0", "eval {pn} --shots 0", ["--shots", "0"]),
    ("eval-ways-1", "eval {pn} --ways 1", ["--ways", "1"]),
    ("eval-ways-0-classifier", "eval {pn} --ways 0", ["--ways", "0"]),
    ("eval-episodes-0", "eval {pn} --episodes 0", ["--episodes", "0"]),
    ("eval-episodes-1e9", "eval {pn} --episodes 1e9", ["--episodes", "1e9"]),
    ("eval-episodes-huge", "eval {pn} --episodes 1000000000", ["--episodes", "1000000000"]),
    ("eval-episodes-word", "eval {pn} --episodes many", ["--episodes", "many"]),
    ("eval-seed-64bit", "eval {pn} --seed " + HUGE_SEED, ["--seed", HUGE_SEED]),
    ("eval-seed-neg", "eval {pn} --seed -4", ["--seed", "-4"]),
    ("eval-ways-too-many", "eval {pn} --ways 50", ["50"]),
    ("eval-shots-too-many", "eval {pn} --shots 9", ["9"]),
    ("eval-fixed-ways", "eval {maml} --ways 4", ["4", "3"]),
    ("eval-fixed-ways-fewer", "eval {maml} --ways 2", ["2", "3"]),
    # --- eval: data
    ("eval-split-missing", "eval {pn} --split extra", ["extra"]),
    ("eval-data-missing", "eval {pn} --data-dir {missing}", ["no-such-thing"]),
    ("eval-data-is-file", "eval {pn} --data-dir {file}", ["plain.txt"]),
    ("eval-data-no-test", "eval {pn} --data-dir {d_notest}", ["d_notest", "test"]),
    ("eval-data-split-is-file", "eval {pn} --data-dir {d_filesplit}", ["test", "a file"]),
    ("eval-dataset-unknown", "eval {pn} --dataset imagenet", ["--dataset", "imagenet"]),
    ("eval-dataset-no-dir", "eval {pn} --dataset omniglot", ["--data-dir"]),
    ("eval-dataset-sinusoid", "eval {pn} --dataset sinusoid", ["sinusoid"]),
    ("eval-sinusoid-on-images", "eval {sin} --dataset folder --data-dir {glyphs}", ["folder"]),
    ("eval-device-tpu", "eval {pn} --device tpu", ["tpu"]),
    ("eval-device-cuda-bad-index", "eval {pn} --device cuda:abc", ["cuda:abc"]),
    ("eval-split-shots-too-many", "eval {pn} --split val --shots 5", ["class00", "--shots"]),
    ("eval-data-dir-is-split", "eval {pn} --data-dir {glyphs}/test", ["test/test"]),
    # --- eval: protocols
    ("eval-baseline-on-classifier", "eval {pn} --baseline {sin}", ["--baseline"]),
    ("eval-baseline-missing", "eval {sin} --baseline {missing}", ["no-such-thing"]),
    ("eval-challenge-missing", "eval {pn} --challenge-runs {missing}.zip", ["no-such-thing.zip"]),
    ("eval-challenge-not-zip", "eval {pn} --challenge-runs {notzip}", ["all_runs.zip"]),
    ("eval-within-alphabet-folder", "eval {pn} --within-alphabet", ["--within-alphabet"]),
    ("eval-two-protocols", "eval {sin} --within-alphabet --baseline {sin}", ["--baseline"]),
    ("eval-regression-queries-0", "eval {sin} --queries 0", ["--queries", "0"]),
    # --- predict
    ("predict-run-missing", "predict {missing} --support {sup} --query {q}", ["no-such-thing"]),
    ("predict-run-junk", "predict {junk} --support {sup} --query {q}", ["junk.pt"]),
    ("predict-regression-run", "predict {sin} --support {sup} --query {q}", ["sinusoid"]),
    ("predict-support-missing", "predict {pn} --support {missing} --query {q}", ["no-such"]),
    ("predict-support-is-file", "predict {pn} --support {file} --query {q}", ["plain.txt"]),
    ("predict-support-empty", "predict {pn} --support {emptydir} --query {q}", ["emptydir"]),
    ("predict-support-one-class", "predict {pn} --support {onecls} --query {q}", ["1 class"]),
    ("predict-support-empty-class", "predict {pn} --support {emptycls} --query {q}", ["class02"]),
    ("predict-support-nested", "predict {pn} --support {nested} --query {q}", ["class02"]),
    ("predict-support-flat", "predict {pn} --support {flat} --query {q}", ["flat"]),
    ("predict-support-corrupt", "predict {pn} --support {corruptsup} --query {q}", ["9.png"]),
    ("predict-support-too-long", "predict {pn} --support {d}/" + LONG + " --query {q}", ["nnnn"]),
    ("predict-query-missing", "predict {pn} --support {sup} --query {missing}.png", ["no-such"]),
    (
        "predict-query-dir",
        "predict {pn} --support {sup} --query {emptydir}",
        ["emptydir", "is a folder"],
    ),
    ("predict-query-corrupt", "predict {pn} --support {sup} --query {corrupt}", ["corrupt.png"]),
    ("predict-query-zero-bytes", "predict {pn} --support {sup} --query {emptypng}", ["empty.png"]),
    ("predict-query-text", "predict {pn} --support {sup} --query {textpng}", ["text.png"]),
    ("predict-query-not-image", "predict {pn} --support {sup} --query {file}", ["plain.txt"]),
    (
        "predict-query-second-bad",
        "predict {pn} --support {sup} --query {q} {missing}.png",
        ["no-such"],
    ),
    (
        "predict-query-too-long",
        "predict {pn} --support {sup} --query {d}/" + LONG + ".png",
        ["nnnn"],
    ),
    ("predict-no-query", "predict {pn} --support {sup} --query", ["--query"]),
    ("predict-no-support", "predict {pn} --query {q}", ["--support"]),
    (
        "predict-fixed-ways-more",
        "predict {maml} --support {manysup} --query {q}",
        ["5 classes", "3", "!--ways"],
    ),
    (
        "predict-fixed-ways-fewer",
        "predict {maml} --support {twosup} --query {q}",
        ["2 classes", "3", "!--ways"],
    ),
    (
        "predict-checkpoint-choice",
        "predict {pn} --support {sup} --query {q} --checkpoint x",
        ["--checkpoint"],
    ),
    ("predict-device-tpu", "predict {pn} --support {sup} --query {q} --device tpu", ["tpu"]),
    # --- compare
    ("compare-run-missing", "compare {pn} {missing} --out {d}/c1", ["no-such-thing"]),
    ("compare-run-junk", "compare {pn} {junk} --out {d}/c1", ["junk.pt"]),
    ("compare-no-out", "compare {pn}", ["--out"]),
    (
        "compare-out-is-file",
        "compare {pn} --out {file} --ways 3 --shots 1 --episodes 2",
        ["--out", "plain.txt"],
    ),
    (
        "compare-out-under-file",
        "compare {pn} --out {file}/c --ways 3 --shots 1 --episodes 2",
        ["--out", "plain.txt"],
    ),
    (
        "compare-out-read-only",
        "compare {pn} --out {ro}/c --ways 3 --shots 1 --episodes 2",
        ["--out"],
    ),
    ("compare-out-too-long", "compare {pn} --out {d}/" + LONG + " --ways 3 --shots 1", ["--out"]),
    ("compare-out-empty", "compare {pn} --out ''", ["--out", "empty"]),
    (
        "compare-nothing-evaluable",
        "compare {pn} --out {d}/c2 --ways 50 --shots 1 --episodes 2",
        ["50"],
    ),
    (
        "compare-shots-leave-no-query",
        "compare {pn} --out {d}/c3 --ways 3 --shots 6 --episodes 2",
        ["6"],
    ),
    (
        "compare-fixed-ways-only",
        "compare {maml} --out {d}/c4 --ways 5 --shots 1 --episodes 2",
        ["5"],
    ),
    ("compare-ways-0", "compare {pn} --out {d}/c5 --ways 0 --shots 1", ["--ways", "0"]),
    ("compare-ways-neg", "compare {pn} --out {d}/c5 --ways -2 --shots 1", ["--ways", "-2"]),
    ("compare-shots-0", "compare {pn} --out {d}/c5 --ways 3 --shots 0", ["--shots", "0"]),
    (
        "compare-queries-0",
        "compare {pn} --out {d}/c5 --ways 3 --shots 1 --queries 0",
        ["--queries", "0"],
    ),
    (
        "compare-episodes-0",
        "compare {pn} --out {d}/c5 --ways 3 --shots 1 --episodes 0",
        ["--episodes", "0"],
    ),
    ("compare-episodes-1e9", "compare {pn} --out {d}/c5 --episodes 1e9", ["--episodes", "1e9"]),
    ("compare-episodes-huge", "compare {pn} --out {d}/c5 --episodes 1000000000", ["--episodes"]),
    ("compare-seed-64bit", "compare {pn} --out {d}/c5 --seed " + HUGE_SEED, ["--seed"]),
    ("compare-seed-neg", "compare {pn} --out {d}/c5 --seed -1", ["--seed", "-1"]),
    ("compare-different-data", "compare {pn} {sin} --out {d}/c6", ["sinusoid"]),
    ("compare-dataset-unknown", "compare {pn} --out {d}/c7 --dataset imagenet", ["imagenet"]),
    ("compare-data-missing", "compare {pn} --out {d}/c7 --data-dir {missing}", ["no-such"]),
    ("compare-data-is-file", "compare {pn} --out {d}/c7 --data-dir {file}", ["plain.txt"]),
    # --- data info
    ("data-no-subcommand", "data", ["data"]),
    ("data-unknown-subcommand", "data show omniglot", ["show"]),
    ("data-unknown-dataset", "data info imagenet --data-dir {d}", ["imagenet"]),
    ("data-no-data-dir", "data info omniglot", ["--data-dir"]),
    ("data-omniglot-missing", "data info omniglot --data-dir {missing}", ["no-such-thing"]),
    ("data-omniglot-empty", "data info omniglot --data-dir {emptydir}", ["emptydir"]),
    ("data-omniglot-file", "data info omniglot --data-dir {file}", ["plain.txt"]),
    (
        "data-omniglot-scheme",
        "data info omniglot --data-dir {emptydir} --scheme nosuch",
        ["nosuch"],
    ),
    ("data-sinusoid", "data info sinusoid --data-dir {d}", ["sinusoid"]),
    # --- bench
    ("bench-config-missing", "bench {missing}.yaml", ["no-such-thing.yaml"]),
    ("bench-config-empty", "bench {c_empty}", ["empty.yaml"]),
    ("bench-config-list", "bench {c_list}", ["list.yaml"]),
    ("bench-config-unknown-key", "bench {c_unknownkey}", ["setps"]),
    ("bench-steps-0", "bench {sinusoid} --steps 0", ["--steps", "0"]),
    ("bench-steps-neg", "bench {sinusoid} --steps -1", ["--steps", "-1"]),
    ("bench-repeats-0", "bench {sinusoid} --repeats 0", ["--repeats", "0"]),
    ("bench-repeats-word", "bench {sinusoid} --repeats some", ["--repeats", "some"]),
    ("bench-set-bad", "bench {sinusoid} --set train.lr=-1", ["train.lr"]),
    ("bench-out-is-dir", "bench {sinusoid} --steps 1 --repeats 1 --out {emptydir}", ["--out"]),
    (
        "bench-out-under-file",
        "bench {sinusoid} --steps 1 --repeats 1 --out {file}/b.json",
        ["--out"],
    ),
    ("bench-out-read-only", "bench {sinusoid} --steps 1 --repeats 1 --out {ro}/b.json", ["--out"]),
    ("bench-out-disk-full", "bench {sinusoid} --steps 1 --repeats 1 --out /dev/full", ["--out"]),
    ("bench-out-empty", "bench {sinusoid} --out ''", ["--out", "empty"]),
    ("bench-device-tpu", "bench {sinusoid} --device tpu", ["tpu"]),
    ("bench-data-missing", "bench {pny} --data-dir {missing} --steps 1", ["no-such-thing"]),
    # --- runs / tune / suggest (the registry; cheap cases only)
    ("runs-no-subcommand", "runs", ["runs"]),
    ("runs-show-unknown", "runs show no-such-run --registry {d}/reg.db", ["no-such-run"]),
    ("runs-bad-registry", "runs list --registry {file}", ["plain.txt"]),
    ("runs-import-missing", "runs import {missing}.jsonl --registry {d}/reg.db", ["no-such-thing"]),
    ("tune-config-missing", "tune {missing}.yaml --trials 1", ["no-such-thing.yaml"]),
    ("tune-trials-0", "tune {pny} --trials 0 --data-dir {glyphs}", ["--trials", "0"]),
    ("suggest-config-missing", "suggest {missing}.yaml", ["no-such-thing.yaml"]),
    # --- algorithm options have declared ranges too
    (
        "train-protonet-hidden-negative",
        "train {pny} --out {new} --data-dir {glyphs} --set algorithm.hidden=-3",
        ["algorithm.hidden"],
    ),
    (
        "train-protonet-hidden-0",
        "train {pny} --out {new} --data-dir {glyphs} --set algorithm.hidden=0",
        ["algorithm.hidden"],
    ),
    (
        "train-maml-inner-lr-negative",
        "train {mamly} --out {new} --data-dir {glyphs} --set algorithm.inner_lr=-1",
        ["algorithm.inner_lr"],
    ),
]


ALL = [pytest.param(*c[1:], id=c[0]) for c in CASES]


def test_the_table_is_large_and_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 150, len(ids)


@pytest.mark.parametrize(("argv", "needles"), ALL)
def test_bad_input_is_one_line(ws, argv, needles, capsys, caplog, tmp_path):
    paths = ws | {"new": str(tmp_path / "out")}  # {new}: a fresh --out
    args = [a.format(**paths) for a in shlex.split(argv)]
    caplog.set_level(logging.WARNING)
    try:
        code = _run(args)
    except Exception:  # noqa: BLE001  (what the user would see as a traceback)
        pytest.fail("traceback:\n" + traceback.format_exc())
    captured = capsys.readouterr()
    warnings = [f"metalab: {r.getMessage()}" for r in caplog.records]
    lines = warnings + captured.err.strip().splitlines()
    assert code != 0, (code, captured.out, lines)
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("metalab: error"), line
    assert "Traceback" not in line
    for needle in needles:
        if needle.startswith("!"):
            assert needle[1:] not in line, (needle, line)
        else:
            assert needle.format(**paths) in line, (needle, line)
    assert "nan" not in captured.out.lower()


def _one_error(argv: list[str], capsys, caplog) -> str:
    caplog.set_level(logging.WARNING)
    code = _run(argv)
    captured = capsys.readouterr()
    lines = [f"metalab: {r.getMessage()}" for r in caplog.records] + captured.err.splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("metalab: error"), lines
    assert "nan" not in captured.out.lower()
    return lines[0]


def test_compare_out_is_checked_before_any_work(ws, capsys, caplog, monkeypatch):
    import metalab.protocols.compare as compare

    def no_work(*args, **kwargs):
        raise AssertionError("a run was loaded before --out was checked")

    monkeypatch.setattr(compare, "load_learner", no_work)
    for out in (ws["file"], ws["file"] + "/c", ws["ro"] + "/c", ws["d"] + "/" + LONG):
        line = _one_error(["compare", ws["pn"], "--out", out], capsys, caplog)
        assert "--out" in line
        caplog.clear()
    assert not Path(ws["d"], LONG[:10]).exists()


def test_eval_json_is_finite_and_non_finite_weights_are_refused(ws, capsys, caplog, tmp_path):
    assert main(["eval", ws["pn"], "--json", "--episodes", "3", "--device", "cpu"]) == 0

    def no_constants(name):
        raise AssertionError(f"{name} is not JSON")

    report = json.loads(capsys.readouterr().out, parse_constant=no_constants)
    assert report["episodes"] == 3 and math.isfinite(report["accuracy"])
    state = torch.load(Path(ws["pn"], "best.pt"), weights_only=True)
    state["model"] = {
        k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
        for k, v in state["model"].items()
    }
    torch.save(state, tmp_path / "nan.pt")
    for argv in (
        ["eval", str(tmp_path / "nan.pt"), "--json"],
        ["compare", str(tmp_path / "nan.pt"), "--out", str(tmp_path / "c"), "--ways", "3"],
    ):
        assert "nan.pt" in _one_error(argv, capsys, caplog)
    assert not (tmp_path / "c").exists()
    argv = ["predict", str(tmp_path / "nan.pt"), "--support", ws["sup"], "--query", ws["q"]]
    assert "not finite" in _one_error(argv + ["--json"], capsys, caplog)


def _rgba(path: Path, stroke: int) -> Path:
    """A 28×28 glyph of `stroke`-coloured pixels on a fully transparent background whose colour
    channels are those of the stroke (what many editors save)."""
    pixels = np.zeros((28, 28, 4), np.uint8)
    pixels[..., :3] = stroke
    pixels[8:20, 12:16, 3] = 255
    Image.fromarray(pixels, "RGBA").save(path)
    return path


def test_transparent_images_are_composited_not_blank(tmp_path, caplog):
    from metalab.data.base import Preprocess
    from metalab.data.imaging import decode_image

    gray = Preprocess(28, 1, False)
    dark = decode_image(_rgba(tmp_path / "dark.png", 0), gray, "dark.png")[0]
    assert dark[14, 14] < 30 and dark[2, 2] > 225  # black strokes on white paper
    bright = decode_image(_rgba(tmp_path / "bright.png", 255), gray, "bright.png")[0]
    assert bright[14, 14] > 225 and bright[2, 2] < 30  # white strokes on black
    inverted = decode_image(tmp_path / "dark.png", Preprocess(28, 1, True), "dark.png")[0]
    assert inverted[14, 14] > 225 and inverted[2, 2] < 30
    rgb = decode_image(tmp_path / "dark.png", Preprocess(28, 3, False), "dark.png")
    assert rgb.shape == (3, 28, 28) and rgb[:, 2, 2].min() > 225
    la = Image.fromarray(np.asarray(Image.open(tmp_path / "dark.png").convert("LA")), "LA")
    la.save(tmp_path / "la.png")
    assert decode_image(tmp_path / "la.png", gray, "la.png")[0][2, 2] > 225
    palette = Image.open(tmp_path / "dark.png").convert("P", palette=Image.ADAPTIVE, colors=4)
    palette.info["transparency"] = palette.getpixel((2, 2))
    palette.save(tmp_path / "p.png", transparency=palette.getpixel((2, 2)))
    assert decode_image(tmp_path / "p.png", gray, "p.png")[0][2, 2] > 225
    empty = np.zeros((28, 28, 4), np.uint8)
    Image.fromarray(empty, "RGBA").save(tmp_path / "empty.png")
    caplog.set_level(logging.WARNING)
    decode_image(tmp_path / "empty.png", gray, "empty.png")
    assert [r.getMessage() for r in caplog.records] == [
        "image empty.png is fully transparent: it decodes to a blank image"
    ]


def test_predict_warns_once_about_images_in_sub_folders(ws, tmp_path, capsys, caplog):
    support = tmp_path / "support"
    png_folder(support, 2, 2, 20)
    png_folder(support / "class01" / "more", 1, 3, 21)
    _rgba(support / "class00" / "transparent.png", 0)
    caplog.set_level(logging.WARNING)
    argv = ["predict", ws["pn"], "--support", str(support), "--query", ws["q"], ws["q2"]]
    assert main(argv + ["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and set(rows[0]["probabilities"]) == {"class00", "class01"}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "class01/more" in warnings[0] and "3 image(s)" in warnings[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_files(ws, tmp_path, capsys, caplog):
    config = tmp_path / "secret.yaml"
    config.write_text(Path(ws["pny"]).read_text())
    config.chmod(0)
    query = tmp_path / "secret.png"
    query.write_bytes(Path(ws["q"]).read_bytes())
    query.chmod(0)
    argv = ["train", str(config), "--out", str(tmp_path / "o"), "--data-dir", ws["glyphs"]]
    assert "secret.yaml" in _one_error(argv, capsys, caplog)
    caplog.clear()
    argv = ["predict", ws["pn"], "--support", ws["sup"], "--query", str(query)]
    assert "secret.png" in _one_error(argv, capsys, caplog)
