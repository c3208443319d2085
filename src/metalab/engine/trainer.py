"""The one training loop, for every algorithm of every family.

Per step: draw the batch the algorithm asked for (``learner.train_sampler``), compute
``learner.meta_loss``, take an optimizer step. Around it: a learning-rate schedule, validation on a
fixed episode set (best checkpoint by the validation metric: highest accuracy for classification,
lowest MSE for regression), the last checkpoint every
``checkpoint_every`` steps, JSON-lines metrics, a progress bar on stderr, a wall-clock budget.

Resuming restores model, optimizer, schedule, sampler generator and step from ``last.pt``, so a run
killed and resumed ends with the same weights as a run never stopped (tested on the CPU).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

import metalab
from metalab.algorithms.base import MetaLearner, check_source
from metalab.config import Config, TrainConfig
from metalab.engine.build import build_learner, resolve_device
from metalab.engine.checkpoint import load_checkpoint, save_checkpoint
from metalab.engine.evaluate import evaluate
from metalab.engine.logs import MetricsLog
from metalab.errors import CheckpointError, ConfigError, TrainingError
from metalab.tasks.episodes import fixed_episodes, input_shape, is_regression
from metalab.tasks.sources import load_split, split_names


@dataclass
class TrainResult:
    run_dir: Path
    step: int  # steps completed
    stopped: str  # "steps" | "time" | "interrupted"
    best_val: float | None  # best validation score (accuracy in percent, or MSE), if validated
    metric: str = "accuracy"  # what best_val measures: accuracy | mse


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
    if t.lr_schedule == "constant":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=1.0)
    raise ConfigError(
        f"train.lr_schedule '{t.lr_schedule}' is unknown; choices: constant, step, cosine"
    )


class Trainer:
    """Holds one run's state; `fit` runs the loop. `on_step(step)` is called after each completed
    step."""

    def __init__(
        self,
        cfg: Config,
        run_dir: str | Path,
        resume: bool = False,
        on_step: Callable[[int], None] | None = None,
        progress: bool = True,
    ) -> None:
        self.cfg, self.run_dir, self.on_step, self.progress = cfg, Path(run_dir), on_step, progress
        t = cfg.train
        for key in ("steps", "checkpoint_every", "log_every"):
            if getattr(t, key) < 1:
                raise ConfigError(
                    f"train.{key} = {getattr(t, key)} is invalid: it must be at least 1"
                )
        self.device = resolve_device(t.device)
        last = self.run_dir / "last.pt"
        if last.exists() and not resume:
            raise CheckpointError(
                f"{self.run_dir} already holds a run (last.pt); pass --resume to continue "
                f"it, or choose another --out"
            )
        state = load_checkpoint(last) if resume else None
        if state is not None and state["algorithm"] != cfg.algorithm_name:
            raise CheckpointError(
                f"{last} was written by algorithm '{state['algorithm']}' but the config asks for "
                f"'{cfg.algorithm_name}'; resume with the run's own config or use another --out"
            )

        splits = split_names(cfg.data)
        train_split = load_split(cfg.data, cfg.data.train_split).to(self.device)
        check_source(cfg, train_split)
        self.preprocess = train_split.preprocess  # None for sources that decode nothing (sinusoid)
        self.input_shape = input_shape(train_split)
        self.learner: MetaLearner = build_learner(cfg, self.input_shape, t.seed).to(self.device)
        self.sampler = self.learner.train_sampler(train_split, cfg)
        self.val_set = None
        if t.val_every > 0 and cfg.data.val_split and cfg.data.val_split in splits:
            e = cfg.eval
            val = load_split(cfg.data, cfg.data.val_split).to(self.device)
            self.val_set = fixed_episodes(
                val, e.ways, e.shots, e.queries, t.val_episodes, e.seed, cfg.data.within_group
            )
        self.optimizer = make_optimizer(self.learner.parameters(), t)
        self.schedule = make_schedule(self.optimizer, t)
        self.generator = torch.Generator().manual_seed(t.seed)
        self.step, self.best_val, self.elapsed_s = 0, None, 0.0
        self.metric = "mse" if is_regression(train_split) else "accuracy"  # what best_val measures
        self._started = time.monotonic()
        if state is not None:
            self._restore(state, last)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        self.log = MetricsLog(self.run_dir, self.step if state is not None else None, t.tensorboard)

    def _restore(self, state: dict, path: Path) -> None:
        try:
            self.learner.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(
                f"{path} does not fit this config's model or optimizer "
                f"({str(e).splitlines()[0]}); resume with the run's own config"
            ) from None
        self.schedule.load_state_dict(state["scheduler"])
        self.generator.set_state(state["rng"]["sampler"])
        self.step, self.best_val, self.elapsed_s = (
            state["step"],
            state["best_val"],
            state["elapsed_s"],
        )

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
            "elapsed_s": self.elapsed_s
            + time.monotonic()
            - self._started,  # over all sessions of the run
        }

    def validate(self) -> None:
        if self.val_set is None:
            return
        result = evaluate(self.learner, self.val_set, self.cfg.eval.batch)
        self.log.write(self.step, {f"val_{result.metric}": result.value, "val_ci95": result.ci95})
        if result.better_than(self.best_val):
            self.best_val = result.value
            save_checkpoint(self.run_dir / "best.pt", self.state())

    def fit(self) -> TrainResult:
        t = self.cfg.train
        start = self._started = time.monotonic()
        budget_s = None if t.max_minutes is None else 60.0 * t.max_minutes
        window: dict[str, list[float]] = {}
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
        try:
            while self.step < t.steps:
                if budget_s is not None and time.monotonic() - start >= budget_s:
                    stopped = "time"
                    break
                self._train_step(window)
                if self.step % t.log_every == 0:
                    means = {k: sum(v) / len(v) for k, v in window.items()}
                    means["lr"] = self.optimizer.param_groups[0]["lr"]
                    self.log.write(self.step, means)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in means.items()}, refresh=False)
                    window.clear()
                if t.val_every > 0 and self.step % t.val_every == 0:
                    self.validate()
                if self.step % t.checkpoint_every == 0:
                    save_checkpoint(self.run_dir / "last.pt", self.state())
                bar.update(1)
                if self.on_step is not None:
                    self.on_step(self.step)
        except KeyboardInterrupt:
            stopped = "interrupted"
        finally:
            bar.close()
        if (
            self.val_set is not None
            and stopped != "interrupted"
            and (t.val_every <= 0 or self.step % t.val_every)
        ):
            self.validate()  # the final weights are always validated
        save_checkpoint(self.run_dir / "last.pt", self.state())
        self.log.close()
        return TrainResult(self.run_dir, self.step, stopped, self.best_val, self.metric)

    def _train_step(self, window: dict[str, list[float]]) -> None:
        batch = self.sampler.sample(self.generator)
        out = self.learner.meta_loss(batch)
        loss = float(out.loss.detach())
        if not math.isfinite(loss):
            save_checkpoint(
                self.run_dir / "last.pt", self.state()
            )  # weights are still those of the last good step
            raise TrainingError(
                f"the loss became {loss} at step {self.step + 1}; training stopped and "
                f"{self.run_dir / 'last.pt'} holds the last good weights (step {self.step}); "
                f"lower the learning rate (--lr) and continue with --resume"
            )
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if self.cfg.train.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.learner.parameters(), self.cfg.train.grad_clip)
        self.optimizer.step()
        self.schedule.step()
        self.step += 1
        window.setdefault("loss", []).append(loss)
        for k, v in out.metrics.items():
            window.setdefault(k, []).append(float(v))


def train(cfg: Config, run_dir: str | Path, resume: bool = False, **kwargs) -> TrainResult:
    """Meta-train `cfg` into `run_dir` (see Trainer)."""
    return Trainer(cfg, run_dir, resume, **kwargs).fit()
