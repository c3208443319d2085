"""Ranks on torch.distributed, as started by torchrun: no launcher of metalab's own.

``torchrun --nproc-per-node N -m metalab train CONFIG ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous in their environment; :func:`init_world` joins
them (gloo on CPUs, NCCL on GPUs, one GPU per local rank). Without those variables the world is one
process and nothing here talks to anyone.

The design for meta-learning (second-order MAML included): every rank draws the same global batch
from the run's generator, takes its own groups of tasks (:mod:`metalab.tasks.batching`), computes
the meta-gradient of its tasks locally — any ``create_graph=True`` differentiation stays inside the
rank, where DistributedDataParallel's hooks cannot break it — and one all-reduce sums the groups'
gradients. Evaluation shards the fixed episodes by batch and gathers the per-episode scores in
their original order, so the reported numbers are those of one process.
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from metalab.errors import ConfigError


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs, metrics and results."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"${name} = {value!r} is not an integer (torchrun sets it)") from None


_current = World()  # the world of this process, once init_world has run


def current_world() -> World:
    """This process's world (rank 0 of 1 until :func:`init_world` joins a torchrun group)."""
    return _current


def world_from_env() -> World:
    """The world torchrun describes in the environment (one process when it describes none)."""
    size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    local_size = _env_int("LOCAL_WORLD_SIZE", size)
    if size < 1 or not 0 <= rank < size:
        raise ConfigError(f"$RANK {rank} / $WORLD_SIZE {size} do not describe a process group")
    return World(rank, size, local_rank, local_size)


def init_world(device_name: str, timeout_s: float = 600.0) -> tuple[World, torch.device]:
    """Join the process group torchrun set up (if any) and pick this rank's device.

    ``device_name`` is the run's ``train.device``: ``auto`` takes GPU ``LOCAL_RANK`` when there
    are enough GPUs for the local processes, else the CPU; ``cuda`` with fewer GPUs than local
    processes is refused with one line.
    """
    from metalab.engine.build import resolve_device

    global _current
    world = world_from_env()
    device = resolve_device(device_name)
    if world.distributed and device.type == "cuda":
        gpus = torch.cuda.device_count()
        if gpus < world.local_size:
            if device_name == "auto":
                device = torch.device("cpu")
            else:
                raise ConfigError(
                    f"--device {device_name} with {world.local_size} processes on this machine "
                    f"but {gpus} GPU(s); start at most {gpus} processes per node "
                    f"(torchrun --nproc-per-node {gpus}) or use --device cpu"
                )
        else:
            device = torch.device("cuda", world.local_rank)
            torch.cuda.set_device(device)
    if world.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=timeout_s)
        try:
            store = _attempt_store(timeout)
            if store is None:
                dist.init_process_group(backend, timeout=timeout)
            else:
                dist.init_process_group(
                    backend, store=store, rank=world.rank, world_size=world.size, timeout=timeout
                )
        except (RuntimeError, ValueError) as e:  # rendezvous timeout, unreachable master
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(
                f"could not join the {world.size} processes (rank {world.rank}, {backend}): "
                f"{first}; check torchrun's --rdzv-endpoint / MASTER_ADDR:MASTER_PORT and that "
                f"every node started"
            ) from None
    _current = world
    return world, device


