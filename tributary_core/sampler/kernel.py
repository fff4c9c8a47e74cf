"""The context sampler's Numba kernel: temporal BFS around seed rows, written straight into
batch arrays.

One context (DESIGN §5):

1. The frontier starts with the seed (anchor) row; it is visited first.
2. Pop the next row: rows reached through a child -> parent edge before rows reached through a
   parent -> child edge; then fewest hops from the seed; then a random draw (then push order,
   so keys never tie).
3. Visit it: write its cells; push each parent it references (unless that parent's time is
   after the observation time); count the rows referencing it that are at or before the
   observation time (binary search in each FK's time-sorted children) and, if any, push one
   *children entry* for it. Popping a children entry draws one of those rows uniformly without
   replacement, visits it (if not seen yet) and pushes the entry back until ``width`` have been
   drawn. So at most ``width`` children per row, and only the children a context actually
   reaches are ever touched: with ``width=16`` this halves the kernel's time against pushing
   all ``width`` children at once.
4. Stop at ``L`` cells or an empty frontier.

The seed row's target cell comes first (position 0) with its value left out. Cells of a task's
hidden columns are left out on rows of the anchor table whose time is not before the
observation time (or unknown): the anchor row always, others "at or after". A hidden
foreign-key column also hides its *edge* on exactly those rows, in both directions: such a row
does not push the parent it references through that key, a parent does not draw it as a child
through that key (children are drawn only among those at a known time before the observation
time, and never the anchor), and the adjacency does not list that parent. So the parent row is
in a context only if another path reaches it, and even then nothing says the hidden key points
at it. Randomness is a splitmix64 stream per context, seeded from the
caller, so a context depends on its seed alone, never on the thread that built it.

Rows are addressed as ``(table << 40) | row`` in the frontier and the seen-set.

The kernel takes four structured arguments, ``typing.NamedTuple`` classes of arrays that Numba
passes as (heterogeneous) tuples: :class:`GraphArrays` (the store, built once per ``SamplerGraph``),
:class:`TaskArrays` (one task, built once per ``TaskView``), :class:`ContextSeeds` (the batch's
anchors, observation times and random streams) and :class:`BatchArrays` (the output). Inside a
``prange`` loop they are only handed on to the non-inlined :func:`_context`: Numba's parallel
lowering can lose writes made through a named tuple's array directly in a ``prange`` body
(numba#7135); those made in a function the body calls are kept.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
from numba import prange

from tributary_core.semantic_type import TIMESTAMP_WIDTH
from tributary_core.timefeatures import write_features

NO_TIME = np.iinfo(np.int64).min
#: Features per timestamp cell; one home, :data:`tributary_core.semantic_type.TIMESTAMP_WIDTH`.
#: The kernel reads the width off its arrays, so a cached compilation never holds a stale one.
N_TS = TIMESTAMP_WIDTH
SLOT_NONE, SLOT_NUMBER, SLOT_TIMESTAMP, SLOT_BOOLEAN, SLOT_VOCAB = 0, 1, 2, 3, 4

_ROW_BITS = np.int64(40)
_ROW_MASK = np.int64((1 << 40) - 1)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@numba.njit(cache=True, inline="always")
def splitmix64(state: np.ndarray) -> np.uint64:
    """Advance ``state`` (uint64[1]) and return the next 64 random bits."""
    state[0] = state[0] + _GOLDEN
    z = state[0]
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True, inline="always")
def _below(state: np.ndarray, n: np.int64) -> np.int64:
    """A random integer in [0, n)."""
    return np.int64(splitmix64(state) % np.uint64(n))


@numba.njit(cache=True, inline="always")
def _key(cls: np.int64, hops: np.int64, rand: np.uint64, counter: np.int64) -> np.int64:
    h = min(hops, np.int64(1023))
    r = np.int64(rand >> np.uint64(32))
    return (cls << np.int64(62)) | (h << np.int64(52)) | (r << np.int64(20)) | (counter & np.int64(0xFFFFF))


@numba.njit(cache=True, inline="always")
def _heap_push(keys, vals, size, key, val):
    i = size
    keys[i] = key
    vals[i] = val
    while i > 0:
        parent = (i - 1) >> 1
        if keys[parent] <= keys[i]:
            break
        keys[parent], keys[i] = keys[i], keys[parent]
        vals[parent], vals[i] = vals[i], vals[parent]
        i = parent
    return size + 1


@numba.njit(cache=True, inline="always")
def _heap_pop(keys, vals, size):
    """Remove the smallest key; returns (key, val, new size)."""
    key, val = keys[0], vals[0]
    size -= 1
    keys[0], vals[0] = keys[size], vals[size]
    i = 0
    while True:
        left = 2 * i + 1
        if left >= size:
            break
        small = left
        if left + 1 < size and keys[left + 1] < keys[left]:
            small = left + 1
        if keys[i] <= keys[small]:
            break
        keys[i], keys[small] = keys[small], keys[i]
        vals[i], vals[small] = vals[small], vals[i]
        i = small
    return key, val, size


@numba.njit(cache=True, inline="always")
def _slot_of(set_keys, set_stamp, stamp, mask, node):
    """The seen-set slot of ``node``: where it is, or the empty slot where it would go."""
    h = np.uint64(node + 1) * _GOLDEN
    i = np.int64(h >> np.uint64(33)) & mask
    while set_stamp[i] == stamp and set_keys[i] != node:
        i = (i + 1) & mask
    return i


@numba.njit(cache=True, inline="always")
def _upper_bound(arr, lo, hi, value):
    """First index in ``arr[lo:hi]`` (sorted) whose value is > ``value``."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if arr[mid] <= value:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True, inline="always")
