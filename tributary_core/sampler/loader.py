"""Sampling across databases and tasks: :class:`Sampler`, a prefetching iterator and a torch
``IterableDataset``.

A batch holds contexts of one task (so one target type and one candidate set); the task of each
training batch is drawn by weight. Each task's seeds are filtered to the requested split, then
sharded by rank; a training stream walks a fresh permutation of the shard each pass (``draw``
counts passes, so a seed's context differs from pass to pass), an evaluation pass walks the
shard in order.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from tributary_core.errors import TributaryError
from tributary_core.sampler.batch import Batch, sample_batch
from tributary_core.sampler.graph import SamplerGraph, TaskView
from tributary_core.sampler.splits import HashSplit, TemporalSplit, shard, split_index
from tributary_core.store import Store, open_store

__all__ = ["Sampler", "SampledTask", "prefetch"]  # and ContextDataset (imports torch)


@attrs.define(eq=False)
class SampledTask:
    """One task as the sampler serves it: its graph, view, weight and this rank's seeds."""

    graph: SamplerGraph
    view: TaskView
    weight: float
    seeds: np.ndarray  # indices into the task's rows: this split, this rank

    @property
    def key(self) -> str:
        return f"{self.graph.name}/{self.view.name}"

    @property
    def stats(self) -> dict[str, Any]:
        """The target's statistics from the store (e.g. ``mean`` and ``std``)."""
        return self.view.stats


class Sampler:
    """Contexts from one or more stores.

    Args:
        stores: stores or store paths. Databases trained together must share an embedder
            identity; a mix is refused.
        tasks: ``None`` for every task of every store, a list of names (``"task"`` or
            ``"db/task"``), or a mapping of such names to weights (default weight: 1).
        split: ``"train"``, ``"val"`` or ``"test"``.
        splitter: a :class:`HashSplit` (default 80/10/10) or :class:`TemporalSplit`.
        rank, world_size: this process's shard of each split.
        context_len, width: L cells per context, at most ``width`` children per row.
        n_threads: Numba threads building a batch (results do not depend on it).
        pretrain: add a cell-masking task (``db/table.column:mask``) for every column that can
            be a target, beside the SQL tasks; with ``tasks`` naming only masking tasks (or an
            empty list), just those.
        icl_share: the share of each context's cells kept for labelled examples: other seeds
            of the same task, from the training split whatever ``split`` is, shown with their
            labels once those are known (``sampler/examples.py``). 0: none.
        mask_share: ``p_max`` of masked cells: each context of the training stream
            (:meth:`batch_at`, iteration) hides a share ``p ~ U(0, p_max)`` of its other
            eligible cells (``Batch.is_masked``; ``sampler/masking.py``). :meth:`evaluation` and
            :meth:`context` never mask. 0: none.
    """

    def __init__(self, stores: Sequence[Store | str | Path], *,
                 tasks: Sequence[str] | Mapping[str, float] | None = None, split: str = "train",
                 splitter: HashSplit | TemporalSplit | None = None, batch_size: int = 256,
                 context_len: int = 1024, width: int = 16, seed: int = 0, rank: int = 0,
                 world_size: int = 1, n_threads: int = 1, pretrain: bool = False,
                 icl_share: float = 0.0, mask_share: float = 0.0) -> None:
        if not stores:
            raise TributaryError("the sampler needs at least one store")
        opened = [s if isinstance(s, Store) else open_store(s) for s in stores]
        identities = {s.embedder for s in opened}
        if len(identities) > 1:
            listing = "; ".join(f"{s.path}: {s.embedder.describe()}" for s in opened)
            raise TributaryError(f"stores were embedded with different embedders and cannot be "
                                 f"trained together: {listing}")
        names = [s.name for s in opened]
        if len(set(names)) != len(names):
            raise TributaryError(f"two stores share a database name: {sorted(names)}")
        if batch_size < 1 or context_len < 1 or width < 0:
            raise TributaryError("batch_size and context_len must be >= 1 and width >= 0")
        if not 0.0 <= icl_share < 1.0:
            raise TributaryError(f"icl_share must be at least 0 and below 1, not {icl_share}")
        if not 0.0 <= mask_share < 1.0:
            raise TributaryError(f"mask_share must be at least 0 and below 1, not {mask_share}")
        self.icl_share = float(icl_share)
        self.mask_share = float(mask_share)
        self.split = split
        self.split_id = split_index(split)
        self.splitter = splitter or HashSplit()
        self.batch_size, self.context_len, self.width = batch_size, context_len, width
        self.seed, self.rank, self.world_size, self.n_threads = seed, rank, world_size, n_threads
        self.graphs = {s.name: SamplerGraph.from_store(s) for s in opened}
        self.pretrain = pretrain
        self.tasks = self._select(tasks)

    def _select(self, tasks: Sequence[str] | Mapping[str, float] | None) -> list[SampledTask]:
        all_tasks = [(db, t) for db, g in self.graphs.items() for t in g.store.tasks]
        if self.pretrain:
            all_tasks += [(db, v.name) for db, g in self.graphs.items()
                          for v in TaskView.masking_tasks(g)]
        if tasks is None:
            wanted = {f"{db}/{t}": 1.0 for db, t in all_tasks}
        elif not tasks and self.pretrain:
            wanted = {f"{db}/{t}": 1.0 for db, t in all_tasks if t.endswith(":mask")}
        elif isinstance(tasks, Mapping):
            wanted = dict(tasks)
        else:
            wanted = {name: 1.0 for name in tasks}
        out = []
        for name, weight in wanted.items():
            matches = [(db, t) for db, t in all_tasks if name in (t, f"{db}/{t}")]
            if not matches:
                known = ", ".join(f"{db}/{t}" for db, t in all_tasks) or "none"
                raise TributaryError(f"no task {name!r} in the stores (tasks: {known})")
            if weight <= 0:
                raise TributaryError(f"task {name!r}: weight must be > 0, got {weight}")
            for db, t in matches:
                graph = self.graphs[db]
                view = graph.task(t)
                assigned = self.splitter.assign(graph.table_names[view.anchor_table], view.anchor_rows,
                                                view.observation_time)
                mine = shard(np.flatnonzero(assigned == self.split_id), self.rank, self.world_size)
                out.append(SampledTask(graph, view, float(weight), mine))
        return out

    # -- streams ---------------------------------------------------------------------------

    def batch(self, task: SampledTask, seeds: np.ndarray, draw: int = 0, *,
              mask: bool = True) -> Batch:
        """Contexts of ``task`` around its rows ``seeds`` (indices into the task's rows); with
        ``mask`` (and ``mask_share`` > 0) with masked cells."""
        examples = task.view.examples(self.splitter) if self.icl_share > 0 else None
        return sample_batch(task.graph, task.view, seeds, context_len=self.context_len,
                            width=self.width, sampler_seed=self.seed, draw=draw,
                            n_threads=self.n_threads, examples=examples, icl_share=self.icl_share,
                            mask_share=self.mask_share if mask else 0.0)

    def __iter__(self) -> Iterator[Batch]:
        """An endless training stream: tasks drawn by weight, each walking shuffled passes."""
        live = [t for t in self.tasks if len(t.seeds)]
        if not live:
            raise TributaryError(f"no seeds in the {self.split!r} split for rank {self.rank}")
        rng = np.random.default_rng([self.seed, self.rank, 0x5A3])
        weights = np.array([t.weight for t in live])
        weights /= weights.sum()
        order = [rng.permutation(t.seeds) for t in live]
        at = [0] * len(live)
        passes = [0] * len(live)
        while True:
            i = int(rng.choice(len(live), p=weights))
            take = []
            need = self.batch_size
            while need:
                chunk = order[i][at[i] : at[i] + need]
                take.append(chunk)
                at[i] += len(chunk)
                need -= len(chunk)
                if at[i] >= len(order[i]):
                    order[i], at[i] = rng.permutation(live[i].seeds), 0
                    passes[i] += 1
            yield self.batch(live[i], np.concatenate(take), draw=passes[i])

    def batch_at(self, step: int) -> Batch:
        """Training batch number ``step``: a pure function of (seed, rank, step), so a resumed
        run sees exactly the batches an uninterrupted one would. The task is drawn by weight
        the same on every rank; the seeds are drawn (with replacement) from this rank's shard."""
        live = [t for t in self.tasks if len(t.seeds)]
        if not live:
            raise TributaryError(f"no seeds in the {self.split!r} split for rank {self.rank}")
        weights = np.array([t.weight for t in live])
        i = int(np.random.default_rng([self.seed, step, 1]).choice(len(live), p=weights / weights.sum()))
        seeds = np.random.default_rng([self.seed, self.rank, step, 2]).choice(live[i].seeds, self.batch_size)
        return self.batch(live[i], seeds, draw=step)

    def evaluation(self, task: str | None = None) -> Iterator[Batch]:
        """One ordered pass over this rank's seeds of the split (per task, the last batch
        smaller), with the same contexts every time."""
        for t in self.tasks:
            if task is not None and task not in (t.view.name, t.key):
                continue
            for start in range(0, len(t.seeds), self.batch_size):
                yield self.batch(t, t.seeds[start : start + self.batch_size], mask=False)

    def context(self, db: str, task: str, seed_index: int) -> Batch:
        """The context of one seed (index into the task's rows), whatever its split."""
        view = self.graphs[db].task(task)
        if not 0 <= seed_index < len(view):
            raise TributaryError(f"task {task!r} has {len(view)} seeds; {seed_index} does not exist")
        probe = SampledTask(self.graphs[db], view, 1.0, np.array([seed_index]))
        return self.batch(probe, probe.seeds, mask=False)


