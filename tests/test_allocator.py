"""The CPU allocator setting (metalab.tools.allocator): opt-out respected, effect reported, memory
still freed for reuse."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from metalab.tools import allocator

PROBE = (
    "import json, metalab.tools.allocator as a; kept = a.keep_freed_memory_unless_opted_out(); "
    "print(json.dumps([kept, a.allocator_setting()]))"
)


def _probe(env: dict[str, str]) -> list:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, **env},
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    return json.loads(out)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_keep_freed_memory_and_opt_out():
    kept, setting = _probe({allocator.OPT_OUT: ""})
    if kept:  # glibc
        assert setting.startswith("glibc malloc, freed memory kept")
    else:  # another C library: nothing changed, and said so
        assert setting.startswith("C library defaults")
    assert _probe({allocator.OPT_OUT: "1"}) == [False, "C library defaults"]


def test_tensors_still_correct_after_reuse():
    allocator.keep_freed_memory()
    for n in (1, 3):  # large blocks freed and handed out again
        a = torch.full((n * 1024, 1024), float(n))
        assert a.sum().item() == n * n * 1024 * 1024
        del a


def test_results_record_the_setting():
    from metalab.tools.provenance import environment

    assert environment()["cpu_allocator"] == allocator.allocator_setting()
