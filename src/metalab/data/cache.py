"""A disk cache for decoded datasets: decode once, then load a tensor file in a fraction of a
second.

A cache file is named by a fingerprint of the build parameters and of the source files (path, size,
modification time), so a changed source or parameter builds a new file. Files are written atomically
(temporary file, then rename) and verified on load; a stale, corrupt or truncated file is rebuilt.
Processes that start together on a fresh cache (torchrun ranks, tuning workers) build each file
once: the builder holds an exclusive lock on ``<file>.lock`` (``flock``, released by the OS if the
process dies), the others wait for it and then load what it wrote.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from metalab.errors import DataError

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process lock, the atomic rename still keeps files whole
    fcntl = None

FORMAT_VERSION = 1  # bump when the payload layout of any dataset changes

Payload = dict[str, Tensor | list | str | int]

log = logging.getLogger("metalab")
_unwritable: set[Path] = set()  # cache directories already warned about


def cache_root(cache_dir: Path | None = None) -> Path:
    """`cache_dir`, else $METALAB_CACHE, else ~/.cache/metalab."""
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("METALAB_CACHE", Path.home() / ".cache" / "metalab")).expanduser()


def fingerprint(params: dict, sources: list[Path]) -> str:
    """sha256 over the parameters, the format version and every source file's path, size and
    mtime."""
    digest = hashlib.sha256(json.dumps([FORMAT_VERSION, params], sort_keys=True).encode())
    for source in sources:
        source = Path(source).resolve()
        if not source.exists():
            raise DataError(f"{source} not found")
        files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
        for file in files:
            stat = file.stat()
            digest.update(f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def checksum(payload: Payload) -> str:
    """sha256 over the payload: each tensor's dtype, shape and bytes, each other value's JSON."""
    digest = hashlib.sha256()
    for key in sorted(payload):
        value = payload[key]
        digest.update(key.encode())
        if isinstance(value, Tensor):
            digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
            digest.update(
                value.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes()
            )
        else:
            digest.update(json.dumps(value, sort_keys=True).encode())
    return digest.hexdigest()


def load_or_build(
    name: str,
    params: dict,
    sources: list[Path],
    build: Callable[[], Payload],
    cache_dir: Path | None = None,
) -> Payload:
    """The payload cached under (`name`, `params`, `sources`), or ``build()`` saved there.

    Args:
        name: file name prefix, e.g. ``"omniglot-images_background-28"``.
        params: JSON-serialisable build parameters; any change builds a new file.
        sources: files or folders the payload is derived from; any change builds a new file.
        build: makes the payload (tensors, lists, strings, ints) when no valid cache file exists.
        cache_dir: where cache files live (default $METALAB_CACHE or ~/.cache/metalab).

    Returns:
        The payload. An unwritable cache directory only costs a warning: the built payload is
        returned.
    """
    key = fingerprint(params, sources)
    path = cache_root(cache_dir) / f"{name}-{key[:16]}.pt"
    payload = _load(path, key, quiet=True) if path.exists() else None
    if payload is not None:
        return payload
    with _build_lock(path):  # another process may be building it: wait, then look again
        payload = _load(path, key)
        if payload is None:
            payload = build()
            _save(path, {"fingerprint": key, "payload": payload, "checksum": checksum(payload)})
    return payload


@contextlib.contextmanager
def _build_lock(path: Path):
    """An exclusive ``flock`` on ``<path>.lock`` for the time of one build (no lock where the
    folder is unwritable or the platform has no flock)."""
    handle = None
    if fcntl is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path.with_name(path.name + ".lock"), "a")  # noqa: SIM115
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            if handle is not None:
                handle.close()
            handle = None
    try:
        yield
    finally:
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


def _load(path: Path, key: str, quiet: bool = False) -> Payload | None:
    """The verified payload of ``path``, or None (with a warning, unless ``quiet``, when a file
    exists but is stale or damaged: it will be rebuilt)."""
    if not path.exists():
        return None
    try:
        entry = torch.load(path, weights_only=True)
        if entry["fingerprint"] == key and checksum(entry["payload"]) == entry["checksum"]:
            return entry["payload"]
        problem = "does not match its sources or content"
    except Exception as error:  # truncated or garbage files fail in many ways inside torch.load
        problem = f"cannot be read ({type(error).__name__}: {error})"
    if not quiet:
        log.warning("cache file %s %s; rebuilding it", path, problem)
    return None


def _save(path: Path, entry: dict) -> None:
    temp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "wb") as file:
            torch.save(entry, file)
        os.replace(temp, path)
    except OSError as error:
        if temp is not None:
            Path(temp).unlink(missing_ok=True)
        if path.parent not in _unwritable:
            _unwritable.add(path.parent)
            log.warning(
                "cannot write the cache in %s (%s); data will be decoded again next time "
                "(set $METALAB_CACHE to a writable folder)",
                path.parent,
                error,
            )
