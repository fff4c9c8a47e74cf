"""A batch of contexts (DESIGN §5) and the call that samples one."""

from __future__ import annotations

import zlib
from typing import Any

import attrs
import numpy as np

from tributary_core import timefeatures
from tributary_core.sampler.examples import EMPTY_EXAMPLES, ExampleIndex
from tributary_core.sampler.graph import SamplerGraph, TaskView
from tributary_core.sampler.kernel import (
    N_TS,
    SLOT_BOOLEAN,
    SLOT_NUMBER,
    SLOT_TIMESTAMP,
    SLOT_VOCAB,
    BatchArrays,
    ContextSeeds,
    sample_contexts,
)
from tributary_core.sampler.masking import eligible_cells, mask_cells, maskable_stypes
from tributary_core.sampler.splits import mix64

__all__ = ["Batch", "sample_batch", "context_seeds", "target_arrays", "example_cells"]

_M64 = (1 << 64) - 1


def context_seeds(sampler_seed: int, task: str, anchor_rows: np.ndarray, draw: int = 0) -> np.ndarray:
    """The random stream of each context: a function of (sampler seed, task, anchor row, draw)
    only, so a context is the same whichever batch, rank or thread builds it."""
    base = (zlib.crc32(task.encode()) << 32) ^ (sampler_seed & 0xFFFFFFFF) ^ ((draw & 0xFFFF) << 16)
    rows = np.asarray(anchor_rows, dtype=np.int64).astype(np.uint64)
    return mix64(mix64(rows ^ np.uint64(base & _M64)))


@attrs.define(eq=False)
class Batch:
    """B contexts padded to L cells (and L rows). Arrays are numpy; :meth:`to_torch` converts.

    Per cell ``[B, L]``: ``column_id`` (row of the store's column embeddings, -1 padding),
    ``stype`` (index into ``stype_names``, -1 padding), ``row`` (the cell's row within its
    context), ``number``, ``timestamp`` ``[B, L, 15]``, ``boolean``, ``vocab`` (vocabulary id),
    ``is_null``, ``is_target``, ``is_padding``, ``is_label``, ``is_masked`` (other cells hidden
    for the masked-cell loss; ``sampler/masking.py``). Per context row ``[B, L]``: ``row_table``,
    ``row_index`` (row number in its table), ``row_hops``, and ``row_parents`` ``[B, L, P]``:
    the context rows each row references (-1 none), the FK adjacency the attention masks
    come from. Per context ``[B]``: the target (position, value in the slot of its type,
    ``target_is_null``), ``anchor_row``, ``observation_time``, ``seed`` (row of the task file).
    """

    database: str
    task: str
    target_stype: str
    stype_names: list[str]
    column_id: np.ndarray
    stype: np.ndarray
    row: np.ndarray
    number: np.ndarray
    timestamp: np.ndarray
    boolean: np.ndarray
    vocab: np.ndarray
    is_null: np.ndarray
    is_target: np.ndarray
    is_padding: np.ndarray
    #: The label cells of labelled examples (other seeds of the task, with their labels).
    is_label: np.ndarray
    n_cells: np.ndarray
    row_table: np.ndarray
    row_index: np.ndarray
    row_hops: np.ndarray
    row_parents: np.ndarray
    #: Rows added as labelled examples (not reached by the walk; ``row_hops`` -1).
    row_is_example: np.ndarray
    n_rows: np.ndarray
    target_pos: np.ndarray
    target_number: np.ndarray
    target_timestamp: np.ndarray
    target_boolean: np.ndarray
    target_vocab: np.ndarray
    target_is_null: np.ndarray
    anchor_row: np.ndarray
    observation_time: np.ndarray
    #: Each context's seed: its row in the task file.
    seed: np.ndarray
    candidates: np.ndarray | None
    #: The kernel's column index of each cell (for debugging views).
    cell_col: np.ndarray
    #: Cells other than the target whose values are hidden and predicted (``mask_share`` > 0;
    #: ``sampler/masking.py``). All False without masking.
    is_masked: np.ndarray
    #: The arrays as page-locked torch tensors, once :meth:`pin` has made them (CUDA only).
    pinned: dict[str, Any] | None = attrs.field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.n_cells)

    def pin(self) -> Batch:
        """Copy the arrays into page-locked (pinned) memory, so that :meth:`to_torch` moves them
        to a GPU asynchronously; a no-op without CUDA. Meant for the thread that prefetches
        batches, so the copy is not on the training loop's path."""
        import torch

        if torch.cuda.is_available() and self.pinned is None:
            # each pinned copy beside the array it copies: a batch changed since (attrs.evolve)
            # uses its own arrays, never a stale copy
            self.pinned = {f.name: (v, torch.from_numpy(np.ascontiguousarray(v)).pin_memory())
                           for f in attrs.fields(type(self))
                           if isinstance(v := getattr(self, f.name), np.ndarray)}
        return self

    def to_torch(self, device: Any = None) -> dict[str, Any]:
        """The tensors as a dict (strings and lists pass through); pinned ones (:meth:`pin`)
        are copied to ``device`` without blocking."""
        import torch

        out: dict[str, Any] = {}
        pinned = self.pinned or {}
        for field in attrs.fields(type(self)):
            if field.name == "pinned":
                continue
            value = getattr(self, field.name)
            if isinstance(value, np.ndarray):
                array, copy = pinned.get(field.name, (None, None))
                value = copy if array is value else torch.from_numpy(np.ascontiguousarray(value))
                if device is not None:
                    value = value.to(device, non_blocking=True)
            out[field.name] = value
        return out


