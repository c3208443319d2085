"""``metalab runs list | show | best | export | import``: the run registry
(:mod:`metalab.experiments.registry`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from metalab.experiments.record import add_registry_flag

    p = sub.add_parser("runs", help="the run registry: list, show, leaderboard, export, import")
    rsub = p.add_subparsers(dest="runs_command", required=True)

    q = rsub.add_parser("list", help="recorded runs, newest first")
    _filters(q)
    q.add_argument("--kind", help="train | eval | compare | trial | study")
    q.add_argument("--status", help="running | finished | stopped | interrupted | failed | pruned")
    q.add_argument("--study", help="tuning trials of this study")
    q.add_argument("--limit", type=int, default=50, help="at most this many (0: all)")
    q.add_argument("--json", action="store_true")
    add_registry_flag(q)

    q = rsub.add_parser("show", help="one run: config, environment, result, validation curve")
    q.add_argument("run", help="uid (or a unique prefix), id, or run directory")
    q.add_argument("--json", action="store_true")
    add_registry_flag(q)

    q = rsub.add_parser("best", help="leaderboard with 95%% CIs on a dataset and setting")
    _filters(q, algorithm=False)
    q.add_argument("--split", default="test", help="test (default) or val (training runs)")
    q.add_argument("--limit", type=int, default=20)
    q.add_argument("--json", action="store_true")
    add_registry_flag(q)

    q = rsub.add_parser("export", help="all records as CSV (summary) or JSON (with curves)")
    fmt = q.add_mutually_exclusive_group(required=True)
    fmt.add_argument("--csv", action="store_const", const="csv", dest="format")
    fmt.add_argument("--json", action="store_const", const="json", dest="format")
    _filters(q)
    q.add_argument("--out", help="write to this file instead of stdout")
    add_registry_flag(q)

    q = rsub.add_parser("import", help="import result files (benchmarks/results/*.json)")
    q.add_argument("files", nargs="+", help="result JSON files or compare.json reports")
    add_registry_flag(q)
    p.set_defaults(command_run=run)


def _filters(q: argparse.ArgumentParser, algorithm: bool = True) -> None:
    if algorithm:
        q.add_argument("--algorithm", help="e.g. protonet")
    q.add_argument("--dataset", help="registered dataset (omniglot) or split name")
    q.add_argument("--ways", type=int)
    q.add_argument("--shots", type=int)


def run(args: argparse.Namespace) -> int:
    from metalab.experiments.registry import open_registry

    reg = open_registry(args.registry)
    return {"list": _list, "show": _show, "best": _best, "export": _export, "import": _import}[
        args.runs_command
    ](reg, args)


def _fmt_value(r: dict) -> str:
    """``96.17 ± 0.31%`` (accuracy) or ``0.3469 ± 0.035 mse``; ``-`` without a result."""
    if r.get("value") is None:
        return "-"
    accuracy = r.get("metric") == "accuracy"
    ci = (
        ""
        if r.get("ci95") is None
        else f" ± {r['ci95']:.2f}"
        if accuracy
        else f" ± {r['ci95']:.2g}"
    )
    return f"{r['value']:.2f}{ci}%" if accuracy else f"{r['value']:.4g}{ci} {r.get('metric')}"


def _setting(r: dict) -> str:
    if r.get("ways") == 0:
        return f"{r.get('shots')}-shot"
    if r.get("ways") is None:
        return "-"
    return f"{r['ways']}w{r.get('shots')}s"


def _table(rows: list[dict], columns: list[tuple[str, callable]]) -> str:
    cells = [[h for h, _ in columns]] + [[str(f(r)) for _, f in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells)


def _when(r: dict) -> str:
    t = r.get("started_at")
    return t.strftime("%Y-%m-%d %H:%M") if t else "-"


def _list(reg, args) -> int:
    rows = reg.query(
        algorithm=args.algorithm,
        dataset=args.dataset,
        ways=args.ways,
        shots=args.shots,
        kind=args.kind,
        study=args.study,
        limit=args.limit or None,
    )
    if args.status:
        rows = [r for r in rows if r["state"] == args.status or r["status"] == args.status]
    if args.json:
        print(json.dumps([_jsonable(r) for r in rows]))
        return 0
    if not rows:
        print(f"no runs recorded in {reg.url} match", file=sys.stderr)
        return 0
    print(
        _table(
            rows,
            [
                ("uid", lambda r: r["uid"]),
                (
                    "kind",
                    lambda r: r["kind"] + (f" {r['trial']}" if r["trial"] is not None else ""),
                ),
                ("state", lambda r: r["state"]),
                ("algorithm", lambda r: r["algorithm"] or "-"),
                ("dataset", lambda r: r["dataset_name"] or r["dataset"] or "-"),
                ("setting", _setting),
                ("result", _fmt_value),
                ("step", lambda r: "-" if r["step"] is None else r["step"]),
                ("started", _when),
                ("run_dir", lambda r: r["run_dir"] or "-"),
            ],
        )
    )
    return 0


def _jsonable(r: dict) -> dict:
    import datetime as _dt

    return {k: v.isoformat() if isinstance(v, _dt.datetime) else v for k, v in r.items()}


def _show(reg, args) -> int:
    r = reg.get(args.run)
    if args.json:
        print(json.dumps(_jsonable(r), default=str))
        return 0
    env = r.get("environment") or {}
    lines = [
        f"run {r['uid']} ({r['kind']}, {r['state']})",
        f"  algorithm   {r['algorithm']}",
        f"  dataset     {r['dataset_name'] or r['dataset']} (split {r['split']}, {_setting(r)})",
        f"  result      {_fmt_value(r)}"
        + (f" at step {r['step']}" if r["step"] is not None else ""),
        f"  seed        {r['seed']}   world size {r['world_size']}",
        f"  run dir     {r['run_dir']}",
        f"  command     {r['command']}",
        f"  started     {r['started_at']}   ended {r['ended_at']}   wall "
        + ("-" if r["wall_s"] is None else f"{r['wall_s']:.1f} s"),
        f"  commit      {r['commit']}" + (" (uncommitted changes)" if env.get("dirty") else ""),
        f"  hardware    {r['hardware']}   torch {r['torch_version']}   "
        f"metalab {r['metalab_version']}",
    ]
    if r.get("study"):
        lines.append(f"  study       {r['study']} trial {r['trial']}")
    if r.get("parent"):
        lines.append(f"  evaluates   run {r['parent']}")
    if r.get("source"):
        lines.append(f"  imported    {r['source']}")
    if r.get("error"):
        lines.append(f"  error       {r['error']}")
    if r.get("dataset_desc"):
        lines.append(f"  data        {json.dumps(r['dataset_desc'])}")
    if r["curve"]:
        lines.append("  validation curve:")
        for p in r["curve"]:
            ci = "" if p["ci95"] is None else f" ± {p['ci95']:.3g}"
            lines.append(f"    step {p['step']:>7}  {p['name']} {p['value']:.4g}{ci}")
    if r.get("config"):
        import yaml

        lines.append("  config:")
        lines += ["    " + ln for ln in yaml.safe_dump(r["config"], sort_keys=False).splitlines()]
    print("\n".join(lines))
    return 0


def _best(reg, args) -> int:
    from metalab.errors import ConfigError

    if not args.dataset:
        raise ConfigError(
            "runs best needs --dataset D (e.g. --dataset omniglot --ways 5 --shots 1)"
        )
    rows = reg.best(args.dataset, args.ways, args.shots, args.split, args.limit)
    if args.json:
        print(json.dumps([_jsonable(r) for r in rows]))
        return 0
    if not rows:
        print(
            f"no finished runs on {args.dataset} ({args.split} split"
            + (f", {args.ways}-way" if args.ways is not None else "")
            + (f" {args.shots}-shot" if args.shots is not None else "")
            + f") in {reg.url}",
            file=sys.stderr,
        )
        return 0
    print(
        _table(
            list(enumerate(rows, 1)),
            [
                ("#", lambda x: x[0]),
                ("result (95% CI)", lambda x: _fmt_value(x[1])),
                ("algorithm", lambda x: x[1]["algorithm"] or "-"),
                ("setting", lambda x: _setting(x[1])),
                ("kind", lambda x: x[1]["kind"]),
                ("uid", lambda x: x[1]["uid"]),
                ("episodes", lambda x: (x[1].get("results") or {}).get("episodes", "-")),
                ("run_dir", lambda x: x[1]["run_dir"] or "-"),
            ],
        )
    )
    return 0


def _export(reg, args) -> int:
    from metalab.experiments.exchange import export

    rows = reg.query(
        algorithm=args.algorithm, dataset=args.dataset, ways=args.ways, shots=args.shots
    )
    text = export(reg, args.format, rows)
    if args.out:
        Path(args.out).write_text(text)
        print(f"{len(rows)} records written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _import(reg, args) -> int:
    from metalab.experiments.exchange import import_file

    total = 0
    for f in args.files:
        n, how = import_file(reg, f)
        total += n
        print(f"{f}: {how}", file=sys.stderr)
    print(f"{total} records imported into {reg.url}", file=sys.stderr)
    return 0
