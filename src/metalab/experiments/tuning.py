"""Hyper-parameter tuning on Optuna: ``metalab tune CONFIG --trials N``.

Each trial draws a configuration from the search space (TPE), trains it with the normal engine
(``metalab.engine.trainer.train``: checkpoints, signals, ``train.max_minutes``) into
``OUT/trial-NNNN``, reports its validation curve to Optuna at every ``train.val_every`` and is
pruned when it falls behind (median pruner by default; successive halving on request). The
objective is the trial's best validation score (accuracy, maximized; MSE, minimized). Every trial
is a registry record (kind ``trial``); at the end the best configuration is written as a YAML
preset (``OUT/best.yaml``) and recorded (kind ``study``, with the task's meta-features, which is
what warm starts search).

The study lives in an Optuna storage (``--storage URL``; default ``sqlite:///OUT/optuna.db``), so
running the same command again resumes it, and several processes or machines pointed at one
storage work on one study (Optuna's own distributed mode). ``--trials N`` counts the study's
completed and pruned trials, over all workers and sessions. Workers send heartbeats: the trial of
a worker that died is marked failed by the next worker that starts a trial, and the study goes on.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from metalab.errors import ConfigError, MetalabError
from metalab.experiments.errors import require
from metalab.experiments.spaces import load_space

log = logging.getLogger("metalab")

# a stand-in for training in tests: (config, run directory, report(step, value)) → best value
TrialTrainer = Callable[[Any, Path, Callable[[int, float], None]], float]


@dataclass
class TuneSpec:
    """Everything a tuning session needs (what ``metalab tune`` parses from its flags)."""

    config: Path
    trials: int
    out: Path
    space_path: Path | None = None
    storage: str | None = None
    study: str | None = None
    timeout_min: float | None = None
    overrides: list[str] = field(default_factory=list)
    pruner: str = "median"  # median | halving | none
    seed: int | None = None  # the sampler's seed (None: random; give each worker its own)
    startup_trials: int | None = None  # random trials before TPE models (default: trials // 3)
    warm_start: int = 0  # enqueue the best configs of this many nearest past studies
    warm_other_tasks: bool = False  # warm starts only from studies of other tasks (benchmarks)
    registry: str | None = None
    heartbeat_s: int = 30  # worker heartbeat; a trial silent for 3 beats is marked failed
    command: str | None = None

    def base(self) -> dict[str, Any]:
        """The config mapping trials start from: the YAML file plus the overrides."""
        import metalab.algorithms  # noqa: F401 - registers the algorithms the config names
        from metalab.config import apply_override, load_config

        path = Path(self.config)
        load_config(path, self.overrides)  # one-line errors for a bad file or override, now
        values = yaml.safe_load(path.read_text()) or {}
        for item in self.overrides:
            apply_override(values, item)
        if isinstance(values.get("algorithm"), str):
            values["algorithm"] = {"name": values["algorithm"]}
        return values


@dataclass
class TuneResult:
    study: str
    storage: str
    direction: str
    metric: str
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    preset: Path | None
    counts: dict[str, int]
    enqueued: list[dict[str, Any]]
    registry_uid: str | None = None


def config_with(base: dict[str, Any], params: dict[str, Any]):
    """The validated Config of ``base`` with ``params`` (dotted keys) set."""
    from metalab.config import apply_override, parse_config

    values = copy.deepcopy(base)
    for key, value in params.items():
        apply_override(values, f"{key}={json.dumps(value)}")
    return parse_config(values, "trial config"), values


def _metric_of(cfg) -> str:
    from metalab.tasks.episodes import is_regression
    from metalab.tasks.sources import load_split

    source = load_split(cfg.data, cfg.data.train_split)
    return ("mse" if is_regression(source) else "accuracy"), source


def _storage(optuna, spec: TuneSpec):
    url = spec.storage or f"sqlite:///{(spec.out / 'optuna.db').resolve()}"
    if "://" not in url:
        url = f"sqlite:///{Path(url).expanduser().resolve()}"
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    # the callback on a dead worker's trial: renamed in Optuna 4.9, the old name before
    params = inspect.signature(optuna.storages.RDBStorage).parameters
    name = (
        "heartbeat_stale_trial_callback"
        if "heartbeat_stale_trial_callback" in params
        else "failed_trial_callback"
    )
    kwargs[name] = _mark_failed_in_registry(spec)
    # workers starting together on a fresh database race to create Optuna's tables: the loser
    # fails on a unique constraint and, on a second try, finds the tables there
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return url, optuna.storages.RDBStorage(
                    url,
                    heartbeat_interval=spec.heartbeat_s,
                    grace_period=3 * spec.heartbeat_s,
                    **kwargs,
                )
        except Exception as e:  # noqa: BLE001 - any driver's error: one line naming the URL
            race = "IntegrityError" in f"{type(e).__name__} {e}" or "already exists" in str(e)
            if attempt < 4 and race:
                time.sleep(0.5 * (attempt + 1))
                continue
            raise ConfigError(
                f"--storage {url}: cannot open it ({str(e).splitlines()[0]}); pass a SQLAlchemy "
                f"URL such as sqlite:///study.db"
            ) from None


def _mark_failed_in_registry(spec: TuneSpec):
    def callback(study, trial) -> None:
        uid = trial.user_attrs.get("registry_uid")
        log.warning(
            "trial %d of study %s died with its worker; marked failed",
            trial.number,
            study.study_name,
        )
        if uid:
            from metalab.experiments.record import _open_for_recording

            reg = _open_for_recording(spec.registry)
            if reg is not None:
                reg.update(uid, status="failed", error="its worker died (no heartbeat)")

    return callback


def _say_failed(study, trial) -> None:
    """One line for a failed trial (Optuna's own warning carries a traceback)."""
    if trial.state.name == "FAIL":
        reason = trial.user_attrs.get("error", "see the registry record")
        log.warning("trial %d failed with %s: %s", trial.number, trial.params, reason)


def _pruner(optuna, name: str, startup: int):
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=0)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner {name!r} is unknown; choices: median, halving, none")


