"""Moving records in and out of the registry: ``runs import`` of result files, ``runs export``.

Imported: the JSON files metalab writes with :func:`metalab.tools.provenance.write_result`
(``{"command", "environment", "results"}``) whose results hold evaluations (benchmarks/accuracy.py:
a train record with its validation curve and wall time, and one eval record per evaluation), and
``compare.json`` reports (one record per method and setting). Files without accuracy or MSE results
(speed benchmarks) are skipped and said so. A file already imported (same content) is not imported
twice.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io
import json
from pathlib import Path
from typing import Any

from metalab.experiments.errors import RegistryError
from metalab.experiments.record import _dataset_of, compare_records
from metalab.experiments.registry import SUMMARY, Registry


def _date(env: dict[str, Any]) -> _dt.datetime | None:
    try:
        return _dt.datetime.fromisoformat(env["date"])
    except (KeyError, TypeError, ValueError):
        return None


def import_file(reg: Registry, path: str | Path) -> tuple[int, str]:
    """Import one result file; returns (records added, what happened in words)."""
    path = Path(path)
    try:
        text = path.read_text()
        data = json.loads(text)
    except OSError as e:
        raise RegistryError(f"cannot read {path} ({e.strerror}); check the path") from None
    except json.JSONDecodeError as e:
        raise RegistryError(f"{path} is not JSON (line {e.lineno}): give a result file") from None
    source = f"{path.resolve()}#{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    if reg.query(source=source, limit=1):
        return 0, "already imported"
    if isinstance(data, dict) and "methods" in data and "settings" in data:  # compare.json
        rows = compare_records(data)
        env: dict[str, Any] = {}
    elif isinstance(data, dict) and isinstance(data.get("results"), dict):
        env = data.get("environment") or {}
        rows = _accuracy_rows(data["results"], data.get("command"))
    else:
        return 0, "skipped: not a metalab result file"
    if not rows:
        return 0, "skipped: no accuracy or MSE results in it (a speed or sampling benchmark)"
    common = {
        "source": source,
        "environment": env or None,
        "torch_version": env.get("torch"),
        "metalab_version": env.get("metalab"),
        "commit": env.get("commit"),
        "hardware": env.get("gpu") or env.get("cpu"),
        "started_at": _date(env),
        "host": None,
        "pid": None,
    }
    parent = None
    for row in rows:
        curve = row.pop("curve", None)
        row.setdefault("dataset", _dataset_of(row.get("dataset_name")))
        if row["kind"] == "eval" and parent:
            row["parent"] = parent
        uid = reg.add(**(common | row))
        if row["kind"] == "train":
            parent = uid
        if curve:
            reg.set_curve(uid, curve)
    return len(rows), f"{len(rows)} records"


def _accuracy_rows(results: dict[str, Any], command: str | None) -> list[dict[str, Any]]:
    evals = [e for e in results.get("eval") or [] if isinstance(e, dict)]
    evals = [e for e in evals if "accuracy" in e or "mse" in e]
    if not evals:
        return []
    first = evals[0]
    metric = "mse" if "mse" in first and "accuracy" not in first else "accuracy"
    curve = []
    for p in results.get("val_curve") or []:
        name = f"val_{metric}"
        if name in p:
            curve.append(
                {"step": p["step"], "name": name, "value": p[name], "ci95": p.get("val_ci95")}
            )
    rows: list[dict[str, Any]] = []
    run_dir = str(Path(first["checkpoint"]).parent) if first.get("checkpoint") else None
    if "train_command" in results:
        best = (max if metric == "accuracy" else min)(curve, key=lambda p: p["value"], default=None)
        rows.append(
            {
                "kind": "train",
                "status": "finished",
                "algorithm": first.get("algorithm"),
                "dataset_name": first.get("dataset", "").replace("-test", "-val") or None,
                "split": "val" if curve else None,
                "metric": metric,
                "value": None if best is None else best["value"],
                "ci95": None if best is None else best["ci95"],
                "step": results.get("steps"),
                "wall_s": results.get("train_wall_s"),
                "command": results["train_command"],
                "run_dir": run_dir,
                "curve": curve,
            }
        )
    for e in evals:
        m = "mse" if "mse" in e and "accuracy" not in e else "accuracy"
        rows.append(
            {
                "kind": "eval",
                "status": "finished",
                "algorithm": e.get("algorithm"),
                "dataset_name": e.get("dataset"),
                "split": e.get("split"),
                "ways": e.get("ways"),
                "shots": e.get("shots"),
                "queries": e.get("queries"),
                "seed": e.get("seed"),
                "metric": m,
                "value": e.get(m),
                "ci95": e.get("ci95"),
                "step": e.get("step"),
                "command": e.get("command") or command,
                "run_dir": run_dir,
                "results": e,
            }
        )
    return rows


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, _dt.datetime) else value


def export(reg: Registry, fmt: str, rows: list[dict[str, Any]] | None = None) -> str:
    """All records (or ``rows``) as CSV (the summary columns) or JSON (everything, with curves)."""
    rows = reg.query() if rows is None else rows
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=[*SUMMARY, "state"], extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _plain(r.get(k)) for k in [*SUMMARY, "state"]})
        return out.getvalue()
    full = []
    for r in rows:
        full.append({k: _plain(v) for k, v in reg.get(r["uid"]).items()})
    return json.dumps(full, indent=1, default=str) + "\n"
