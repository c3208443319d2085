"""Recording runs in the registry: the hooks that ``train``, ``eval``, ``compare`` and tuning call.

    rec = TrainRecord.start(cfg, out, command, registry=args.registry, resume=args.resume)
    with rec:                                    # failed / interrupted recorded on the way out
        result = train(cfg, out, resume=args.resume, on_step=rec.on_step)
        rec.finish(result)

A train record is written when the run starts (status ``running``); the validation curve is copied
from the run's ``metrics.jsonl`` after every validation (the trainer's ``on_step`` callback), with a
heartbeat; the end sets the status (finished, stopped by the time budget, interrupted, failed,
pruned) and the result. A run killed outright keeps its record and curve so far and shows as
``unfinished``. Recording never stops a run: a registry that cannot be written gives one warning
and the run goes on unrecorded.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from metalab.errors import MetalabError
from metalab.experiments.registry import Registry, open_registry

log = logging.getLogger("metalab")
HEARTBEAT_S = 10.0  # the least time between two heartbeat writes of a running record


def add_registry_flag(p) -> None:
    """``--registry URL`` on a command's parser."""
    p.add_argument(
        "--registry",
        metavar="URL",
        help="run registry: a SQLAlchemy URL or a SQLite file ('off': no recording; default "
        "$METALAB_REGISTRY, else ~/.local/share/metalab/registry.db)",
    )


def _open_for_recording(url: str | None) -> Registry | None:
    """The registry to record into, or None (turned off, SQLAlchemy missing, cannot be opened:
    one warning, the run goes on)."""
    try:
        return open_registry(url, required=False)
    except MetalabError as e:
        log.warning("run not recorded in the registry: %s", e)
        return None


