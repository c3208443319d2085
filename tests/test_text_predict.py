"""``metalab predict`` and ``metalab.predict`` on a run trained on text: a ``label,text`` support
file or ``{label: [sentences]}`` and query sentences, embedded by the run's encoder; one-line errors
for the inputs of the other modality, an empty support class and an empty query.

The run is a 3-step ProtoNet on small intent files with the hashed bag-of-words encoder
(``hash-16``: random, no dependency), as in tests/test_text.py: seconds on a CPU.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import metalab
from metalab.cli import main
from metalab.config import DataConfig, parse_config
from metalab.errors import MetalabError

TOPICS = "flight hotel balance card weather music alarm pizza".split()


def _write_intents(root: Path, per: int = 8) -> None:
    for part in ("train", "test"):
        lines = ["label,text"]
        for topic in TOPICS[:6]:
            lines += [f"{part}_{topic},please {topic} request number {i}" for i in range(per)]
        (root / f"{part}.csv").write_text("\n".join(lines) + "\n")


def _train(cfg: dict, out: Path) -> Path:
    from metalab.engine.trainer import train

    train(parse_config(cfg, "test"), out)
    return out


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("text-predict")
    _write_intents(root)
    data = DataConfig(dataset="text", data_dir=str(root), encoder="hash-16", val_split=None)
    cfg = {
        "algorithm": {"name": "protonet", "backbone": "mlp", "hidden": 16},
        "data": dataclasses.asdict(data),
        "train": {"steps": 3, "ways": 3, "shots": 2, "queries": 2, "tensorboard": False},
        "eval": {"ways": 3, "shots": 1, "queries": 2},
    }
    return _train(cfg, root / "run")


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    from fixtures.glyphs import glyph_dataset

    root = tmp_path_factory.mktemp("image-predict")
    data = glyph_dataset(root / "glyphs")
    cfg = {
        "algorithm": {"name": "protonet", "hidden": 8},
        "data": {"dataset": "folder", "data_dir": str(data), "val_split": None},
        "train": {"steps": 1, "ways": 3, "shots": 1, "queries": 1, "tensorboard": False},
        "eval": {"ways": 3, "shots": 1, "queries": 1},
    }
    return _train(cfg, root / "run")


SUPPORT = {
    "alarm": ["set an alarm for seven", "wake me up at six"],
    "balance": ["what is my balance", "how much money do I have"],
    "weather": ["will it rain tomorrow", "what is the weather like"],
}


def _support_file(tmp_path: Path, suffix: str = ".csv") -> Path:
    path = tmp_path / f"intents{suffix}"
    if suffix == ".csv":
        rows = ["label,text"] + [f"{c},{t}" for c, ts in SUPPORT.items() for t in ts]
    else:
        rows = [json.dumps({"label": c, "text": t}) for c, ts in SUPPORT.items() for t in ts]
    path.write_text("\n".join(rows) + "\n")
    return path


def _one_line(error: pytest.ExceptionInfo, *parts: str) -> str:
    message = str(error.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message
    return message


def test_predict_sentences_from_a_file_and_a_mapping(text_run, tmp_path):
    queries = ["turn off the alarm", "what's my balance"]
    for support in (_support_file(tmp_path), _support_file(tmp_path, ".jsonl"), SUPPORT):
        rows = metalab.predict(text_run, support, queries, device="cpu")
        assert [r["query"] for r in rows] == queries
        assert all(list(r["probabilities"]) == list(SUPPORT) for r in rows)
        assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-3 for r in rows)
        assert all(r["class"] in SUPPORT and 0 < r["probability"] <= 1 for r in rows)


def test_a_query_equal_to_a_one_shot_example_gets_its_class(text_run):
    support = {c: ts[:1] for c, ts in SUPPORT.items()}  # the prototype is that sentence
    queries = [ts[0] for ts in support.values()]
    rows = metalab.predict(text_run, support, queries, device="cpu")
    assert [r["class"] for r in rows] == list(support)
    one = metalab.predict(text_run, support, queries[0], device="cpu")  # a string: one query
    assert len(one) == 1 and one[0]["class"] == "alarm"


def test_cli_prints_class_and_probability_per_query(text_run, tmp_path, capsys):
    support = _support_file(tmp_path)
    argv = ["predict", str(text_run), "--support", str(support), "--device", "cpu"]
    assert main([*argv, "--query", "turn off the alarm", "what's my balance"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for line, query in zip(lines, ["turn off the alarm", "what's my balance"]):
        q, label, p = line.split("\t")
        assert q == query and label in SUPPORT and 0 < float(p) <= 1
    assert main([*argv, "--query", "set an alarm for seven", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["query"] == "set an alarm for seven" and set(rows[0]["probabilities"]) == set(
        SUPPORT
    )


def test_text_run_refuses_images(text_run, tmp_path):
    with pytest.raises(MetalabError) as e:
        metalab.predict(text_run, _support_file(tmp_path), ["q.png"], device="cpu")
    _one_line(e, "query 1", "q.png", "trained on text")
    with pytest.raises(MetalabError) as e:
        metalab.predict(text_run, {"a": ["a/1.png"], "b": ["b/1.png"]}, ["hello"], device="cpu")
    _one_line(e, "support class 'a'", "a/1.png", "trained on text")
    (tmp_path / "folder" / "a").mkdir(parents=True)
    with pytest.raises(MetalabError) as e:
        metalab.predict(text_run, tmp_path / "folder", ["hello"], device="cpu")
    _one_line(e, "folder", "is a folder", "label,text")


def test_image_run_refuses_a_text_support(image_run, tmp_path):
    with pytest.raises(MetalabError) as e:
        metalab.predict(image_run, _support_file(tmp_path), ["q.png"], device="cpu")
    _one_line(e, "intents.csv", "label,text file", "trained on images")


def test_support_class_without_examples(text_run, tmp_path):
    with pytest.raises(MetalabError) as e:
        metalab.predict(text_run, SUPPORT | {"music": []}, ["play jazz"], device="cpu")
    _one_line(e, "support class 'music'", "no sentences", "at least 1")
    bad = tmp_path / "bad.csv"
    bad.write_text("label,text\nalarm,set an alarm\nmusic,  \nbalance,my balance\n")
    with pytest.raises(MetalabError) as e:
        metalab.predict(text_run, bad, ["play jazz"], device="cpu")
    _one_line(e, "bad.csv, line 3", "the text is empty")
    one = tmp_path / "one.csv"
    one.write_text("label,text\nalarm,set an alarm\n")
    with pytest.raises(MetalabError) as e:
        metalab.predict(text_run, one, ["play jazz"], device="cpu")
    _one_line(e, "1 class(es)", "at least 2")


def test_empty_query(text_run, tmp_path, capsys):
    support = _support_file(tmp_path)
    with pytest.raises(MetalabError) as e:
        metalab.predict(text_run, support, [], device="cpu")
    _one_line(e, "no query sentences")
    with pytest.raises(MetalabError) as e:
        metalab.predict(text_run, support, ["hello", "  "], device="cpu")
    _one_line(e, "query 2", "expected a non-empty sentence")
    argv = ["predict", str(text_run), "--support", str(support), "--query", ""]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "query 1" in err[0] and "Traceback" not in err[0]
