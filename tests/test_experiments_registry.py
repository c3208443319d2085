"""The run registry (metalab.experiments): round trip, concurrent writers, a killed run shown as
unfinished with its curve, schema upgrade, import and export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy")

from metalab.experiments.errors import RegistryError  # noqa: E402
from metalab.experiments.registry import SCHEMA_VERSION, Registry, registry_url  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = """
algorithm: {name: maml, backbone: mlp, hidden: 8, inner_lr: 0.01, inner_steps: 1,
            eval_inner_steps: 1, parallel: vmap}
data: {dataset: sinusoid}
train: {steps: 20, ways: 0, shots: 5, queries: 5, meta_batch: 2, lr: 0.001,
        lr_schedule: constant, val_every: 5, val_episodes: 10, checkpoint_every: 5,
        log_every: 5, tensorboard: false, device: cpu}
eval: {ways: 0, shots: 5, queries: 5, episodes: 10, batch: 10}
"""


def _env(**extra) -> dict:
    return os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")} | extra


def test_registry_url_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("METALAB_REGISTRY", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert registry_url() == f"sqlite:///{tmp_path}/metalab/registry.db"
    assert registry_url(str(tmp_path / "r.db")) == f"sqlite:///{tmp_path}/r.db"
    assert registry_url("postgresql://u@h/db") == "postgresql://u@h/db"
    monkeypatch.setenv("METALAB_REGISTRY", "off")
    assert registry_url() is None


def test_train_and_eval_round_trip(tmp_path):
    from metalab.config import load_config
    from metalab.engine.trainer import train
    from metalab.experiments.exchange import export
    from metalab.experiments.record import TrainRecord, record_eval

    (tmp_path / "tiny.yaml").write_text(TINY)
    cfg = load_config(tmp_path / "tiny.yaml")
    reg = Registry(f"sqlite:///{tmp_path}/reg.db")
    run_dir = tmp_path / "run"
    with TrainRecord.start(cfg, run_dir, "metalab train tiny.yaml", registry=reg) as rec:
        result = train(cfg, run_dir, on_step=rec.on_step, progress=False)
        rec.finish(result)
    report = {"mse": 1.25, "ci95": 0.5, "ways": 0, "shots": 5, "queries": 5, "split": "test"}
    report |= {"episodes": 10, "dataset": "sinusoid-test", "checkpoint": str(run_dir / "best.pt")}
    eval_uid = record_eval(report, cfg, command="metalab eval run", registry=reg)

    # a fresh connection reads back what was written
    reg = Registry(f"sqlite:///{tmp_path}/reg.db")
    run = reg.get(rec.uid)
    assert run["state"] == "finished" and run["kind"] == "train" and run["step"] == 20
    assert run["algorithm"] == "maml" and run["dataset"] == "sinusoid" and run["seed"] == 0
    assert run["config"]["train"]["steps"] == 20 and run["world_size"] == 1
    assert run["dataset_desc"]["modality"] == "regression"
    assert run["torch_version"] and run["run_dir"] == str(run_dir.resolve())
    assert [p["step"] for p in run["curve"]] == [5, 10, 15, 20]
    assert run["metric"] == "mse" and run["value"] == min(p["value"] for p in run["curve"])
    assert run["wall_s"] > 0 and run["ended_at"] is not None
    ev = reg.get(eval_uid)
    assert ev["parent"] == rec.uid and ev["value"] == 1.25 and ev["split"] == "test"
    board = reg.best("sinusoid", 0, 5)
    assert [r["uid"] for r in board] == [eval_uid]
    rows = json.loads(export(reg, "json"))
    assert {r["uid"] for r in rows} == {rec.uid, eval_uid}
    assert export(reg, "csv").splitlines()[0].startswith("uid,kind,status")


def test_concurrent_writers_lose_nothing(tmp_path):
    url = f"sqlite:///{tmp_path}/reg.db"
    script = textwrap.dedent(
        f"""
        import sys
        from metalab.experiments.registry import Registry
        reg = Registry({url!r})
        w = int(sys.argv[1])
        for i in range(25):
            uid = reg.add(kind="trial", status="running", study="s", trial=w * 100 + i)
            reg.set_curve(uid, [{{"step": s, "name": "val_accuracy", "value": s}} for s in (1, 2)])
            reg.update(uid, status="finished", value=float(i))
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(w)], env=_env()) for w in range(4)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    reg = Registry(url)
    rows = reg.query(study="s")
    assert len(rows) == 100 and {r["status"] for r in rows} == {"finished"}
    assert sorted(r["trial"] for r in rows) == sorted(
        w * 100 + i for w in range(4) for i in range(25)
    )
    assert all(len(reg.get(r["uid"])["curve"]) == 2 for r in rows[:10])