def _attempt_store(timeout: datetime.timedelta) -> dist.Store | None:
    """torchrun's store, with this restart's keys apart from the earlier attempts' (None when
    torchrun does not host the store: ``init_process_group`` then reads the environment itself).

    Under torchrun the workers share the agent's TCP store, which outlives a restart
    (``--max-restarts``); without a prefix, a restarted rank can read the address a dead rank of the
    previous attempt published, and gloo then retries that closed port until the timeout (PyTorch
    issue 135712: "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=0 is not compatible with torchelastic
    restarts"). The prefix is the attempt number the one agent of a one-node run gives all its
    workers (``TORCHELASTIC_RESTART_COUNT``). With several nodes each agent counts its own restarts,
    so the count cannot name an attempt: there the store is left as torchrun made it, and a run
    that may restart should start torchrun with ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``, as that
    issue advises (the README says so).
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    if _env_int("GROUP_WORLD_SIZE", 1) != 1:  # several agents (nodes): see above
        return None
    host, port = os.environ.get("MASTER_ADDR"), _env_int("MASTER_PORT", -1)
    if not host or not 0 <= port < 2**16:
        return None  # let init_process_group say what is missing
    agent = dist.TCPStore(host, port, is_master=False, timeout=timeout)
    attempt = _env_int("TORCHELASTIC_RESTART_COUNT", 0)
    return dist.PrefixStore(f"metalab/attempt_{attempt}", agent)


def close_world(world: World, finished: bool = True) -> None:
    """Leave the process group (a no-op for one process).

    A rank that ``finished`` its command first waits at a barrier for the others, so no rank tears
    its connections down while a peer is still sending to it: gloo can then abort the late rank at
    exit ("terminate called without an active exception", SIGABRT), and torchrun reports a run that
    trained correctly as failed. A rank leaving on an error or a signal (torchrun stops the others
    when a worker dies) does not wait: its peers may never come.
    """
    global _current
    if world.distributed and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()
    _current = World()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def all_reduce_gradients(params: Iterable[nn.Parameter], world: World) -> None:
    """Sum every parameter's gradient over the ranks, in one flat all-reduce.

    A parameter keeps ``grad = None`` only when it has none on every rank (as in one process, where
    an unused parameter has none — Adam then leaves it alone)."""
    if not world.distributed:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    device = params[0].device
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=device)
    flat = torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(device)
            for p in params
        ]
    )
    dist.all_reduce(present)
    dist.all_reduce(flat)
    offset = 0
    for p, any_rank in zip(params, present.tolist()):
        n = p.numel()
        if any_rank:
            p.grad = flat[offset : offset + n].view_as(p).to(p.dtype).clone()
        offset += n


def all_reduce_sum(values: Tensor, world: World) -> Tensor:
    """The element-wise sum of ``values`` over the ranks (returned; the input is left as it is)."""
    if not world.distributed:
        return values
    total = values.clone()
    dist.all_reduce(total)
    return total


def all_reduce_max(value: int, world: World) -> int:
    """The largest ``value`` over the ranks (how ranks agree to stop at the same step)."""
    if not world.distributed:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def restarted() -> bool:
    """Whether torchrun restarted this worker group after a failure (``--max-restarts``)."""
    return _env_int("TORCHELASTIC_RESTART_COUNT", 0) > 0


def gather_objects(obj: Any, world: World) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order."""
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, world: World) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class ShardedEpisodes:
    """This rank's share of a fixed evaluation set: batches ``rank, rank + W, …`` of
    ``episodes.batches(batch_size)``, with their positions, so the per-episode scores of all ranks
    can be put back in the set's order."""

    def __init__(self, episodes: Any, world: World) -> None:
        self.episodes, self.world = episodes, world
        self.positions: list[int] = []

    def batches(self, batch_size: int) -> Iterator[Any]:
        self.positions = []
        for i, batch in enumerate(self.episodes.batches(batch_size)):
            if i % self.world.size == self.world.rank:
                self.positions.append(i)
                yield batch

    def __len__(self) -> int:
        return len(self.episodes)


def evaluate_on_ranks(
    learner: nn.Module, episodes: Any, batch_size: int, world: World, **predict_options: Any
) -> Any:
    """:func:`metalab.engine.evaluate.evaluate` with the episode batches shared among the ranks;
    every rank returns the result of one process evaluating the whole set (same per-episode
    scores, same order, same mean and interval)."""
    from metalab.engine.evaluate import ACCURACY, MSE, EvalResult, evaluate, mean_ci95

    if not world.distributed:
        return evaluate(learner, episodes, batch_size, **predict_options)
    count = len(episodes)
    batches = math.ceil(count / batch_size)
    mine = list(range(world.rank, batches, world.size))
    pieces: list[tuple[int, Tensor]] = []
    kind = None
    if mine:
        result = evaluate(learner, ShardedEpisodes(episodes, world), batch_size, **predict_options)
        sizes = [min(batch_size, count - i * batch_size) for i in mine]
        pieces = list(zip(mine, result.per_episode.split(sizes)))
        kind = result.metric
    gathered = gather_objects((pieces, kind), world)
    kind = next(k for _, k in gathered if k is not None)
    ordered = sorted(
        ((i, t) for rank_pieces, _ in gathered for i, t in rank_pieces), key=lambda it: it[0]
    )
    per_episode = torch.cat([t for _, t in ordered])
    metric = {m.name: m for m in (ACCURACY, MSE)}[kind]
    mean, ci = mean_ci95(per_episode)
    return EvalResult(
        metric.scale * mean, metric.scale * ci, per_episode, metric.name, metric.higher_is_better
    )
