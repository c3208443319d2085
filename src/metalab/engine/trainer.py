"""The one training loop, for every algorithm of every family.

Per step: draw the batch the algorithm asked for (``learner.train_sampler``), compute
``learner.meta_loss``, take an optimizer step. Around it: a learning-rate schedule, validation on a
fixed episode set (best checkpoint by the validation metric: highest accuracy for classification,
lowest MSE for regression), the last checkpoint every ``checkpoint_every`` steps, JSON-lines
metrics, a progress bar on stderr, a wall-clock budget.

What is never lost and never corrupted:

- The run folder is locked and guarded (:mod:`metalab.engine.rundir`): a second training into it,
  or a new run over an existing one or over other files, is refused.
- ``last.pt`` is the first file a new run writes (step 0) and is replaced atomically; a failed
  write (a full disk) leaves the previous one in place and stops the run with one line.
- SIGINT (Ctrl-C) and SIGTERM (timeout, Docker, Kubernetes, SLURM) end the run at a step boundary
  with ``last.pt`` saved; a second signal stops at once, keeping the last checkpoint.
- After every step the loss, the gradients, the weights, the buffers (BatchNorm statistics) and
  the optimizer state are checked finite. A problem found before the optimizer step is undone
  (buffers and sampler generator restored) and ``last.pt`` saved at the last good step; one found
  after it leaves ``last.pt`` at the last checkpoint, which was checked finite.
- Resuming restores model, optimizer, schedule, sampler generator, step and the metrics window
  from ``last.pt``, so a run stopped and resumed ends bit-identical to a run never stopped (tested
  on the CPU). A resume may change only the settings in :data:`RESUMABLE`; the changes are
  recorded in ``resumes.jsonl``.

Under torchrun (:mod:`metalab.engine.distributed`) every rank draws the same global batch, takes
its groups of tasks and the gradients are summed in one all-reduce (:mod:`metalab.engine.step`);
the ranks agree at each step boundary whether to stop, validation shares the episodes, and rank 0
alone locks and writes the run folder. After a failure, torchrun's restarted group resumes from
``last.pt`` without a flag.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

import metalab
from metalab.algorithms.base import MetaLearner, check_source
from metalab.config import Config, TrainConfig, algorithm_options, parse_config
from metalab.config import validate as validate_config
from metalab.engine.build import build_learner
from metalab.engine.checkpoint import RESUME_KEYS, load_checkpoint, save_checkpoint
from metalab.engine.distributed import all_reduce_max, evaluate_on_ranks, init_world, restarted
from metalab.engine.logs import MetricsLog
from metalab.engine.rundir import RunDir, atomic_write_text
from metalab.engine.step import accumulate_gradients, step_randomness
from metalab.errors import CheckpointError, ConfigError, MetalabError, TrainingError
from metalab.registry import ALGORITHMS
from metalab.tasks.episodes import fixed_episodes, input_shape, is_regression
from metalab.tasks.sources import load_split, split_names

# Settings a --resume may change: they change neither the weights a step computes nor what the
# run's record (config.yaml, best.pt, metrics.jsonl) means. Everything else is refused.
RESUMABLE = frozenset(
    {
        "train.steps",  # train longer (not with cosine or linear schedules: their length)
        "train.max_minutes",  # the budget of one session
        "train.device",
        "train.checkpoint_every",
        "train.log_every",
        "train.tensorboard",
        "data.data_dir",  # the same data, found elsewhere
        "data.download",
        "eval.batch",  # memory, not results
        "eval.episodes",  # defaults of `metalab eval`, unused in training
        "eval.split",
    }
)


@dataclass
class TrainResult:
    run_dir: Path
    step: int  # steps completed
    stopped: str  # "steps" | "time" | "interrupted"
    best_val: float | None  # best validation score (accuracy in percent, or MSE), if validated
    metric: str = "accuracy"  # what best_val measures: accuracy | mse
    signal: str | None = None  # SIGINT | SIGTERM when a signal ended the run


def make_optimizer(params, t: TrainConfig) -> torch.optim.Optimizer:
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    raise ConfigError(f"train.optimizer '{t.optimizer}' is unknown; choices: adam, sgd")


def make_schedule(
    opt: torch.optim.Optimizer, t: TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler:
    if t.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=t.lr_step, gamma=t.lr_gamma)
    if t.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(t.steps, 1))
    if t.lr_schedule == "linear":  # lr · (1 − step / steps): Reptile's annealing (Nichol et al.)
        total = max(t.steps, 1)
        return torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.0, total_iters=total)
    if t.lr_schedule == "constant":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=1.0)
    raise ConfigError(
        f"train.lr_schedule '{t.lr_schedule}' is unknown; choices: constant, step, cosine, linear"
    )


def first_nonfinite(named: Iterable[tuple[str, torch.Tensor | None]]) -> str | None:
    """The name of the first floating tensor holding a NaN or an infinity (one sync per device)."""
    by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    for name, t in named:
        if t is not None and torch.is_floating_point(t):
            by_device.setdefault(t.device, []).append((name, t))
    for group in by_device.values():
        ok = torch.stack([torch.isfinite(t).all() for _, t in group])
        if not bool(ok.all()):
            return group[int((~ok).nonzero()[0, 0])][0]
    return None


class _Diverged(Exception):
    """A non-finite loss, gradient, weight, buffer or optimizer state (`rolled_back`: the state is
    again exactly that of the last completed step)."""

    def __init__(self, problem: str, rolled_back: bool) -> None:
        super().__init__(problem)
        self.problem, self.rolled_back = problem, rolled_back


class _ForcedStop(KeyboardInterrupt):
    """A second stop signal: stop at once, mid-step; nothing of this step may be saved."""


class _WriteFailed(Exception):
    """A checkpoint or log write failed (the message says which and why)."""


class _StopSignals:
    """While entered (in the main thread): the first SIGINT or SIGTERM only asks the loop to stop
    at the next step boundary; a second one raises :class:`_ForcedStop`. Signals the process
    ignores (SIG_IGN, e.g. SIGINT of a background job) stay ignored."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous = signal.getsignal(sig)
                if previous is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            raise _ForcedStop(name)
        self.received = name
        print(
            f"\nmetalab: {name}: finishing this step, then saving last.pt and stopping "
            f"(send it again to stop at once, losing the steps since the last checkpoint)",
            file=sys.stderr,
            flush=True,
        )

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


