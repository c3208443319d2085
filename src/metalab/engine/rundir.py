"""The run directory: who may write into it, and what it may already hold.

A training takes ``RunDir.open(resume)`` before it writes anything:

- the folder is locked with ``fcntl.flock`` on ``.metalab.lock`` — a second training into the same
  folder is refused while the first runs, and the operating system releases the lock when a process
  dies, however it dies, so a crash never leaves a run stuck;
- without ``resume``, a folder holding any file of a run (``last.pt``, ``best.pt``,
  ``config.yaml``, ``metrics.jsonl``, ...) or anything else is refused: only a new or empty folder
  becomes a run;
- with ``resume``, the folder must hold ``last.pt``;
- temporary files of a save that was killed (``.last.pt.*.tmp``) are removed.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from metalab.errors import RunDirError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are still guarded against overwriting
    fcntl = None  # type: ignore[assignment]

LOCK = ".metalab.lock"
RUN_FILES = (
    "last.pt",
    "best.pt",
    "config.yaml",
    "metrics.jsonl",
    "resumes.jsonl",
    "tensorboard",
)


def is_temporary(path: Path) -> bool:
    """A temporary file of an atomic write (``.NAME.XXXX.tmp``), orphaned if its writer died."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: readers see the old or the new
    content, never a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunDir:
    """One run's folder, locked while open (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._created = False

    def open(self, resume: bool) -> RunDir:
        p = self.path
        if p.exists() and not p.is_dir():
            raise RunDirError(f"--out {p} is a file, not a folder; choose another --out")
        if p.is_dir():  # refuse before touching anything: no lock file left in a refused folder
            fd = self._acquire(create=False)
            if fd is not None:
                os.close(fd)
            self._check(resume)
        elif resume:
            self._check(resume)
        self._created = not p.exists()
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(
                f"cannot create the run folder --out {p} ({e.strerror}); choose another --out"
            ) from None
        self._fd = self._acquire(create=True)
        try:
            self._check(resume)  # again, now that the folder is ours
            for tmp in p.iterdir():
                if is_temporary(tmp):  # a save killed half-way (we hold the lock: nobody writes)
                    tmp.unlink(missing_ok=True)
        except BaseException:
            self.close(discard=True)
            raise
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())
        return self

    def _acquire(self, create: bool) -> int | None:
        """The lock file's descriptor, locked; None when `create` is false and there is none."""
        lock = self.path / LOCK
        try:
            fd = os.open(lock, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
        except FileNotFoundError:
            if not create:
                return None
            raise RunDirError(f"--out {self.path} vanished while it was opened") from None
        except OSError as e:
            raise RunDirError(
                f"cannot open the lock file {lock} ({e.strerror}); check the permissions of "
                f"--out {self.path}"
            ) from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise RunDirError(f"cannot lock {lock} ({e.strerror})") from None
                raise RunDirError(
                    f"--out {self.path} is in use by another training (pid {holder}); wait for it "
                    f"to end or choose another --out"
                ) from None
        return fd

    def _check(self, resume: bool) -> None:
        p = self.path
        entries = []
        if p.is_dir():
            entries = sorted(e.name for e in p.iterdir() if e.name != LOCK and not is_temporary(e))
        if resume:
            if (p / "last.pt").is_file():
                return
            if "best.pt" in entries:
                raise RunDirError(
                    f"--resume: {p} holds best.pt but no last.pt, so the run cannot be continued "
                    f"exactly; evaluate best.pt with `metalab eval {p}` or train again into "
                    f"another --out"
                )
            raise RunDirError(
                f"--resume: {p} holds no run (no last.pt); drop --resume to start one there, or "
                f"name the run's folder with --out"
            )
        run = [e for e in entries if e in RUN_FILES]
        if run:
            raise RunDirError(
                f"{p} already holds a run ({', '.join(run)}); pass --resume to continue it, or "
                f"choose another --out"
            )
        if entries:
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise RunDirError(
                f"--out {p} is not empty ({shown}) and holds no metalab run; choose a new or "
                f"empty folder for --out"
            )

    def close(self, discard: bool = False) -> None:
        """Release the lock. With `discard`, a folder this RunDir created and nothing else wrote
        into is removed again."""
        if self._fd is None:
            return
        if discard and self._created:
            others = [e for e in self.path.iterdir() if e.name != LOCK]
            if not others:
                (self.path / LOCK).unlink(missing_ok=True)
                try:
                    self.path.rmdir()
                except OSError:
                    pass
        os.close(self._fd)  # releases the flock
        self._fd = None

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
