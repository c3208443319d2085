"""Evaluation protocols: how ``metalab eval`` picks one, cross-domain evaluation on another dataset
(a run trained on Omniglot scored on glyphs drawn here), its refusals, and the comparison plot."""

import dataclasses
import json
import math
import random
from types import SimpleNamespace

import pytest
import torch
from PIL import Image, ImageDraw

from metalab.cli import main
from metalab.config import parse_config
from metalab.engine.build import load_learner
from metalab.engine.ensemble import Ensemble
from metalab.engine.trainer import train
from metalab.protocols import PROTOCOLS, Evaluation, choose
from metalab.protocols.compare import compare_runs, plot_report
from metalab.tasks.episodes import EpisodeSampler
from metalab.tasks.sources import load_split

TINY = {"steps": 2, "ways": 5, "shots": 1, "queries": 1, "val_every": 0, "tensorboard": False}


def draw_glyph(path, shape: int, rng: random.Random) -> None:
    """Dark strokes on white paper (like Omniglot's scans): one shape per class, jittered."""
    img = Image.new("L", (64, 64), 255)
    d = ImageDraw.Draw(img)
    j = lambda v: v + rng.randint(-3, 3)
    angle = math.pi * shape / 6
    cx, cy = j(32), j(32)
    dx, dy = 24 * math.cos(angle), 24 * math.sin(angle)
    d.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=0, width=5)
    if shape % 2:
        d.ellipse([j(12), j(12), j(52), j(52)], outline=0, width=4)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


@pytest.fixture(scope="module")
def glyphs(tmp_path_factory):
    """A folder dataset made here: GLYPHS/{train,test}/<class>/<image>.png, 6 classes × 4."""
    root = tmp_path_factory.mktemp("glyphs")
    rng = random.Random(0)
    for split in ("train", "test"):
        for c in range(6):
            for i in range(4):
                draw_glyph(root / split / f"glyph{c}" / f"{i}.png", c, rng)
    return root


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    """Tiny trained runs: ProtoNet on Omniglot, MAML on sinusoids, ProtoNet on RGB glyphs."""
    root = tmp_path_factory.mktemp("protocol-runs")
    omniglot = parse_config(
        {
            "algorithm": {"name": "protonet", "hidden": 16},
            "data": {"data_dir": str(data_dir)},
            "train": TINY,
            "eval": {"episodes": 6, "queries": 2},
        }
    )
    sinusoid = parse_config(
        {
            "algorithm": {"name": "maml", "backbone": "mlp", "hidden": 8},
            "data": {"dataset": "sinusoid"},
            "train": TINY | {"ways": 0, "shots": 5, "queries": 5},
            "eval": {"ways": 0, "shots": 5, "queries": 5, "episodes": 4},
        }
    )
    return SimpleNamespace(
        omniglot=train(omniglot, root / "omniglot", progress=False).run_dir,
        omniglot_seed1=train(
            dataclasses.replace(omniglot, train=dataclasses.replace(omniglot.train, seed=1)),
            root / "omniglot-seed1",
            progress=False,
        ).run_dir,
        sinusoid=train(sinusoid, root / "sinusoid", progress=False).run_dir,
    )


def one_error_line(capsys, argv):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("metalab: error: ") and "Traceback" not in err[0]
    return err[0]


def test_the_protocol_is_picked_by_its_flags_else_by_the_run(runs, tmp_path):
    def picked(run, **flags):
        options = SimpleNamespace(device="cpu", episodes=4, **flags)
        return choose(PROTOCOLS, Evaluation.load(run, options)).name

    assert picked(runs.omniglot) == "standard"
    assert picked(runs.sinusoid) == "regression"
    assert picked(runs.omniglot, within_alphabet=True) == "omniglot-challenge"
    assert picked(runs.sinusoid, plot=str(tmp_path / "p.png")) == "regression"


