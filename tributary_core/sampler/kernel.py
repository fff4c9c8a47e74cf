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
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

NO_TIME = np.iinfo(np.int64).min
N_TS = 15
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


@numba.njit(cache=True)
def _context(b, time, time_off, out_ptr, out_fk, in_ptr, in_fk, fk_parent_table, fk_child_table,
             parent, parent_off, indptr, indptr_off, children, child_time, children_off, col_ptr,
             col_slot, col_src, col_valid, numbers, timestamps, bits, vocab_flat,
             anchor_table, anchor_row, obs, seed, hidden, hidden_fk, target_col, col_embed, col_stype,
             L, width,
             heap_keys, heap_vals, set_keys, set_stamp, set_local, stamp, g_lo, g_cnt, g_limit,
             g_taken, g_chosen,
             cell_col, column_id, stype, cell_row, number, ts, boolean, vocab, is_null, is_target,
             n_cells, row_table, row_index, row_hops, row_parents, n_rows):
    state = np.empty(1, dtype=np.uint64)
    state[0] = seed
    mask = np.int64(set_keys.shape[0] - 1)
    max_rows = row_table.shape[1]
    n_par_slots = row_parents.shape[2]
    counter = np.int64(1)
    node = (np.int64(anchor_table) << _ROW_BITS) | np.int64(anchor_row)
    _claim(set_keys, set_stamp, set_local, stamp, mask, node)
    size = _heap_push(heap_keys, heap_vals, 0, np.int64(0), node)
    pos = 0
    nr = 0
    while size > 0 and pos < L and nr < max_rows:
        key, val, size = _heap_pop(heap_keys, heap_vals, size)
        hops = (key >> np.int64(52)) & np.int64(1023)
        if val < 0:
            # The children of visited row g, drawn one at a time without replacement among
            # the first g_cnt ones (at or before the observation time) of each of its FKs.
            g = -val - 1
            total = np.int64(0)
            gt = np.int64(row_table[b, g])
            n_in = in_ptr[gt + 1] - in_ptr[gt]
            for k in range(n_in):
                total += g_cnt[g, k]
            while True:
                idx = _below(state, total)
                fresh = True
                for q in range(g_taken[g]):
                    if g_chosen[g, q] == idx:
                        fresh = False
                        break
                if fresh:
                    break
            g_chosen[g, g_taken[g]] = idx
            g_taken[g] += 1
            if g_taken[g] < g_limit[g]:
                size = _heap_push(heap_keys, heap_vals, size,
                                  _key(np.int64(1), hops, splitmix64(state), counter), val)
                counter += 1
            node = np.int64(-1)
            for k in range(n_in):
                if idx < g_cnt[g, k]:
                    f = in_fk[in_ptr[gt] + k]
                    node = (fk_child_table[f] << _ROW_BITS) | np.int64(children[g_lo[g, k] + idx])
                    break
                idx -= g_cnt[g, k]
            if not _claim(set_keys, set_stamp, set_local, stamp, mask, node):
                continue
        else:
            node = val
        t = np.int64(node >> _ROW_BITS)
        r = node & _ROW_MASK
        local = nr
        nr += 1
        set_local[_slot_of(set_keys, set_stamp, stamp, mask, node)] = local
        row_table[b, local] = t
        row_index[b, local] = r
        row_hops[b, local] = hops
        rt = _row_time(time, time_off, t, r)
        is_anchor = local == 0
        # -- cells ---------------------------------------------------------------------------
        if is_anchor and target_col >= 0:
            cell_col[b, pos] = target_col
            column_id[b, pos] = col_embed[target_col]
            stype[b, pos] = col_stype[target_col]
            cell_row[b, pos] = local
            is_target[b, pos] = True
            pos += 1
        hide = t == anchor_table and (is_anchor or rt == NO_TIME or rt >= obs)
        for c in range(col_ptr[t], col_ptr[t + 1]):
            if pos >= L:
                break
            if (c == target_col and is_anchor) or (hide and hidden[c]):
                continue
            cell_col[b, pos] = c
            column_id[b, pos] = col_embed[c]
            stype[b, pos] = col_stype[c]
            cell_row[b, pos] = local
            ok = _bit(bits, col_valid[c], r)
            is_null[b, pos] = not ok
            if ok:
                s = col_slot[c]
                if s == SLOT_NUMBER:
                    number[b, pos] = numbers[col_src[c] + r]
                elif s == SLOT_TIMESTAMP:
                    src = col_src[c] + r
                    for j in range(N_TS):
                        ts[b, pos, j] = timestamps[src, j]
                elif s == SLOT_BOOLEAN:
                    boolean[b, pos] = _bit(bits, col_src[c], r)
                elif s == SLOT_VOCAB:
                    vocab[b, pos] = vocab_flat[col_src[c] + r]
            pos += 1
        # -- parents, unless after the observation time ----------------------------------------
        for k in range(out_ptr[t], out_ptr[t + 1]):
            f = out_fk[k]
            if hide and hidden_fk[f]:
                continue  # a hidden foreign-key cell: its edge is hidden too
            p = np.int64(parent[parent_off[f] + r])
            if p < 0:
                continue
            pt = fk_parent_table[f]
            ptime = _row_time(time, time_off, pt, p)
            if ptime != NO_TIME and ptime > obs:
                continue
            pnode = (pt << _ROW_BITS) | p
            if _claim(set_keys, set_stamp, set_local, stamp, mask, pnode):
                size = _heap_push(heap_keys, heap_vals, size,
                                  _key(np.int64(0), hops + 1, splitmix64(state), counter), pnode)
                counter += 1
        # -- children: one frontier entry that yields up to `width` of them, lazily ------------
        total = np.int64(0)
        n_pre = np.int64(0)
        for k in range(in_ptr[t + 1] - in_ptr[t]):
            f = in_fk[in_ptr[t] + k]
            base = children_off[f]
            lo = base + indptr[indptr_off[f] + r]
            hi = base + indptr[indptr_off[f] + r + 1]
            if hidden_fk[f]:
                # only children whose (hidden) key cell shows: at a known time before obs
                lo = _upper_bound(child_time, lo, hi, NO_TIME)
                end = _lower_bound(child_time, lo, hi, obs)
                if parent[parent_off[f] + anchor_row] == r:
                    # nor the anchor (its key cell never shows): marked as drawn already
                    at = _row_time(time, time_off, anchor_table, anchor_row)
                    j = _lower_bound(child_time, lo, end, at)
                    while j < end and child_time[j] == at:
                        if children[j] == anchor_row:
                            g_chosen[local, n_pre] = total + j - lo
                            n_pre += 1
                            break
                        j += 1
            else:
                end = _upper_bound(child_time, lo, hi, obs)
            g_lo[local, k] = lo
            g_cnt[local, k] = end - lo
            total += g_cnt[local, k]
        g_taken[local] = n_pre
        g_limit[local] = min(total - n_pre, np.int64(width)) + n_pre
        if g_limit[local] > n_pre:
            size = _heap_push(heap_keys, heap_vals, size,
                              _key(np.int64(1), hops + 1, splitmix64(state), counter), -(local + 1))
            counter += 1
    n_cells[b] = pos
    n_rows[b] = nr
    # -- the FK adjacency among the context's rows: each row's parents that made it in -------
    for i in range(nr):
        t = np.int64(row_table[b, i])
        r = row_index[b, i]
        hide = False
        if t == anchor_table:
            rt = _row_time(time, time_off, t, r)
            hide = i == 0 or rt == NO_TIME or rt >= obs
        m = 0
        for k in range(out_ptr[t], out_ptr[t + 1]):
            f = out_fk[k]
            if hide and hidden_fk[f]:
                continue
            p = np.int64(parent[parent_off[f] + r])
            if p < 0 or m >= n_par_slots:
                continue
            pnode = (fk_parent_table[f] << _ROW_BITS) | p
            slot = _slot_of(set_keys, set_stamp, stamp, mask, pnode)
            if set_stamp[slot] == stamp and set_local[slot] >= 0:
                row_parents[b, i, m] = set_local[slot]
                m += 1


