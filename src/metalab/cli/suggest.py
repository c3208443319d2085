"""``metalab suggest CONFIG``: the warm-start configurations for a config's task, from the past
studies nearest in meta-features, and the runs they come from, without training."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from metalab.experiments.record import add_registry_flag

    p = sub.add_parser(
        "suggest", help="warm-start configurations from the nearest past studies (no training)"
    )
    p.add_argument("config", help="YAML config of the new task")
    p.add_argument("-k", type=int, default=3, help="how many nearest studies (default 3)")
    p.add_argument("--space", help="search space YAML (default: the algorithm's own)")
    p.add_argument("--data-dir", help="folder holding the dataset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true")
    add_registry_flag(p)
    p.set_defaults(command_run=run)


def run(args: argparse.Namespace) -> int:
    from metalab.experiments.metafeatures import task_features
    from metalab.experiments.registry import open_registry
    from metalab.experiments.spaces import load_space
    from metalab.experiments.tuning import TuneSpec, _metric_of, config_with
    from metalab.experiments.warmstart import warm_starts

    overrides = list(args.overrides)
    if args.data_dir:
        overrides.insert(0, f"data.data_dir={json.dumps(str(Path(args.data_dir).resolve()))}")
    spec = TuneSpec(config=Path(args.config), trials=1, out=Path("."), overrides=overrides)
    base = spec.base()
    cfg, _ = config_with(base, {})
    space = load_space(args.space, base, cfg.algorithm_name)
    _, source = _metric_of(cfg)
    _, features = task_features(cfg.data, source)
    reg = open_registry(args.registry)
    starts = warm_starts(reg, space, cfg, features, args.k)
    for s in starts:  # the trial record the configuration comes from
        trials = [r for r in reg.query(kind="trial", study=s["study"]) if r["trial"] == s["trial"]]
        s["trial_uid"] = trials[0]["uid"] if trials else None
    if args.json:
        print(json.dumps({"metafeatures": features, "suggestions": starts}))
        return 0
    if not starts:
        print(
            f"no past {cfg.algorithm_name} study with meta-features in {reg.url}; run "
            f"`metalab tune` on related tasks first",
            file=sys.stderr,
        )
        return 0
    for i, s in enumerate(starts, 1):
        print(
            f"{i}. from study {s['study']} on {s['dataset']} (distance {s['distance']}, best "
            f"validation {s['metric']} {s['value']:.4g}; study record {s['uid']}, trial "
            f"{s['trial']} record {s['trial_uid']})"
        )
        for key, value in s["params"].items():
            print(f"     --set {key}={json.dumps(value)}")
    return 0