def test_protocol_flags_that_do_not_fit_give_one_line(runs, data_dir, capsys):
    run = str(runs.omniglot)
    assert "--baseline and --plot are for regression" in one_error_line(
        capsys, ["eval", run, "--device", "cpu", "--plot", "x.png"]
    )
    line = one_error_line(
        capsys, ["eval", run, "--device", "cpu", "--within-alphabet", "--plot", "x.png"]
    )
    assert "--challenge-runs / --within-alphabet and --baseline / --plot" in line
    assert "classifies images" in one_error_line(
        capsys, ["eval", str(runs.sinusoid), "--device", "cpu", "--within-alphabet"]
    )


def test_eval_on_another_dataset_decodes_it_as_the_run_was_trained(runs, glyphs, capsys):
    argv = ["eval", str(runs.omniglot), "--dataset", "folder", "--data-dir", str(glyphs)]
    argv += ["--device", "cpu", "--ways", "3", "--queries", "2", "--episodes", "8", "--json"]
    capsys.readouterr()
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dataset"] == "folder-test" and report["algorithm"] == "protonet"
    assert (report["ways"], report["shots"], report["queries"], report["episodes"]) == (3, 1, 2, 8)
    assert 0 <= report["accuracy"] <= 100
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == report  # the same fixed episodes again
    # the glyphs were decoded as the Omniglot run's images: 28×28 grayscale, strokes bright on black
    options = SimpleNamespace(device="cpu", dataset="folder", data_dir=str(glyphs))
    split = Evaluation.load(runs.omniglot, options).split
    assert split.image_shape == (1, 28, 28) and split.preprocess.invert
    assert int(split.images[:, :, 0, 0].max()) == 0  # white paper became black
    text = argv[:-1]
    assert main(text) == 0
    assert (
        "protonet on folder-test, 3-way 1-shot (2 queries), 8 episodes" in capsys.readouterr().out
    )


def test_compare_on_another_dataset(runs, glyphs, tmp_path, capsys):
    import shutil

    other = shutil.copytree(runs.omniglot, tmp_path / "copy")
    out = tmp_path / "cmp"
    argv = ["compare", str(runs.omniglot), str(other), "--dataset", "folder"]
    argv += ["--data-dir", str(glyphs), "--out", str(out), "--ways", "3", "--shots", "1", "2"]
    argv += ["--queries", "2", "--episodes", "5", "--device", "cpu"]
    assert main(argv) == 0
    report = json.loads((out / "compare.json").read_text())
    assert report["dataset"] == "folder-test"
    assert all("accuracy" in m["results"]["3-way 2-shot"] for m in report["methods"].values())
    pair = report["paired"][0]  # the same weights on the same episodes: no difference at all
    assert pair["difference"] == 0.0 and pair["ci95"] == 0.0 and not pair["significant"]


def test_another_dataset_that_cannot_fit_the_run_is_refused(runs, glyphs, data_dir, capsys):
    eval_ = lambda run, *flags: ["eval", str(run), "--device", "cpu", *flags]
    line = one_error_line(
        capsys, eval_(runs.sinusoid, "--dataset", "folder", "--data-dir", str(glyphs))
    )
    assert "--dataset folder holds images" in line and "sinusoid" in line
    line = one_error_line(capsys, eval_(runs.omniglot, "--dataset", "sinusoid"))
    assert (
        "--dataset sinusoid holds no images" in line and "image dataset: folder, omniglot" in line
    )
    assert "--dataset 'nosuch' is unknown; choices:" in one_error_line(
        capsys, eval_(runs.omniglot, "--dataset", "nosuch")
    )
    assert "pass --data-dir" in one_error_line(capsys, eval_(runs.omniglot, "--dataset", "folder"))
    assert "not on --dataset folder" in one_error_line(
        capsys, eval_(runs.omniglot, "--within-alphabet", "--dataset", "folder")
    )