@numba.njit(cache=True, parallel=True, nogil=True)
def sample_contexts(time, time_off, out_ptr, out_fk, in_ptr, in_fk, fk_parent_table, fk_child_table,
                    parent, parent_off, indptr, indptr_off, children, child_time, children_off,
                    col_ptr, col_slot, col_src, col_valid, numbers, timestamps, bits, vocab_flat,
                    anchor_table, anchor_rows, obs_times, seeds, hidden, hidden_fk, target_col,
                    col_embed, col_stype, L, width, n_threads, cell_col, column_id, stype, cell_row,
                    number, ts, boolean, vocab, is_null, is_target, n_cells, row_table, row_index, row_hops,
                    row_parents, n_rows):
    """Fill one batch: context ``b`` around ``anchor_rows[b]`` at ``obs_times[b]`` with random
    stream ``seeds[b]``.

    Output arrays must come zeroed, with -1 in ``cell_col``, ``column_id``, ``stype``,
    ``row_table``, ``row_index`` and ``row_parents``. ``hidden`` marks hidden kernel columns and
    ``hidden_fk`` the foreign keys whose (anchor-table) column is hidden. ``col_embed`` and
    ``col_stype`` map kernel columns (the virtual target last) to column-embedding ids and
    stype codes. ``target_col``: the kernel column of the target on the anchor row, the index
    past the last column for a derived task's virtual cell, or -1 for none. ``n_threads``
    chunks share the work; the result does not depend on it.
    """
    n = anchor_rows.shape[0]
    max_rows = row_table.shape[1]
    max_out = 0
    for t in range(out_ptr.shape[0] - 1):
        max_out = max(max_out, out_ptr[t + 1] - out_ptr[t])
    max_in = 1
    for t in range(in_ptr.shape[0] - 1):
        max_in = max(max_in, in_ptr[t + 1] - in_ptr[t])
    cap = max_rows * (max_out + 1) + 2
    hsize = 1
    while hsize < 2 * (cap + max_rows):
        hsize *= 2
    chunks = max(1, min(n_threads, n))
    for ch in prange(chunks):
        heap_keys = np.empty(cap, dtype=np.int64)
        heap_vals = np.empty(cap, dtype=np.int64)
        set_keys = np.empty(hsize, dtype=np.int64)
        set_stamp = np.zeros(hsize, dtype=np.int64)
        set_local = np.empty(hsize, dtype=np.int32)
        g_lo = np.empty((max_rows, max_in), dtype=np.int64)
        g_cnt = np.empty((max_rows, max_in), dtype=np.int64)
        g_limit = np.empty(max_rows, dtype=np.int64)
        g_taken = np.empty(max_rows, dtype=np.int64)
        g_chosen = np.empty((max_rows, max(width, 1) + max_in), dtype=np.int64)
        lo = ch * n // chunks
        hi = (ch + 1) * n // chunks
        for b in range(lo, hi):
            _context(b, time, time_off, out_ptr, out_fk, in_ptr, in_fk, fk_parent_table,
                     fk_child_table, parent, parent_off, indptr, indptr_off, children, child_time,
                     children_off, col_ptr, col_slot, col_src, col_valid, numbers, timestamps, bits,
                     vocab_flat, anchor_table, anchor_rows[b], obs_times[b], seeds[b], hidden,
                     hidden_fk, target_col, col_embed, col_stype, L, width, heap_keys, heap_vals, set_keys,
                     set_stamp, set_local,
                     b - lo + 1, g_lo, g_cnt, g_limit, g_taken, g_chosen, cell_col, column_id,
                     stype, cell_row, number, ts, boolean, vocab, is_null, is_target, n_cells,
                     row_table, row_index, row_hops, row_parents, n_rows)
