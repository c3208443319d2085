"""Processes that start together on a fresh cache (torchrun ranks, tuning workers) build each file
once and all get the same payload (data/cache.py's build lock)."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import torch

from metalab.data import cache


def _worker(cache_dir: str, source: str, log: str, out: str) -> None:
    def build() -> dict:
        with open(log, "a") as f:
            f.write("built\n")
        time.sleep(0.5)  # long enough for the others to arrive while it builds
        return {"x": torch.arange(10)}

    payload = cache.load_or_build("race", {"v": 1}, [Path(source)], build, Path(cache_dir))
    torch.save(payload["x"], out)


def test_processes_starting_together_build_once(tmp_path: Path) -> None:
    source = tmp_path / "source.txt"
    source.write_text("data")
    log = tmp_path / "builds.log"
    ctx = mp.get_context("fork")
    procs = [
        ctx.Process(
            target=_worker,
            args=(str(tmp_path / "c"), str(source), str(log), str(tmp_path / f"{i}")),
        )
        for i in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert log.read_text().count("built") == 1
    for i in range(3):
        assert torch.equal(torch.load(tmp_path / f"{i}"), torch.arange(10))
    assert not [p for p in (tmp_path / "c").iterdir() if p.name.startswith(".race")]  # no temp
