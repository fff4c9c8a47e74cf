"""Training across machines on torchrun (issue 19): a two-node launch on one machine — two
``torchrun --nnodes 2`` agents meeting through c10d rendezvous on 127.0.0.1, one gloo process
each — trains exactly what ``--nproc 2`` trains."""

from __future__ import annotations

import socket
import subprocess
import sys

import numpy as np
import torch
from test_sampler import make_shop

from tributary_core.train import read_metrics

ARGS = ["--steps", "4", "--batch-size", "2", "--seq-len", "16", "--d-model", "12", "--layers", "1",
        "--heads", "3", "--val-every", "4", "--ckpt-every", "4", "--warmup", "1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_under_torchrun_train_as_two_local_processes(tmp_path):
    shop = make_shop(tmp_path / "shop", 0, 20, 40, 30, dimension=8)
    train = ["-m", "tributary_core.cli", "run", "train", "--db", str(shop.path), *ARGS]
    local = subprocess.run([sys.executable, *train, "--out", str(tmp_path / "local"), "--nproc", "2"],
                           capture_output=True, text=True, timeout=600)
    assert local.returncode == 0, local.stderr
    port = _free_port()
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
         "--node-rank", str(node), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
         "--rdzv-id", "tributary-two-nodes", "--max-restarts", "0",
         *train, "--out", str(tmp_path / "nodes")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for node in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in nodes]
    for p, out in zip(nodes, outputs, strict=True):
        assert p.returncode == 0, out
    a, b = read_metrics(tmp_path / "local"), read_metrics(tmp_path / "nodes")
    assert [r["step"] for r in b] == [r["step"] for r in a] == [1, 2, 3, 4]
    np.testing.assert_allclose([r["loss"] for r in b if "loss" in r],
                               [r["loss"] for r in a if "loss" in r], rtol=1e-5, atol=1e-6)
    wa = torch.load(tmp_path / "local" / "model.pt", weights_only=False)
    wb = torch.load(tmp_path / "nodes" / "model.pt", weights_only=False)
    sa, sb = wa["model"], wb["model"]
    assert sa.keys() == sb.keys()
    for k in sa:
        if torch.is_tensor(sa[k]):
            torch.testing.assert_close(sb[k], sa[k], rtol=1e-5, atol=1e-6)


def _rank(rank, world, port, config, outs, result_dir):
    import os
    from pathlib import Path

    import torch.distributed as dist

    from tributary_core.errors import TributaryError
    from tributary_core.train import train

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        train(config, outs[rank])
        Path(result_dir, f"rank{rank}").write_text("trained")
    except TributaryError as exc:
        Path(result_dir, f"rank{rank}").write_text(str(exc))
    finally:
        dist.destroy_process_group()


def test_a_rank_that_cannot_see_the_checkpoint_stops_every_rank(tmp_path):
    """Resuming across machines with --out on rank 0's machine only: one line, no rank left
    waiting, instead of a rank starting over beside the others."""
    import attrs
    import torch.multiprocessing as mp

    from tributary_core.train import TrainConfig, train

    shop = make_shop(tmp_path / "shop", 0, 20, 40, 30, dimension=8)
    config = TrainConfig(stores=[str(shop.path)], steps=2, batch_size=2, seq_len=16, width=2,
                         d_model=12, n_layers=1, n_heads=3, warmup=1, val_every=2, ckpt_every=2)
    train(config, tmp_path / "a")  # rank 0's machine holds a checkpoint; rank 1's folder is empty
    longer = attrs.evolve(config, steps=4)
    mp.spawn(_rank, args=(2, _free_port(), longer, [str(tmp_path / "a"), str(tmp_path / "b")],
                          str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        said = (tmp_path / f"rank{rank}").read_text()
        assert "rank 1 sees checkpoint none, rank 0 step-" in said, said
        assert "put --out on storage every machine sees" in said