def tune(spec: TuneSpec, trainer: TrialTrainer | None = None) -> TuneResult:
    """Run (or resume) a study until it holds ``spec.trials`` completed or pruned trials, or
    ``timeout_min`` has passed; write and record the best configuration."""
    optuna = require("optuna", "tune")
    from metalab.experiments.record import TrainRecord, _open_for_recording

    if spec.trials < 1:
        raise ConfigError(f"--trials {spec.trials} is invalid: it must be at least 1")
    base = spec.base()
    cfg0, _ = config_with(base, {})
    if cfg0.train.val_every <= 0 or not cfg0.data.val_split:
        raise ConfigError(
            f"{spec.config}: tuning needs a validation curve, but train.val_every is "
            f"{cfg0.train.val_every} and data.val_split {cfg0.data.val_split!r}; set "
            f"train.val_every > 0 (e.g. --set train.val_every=100)"
        )
    space = load_space(spec.space_path, base, cfg0.algorithm_name)
    metric, source = _metric_of(cfg0)
    direction = "maximize" if metric == "accuracy" else "minimize"
    name = spec.study or Path(spec.config).stem
    spec.out.mkdir(parents=True, exist_ok=True)
    url, storage = _storage(optuna, spec)

    from metalab.experiments.metafeatures import task_features

    task_key, features = task_features(cfg0.data, source)
    startup = spec.startup_trials or max(2, min(10, spec.trials // 3))
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials: one line each, below
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            direction=direction,
            sampler=optuna.samplers.TPESampler(n_startup_trials=startup, seed=spec.seed),
            pruner=_pruner(optuna, spec.pruner, startup),
            load_if_exists=True,
        )
    except ValueError as e:  # e.g. an existing study of the other direction
        raise ConfigError(f"--study {name} in {url}: {str(e).splitlines()[0]}") from None
    if study.direction.name.lower() != direction:
        raise ConfigError(
            f"--study {name} in {url} was created to {study.direction.name.lower()} but this "
            f"config's metric ({metric}) is to {direction}; choose another --study"
        )
    study.set_user_attr("config", str(Path(spec.config).resolve()))
    study.set_user_attr("metric", metric)

    registry = _open_for_recording(spec.registry)
    enqueued: list[dict[str, Any]] = []
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=states))
    if spec.warm_start > 0 and done < spec.trials:  # a finished study gets nothing new to run
        from metalab.experiments.warmstart import enqueue_warm_starts

        enqueued = enqueue_warm_starts(
            study,
            registry,
            space,
            cfg0,
            features,
            spec.warm_start,
            exclude_study=name,
            exclude_task=task_key if spec.warm_other_tasks else None,
        )

    def objective(trial) -> float:
        try:
            return run_trial(trial)
        except MetalabError as e:
            trial.set_user_attr("error", str(e).splitlines()[0] if str(e) else type(e).__name__)
            raise

    def run_trial(trial) -> float:
        params = {key: p.suggest(trial) for key, p in space.items()}
        cfg, _ = config_with(base, params)
        run_dir = spec.out / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir.resolve()))

        rec = TrainRecord.start(
            cfg,
            run_dir,
            spec.command,
            registry=registry,
            kind="trial",
            study=name,
            trial=trial.number,
            source=source,
            extra={"task_key": task_key, "metafeatures": features, "results": {"params": params}},
        )
        if rec.uid:
            trial.set_user_attr("registry_uid", rec.uid)

        def report(step: int, value: float) -> None:
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step} ({metric} {value:.4g})")

        with rec:
            if trainer is not None:  # a stand-in for the engine (tests)

                def report_and_record(step: int, value: float) -> None:
                    rec.point(step, f"val_{metric}", value)
                    report(step, value)

                value = trainer(cfg, run_dir, report_and_record)
                rec.complete(metric, value)
                return value
            from metalab.engine.trainer import train

            def on_step(step: int) -> None:
                for p in rec.on_step(step):
                    report(p["step"], p["value"])

            result = train(cfg, run_dir, on_step=on_step, progress=False)
            rec.finish(result)
            if result.best_val is None:
                raise ConfigError(f"trial {trial.number} ended without a validation score")
            if result.stopped == "interrupted":
                raise KeyboardInterrupt
            return result.best_val

    if done < spec.trials:
        study.optimize(
            objective,
            timeout=None if spec.timeout_min is None else 60.0 * spec.timeout_min,
            catch=(MetalabError,),
            callbacks=[optuna.study.MaxTrialsCallback(spec.trials, states=states), _say_failed],
        )
    return _finish(
        study, spec, base, url, metric, direction, cfg0, task_key, features, registry, enqueued
    )


