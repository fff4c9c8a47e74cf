"""Launching training: one process, ``--nproc N`` local processes, or under ``torchrun``."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

from tributary_core.errors import TributaryError
from tributary_core.train.trainer import TrainConfig, train

__all__ = ["launch"]


def _bar(config: TrainConfig) -> Any:
    import click

    state = {"bar": None, "done": 0}

    def progress(row: dict[str, Any]) -> None:
        if state["bar"] is None:
            state["bar"] = click.progressbar(length=config.steps, label="train", file=sys.stderr,
                                             show_pos=True, width=30,
                                             item_show_func=lambda s: s)
            state["bar"].__enter__()
            state["bar"].update(row["step"] - 1)
        note = f"loss {row['loss']:.4f}, {row['seeds_per_s']:,.0f} seeds/s"
        if "val_loss" in row:
            note += f", val {row['val_loss']:.4f}"
        state["bar"].update(1, current_item=note)

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].__exit__(None, None, None)

    progress.close = close  # type: ignore[attr-defined]
    return progress


def launch(config: TrainConfig, out: str | Path, *, nproc: int = 1, force: bool = False,
           progress: bool = False) -> Path:
    """Train in this process, in ``nproc`` spawned processes (gloo on CPU, NCCL on GPUs), or
    as one rank of a ``torchrun`` job (``WORLD_SIZE`` set)."""
    import torch.distributed as dist

    out = Path(out)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun
        backend = "nccl" if _cuda() else "gloo"
        dist.init_process_group(backend)
        try:
            bar = _bar(config) if progress and dist.get_rank() == 0 else None
            train(config, out, progress=bar, force=force)
            return out
        finally:
            dist.destroy_process_group()
    if nproc == 1:
        bar = _bar(config) if progress else None
        try:
            train(config, out, progress=bar, force=force)
            return out
        finally:
            if bar is not None:
                bar.close()
    import logging

    import torch.multiprocessing as mp

    # when one rank stops with a user error, torch logs that it terminates the others: noise
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)
    port = _free_port()
    out.mkdir(parents=True, exist_ok=True)
    errors = [out / f".error-rank{r}" for r in range(nproc)]
    for e in errors:
        e.unlink(missing_ok=True)
    try:
        mp.spawn(_worker, args=(nproc, port, config, str(out), force, progress), nprocs=nproc, join=True)
    except Exception:
        for e in errors:
            if e.exists():
                message = e.read_text()
                e.unlink()
                raise TributaryError(message) from None
        raise
    return out


def _worker(rank: int, world: int, port: int, config: TrainConfig, out: str, force: bool,
            progress: bool) -> None:
    import torch.distributed as dist

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    dist.init_process_group("nccl" if _cuda() else "gloo", rank=rank, world_size=world)
    bar = _bar(config) if progress and rank == 0 else None
    try:
        train(config, out, progress=bar, force=force and rank == 0)
    except TributaryError as exc:
        Path(out, f".error-rank{rank}").write_text(str(exc))
        raise SystemExit(2) from None
    finally:
        if bar is not None:
            bar.close()
        dist.destroy_process_group()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