def test_killed_run_shows_unfinished_with_its_curve(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    url = f"sqlite:///{tmp_path}/reg.db"
    script = textwrap.dedent(
        f"""
        import os, signal
        from metalab.config import load_config
        from metalab.engine.trainer import train
        from metalab.experiments.record import TrainRecord
        cfg = load_config({str(tmp_path / "tiny.yaml")!r})
        rec = TrainRecord.start(cfg, {str(tmp_path / "run")!r}, "killed", registry={url!r})
        def on_step(step):
            rec.on_step(step)
            if step == 10:
                os.kill(os.getpid(), signal.SIGKILL)
        train(cfg, {str(tmp_path / "run")!r}, on_step=on_step, progress=False)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], env=_env(), timeout=120)
    assert proc.returncode == -9
    (run,) = Registry(url).query()
    run = Registry(url).get(run["uid"])
    assert run["status"] == "running" and run["state"] == "unfinished" and run["step"] == 10
    assert [p["step"] for p in run["curve"]] == [5, 10]


def _v1_registry(path: Path) -> None:
    """A registry as schema version 1 wrote it (no task_key, no metafeatures)."""
    import sqlite3

    import sqlalchemy as sa

    from metalab.experiments.registry import _tables

    md, runs = _tables(sa)
    runs._columns.remove(runs.c.metafeatures)  # version 2's columns away
    runs._columns.remove(runs.c.task_key)
    for ix in list(runs.indexes):
        if "task_key" in ix.name:
            runs.indexes.discard(ix)
    engine = sa.create_engine(f"sqlite:///{path}")
    md.create_all(engine)
    engine.dispose()
    con = sqlite3.connect(path)
    con.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    con.execute(
        "INSERT INTO runs (uid, kind, status, algorithm, value) "
        "VALUES ('abcd1234', 'eval', 'finished', 'protonet', 96.5)"
    )
    con.commit()
    assert "metafeatures" not in [r[1] for r in con.execute("PRAGMA table_info(runs)")]
    con.close()


def test_newer_metalab_opens_older_registry_and_older_refuses_newer(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    _v1_registry(path)
    reg = Registry(f"sqlite:///{path}")
    assert reg.schema_version == SCHEMA_VERSION == 2
    assert reg.get("abcd")["value"] == 96.5  # the old record survives
    uid = reg.add(kind="study", status="finished", metafeatures={"classes": 3.0})
    assert reg.get(uid)["metafeatures"] == {"classes": 3.0}

    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(RegistryError, match=r"schema version 99, newer .* upgrade metalab"):
        Registry(f"sqlite:///{path}")


def test_import_results_once_and_leaderboard(tmp_path):
    from metalab.experiments.exchange import import_file

    reg = Registry(f"sqlite:///{tmp_path}/reg.db")
    result = ROOT / "benchmarks" / "results" / "protonet-omniglot-cpu.json"
    n, _ = import_file(reg, result)
    assert n == 2 and import_file(reg, result)[0] == 0  # the same content is imported once
    train, ev = sorted(reg.query(), key=lambda r: r["kind"] != "train")
    data = json.loads(result.read_text())
    assert ev["value"] == data["results"]["eval"][0]["accuracy"] and ev["parent"] == train["uid"]
    assert len(reg.get(train["uid"])["curve"]) == len(data["results"]["val_curve"])
    assert reg.best("omniglot", 5, 1)[0]["uid"] == ev["uid"]
    bench = ROOT / "benchmarks" / "results" / "bench-maml-cpu.json"
    assert import_file(reg, bench)[0] == 0
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(RegistryError, match="bad.json is not JSON"):
        import_file(reg, tmp_path / "bad.json")


def test_unopenable_registry_is_one_line(tmp_path):
    (tmp_path / "notadb").write_text("this is not a database" * 100)
    with pytest.raises(RegistryError) as e:
        Registry(f"sqlite:///{tmp_path}/notadb")
    assert "\n" not in str(e.value) and "notadb" in str(e.value)
