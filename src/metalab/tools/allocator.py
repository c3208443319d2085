"""Keep freed CPU memory inside the process instead of handing it back to the operating system.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves large blocks (above a
threshold of 128 KiB to 32 MiB) with a fresh ``mmap`` and unmaps them on ``free``, so every large
tensor of every training step is new memory that the kernel must fault in and zero page by page.
Meta-training allocates and frees the same large tensors every step — most of all when the tasks of
a meta-batch are computed in parallel with ``vmap``, whose tensors are meta-batch times larger — and
the page faults cost more than the arithmetic. Turning ``mmap`` off (``mallopt(M_MMAP_MAX, 0)``) and
raising the trim threshold lets freed blocks be reused by the next step; the price is that the
process keeps its peak memory until it exits. Measured on the 2-core CPU (``metalab bench``, torch
2.13; benchmarks/results/bench-maml-cpu*.json): vmap 1.10× / 1.34× / 2.80× faster (5w1s 1 query,
5w1s 15 queries, 20w1s 5 steps), the per-task loop 1.03× / 0.88× / 1.14×; peak RSS of the whole
bench 15.3 GB instead of 12.4 GB (``/usr/bin/time -v``, once each, not kept as a results file).

The command line (``metalab ...``) does this at start on Linux with glibc; set
``METALAB_SYSTEM_MALLOC=1`` to leave the C library's defaults alone. A program that uses metalab as
a library can call :func:`keep_freed_memory` itself. Other platforms and C libraries are left
unchanged. The same effect without code:
``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647``.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
OPT_OUT = "METALAB_SYSTEM_MALLOC"

_state = {"kept": False}


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to serve every block from its heap and never return freed memory to the
    OS. Returns True when the setting took effect (Linux with glibc), False otherwise (nothing
    changed)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl's mallopt is a stub)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    kept = mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1 and mallopt(M_MMAP_MAX, 0) == 1
    _state["kept"] = _state["kept"] or kept
    return kept


def keep_freed_memory_unless_opted_out() -> bool:
    """:func:`keep_freed_memory`, unless the environment sets METALAB_SYSTEM_MALLOC=1."""
    if os.environ.get(OPT_OUT, "").strip() not in ("", "0"):
        return False
    return keep_freed_memory()


def allocator_setting() -> str:
    """How CPU memory is being allocated in this process, for benchmark records."""
    if _state["kept"]:
        return "glibc malloc, freed memory kept (mmap off)"
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return (
        f"C library defaults (GLIBC_TUNABLES={tunables})"
        if "malloc" in tunables
        else "C library defaults"
    )
