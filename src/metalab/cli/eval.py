"""``metalab eval RUN``: score a trained run with the protocol that applies (metalab.protocols).

The command has no protocol of its own: each protocol adds its flags, the one whose flags were given
(else the first that applies: regression curves for a regression run, the standard fixed episodes
otherwise) computes the report, and the command prints it as text or, with --json, as one object.
"""

from __future__ import annotations

import argparse

from metalab.cli.flags import add_dataset_flag, add_task_flags, command_line, finite_json
from metalab.experiments.record import add_registry_flag, record_eval


def add_parser(sub: argparse._SubParsersAction) -> None:
    from metalab.protocols import PROTOCOLS

    p = sub.add_parser(
        "eval",
        help="evaluate a trained run on fixed test episodes (mean accuracy or MSE ± 95%% CI)",
    )
    p.add_argument("run", help="run directory (uses best.pt, else last.pt) or checkpoint file")
    p.add_argument(
        "--data-dir", help="folder holding the dataset (default: the one the run was trained on)"
    )
    add_dataset_flag(p)
    p.add_argument("--split", help="split to evaluate on (default: test)")
    add_task_flags(p)
    p.add_argument("--episodes", type=int, help="number of fixed test episodes (default 1000)")
    p.add_argument("--seed", type=int, help="seed of the fixed episode set (default 0)")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument(
        "--ensemble",
        nargs="+",
        metavar="RUN",
        help="score RUN together with these runs: their class probabilities averaged",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    for protocol in PROTOCOLS:
        protocol.add_flags(p)
    add_registry_flag(p)
    p.set_defaults(command_run=run)


def run(args: argparse.Namespace) -> int:
    from metalab.protocols import PROTOCOLS, Evaluation, choose

    ev = Evaluation.load(args.run, args)
    protocol = choose(PROTOCOLS, ev)
    report = protocol.run(ev)
    if ev.members:
        report["ensemble"] = ev.members
    from metalab.engine.distributed import current_world

    if not current_world().is_main:  # under torchrun, rank 0 alone records and prints
        return 0
    line = finite_json(report, f"the {protocol.name} evaluation of {args.run}")  # NaN: refused
    record_eval(report, ev.cfg, ev.__dict__.get("split"), command_line(), args.registry, ev.data)
    text = protocol.text(report) + (f" (ensemble of {len(ev.members)} runs)" if ev.members else "")
    print(line if args.json else text)
    return 0
