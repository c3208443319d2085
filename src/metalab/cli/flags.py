"""Flags that several commands share."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import sys
import tempfile
from pathlib import Path

from metalab.errors import ConfigError, MetalabError


def add_task_flags(p: argparse.ArgumentParser) -> None:
    """--ways, --shots, --queries: the shape of a task."""
    p.add_argument("--ways", type=int, help="N classes per task")
    p.add_argument("--shots", type=int, help="K support examples per class")
    p.add_argument("--queries", type=int, help="Q query examples per class")


def add_set_flag(p: argparse.ArgumentParser, help: str) -> None:
    """--set KEY=VALUE (repeatable): override any config key, into ``args.overrides``."""
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help
    )


def add_dataset_flag(p: argparse.ArgumentParser) -> None:
    """--dataset: evaluate on another dataset than the run's own (cross-domain)."""
    p.add_argument(
        "--dataset",
        help="evaluate on another registered dataset (metalab list), e.g. folder with --data-dir "
        "DIR holding test/<class>/<images>; images are decoded as the run's were",
    )


def command_line() -> str:
    """This process's command line as a user would type it (recorded in result files)."""
    return "metalab " + " ".join(sys.argv[1:])


# what to do about a file-system error, by errno
_ADVICE = {
    errno.ENOSPC: "free some space and run it again",
    errno.EDQUOT: "free some space (disk quota) and run it again",
    errno.EROFS: "the file system is read-only; choose another location",
    errno.EACCES: "choose a location you may write to, or change its permissions",
    errno.EPERM: "choose a location you may write to",
    errno.ENAMETOOLONG: "use a shorter name or path",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder; give a file",
    errno.EEXIST: "it exists already; choose another name",
    errno.ENOENT: "check the path",
    errno.ELOOP: "the path loops through symbolic links",
}


def _flag_of(argv: list[str], filename: str) -> str | None:
    """The flag (or positional argument) of ``argv`` whose path is ``filename`` or a folder above
    it, e.g. ``--out``; None when no argument names it."""
    target = os.path.abspath(filename)
    flag = None
    for token in argv:
        if token.startswith("--") and "=" in token:
            flag, token = token.split("=", 1)
        elif token.startswith("-"):
            flag = token
            continue
        try:
            path = os.path.abspath(os.path.expanduser(token))
        except (ValueError, OSError):
            continue
        if token and (target == path or target.startswith(path.rstrip(os.sep) + os.sep)):
            return flag or "argument"
    return None


def describe_os_error(e: OSError, argv: list[str]) -> str:
    """One line for a file-system error: the flag and file it concerns, the reason, what to do."""
    reason = e.strerror or type(e).__name__
    advice = _ADVICE.get(e.errno or 0)
    if e.filename is None:
        return f"{reason}" + (f"; {advice}" if advice else "")
    name = os.fsdecode(e.filename)
    flag = _flag_of(argv, name)
    what = f"{flag} {name}" if flag and flag != "argument" else name
    other = f" -> {os.fsdecode(e.filename2)}" if e.filename2 else ""
    return f"{what}{other}: {reason}" + (f"; {advice}" if advice else "")


def _os_reason(e: OSError) -> str:
    advice = _ADVICE.get(e.errno or 0)
    return (e.strerror or type(e).__name__) + (f"; {advice}" if advice else "")


def check_output_dir(path: str | Path, flag: str) -> None:
    """Refuse, before any work, an output folder that cannot be written: a file, under a file,
    read-only, a name too long. Folders it has to create for the check are removed again."""
    path = Path(path)
    try:
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{flag} {path} is a file, not a folder; give a folder")
        created = []
        for parent in reversed([path, *path.parents]):
            if not parent.exists():
                parent.mkdir()
                created.append(parent)
        try:
            with tempfile.NamedTemporaryFile(dir=path, prefix=".metalab-write-check-"):
                pass
        finally:
            for d in reversed(created):
                d.rmdir()
    except OSError as e:
        where = (
            f" ({os.fsdecode(e.filename)})" if e.filename and str(e.filename) != str(path) else ""
        )
        raise ConfigError(f"{flag} {path} cannot be written{where}: {_os_reason(e)}") from None


def check_output_file(path: str | Path, flag: str) -> None:
    """Refuse, before any work, an output file that cannot be written: a folder, in a folder that
    cannot be written (see :func:`check_output_dir`)."""
    path = Path(path)
    try:
        if path.is_dir():
            raise ConfigError(f"{flag} {path} is a folder; give a file name")
        if path.exists():
            if not os.access(path, os.W_OK):
                raise ConfigError(f"{flag} {path} cannot be written: permission denied")
            return
    except OSError as e:
        raise ConfigError(f"{flag} {path} cannot be written: {_os_reason(e)}") from None
    check_output_dir(path.parent, flag)
    try:  # the name itself may be too long
        with open(path, "x"):
            pass
        path.unlink()
    except OSError as e:
        raise ConfigError(f"{flag} {path} cannot be written: {_os_reason(e)}") from None


@contextlib.contextmanager
def writing(path: str | Path, flag: str):
    """Turn a failed write to ``path`` (a full disk, a device that refuses) into one line naming
    the flag and the file."""
    try:
        yield
    except OSError as e:
        raise MetalabError(f"{flag} {path} could not be written: {_os_reason(e)}") from None


def _non_finite(obj) -> list[str]:
    """The keys (dotted) of the non-finite floats in a JSON-ready object."""
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [""]
    if isinstance(obj, dict):
        return [f"{k}.{p}".rstrip(".") for k, v in obj.items() for p in _non_finite(v)]
    if isinstance(obj, (list, tuple)):
        return [f"[{i}].{p}".rstrip(".") for i, v in enumerate(obj) for p in _non_finite(v)]
    return []


def finite_json(obj, what: str) -> str:
    """``obj`` as one line of JSON, or an error naming its non-finite values: NaN and Infinity are
    not JSON, and a score that is not finite is no result."""
    bad = _non_finite(obj)
    if bad:
        raise MetalabError(
            f"{what} is not finite ({', '.join(bad[:5])}); the checkpoint's outputs are not "
            "finite numbers: evaluate another checkpoint (--checkpoint last) or retrain"
        )
    return json.dumps(obj, allow_nan=False)
