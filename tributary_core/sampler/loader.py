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
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from tributary_core.errors import TributaryError
from tributary_core.sampler.batch import Batch, sample_batch
from tributary_core.sampler.graph import SamplerGraph, TaskView
from tributary_core.sampler.splits import HashSplit, TemporalSplit, shard, split_index
from tributary_core.store import Store, open_store

# and ContextDataset (imports torch)
__all__ = ["LoadedOnUse", "Sampler", "SampledTask", "StoreGraphs", "prefetch"]


class LoadedOnUse(Mapping[str, Any]):
    """Something of each store (``load(store)``), by database name, loaded on first use; with
    ``limit``, at most that many are held (the least recently used is dropped and loaded again
    when asked for). A later store replaces an earlier one of the same name. Thread-safe: the
    prefetch thread and its consumer may both ask."""

    def __init__(self, stores: Sequence[Store], load: Callable[[Store], Any],
                 limit: int | None = None) -> None:
        self.stores = {s.name: s for s in stores}
        self.limit = limit
        self._load = load
        self._held: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.builds = 0  # loads so far (a dropped value asked for again counts again)

    def __getitem__(self, name: str) -> Any:
        with self._lock:
            if name in self._held:
                self._held.move_to_end(name)
                return self._held[name]
        value = self._load(self.stores[name])  # KeyError: no such database
        with self._lock:
            self.builds += 1
            self._held[name] = value
            while self.limit is not None and len(self._held) > self.limit:
                self._held.popitem(last=False)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self.stores)

    def __len__(self) -> int:
        return len(self.stores)

    @property
    def held(self) -> list[str]:
        """The databases whose values are in memory now, least recently used first."""
        with self._lock:
            return list(self._held)


class StoreGraphs(LoadedOnUse):
    """The sampler graphs of a sampler's stores, by database name, each built on first use.

    With ``limit``, at most that many are held: a corpus of hundreds of stores trains without
    holding every store's graph in memory. Batches hold one task, so a training step needs one
    graph at a time."""

    def __init__(self, stores: Sequence[Store], limit: int | None = None) -> None:
        if limit is not None and limit < 1:
            raise TributaryError(f"max_graphs must be at least 1, not {limit}")
        super().__init__(stores, SamplerGraph.from_store, limit)


@attrs.define(eq=False)
class SampledTask:
    """One task as the sampler serves it: its database and name, weight and this rank's seeds;
    its graph and view come from the sampler's :class:`StoreGraphs` when asked for."""

    database: str
    name: str
    weight: float
    seeds: np.ndarray  # indices into the task's rows: this split, this rank
    graphs: Mapping[str, SamplerGraph] = attrs.field(repr=False)

    @property
    def graph(self) -> SamplerGraph:
        return self.graphs[self.database]

    @property
    def view(self) -> TaskView:
        return self.graph.task(self.name)

    @property
    def key(self) -> str:
        return f"{self.database}/{self.name}"

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
        max_graphs: hold at most this many stores' sampler graphs in memory (:class:`StoreGraphs`;
            ``None``: all). For corpora of many stores.
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
                 icl_share: float = 0.0, mask_share: float = 0.0,
                 max_graphs: int | None = None) -> None:
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
        self.graphs = StoreGraphs(opened, max_graphs)
        self.pretrain = pretrain
        self.tasks = self._select(tasks)

    def _select(self, tasks: Sequence[str] | Mapping[str, float] | None) -> list[SampledTask]:
        stores = self.graphs.stores
        all_tasks = [(db, t) for db, store in stores.items() for t in store.tasks]
        if self.pretrain:  # (builds each graph once to list its columns)
            all_tasks += [(db, v.name) for db in stores
                          for v in TaskView.masking_tasks(self.graphs[db])]
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
                table, rows, times = self._seed_rows(db, t)
                assigned = self.splitter.assign(table, rows, times)
                mine = shard(np.flatnonzero(assigned == self.split_id), self.rank, self.world_size)
                out.append(SampledTask(db, t, float(weight), mine, self.graphs))
        return out

    def _seed_rows(self, db: str, task: str) -> tuple[str, np.ndarray, np.ndarray]:
        """A task's anchor table, anchor rows and observation times: a SQL task's from its
        store (no graph built), a cell-masking task's from its view."""
        stored = self.graphs.stores[db].tasks.get(task)
        if stored is None:
            view = self.graphs[db].task(task)
            return view.graph.table_names[view.anchor_table], view.anchor_rows, view.observation_time
        return (stored.meta["anchor_table"], np.asarray(stored.anchor_row, dtype=np.int64),
                np.asarray(stored.observation_time, dtype=np.int64))

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
        probe = SampledTask(db, view.name, 1.0, np.array([seed_index]), self.graphs)
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
