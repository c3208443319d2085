"""One meta-gradient over a training batch, in groups of tasks: task chunking and ranks in one
place.

The batch is split into G equal groups (:func:`metalab.tasks.batching.group_count`): one per rank,
or more when ``train.task_chunk`` bounds the tasks held in memory at once. This rank computes each
of its groups' mean loss, back-propagates ``loss / G`` (so the graph of one group is freed before
the next is built) and the ranks' gradients are summed in one all-reduce::

    ∇ = (1/G) Σ_g ∇ L_g        (L_g: mean loss over the tasks of group g)

which, with equal groups, is the gradient of the mean loss over the whole batch. Running
statistics (BatchNorm buffers) are updated the same way: every group starts from the step's
buffers, and the step leaves the mean over the groups of what each left (one group: the usual
momentum update) — so ranks end every step with identical buffers, equal to one process's.
Second-order meta-gradients (MAML) are complete within each group, so nothing in the all-reduce
needs ``create_graph``. A learner whose BatchNorm pools the tasks of a batch sees one group at a
time, so results depend on the group size — set ``train.task_chunk`` to make a run independent of
the world size as well.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from metalab.algorithms.base import MetaLearner
from metalab.engine.distributed import World, all_reduce_gradients, all_reduce_sum
from metalab.tasks.batching import group_count, select_group, units

UNIT_NAMES = {  # how a batch type's units are named in errors, and the flag that sizes them
    "Episode": ("tasks", "--meta-batch (train.meta_batch)"),
    "SequenceBatch": ("sequences", "--meta-batch (train.meta_batch)"),
    "PairBatch": ("pairs", "algorithm.batch_size"),
    "FlatBatch": ("images", "algorithm.batch_size"),
}


@dataclass
class StepResult:
    loss: float  # the mean loss over the whole batch (all groups, all ranks)
    metrics: dict[str, float]  # the learner's metrics, averaged over the groups


def accumulate_gradients(
    learner: MetaLearner, batch: Any, world: World = World(), chunk: int | None = None
) -> StepResult:
    """Back-propagate the batch's mean loss into ``learner``'s ``.grad`` (summed over the ranks).

    Args:
        learner: the model; its gradients should be zero (or None) on entry.
        batch: the whole global batch, the same on every rank.
        world: this process's rank and the world size.
        chunk: units (tasks, pairs, images) per group at most (``train.task_chunk``; None: one
            group per rank).

    Returns:
        The loss and metrics over the whole batch, the same on every rank.
    """
    unit, flag = UNIT_NAMES.get(type(batch).__name__, ("units", "the batch size"))
    groups = group_count(units(batch), world.size, chunk, unit, flag)
    # Running statistics (BatchNorm): each group starts from the step's buffers; afterwards they
    # are the mean over the groups of what each group left — one group: the usual update.
    # (counters such as num_batches_tracked advance once per step, as in one process)
    buffers = [b for _, b in learner.named_buffers()]
    floating = [(n, b) for n, b in learner.named_buffers() if torch.is_floating_point(b)]
    before = [b.detach().clone() for b in buffers] if groups > 1 else []
    sums = [torch.zeros_like(b) for _, b in floating] if groups > 1 else []
    totals: dict[str, torch.Tensor] = {}
    for g in range(world.rank, groups, world.size):
        if groups > 1:
            with torch.no_grad():
                for b, b0 in zip(buffers, before):
                    b.copy_(b0)
        out = learner.meta_loss(select_group(batch, g, groups) if groups > 1 else batch)
        (out.loss / groups).backward()
        for name, value in {"loss": out.loss, **out.metrics}.items():
            value = value.detach().double().cpu()
            totals[name] = totals.get(name, 0.0) + value
        for (_, b), total in zip(floating, sums):
            total += b.detach()
    device = next(learner.parameters()).device  # NCCL reduces GPU tensors only
    if groups > 1 and floating:
        flat = all_reduce_sum(torch.cat([t.reshape(-1) for t in sums]).to(device), world)
        with torch.no_grad():
            offset = 0
            for _, b in floating:
                b.copy_((flat[offset : offset + b.numel()] / groups).view_as(b))
                offset += b.numel()
    names = sorted(totals)
    local = torch.stack([totals[n] for n in names]).to(device)
    summed = all_reduce_sum(local, world).cpu() / groups
    all_reduce_gradients(learner.parameters(), world)
    values = dict(zip(names, summed.tolist()))
    return StepResult(values.pop("loss"), values)


@contextlib.contextmanager
def step_randomness(seed: int, step: int, rank: int, device: torch.device) -> Iterator[None]:
    """Within it, torch's global RNG (what dropout draws from, e.g. the ``transformer`` backbone's)
    is seeded from (run seed, step, rank); outside it, the caller's global RNG is as it was. A run's
    dropout masks are then the same on every rerun and after a ``--resume``, and differ between
    steps and ranks."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        value = hash((seed, step, rank)) & (2**63 - 1)  # ints hash the same in every process
        torch.default_generator.manual_seed(value)
        if device.type == "cuda":
            torch.cuda.manual_seed(value)
        yield
