"""An ensemble of trained learners scored as one: ``metalab eval RUN --ensemble RUN2 RUN3 ...``.

Each member adapts to the episode's support set on its own and scores the queries; the ensemble's
prediction is the mean of the members' class probabilities (softmax of their logits), returned as
its log so that argmax and the protocols' accuracy work unchanged. Averaging the outputs of networks
trained from different initialisations, or with different recipes, is the classic variance
reduction (Hansen & Salamon, "Neural Network Ensembles", TPAMI 1990).

Members must be trained on the same data as the first run (dataset and ``data.scheme``: the
protocols check the first run's training classes against the evaluated ones, e.g. that a challenge
run never saw the evaluation alphabets) and read the same inputs (image decoding and input shape),
so one evaluation split serves them all; regression runs are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from metalab.errors import ConfigError
from metalab.tasks.episodes import Episode


class Ensemble(nn.Module):
    """Learners whose class probabilities are averaged: ``predict`` → log of the mean softmax."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def predict(self, episode: Episode, **options: Any) -> Tensor:
        """(B, N*Q, N) log mean probability of each class over the members."""
        probs = torch.stack([m.predict(episode, **options).softmax(-1) for m in self.members])
        return probs.mean(0).clamp_min(1e-30).log()

    def protocol_report(self, split: Any, settings: Any) -> dict[str, Any]:
        return {}  # the members' own protocols (e.g. MANN's by instance) do not combine


def load_ensemble(
    first: nn.Module, cfg: Any, state: dict, runs: Sequence[str | Path], device, which: str
) -> tuple[Ensemble, list[str]]:
    """``first`` (loaded with ``cfg`` and ``state``) with the learners of ``runs`` (their ``which``
    checkpoint): the :class:`Ensemble` and the members' checkpoint paths. Refuses, in one line
    naming the run, a member trained on other data or reading other inputs, or a regression run."""
    from metalab.engine.build import load_learner
    from metalab.protocols.base import check_finite

    if getattr(first, "regression", False) and getattr(first, "ways", None) == 0:
        raise ConfigError(
            f"--ensemble scores classification runs; {state['path']} is a regression run"
        )
    members, paths = [first], [str(state["path"])]
    for run in runs:
        learner, other_cfg, other = load_learner(run, device, which)
        check_finite(learner, other["path"])
        data = lambda c: {"dataset": c.data.dataset, "scheme": c.data.scheme}  # noqa: E731
        mine, theirs = data(cfg), data(other_cfg)
        for what, a, b in (
            ("training data", theirs, mine),
            ("input shape", other.get("input_shape"), state.get("input_shape")),
            ("image decoding", other.get("preprocess"), state.get("preprocess")),
        ):
            if a != b:
                raise ConfigError(
                    f"--ensemble {run}: its {what} {a} differs from {state['path']}'s {b}; an "
                    "ensemble's runs must be trained on the same data and read the same inputs"
                )
        members.append(learner)
        paths.append(str(other["path"]))
    return Ensemble(members).to(device), paths