_DONE = object()


def prefetch(batches: Iterator[Any], depth: int = 4) -> Iterator[Any]:
    """Run ``batches`` in a background thread, ``depth`` items ahead of the consumer.

    The kernel releases the GIL, so sampling overlaps with the consumer's work. An exception in
    the producer is raised in the consumer; closing the iterator stops the producer.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in batches:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as exc:  # handed to the consumer
            q.put(exc)

    worker = threading.Thread(target=produce, daemon=True, name="tributary-prefetch")
    worker.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                worker.join(0.05)


@functools.lru_cache(maxsize=1)
def _torch_iterable() -> type:
    import torch

    class ContextDataset(torch.utils.data.IterableDataset):
        """The sampler's training stream as torch tensors (use ``DataLoader(batch_size=None)``).

        In a ``DataLoader`` with workers, worker k of n gets sampler seed ``seed * n + k`` so
        the workers do not repeat each other.
        """

        def __init__(self, sampler: Sampler, *, depth: int = 4) -> None:
            self.sampler = sampler
            self.depth = depth

        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            sampler = self.sampler
            if info is not None and info.num_workers > 1:
                sampler = _reseeded(sampler, sampler.seed * info.num_workers + info.id)
            for batch in prefetch(iter(sampler), self.depth):
                yield batch.to_torch()

    return ContextDataset


def _reseeded(sampler: Sampler, seed: int) -> Sampler:
    clone = object.__new__(Sampler)
    clone.__dict__.update(sampler.__dict__)
    clone.seed = seed
    return clone


def __getattr__(name: str) -> Any:  # torch is imported only when the dataset is asked for
    if name == "ContextDataset":
        return _torch_iterable()
    raise AttributeError(name)
