"""Training speed: of any registered algorithm on its configured data (:func:`bench_algorithm`), and
of second-order MAML with the tasks of a meta-batch in parallel (vmap) versus the per-task reference
loop on Omniglot-shaped inputs (1×28×28, Conv-4 with 64 filters, random images; :func:`run_bench`).

    from metalab.tools.bench import bench_algorithm, run_bench
    run_bench(torch.device("cpu"))   # {"settings": [{"name": "5w1s-q1", "vmap_tasks_per_s": ...,
                                     #   ...}], ...}
    bench_algorithm(load_config("configs/omniglot/protonet-cpu.yaml"), torch.device("cpu"))
                                     # {"algorithm": "protonet", "steps_per_s": ..., ...}

The two implementations are two learners built from one config that differ only in
``algorithm.parallel`` (``vmap`` / ``loop``) and hold the same weights; nothing is switched inside a
learner. One MAML meta-training step = ``meta_loss`` + ``backward`` (the optimizer step is the same
for both and left out). Settings (issue 3): 5-way 1-shot with 1 and with 15 queries per class,
meta-batch 32, one inner step; 20-way 1-shot, 5 queries, 5 inner steps, meta-batch 16.

Each setting also reports ``batching_gain``: what batching alone buys on this device for these
shapes. The same network (:func:`metalab.algorithms.optimization.network.build_network`) is trained
plainly (one forward and backward, no inner loop) on the same images — every task's support and
query set — once as one batch per task and once as a single batch of all tasks; the gain is the
per-task time over the single-batch time. A parallel MAML does the same per-image convolutions,
only with each task's own weights after the first inner step, so it can hardly beat the loop by
more than this: on a CPU where the gain is below 1, a large batch is slower per image than the
loop's small ones (its activations leave the caches), and no parallel form of the same arithmetic
is expected to win there.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from metalab.algorithms.base import MetaLearner
from metalab.algorithms.optimization.maml import MAML
from metalab.algorithms.optimization.network import build_network
from metalab.config import Config
from metalab.errors import ConfigError
from metalab.tasks.episodes import Episode
from metalab.tools.allocator import allocator_setting

INPUT_SHAPE = (1, 28, 28)  # Omniglot


@dataclass
class Setting:
    name: str
    ways: int
    queries: int
    meta_batch: int
    inner_steps: int
    inner_lr: float


SETTINGS = (
    Setting("5w1s-q1", 5, 1, 32, 1, 0.4),
    Setting("5w1s-q15", 5, 15, 32, 1, 0.4),
    Setting("20w1s-q5-5steps", 20, 5, 16, 5, 0.1),
)


def _episode(s: Setting, device: torch.device, generator: torch.Generator) -> Episode:
    n, b = s.ways, s.meta_batch
    labels = lambda per: torch.arange(n).repeat_interleave(per).expand(b, -1).to(device)  # noqa: E731
    sx = torch.rand(b, n, *INPUT_SHAPE, generator=generator).to(device)
    qx = torch.rand(b, n * s.queries, *INPUT_SHAPE, generator=generator).to(device)
    return Episode(sx, labels(1), qx, labels(s.queries), n)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _alternating_seconds(
    steps: dict[str, Callable[[], None]], device: torch.device, repeats: int
) -> tuple[dict[str, list[float]], dict[str, int | None]]:
    """Seconds of each step, ``repeats`` times each, the steps taking turns (after one warm-up
    each), so that drift on the machine — other load, the allocator's state — touches all alike;
    and each step's peak memory in bytes on a GPU (None on the CPU, where no allocator statistics
    exist)."""
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    peaks: dict[str, int | None] = {name: None for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            _sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - start)
            if device.type == "cuda":
                peaks[name] = max(peaks[name] or 0, torch.cuda.max_memory_allocated(device))
    return times, peaks


def maml_learners(s: Setting, device: torch.device) -> dict[str, MetaLearner]:
    """Second-order MAML of the setting once per implementation (``parallel: vmap`` and ``loop``),
    with the same initial weights (seed 0; the global random state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        options = MAML.Config(inner_lr=s.inner_lr, inner_steps=s.inner_steps, parallel="vmap")
        vmap = MAML(options, INPUT_SHAPE, s.ways).to(device)
    return {"vmap": vmap, "loop": vmap.replace(parallel="loop")}


def _meta_training_step(learner: MetaLearner, batch: object) -> Callable[[], None]:
    """One meta-training step of ``learner`` on ``batch``: ``meta_loss`` + ``backward``."""

    def run() -> None:
        learner.zero_grad(set_to_none=True)
        learner.meta_loss(batch).loss.backward()

    return run


def _plain_training_steps(s: Setting, episode: Episode) -> dict[str, Callable[[], None]]:
    """Plain training of MAML's network on the episode's support and query images (see the module
    docstring): one batch per task, and all tasks in one batch."""
    x = torch.cat([episode.support_x, episode.query_x], dim=1)  # (B, S + M, C, H, W)
    y = torch.cat([episode.support_y, episode.query_y], dim=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_network("conv4", 64, INPUT_SHAPE, s.ways).to(x.device)

    def per_task() -> None:
        for xi, yi in zip(x, y):
            F.cross_entropy(net(xi), yi).backward()

    def batched() -> None:
        F.cross_entropy(net(x.flatten(0, 1)), y.flatten()).backward()

    return {"per_task": per_task, "batched": batched}


def _environment(device: torch.device, repeats: int) -> dict:
    return {
        "device": str(device),
        "hardware": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_allocator": allocator_setting(),
        "repeats": repeats,
    }


def run_bench(
    device: torch.device, repeats: int = 3, settings: tuple[Setting, ...] = SETTINGS
) -> dict:
    """For each setting: tasks per second of vmap and of the loop (the best of ``repeats`` timed
    steps, taking turns; every timing is kept in ``*_seconds``), their ratio, peak memory
    (``torch.cuda.max_memory_allocated`` on a GPU; None on the CPU) and ``batching_gain`` (module
    docstring)."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for s in settings:
        episode = _episode(s, device, generator)
        learners = maml_learners(s, device)
        row: dict = {
            "name": s.name,
            "ways": s.ways,
            "shots": 1,
            "queries": s.queries,
            "meta_batch": s.meta_batch,
            "inner_steps": s.inner_steps,
        }
        steps = {impl: _meta_training_step(learner, episode) for impl, learner in learners.items()}
        times, peaks = _alternating_seconds(steps, device, repeats)
        for impl in ("vmap", "loop"):
            row[f"{impl}_tasks_per_s"] = s.meta_batch / min(times[impl])  # the best of the repeats
            row[f"{impl}_seconds"] = [round(t, 4) for t in times[impl]]  # every repeat: the spread
            row[f"{impl}_peak_bytes"] = peaks[impl]
        row["ratio"] = row["vmap_tasks_per_s"] / row["loop_tasks_per_s"]
        plain, _ = _alternating_seconds(_plain_training_steps(s, episode), device, repeats)
        row["batching_gain"] = min(plain["per_task"]) / min(plain["batched"])
        row["plain_seconds"] = {k: [round(t, 4) for t in v] for k, v in plain.items()}
        rows.append(row)
    return _environment(device, repeats) | {"settings": rows}


def bench_algorithm(cfg: Config, device: torch.device, repeats: int = 3, steps: int = 5) -> dict:
    """Training speed of the configured algorithm on its configured training split: ``repeats``
    timed runs of ``steps`` training steps each (draw the batch ``train_sampler`` asks for,
    ``meta_loss``, ``backward``, an optimizer step of ``train.optimizer``), after one warm-up run.

    Returns ``steps_per_s`` (the best run), ``seconds`` (every run), the batch shape and the
    environment. The learner is built as a run builds it (``train.seed``); its weights change as it
    trains, which is what a training step costs."""
    from metalab.engine.build import build_learner
    from metalab.engine.trainer import make_optimizer
    from metalab.tasks.episodes import input_shape
    from metalab.tasks.sources import load_split

    if steps < 1 or repeats < 1:
        raise ConfigError(f"bench steps = {steps}, repeats = {repeats}: both must be at least 1")
    t = cfg.train
    split = load_split(cfg.data, cfg.data.train_split).to(device)
    learner = build_learner(cfg, input_shape(split), t.seed).to(device).train()
    sampler = learner.training_batches(split, cfg)
    optimizer = make_optimizer(learner.parameters(), t)
    generator = torch.Generator().manual_seed(t.seed)

    def run() -> None:
        for _ in range(steps):
            batch = sampler.sample(generator)
            optimizer.zero_grad(set_to_none=True)
            learner.meta_loss(batch).loss.backward()
            optimizer.step()

    times, peaks = _alternating_seconds({"train": run}, device, repeats)
    return _environment(device, repeats) | {
        "algorithm": cfg.algorithm_name,
        "dataset": cfg.data.dataset,
        "ways": t.ways,
        "shots": t.shots,
        "queries": t.queries,
        "meta_batch": t.meta_batch,
        "steps": steps,
        "steps_per_s": steps / min(times["train"]),
        "seconds": [round(s, 4) for s in times["train"]],
        "peak_bytes": peaks["train"],
    }
