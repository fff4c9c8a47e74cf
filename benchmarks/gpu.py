"""Training and inference throughput on the device at hand (a GPU if there is one, else the CPU):
tokens/s, step time split into sampler wait and compute, peak memory, inference seeds/s.

    python benchmarks/gpu.py [--store PATH] [--seconds 120] [--batch 32] [--seq 1024]
                             [--d-model 256] [--layers 6] [--heads 8] [--compile]
                             [--attention sdpa|flex]

Batches come as training makes them: the run's sampler (every task of ``--store``, labelled
examples 25%, masked cells 30%) in a background thread a few batches ahead, pinned for a GPU,
copied without blocking. A step is forward, backward and an AdamW update (bf16 autocast on a GPU
that has it, as training does; ``--compile`` wraps the model in ``torch.compile``;
``--attention flex`` runs FlexAttention block masks, meant for a GPU with ``--compile``). Per
step it records how long the loop waited for its next batch and how long the step took after
that (with a CUDA synchronize, so the device's work is counted where it happens). Training runs
for ``--seconds`` or ``--steps``, whichever ends first, after ``--warmup`` steps; then inference
(the evaluation path: only the outputs the predictions read) for ``--seconds``.

Figures: tokens/s (B x S per step) and real cells/s (cells that are not padding), the sampler's
share of step time, peak memory (CUDA's allocator, or the process's peak RSS on a CPU), and
inference seeds/s. The default store is nycflights13 (made with the hashing embedder if
missing). The whole run stays within about ``2 x --seconds`` plus start-up.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--attention", choices=["sdpa", "flex"], default="sdpa",
                        help="attention kernel (flex: FlexAttention block masks; with --compile "
                             "on a GPU)")
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    args = parser.parse_args(argv)

    from tributary_core.sampler import Sampler, prefetch
    from tributary_core.store import open_store
    from tributary_core.train.trainer import TrainConfig, batch_loss, build_model, store_embeddings

    if args.store is None:
        from sampler import ensure_flights

        args.store = ensure_flights()
    store = open_store(args.store, verify=False)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = TrainConfig(stores=[str(args.store)], batch_size=args.batch, seq_len=args.seq,
                         width=16, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                         icl_share=0.25, mask_share=0.3, example_pointer=True,
                         attention=args.attention)
    torch.manual_seed(0)
    model = build_model(config, store.embedder.dimension).to(device)
    net = torch.compile(model) if args.compile else model
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()  # as batch_loss decides
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    embeddings = {store.name: store_embeddings(store, device)}
    sampler = Sampler([store], batch_size=args.batch, context_len=args.seq, width=16,
                      icl_share=0.25, mask_share=0.3)
    pin = device.type == "cuda"
    batches = prefetch((b.pin() if pin else b) for b in (sampler.batch_at(s) for s in range(10**9)))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def run_step(batch) -> None:
        loss, _ = batch_loss(net, batch, embeddings, device, 0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    for _ in range(args.warmup):
        run_step(next(batches))
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    waits, computes, cells = [], [], []
    end = time.perf_counter() + args.seconds
    while time.perf_counter() < end and len(waits) < args.steps:
        t0 = time.perf_counter()
        batch = next(batches)
        t1 = time.perf_counter()
        run_step(batch)
        sync()
        t2 = time.perf_counter()
        waits.append(t1 - t0)
        computes.append(t2 - t1)
        cells.append(int(batch.n_cells.sum()))
    batches.close()
    total = sum(waits) + sum(computes)
    steps = len(waits)
    peak = (torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    # inference: the evaluation path
    model.eval()
    eval_sampler = Sampler([store], batch_size=args.batch, context_len=args.seq, width=16,
                           icl_share=0.25, split="test")
    task = max(eval_sampler.tasks, key=lambda t: len(t.seeds))
    seeds = task.seeds
    done, i = 0, 0
    t0 = time.perf_counter()
    end = t0 + args.seconds
    with torch.inference_mode():
        while time.perf_counter() < end and i < len(seeds):
            batch = eval_sampler.batch(task, seeds[i : i + args.batch], mask=False)
            batch_loss(net, batch, embeddings, device, 0.1, targets_only=True)
            i += args.batch
            done += len(batch)
        sync()
    infer = done / max(time.perf_counter() - t0, 1e-9)
    figures = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "bf16": bf16, "compile": args.compile,
        "attention": args.attention,
        "batch": args.batch, "seq": args.seq, "d_model": args.d_model, "layers": args.layers,
        "heads": args.heads, "steps": steps,
        "tokens_per_s": args.batch * args.seq * steps / total if total else 0.0,
        "cells_per_s": sum(cells) / total if total else 0.0,
        "step_ms_median": 1000 * statistics.median(np.add(waits, computes)) if steps else None,
        "sampler_wait_share": sum(waits) / total if total else None,
        "compute_ms_median": 1000 * statistics.median(computes) if steps else None,
        "wait_ms_median": 1000 * statistics.median(waits) if steps else None,
        "peak_memory_gib": round(peak, 2),
        "inference_seeds_per_s": infer,
    }
    print(f"{figures['device']}, {steps} steps of B={args.batch} x S={args.seq} "
          f"(d_model {args.d_model}, {args.layers} layers, bf16 {bf16}, compile {args.compile}, "
          f"attention {args.attention}): "
          f"{figures['tokens_per_s']:,.0f} tokens/s, {figures['cells_per_s']:,.0f} cells/s; "
          f"step {figures['step_ms_median']:.1f} ms (compute {figures['compute_ms_median']:.1f}, "
          f"waiting for the sampler {figures['wait_ms_median']:.1f}; "
          f"{100 * figures['sampler_wait_share']:.1f}% of the time); peak memory "
          f"{figures['peak_memory_gib']} GiB; inference {infer:,.0f} seeds/s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main()