def _lower_bound(arr, lo, hi, value):
    """First index in ``arr[lo:hi]`` (sorted) whose value is >= ``value``."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if arr[mid] < value:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True, inline="always")
def _row_time(time, time_off, t, r):
    if time_off[t] < 0:
        return NO_TIME
    return time[time_off[t] + r]


@numba.njit(cache=True, inline="always")
def _bit(bits, offset, r):
    return (bits[offset + (r >> 3)] >> (r & 7)) & 1 == 1


@numba.njit(cache=True, inline="always")
def _claim(set_keys, set_stamp, set_local, stamp, mask, node):
    """Add ``node`` to the seen-set; False if it was there already."""
    slot = _slot_of(set_keys, set_stamp, stamp, mask, node)
    if set_stamp[slot] == stamp:
        return False
    set_keys[slot] = node
    set_stamp[slot] = stamp
    set_local[slot] = -1
    return True


class GraphArrays(NamedTuple):
    """A store as the kernel reads it: each kind of array concatenated once, with per-table,
    per-FK or per-column offsets (``SamplerGraph.kernel_arrays``). T tables, F foreign keys,
    C kernel columns (every non-ignored column, in table order)."""

    #: int64: the row times of every timed table, concatenated (NO_TIME: unknown).
    time: np.ndarray
    #: int64 [T]: where each table's times start in ``time``; -1 for an untimed table.
    time_off: np.ndarray
    #: int64 [T + 1], [F]: the FKs of each child table (CSR: ``out_fk[out_ptr[t]:out_ptr[t + 1]]``).
    out_ptr: np.ndarray
    out_fk: np.ndarray
    #: int64 [T + 1], [F]: the FKs that reference each parent table (CSR).
    in_ptr: np.ndarray
    in_fk: np.ndarray
    #: int64 [F]: each FK's parent and child table.
    fk_parent_table: np.ndarray
    fk_child_table: np.ndarray
    #: int32: each FK's parent row per child row (-1 none), at ``parent_off[f]``.
    parent: np.ndarray
    parent_off: np.ndarray
    #: int64: each FK's children CSR over parent rows, at ``indptr_off[f]``; offsets into
    #: ``children``/``child_time`` relative to ``children_off[f]``.
    indptr: np.ndarray
    indptr_off: np.ndarray
    #: int32 / int64: each parent row's children, sorted by time, and their times.
    children: np.ndarray
    child_time: np.ndarray
    children_off: np.ndarray
    #: int64 [T + 1]: each table's kernel columns ``col_ptr[t]:col_ptr[t + 1]``.
    col_ptr: np.ndarray
    #: int64 [C]: each column's batch slot (SLOT_*), its values' offset in the slot's array
    #: (-1 for SLOT_NONE) and its validity bitmap's offset (in bytes) in ``bits``.
    col_slot: np.ndarray
    col_src: np.ndarray
    col_valid: np.ndarray
    #: The values by slot: float32 numbers, int64 epoch µs timestamps, packed bits (validity
    #: and booleans), uint32 vocabulary ids.
    numbers: np.ndarray
    timestamps: np.ndarray
    bits: np.ndarray
    vocab: np.ndarray
    #: float64 [C]: each timestamp column's epoch mean and 1 / std (0 and 1 for the others),
    #: and the sin/cos tables (:data:`tributary_core.timefeatures.TABLES`): the kernel writes a
    #: timestamp cell's N_TS features from its stored µs.
    ts_mean: np.ndarray
    ts_inv_std: np.ndarray
    ts_tables: np.ndarray


class TaskArrays(NamedTuple):
    """One task as the kernel reads it (``TaskView.kernel_arrays``)."""

    #: The anchor table's index.
    anchor_table: int
    #: The kernel column of the target on the anchor row, C for a derived task's virtual cell,
    #: or -1 for none.
    target_col: int
    #: bool [C + 1]: the task's hidden columns.
    hidden: np.ndarray
    #: bool [F]: the FKs whose (anchor-table) column is hidden: their edges are hidden too.
    hidden_fk: np.ndarray
    #: int32 [C + 1], int16 [C + 1]: each kernel column's column-embedding id and stype code,
    #: the virtual target cell last.
    col_embed: np.ndarray
    col_stype: np.ndarray
    #: The target's batch slot (SLOT_*): where a labelled example's label is written.
    slot: int


class ContextSeeds(NamedTuple):
    """The contexts of one batch: context ``b`` is built around ``anchor_rows[b]`` at
    ``obs_times[b]`` with random stream ``streams[b]`` (all [B])."""

    anchor_rows: np.ndarray
    obs_times: np.ndarray
    streams: np.ndarray


class BatchArrays(NamedTuple):
    """The kernel's output for B contexts of L cells, named as :class:`Batch`'s fields. Make it
    with :meth:`allocate`: zeroed, with -1 in the index fields."""

    cell_col: np.ndarray     # [B, L] int32: the kernel column of each cell
    column_id: np.ndarray    # [B, L] int32
    stype: np.ndarray        # [B, L] int16
    row: np.ndarray          # [B, L] int32: the cell's row within its context
    number: np.ndarray       # [B, L] float32
    timestamp: np.ndarray    # [B, L, N_TS] float32
    boolean: np.ndarray      # [B, L] bool
    vocab: np.ndarray        # [B, L] int64
    is_null: np.ndarray      # [B, L] bool
    is_target: np.ndarray    # [B, L] bool
    is_label: np.ndarray     # [B, L] bool: a labelled example's label cell
    n_cells: np.ndarray      # [B] int32
    row_table: np.ndarray    # [B, L] int16
    row_index: np.ndarray    # [B, L] int64
    row_hops: np.ndarray     # [B, L] int16
    row_parents: np.ndarray  # [B, L, P] int32
    row_is_example: np.ndarray  # [B, L] bool: a row added as a labelled example
    n_rows: np.ndarray       # [B] int32

    @classmethod
    def allocate(cls, B: int, L: int, P: int) -> BatchArrays:
        """Output arrays for B contexts of L cells whose rows have at most P parents each."""
        return cls(
            cell_col=np.full((B, L), -1, dtype=np.int32),
            column_id=np.full((B, L), -1, dtype=np.int32),
            stype=np.full((B, L), -1, dtype=np.int16),
            row=np.zeros((B, L), dtype=np.int32),
            number=np.zeros((B, L), dtype=np.float32),
            timestamp=np.zeros((B, L, N_TS), dtype=np.float32),
            boolean=np.zeros((B, L), dtype=np.bool_),
            vocab=np.zeros((B, L), dtype=np.int64),
            is_null=np.zeros((B, L), dtype=np.bool_),
            is_target=np.zeros((B, L), dtype=np.bool_),
            is_label=np.zeros((B, L), dtype=np.bool_),
            n_cells=np.zeros(B, dtype=np.int32),
            row_table=np.full((B, L), -1, dtype=np.int16),
            row_index=np.full((B, L), -1, dtype=np.int64),
            row_hops=np.zeros((B, L), dtype=np.int16),
            row_parents=np.full((B, L, P), -1, dtype=np.int32),
            row_is_example=np.zeros((B, L), dtype=np.bool_),
            n_rows=np.zeros(B, dtype=np.int32),
        )


class _Scratch(NamedTuple):
    """One thread's working memory, reused from context to context: the frontier (a binary
    heap), the seen-set (open addressing; a slot is live when its stamp is the context's) and,
    per visited row, its children entry (each FK's first candidate and count, how many to
    draw, how many drawn and which); and for the labelled examples, the rows chosen (with their
    seeds) and each of the anchor row's keys' next sibling to try."""

    heap_keys: np.ndarray
    heap_vals: np.ndarray
    set_keys: np.ndarray
    set_stamp: np.ndarray
    set_local: np.ndarray
    g_lo: np.ndarray
    g_cnt: np.ndarray
    g_limit: np.ndarray
    g_taken: np.ndarray
    g_chosen: np.ndarray
    ex_row: np.ndarray
    ex_seed: np.ndarray
    sib_lo: np.ndarray
    sib_next: np.ndarray


@numba.njit(cache=True, inline="always")
def _label_cell(b, pos, local, e, task, ex, out):
    """Cell ``pos`` of context ``b``: the label of example seed ``e`` on context row ``local``,
    in the task's target column."""
    tc = task.target_col
    out.cell_col[b, pos] = tc
    out.column_id[b, pos] = task.col_embed[tc]
    out.stype[b, pos] = task.col_stype[tc]
    out.row[b, pos] = local
    out.is_label[b, pos] = True
    if task.slot == SLOT_NUMBER:
        out.number[b, pos] = ex.number[e]
    elif task.slot == SLOT_TIMESTAMP:
        for j in range(ex.timestamp.shape[1]):
            out.timestamp[b, pos, j] = ex.timestamp[e, j]
    elif task.slot == SLOT_BOOLEAN:
        out.boolean[b, pos] = ex.boolean[e]
    elif task.slot == SLOT_VOCAB:
        out.vocab[b, pos] = ex.vocab[e]


@numba.njit(cache=True, inline="always")
def _latest_known(ex, r, t):
    """The seed of anchor row ``r`` whose label is the latest known at ``t``; -1 if none."""
    lo = ex.row_ptr[r]
    hi = ex.row_ptr[r + 1]
    j = _upper_bound(ex.by_row_known, lo, hi, t) - 1
    if j < lo:
        return np.int64(-1)
    return ex.by_row[j]


_EXAMPLE_STREAM = np.uint64(0xA0761D6478BD642F)
#: Siblings probed per foreign key of the anchor row, latest first.
_SIBLING_PROBES = 64


@numba.njit(cache=True)
def _examples(b, g, task, ex, anchor_row, obs, seed, L, s, stamp, mask, pos, nr, out):
    """Fill context ``b`` from cell ``pos`` on with labelled examples, in three tiers:

    1. rows of the anchor table the walk reached get their latest known label as one more
       cell (for a target that is a column of the anchor table, only where that column is
       hidden on the row, since it shows otherwise);
    2. siblings: the other rows that share a parent with the anchor row through one of its
       (not hidden) foreign keys, latest first, the keys taking turns (the latest sibling of
       each key, then the second latest of each...), at most ``_SIBLING_PROBES`` per key;
    3. rows drawn uniformly among the seeds whose label is known at ``obs`` (never a row
       from after ``obs``, whatever its seed's observation time).

    Each row gives at most one example, its latest known label; the anchor row never does.
    Tier 3 draws from a random stream of its own, so adding examples leaves the walk as it was.
    Returns the new (cell count, row count)."""
    max_rows = out.row_table.shape[1]
    anchor_table = np.int64(task.anchor_table)
    tc = task.target_col
    real = tc < g.col_slot.shape[0]
    # -- 1. rows the walk reached -------------------------------------------------------------
    for i in range(1, nr):
        if pos >= L:
            return pos, nr
        if out.row_table[b, i] != anchor_table:
            continue
        r = out.row_index[b, i]
        if real:
            rt = _row_time(g.time, g.time_off, anchor_table, r)
            if not ((rt == NO_TIME or rt >= obs) and task.hidden[tc]):
                continue  # its own cell of the target column shows already
        e = _latest_known(ex, r, obs)
        if e >= 0:
            _label_cell(b, pos, i, e, task, ex, out)
            pos += 1
    # -- 2 and 3 choose rows first (claimed in the seen-set at once), written at the end -------
    first_pos = pos
    first_row = nr
    n_ex = 0
    row_cells = np.int64(1)  # an example row's cells: its label, then its shown columns
    for c in range(g.col_ptr[anchor_table], g.col_ptr[anchor_table + 1]):
        if c != tc and not task.hidden[c]:
            row_cells += 1
    # -- 2. siblings through the anchor row's parents, the keys taking turns -------------------
    k0 = g.out_ptr[anchor_table]
    n_keys = g.out_ptr[anchor_table + 1] - k0
    sib_lo = s.sib_lo
    sib_next = s.sib_next  # the next sibling to try (< sib_lo: none)
    for k in range(n_keys):
        sib_lo[k] = 0
        sib_next[k] = -1
        f = g.out_fk[k0 + k]
        if task.hidden_fk[f]:
            continue
        p = np.int64(g.parent[g.parent_off[f] + anchor_row])
        if p < 0:
            continue
        ptime = _row_time(g.time, g.time_off, g.fk_parent_table[f], p)
        if ptime != NO_TIME and ptime > obs:
            continue
        base = g.children_off[f]
        lo = base + g.indptr[g.indptr_off[f] + p]
        hi = base + g.indptr[g.indptr_off[f] + p + 1]
        sib_lo[k] = lo
        sib_next[k] = _upper_bound(g.child_time, lo, hi, obs) - 1
    for _probe in range(_SIBLING_PROBES):
        live = False
        for k in range(n_keys):
            j = sib_next[k]
            if j < sib_lo[k]:
                continue
            live = True
            if pos >= L or nr >= max_rows:
                _example_rows(b, g, task, ex, L, first_pos, first_row, n_ex, s, out)
                return pos, nr
            sib_next[k] = j - 1
            r = np.int64(g.children[j])
            if r == anchor_row:
                continue
            slot = _slot_of(s.set_keys, s.set_stamp, stamp, mask, (anchor_table << _ROW_BITS) | r)
            if s.set_stamp[slot] == stamp and s.set_local[slot] >= 0:
                continue  # in the context already
            e = _latest_known(ex, r, obs)
            if e >= 0:
                s.set_keys[slot] = (anchor_table << _ROW_BITS) | r
                s.set_stamp[slot] = stamp
                s.set_local[slot] = nr
                s.ex_row[n_ex] = r
                s.ex_seed[n_ex] = e
                n_ex += 1
                pos = min(pos + row_cells, L)
                nr += 1
        if not live:
            break
    # -- 3. uniformly among the seeds known at obs ----------------------------------------------
    n_known = _upper_bound(ex.known, 0, ex.known.shape[0], obs)
    if n_known == 0:
        _example_rows(b, g, task, ex, L, first_pos, first_row, n_ex, s, out)
        return pos, nr
    state = np.empty(1, dtype=np.uint64)
    state[0] = seed ^ _EXAMPLE_STREAM
    tries = 2 * (L - pos) + 8
    while tries > 0 and pos < L and nr < max_rows:
        tries -= 1
        r = ex.row[_below(state, n_known)]
        if r == anchor_row:
            continue
        rt = _row_time(g.time, g.time_off, anchor_table, r)
        if rt != NO_TIME and rt > obs:
            continue  # a row from after the observation time: never in the context
        slot = _slot_of(s.set_keys, s.set_stamp, stamp, mask, (anchor_table << _ROW_BITS) | r)
        if s.set_stamp[slot] == stamp and s.set_local[slot] >= 0:
            continue
        s.set_keys[slot] = (anchor_table << _ROW_BITS) | r
        s.set_stamp[slot] = stamp
        s.set_local[slot] = nr
        s.ex_row[n_ex] = r
        s.ex_seed[n_ex] = _latest_known(ex, r, obs)
        n_ex += 1
        pos = min(pos + row_cells, L)
        nr += 1
    _example_rows(b, g, task, ex, L, first_pos, first_row, n_ex, s, out)
    return pos, nr


@numba.njit(cache=True)
def _example_rows(b, g, task, ex, L, pos, nr, n_ex, s, out):
    """Write the ``n_ex`` example rows the tiers chose (``s.ex_row``, ``s.ex_seed``) as context
    rows ``nr``... from cell ``pos`` on: each its label cell first, then its cells but the
    task's hidden columns and the target column, up to ``L``. The cells are written out here,
    as in the walk, not through a shared helper: a helper inlined in Numba's IR made the walk
    about 30% slower, and one compiled on its own was slower still (docs/benchmarks.md)."""
    t = np.int64(task.anchor_table)
    tc = task.target_col
    for i in range(n_ex):
        r = s.ex_row[i]
        local = nr + i
        out.row_table[b, local] = t
        out.row_index[b, local] = r
        out.row_hops[b, local] = -1
        out.row_is_example[b, local] = True
        _label_cell(b, pos, local, s.ex_seed[i], task, ex, out)
        pos += 1
        for c in range(g.col_ptr[t], g.col_ptr[t + 1]):
            if pos >= L:
                break
            if c == tc or task.hidden[c]:
                continue
            out.cell_col[b, pos] = c
            out.column_id[b, pos] = task.col_embed[c]
            out.stype[b, pos] = task.col_stype[c]
            out.row[b, pos] = local
            ok = _bit(g.bits, g.col_valid[c], r)
            out.is_null[b, pos] = not ok
            if ok:
                slot = g.col_slot[c]
                if slot == SLOT_NUMBER:
                    out.number[b, pos] = g.numbers[g.col_src[c] + r]
                elif slot == SLOT_TIMESTAMP:
                    write_features(g.timestamps[g.col_src[c] + r], g.ts_mean[c], g.ts_inv_std[c],
                                   g.ts_tables, out.timestamp, b, pos)
                elif slot == SLOT_BOOLEAN:
                    out.boolean[b, pos] = _bit(g.bits, g.col_src[c], r)
                elif slot == SLOT_VOCAB:
                    out.vocab[b, pos] = g.vocab[g.col_src[c] + r]
            pos += 1


@numba.njit(cache=True)
def _context(b, g, task, ex, anchor_row, obs, seed, L, walk_cells, width, s, stamp, out):
    """Context ``b`` of ``out``: around ``anchor_row`` at ``obs``, random stream ``seed``, with
    scratch ``s`` whose live seen-set slots carry ``stamp``. The walk fills at most
    ``walk_cells`` cells; labelled examples from ``ex`` fill the rest, up to ``L``."""
    state = np.empty(1, dtype=np.uint64)
    state[0] = seed
    mask = np.int64(s.set_keys.shape[0] - 1)
    max_rows = out.row_table.shape[1]
    n_par_slots = out.row_parents.shape[2]
    anchor_table = task.anchor_table
    target_col = task.target_col
    counter = np.int64(1)
    node = (np.int64(anchor_table) << _ROW_BITS) | np.int64(anchor_row)
    _claim(s.set_keys, s.set_stamp, s.set_local, stamp, mask, node)
    size = _heap_push(s.heap_keys, s.heap_vals, 0, np.int64(0), node)
    pos = 0
    nr = 0
    while size > 0 and pos < walk_cells and nr < max_rows:
        key, val, size = _heap_pop(s.heap_keys, s.heap_vals, size)
        hops = (key >> np.int64(52)) & np.int64(1023)
        if val < 0:
            # The children of visited row gr, drawn one at a time without replacement among
            # the first g_cnt ones (at or before the observation time) of each of its FKs.
            gr = -val - 1
            total = np.int64(0)
            gt = np.int64(out.row_table[b, gr])
            n_in = g.in_ptr[gt + 1] - g.in_ptr[gt]
            for k in range(n_in):
                total += s.g_cnt[gr, k]
            while True:
                idx = _below(state, total)
                fresh = True
                for q in range(s.g_taken[gr]):
                    if s.g_chosen[gr, q] == idx:
                        fresh = False
                        break
                if fresh:
                    break
            s.g_chosen[gr, s.g_taken[gr]] = idx
            s.g_taken[gr] += 1
            if s.g_taken[gr] < s.g_limit[gr]:
                size = _heap_push(s.heap_keys, s.heap_vals, size,
                                  _key(np.int64(1), hops, splitmix64(state), counter), val)
                counter += 1
            node = np.int64(-1)
            for k in range(n_in):
                if idx < s.g_cnt[gr, k]:
                    f = g.in_fk[g.in_ptr[gt] + k]
                    node = ((g.fk_child_table[f] << _ROW_BITS)
                            | np.int64(g.children[s.g_lo[gr, k] + idx]))
                    break
                idx -= s.g_cnt[gr, k]
            if not _claim(s.set_keys, s.set_stamp, s.set_local, stamp, mask, node):
                continue
        else:
            node = val
        t = np.int64(node >> _ROW_BITS)
        r = node & _ROW_MASK
        local = nr
        nr += 1
        s.set_local[_slot_of(s.set_keys, s.set_stamp, stamp, mask, node)] = local
        out.row_table[b, local] = t
        out.row_index[b, local] = r
        out.row_hops[b, local] = hops
        rt = _row_time(g.time, g.time_off, t, r)
        is_anchor = local == 0
        # -- cells ---------------------------------------------------------------------------
        if is_anchor and target_col >= 0:
            out.cell_col[b, pos] = target_col
            out.column_id[b, pos] = task.col_embed[target_col]
            out.stype[b, pos] = task.col_stype[target_col]
            out.row[b, pos] = local
            out.is_target[b, pos] = True
            pos += 1
        hide = t == anchor_table and (is_anchor or rt == NO_TIME or rt >= obs)
        for c in range(g.col_ptr[t], g.col_ptr[t + 1]):
            if pos >= walk_cells:
                break
            if (c == target_col and is_anchor) or (hide and task.hidden[c]):
                continue
            # written out here (and again in _example_rows), not through a shared helper: one
            # inlined in Numba's IR made the walk about 30% slower (docs/benchmarks.md)
            out.cell_col[b, pos] = c
            out.column_id[b, pos] = task.col_embed[c]
            out.stype[b, pos] = task.col_stype[c]
            out.row[b, pos] = local
            ok = _bit(g.bits, g.col_valid[c], r)
            out.is_null[b, pos] = not ok
            if ok:
                slot = g.col_slot[c]
                if slot == SLOT_NUMBER:
                    out.number[b, pos] = g.numbers[g.col_src[c] + r]
                elif slot == SLOT_TIMESTAMP:
                    write_features(g.timestamps[g.col_src[c] + r], g.ts_mean[c], g.ts_inv_std[c],
                                   g.ts_tables, out.timestamp, b, pos)
                elif slot == SLOT_BOOLEAN:
                    out.boolean[b, pos] = _bit(g.bits, g.col_src[c], r)
                elif slot == SLOT_VOCAB:
                    out.vocab[b, pos] = g.vocab[g.col_src[c] + r]
            pos += 1
        # -- parents, unless after the observation time ----------------------------------------
        for k in range(g.out_ptr[t], g.out_ptr[t + 1]):
            f = g.out_fk[k]
            if hide and task.hidden_fk[f]:
                continue  # a hidden foreign-key cell: its edge is hidden too
            p = np.int64(g.parent[g.parent_off[f] + r])
            if p < 0:
                continue
            pt = g.fk_parent_table[f]
            ptime = _row_time(g.time, g.time_off, pt, p)
            if ptime != NO_TIME and ptime > obs:
                continue
            pnode = (pt << _ROW_BITS) | p
            if _claim(s.set_keys, s.set_stamp, s.set_local, stamp, mask, pnode):
                size = _heap_push(s.heap_keys, s.heap_vals, size,
                                  _key(np.int64(0), hops + 1, splitmix64(state), counter), pnode)
                counter += 1
        # -- children: one frontier entry that yields up to `width` of them, lazily ------------
        total = np.int64(0)
        n_pre = np.int64(0)
        for k in range(g.in_ptr[t + 1] - g.in_ptr[t]):
            f = g.in_fk[g.in_ptr[t] + k]
            base = g.children_off[f]
            lo = base + g.indptr[g.indptr_off[f] + r]
            hi = base + g.indptr[g.indptr_off[f] + r + 1]
            if task.hidden_fk[f]:
                # only children whose (hidden) key cell shows: at a known time before obs
                lo = _upper_bound(g.child_time, lo, hi, NO_TIME)
                end = _lower_bound(g.child_time, lo, hi, obs)
                if g.parent[g.parent_off[f] + anchor_row] == r:
                    # nor the anchor (its key cell never shows): marked as drawn already
                    at = _row_time(g.time, g.time_off, anchor_table, anchor_row)
                    j = _lower_bound(g.child_time, lo, end, at)
                    while j < end and g.child_time[j] == at:
                        if g.children[j] == anchor_row:
                            s.g_chosen[local, n_pre] = total + j - lo
                            n_pre += 1
                            break
                        j += 1
            else:
                end = _upper_bound(g.child_time, lo, hi, obs)
            s.g_lo[local, k] = lo
            s.g_cnt[local, k] = end - lo
            total += s.g_cnt[local, k]
        s.g_taken[local] = n_pre
        s.g_limit[local] = min(total - n_pre, np.int64(width)) + n_pre
        if s.g_limit[local] > n_pre:
            size = _heap_push(s.heap_keys, s.heap_vals, size,
                              _key(np.int64(1), hops + 1, splitmix64(state), counter), -(local + 1))
            counter += 1
    if ex.order.shape[0] > 0 and pos < L and nr < max_rows:
        pos, nr = _examples(b, g, task, ex, anchor_row, obs, seed, L, s, stamp, mask, pos, nr, out)
    out.n_cells[b] = pos
    out.n_rows[b] = nr
    # -- the FK adjacency among the context's rows: each row's parents that made it in -------
    for i in range(nr):
        t = np.int64(out.row_table[b, i])
        r = out.row_index[b, i]
        hide = False
        if t == anchor_table:
            rt = _row_time(g.time, g.time_off, t, r)
            hide = i == 0 or out.row_is_example[b, i] or rt == NO_TIME or rt >= obs
        m = 0
        for k in range(g.out_ptr[t], g.out_ptr[t + 1]):
            f = g.out_fk[k]
            if hide and task.hidden_fk[f]:
                continue
            p = np.int64(g.parent[g.parent_off[f] + r])
            if p < 0 or m >= n_par_slots:
                continue
            pnode = (g.fk_parent_table[f] << _ROW_BITS) | p
            slot = _slot_of(s.set_keys, s.set_stamp, stamp, mask, pnode)
            if s.set_stamp[slot] == stamp and s.set_local[slot] >= 0:
                out.row_parents[b, i, m] = s.set_local[slot]
                m += 1


@numba.njit(cache=True, parallel=True, nogil=True)
def sample_contexts(graph, task, examples, contexts, L, walk_cells, width, n_threads, out):
    """Fill ``out`` (a :class:`BatchArrays` from :meth:`BatchArrays.allocate`): context ``b``
    of ``contexts`` (:class:`ContextSeeds`) for ``task`` (:class:`TaskArrays`) on ``graph``
    (:class:`GraphArrays`), at most ``L`` cells and ``width`` children per row. The walk
    stops at ``walk_cells`` cells; labelled examples of ``examples``
    (:class:`~tributary_core.sampler.examples.ExampleIndex`, empty for none) fill the rest.

    ``n_threads`` chunks share the work; the result does not depend on it.
    """
    n = contexts.anchor_rows.shape[0]
    max_rows = out.row_table.shape[1]
    max_out = 0
    for t in range(graph.out_ptr.shape[0] - 1):
        max_out = max(max_out, graph.out_ptr[t + 1] - graph.out_ptr[t])
    max_in = 1
    for t in range(graph.in_ptr.shape[0] - 1):
        max_in = max(max_in, graph.in_ptr[t + 1] - graph.in_ptr[t])
    cap = max_rows * (max_out + 1) + 2
    hsize = 1
    while hsize < 2 * (cap + max_rows):
        hsize *= 2
    chunks = max(1, min(n_threads, n))
    for ch in prange(chunks):
        scratch = _Scratch(
            heap_keys=np.empty(cap, dtype=np.int64),
            heap_vals=np.empty(cap, dtype=np.int64),
            set_keys=np.empty(hsize, dtype=np.int64),
            set_stamp=np.zeros(hsize, dtype=np.int64),
            set_local=np.empty(hsize, dtype=np.int32),
            g_lo=np.empty((max_rows, max_in), dtype=np.int64),
            g_cnt=np.empty((max_rows, max_in), dtype=np.int64),
            g_limit=np.empty(max_rows, dtype=np.int64),
            g_taken=np.empty(max_rows, dtype=np.int64),
            g_chosen=np.empty((max_rows, max(width, 1) + max_in), dtype=np.int64),
            ex_row=np.empty(max_rows, dtype=np.int64),
            ex_seed=np.empty(max_rows, dtype=np.int64),
            sib_lo=np.empty(max(max_out, 1), dtype=np.int64),
            sib_next=np.empty(max(max_out, 1), dtype=np.int64),
        )
        lo = ch * n // chunks
        hi = (ch + 1) * n // chunks
        for b in range(lo, hi):
            # only handed on: writes go through _context, never the prange body (numba#7135)
            _context(b, graph, task, examples, contexts.anchor_rows[b], contexts.obs_times[b],
                     contexts.streams[b], L, walk_cells, width, scratch, b - lo + 1, out)