def _finish(
    study, spec, base, url, metric, direction, cfg0, task_key, features, registry, enqueued
) -> TuneResult:
    optuna = sys.modules["optuna"]
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return TuneResult(
            study.study_name, url, direction, metric, None, {}, None, None, counts, enqueued
        )
    best = study.best_trial
    cfg, values = config_with(base, best.params)
    preset = spec.out / "best.yaml"
    header = (
        f"# Best configuration of study '{study.study_name}' ({url}): trial {best.number}, "
        f"best validation {metric} {best.value:.6g}\n# over {len(complete)} completed trials "
        f"({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}); "
        f"tuned keys: {', '.join(best.params)}\n"
    )
    preset.write_text(header + yaml.safe_dump(values, sort_keys=False))
    result = TuneResult(
        study.study_name,
        url,
        direction,
        metric,
        best.value,
        dict(best.params),
        best.number,
        preset,
        counts,
        enqueued,
    )
    if registry is not None:
        result.registry_uid = _record_study(registry, result, spec, cfg, cfg0, task_key, features)
    return result


def _record_study(registry, result: TuneResult, spec, cfg, cfg0, task_key, features) -> str | None:
    """The study's record (one per study and output folder, updated by each session)."""
    from metalab.experiments.record import _common, _utcnow

    out = str(spec.out.resolve())
    try:
        fields = _common(cfg, spec.command) | {
            "kind": "study",
            "status": "finished",
            "study": result.study,
            "trial": result.best_trial,
            "split": cfg0.data.val_split,
            "ways": cfg0.eval.ways,
            "shots": cfg0.eval.shots,
            "queries": cfg0.eval.queries,
            "metric": result.metric,
            "value": result.best_value,
            "run_dir": out,
            "task_key": task_key,
            "metafeatures": features,
            "ended_at": _utcnow(),
            "results": {
                "storage": result.storage,
                "best_params": result.best_params,
                "best_trial": result.best_trial,
                "trials": result.counts,
                "preset": str(result.preset),
                "warm_starts": result.enqueued,
                "direction": result.direction,
            },
        }
        for r in registry.query(kind="study", study=result.study):
            if r["run_dir"] == out:
                registry.update(r["uid"], **fields)
                return r["uid"]
        return registry.add(**fields)
    except Exception as e:  # noqa: BLE001
        log.warning("study not recorded in the registry %s: %s", registry.url, e)
        return None


def worker_seed() -> int:
    """A seed that differs between processes (several workers on one study)."""
    return int.from_bytes(os.urandom(4), "little")
