"""What the kernel reads from a store, gathered once: typed lists of memory maps, per-table FK
and column tables, and per-task views (seeds, targets, hidden columns)."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from tributary_core.errors import TributaryError
from tributary_core.registry import Registry, get_registry
from tributary_core.sampler.kernel import (
    SLOT_BOOLEAN,
    SLOT_NONE,
    SLOT_NUMBER,
    SLOT_TIMESTAMP,
    SLOT_VOCAB,
    GraphArrays,
    TaskArrays,
)
from tributary_core.store import Store
from tributary_core.store.format import StoreFile
from tributary_core.timefeatures import TABLES, scale_of

__all__ = ["SamplerGraph", "TaskView", "SLOTS", "stype_names"]

SLOTS = {"none": SLOT_NONE, "number": SLOT_NUMBER, "timestamp": SLOT_TIMESTAMP,
         "boolean": SLOT_BOOLEAN, "vocab": SLOT_VOCAB}
_FIELD = {SLOT_NUMBER: "value", SLOT_TIMESTAMP: "value", SLOT_BOOLEAN: "value", SLOT_VOCAB: "index"}


def stype_names(registry: Registry | None = None) -> list[str]:
    """Every installed, non-ignored semantic type, sorted: a cell's ``stype`` code indexes this."""
    registry = registry or get_registry()
    return sorted(n for n, cls in registry.semantic_types.items() if not cls.is_ignored)


class _Flat:
    """Store sections of one kind concatenated, with the offset where each part starts."""

    def __init__(self, dtype: Any, row_shape: tuple[int, ...] = ()) -> None:
        self.dtype, self.row_shape = np.dtype(dtype), row_shape
        self.parts: list[tuple[StoreFile, str, int]] = []
        self.size = 0

    def add(self, file: StoreFile, section: str) -> int:
        """Queue ``section`` of ``file`` (bitmaps as packed bytes); returns its offset."""
        s = file.sections[section]
        n = s["nbytes"] // (self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64)))
        at = self.size
        self.parts.append((file, section, n))
        self.size += n
        return at

    def names(self, store: Store) -> list[list[str]]:
        """The parts as ``[file relative to the store, section]``: what ``sampler.bin`` records
        for each of its sections, so that a reader can tell whether a section is this one."""
        return [[_relative(store, file), section] for file, section, _ in self.parts]

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.size, *self.row_shape)

    def ranges(self) -> list[tuple[Path, int, int, int]]:
        """The parts as byte ranges of their files, in order: ``(path, offset, nbytes, crc32)``
        (what :meth:`FileWriter.add_copy` copies)."""
        return [(file.path, s["offset"], s["nbytes"], s["crc32"])
                for file, section, _ in self.parts for s in (file.sections[section],)]

    def build(self, mapped: StoreFile | None, name: str, store: Store) -> np.ndarray:
        """The concatenation: section ``name`` of the store's ``sampler.bin`` (``mapped``) when
        that holds exactly these parts (no copy: a view of the file's memory map, shared by
        every process through the page cache), else a copy read into memory."""
        if mapped is not None and mapped.meta.get("parts", {}).get(name) == self.names(store):
            out = mapped.raw(name).view(self.dtype).reshape(self.shape)
            self.was_mapped = True
        else:
            self.was_mapped = False
            out = np.empty(self.shape, dtype=self.dtype)
            at = 0
            for file, section, n in self.parts:
                file.read_into(section, out[at : at + n])
                at += n
            out.flags.writeable = False  # as a mapped section is: one compiled kernel for both
        self.parts = []
        return out


def _relative(store: Store, file: StoreFile) -> str:
    return file.path.relative_to(store.path).as_posix()


#: The sections of ``sampler.bin``, in the order they are written, and the SamplerGraph
#: attribute each one is.
SAMPLER_SECTIONS = ("time", "parent", "indptr", "children", "child_time", "numbers",
                    "timestamps", "vocab", "bits")