def _settings(cfg: Config) -> dict[str, Any]:
    """A config as flat ``section.key`` → value, the algorithm's options with their defaults."""
    options = algorithm_options(cfg, ALGORITHMS.get(cfg.algorithm_name).Config)
    flat = {"algorithm.name": cfg.algorithm_name}
    flat |= {f"algorithm.{k}": v for k, v in dataclasses.asdict(options).items()}
    for section in ("data", "train", "eval"):
        for k, v in dataclasses.asdict(getattr(cfg, section)).items():
            flat[f"{section}.{k}"] = v
    return flat


class Trainer:
    """Holds one run's state; `fit` runs the loop. `on_step(step)` is called after each completed
    step. The run folder is locked from construction until `fit` returns (or `close`)."""

    def __init__(
        self,
        cfg: Config,
        run_dir: str | Path,
        resume: bool = False,
        on_step: Callable[[int], None] | None = None,
        progress: bool = True,
    ) -> None:
        self.cfg, self.run_dir, self.on_step, self.progress = cfg, Path(run_dir), on_step, progress
        try:
            validate_config(cfg)  # ranges again: a section may have been changed in place
        except ConfigError as e:
            raise ConfigError(f"config: {e}") from None
        # torchrun: this rank's place and device (one process: rank 0 of 1, the configured device)
        self.world, self.device = init_world(cfg.train.device)
        if self.world.distributed and restarted() and (self.run_dir / "last.pt").exists():
            resume = True  # torchrun restarted the group after a failure: go on from last.pt
        self.resumed = resume  # going on from last.pt (the run registry reopens the record)
        # rank 0 alone holds and writes the run folder
        self.rundir = RunDir(self.run_dir).open(resume) if self.world.is_main else None
        try:
            self._setup(resume)
        except BaseException:
            if self.rundir is not None:
                self.rundir.close(discard=True)
            raise

    def _setup(self, resume: bool) -> None:
        last = self.run_dir / "last.pt"
        state, self.changes = None, {}
        if resume:
            state = load_checkpoint(last, required=RESUME_KEYS)
            if state["algorithm"] != self.cfg.algorithm_name:
                raise CheckpointError(
                    f"{last} was written by algorithm '{state['algorithm']}' but the config asks "
                    f"for '{self.cfg.algorithm_name}'; resume with the run's own config or use "
                    f"another --out"
                )
            self.cfg = self._accept_changes(state, last)
        cfg, t = self.cfg, self.cfg.train

        splits = split_names(cfg.data)
        train_split = load_split(cfg.data, cfg.data.train_split).to(self.device)
        check_source(cfg, train_split)
        self.preprocess = train_split.preprocess  # None for sources that decode nothing (sinusoid)
        self.input_shape = input_shape(train_split)
        self.learner: MetaLearner = build_learner(cfg, self.input_shape, t.seed).to(self.device)
        # the options as the learner resolved them (e.g. Baseline's class count, read from the
        # data when unset), so config.yaml and the checkpoints rebuild it without the data
        if dataclasses.is_dataclass(getattr(self.learner, "options", None)):
            resolved = {"name": cfg.algorithm_name, **dataclasses.asdict(self.learner.options)}
            self.cfg = cfg = dataclasses.replace(cfg, algorithm=resolved)
        self.sampler = self.learner.training_batches(train_split, cfg)
        self.val_set = None
        if t.val_every > 0 and cfg.data.val_split and cfg.data.val_split in splits:
            e = cfg.eval
            val = load_split(cfg.data, cfg.data.val_split).to(self.device)
            self.val_set = fixed_episodes(
                val, e.ways, e.shots, e.queries, t.val_episodes, e.seed, cfg.data.within_group
            )
        elif t.val_every > 0 and cfg.data.val_split and self.world.is_main:
            logging.getLogger("metalab").warning(
                "data.val_split '%s' is not a split of this dataset (it has: %s): training without "
                "validation, so no best.pt; set data.val_split: null to say so",
                cfg.data.val_split,
                ", ".join(splits),
            )
        self.optimizer = make_optimizer(self.learner.parameters(), t)
        self.schedule = make_schedule(self.optimizer, t)
        self.generator = torch.Generator().manual_seed(t.seed)
        self.step, self.best_val, self.elapsed_s = 0, None, 0.0
        self.window: dict[str, list[float]] = {}  # metrics of the steps since the last log line
        self.saved_step: int | None = None  # the step last.pt holds
        self.metric = "mse" if is_regression(train_split) else "accuracy"  # what best_val measures
        self._started = time.monotonic()
        if state is not None:
            self._restore(state, last)
            self.saved_step = self.step
        else:
            # last.pt before any other file: a run killed at any later moment can be resumed, and
            # a folder without last.pt holds nothing but the lock (a new run may start there)
            try:
                self._save("last.pt")
            except _WriteFailed as w:
                raise TrainingError(f"{w}; free disk space in {self.run_dir}") from None
        self.log = None
        if not self.world.is_main:
            return
        try:
            atomic_write_text(
                self.run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False)
            )
        except OSError as e:
            raise CheckpointError(
                f"could not write {self.run_dir / 'config.yaml'} ({e.strerror})"
            ) from None
        self.log = MetricsLog(self.run_dir, self.step if state is not None else None, t.tensorboard)
        if state is not None:
            self._record_resume()

    def _accept_changes(self, state: dict, last: Path) -> Config:
        """The config to resume with: refused when it changes a setting outside RESUMABLE; a
        missing data_dir is taken from the run."""
        cfg = self.cfg
        try:
            old = parse_config(state["config"], str(last))
        except ConfigError as e:
            raise CheckpointError(
                f"{e} (the config stored in the checkpoint); resume with the metalab version "
                f"that wrote it"
            ) from None
        if cfg.data.data_dir is None and old.data.data_dir is not None:
            data = dataclasses.replace(cfg.data, data_dir=old.data.data_dir)
            cfg = dataclasses.replace(cfg, data=data)
        # options left unset (None: resolved by the learner when built) take the run's value
        unset = {k: v for k, v in old.algorithm.items() if cfg.algorithm.get(k) is None}
        if unset:
            cfg = dataclasses.replace(cfg, algorithm=cfg.algorithm | unset)
        a, b = _settings(old), _settings(cfg)
        changed = {
            k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)
        }
        refused = [f"{k} {v[0]!r} → {v[1]!r}" for k, v in changed.items() if k not in RESUMABLE]
        if refused:
            raise ConfigError(
                f"--resume with changed settings ({', '.join(refused)}): {last} was trained "
                f"with the former and the run's record would no longer be true; resume with the "
                f"run's own settings ({self.run_dir / 'config.yaml'}) or train into another "
                f"--out (a resume may change: {', '.join(sorted(RESUMABLE))})"
            )
        if "train.steps" in changed:
            if cfg.train.steps < state["step"]:
                raise ConfigError(
                    f"--steps {cfg.train.steps} is below the step {last} has reached "
                    f"({state['step']}); pass --steps {state['step']} or more to --resume"
                )
            if cfg.train.lr_schedule in ("cosine", "linear"):
                raise ConfigError(
                    f"--steps cannot change on --resume with train.lr_schedule "
                    f"{cfg.train.lr_schedule} (its length is train.steps = {old.train.steps}); "
                    f"resume with --steps {old.train.steps}"
                )
        self.changes = changed
        return cfg

    def _record_resume(self) -> None:
        """One line per resume in resumes.jsonl: when, from which step, which settings changed."""
        line = {
            "step": self.step,
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "changed": {k: list(v) for k, v in self.changes.items()},
        }
        path = self.run_dir / "resumes.jsonl"
        try:
            with path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
        except OSError as e:
            raise TrainingError(f"could not append to {path} ({e.strerror})") from None

    def _restore(self, state: dict, path: Path) -> None:
        try:
            self.learner.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["scheduler"])
            self.generator.set_state(state["rng"]["sampler"])
            self.step, self.best_val = int(state["step"]), state["best_val"]
            self.elapsed_s = float(state["elapsed_s"])
            self.window = {
                str(k): [float(x) for x in v] for k, v in state.get("log_window", {}).items()
            }
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CheckpointError(
                f"{path} does not fit this config's model or optimizer ({first}); resume with "
                f"the run's own config"
            ) from None

    def state(self) -> dict:
        return {
            "metalab_version": metalab.__version__,
            "algorithm": self.cfg.algorithm_name,
            "config": self.cfg.to_dict(),
            "input_shape": list(self.input_shape),
            "preprocess": None if self.preprocess is None else vars(self.preprocess),
            "step": self.step,
            "model": self.learner.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "rng": {"sampler": self.generator.get_state()},
            "best_val": self.best_val,
            # over all sessions of the run
            "elapsed_s": self.elapsed_s + time.monotonic() - self._started,
            "log_window": {k: list(v) for k, v in self.window.items()},
            "world_size": self.world.size,  # processes that trained the last session
        }

    def _save(self, name: str) -> None:
        try:
            if self.world.is_main:
                save_checkpoint(self.run_dir / name, self.state())
        except CheckpointError as e:
            raise _WriteFailed(str(e)) from None
        if name == "last.pt":
            self.saved_step = self.step

    def _log(self, step: int, values: dict[str, Any]) -> None:
        if self.log is None:  # ranks other than 0
            return
        try:
            self.log.write(step, values)
        except TrainingError as e:
            raise _WriteFailed(str(e)) from None

    def validate(self) -> None:
        if self.val_set is None:
            return
        result = evaluate_on_ranks(self.learner, self.val_set, self.cfg.eval.batch, self.world)
        self._log(self.step, {f"val_{result.metric}": result.value, "val_ci95": result.ci95})
        if result.better_than(self.best_val):
            self.best_val = result.value
            self._save("best.pt")

    def close(self) -> None:
        """Close the logs and release the run folder (done by `fit`)."""
        if self.log is not None:
            self.log.close()
        if self.rundir is not None:
            self.rundir.close()

    def fit(self) -> TrainResult:
        t = self.cfg.train
        start = self._started = time.monotonic()
        budget_s = None if t.max_minutes is None else 60.0 * t.max_minutes
        stopped = "steps"
        bar = tqdm(
            total=t.steps,
            initial=self.step,
            file=sys.stderr,
            disable=not self.progress,
            desc=self.cfg.algorithm_name,
            dynamic_ncols=True,
        )
        self.learner.train()
        signals = _StopSignals()
        try:
            with signals:
                try:
                    while self.step < t.steps:
                        # every rank stops at the same step: a signal or the budget on any one
                        timeout = budget_s is not None and time.monotonic() - start >= budget_s
                        reason = 2 if signals.received is not None else 1 if timeout else 0
                        reason = all_reduce_max(reason, self.world)
                        if reason:
                            stopped = "interrupted" if reason == 2 else "time"
                            break
                        self._train_step()
                        self._after_step(bar)
                    if (
                        self.val_set is not None
                        and stopped != "interrupted"
                        and (t.val_every <= 0 or self.step % t.val_every)
                    ):
                        self.validate()  # the final weights are always validated
                    self._save("last.pt")
                except _Diverged as d:
                    raise self._diverged(d) from None
                except KeyboardInterrupt as k:  # a second signal (or one the loop could not catch)
                    name = str(k) if isinstance(k, _ForcedStop) else "KeyboardInterrupt"
                    raise TrainingError(
                        f"stopped at once by a second {name} during step {self.step + 1}; "
                        f"{self._held()} (the steps after it are lost); continue with --resume"
                    ) from None
                except _WriteFailed as w:
                    raise TrainingError(
                        f"{w}; training stopped at step {self.step} and {self._held()}; free disk "
                        f"space in {self.run_dir} and continue with --resume"
                    ) from None
        finally:
            bar.close()
            self.close()
        return TrainResult(
            self.run_dir, self.step, stopped, self.best_val, self.metric, signals.received
        )

    def _held(self) -> str:
        last = self.run_dir / "last.pt"
        if self.saved_step is None:
            return f"no {last} was written"
        return f"{last} holds step {self.saved_step}"

    def _after_step(self, bar: tqdm) -> None:
        t = self.cfg.train
        if self.step % t.log_every == 0:
            means = {k: sum(v) / len(v) for k, v in self.window.items()}
            means["lr"] = self.optimizer.param_groups[0]["lr"]
            self._log(self.step, means)
            bar.set_postfix({k: f"{v:.4g}" for k, v in means.items()}, refresh=False)
            self.window.clear()
        if t.val_every > 0 and self.step % t.val_every == 0:
            self.validate()
        if self.step % t.checkpoint_every == 0:
            self._save("last.pt")
        bar.update(1)
        if self.on_step is not None:
            self.on_step(self.step)

    def _diverged(self, d: _Diverged) -> MetalabError:
        advice = (
            "lower the learning rate (--lr) or set train.grad_clip, and train again into "
            "another --out"
        )
        if not d.rolled_back:
            return TrainingError(
                f"{d.problem} at step {self.step}; training stopped and {self._held()}, the last "
                f"checkpoint (checked finite; the steps after it are dropped); {advice}"
            )
        try:
            self._save("last.pt")
        except _WriteFailed as w:
            return TrainingError(
                f"{d.problem} at step {self.step + 1}; training stopped, but {w}; {advice}"
            )
        return TrainingError(
            f"{d.problem} at step {self.step + 1}; training stopped and {self._held()}, rolled "
            f"back to the last weights checked finite; {advice}"
        )

    def _tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Weights, buffers and optimizer state, named (for the finiteness check)."""
        yield from self.learner.named_parameters()
        yield from self.learner.named_buffers()
        names = {id(p): n for n, p in self.learner.named_parameters()}
        for p, st in self.optimizer.state.items():
            for k, v in st.items():
                if isinstance(v, torch.Tensor):
                    yield f"the optimizer's {k} of {names.get(id(p), '?')}", v

    def _train_step(self) -> None:
        # what the forward pass changes before the loss is seen, to undo a failed step exactly
        buffers = {n: b.detach().clone() for n, b in self.learner.named_buffers()}
        rng = self.generator.get_state()
        batch = self.sampler.sample(self.generator)  # the global batch, the same on every rank
        self.optimizer.zero_grad(set_to_none=True)
        # this rank's groups of tasks, their gradients summed over the ranks (engine/step.py)
        with step_randomness(self.cfg.train.seed, self.step, self.world.rank, self.device):
            out = accumulate_gradients(self.learner, batch, self.world, self.cfg.train.task_chunk)
        loss = out.loss
        problem = None
        if not math.isfinite(loss):
            problem = f"the loss became {loss}"
        elif (bad := first_nonfinite(self.learner.named_buffers())) is not None:
            problem = f"buffer {bad} became non-finite (the loss stayed finite)"
        else:
            grads = ((n, p.grad) for n, p in self.learner.named_parameters())
            if (bad := first_nonfinite(grads)) is not None:
                problem = f"the gradient of {bad} became non-finite"
        if problem is not None:
            with torch.no_grad():
                for n, b in self.learner.named_buffers():
                    b.copy_(buffers[n])
            self.generator.set_state(rng)
            self.optimizer.zero_grad(set_to_none=True)
            raise _Diverged(problem, rolled_back=True)
        if self.cfg.train.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.learner.parameters(), self.cfg.train.grad_clip)
        self.optimizer.step()
        self.schedule.step()
        self.step += 1
        if (bad := first_nonfinite(self._tensors())) is not None:
            raise _Diverged(f"{bad} became non-finite after the update", rolled_back=False)
        self.window.setdefault("loss", []).append(loss)
        for k, v in out.metrics.items():
            self.window.setdefault(k, []).append(v)


def train(cfg: Config, run_dir: str | Path, resume: bool = False, **kwargs) -> TrainResult:
    """Meta-train `cfg` into `run_dir` (see Trainer)."""
    return Trainer(cfg, run_dir, resume, **kwargs).fit()