def test_an_rgb_run_is_not_evaluated_on_grayscale_omniglot(glyphs, data_dir, tmp_path, capsys):
    cfg = parse_config(
        {
            "algorithm": {"name": "protonet", "hidden": 8},
            "data": {"dataset": "folder", "data_dir": str(glyphs), "channels": 3},
            "train": TINY | {"steps": 1, "ways": 3},
            "eval": {"ways": 3, "queries": 2, "episodes": 2},
        }
    )
    run = train(cfg, tmp_path / "rgb", progress=False).run_dir
    line = one_error_line(
        capsys, ["eval", str(run), "--dataset", "omniglot", "--data-dir", str(data_dir)]
    )
    assert "--dataset omniglot decodes images as 1×28×28" in line and "shape 3×28×28" in line
    argv = ["compare", str(run), "--dataset", "omniglot", "--data-dir", str(data_dir)]
    assert "1×28×28" in one_error_line(capsys, argv + ["--out", str(tmp_path / "c")])
    assert main(["eval", str(run), "--device", "cpu", "--json"]) == 0  # its own data still works


def test_compare_plot_handles_perfect_and_skipped_methods(tmp_path):
    settings = [{"name": f"5-way {k}-shot", "ways": 5, "shots": k, "queries": 5} for k in (1, 5)]
    results = {
        "a": [{"accuracy": 99.1, "ci95": 0.3}, {"accuracy": 100.0, "ci95": 0.0}],
        "b": [{"accuracy": 98.7, "ci95": 0.4}, {"skipped": "too few images"}],
        "c": [{"accuracy": 40.0, "ci95": 2.0}, {"accuracy": 55.0, "ci95": 2.0}],
    }
    report = {
        "dataset": "d",
        "settings": settings,
        "methods": {
            m: {"results": {s["name"]: r for s, r in zip(settings, rows)}}
            for m, rows in results.items()
        },
        "paired": [
            {"setting": "5-way 1-shot", "a": "a", "b": b, "difference": d, "ci95": 0.2}
            for b, d in (("b", 0.4), ("c", 59.1))
        ],
    }
    plot_report(report, tmp_path / "compare.png")
    with open(tmp_path / "compare.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_compare_runs_keeps_the_runs_own_data_without_a_dataset(runs, data_dir, tmp_path):
    report = compare_runs(
        [runs.omniglot], None, tmp_path / "own", ways=(5,), shots=(1,), queries=2, episodes=3
    )
    assert report["dataset"] == "omniglot-vinyals-test"


def test_an_ensemble_averages_its_members_class_probabilities(runs):
    cpu = torch.device("cpu")
    a, cfg, _ = load_learner(runs.omniglot, cpu)
    b = load_learner(runs.omniglot_seed1, cpu)[0]
    sampler = EpisodeSampler(load_split(cfg.data, "test"), 5, 1, 2, meta_batch=3)
    episode = sampler.sample(torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = Ensemble([a.eval(), b.eval()]).predict(episode)
        pa, pb = a.predict(episode).softmax(-1), b.predict(episode).softmax(-1)
        alone = Ensemble([a, a]).predict(episode)
    assert torch.allclose(got.exp(), (pa + pb) / 2, atol=1e-6)
    assert torch.allclose(alone, a.predict(episode).log_softmax(-1), atol=1e-5)


def test_eval_ensemble_reports_its_members(runs, data_dir, capsys):
    capsys.readouterr()
    one, two = str(runs.omniglot), str(runs.omniglot_seed1)
    argv = ["eval", one, "--device", "cpu", "--episodes", "4", "--data-dir", str(data_dir)]
    assert main([*argv, "--json", "--ensemble", two]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["ensemble"]) == 2 and report["ensemble"][1].startswith(two)
    assert 0 <= report["accuracy"] <= 100
    assert main([*argv, "--ensemble", two]) == 0
    assert "ensemble of 2 runs" in capsys.readouterr().out
    # runs that read other inputs, and regression runs, are refused in one line
    assert "must be trained on the same data" in one_error_line(
        capsys, [*argv, "--ensemble", str(runs.sinusoid)]
    )
    assert "regression run" in one_error_line(
        capsys, ["eval", str(runs.sinusoid), "--device", "cpu", "--ensemble", one]
    )
