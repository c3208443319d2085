"""Speed of second-order MAML meta-training: the tasks of a meta-batch in parallel (vmap) versus the
per-task reference loop, on Omniglot-shaped inputs (1×28×28, Conv-4 with 64 filters, random images).

    from metalab.tools.bench import run_bench
    run_bench(torch.device("cpu"))   # {"settings": [{"name": "5w1s-q1", "vmap_tasks_per_s": ...,
    ...}], ...}

One meta-training step = ``meta_loss`` + ``backward`` (the optimizer step is the same for both and
left
out). Settings (issue 3): 5-way 1-shot with 1 and with 15 queries per class, meta-batch 32, one
inner
step; 20-way 1-shot, 5 queries, 5 inner steps, meta-batch 16.

Each setting also reports ``batching_gain``: what batching alone buys on this device for these
shapes.
The same network is trained plainly (one forward and backward, shared weights, no inner loop) on the
same images — every task's support and query set — once as one batch per task and once as a single
batch of all tasks; the gain is the per-task time over the single-batch time. A parallel MAML does
the
same per-image convolutions, only with each task's own weights after the first inner step, so it can
hardly beat the loop by more than this: on a CPU where the gain is below 1, a large batch is slower
per
image than the loop's small ones (its activations leave the caches), and no parallel form of the
same
arithmetic is expected to win there.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from metalab.algorithms.optimization.maml import MAML
from metalab.tasks.episodes import Episode
from metalab.tools.allocator import allocator_setting


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
    # noqa: E731
    labels = lambda per: torch.arange(n).repeat_interleave(per).expand(b, -1).to(device)
    sx = torch.rand(b, n, 1, 28, 28, generator=generator).to(device)
    qx = torch.rand(b, n * s.queries, 1, 28, 28, generator=generator).to(device)
    return Episode(sx, labels(1), qx, labels(s.queries), n)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _alternating_seconds(
    steps: dict[str, Callable[[], None]], device: torch.device, repeats: int
) -> tuple[dict[str, list[float]], dict[str, int | None]]:
    """Seconds of each step, ``repeats`` times each, the steps taking turns (after one warm-up
    each), so
    that drift on the machine — other load, the allocator's state — touches both alike; and each
    step's
    peak memory in bytes on a GPU (None on the CPU, where no allocator statistics exist)."""
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


def _meta_training_steps(learner: MAML, episode: Episode) -> dict[str, Callable[[], None]]:
    """One second-order meta-training step (``meta_loss`` + ``backward``) with vmap and with the
    loop."""

    def step(parallel: str) -> Callable[[], None]:
        def run() -> None:
            learner.options.parallel = parallel
            learner.zero_grad(set_to_none=True)
            learner.meta_loss(episode).loss.backward()

        return run

    return {"vmap": step("vmap"), "loop": step("loop")}


def _plain_training_steps(learner: MAML, episode: Episode) -> dict[str, Callable[[], None]]:
    """Plain training of the learner's network on the episode's support and query images (see the
    module
    docstring): one batch per task, and all tasks in one batch."""
    x = torch.cat([episode.support_x, episode.query_x], dim=1)  # (B, S + M, C, H, W)
    y = torch.cat([episode.support_y, episode.query_y], dim=1)
    net, loss = learner.net, learner.task_loss

    def per_task() -> None:
        for xi, yi in zip(x, y):
            loss(net(xi), yi).backward()

    def batched() -> None:
        loss(net(x.flatten(0, 1)), y.flatten()).backward()

    return {"per_task": per_task, "batched": batched}


def run_bench(
    device: torch.device, repeats: int = 3, settings: tuple[Setting, ...] = SETTINGS
) -> dict:
    """For each setting: tasks per second of vmap and of the loop (the best of ``repeats`` timed
    steps,
    taking turns; every timing is kept in ``*_seconds``), their ratio, peak memory
    (``torch.cuda.max_memory_allocated`` on a GPU; None on the CPU) and ``batching_gain`` (module
    docstring)."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for s in settings:
        episode = _episode(s, device, generator)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            learner = MAML(
                MAML.Config(inner_lr=s.inner_lr, inner_steps=s.inner_steps), (1, 28, 28), s.ways
            ).to(device)
        row: dict = {
            "name": s.name,
            "ways": s.ways,
            "shots": 1,
            "queries": s.queries,
            "meta_batch": s.meta_batch,
            "inner_steps": s.inner_steps,
        }
        times, peaks = _alternating_seconds(_meta_training_steps(learner, episode), device, repeats)
        for parallel in ("vmap", "loop"):
            row[f"{parallel}_tasks_per_s"] = s.meta_batch / min(
                times[parallel]
            )  # the best of the repeats
            row[f"{parallel}_seconds"] = [
                round(t, 4) for t in times[parallel]
            ]  # every repeat: the spread
            row[f"{parallel}_peak_bytes"] = peaks[parallel]
        row["ratio"] = row["vmap_tasks_per_s"] / row["loop_tasks_per_s"]
        plain, _ = _alternating_seconds(_plain_training_steps(learner, episode), device, repeats)
        learner.zero_grad(set_to_none=True)
        row["batching_gain"] = min(plain["per_task"]) / min(plain["batched"])
        row["plain_seconds"] = {k: [round(t, 4) for t in v] for k, v in plain.items()}
        rows.append(row)
    return {
        "device": str(device),
        "hardware": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_allocator": allocator_setting(),
        "repeats": repeats,
        "settings": rows,
    }
