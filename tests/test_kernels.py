"""Every Numba kernel against a plain-Python reference on random inputs (hypothesis),
including NaN, ±inf, empty, single-row and all-null columns."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tributary_plugins.semantic_types._vocab import gather_ids
from tributary_plugins.semantic_types.numerical import moments, zscore
from tributary_plugins.semantic_types.timestamp import PERIODS, TABLES, civil_fields, encode_times

from tributary_core.preprocess.graph import NO_TIME, build_csr

SIZES = st.integers(min_value=0, max_value=300)
settings.register_profile("kernels", max_examples=60, deadline=None)
settings.load_profile("kernels")


@st.composite
def columns(draw):
    n = draw(SIZES)
    values = draw(hnp.arrays(np.float64, n, elements=st.one_of(
        st.sampled_from([math.nan, math.inf, -math.inf]), st.floats(-1e6, 1e6))))
    valid = draw(hnp.arrays(np.bool_, n))
    return values, valid


def reference_moments(values, valid, rows=None):
    xs = [x for i, x in enumerate(values)
          if valid[i] and (rows is None or rows[i]) and math.isfinite(x)]
    if not xs:
        return 0, 0.0, 0.0
    mean = math.fsum(xs) / len(xs)
    return len(xs), mean, math.fsum((x - mean) ** 2 for x in xs)


@given(columns(), st.data())
def test_moments_match_reference(column, data):
    values, valid = column
    rows = data.draw(hnp.arrays(np.bool_, len(values)))
    for use_rows in (False, True):
        count, mean, m2 = moments(values, valid, rows, use_rows)
        ref = reference_moments(values, valid, rows if use_rows else None)
        assert count == ref[0]
        assert math.isclose(mean, ref[1], rel_tol=1e-9, abs_tol=1e-6)
        assert math.isclose(m2, ref[2], rel_tol=1e-7, abs_tol=1e-3)


@given(columns(), st.floats(-1e3, 1e3), st.floats(0.01, 1e3), st.integers(1, 4))
def test_zscore_matches_reference(column, mean, std, n_threads):
    values, valid = column
    before = values.copy()
    out = np.empty(len(values), np.float32)
    ok = np.empty(len(values), np.bool_)
    zscore(values, valid, mean, std, n_threads, out, ok)
    for i, x in enumerate(values):
        expect_ok = bool(valid[i]) and math.isfinite(x)
        assert ok[i] == expect_ok
        expected = np.float32((x - mean) * (1.0 / std)) if expect_ok else np.float32(0)
        assert out[i] == expected
    np.testing.assert_array_equal(values, before)  # inputs untouched


def test_moments_edge_cases():
    empty = np.zeros(0)
    assert moments(empty, np.zeros(0, bool), np.zeros(0, bool), False) == (0, 0.0, 0.0)
    single = np.array([5.0])
    assert moments(single, np.ones(1, bool), np.ones(1, bool), False) == (1, 5.0, 0.0)
    all_null = np.array([np.nan, np.inf, -np.inf, 1.0])
    assert moments(all_null, np.array([True, True, True, False]), all_null > 0, False)[0] == 0


EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def reference_features(us: int, mean: float, std: float) -> list[float]:
    moment = EPOCH + dt.timedelta(microseconds=us)
    parts = [moment.second, moment.minute, moment.hour, moment.weekday(), moment.day - 1,
             moment.month - 1, moment.timetuple().tm_yday - 1]
    out = []
    for f, k in enumerate(parts):
        out += [math.sin(2 * math.pi * k / PERIODS[f]), math.cos(2 * math.pi * k / PERIODS[f])]
    return [*out, (us - mean) / std]


#: Years 1 to 9999, the range Python's datetime can check against.
US_RANGE = st.integers(min_value=-62_135_596_800 * 10**6, max_value=253_402_300_799 * 10**6)


#: Within ~30 years: the kernel tabulates per-day features (the wide range above computes
#: them per cell), so both paths are checked.
US_NARROW = st.integers(min_value=-(10**15), max_value=10**15)


@given(st.one_of(st.lists(US_RANGE, max_size=80), st.lists(US_NARROW, max_size=80)), st.data(),
       st.integers(1, 3))
def test_timestamp_features_match_datetime(us_list, data, n_threads):
    us = np.array(us_list, dtype=np.int64)
    valid = data.draw(hnp.arrays(np.bool_, len(us)))
    mean, std = 1.3e15, 4.0e14
    out = np.empty((len(us), 15), np.float32)
    encode_times(us, valid, mean, std, TABLES, n_threads, out)
    for i, x in enumerate(us_list):
        expected = reference_features(x, mean, std) if valid[i] else [0.0] * 15
        np.testing.assert_allclose(out[i], np.float32(expected), rtol=1e-5, atol=1e-6)


@given(st.one_of(st.lists(US_RANGE, max_size=40), st.lists(US_NARROW, max_size=40)))
def test_sampler_cell_features_equal_the_column_encoding(us_list):
    """The sampler writes a timestamp cell's features from its stored µs (write_features); they
    are bit for bit those of encode_times, which labels, examples and baselines use."""
    from tributary_core.timefeatures import write_features

    us = np.array(us_list, dtype=np.int64)
    mean, std = 1.3e15, 4.0e14
    whole = np.empty((len(us), 15), np.float32)
    encode_times(us, np.ones(len(us), np.bool_), mean, std, TABLES, 1, whole)
    cells = np.full((1, len(us), 15), np.nan, np.float32)
    for i, x in enumerate(us):
        write_features(x, mean, 1.0 / std, TABLES, cells, 0, i)
    np.testing.assert_array_equal(cells[0], whole)


@given(st.integers(min_value=-719_162, max_value=2_932_896))  # years 1 to 9999
def test_civil_fields_match_datetime(days):
    date = dt.date(1970, 1, 1) + dt.timedelta(days=days)
    assert civil_fields(days) == (date.month, date.day, date.timetuple().tm_yday)


@st.composite
def graphs(draw):
    n_parent = draw(st.integers(0, 30))
    n_child = draw(st.integers(0, 400))  # long enough for segments past the insertion-sort cut
    parent = draw(hnp.arrays(np.int32, n_child, elements=st.integers(-1, max(n_parent - 1, -1))))
    timed = draw(st.booleans())
    time = (draw(hnp.arrays(np.int64, n_child, elements=st.integers(-5, 5))) if timed else None)
    if draw(st.booleans()):  # few parents: long segments
        parent = np.where(parent >= 0, parent % 2, -1).astype(np.int32)
    return n_parent, parent, time


@given(graphs(), st.integers(1, 4))
def test_csr_matches_reference(graph, n_threads):
    n_parent, parent, time = graph
    n = len(parent)
    child_time = time if time is not None else np.full(n, NO_TIME, np.int64)
    indptr, children, times = build_csr(parent, child_time, n_parent, n_threads)
    for p in range(n_parent):
        mine = [c for c in range(n) if parent[c] == p]
        mine.sort(key=lambda c: (child_time[c], c))  # by time, ties by row number
        got = children[indptr[p]:indptr[p + 1]].tolist()
        assert got == mine
        assert times[indptr[p]:indptr[p + 1]].tolist() == [int(child_time[c]) for c in mine]
    assert indptr[-1] == (parent >= 0).sum() == len(children)


@given(hnp.arrays(np.int64, st.integers(0, 100), elements=st.integers(0, 9)), st.data())
def test_gather_ids_matches_reference(codes, data):
    valid = data.draw(hnp.arrays(np.bool_, len(codes)))
    ids = data.draw(hnp.arrays(np.uint32, 10, elements=st.integers(0, 2**32 - 1)))
    out = np.empty(len(codes), np.uint32)
    gather_ids(codes, valid, ids, out)
    assert out.tolist() == [int(ids[c]) if v else 0 for c, v in zip(codes, valid, strict=True)]


@given(st.integers(0, 40), st.data())
def test_unique_order_is_the_lexsort(n_anchor, data):
    """Seeds ordered by anchor row, time, label: where each row has one seed at most, one pass
    gives np.lexsort's order; where a row repeats, it gives None (the sort is needed)."""
    from tributary_core.preprocess.pipeline import _unique_order

    unique = data.draw(st.booleans())
    if unique and n_anchor:
        rows = np.asarray(data.draw(st.permutations(range(n_anchor))), dtype=np.int32)
        rows = rows[: data.draw(st.integers(0, n_anchor))]
    else:
        rows = data.draw(hnp.arrays(np.int32, st.integers(0, 60),
                                    elements=st.integers(0, max(n_anchor - 1, 0))))
        if not n_anchor:
            rows = rows[:0]
    obs = data.draw(hnp.arrays(np.int64, len(rows), elements=st.integers(-3, 3)))
    label = data.draw(hnp.arrays(np.int64, len(rows), elements=st.integers(0, 3)))
    got = _unique_order(rows, n_anchor)
    if len(np.unique(rows)) < len(rows):
        assert got is None
    else:
        np.testing.assert_array_equal(got, np.lexsort((label, obs, rows)))
