"""Regenerate the README's results tables from benchmarks/results/*.json (numbers are never typed).

python benchmarks/summarize.py            # rewrites the block between the RESULTS markers in
README.md
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- RESULTS:BEGIN (benchmarks/summarize.py) -->", "<!-- RESULTS:END -->"


def _env(env: dict) -> str:
    gpu = (
        env.get("gpu")
        or f"{env['cpu']}, {env['cpu_cores']} cores, {env['torch_threads']} torch threads"
    )
    load = f", load {env['load_avg_1m']}" if "load_avg_1m" in env else ""
    # recorded since the command line keeps freed memory (metalab/allocator.py)
    if "cpu_allocator" in env:
        load += ", malloc " + (
            "keeps freed memory" if "kept" in env["cpu_allocator"] else "defaults"
        )
    dirty = env.get("dirty", False)
    changes = " +changes" if dirty else " (changes unknown)" if dirty is None else ""
    return f"{gpu}{load}; {env['date'][:10]}; commit {str(env['commit'])[:8]}{changes}"


def accuracy_rows(results: dict[str, dict]) -> list[str]:
    rows = [
        "| result file | algorithm | training | test setting | result |",
        "|---|---|---|---|---|",
    ]
    for name, r in sorted(results.items()):
        res = r["results"]
        if "eval" not in res:
            continue
        if res.get("train_wall_s") is None:  # accuracy.py --no-train: trained by other commands
            training = f"{res['steps']} steps (trained earlier)"
        else:
            training = f"{res['steps']} steps, {res['train_wall_s'] / 60:.1f} min"
        for e in res["eval"]:
            if "accuracy" in e:
                setting = (
                    f"{e['dataset']}, {e['ways']}-way {e['shots']}-shot, {e['episodes']} episodes"
                )
                value = f"{e['accuracy']:.2f} ± {e['ci95']:.2f}%"
                if "instance_accuracy" in e:
                    ia = e["instance_accuracy"]
                    value += "; by instance " + " / ".join(
                        f"{ia[k]:.1f}" for k in ("1", "2", "3", "4", "5", "10") if k in ia
                    )
            elif "error_rate" in e:  # Lake et al.'s one-shot challenge protocol
                protocol = e.get("protocol", "one-shot challenge")
                setting = f"{e.get('dataset', 'omniglot')}, {protocol}, {e['trials']} trials"
                value = f"error rate {e['error_rate']:.2f}%" + (
                    f" ± {e['ci95']:.2f}" if "ci95" in e else ""
                )
            else:
                setting = f"{e['dataset']}, K = {e['shots']}, {e['episodes']} tasks"
                value = f"MSE {e['mse']:.3f} ± {e['ci95']:.3f} after 10 steps"
            algorithm = e["algorithm"]
            if e.get("ensemble"):  # metalab eval --ensemble: the runs' probabilities averaged
                algorithm += f" (ensemble of {len(e['ensemble'])} runs)"
            rows.append(
                f"| [{name}](benchmarks/results/{name}.json) | {algorithm} | {training} | "
                f"{setting} | {value} |"
            )
    return rows


def curve_rows(results: dict[str, dict]) -> list[str]:
    rows = []
    for name, r in sorted(results.items()):
        for e in r["results"].get("eval", []):
            if not e.get("curve") or not e.get("baseline_curve"):
                continue
            rows += [
                f"Sinusoid MSE by inner step ({name}; steps 0, 1, 5, 10):",
                "",
                "| K | meta-learned (MAML) | pre-trained baseline |",
                "|---|---|---|",
            ]
            for k, row in e["curve"].items():
                base = (e.get("baseline_curve") or {}).get(k, {}).get("mse")
                pick = lambda v: " / ".join(f"{v[i]:.3f}" for i in (0, 1, 5, 10))  # noqa: E731
                rows.append(f"| {k} | {pick(row['mse'])} | {pick(base) if base else '—'} |")
            rows.append("")
    return rows


def compare_rows(results_dir: Path) -> list[str]:
    """Each ``metalab compare`` report under benchmarks/results/<name>/compare.json: accuracy per
    method
    and setting, the paired differences against the transfer baseline, and the plot."""
    rows = []
    for path in sorted(results_dir.glob("*/compare.json")):
        r, rel = json.loads(path.read_text()), path.parent.relative_to(ROOT)
        settings = [
            s["name"]
            for s in r["settings"]
            if any("accuracy" in m["results"][s["name"]] for m in r["methods"].values())
        ]
        # noqa: E731
        cell = lambda x: f"{x['accuracy']:.2f} ± {x['ci95']:.2f}" if "accuracy" in x else "—"
        rows += [
            f"Side by side on the same {r['episodes']} fixed {r['dataset']} episodes per setting, "
            f"`metalab compare` ([{rel.name}]({rel}/compare.md); {_env(r['environment'])}); "
            f"command: `{r['command']}`",
            "",
            "| method | algorithm | " + " | ".join(settings) + " |",
            "|---|---|" + "---|" * len(settings),
        ]
        ran = {
            name: m
            for name, m in r["methods"].items()
            if any("accuracy" in m["results"][s] for s in settings)
        }
        rows += [
            f"| {name} | {m['algorithm']} | "
            + " | ".join(cell(m["results"][s]) for s in settings)
            + " |"
            for name, m in ran.items()
        ]
        skipped = sorted(set(r["methods"]) - set(ran))
        if skipped:
            rows += ["", f"Not run at these settings (see the report): {', '.join(skipped)}."]
        base = next((n for n, m in r["methods"].items() if m["algorithm"] == "baseline_pp"), None)
        if base is not None:
            diff = {(p["a"], p["b"], p["setting"]): p for p in r["paired"]}
            rows += [
                "",
                f"Paired difference to {base} (Baseline++, Chen et al. 2019), percentage points "
                "on the "
                "same episodes, ± 95% CI; * the interval excludes 0:",
                "",
                "| method | " + " | ".join(settings) + " |",
                "|---|" + "---|" * len(settings),
            ]
            for name in ran:
                if name == base:
                    continue
                cells = []
                for s in settings:
                    p, sign = diff.get((name, base, s)), 1
                    if p is None and (base, name, s) in diff:
                        p, sign = diff[base, name, s], -1
                    cells.append(
                        "—"
                        if p is None
                        else f"{sign * p['difference']:+.2f} ± "
                        f"{p['ci95']:.2f}{' *' if p['significant'] else ''}"
                    )
                rows.append(f"| {name} | " + " | ".join(cells) + " |")
        rows += ["", f"![accuracy against shots]({rel}/compare.png)", ""]
    return rows


def main() -> None:
    results = {
        p.stem: json.loads(p.read_text())
        for p in sorted((ROOT / "benchmarks/results").glob("*.json"))
    }
    lines = (
        ["Accuracy (field protocol: fixed test episodes, mean ± 95% CI):", ""]
        + accuracy_rows(results)
        + [""]
    )
    lines += curve_rows(results)
    lines += compare_rows(ROOT / "benchmarks/results")
    for name, r in results.items():
        if not name.startswith("bench-maml"):
            continue
        lines += [
            f"Second-order MAML meta-training speed, `metalab bench` ({name}, "
            f"{_env(r['environment'])}):",
            "",
            "| setting | vmap tasks/s | per-task loop tasks/s | vmap ÷ loop | batching alone |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {row['name']} | {row['vmap_tasks_per_s']:.2f} | {row['loop_tasks_per_s']:.2f} | "
            f"{row['ratio']:.2f}× | "
            + (f"{row['batching_gain']:.2f}× |" if "batching_gain" in row else "not measured |")
            for row in r["results"]["settings"]
        ] + [""]
    sampling = {k: v for k, v in results.items() if k.startswith("sampling")}
    for name, r in sampling.items():
        lines += [
            f"Episode sampling ({name}, {_env(r['environment'])}): "
            + ", ".join(
                f"{k} {v['episodes_per_s']:,.0f} episodes/s" for k, v in r["results"].items()
            ),
            "",
        ]
    lines += [
        "Hardware, date and commit of each result (the JSON also holds the exact commands):",
        "",
    ]
    lines += [f"- {name}: {_env(r['environment'])}" for name, r in results.items()]
    readme = ROOT / "README.md"
    text = readme.read_text()
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    readme.write_text(head + BEGIN + "\n" + "\n".join(lines) + "\n" + END + tail)


if __name__ == "__main__":
    main()
