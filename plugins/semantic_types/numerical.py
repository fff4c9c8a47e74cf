"""``numerical``: numbers, stored as an f32 z-score plus validity.

Mean and standard deviation are taken over the valid cells: not null, not NaN, finite. A NaN is
read as a null; ±inf is not a usable number and is stored as null too (counted as invalid in
the preprocessing report). A column whose values are all equal (or with no valid value) gets
std 1, so its cells encode as 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tributary_core.semantic_type import EncodedColumn, Prepared, SemanticType

from ._arrow import is_number, plain

#: Cells per partial sum: the statistics are summed in fixed chunks, so the result does not
#: depend on how many threads ran.
CHUNK = 1 << 16


@numba.njit(cache=True, nogil=True)
def moments(values: np.ndarray, valid: np.ndarray, rows: np.ndarray, use_rows: bool):
    """``(count, mean, m2)`` over cells with ``valid`` (and ``rows`` if ``use_rows``) and a
    finite value; two passes (mean, then squared deviations), summed in fixed chunks."""
    n = values.shape[0]
    n_chunks = (n + CHUNK - 1) // CHUNK
    total = 0.0
    count = 0
    for c in range(n_chunks):
        part = 0.0
        for i in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
            x = values[i]
            if valid[i] and (not use_rows or rows[i]) and np.isfinite(x):
                part += x
                count += 1
        total += part
    if count == 0:
        return 0, 0.0, 0.0
    mean = total / count
    m2 = 0.0
    for c in range(n_chunks):
        part = 0.0
        for i in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
            x = values[i]
            if valid[i] and (not use_rows or rows[i]) and np.isfinite(x):
                d = x - mean
                part += d * d
        m2 += part
    return count, mean, m2


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _zscore_range(values, valid, mean, inv, out, out_valid, lo, hi):
    # Branch-free body so LLVM vectorizes it; validity is read and written as bytes.
    for i in range(lo, hi):
        x = values[i]
        ok = (valid[i] != 0) & (np.abs(x) < np.inf)
        z = np.float32((x - mean) * inv)
        out[i] = z if ok else np.float32(0.0)
        out_valid[i] = ok


@numba.njit(cache=True, nogil=True, parallel=True)
def zscore(values: np.ndarray, valid: np.ndarray, mean: float, std: float, n_threads: int,
           out: np.ndarray, out_valid: np.ndarray) -> None:
    """``out = (values - mean) / std`` as f32 where valid and finite, else 0 and invalid.

    ``valid``/``out_valid`` may be bool arrays or their ``uint8`` views (faster)."""
    n = values.shape[0]
    inv = 1.0 / std
    step = (n + n_threads - 1) // n_threads
    for t in numba.prange(n_threads):
        _zscore_range(values, valid, mean, inv, out, out_valid, t * step, min(n, (t + 1) * step))


def n_threads() -> int:
    return numba.get_num_threads()


def to_float64(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(values, valid)``: float64 values (0 where null) and non-null flags; NaN is null."""
    arr = plain(column)
    if pa.types.is_null(arr.type):
        return np.zeros(len(arr)), np.zeros(len(arr), dtype=np.bool_)
    if not pa.types.is_float64(arr.type):
        arr = pc.cast(arr, pa.float64(), safe=False)  # decimals and int64 beyond 2**53 round
    values = arr.to_numpy(zero_copy_only=False)
    if arr.null_count:
        valid = np.asarray(pc.is_valid(arr).to_numpy(zero_copy_only=False), dtype=np.bool_)
        values = np.where(valid, values, 0.0)
    else:
        valid = np.ones(len(arr), dtype=np.bool_)
    valid &= ~np.isnan(values)
    return values, valid


class Numerical(SemanticType):
    name = "numerical"
    batch_slot = "number"
    description = "numbers: f32 z-score + validity"
    target_losses = ("huber",)

    def check_arrow_type(self, arrow_type: pa.DataType) -> str | None:
        if is_number(arrow_type) or pa.types.is_null(arrow_type):
            return None
        return f"expected a number, got {arrow_type}"

    def prepare(self, column: pa.ChunkedArray) -> Prepared:
        values, valid = to_float64(column)
        n_inf = int(np.isinf(values).sum())
        return Prepared(values, valid, n_invalid=n_inf)

    def fit(self, prepared: Prepared, *, rows: np.ndarray | None = None) -> dict[str, Any]:
        use_rows = rows is not None
        count, mean, m2 = moments(prepared.values, prepared.valid,
                                  rows if use_rows else prepared.valid, use_rows)
        std = float(np.sqrt(m2 / count)) if count else 0.0
        return {"count": int(count), "mean": float(mean), "std": std if std > 0 else 1.0}

    def encode(self, prepared: Prepared, stats: Mapping[str, Any],
               vocab_ids: np.ndarray | None = None) -> EncodedColumn:
        n = len(prepared)
        out = np.empty(n, dtype=np.float32)
        valid = np.empty(n, dtype=np.bool_)
        zscore(prepared.values, prepared.valid.view(np.uint8), float(stats["mean"]),
               float(stats["std"]), n_threads(), out, valid.view(np.uint8))
        return EncodedColumn({"value": out}, valid)

    def decode(self, cell: Mapping[str, Any], stats: Mapping[str, Any],
               vocab_values: Sequence[str]) -> Any:
        # An f32 z-score resolves about 1e-6 of a standard deviation; show no finer digits.
        value = float(cell["value"]) * stats["std"] + stats["mean"]
        digits = int(np.clip(-np.floor(np.log10(stats["std"] * 1e-6)), 0, 12))
        return float(f"{round(value, digits):.7g}")
