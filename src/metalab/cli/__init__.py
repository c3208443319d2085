"""The command line: ``metalab train | eval | predict | list | compare | bench | data``.

One module per command, each with ``add_parser(sub)`` (its flags; it sets ``command_run``) and
``run(args) -> exit code``; this module assembles the parser and runs the command. Errors on bad
input (:class:`~metalab.errors.MetalabError`) are printed as one line on stderr with exit code 2;
``--debug`` shows the traceback instead.

Note: the submodules ``eval`` and ``list`` are attributes of this package once imported, so this
module must not use the builtins of those names.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from metalab.errors import MetalabError
from metalab.tools.allocator import keep_freed_memory_unless_opted_out

COMMANDS = (
    "train",
    "eval",
    "predict",
    "list",
    "compare",
    "bench",
    "data",
    "runs",
    "tune",
    "suggest",
)  # order in --help


class _Parser(argparse.ArgumentParser):
    """argparse, except that a usage error is one line (naming the flag or value, and the command's
    --help) like every other error, not the usage text followed by the error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"metalab: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="metalab", description="Meta-learning on PyTorch.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"metalab.cli.{name}").add_parser(sub)
    return parser


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [*argv]  # (no builtin list here: see above)
    args = build_parser().parse_args(argv)
    # large tensors reused, not page-faulted in every step (allocator.py)
    keep_freed_memory_unless_opted_out()
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING, format="metalab: %(message)s"
    )
    from metalab.engine.distributed import close_world, current_world, world_from_env

    def error(message: str) -> None:
        world = current_world() if current_world().distributed else world_from_env()
        rank = f" (rank {world.rank})" if world.distributed else ""
        print(f"metalab: error{rank}: {_one_line(message)}", file=sys.stderr)

    finished = False
    try:
        code = args.command_run(args)
        finished = code == 0  # not after a signal stop: a peer may be gone (torchrun's restart)
        return code
    except MetalabError as e:
        if args.debug:
            raise
        error(str(e))
        return 2
    except BrokenPipeError:  # `metalab runs list | head`: the reader has gone, say nothing
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:  # a file-system error no check foresaw: read-only, disk full, too long
        if args.debug:
            raise
        from metalab.cli.flags import describe_os_error

        error(describe_os_error(e, argv))
        return 1
    except KeyboardInterrupt:
        print("metalab: interrupted", file=sys.stderr)
        return 130
    finally:
        close_world(current_world(), finished)  # leave a torchrun process group cleanly


if __name__ == "__main__":
    sys.exit(main())