SAMPLER_FILE = "sampler.bin"


#: Graphs already built, by opened store: weak references, so a graph lives as long as a sampler
#: (or other caller) holds it, and samplers of one store share it meanwhile.
_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class SamplerGraph:
    """A store prepared for sampling. Build with :meth:`from_store`.

    The kernel reads flat arrays: every table's times, every FK's parent/indptr/children/
    child_time, and every non-ignored column's values and packed validity bits, each kind
    concatenated once into memory with per-table, per-FK or per-column offsets. (Reading the
    memory maps through Numba typed lists costs about 160 ns an access against 16 ns for a
    flat array, and the kernel makes one or two per cell.) The copy is about the size of the
    store's tables and graph, made once per process.
    """

    def __init__(self, store: Store, registry: Registry | None = None, *,
                 build: bool = True) -> None:
        """``build=False`` plans the flat arrays without reading them (``self.flats``: name ->
        :class:`_Flat`), for :func:`write_sampler_file`."""
        registry = registry or get_registry()
        self.store = store
        self.name = store.name
        self.stype_names = stype_names(registry)
        code = {n: i for i, n in enumerate(self.stype_names)}
        self.table_names = list(store.tables)
        tindex = {n: i for i, n in enumerate(self.table_names)}
        self.table_index = tindex
        T = len(self.table_names)
        times = _Flat(np.int64)
        self.time_off = np.full(T, -1, dtype=np.int64)
        self.table_rows = np.zeros(T, dtype=np.int64)
        for i, name in enumerate(self.table_names):
            t = store.tables[name]
            self.table_rows[i] = t.rows
            if t.time is not None:
                self.time_off[i] = times.add(t.file, t.meta["time"])
        # foreign keys, by child table (parents) and by parent table (children)
        fks = store.foreign_keys
        self.fk_child_table = np.array([tindex[fk.child_table] for fk in fks], dtype=np.int64)
        self.fk_parent_table = np.array([tindex[fk.parent_table] for fk in fks], dtype=np.int64)
        self.out_ptr, self.out_fk = _csr(self.fk_child_table, T)
        self.in_ptr, self.in_fk = _csr(self.fk_parent_table, T)
        parent, indptr, children, ctime = _Flat(np.int32), _Flat(np.int64), _Flat(np.int32), _Flat(np.int64)
        graph = store.files["graph.bin"]
        sections = [fk.meta["sections"] for fk in fks]
        self.parent_off = np.array([parent.add(graph, s["parent"]) for s in sections], dtype=np.int64)
        self.indptr_off = np.array([indptr.add(graph, s["indptr"]) for s in sections], dtype=np.int64)
        self.children_off = np.array([children.add(graph, s["children"]) for s in sections],
                                     dtype=np.int64)
        for s in sections:
            ctime.add(graph, s["child_time"])
        self.max_parents = max(1, int(np.diff(self.out_ptr).max(initial=0)))
        # columns: every non-ignored column of every table, in table order
        col_name: list[str] = []
        cols: dict[str, list[Any]] = {k: [] for k in ("table", "slot", "src", "valid", "embed", "stype",
                                                      "ts_mean", "ts_inv_std")}
        flat = {SLOT_NUMBER: _Flat(np.float32), SLOT_TIMESTAMP: _Flat(np.int64),
                SLOT_BOOLEAN: _Flat(np.uint8), SLOT_VOCAB: _Flat(np.uint32)}
        bits = flat[SLOT_BOOLEAN]  # validity bitmaps and boolean values, both packed
        ptr = [0]
        for ti, tname in enumerate(self.table_names):
            table = store.tables[tname]
            for cname, cmeta in table.columns.items():
                cls = registry.semantic_type(cmeta["stype"])
                if cls.is_ignored:
                    continue
                slot = SLOTS.get(cls.batch_slot)
                if slot is None:
                    raise TributaryError(f"semantic type {cls.name!r} has batch_slot "
                                         f"{cls.batch_slot!r}; expected one of {sorted(SLOTS)}")
                src = -1
                if slot != SLOT_NONE:
                    src = flat[slot].add(table.file, cmeta["fields"][_FIELD[slot]])
                cols["valid"].append(bits.add(table.file, cmeta["valid"]))
                cols["table"].append(ti)
                cols["slot"].append(slot)
                cols["src"].append(src)
                cols["embed"].append(cmeta["column_id"])
                cols["stype"].append(code[cmeta["stype"]])
                mean, std = scale_of(cmeta.get("stats") or {}) if slot == SLOT_TIMESTAMP else (0, 1)
                cols["ts_mean"].append(mean)
                cols["ts_inv_std"].append(1.0 / std)
                col_name.append(cname)
            ptr.append(len(col_name))
        self.col_ptr = np.array(ptr, dtype=np.int64)
        self.col_name = col_name
        self.col_table = np.array(cols["table"], dtype=np.int64)
        self.col_slot = np.array(cols["slot"], dtype=np.int64)
        self.col_src = np.array(cols["src"], dtype=np.int64)
        self.col_valid = np.array(cols["valid"], dtype=np.int64)
        self.col_embed = np.array(cols["embed"], dtype=np.int32)
        self.col_stype = np.array(cols["stype"], dtype=np.int16)
        self.ts_mean = np.array(cols["ts_mean"], dtype=np.float64)
        self.ts_inv_std = np.array(cols["ts_inv_std"], dtype=np.float64)
        self.n_cols = len(col_name)
        self.flats = {"time": times, "parent": parent, "indptr": indptr, "children": children,
                      "child_time": ctime, "numbers": flat[SLOT_NUMBER],
                      "timestamps": flat[SLOT_TIMESTAMP], "vocab": flat[SLOT_VOCAB], "bits": bits}
        #: Whether the flat arrays are views of ``sampler.bin`` (shared by every process
        #: through the page cache) rather than this process's own copy.
        self.mapped = False
        if build:
            mapped = store.files.get(SAMPLER_FILE)
            for name in SAMPLER_SECTIONS:
                setattr(self, name, self.flats[name].build(mapped, name, store))
            self.mapped = all(self.flats[name].was_mapped for name in SAMPLER_SECTIONS)
            del self.flats
        # each FK's column as a kernel column (-1 if ignored): hiding it hides the edge too
        self.fk_col = np.array([self._column_or_none(fk.child_table, fk.column) for fk in fks],
                               dtype=np.int64)
        self._code = code
        self._tasks: dict[str, TaskView] = {}

    @classmethod
    def from_store(cls, store: Store, registry: Registry | None = None) -> SamplerGraph:
        """The sampler graph of ``store`` (with the default registry), built once while anyone
        holds it: the training and validation samplers of a run share one in-memory copy."""
        if registry is not None:
            return cls(store, registry)
        held = _GRAPHS.get(store)
        graph = held() if held is not None else None
        if graph is None:
            graph = cls(store)
            _GRAPHS[store] = weakref.ref(graph)
        return graph

    @property
    def nbytes(self) -> int:
        """Bytes this graph holds in memory."""
        return sum(a.nbytes for a in (self.time, self.parent, self.indptr, self.children,
                                      self.child_time, self.numbers, self.timestamps, self.vocab,
                                      self.bits))

    def _column_or_none(self, table: str, column: str) -> int:
        try:
            return self.column_index(table, column)
        except KeyError:
            return -1

    def hidden_edges(self, anchor_table: int, hidden: np.ndarray) -> np.ndarray:
        """Per FK: True where its column is a hidden column of ``anchor_table``. The kernel
        leaves out such an edge wherever it leaves out the cell (see the kernel's docstring)."""
        col = self.fk_col
        return (self.fk_child_table == anchor_table) & (col >= 0) & hidden[np.maximum(col, 0)]

    def column_index(self, table: str, column: str) -> int:
        t = self.table_index[table]
        for c in range(self.col_ptr[t], self.col_ptr[t + 1]):
            if self.col_name[c] == column:
                return c
        raise KeyError(f"{table}.{column}")

    def task(self, name: str) -> TaskView:
        if name not in self._tasks and name.endswith(":mask"):
            table, _, column = name[: -len(":mask")].partition(".")
            if table not in self.store.tables or column not in self.store.tables[table].columns:
                raise TributaryError(f"{self.store.path}: no column {name[:-5]!r} to mask")
            self._tasks[name] = TaskView.for_column(self, table, column)
        if name not in self._tasks:
            if name not in self.store.tasks:
                known = ", ".join(sorted(self.store.tasks)) or "none"
                raise TributaryError(f"{self.store.path}: no task {name!r} (tasks: {known})")
            self._tasks[name] = TaskView(self, name)
        return self._tasks[name]

    @cached_property
    def kernel_arrays(self) -> GraphArrays:
        """The arrays the kernel reads, as one structured argument (built once)."""
        return GraphArrays(
            time=self.time, time_off=self.time_off, out_ptr=self.out_ptr, out_fk=self.out_fk,
            in_ptr=self.in_ptr, in_fk=self.in_fk, fk_parent_table=self.fk_parent_table,
            fk_child_table=self.fk_child_table, parent=self.parent, parent_off=self.parent_off,
            indptr=self.indptr, indptr_off=self.indptr_off, children=self.children,
            child_time=self.child_time, children_off=self.children_off, col_ptr=self.col_ptr,
            col_slot=self.col_slot, col_src=self.col_src, col_valid=self.col_valid,
            numbers=self.numbers, timestamps=self.timestamps, bits=self.bits, vocab=self.vocab,
            ts_mean=self.ts_mean, ts_inv_std=self.ts_inv_std, ts_tables=TABLES)


