"""``numerical``: numbers, stored as an f32 z-score plus validity.

Mean and standard deviation are taken over the valid cells: not null, not NaN, finite. A NaN is
read as a null; ±inf is not a usable number and is stored as null too (counted as invalid in
the preprocessing report). A column whose values are all equal (or with no valid value) gets
std 1, so its cells encode as 0.

The statistics cannot overflow: values are scaled by a power of two before they are summed and
squared (:func:`scaled_moments`), so a column holding values near 1e308 gets a finite mean and
std like any other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tributary_core.semantic_type import (
    ColumnEncoder,
    EncodedColumn,
    Prepared,
    SemanticType,
    Vocabulary,
)

from ._arrow import _chunks, is_number

#: Cells per partial sum: the statistics are summed in fixed chunks, so the result does not
#: depend on how many threads ran.
CHUNK = 1 << 16
#: Cells sampled by :meth:`Numerical.check_encoded` to look for values that collapsed together.
CHECK_SAMPLE = 4096


@numba.njit(cache=True, nogil=True)
def scaled_moments(values: np.ndarray, valid: np.ndarray, rows: np.ndarray, use_rows: bool):
    """``(count, mean / scale, m2 / scale², scale)`` over cells with ``valid`` (and ``rows`` if
    ``use_rows``) and a finite value, where ``scale`` is the power of two at or just below the
    largest magnitude: every scaled value lies in (-2, 2), so neither the sum nor the squares can
    overflow, even for values near the float64 limit (1.8e308). Scaling by a power of two is
    exact, so for ordinary values the results are those of the unscaled sums.

    Three passes (largest magnitude, mean, squared deviations), summed in fixed chunks."""
    n = values.shape[0]
    n_chunks = (n + CHUNK - 1) // CHUNK
    count = 0
    biggest = 0.0
    for i in range(n):
        x = values[i]
        if valid[i] and (not use_rows or rows[i]) and np.isfinite(x):
            count += 1
            biggest = max(biggest, abs(x))
    if count == 0:
        return 0, 0.0, 0.0, 1.0
    scale = 1.0
    if biggest > 0.0:
        _, exponent = math.frexp(biggest)  # biggest = m * 2**exponent, 0.5 <= m < 1
        scale = math.ldexp(1.0, exponent - 1)
    total = 0.0
    for c in range(n_chunks):
        part = 0.0
        for i in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
            x = values[i]
            if valid[i] and (not use_rows or rows[i]) and np.isfinite(x):
                part += x / scale
        total += part
    mean = total / count
    m2 = 0.0
    for c in range(n_chunks):
        part = 0.0
        for i in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
            x = values[i]
            if valid[i] and (not use_rows or rows[i]) and np.isfinite(x):
                d = x / scale - mean
                part += d * d
        m2 += part
    return count, mean, m2, scale


@numba.njit(cache=True, nogil=True)
def fold_chunks(values: np.ndarray, valid: np.ndarray, rows: np.ndarray, use_rows: bool,
                state: np.ndarray) -> None:
    """Fold the cells of ``values`` into ``state`` = ``[count, mean / scale, m2 / scale²,
    scale]``, :data:`CHUNK` cells at a time (the last chunk may be shorter): each chunk's
    moments are computed scaled by its own power of two (:func:`scaled_moments`), then merged
    into the state in order (Chan et al.'s pairwise update), both brought to the larger of the
    two scales first. Scaling by powers of two is exact, so the result depends only on the
    cells and where the chunks start, never on how the caller split the column
    (:class:`MomentFold` keeps the chunks' starts fixed)."""
    n = values.shape[0]
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        nb, mb, m2b, sb = scaled_moments(values[lo:hi], valid[lo:hi], rows[lo:hi], use_rows)
        if nb == 0:
            continue
        na = state[0]
        if na == 0:
            state[0], state[1], state[2], state[3] = nb, mb, m2b, sb
            continue
        sa = state[3]
        scale = max(sa, sb)
        ra, rb = sa / scale, sb / scale
        ma, m2a = state[1] * ra, state[2] * ra * ra
        mb, m2b = mb * rb, m2b * rb * rb
        total = na + nb
        delta = mb - ma
        state[1] = ma + delta * (nb / total)
        state[2] = m2a + m2b + delta * delta * (na * nb / total)
        state[0] = total
        state[3] = scale


class MomentFold:
    """Count, mean and sum of squared deviations of a column's valid, finite cells given in
    pieces of any size, the same to the bit however the column was split: cells go through
    :func:`fold_chunks` in chunks of :data:`CHUNK` that always start at a multiple of it, the
    rows of a piece that do not fill a chunk waiting for the next piece. Overflow-safe like
    :func:`scaled_moments` (every chunk's values are scaled into (-2, 2))."""

    def __init__(self) -> None:
        self._state = np.zeros(4)
        self._state[3] = 1.0
        self._tail: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._use_rows: bool | None = None

    def add(self, values: np.ndarray, valid: np.ndarray, rows: np.ndarray | None) -> None:
        use_rows = rows is not None
        if self._use_rows is None:
            self._use_rows = use_rows
        elif self._use_rows != use_rows:
            raise ValueError("every piece gives rows, or none does")
        values = np.asarray(values, dtype=np.float64)
        rows = valid if rows is None else rows
        if self._tail is not None:
            tv, tk, tr = self._tail
            values, valid, rows = (np.concatenate([tv, values]), np.concatenate([tk, valid]),
                                   np.concatenate([tr, rows]))
        whole = len(values) // CHUNK * CHUNK
        if whole:
            fold_chunks(values[:whole], valid[:whole], rows[:whole], use_rows, self._state)
        self._tail = (values[whole:].copy(), valid[whole:].copy(), rows[whole:].copy())

    def result(self) -> tuple[int, float, float, float]:
        """``(count, mean / scale, m2 / scale², scale)`` over every cell added."""
        if self._tail is not None and len(self._tail[0]):
            fold_chunks(*self._tail, bool(self._use_rows), self._state)
            self._tail = None
        count, mean, m2, scale = self._state
        return int(count), float(mean), float(m2), float(scale)


@numba.njit(cache=True, nogil=True)
def moments(values: np.ndarray, valid: np.ndarray, rows: np.ndarray, use_rows: bool):
    """``(count, mean, m2)`` over cells with ``valid`` (and ``rows`` if ``use_rows``) and a
    finite value (see :func:`scaled_moments`). ``m2`` is the sum of squared deviations and can
    itself exceed float64 for values beyond about 1e154; :meth:`Numerical.fit` uses the scaled
    form, timestamps (int64 µs, at most 9.3e18) never come near."""
    count, mean, m2, scale = scaled_moments(values, valid, rows, use_rows)
    return count, mean * scale, m2 * scale * scale


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _zscore_range(values, valid, mean, std, inv, out, out_valid, lo, hi):
    # Branch-free body so LLVM vectorizes it; validity is read and written as bytes. Where
    # x - mean overflows (values near the float64 limit), the halves are subtracted instead.
    # The loop runs over slices from 0: indexing the whole arrays from ``lo`` made Numba check
    # each index for a negative value (wraparound), which kept LLVM from vectorizing and ran
    # about 5x slower (benchmarks/preprocess.py).
    xs, vs, zs, oks = values[lo:hi], valid[lo:hi], out[lo:hi], out_valid[lo:hi]
    for i in range(xs.shape[0]):
        x = xs[i]
        d = x - mean
        z = np.float32(d * inv if np.abs(d) < np.inf else (0.5 * x - 0.5 * mean) * (2.0 * inv))
        ok = (vs[i] != 0) & (np.abs(x) < np.inf) & (np.abs(z) < np.inf)
        zs[i] = z if ok else np.float32(0.0)
        oks[i] = ok


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _zscore_range_tiny(values, valid, mean, std, inv, out, out_valid, lo, hi):
    # A subnormal std has no finite inverse: divide.
    xs, vs, zs, oks = values[lo:hi], valid[lo:hi], out[lo:hi], out_valid[lo:hi]
    for i in range(xs.shape[0]):
        x = xs[i]
        z = np.float32((x - mean) / std)
        ok = (vs[i] != 0) & (np.abs(x) < np.inf) & (np.abs(z) < np.inf)
        zs[i] = z if ok else np.float32(0.0)
        oks[i] = ok


@numba.njit(cache=True, nogil=True, parallel=True)
def zscore(values: np.ndarray, valid: np.ndarray, mean: float, std: float, n_threads: int,
           out: np.ndarray, out_valid: np.ndarray) -> None:
    """``out = (values - mean) / std`` as f32 where valid and finite, else 0 and invalid (also
    where the z-score itself exceeds float32, possible only for a value far outside the
    statistics window; the preprocessing report counts such cells).

    ``valid``/``out_valid`` may be bool arrays or their ``uint8`` views (faster)."""
    n = values.shape[0]
    inv = 1.0 / std
    tiny = not np.isfinite(inv)
    step = (n + n_threads - 1) // n_threads
    for t in numba.prange(n_threads):
        if tiny:
            _zscore_range_tiny(values, valid, mean, std, inv, out, out_valid, t * step,
                               min(n, (t + 1) * step))
        else:
            _zscore_range(values, valid, mean, std, inv, out, out_valid, t * step,
                          min(n, (t + 1) * step))


def n_threads() -> int:
    return numba.get_num_threads()


def to_float64(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(values, valid)``: float64 values (0 where null) and non-null flags; NaN is null.

    A chunked column is converted chunk by chunk into the output, never combined into one Arrow
    array first (a decimal column of 60 M rows is 960 MB as Arrow, and the copy and the cast
    came on top of it)."""
    n = len(column)
    if pa.types.is_null(column.type):
        return np.zeros(n), np.zeros(n, dtype=np.bool_)
    values = np.empty(n, dtype=np.float64)
    valid = np.ones(n, dtype=np.bool_)
    pos = 0
    for chunk in _chunks(column):
        end = pos + len(chunk)
        if pa.types.is_dictionary(chunk.type):
            chunk = chunk.cast(chunk.type.value_type)
        if not pa.types.is_float64(chunk.type):
            chunk = pc.cast(chunk, pa.float64(), safe=False)  # decimals, int64 beyond 2**53 round
        values[pos:end] = chunk.to_numpy(zero_copy_only=False)
        if chunk.null_count:
            ok = np.asarray(pc.is_valid(chunk).to_numpy(zero_copy_only=False), dtype=np.bool_)
            valid[pos:end] = ok
            values[pos:end][~ok] = 0.0
        pos = end
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
        fold = MomentFold()
        fold.add(prepared.values, prepared.valid, rows)
        return _numerical_stats(fold)

    def encode(self, prepared: Prepared, stats: Mapping[str, Any],
               vocab_ids: np.ndarray | None = None) -> EncodedColumn:
        n = len(prepared)
        out = np.empty(n, dtype=np.float32)
        valid = np.empty(n, dtype=np.bool_)
        zscore(prepared.values, prepared.valid.view(np.uint8), float(stats["mean"]),
               float(stats["std"]), n_threads(), out, valid.view(np.uint8))
        return EncodedColumn({"value": out}, valid)

    def column_encoder(self, column_name: str) -> ColumnEncoder:
        return MomentColumn(self, _numerical_stats)

    def value_encoder(self, d_model: int, d_text: int, *,
                      options: Mapping[str, Any] | None = None) -> Any:
        """The z-score's encoder. ``options["numeric_encoding"]`` (the run's
        ``--numeric-encoding``): ``"linear"`` (the default, :class:`~tributary_core.nn.LinearEncoder`:
        Linear, GELU, Linear) or ``"periodic"`` (:class:`~tributary_core.nn.PeriodicEncoder`:
        trainable sin/cos frequencies, Linear, ReLU)."""
        encoding = (options or {}).get("numeric_encoding", "linear")
        if encoding == "periodic":
            from tributary_core.nn import PeriodicEncoder

            return PeriodicEncoder(1, d_model)
        if encoding != "linear":
            raise ValueError(f"numeric_encoding {encoding!r}: expected 'linear' or 'periodic'")
        return super().value_encoder(d_model, d_text)

    def check_encoded(self, prepared: Prepared, stats: Mapping[str, Any],
                      encoded: EncodedColumn) -> str | None:
        """Warn about finite values stored as null because their z-score exceeds float32 (a
        value far outside the statistics window) and about a column whose values collapse onto
        few z-scores because a few extreme values dominate mean and std (checked on an evenly
        spaced sample of :data:`CHECK_SAMPLE` cells)."""
        problems = []
        finite = prepared.valid & np.isfinite(prepared.values)
        lost = int((finite & ~encoded.valid).sum())
        if lost:
            problems.append(f"{lost} value(s) lie so far outside the statistics "
                            f"(mean {stats['mean']:.6g}, std {stats['std']:.6g}) that their "
                            "z-score exceeds float32; stored as null")
        rows = np.flatnonzero(encoded.valid)
        if len(rows) > CHECK_SAMPLE:
            rows = rows[:: len(rows) // CHECK_SAMPLE][:CHECK_SAMPLE]
        raw = np.unique(prepared.values[rows])
        if len(raw) >= 2:
            n_codes = len(np.unique(encoded.arrays["value"][rows]))
            if 2 * n_codes < len(raw):
                biggest = float(np.abs(prepared.values[finite]).max())
                problems.append(f"{len(raw)} distinct values (of a sample) encode to only "
                                f"{n_codes} distinct z-scores: extreme values (largest magnitude "
                                f"{biggest:.3g}) dominate mean and std; clip or transform them")
        return "; ".join(problems) or None

    def decode(self, cell: Mapping[str, Any], stats: Mapping[str, Any],
               vocab_values: Sequence[str]) -> Any:
        # An f32 z-score resolves about 1e-6 of a standard deviation; show no finer digits.
        value = float(cell["value"]) * stats["std"] + stats["mean"]
        digits = int(np.clip(-np.floor(np.log10(stats["std"] * 1e-6)), 0, 12))
        return float(f"{round(value, digits):.7g}")

    def decode_prediction(self, values: np.ndarray, stats: Mapping[str, Any]) -> pa.Array:
        """Predicted z-scores in the column's units: ``z * std + mean`` as float64."""
        return pa.array(np.asarray(values, dtype=np.float64) * float(stats.get("std", 1.0))
                        + float(stats.get("mean", 0.0)))


def _numerical_stats(fold: MomentFold) -> dict[str, Any]:
    count, mean, m2, scale = fold.result()
    # std <= the largest magnitude, so this cannot overflow either
    std = float(np.sqrt(m2 / count)) * scale if count else 0.0
    return {"count": count, "mean": mean * scale, "std": std if std > 0 else 1.0}


class MomentColumn(ColumnEncoder):
    """A column whose statistics are its moments (:class:`MomentFold`), turned into the type's
    statistics by ``stats_of``, and whose cells the type's own ``encode`` gives batch by batch.
    Two passes (numerical: a z-score needs the mean); a subclass whose encoding ignores the
    statistics sets ``one_pass`` (timestamps)."""

    def __init__(self, stype: SemanticType,
                 stats_of: Callable[[MomentFold], dict[str, Any]]) -> None:
        super().__init__()
        self._stype = stype
        self._stats_of = stats_of
        self._fold = MomentFold()

    def fit(self, prepared: Prepared, rows: np.ndarray | None) -> None:
        super().fit(prepared, rows)
        self._fold.add(prepared.values, prepared.valid, rows)

    def stats(self) -> dict[str, Any]:
        return self._stats_of(self._fold)

    def encode(self, prepared: Prepared, stats: Mapping[str, Any] | None,
               vocab: Vocabulary) -> EncodedColumn:
        assert stats is not None or self.one_pass, "a two-pass encoding needs the statistics"
        return self._stype.encode(prepared, stats if stats is not None else {})