def target_arrays(task: TaskView, seeds: np.ndarray) -> tuple[np.ndarray, ...]:
    """The labels of ``seeds``, each in the slot of the target's type (zeros elsewhere):
    ``(number (B,), timestamp (B, 15), boolean (B,), vocab (B,), valid (B,))``."""
    B = len(seeds)
    t_number = np.zeros(B, dtype=np.float32)
    t_ts = np.zeros((B, N_TS), dtype=np.float32)
    t_bool = np.zeros(B, dtype=np.bool_)
    t_vocab = np.zeros(B, dtype=np.int64)
    valid = task.target_valid[seeds]
    if task.slot == SLOT_NUMBER:
        t_number = np.where(valid, task.target[seeds], 0).astype(np.float32)
    elif task.slot == SLOT_TIMESTAMP:  # stored as epoch µs: the features, as the kernel writes
        t_ts = timefeatures.features(task.target[seeds], valid, task.stats)
    elif task.slot == SLOT_BOOLEAN:
        t_bool = valid & task.target[seeds].astype(np.bool_)
    elif task.slot == SLOT_VOCAB:
        t_vocab = np.where(valid, task.target[seeds], 0).astype(np.int64)
    return t_number, t_ts, t_bool, t_vocab, valid


def example_cells(context_len: int, icl_share: float) -> int:
    """How many of a context's ``context_len`` cells are kept for labelled examples (never the
    first: the seed's target cell)."""
    return min(int(context_len) - 1, max(0, int(round(context_len * icl_share))))


def sample_batch(graph: SamplerGraph, task: TaskView, seeds: np.ndarray, *, context_len: int = 1024,
                 width: int = 16, sampler_seed: int = 0, draw: int = 0, n_threads: int = 1,
                 examples: ExampleIndex | None = None, icl_share: float = 0.0,
                 mask_share: float = 0.0) -> Batch:
    """Sample the contexts of ``task``'s seeds number ``seeds`` (indices into the task's rows).

    With ``examples`` (``task.examples(splitter)``) and ``icl_share`` > 0, the walk around the
    seed stops at ``1 - icl_share`` of the cells and labelled examples fill the rest (all of it
    where the walk runs dry early).

    With ``mask_share`` (``p_max``) > 0, each context also masks a share ``p ~ U(0, p_max)`` of
    its other eligible cells (``is_masked``; ``sampler/masking.py``), drawn from its own stream."""
    seeds = np.asarray(seeds, dtype=np.int64)
    B, L = len(seeds), int(context_len)
    anchor = task.anchor_rows[seeds]
    obs = task.observation_time[seeds]
    rng = context_seeds(sampler_seed, task.name, anchor, draw)
    out = BatchArrays.allocate(B, L, graph.max_parents)
    if examples is None or icl_share <= 0:
        examples, icl_share = EMPTY_EXAMPLES, 0.0
    walk = L - example_cells(L, icl_share) if len(examples.order) else L
    sample_contexts(graph.kernel_arrays, task.kernel_arrays, examples,
                    ContextSeeds(anchor, obs, rng), L, walk, width, n_threads, out)
    is_padding = np.arange(L, dtype=np.int32)[None, :] >= out.n_cells[:, None]
    t_number, t_ts, t_bool, t_vocab, valid = target_arrays(task, seeds)
    if mask_share > 0:
        eligible = eligible_cells(out.stype, is_padding, out.is_target, out.is_null,
                                  maskable_stypes(graph.stype_names))
        is_masked = mask_cells(rng, eligible, mask_share)
    else:
        is_masked = np.zeros((B, L), dtype=np.bool_)
    return Batch(
        database=graph.name, task=task.name, target_stype=task.stype,
        stype_names=graph.stype_names, is_padding=is_padding, **out._asdict(),
        target_pos=np.zeros(B, dtype=np.int64), target_number=t_number, target_timestamp=t_ts,
        target_boolean=t_bool, target_vocab=t_vocab, target_is_null=~valid, anchor_row=anchor,
        observation_time=obs, seed=seeds, candidates=task.candidates, is_masked=is_masked)
