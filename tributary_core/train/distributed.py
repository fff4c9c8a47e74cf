"""Launching training: one process, ``--nproc N`` local processes, or under ``torchrun``."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tributary_core.errors import TributaryError
from tributary_core.train.trainer import TrainConfig, train

__all__ = ["launch"]


def launch(config: TrainConfig, out: str | Path, *, nproc: int = 1, force: bool = False,
           progress: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Train in this process, in ``nproc`` spawned processes (gloo on CPU, NCCL on GPUs), or
    as one rank of a ``torchrun`` job (``WORLD_SIZE`` set).

    ``progress`` is called by rank 0 with each step's metrics row (see :func:`train`); with
    ``nproc > 1`` it must be picklable. Its ``close()``, if it has one, is called at the end.
    The core draws nothing itself: the CLI passes a progress bar."""
    import torch.distributed as dist

    out = Path(out)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun
        backend = "nccl" if _cuda() else "gloo"
        dist.init_process_group(backend)
        try:
            bar = progress if dist.get_rank() == 0 else None
            try:
                train(config, out, progress=bar, force=force)
            finally:
                _close(bar)
            return out
        finally:
            dist.destroy_process_group()
    if nproc == 1:
        try:
            train(config, out, progress=progress, force=force)
            return out
        finally:
            _close(progress)
    import logging

    import torch.multiprocessing as mp

    # when one rank stops with a user error, torch logs that it terminates the others: noise
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)
    import tempfile

    config.check()
    if config.stypes is None:  # settled once, so every rank builds the same model
        import attrs

        from tributary_core.train.trainer import _initial_stypes

        config = attrs.evolve(config, stypes=_initial_stypes(config, out, force))
    port = _free_port()
    # the ranks report user errors through files outside the run folder, so a refused run
    # leaves nothing in --out
    with tempfile.TemporaryDirectory(prefix="tributary-ranks-") as errors_dir:
        errors = [Path(errors_dir) / f"rank{r}" for r in range(nproc)]
        try:
            mp.spawn(_worker, args=(nproc, port, config, str(out), force, progress, errors_dir),
                     nprocs=nproc, join=True)
        except Exception:
            for e in errors:
                if e.exists():
                    raise TributaryError(e.read_text()) from None
            raise
    return out


def _worker(rank: int, world: int, port: int, config: TrainConfig, out: str, force: bool,
            progress: Callable[[dict[str, Any]], None] | None, errors_dir: str) -> None:
    import torch.distributed as dist

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    dist.init_process_group("nccl" if _cuda() else "gloo", rank=rank, world_size=world)
    bar = progress if rank == 0 else None
    try:
        train(config, out, progress=bar, force=force)  # only rank 0 touches the folder
    except TributaryError as exc:
        Path(errors_dir, f"rank{rank}").write_text(str(exc))
        raise SystemExit(2) from None
    except OSError as exc:  # a file that cannot be written: one line, as in one process
        if exc.filename is None or exc.strerror is None:
            raise
        Path(errors_dir, f"rank{rank}").write_text(f"{exc.filename}: {exc.strerror}")
        raise SystemExit(2) from None
    finally:
        _close(bar)
        dist.destroy_process_group()


def _close(progress: Any) -> None:
    close = getattr(progress, "close", None)
    if callable(close):
        close()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
