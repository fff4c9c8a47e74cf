"""Masked cells (DESIGN §8 "Many masked cells"; docs/training.md "Masked cells").

Besides the task's target, a training context may hide a random share of its other cells; the
model then predicts each of them with the head of its own semantic type. Which cells are hidden
is a pure function of the context's random stream (:func:`~tributary_core.sampler.batch.context_seeds`)
and ``p_max``, so it does not depend on the batch a context lands in, the rank or the number of
sampler threads:

1. the context draws its share ``p ~ U(0, p_max)`` from ``mix64(stream ^ MASK_SALT)``;
2. each *eligible* cell at position ``k`` is masked when its own uniform number, from the
   splitmix64 stream of that state at counter ``k + 1``, is below ``p`` (an independent coin per
   cell: the number masked varies around ``p`` times the eligible cells).

A cell is eligible when it is a real cell (not padding), not the task's target, not null, and of
a semantic type the model has a head for: a type with a target loss (``target_losses``) whose
batch slot holds a value (``number``, ``timestamp``, ``boolean`` or ``vocab``). With the built-in
types that is numerical, timestamp, boolean and categorical; identifiers and text have no head and
are never masked. The label cells of labelled examples are eligible too: they hold training-split
labels, so hiding one trains the task itself and leaks nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tributary_core.registry import Registry, get_registry
from tributary_core.sampler.splits import mix64

__all__ = ["MASK_SALT", "VALUE_SLOTS", "maskable_stypes", "eligible_cells", "mask_cells"]

#: Mixed into a context's stream to derive its masking stream (ASCII "maskcell").
MASK_SALT = np.uint64(0x6D61736B63656C6C)
#: The batch slots that hold a cell's value (a cell in slot ``none`` has nothing to predict).
VALUE_SLOTS = ("number", "timestamp", "boolean", "vocab")
_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def maskable_stypes(stype_names: Sequence[str], registry: Registry | None = None) -> np.ndarray:
    """Per semantic-type code (index into ``stype_names``): may a cell of this type be masked?
    True for types with a target loss whose batch slot holds a value."""
    registry = registry or get_registry()
    out = np.zeros(len(stype_names), dtype=np.bool_)
    for code, name in enumerate(stype_names):
        cls = registry.semantic_types.get(name)
        out[code] = cls is not None and bool(cls.target_losses) and cls.batch_slot in VALUE_SLOTS
    return out


def eligible_cells(stype: np.ndarray, is_padding: np.ndarray, is_target: np.ndarray,
                   is_null: np.ndarray, maskable: np.ndarray) -> np.ndarray:
    """``[B, L]`` bool: the cells that may be masked (see the module's docstring)."""
    codes = np.asarray(stype, dtype=np.int64)
    typed = np.zeros(codes.shape, dtype=np.bool_)
    real = codes >= 0
    typed[real] = maskable[codes[real]]
    return typed & ~is_padding & ~is_target & ~is_null


def _unit(x: np.ndarray) -> np.ndarray:
    """uint64 -> float64 uniform in [0, 1) (the top 53 bits)."""
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def mask_cells(streams: np.ndarray, eligible: np.ndarray, p_max: float) -> np.ndarray:
    """``[B, L]`` bool: the eligible cells masked in each context, given each context's random
    ``streams`` ``[B]`` (uint64) and the largest share ``p_max``. All False when ``p_max`` is 0."""
    B, L = eligible.shape
    if p_max <= 0 or B == 0 or L == 0:
        return np.zeros((B, L), dtype=np.bool_)
    state = mix64(np.asarray(streams, dtype=np.uint64) ^ MASK_SALT)  # (B,)
    share = float(p_max) * _unit(mix64(state))  # (B,) p ~ U(0, p_max)
    with np.errstate(over="ignore"):
        counters = np.arange(1, L + 1, dtype=np.uint64) * _GAMMA  # (L,)
        coins = _unit(mix64(state[:, None] + counters[None, :]))  # (B, L)
    return eligible & (coins < share[:, None])