def world() -> tuple[int, int]:
    """(rank, world size) of a torchrun process group, (0, 1) without one."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except (ImportError, RuntimeError):
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def describe_source(source: Any, dataset: str | None = None) -> dict[str, Any]:
    """The dataset descriptor of a task source: name, split, classes, examples per class, input
    shape and modality."""
    from metalab.tasks.episodes import input_shape, is_regression

    desc: dict[str, Any] = {
        "dataset": dataset,
        "name": getattr(source, "name", None),
        "split": getattr(source, "split", None),
        "input_shape": list(input_shape(source)),
    }
    if is_regression(source):
        desc["modality"] = "regression"
        for key in ("amplitude", "phase", "x_range"):
            if hasattr(source, key):
                desc[key] = list(getattr(source, key))
        return desc
    if not getattr(source, "labelled", True):  # UMTRA / contrastive training: no class table
        return desc | {"modality": "image", "labels": "none", "examples": len(source)}
    counts = source.counts.cpu()
    desc |= {
        "modality": "image" if source.images.dtype.is_floating_point is False else "vector",
        "classes": int(source.num_classes),
        "examples": int(counts.sum()),
        "examples_per_class": {
            "min": int(counts.min()),
            "mean": round(float(counts.float().mean()), 3),
            "max": int(counts.max()),
        },
        "groups": len(getattr(source, "group_names", []) or []),
    }
    return desc


@functools.lru_cache(maxsize=1)
def _environment() -> dict[str, Any]:
    """provenance.environment() once per process (it runs git; tuning records many trials)."""
    from metalab.tools.provenance import environment

    return environment()


def _common(cfg, command: str | None) -> dict[str, Any]:
    env = _environment()
    rank, size = world()
    return {
        "algorithm": cfg.algorithm_name,
        "dataset": cfg.data.dataset,
        "config": cfg.to_dict(),
        "seed": cfg.train.seed,
        "world_size": size,
        "environment": env | {"rank": rank},
        "torch_version": env.get("torch"),
        "metalab_version": env.get("metalab"),
        "commit": env.get("commit"),
        "hardware": env.get("gpu") or env.get("cpu"),
        "command": command,
    }


class TrainRecord:
    """The registry record of one training run (or tuning trial); a no-op when not recording."""

    def __init__(self, registry: Registry | None, uid: str | None, run_dir: Path, cfg) -> None:
        self.registry, self.uid, self.run_dir, self.cfg = registry, uid, Path(run_dir), cfg
        self._offset = 0  # how far metrics.jsonl has been read
        self._beat = time.monotonic()
        self._started = time.monotonic()
        self.closed = False

    @classmethod
    def start(
        cls,
        cfg,
        run_dir: str | Path,
        command: str | None = None,
        registry: str | Registry | None = None,
        resume: bool = False,
        kind: str = "train",
        study: str | None = None,
        trial: int | None = None,
        source: Any = None,
        extra: dict[str, Any] | None = None,
    ) -> TrainRecord:
        """Open (or, on ``resume``, reopen) the record of a run about to train into ``run_dir``.

        Args:
            registry: an open Registry, a URL, or None for ``$METALAB_REGISTRY`` / the default.
            source: the training task source, when the caller has it (else loaded here once to
                describe it).
            extra: more registry fields (e.g. ``task_key``, ``metafeatures``).
        """
        run_dir = Path(run_dir).expanduser().resolve()
        reg = registry if isinstance(registry, Registry) else _open_for_recording(registry)
        rec = cls(reg, None, run_dir, cfg)
        if reg is None or world()[0] != 0:  # one record per run: rank 0 writes it
            rec.registry = None
            return rec
        try:
            if resume:
                previous = [
                    r
                    for r in reg.query(kind=kind, run_dir=str(run_dir))
                    if r["status"] != "finished"
                ]
                if previous:
                    rec.uid = previous[0]["uid"]
                    reg.update(rec.uid, status="running", pid=os.getpid(), ended_at=None)
                    step = _checkpoint_step(run_dir)
                    reg.set_curve(rec.uid, [], after=step)
                    rec._wall0 = previous[0].get("wall_s") or 0.0
                    return rec
            if source is None:
                from metalab.tasks.sources import load_split

                try:
                    source = load_split(cfg.data, cfg.data.train_split)
                except MetalabError:  # the trainer says what is wrong with the data
                    source = None
            e = cfg.eval
            fields = _common(cfg, command) | {
                "kind": kind,
                "status": "running",
                "dataset_name": getattr(source, "name", None),
                "dataset_desc": None
                if source is None
                else describe_source(source, cfg.data.dataset),
                "split": cfg.data.val_split,  # the result of a training run is its validation
                "ways": e.ways,
                "shots": e.shots,
                "queries": e.queries,
                "run_dir": str(run_dir),
                "study": study,
                "trial": trial,
                "step": 0,
            }
            rec.uid = reg.add(**(fields | (extra or {})))
        except Exception as e:  # noqa: BLE001 - recording must never stop a run
            log.warning("run not recorded in the registry %s: %s", reg.url, e)
            rec.registry = None
        return rec

    _wall0 = 0.0  # wall time of earlier sessions of a resumed run

    def _safe(self, method: str, *args, **kwargs) -> None:
        """Call the registry's ``method``; nothing when not recording (no registry, or 'off')."""
        if self.registry is None or self.uid is None:
            return
        try:
            getattr(self.registry, method)(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            log.warning("registry %s: could not record run %s: %s", self.registry.url, self.uid, e)
            self.registry = None

    def _read_curve(self) -> list[dict[str, Any]]:
        """New validation points from metrics.jsonl since the last read."""
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return []
        if path.stat().st_size < self._offset:  # rewritten (a resumed run drops later lines)
            self._offset = 0
        points = []
        with path.open() as f:
            f.seek(self._offset)
            for line in f:
                if not line.endswith("\n"):
                    break  # a line being written
                self._offset += len(line.encode())
                row = json.loads(line)
                for name in ("val_accuracy", "val_mse"):
                    if name in row:
                        points.append(
                            {
                                "step": row["step"],
                                "name": name,
                                "value": row[name],
                                "ci95": row.get("val_ci95"),
                            }
                        )
        return points

    def sync(self, step: int | None = None) -> list[dict[str, Any]]:
        """Copy new validation points and the step to the record; returns the new points."""
        points = self._read_curve()
        if self.registry is None or self.uid is None:
            return points
        fields: dict[str, Any] = {}
        if step is not None:
            fields["step"] = step
        if points:
            best = _best(points)
            if best is not None:
                fields |= {"metric": best["name"][4:], "value": best["value"], "ci95": best["ci95"]}
        self._safe("set_curve", self.uid, points)
        fields["wall_s"] = self._wall0 + time.monotonic() - self._started
        self._safe("update", self.uid, **fields)
        self._beat = time.monotonic()
        return points

    def on_step(self, step: int) -> list[dict[str, Any]]:
        """The trainer's ``on_step``: after a validation step (and at least every HEARTBEAT_S),
        copy the curve and the step to the record. Returns the new validation points."""
        val_every = self.cfg.train.val_every
        if (val_every > 0 and step % val_every == 0) or (
            time.monotonic() - self._beat > HEARTBEAT_S
        ):
            return self.sync(step)
        return []

    def curve(self) -> list[dict[str, Any]]:
        """The whole validation curve in metrics.jsonl."""
        keep, self._offset = self._offset, 0
        try:
            return self._read_curve()
        finally:
            self._offset = keep

    def finish(self, result, status: str | None = None, **fields: Any) -> None:
        """Record the end of training: status from ``result.stopped`` (finished | stopped |
        interrupted) unless given, steps, best validation value, wall time."""
        self.sync(result.step)
        status = status or {"steps": "finished", "time": "stopped"}.get(
            result.stopped, "interrupted"
        )
        values = {
            "status": status,
            "step": result.step,
            "metric": result.metric,
            "value": result.best_val,
            "ended_at": _utcnow(),
            "wall_s": self._wall0 + time.monotonic() - self._started,
        }
        ci = [p for p in self.curve() if p["value"] == result.best_val]
        if ci:
            values["ci95"] = ci[-1]["ci95"]
        self._safe("update", self.uid, **(values | fields))
        self.closed = True

    def point(self, step: int, name: str, value: float, ci95: float | None = None) -> None:
        """Add one validation point by hand (a trainer other than the engine's)."""
        p = {"step": step, "name": name, "value": value, "ci95": ci95}
        self._safe("set_curve", self.uid, [p])

    def complete(self, metric: str, value: float, step: int | None = None) -> None:
        """Record a finished run by its final value (a trainer other than the engine's)."""
        self._safe(
            "update",
            self.uid,
            status="finished",
            metric=metric,
            value=value,
            step=step,
            ended_at=_utcnow(),
            wall_s=self._wall0 + time.monotonic() - self._started,
        )
        self.closed = True

    def fail(self, status: str, error: str | None = None) -> None:
        """Record an abnormal end (failed, interrupted, pruned) with the curve so far."""
        if self.closed:
            return
        self.sync()
        self._safe(
            "update",
            self.uid,
            status=status,
            error=error,
            ended_at=_utcnow(),
            wall_s=self._wall0 + time.monotonic() - self._started,
        )
        self.closed = True

    def __enter__(self) -> TrainRecord:
        return self

    def __exit__(self, typ, value, tb) -> None:
        if typ is None or self.closed:
            return
        if issubclass(typ, KeyboardInterrupt):
            self.fail("interrupted")
        elif getattr(typ, "__name__", "") == "TrialPruned":
            self.fail("pruned")
        else:
            self.fail(
                "failed", f"{typ.__name__}: {str(value).splitlines()[0] if str(value) else ''}"
            )


def fit_recorded(
    trainer, run_dir: str | Path, command: str | None, registry: str | Registry | None = None
):
    """``trainer.fit()`` with its run-registry record: opened before the first step (reopened on
    a resume), the validation curve as it goes, the result at the end — what ``metalab train`` and
    :func:`metalab.train` both do. Under torchrun, rank 0 alone records."""
    if not trainer.world.is_main:
        return trainer.fit()
    try:
        record = TrainRecord.start(trainer.cfg, run_dir, command, registry, trainer.resumed)
    except BaseException:
        trainer.close()  # release the run folder's lock
        raise
    with record as rec:
        trainer.on_step = rec.on_step
        result = trainer.fit()
        rec.finish(result)
    return result


def _utcnow():
    import datetime as _dt

    return _dt.datetime.now(_dt.timezone.utc)


def _best(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not points:
        return None
    if points[0]["name"] == "val_mse":
        return min(points, key=lambda p: p["value"])
    return max(points, key=lambda p: p["value"])


def _checkpoint_step(run_dir: Path) -> int | None:
    """The step of the run's last.pt, where a resumed run continues (None: unreadable, the trainer
    reports that itself)."""
    last = run_dir / "last.pt"
    if not last.exists():
        return 0
    try:
        import torch

        return int(torch.load(last, map_location="cpu", weights_only=True)["step"])
    except Exception:  # noqa: BLE001
        return None


# --- eval and compare ---------------------------------------------------------------------------


def _parent_uid(reg: Registry, checkpoint: str | Path) -> str | None:
    run_dir = str(Path(checkpoint).expanduser().resolve().parent)
    rows = [r for r in reg.query(run_dir=run_dir) if r["kind"] in ("train", "trial")]
    return rows[0]["uid"] if rows else None


def record_eval(
    report: dict[str, Any],
    cfg,
    source: Any = None,
    command: str | None = None,
    registry: str | Registry | None = None,
    data: Any = None,
    wall_s: float | None = None,
) -> str | None:
    """One finished ``eval`` record from the report ``metalab eval --json`` prints; its uid.

    Args:
        source: the evaluated task source, when loaded (for the dataset descriptor).
        data: the evaluated DataConfig when it is not the run's own (``--dataset``).
    """
    reg = registry if isinstance(registry, Registry) else _open_for_recording(registry)
    if reg is None:
        return None
    metric = next((m for m in ("accuracy", "mse", "error_rate") if m in report), None)
    data = data if data is not None else cfg.data
    try:
        checkpoint = report.get("checkpoint")
        return reg.add(
            **(_common(cfg, command) | {"dataset": data.dataset}),
            kind="eval",
            status="finished",
            dataset_name=report.get("dataset"),
            dataset_desc=None if source is None else describe_source(source, data.dataset),
            split=report.get("split"),
            ways=report.get("ways"),
            shots=report.get("shots"),
            queries=report.get("queries"),
            metric=metric,
            value=None if metric is None else report.get(metric),
            ci95=report.get("ci95"),
            step=report.get("step"),
            results=report,
            run_dir=None if checkpoint is None else str(Path(checkpoint).resolve().parent),
            parent=None if checkpoint is None else _parent_uid(reg, checkpoint),
            ended_at=_utcnow(),
            wall_s=wall_s,
        )
    except Exception as e:  # noqa: BLE001
        log.warning("eval not recorded in the registry %s: %s", reg.url, e)
        return None


def compare_records(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One registry record per (method, setting) of a compare report (compare.json)."""
    settings = {s["name"]: s for s in report.get("settings", [])}
    rows = []
    for method in report.get("methods", {}).values():
        for name, res in method.get("results", {}).items():
            s = settings.get(name, {})
            metric = "mse" if "mse" in res else "accuracy"
            rows.append(
                {
                    "kind": "compare",
                    "status": "finished",
                    "algorithm": method.get("algorithm"),
                    "dataset_name": report.get("dataset"),
                    "split": report.get("split"),
                    "ways": s.get("ways"),
                    "shots": s.get("shots"),
                    "queries": s.get("queries"),
                    "metric": metric,
                    "value": res.get(metric),
                    "ci95": res.get("ci95"),
                    "step": method.get("step"),
                    "seed": report.get("seed"),
                    "run_dir": method.get("run"),
                    "command": report.get("command"),
                    "results": {"setting": name, "episodes": report.get("episodes")} | res,
                }
            )
    return rows


def record_compare(
    report: dict[str, Any], registry: str | Registry | None = None, dataset: str | None = None
) -> list[str]:
    """Record a ``compare`` report: one finished record per method and setting; their uids."""
    reg = registry if isinstance(registry, Registry) else _open_for_recording(registry)
    if reg is None:
        return []
    env = _environment()
    uids = []
    try:
        for row in compare_records(report):
            if row["run_dir"]:
                row["run_dir"] = str(Path(row["run_dir"]).expanduser().resolve())
                row["parent"] = _parent_uid(reg, Path(row["run_dir"]) / "best.pt")
            uids.append(
                reg.add(
                    **row,
                    dataset=dataset or _dataset_of(report.get("dataset")),
                    environment=env,
                    torch_version=env.get("torch"),
                    metalab_version=env.get("metalab"),
                    commit=env.get("commit"),
                    hardware=env.get("gpu") or env.get("cpu"),
                    world_size=world()[1],
                    ended_at=_utcnow(),
                )
            )
    except Exception as e:  # noqa: BLE001
        log.warning("compare not recorded in the registry %s: %s", reg.url, e)
    return uids


def _dataset_of(name: str | None) -> str | None:
    """The registered dataset of a split's name: omniglot-vinyals-test → omniglot."""
    if not name:
        return None
    try:
        import metalab.tasks.sources  # noqa: F401
        from metalab.registry import DATASETS

        names = sorted(DATASETS.names(), key=len, reverse=True)
    except Exception:  # noqa: BLE001
        names = []
    for n in names:
        if name == n or name.startswith(n + "-"):
            return n
    return name.split("-", 1)[0]
