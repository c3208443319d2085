"""The public API (metalab/__init__.py, api.py): a user's whole path in Python — configure, train,
evaluate, compare, predict, load — on a tiny image folder drawn in the test."""

from __future__ import annotations

from pathlib import Path

import pytest

import metalab
from fixtures.glyphs import glyph_dataset
from metalab.errors import ConfigError


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("api")
    data = glyph_dataset(root / "glyphs")
    cfg = metalab.load_config(
        Path(__file__).resolve().parents[1] / "configs/omniglot/protonet-cpu.yaml",
        [
            "data.dataset=folder",
            "algorithm.hidden=8",
            "train.steps=4",
            "train.ways=3",
            "train.val_every=2",
            "train.val_episodes=4",
            "train.tensorboard=false",
            "eval.ways=3",
            "eval.queries=2",
            "eval.episodes=10",
            "train.device=cpu",
        ],
    )
    result = metalab.train(cfg, root / "run", data_dir=data)
    assert result.step == 4 and result.stopped == "steps"
    return root / "run"


def test_every_public_name_resolves() -> None:
    for name in metalab.__all__:
        assert getattr(metalab, name) is not None
    with pytest.raises(AttributeError):
        metalab.no_such_thing  # noqa: B018


def test_evaluate_and_compare(run: Path, tmp_path: Path) -> None:
    report = metalab.evaluate(run, ways=3, shots=1, queries=2, episodes=10, device="cpu")
    assert report["episodes"] == 10 and 0 <= report["accuracy"] <= 100
    again = metalab.evaluate(run, ways=3, shots=1, queries=2, episodes=10, device="cpu")
    assert again["accuracy"] == report["accuracy"]  # fixed episodes
    # a run ensembled with itself scores as the run alone (the same probabilities)
    twice = metalab.evaluate(
        run, ways=3, shots=1, queries=2, episodes=10, device="cpu", ensemble=[run]
    )
    assert twice["accuracy"] == report["accuracy"] and len(twice["ensemble"]) == 2
    out = metalab.compare([run, run], tmp_path / "cmp", ways=[3], shots=[1], queries=2, episodes=5)
    assert (tmp_path / "cmp" / "compare.md").exists() and out["methods"]
    assert out["command"] == "metalab.compare(...)"
    mine = metalab.compare(
        [run], tmp_path / "cmp2", ways=[3], shots=[1], queries=2, episodes=5, command="python x.py"
    )
    assert mine["command"] == "python x.py"
    assert "Command: `python x.py`" in (tmp_path / "cmp2" / "compare.md").read_text()


def test_predict_from_a_mapping_and_a_folder(run: Path) -> None:
    test = run.parent / "glyphs" / "test"
    support = {c.name: sorted(c.glob("*.png"))[:2] for c in sorted(test.iterdir())[:3]}
    queries = [sorted((test / name).glob("*.png"))[3] for name in support]
    rows = metalab.predict(run, support, queries, device="cpu")
    assert [r["query"] for r in rows] == [str(q) for q in queries]
    assert all(set(r["probabilities"]) == set(support) for r in rows)
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-3 for r in rows)
    folder_rows = metalab.predict(run, test, queries[:1], device="cpu")
    assert folder_rows[0]["class"] in {c.name for c in test.iterdir()}


def test_predict_refuses_a_single_support_class(run: Path) -> None:
    test = run.parent / "glyphs" / "test"
    one = {"class00": sorted((test / "class00").glob("*.png"))[:2]}
    with pytest.raises(ConfigError, match="at least 2"):
        metalab.predict(run, one, [one["class00"][0]], device="cpu")


def test_load_learner(run: Path) -> None:
    learner, cfg, state = metalab.load_learner(run, device="cpu")
    assert isinstance(learner, metalab.MetaLearner) and not learner.training
    assert cfg.algorithm_name == "protonet" and state["step"] == 4


def test_a_baseline_run_reloads_without_its_training_data(tmp_path: Path) -> None:
    """Baseline's head size is read from the training split when unset; the run records the
    resolved value, so evaluating or predicting later needs no training data."""
    import shutil

    data = glyph_dataset(tmp_path / "glyphs")
    cfg = metalab.load_config(
        Path(__file__).resolve().parents[1] / "configs/omniglot/baseline.yaml",
        ["data.dataset=folder", "algorithm.hidden=8", "train.steps=2", "train.val_every=0"]
        + ["train.tensorboard=false", "eval.ways=3", "train.device=cpu"],
    )
    metalab.train(cfg, tmp_path / "run", data_dir=data)
    shutil.rmtree(data / "train")
    learner, cfg, _ = metalab.load_learner(tmp_path / "run", device="cpu", checkpoint="last")
    assert cfg.algorithm["classes"] == 8


def test_train_evaluate_and_compare_are_recorded_like_the_commands(run: Path, tmp_path) -> None:
    """The run registry records API calls as it records `metalab train/eval/compare`."""
    from metalab.experiments.registry import open_registry

    reg = open_registry()  # the session's registry ($METALAB_REGISTRY, tests/conftest.py)
    (train,) = reg.query(kind="train", run_dir=str(run.resolve()))
    assert train["status"] == "finished" and train["command"] == "metalab.train(...)"
    assert reg.get(train["uid"])["curve"]  # the validation curve, as the command records it
    before = len(reg.query(kind="eval"))
    metalab.evaluate(run, ways=3, shots=1, queries=2, episodes=6, device="cpu")
    assert len(reg.query(kind="eval")) == before + 1
    metalab.evaluate(run, ways=3, shots=1, queries=2, episodes=6, device="cpu", registry="off")
    assert len(reg.query(kind="eval")) == before + 1
    before = len(reg.query(kind="compare"))
    metalab.compare([run], tmp_path / "cmp", ways=[3], shots=[1], queries=2, episodes=4)
    assert len(reg.query(kind="compare")) == before + 1
