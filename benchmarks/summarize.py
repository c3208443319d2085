"""Regenerate the README's results tables from benchmarks/results/*.json (numbers are never typed).

    python benchmarks/summarize.py            # rewrites the block between the RESULTS markers in README.md
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- RESULTS:BEGIN (benchmarks/summarize.py) -->", "<!-- RESULTS:END -->"


def _env(env: dict) -> str:
    gpu = env.get("gpu") or f"{env['cpu']}, {env['cpu_cores']} cores, {env['torch_threads']} torch threads"
    load = f", load {env['load_avg_1m']}" if "load_avg_1m" in env else ""
    return f"{gpu}{load}; {env['date'][:10]}; commit {str(env['commit'])[:8]}{' +changes' if env.get('dirty') else ''}"


def accuracy_rows(results: dict[str, dict]) -> list[str]:
    rows = ["| result file | algorithm | training | test setting | result |", "|---|---|---|---|---|"]
    for name, r in sorted(results.items()):
        res = r["results"]
        if "eval" not in res:
            continue
        training = f"{res['steps']} steps, {res['train_wall_s'] / 60:.1f} min"
        for e in res["eval"]:
            if "accuracy" in e:
                setting = f"{e['dataset']}, {e['ways']}-way {e['shots']}-shot, {e['episodes']} episodes"
                value = f"{e['accuracy']:.2f} ± {e['ci95']:.2f}%"
                if "instance_accuracy" in e:
                    ia = e["instance_accuracy"]
                    value += "; by instance " + " / ".join(f"{ia[k]:.1f}" for k in ("1", "2", "3", "4", "5", "10") if k in ia)
            else:
                setting = f"{e['dataset']}, K = {e['shots']}, {e['episodes']} tasks"
                value = f"MSE {e['mse']:.3f} ± {e['ci95']:.3f} after 10 steps"
            rows.append(f"| [{name}](benchmarks/results/{name}.json) | {e['algorithm']} | {training} | {setting} | {value} |")
    return rows


def curve_rows(results: dict[str, dict]) -> list[str]:
    rows = []
    for name, r in sorted(results.items()):
        for e in r["results"].get("eval", []):
            if not e.get("curve") or not e.get("baseline_curve"):
                continue
            rows += [f"Sinusoid MSE by inner step ({name}; steps 0, 1, 5, 10):", "",
                     "| K | meta-learned (MAML) | pre-trained baseline |", "|---|---|---|"]
            for k, row in e["curve"].items():
                base = (e.get("baseline_curve") or {}).get(k, {}).get("mse")
                pick = lambda v: " / ".join(f"{v[i]:.3f}" for i in (0, 1, 5, 10))  # noqa: E731
                rows.append(f"| {k} | {pick(row['mse'])} | {pick(base) if base else '—'} |")
            rows.append("")
    return rows


def main() -> None:
    results = {p.stem: json.loads(p.read_text()) for p in sorted((ROOT / "benchmarks/results").glob("*.json"))}
    lines = ["Accuracy (field protocol: fixed test episodes, mean ± 95% CI):", ""] + accuracy_rows(results) + [""]
    lines += curve_rows(results)
    for name, r in results.items():
        if not name.startswith("bench-maml"):
            continue
        lines += [f"Second-order MAML meta-training speed, `metalab bench` ({name}, {_env(r['environment'])}):", "",
                  "| setting | vmap tasks/s | per-task loop tasks/s | vmap ÷ loop |", "|---|---|---|---|"]
        lines += [f"| {row['name']} | {row['vmap_tasks_per_s']:.2f} | {row['loop_tasks_per_s']:.2f} | {row['ratio']:.2f}× |"
                  for row in r["results"]["settings"]] + [""]
    sampling = {k: v for k, v in results.items() if k.startswith("sampling")}
    for name, r in sampling.items():
        lines += [f"Episode sampling ({name}, {_env(r['environment'])}): " + ", ".join(
            f"{k} {v['episodes_per_s']:,.0f} episodes/s" for k, v in r["results"].items()), ""]
    lines += ["Hardware, date and commit of each result (the JSON also holds the exact commands):", ""]
    lines += [f"- {name}: {_env(r['environment'])}" for name, r in results.items()]
    readme = ROOT / "README.md"
    text = readme.read_text()
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    readme.write_text(head + BEGIN + "\n" + "\n".join(lines) + "\n" + END + tail)


if __name__ == "__main__":
    main()
