"""Labelled examples for the context (DESIGN §8): which seeds of a task may be shown, with their
labels, in the contexts of that task's other seeds.

An example is a seed of the *training split* whose label is valid; it may be shown in a context
observed at time t only once its label is known: its observation time plus the task's label
horizon is at or before t (a seed with no observation time is known only to contexts with no
cut-off either). The context's own anchor row never gives an example, in any split, so a seed
never sees its own label, nor the label of another seed of the same entity.

:class:`ExampleIndex` holds, for one task and one split assignment, the eligible seeds twice:
all of them sorted by the time their label is known (the uniform tier draws a prefix of it),
and grouped by anchor row (CSR over the anchor table's rows), each row's sorted by that time
(the latest known label of a row is one binary search away). The labels are kept in the slot of
the task's target type, as the kernel writes them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from tributary_core.sampler.kernel import N_TS, NO_TIME

__all__ = ["ExampleIndex", "build_example_index", "known_times", "EMPTY_EXAMPLES"]

_NO_CUTOFF = np.iinfo(np.int64).max


class ExampleIndex(NamedTuple):
    """One task's labelled examples as the kernel reads them (E eligible seeds)."""

    #: int64 [E]: the eligible seeds (rows of the task) sorted by ``known``, then seed.
    order: np.ndarray
    #: int64 [E]: when each of ``order``'s labels is known (epoch µs; int64 max: no cut-off).
    known: np.ndarray
    #: int64 [E]: the anchor row of each of ``order``'s seeds.
    row: np.ndarray
    #: int64 [rows + 1]: CSR over the anchor table's rows into ``by_row``/``by_row_known``.
    row_ptr: np.ndarray
    by_row: np.ndarray
    by_row_known: np.ndarray
    #: The label of every seed of the task, in the target's slot (others empty):
    #: float32 [N], float32 [N, N_TS], bool [N], int64 [N].
    number: np.ndarray
    timestamp: np.ndarray
    boolean: np.ndarray
    vocab: np.ndarray


def _empty() -> ExampleIndex:
    z = np.zeros(0, dtype=np.int64)
    return ExampleIndex(order=z, known=z, row=z, row_ptr=np.zeros(1, dtype=np.int64), by_row=z,
                        by_row_known=z, number=np.zeros(0, np.float32),
                        timestamp=np.zeros((0, N_TS), np.float32), boolean=np.zeros(0, np.bool_),
                        vocab=z)


#: No examples (tasks without a target, or examples switched off).
EMPTY_EXAMPLES = _empty()


def known_times(observation_time: np.ndarray, horizon_us: int) -> np.ndarray:
    """When each label is known: observation time + horizon, saturating at "no cut-off" (a
    seed with no cut-off is known only to contexts with none)."""
    obs = np.asarray(observation_time, dtype=np.int64)
    h = np.int64(max(int(horizon_us), 0))
    room = obs <= _NO_CUTOFF - h
    return np.where(room, obs + h, _NO_CUTOFF)


def build_example_index(view, train: np.ndarray) -> ExampleIndex:
    """The examples of task view ``view`` (a :class:`~tributary_core.sampler.graph.TaskView`)
    drawn from the seeds where ``train`` (bool [N]) holds: the training split."""
    from tributary_core.sampler.batch import target_arrays  # (batch imports this module)

    if view.target is None or view.target_col < 0 or len(view) == 0:
        return EMPTY_EXAMPLES
    n_rows = int(view.graph.store.tables[view.graph.table_names[view.anchor_table]].rows)
    obs = np.asarray(view.observation_time, dtype=np.int64)
    eligible = np.asarray(train, dtype=np.bool_) & view.target_valid & (obs != NO_TIME)
    seeds = np.flatnonzero(eligible).astype(np.int64)
    known = known_times(obs[seeds], getattr(view, "horizon_us", 0))
    by_time = np.lexsort((seeds, known))
    anchors = view.anchor_rows[seeds]
    by_anchor = np.lexsort((seeds, known, anchors))
    row_ptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.add.at(row_ptr, anchors + 1, 1)
    number, ts, boolean, vocab, _ = target_arrays(view, np.arange(len(view), dtype=np.int64))
    slot_only = {"number": number, "timestamp": ts, "boolean": boolean, "vocab": vocab}
    slot = _slot_name(view.slot)
    keep = {name: value if name == slot else getattr(EMPTY_EXAMPLES, name)
            for name, value in slot_only.items()}
    return ExampleIndex(order=seeds[by_time], known=known[by_time], row=anchors[by_time],
                        row_ptr=np.cumsum(row_ptr),
                        by_row=seeds[by_anchor], by_row_known=known[by_anchor], **keep)


def _slot_name(slot: int) -> str:
    from tributary_core.sampler.kernel import SLOT_BOOLEAN, SLOT_NUMBER, SLOT_TIMESTAMP, SLOT_VOCAB

    return {SLOT_NUMBER: "number", SLOT_TIMESTAMP: "timestamp", SLOT_BOOLEAN: "boolean",
            SLOT_VOCAB: "vocab"}.get(slot, "")