def write_sampler_file(store: Store, write: Callable[..., Any],
                       registry: Registry | None = None) -> None:
    """Write ``sampler.bin`` for ``store`` (opened from its folder, before or after its
    metadata is final) through ``write(name, kind, sections, meta)``, ``sections`` mapping a
    name to ``(dtype, shape, ranges)`` as :meth:`FileWriter.add_copy` takes them: each of the
    sampler's flat arrays (:data:`SAMPLER_SECTIONS`) as one section, the store's sections of
    that kind concatenated in the order the sampler reads them, and in the file's meta the parts
    of each (``{"parts": {name: [[file, section], ...]}}``) so that a reader maps a section only
    if it plans the very same parts (the same installed semantic types). The sampler then maps
    this file instead of copying the store into each process (:class:`SamplerGraph`)."""
    plan = SamplerGraph(store, registry, build=False)
    flats = {name: plan.flats[name] for name in SAMPLER_SECTIONS}
    write(SAMPLER_FILE, "sampler",
          {name: (f.dtype, f.shape, f.ranges()) for name, f in flats.items()},
          {"parts": {name: f.names(store) for name, f in flats.items()}})


class TaskView:
    """One task of a store as the sampler needs it."""

    def __init__(self, graph: SamplerGraph, name: str, task: Any = None) -> None:
        """Task ``name`` of the graph's store, or ``task`` (a
        :class:`~tributary_core.store.StoreTask` of that store's database held elsewhere, e.g.
        a question materialised in memory)."""
        task = task if task is not None else graph.store.tasks[name]
        meta = task.meta
        self.name = name
        self.graph = graph
        self.anchor_table = graph.table_index[meta["anchor_table"]]
        self.anchor_rows = np.asarray(task.anchor_row, dtype=np.int64)
        self.observation_time = np.asarray(task.observation_time, dtype=np.int64)
        self.stype = meta["target_stype"]
        self.stype_code = graph._code[self.stype]
        registry_slot = SLOTS[get_registry().semantic_type(self.stype).batch_slot]
        self.slot = registry_slot
        self.target_valid = np.asarray(task.target_valid, dtype=np.bool_)
        self.target = (np.asarray(task.target(_FIELD[registry_slot]))
                       if registry_slot != SLOT_NONE else None)
        self.target_column_id = int(meta["target_column_id"])
        if meta["target_is_anchor_column"]:
            self.target_col = graph.column_index(meta["anchor_table"], meta["target_column"])
        else:
            self.target_col = graph.n_cols  # a virtual cell on the anchor row
        self.hidden = np.zeros(graph.n_cols + 1, dtype=np.bool_)
        for ref in meta.get("hidden_columns") or ():
            table, column = ref.split(".", 1)
            self.hidden[graph.column_index(table, column)] = True
        self.hidden_fk = graph.hidden_edges(self.anchor_table, self.hidden)
        self.candidates = (np.asarray(task.candidates, dtype=np.int32)
                           if task.candidates is not None else None)
        self.stats = meta.get("stats") or {}
        #: How long after its observation time a label is known (µs; stores from before
        #: horizons: 0, known at the observation time).
        self.horizon_us = int(meta.get("horizon_us") or 0)
        self._examples: dict = {}

    def examples(self, splitter):
        """The labelled examples of this task under ``splitter`` (a hash or temporal split):
        its training split's seeds with valid labels (:mod:`tributary_core.sampler.examples`);
        built once per splitter."""
        from tributary_core.sampler.examples import build_example_index

        if splitter not in self._examples:
            name = self.graph.table_names[self.anchor_table]
            train = splitter.assign(name, self.anchor_rows, self.observation_time) == 0
            self._examples[splitter] = build_example_index(self, train)
        return self._examples[splitter]

    def for_entities(self, anchor_rows: np.ndarray, observation_time: np.ndarray) -> TaskView:
        """This task asked about other seeds: rows ``anchor_rows`` of its anchor table, each
        observed at ``observation_time`` (epoch µs; the task's "no cut-off" is int64 max), with
        no labels. The seeds the task's SQL never produced (prediction for any entity at any
        time): their contexts see nothing after their time, and their labelled examples are
        this task's own seeds (:meth:`examples` of the result: every seed with a valid label,
        whatever its split, each shown only once its label is known)."""
        from tributary_core.sampler.examples import build_example_index

        view = object.__new__(type(self))
        view.__dict__.update({k: v for k, v in self.__dict__.items()
                              if k not in ("col_embed", "col_stype", "kernel_arrays",
                                           "_every_label")})
        view.anchor_rows = np.asarray(anchor_rows, dtype=np.int64)
        view.observation_time = np.broadcast_to(
            np.asarray(observation_time, dtype=np.int64), view.anchor_rows.shape).copy()
        n = len(view.anchor_rows)
        view.target_valid = np.zeros(n, dtype=np.bool_)
        if self.target is not None:
            view.target = np.zeros((n, *self.target.shape[1:]), dtype=self.target.dtype)
        if "_every_label" not in self.__dict__:
            self._every_label = build_example_index(self, np.ones(len(self), dtype=np.bool_))
        view._examples = _AnySplitter(self._every_label)
        return view

    @classmethod
    def for_rows(cls, graph: SamplerGraph, table: str) -> TaskView:
        """Every row of ``table`` as a seed, seen at its own time (untimed: everything visible),
        with no target: contexts for benchmarks and self-supervised pre-training."""
        if table not in graph.table_index:
            raise TributaryError(f"{graph.store.path}: no table {table!r}")
        view = object.__new__(cls)
        t = graph.store.tables[table]
        view.name = f"{table}:rows"
        view.graph = graph
        view.anchor_table = graph.table_index[table]
        view.anchor_rows = np.arange(t.rows, dtype=np.int64)
        no_cutoff = np.iinfo(np.int64).max
        if t.time is None:
            view.observation_time = np.full(t.rows, no_cutoff, dtype=np.int64)
        else:
            time = np.asarray(t.time, dtype=np.int64)
            view.observation_time = np.where(time == np.iinfo(np.int64).min, no_cutoff, time)
        view.stype = "ignored"
        view.stype_code = -1
        view.slot = SLOT_NONE
        view.target_valid = np.zeros(t.rows, dtype=np.bool_)
        view.target = None
        view.target_column_id = -1
        view.target_col = -1
        view.hidden = np.zeros(graph.n_cols + 1, dtype=np.bool_)
        view.hidden_fk = np.zeros(len(graph.fk_col), dtype=np.bool_)
        view.candidates = None
        view.stats = {}
        view.horizon_us = 0
        view._examples = {}
        return view

    @classmethod
    def for_column(cls, graph: SamplerGraph, table: str, column: str) -> TaskView:
        """A self-supervised cell-masking task: predict ``table.column`` on each row from the
        rest of its context, the row observed at its own time. Named ``table.column:mask``."""
        registry = get_registry()
        meta = graph.store.tables[table].columns[column]
        stype = registry.semantic_type(meta["stype"])
        if not stype.target_losses:
            raise TributaryError(f"{table}.{column}: a {stype.name} column cannot be a target")
        view = cls.for_rows(graph, table)
        view.name = f"{table}.{column}:mask"
        view.stype = stype.name
        view.stype_code = graph._code[stype.name]
        view.slot = SLOTS[stype.batch_slot]
        t = graph.store.tables[table]
        view.target_valid = np.asarray(t.valid(column), dtype=np.bool_)
        view.target = np.asarray(t.field(column, _FIELD[view.slot])) if view.slot != SLOT_NONE else None
        view.target_column_id = int(meta["column_id"])
        view.target_col = graph.column_index(table, column)
        view.stats = meta.get("stats") or {}
        if view.slot == SLOT_VOCAB:
            view.candidates = np.unique(view.target[view.target_valid]).astype(np.int32)
        return view

    @classmethod
    def masking_tasks(cls, graph: SamplerGraph) -> list[TaskView]:
        """One cell-masking task per column that can be a target (not ignored, not an
        identifier, not text), for pre-training without writing SQL."""
        registry = get_registry()
        out = []
        for table in graph.table_names:
            for column, meta in graph.store.tables[table].columns.items():
                if registry.semantic_type(meta["stype"]).target_losses:
                    out.append(graph.task(f"{table}.{column}:mask"))
        return out

    def __len__(self) -> int:
        return len(self.anchor_rows)

    @cached_property
    def col_embed(self) -> np.ndarray:
        """Column-embedding id of each kernel column, the virtual target cell last."""
        return np.append(self.graph.col_embed, np.int32(self.target_column_id))

    @cached_property
    def col_stype(self) -> np.ndarray:
        return np.append(self.graph.col_stype, np.int16(self.stype_code))

    @cached_property
    def kernel_arrays(self) -> TaskArrays:
        """The task as one structured kernel argument (built on first use, once)."""
        return TaskArrays(anchor_table=int(self.anchor_table), target_col=int(self.target_col),
                          hidden=self.hidden, hidden_fk=self.hidden_fk, col_embed=self.col_embed,
                          col_stype=self.col_stype, slot=int(self.slot))


class _AnySplitter(dict):
    """The examples of a view made by :meth:`TaskView.for_entities`: the same index whatever
    splitter asks (its seeds have no split; their examples are all of the task's labels)."""

    def __init__(self, index: Any) -> None:
        super().__init__()
        self.index = index

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: object) -> Any:
        return self.index


def _csr(owner: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(owner, kind="stable").astype(np.int64)
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.add.at(ptr, owner + 1, 1)
    return np.cumsum(ptr), order
