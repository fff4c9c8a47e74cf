"""Contract checks over every built-in semantic type: shapes, determinism, inputs untouched,
empty / single-row / all-null columns, and decode(encode(x)) == x."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from tributary_core import get_registry
from tributary_core.semantic_type import Vocabulary

UTC = dt.timezone.utc
SAMPLES = {
    "identifier": pa.array(["a", None, "c"]),
    "numerical": pa.array([1.5, None, -3.25]),
    "timestamp": pa.array([dt.datetime(2020, 2, 29, 23, 59, 58, tzinfo=UTC), None,
                           dt.datetime(1969, 7, 20, 20, 17, 40, tzinfo=UTC)],
                          pa.timestamp("ms", tz="UTC")),
    "boolean": pa.array([True, None, False]),
    "categorical": pa.array(["x", None, "y"]),
    "text": pa.array(["hello world", None, "x" * 600]),
}
EXPECTED = {
    "identifier": ["(present)", None, "(present)"],
    "numerical": [1.5, None, -3.25],
    "timestamp": ["2020-02-29T23:59:58+00:00", None, "1969-07-20T20:17:40+00:00"],
    "boolean": [True, None, False],
    "categorical": ["x", None, "y"],
    "text": ["hello world", None, "x" * 512],  # long text is cut
}
FIELDS = {"identifier": {}, "numerical": {"value": ((), np.float32)},
          "timestamp": {"value": ((), np.int64)}, "boolean": {"value": ((), np.bool_)},
          "categorical": {"index": ((), np.uint32)}, "text": {"index": ((), np.uint32)}}


def run(name: str, arr: pa.Array):
    stype = get_registry().semantic_type(name)
    column = pa.chunked_array([arr], type=arr.type)
    prepared = stype.prepare(column)
    stats = stype.fit(prepared)
    combined = stype.combine([stats])
    if combined is not None:
        stats["database"] = combined
    vocab = Vocabulary()
    texts = stype.vocabulary(prepared, "col")
    ids = vocab.add(*texts) if texts is not None else None
    return stype, stats, vocab, stype.encode(prepared, stats, ids)


@pytest.mark.parametrize("name", list(SAMPLES))
def test_roundtrip_shapes_and_purity(name):
    arr = SAMPLES[name]
    snapshot = arr.to_pylist()
    stype, stats, vocab, enc = run(name, arr)
    assert arr.to_pylist() == snapshot
    assert set(enc.arrays) == set(FIELDS[name])
    for field, (shape, dtype) in FIELDS[name].items():
        assert enc.arrays[field].shape == (3, *shape) and enc.arrays[field].dtype == dtype
    assert enc.valid.tolist() == [True, False, True]
    decoded = [stype.decode({f: a[i] for f, a in enc.arrays.items()}, stats, vocab.values)
               if enc.valid[i] else None for i in range(3)]
    assert decoded == EXPECTED[name]
    again = run(name, arr)[3]
    for field in enc.arrays:
        np.testing.assert_array_equal(enc.arrays[field], again.arrays[field])


@pytest.mark.parametrize("name", list(SAMPLES))
@pytest.mark.parametrize("arr", [
    pytest.param(lambda t: pa.array([], t), id="empty"),
    pytest.param(lambda t: pa.array([None, None], t), id="all-null"),
    pytest.param(lambda t: pa.array([None, None], pa.null()), id="null-type"),
])
def test_degenerate_columns(name, arr):
    column = arr(SAMPLES[name].type)
    _, stats, _, enc = run(name, column)
    assert not enc.valid.any() and len(enc.valid) == len(column)
    for value in stats.values():
        assert value is None or isinstance(value, (int, float, str, dict))


def test_single_row_numerical_has_unit_std():
    _, stats, _, enc = run("numerical", pa.array([7.0]))
    assert stats == {"count": 1, "mean": 7.0, "std": 1.0}
    assert enc.arrays["value"].tolist() == [0.0]


@pytest.mark.parametrize("arr", [
    pa.array(["2020-02-29 23:59:58", None, "1969-07-20T20:17:40Z"]),
    pa.array([dt.datetime(2020, 2, 29, 23, 59, 58), None, dt.datetime(1969, 7, 20, 20, 17, 40)],
             pa.timestamp("ns")),
    # The same instants held in another zone: features are always taken in UTC.
    SAMPLES["timestamp"].cast(pa.timestamp("s", tz="+01:00")),
    pa.array(["2020-03-01T00:59:58+01:00", None, "1969-07-20 15:17:40-05:00"]),
], ids=["iso-strings", "ns-naive", "s-offset-zone", "iso-offsets"])
def test_timestamp_sources_agree(arr):
    expected = run("timestamp", SAMPLES["timestamp"])[3].arrays["value"]
    got = run("timestamp", arr)[3].arrays["value"]
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kind", [pa.date32(), pa.date64()])
def test_dates(kind):
    stype, stats, vocab, enc = run("timestamp", pa.array([dt.date(2024, 2, 29)], kind))
    assert stype.decode({"value": enc.arrays["value"][0]}, stats, vocab.values) == \
        "2024-02-29T00:00:00+00:00"


def test_boolean_sources():
    for arr in (pa.array([1, 0, None, 2], pa.int8()), pa.array(["Y", " no ", None, "maybe"])):
        _, _, _, enc = run("boolean", arr)
        assert enc.arrays["value"].tolist() == [True, False, False, False]
        assert enc.valid.tolist() == [True, True, False, False]


def test_categorical_numbers_and_shared_vocabulary():
    stype = get_registry().semantic_type("categorical")
    vocab = Vocabulary()
    a = stype.prepare(pa.chunked_array([pa.array([3, 1, 3])]))
    b = stype.prepare(pa.chunked_array([pa.array(["3", "9"])]))
    ids_a = vocab.add(*stype.vocabulary(a, "rank"))
    ids_b = vocab.add(*stype.vocabulary(b, "rank"))
    assert vocab.texts == ["rank is 3", "rank is 1", "rank is 9"]
    assert stype.encode(a, {}, ids_a).arrays["index"].tolist() == [0, 1, 0]
    assert stype.encode(b, {}, ids_b).arrays["index"].tolist() == [0, 2]


@pytest.mark.parametrize("name", ["numerical", "timestamp"])
def test_decode_prediction_agrees_with_decode(name):
    """A perfect regression prediction (the stored value, the last of the slot's values) shows
    the value ``decode`` reads from the cell; and the sample's labels read back the same."""
    stype, stats, vocab, enc = run(name, SAMPLES[name])
    rows = np.flatnonzero(enc.valid)
    stored = enc.arrays["value"][rows]
    if name == "timestamp":  # the head predicts the epoch feature the sampler computes
        from tributary_core.timefeatures import features

        stored = features(stored, None, stats)[:, -1]
    shown = stype.decode_prediction(stored, stats).to_pylist()
    cells = [stype.decode({"value": enc.arrays["value"][i]}, stats, vocab.values) for i in rows]
    labels = stype.label_values(SAMPLES[name].to_pylist())
    if name == "numerical":
        assert np.allclose(shown, cells) and labels[rows].tolist() == cells
    else:  # the f32 epoch feature alone places the time within seconds, decode to the second
        got = [dt.datetime.fromisoformat(s).replace(tzinfo=UTC) for s in shown]
        want = [dt.datetime.fromisoformat(s) for s in cells]
        assert all(abs((g - w).total_seconds()) < 300 for g, w in zip(got, want, strict=True))
        assert [dt.datetime.fromtimestamp(u / 1e6, UTC) for u in labels[rows]] == want
    assert np.isnan(labels[~enc.valid]).all()


@pytest.mark.parametrize("chunks", [
    [[1.5, None, 3.0], [], [float("nan"), 4.0]],
    [[None, None], [2.0]],
    [],
], ids=["mixed", "nulls first", "no chunks"])
@pytest.mark.parametrize("arrow_type", [pa.float64(), pa.decimal128(12, 2), pa.float32()])
def test_numbers_read_chunk_by_chunk_equal_the_combined_column(chunks, arrow_type):
    """A parquet column read whole arrives in one chunk per row group; converting it chunk by
    chunk (no combined copy) gives the values and validity the combined column gives."""
    from decimal import Decimal

    from tributary_plugins.semantic_types.numerical import to_float64

    def cast(v):
        if v is None or not pa.types.is_decimal(arrow_type):
            return v
        return None if v != v else Decimal(str(v))  # decimals have no NaN

    column = pa.chunked_array([pa.array([cast(v) for v in c], type=arrow_type) for c in chunks],
                              type=arrow_type)
    values, valid = to_float64(column)
    flat = [cast(v) for c in chunks for v in c]
    expect_valid = [v is not None and float(v) == float(v) for v in flat]
    assert valid.tolist() == expect_valid
    assert values[valid].tolist() == [float(v) for v, ok in zip(flat, expect_valid, strict=True) if ok]
    assert not values[[v is None for v in flat]].any()  # nulls read as 0 (NaN stays, invalid)
    combined = to_float64(column.combine_chunks())
    np.testing.assert_array_equal(values, combined[0])
    np.testing.assert_array_equal(valid, combined[1])


@pytest.mark.parametrize("name", ["categorical", "text"])
def test_distinct_values_of_a_chunked_column_equal_the_combined_columns(name):
    """Dictionary-encoding a chunked string column chunk by chunk gives the distinct values (in
    order of first occurrence), codes and validity of the same column in one chunk; a
    dictionary-typed column too."""
    st = get_registry().semantic_type(name)
    chunks = [["b", None, "a"], [], ["c", "b", None, "d"], ["a"]]
    column = pa.chunked_array([pa.array(c, type=pa.string()) for c in chunks], type=pa.string())
    got = st.prepare(column)
    one = st.prepare(pa.chunked_array([column.combine_chunks()]))
    assert got.extra["uniques"] == one.extra["uniques"] == ["b", "a", "c", "d"]
    np.testing.assert_array_equal(got.values, one.values)
    assert got.values.tolist() == [0, 0, 1, 2, 0, 0, 3, 1]
    assert got.valid.tolist() == [True, False, True, True, True, False, True, True]
    dictionary = pa.chunked_array([pa.array(c, type=pa.string()).dictionary_encode()
                                   for c in chunks if c])
    as_dict = st.prepare(dictionary)
    assert as_dict.extra["uniques"] == ["b", "a", "c", "d"]
    np.testing.assert_array_equal(as_dict.values, got.values)
    empty = st.prepare(pa.chunked_array([], type=pa.string()))
    assert empty.extra["uniques"] == [] and len(empty.values) == 0


def _coded(indices, dictionary):
    return pa.DictionaryArray.from_arrays(pa.array(indices, type=pa.int32()),
                                          pa.array(dictionary, type=pa.string()))


@pytest.mark.parametrize("name", ["categorical", "text"])
def test_distinct_of_dictionary_batches_numbers_the_values_not_the_dictionary(name):
    """A batch read with the parquet file's dictionary pages is numbered through its codes,
    with the result the decoded strings give: only the values used, in order of first use,
    whatever the dictionaries' order, unused entries, repeated values or per-chunk
    dictionaries; null cells are null, also where a dictionary entry is null."""
    st = get_registry().semantic_type(name)
    column = pa.chunked_array([
        _coded([2, None, 0, 3], ["a", "zz-unused", "b", "b"]),  # "b" twice, both used
        _coded([], ["q"]),
        _coded([1, 0, 1], ["c", "a"]),
    ])
    decoded = pa.chunked_array([column.cast(pa.string()).combine_chunks()])
    got, plain = st.prepare(column), st.prepare(decoded)
    assert got.extra["uniques"] == plain.extra["uniques"] == ["b", "a", "c"]
    assert got.values.tolist() == plain.values.tolist() == [0, 0, 1, 0, 1, 2, 1]
    assert got.valid.tolist() == plain.valid.tolist() == [True, False, True, True, True, True,
                                                          True]
    null_entry = pa.chunked_array([_coded([0, 1, 0], ["x", None])])
    got = st.prepare(null_entry)
    assert got.extra["uniques"] == ["x"] and got.valid.tolist() == [True, False, True]
    assert got.values.tolist() == [0, 0, 0]
    all_null = st.prepare(pa.chunked_array([_coded([None, None], [])]))  # an all-null row group
    assert all_null.extra["uniques"] == [] and all_null.valid.tolist() == [False, False]
    assert all_null.values.tolist() == [0, 0]


def test_column_batches_keep_the_dictionary_of_string_columns_only(tmp_path):
    """column_batches(dictionary=True) gives a string column as dictionary batches (the file's
    dictionary pages) where every row group fits in a batch, any other column as stored; the
    values are the same. Only categorical asks for it (free text rarely repeats)."""
    import pyarrow.parquet as pq

    from tributary_core.metadata.validate import column_batches

    table = pa.table({"s": pa.array(["x", "y", None, "x"] * 50), "n": pa.array(range(200))})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=64)
    coded = list(column_batches(tmp_path / "t.parquet", "s", 80, dictionary=True))
    assert all(pa.types.is_dictionary(b.type) for b in coded)
    assert pa.chunked_array([c for b in coded for c in b.cast(pa.string()).chunks]).to_pylist() \
        == table.column("s").to_pylist()
    numbers = list(column_batches(tmp_path / "t.parquet", "n", 80, dictionary=True))
    assert all(pa.types.is_integer(b.type) for b in numbers)
    assert not any(pa.types.is_dictionary(b.type)
                   for b in column_batches(tmp_path / "t.parquet", "s", 80))
    # batches smaller than a row group (64 rows): plain, each batch would carry its group's
    # whole dictionary
    assert not any(pa.types.is_dictionary(b.type)
                   for b in column_batches(tmp_path / "t.parquet", "s", 63, dictionary=True))
    registry = get_registry()
    assert registry.semantic_type("categorical").reads_dictionary
    assert not registry.semantic_type("text").reads_dictionary
