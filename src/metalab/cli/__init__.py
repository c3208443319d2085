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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metalab", description="Meta-learning on PyTorch.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"metalab.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # large tensors reused, not page-faulted in every step (allocator.py)
    keep_freed_memory_unless_opted_out()
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING, format="metalab: %(message)s"
    )
    from metalab.engine.distributed import close_world, current_world, world_from_env

    try:
        return args.command_run(args)
    except MetalabError as e:
        if args.debug:
            raise
        world = current_world() if current_world().distributed else world_from_env()
        rank = f" (rank {world.rank})" if world.distributed else ""
        print(f"metalab: error{rank}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("metalab: interrupted", file=sys.stderr)
        return 130
    finally:
        close_world(current_world())  # leave a torchrun process group cleanly


if __name__ == "__main__":
    sys.exit(main())
