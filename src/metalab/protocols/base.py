"""The interface of an evaluation protocol, and how ``metalab eval`` picks one.

A protocol is one way of scoring a trained run: the field's fixed episodes (``standard.py``),
regression curves (``regression.py``), Lake et al.'s one-shot challenge (``omniglot_challenge.py``).
Each declares its own command-line flags, says when it applies, computes a report (a JSON-ready
dict) and formats it as text, so the command only picks one and prints:

    ev = Evaluation.load("runs/protonet", options)   # the run, and what it is evaluated on
    protocol = choose(PROTOCOLS, ev)                 # metalab.protocols.PROTOCOLS
    print(protocol.text(protocol.run(ev)))
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import torch

from metalab.algorithms.base import MetaLearner
from metalab.config import Config, DataConfig, EvalConfig
from metalab.errors import CheckpointError, ConfigError
from metalab.protocols.target import check_fits, evaluation_data

# the flags that override the run's ``eval:`` settings, by EvalConfig field
EVAL_FLAGS = ("split", "ways", "shots", "queries", "episodes", "seed")


@dataclass
class Evaluation:
    """A trained run and what it is evaluated on.

    Attributes:
        learner, cfg, state: the trained learner, its run config and its checkpoint state.
        device: where evaluation runs.
        data: the data evaluated on (the run's own, or ``--dataset``'s decoded as the run's).
        settings: the run's ``eval:`` config with the command's overrides.
        options: the command's flags (``argparse.Namespace``); a protocol reads its own with
            ``getattr(options, name, None)``, so any object with attributes will do.
        members: with ``--ensemble``, the checkpoints whose learners ``learner`` averages
            (:class:`metalab.engine.ensemble.Ensemble`; the run's own first); else empty.
    """

    learner: MetaLearner
    cfg: Config
    state: dict[str, Any]
    device: torch.device
    data: DataConfig
    settings: EvalConfig
    options: Any = dataclasses.field(default_factory=argparse.Namespace)
    members: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def load(cls, run: str | Path, options: Any) -> Evaluation:
        """Load ``run`` (a run directory or checkpoint) as ``options`` say: ``device``,
        ``checkpoint`` (best | last), ``dataset``, ``data_dir`` and the :data:`EVAL_FLAGS`."""
        from metalab.engine.build import load_learner
        from metalab.engine.distributed import init_world

        get = lambda name, default=None: getattr(options, name, None) or default
        _, device = init_world(get("device", "auto"))  # torchrun: this rank's device
        learner, cfg, state = load_learner(run, device, get("checkpoint", "best"))
        check_finite(learner, state["path"])
        members = []
        if get("ensemble"):
            from metalab.engine.ensemble import load_ensemble

            which = get("checkpoint", "best")
            learner, members = load_ensemble(learner, cfg, state, get("ensemble"), device, which)
        data = evaluation_data(cfg, state, get("dataset"), get("data_dir"))
        flags = {k: getattr(options, k, None) for k in EVAL_FLAGS}
        settings = dataclasses.replace(
            cfg.eval, **{k: v for k, v in flags.items() if v is not None}
        )
        return cls(learner, cfg, state, device, data, settings, options, members)

    @cached_property
    def split(self) -> Any:
        """The evaluated split as a task source on the device (loaded once, shape-checked)."""
        from metalab.tasks.sources import load_split

        split = load_split(self.data, self.settings.split)
        check_fits(split, self.state, self.data)
        return split.to(self.device)


def check_finite(learner: torch.nn.Module, path: Any) -> None:
    """Refuse a learner whose weights or buffers (BatchNorm statistics) are not all finite: its
    scores would be NaN or meaningless."""
    for kind, tensors in (
        ("weight", learner.named_parameters()),
        ("buffer", learner.named_buffers()),
    ):
        for name, t in tensors:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise CheckpointError(
                    f"{path} holds non-finite values (NaN or infinity) in its {kind} {name}; "
                    "evaluate another checkpoint (--checkpoint last or best) or retrain"
                )


class Protocol:
    """One way of evaluating a trained run. Subclasses set ``name`` and define ``run`` and
    ``text``; those with options of their own list them in ``flags`` and add them in
    ``add_flags``."""

    name: ClassVar[str]
    flags: ClassVar[tuple[str, ...]] = ()  # its own options (argparse dests), e.g. ("baseline",)
    automatic: ClassVar[bool] = False  # chosen without its flags wherever it applies

    def add_flags(self, parser: argparse.ArgumentParser) -> None:
        """Add this protocol's own flags to ``metalab eval``."""

    def requested(self, options: Any) -> bool:
        """Whether one of its own flags was given."""
        return any(getattr(options, f, None) not in (None, False) for f in self.flags)

    def refusal(self, ev: Evaluation) -> str | None:
        """Why it cannot evaluate ``ev`` (one line naming the flag and the fix); None: it can."""
        return None

    def run(self, ev: Evaluation) -> dict[str, Any]:
        """The report: a JSON-ready dict (what ``--json`` prints)."""
        raise NotImplementedError

    def text(self, report: dict[str, Any]) -> str:
        """The report as lines for a reader."""
        raise NotImplementedError


def flag_names(protocol: Protocol) -> str:
    return " / ".join("--" + f.replace("_", "-") for f in protocol.flags)


def choose(protocols: Sequence[Protocol], ev: Evaluation) -> Protocol:
    """The protocol whose flags were given (it must fit ``ev``), else the first automatic one that
    fits.

    Raises:
        ConfigError: flags of two protocols, or a requested protocol that refuses ``ev``.
    """
    asked = [p for p in protocols if p.requested(ev.options)]
    if len(asked) > 1:
        raise ConfigError(
            f"{flag_names(asked[0])} and {flag_names(asked[1])} belong to different protocols "
            f"({asked[0].name}, {asked[1].name}); pass the flags of one"
        )
    for p in asked or [p for p in protocols if p.automatic]:
        why = p.refusal(ev)
        if why is None:
            return p
        if asked:
            raise ConfigError(why)
    raise ConfigError(f"no evaluation protocol fits {ev.state['path']}")
