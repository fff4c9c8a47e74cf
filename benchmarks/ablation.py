"""Ablations of the model-quality work (issue 16): one row per setting, every task of both
databases, at one budget and seed.

    python benchmarks/ablation.py [--steps 300] [--eval-seeds 500] [--seed 0]
                                  [--settings today,icl25,...] [--out runs/ablation]
                                  [--doc docs/quality.md] [--render-only]

Every setting trains one run per database (``--steps`` steps, the architecture of
``benchmarks/quality.py``: d_model 96, 4 layers, 6 heads, L = 256 at width 8, batch 32, AdamW
lr 1e-3) and is scored on the same evenly spaced test seeds per task. ``--seed`` is the model
and sampler seed: run a second seed into another ``--out`` to tell differences from noise.
Finished runs are kept in ``OUT/results.json`` (delete an entry, or the run's folder, to redo
it); ``--render-only`` rewrites the page from it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import DBS, MODEL, ROOT, Results, _seconds_in_steps, write_section  # noqa: E402

#: The report's architecture and optimisation without issue 16's settings: "today" is this,
#: and every other row adds its own settings to it.
BASE = {k: v for k, v in MODEL.items() if k not in ("icl_share", "example_pointer", "mask_share")}

#: The page section this script owns (inside the hand-written part of docs/quality.md, which
#: benchmarks/quality.py keeps when it regenerates the page).
BEGIN = "<!-- ablation: written by benchmarks/ablation.py -->"
END = "<!-- ablation: end -->"

#: The settings: name -> (description, TrainConfig overrides).
SETTINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "today": ("the model before issue 16", {}),
    "icl25": ("+ labelled examples, 25% of the context", {"icl_share": 0.25}),
    "icl50": ("+ labelled examples, 50% of the context", {"icl_share": 0.5}),
    "mask": ("+ masked cells (p_max 0.3)", {"mask_share": 0.3}),
    "recipe": ("+ the recipe (QK-norm, zero-init, full attention, EMA 0.99, periodic numbers)",
               {"qk_norm": True, "zero_init": True, "full_attention": True, "ema": 0.99,
                "numeric_encoding": "periodic"}),
    "pointer": ("+ labelled examples 25% and the example pointer",
                {"icl_share": 0.25, "example_pointer": True}),
    "final": ("labelled examples 25% with the pointer + masked cells (no recipe)",
              {"icl_share": 0.25, "example_pointer": True, "mask_share": 0.3}),
    "muon": ("+ Muon for the blocks' matrices", {"optimizer": "muon"}),
    "all": ("labelled examples 25% with the pointer + masked cells + the recipe",
            {"icl_share": 0.25, "example_pointer": True, "mask_share": 0.3, "qk_norm": True,
             "zero_init": True, "full_attention": True, "ema": 0.99,
             "numeric_encoding": "periodic"}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-seeds", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--dbs", default=",".join(DBS))
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "quality.md",
                        help="The page whose ablation section (between its markers, added at the "
                             "end when missing) is rewritten.")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; known: {', '.join(SETTINGS)}")
    dbs = [d.strip() for d in args.dbs.split(",") if d.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    results = Results(args.out / "results.json")
    if not args.render_only:
        run(args, results, names, dbs)
    write_section(args.doc, BEGIN, END, render(results.data, names, dbs, args))
    print(f"wrote the ablation section of {args.doc}", file=sys.stderr)


def run(args: argparse.Namespace, results: Results, names: list[str], dbs: list[str]) -> None:
    from tributary_core.datasets import prepare_store
    from tributary_core.registry import get_registry
    from tributary_core.train.evaluate import evaluate
    from tributary_core.train.trainer import TrainConfig, read_metrics, train

    embedder = get_registry().create_embedder("local", model=None, dimension=256)
    stores = {db: str(prepare_store(db, embedder, log=lambda t: print(t, file=sys.stderr)))
              for db in dbs}
    embedder.close()
    results.data["settings"] = {"steps": args.steps, "eval_seeds": args.eval_seeds,
                                "seed": args.seed, "model": BASE}
    for name in names:
        for db in dbs:
            folder = args.out / f"{name}-{db}"

            def go(name: str = name, db: str = db, folder: Path = folder) -> dict[str, Any]:
                model = {**BASE, "seed": args.seed}
                config = TrainConfig(stores=[stores[db]], steps=args.steps,
                                     warmup=max(args.steps // 10, 1), val_every=args.steps,
                                     val_batches=8, ckpt_every=args.steps, **model,
                                     **SETTINGS[name][1])
                start = time.perf_counter()
                train(config, folder, force=True)
                trained = time.perf_counter() - start
                rows = read_metrics(folder)
                tasks = evaluate(folder, split="test", batch_size=256, max_seeds=args.eval_seeds)
                return {"tasks": tasks, "train_s": round(trained, 1),
                        "step_s": _seconds_in_steps(rows, config.batch_size),
                        "val_loss": [r["val_loss"] for r in rows if "val_loss" in r][-1:]}

            results.stage(f"{name}/{db}", go)


def render(data: dict[str, Any], names: list[str], dbs: list[str], args: argparse.Namespace) -> str:
    from tributary_core.registry import get_registry

    registry = get_registry()
    s = data.get("settings", {})
    lines = ["## Ablations of the model-quality work", "",
             "Regenerate (finished runs are kept in `runs/ablation/results.json`):", "",
             "```bash", f"python benchmarks/ablation.py --steps {s.get('steps', '?')} "
             f"--eval-seeds {s.get('eval_seeds', '?')} --seed {s.get('seed', 0)}", "```", "",
             f"Each row: one run per database, {s.get('steps', '?')} steps at the architecture "
             "of `benchmarks/quality.py` (d_model 96, 4 layers, 6 heads, L = 256, width 8, batch "
             f"32, AdamW lr 0.001, 10% warm-up, cosine decay), model seed {s.get('seed', 0)}; "
             f"test metrics on the same {s.get('eval_seeds', '?')} evenly spaced test seeds per "
             "task; the validation loss (the tasks' own, 8 batches per task, never with masked "
             "cells) at the end of training, the steadier figure at this budget; s/step: the "
             "mean training step "
             "(noisy: other work shared the 2 cores during some runs). ↑ higher is better, ↓ "
             "lower is better; bold: the best row.", ""]
    for db in dbs:
        keys: list[str] = []
        for name in names:
            for key in data.get(f"{name}/{db}", {}).get("tasks", {}):
                if key not in keys:
                    keys.append(key)
        if not keys:
            continue
        heads = {}
        for name in names:
            for key, entry in data.get(f"{name}/{db}", {}).get("tasks", {}).items():
                heads[key] = registry.loss_head(entry["loss_head"])
        def title(key: str, heads: dict[str, Any] = heads) -> str:
            metric = heads[key].metrics[0]
            arrow = "↑" if heads[key].higher_is_better[metric] else "↓"
            return f"{key.split('/', 1)[1]} {metric} {arrow}"

        lines += [f"### {db}", "", "| setting | " + " | ".join(map(title, keys))
                  + " | val loss ↓ | s/step |", "|---|" + "---:|" * (len(keys) + 2)]
        best = {}
        for key in keys:
            metric = heads[key].metrics[0]
            values = {n: data[f"{n}/{db}"]["tasks"][key]["metrics"].get(metric)
                      for n in names if key in data.get(f"{n}/{db}", {}).get("tasks", {})}
            values = {n: v for n, v in values.items() if v is not None}
            if values:
                pick = max if heads[key].higher_is_better[metric] else min
                best[key] = pick(values, key=values.get)
        for name in names:
            entry = data.get(f"{name}/{db}")
            if entry is None:
                continue
            cells = []
            for key in keys:
                found = entry["tasks"].get(key)
                value = found["metrics"].get(heads[key].metrics[0]) if found else None
                text = "–" if value is None else f"{value:.3f}"
                cells.append(f"**{text}**" if best.get(key) == name else text)
            step = entry["step_s"] / max(s.get("steps", 1), 1)
            val = entry.get("val_loss") or [None]
            val_text = "–" if val[-1] is None else f"{val[-1]:.4f}"
            lines.append(f"| {name}: {SETTINGS[name][0]} | " + " | ".join(cells)
                         + f" | {val_text} | {step:.2f} |")
        majority = next((data[f"{n}/{db}"]["tasks"] for n in names if f"{n}/{db}" in data), {})
        lines.append("| majority/mean | " + " | ".join(
            f"{majority[k]['baseline'].get(heads[k].metrics[0]):.3f}" if k in majority else "–"
            for k in keys) + " | | |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
