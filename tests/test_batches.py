"""Columns read, fitted and encoded in row batches (issue 19): the store's bytes do not depend on
the batch size, nor on whether a type encodes in batches at all, and no value column is read
whole."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tributary_plugins.semantic_types.numerical import CHUNK, MomentFold, scaled_moments

from tributary_core import TributaryError, get_registry
from tributary_core.preprocess import preprocess
from tributary_core.semantic_type import SemanticType
from tributary_core.store import open_store
from tributary_core.store.format import FileWriter, StoreFile, write_file

N = 41  # rows of the large table: not a multiple of any batch size tried


def _tables() -> dict[str, pa.Table]:
    rng = np.random.default_rng(7)
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    prefix = "x" * 520  # text values equal in their first 512 characters
    shops = pa.table({
        "shop_id": pa.array([1, 2, 3], pa.int64()),
        "region": ["north", "south", None],
        "opened": pa.array([start, start + dt.timedelta(days=3), None],
                           pa.timestamp("us", tz="UTC")),
    })
    amount = rng.normal(50.0, 20.0, N)
    amount[[3, 17]] = np.nan
    amount[9] = np.inf
    sales = pa.table({
        "sale_id": pa.array(np.arange(N) * 7, pa.int64()),
        "shop_id": pa.array([int(i % 4) + 1 if i % 10 else None for i in range(N)],
                            pa.int64()),  # shop 4 dangles, some null
        "amount": pa.array(amount, pa.float64()),
        "units": pa.array([int(i * 37 % 11) for i in range(N)], pa.int32()),
        "kind": pa.array([["a", "b", "c", None][i % 4] if i < 30 else "d"
                          for i in range(N)]).dictionary_encode(),
        "size": pa.array([i % 3 for i in range(N)], pa.int64()),  # an integer category
        "note": [None if i % 6 == 0 else (prefix + str(i % 3) if i % 2 else f"note {i % 5}")
                 for i in range(N)],
        "paid": ["yes" if i % 3 else ("no" if i % 2 else None) for i in range(N)],
        "at": pa.array([start + dt.timedelta(hours=13 * i) if i % 8 else None for i in range(N)],
                       pa.timestamp("ms", tz="UTC")),
    })
    return {"shops": shops, "sales": sales}


METADATA = {
    "name": "batches",
    "tables": {
        "shops": {
            "primary_key": "shop_id", "temporal_column": "opened",
            "columns": {"shop_id": {"stype": "identifier"}, "region": {"stype": "categorical"},
                        "opened": {"stype": "timestamp"}},
        },
        "sales": {
            "primary_key": "sale_id", "temporal_column": "at",
            "columns": {
                "sale_id": {"stype": "identifier"},
                "shop_id": {"stype": "identifier", "foreign_key": "shops.shop_id"},
                "amount": {"stype": "numerical"}, "units": {"stype": "numerical"},
                "kind": {"stype": "categorical"}, "size": {"stype": "categorical"},
                "note": {"stype": "text"}, "paid": {"stype": "boolean"},
                "at": {"stype": "timestamp"},
            },
        },
    },
    "tasks": {
        "sale_paid": {
            "query": "SELECT sale_id, paid FROM sales",
            "anchor_table": "sales", "anchor_key": "sale_id", "target_column": "paid",
            "target_stype": "boolean", "hidden_columns": ["sales.paid"],
        },
    },
}


@pytest.fixture
def database(tmp_path: Path) -> tuple[Path, Path]:
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, table in _tables().items():
        # small row groups, so batches cross them (and each has its own dictionary)
        pq.write_table(table, raw / f"{name}.parquet", row_group_size=6)
    md = tmp_path / "batches.json"
    md.write_text(json.dumps(METADATA))
    return md, raw


def _files(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("cutoff", [None, "2024-01-10"])
def test_the_store_is_the_same_whatever_the_batch_size(database, tmp_path, monkeypatch, cutoff):
    md, raw = database
    hashing = get_registry().create_embedder("hashing", dimension=16)
    cutoff_us = None
    if cutoff is not None:
        cutoff_us = int(dt.datetime.fromisoformat(cutoff).replace(tzinfo=dt.UTC).timestamp()
                        * 1_000_000)
    stores = {}
    for rows in (1, 3, 8, 1 << 20):
        result = preprocess(md, raw, tmp_path / f"b{rows}", embedder=hashing, batch_rows=rows,
                            stats_cutoff_us=cutoff_us)
        stores[rows] = _files(result.path)
    # every built-in type read whole, through its whole-column methods
    registry = get_registry()
    for name in ("identifier", "numerical", "timestamp", "boolean", "categorical", "text"):
        monkeypatch.setattr(type(registry.semantic_type(name)), "column_encoder",
                            SemanticType.column_encoder)
    whole = preprocess(md, raw, tmp_path / "whole", embedder=hashing, stats_cutoff_us=cutoff_us)
    stores["whole"] = _files(whole.path)
    first = stores[1]
    assert any(rel.startswith("tables/") for rel in first)
    for rows, files in stores.items():
        assert files.keys() == first.keys(), rows
        for rel, data in files.items():
            assert data == first[rel], f"{rel} differs with batches of {rows}"
    assert not any(".spill" in rel for rel in first)  # the scratch files are removed
    store = open_store(whole.path)
    sales = store.tables["sales"]
    note = sales.columns["note"]
    assert note["stats"]["n_distinct"] >= 4  # the two long values cut alike stay two values
    assert sales.columns["amount"]["n_invalid"] == 1  # the inf
    assert sales.columns["amount"]["stats"]["count"] > 0


def test_no_column_is_read_whole(database, tmp_path, monkeypatch):
    """Every column is read in batches: value columns, time columns, integer foreign keys and
    integer primary keys (the last two kept, spilled, for the graph and the tasks)."""
    from tributary_core.preprocess import pipeline

    md, raw = database
    whole: list[str] = []
    read = pipeline._read

    def spy(path, columns):
        whole.extend(f"{path.stem}.{c}" for c in columns)
        return read(path, columns)

    batch_lengths: list[int] = []
    batches = pipeline.column_batches

    def counted(path, column, batch_rows, **options):
        for data in batches(path, column, batch_rows, **options):
            batch_lengths.append(len(data))
            yield data

    monkeypatch.setattr(pipeline, "_read", spy)
    monkeypatch.setattr(pipeline, "column_batches", counted)
    result = preprocess(md, raw, tmp_path / "s",
                        embedder=get_registry().create_embedder("hashing"), batch_rows=4)
    assert whole == []
    assert batch_lengths and max(batch_lengths) <= 4
    # encode: one pass for every type but numerical, which reads its column twice; keys: the
    # primary keys, the time columns twice (row times, and the database-wide timestamp
    # statistics); graph: the foreign key, and again for the warning about its values with no
    # parent row (validation left that to the graph stage)
    assert result.dangling == {"sales.shop_id": 10}
    assert sum(batch_lengths) == N * (9 + 2) + 3 * 3 + (N + 3) + 2 * (N + 3) + N + N


def test_row_times_and_keys_are_kept_in_scratch_files(database, tmp_path):
    """load_keys keeps row times and integer primary keys in memory-mapped scratch files (page
    cache, not the process's own memory), with the values plain arrays would hold."""
    from tributary_core.metadata import load_metadata
    from tributary_core.preprocess import pipeline

    md, raw = database
    db = pipeline._Database.of(load_metadata(md), raw, get_registry())
    quiet = lambda *args, **kwargs: None  # noqa: E731
    plain = pipeline.load_keys(db, None, quiet, batch_rows=4)
    small = pipeline._Spill(tmp_path / "small", tmp_path / "store")  # the default threshold
    pipeline.load_keys(db, None, quiet, batch_rows=4, spill=small)
    assert not (tmp_path / "small").exists()  # 41 rows stay in memory: no file held open
    spill = pipeline._Spill(tmp_path / "spill", tmp_path / "store", min_bytes=0)
    spilled = pipeline.load_keys(db, None, quiet, batch_rows=4, spill=spill)
    files = sorted((tmp_path / "spill").iterdir())
    assert len(files) == 4  # two tables: row times and primary keys
    for table in ("shops", "sales"):
        for address in (spilled.times[table].ctypes.data,
                        spilled.primary_keys[table].buffers()[1].address):
            assert _mapped_file(address) in files
        np.testing.assert_array_equal(spilled.times[table], plain.times[table])
        key = pq.read_table(raw / f"{table}.parquet").column(f"{table[:-1]}_id")
        assert spilled.primary_keys[table].to_pylist() == key.to_pylist()
        assert plain.primary_keys[table].to_pylist() == key.to_pylist()
    at = dt.datetime(2024, 1, 1, 13, tzinfo=dt.UTC)
    assert spilled.times["sales"][1] == int(at.timestamp()) * 1_000_000  # row 0's time is null
    spill.remove()
    assert not (tmp_path / "spill").exists()
    assert spilled.times["sales"][1] == int(at.timestamp()) * 1_000_000  # mapped, still readable


def _mapped_file(address: int) -> Path | None:
    """The file mapped at ``address`` in this process (Linux /proc/self/maps), if any."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if lo <= address < hi:
            return Path(fields[5]) if len(fields) == 6 and fields[5].startswith("/") else None
    return None


def test_no_scratch_space_is_one_line_and_leaves_nothing(database, tmp_path, monkeypatch):
    import errno
    import os

    from tributary_core.preprocess import pipeline

    md, raw = database
    out = tmp_path / "out"
    out.mkdir()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pipeline, "SPILL_MIN_BYTES", 0)
    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    with pytest.raises(TributaryError, match=r"^\S*out/s: cannot keep \d+ bytes of row times or "
                                             r"keys in a scratch file: No space left"):
        preprocess(md, raw, out / "s", embedder=get_registry().create_embedder("hashing"))
    assert list(out.iterdir()) == []


def test_space_is_reserved_by_writing_zeros_where_fallocate_is_not_supported(tmp_path,
                                                                           monkeypatch):
    import errno
    import os

    from tributary_core.store import format as store_format

    def unsupported(*args, **kwargs):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(os, "posix_fallocate", unsupported, raising=False)
    monkeypatch.setattr(store_format, "_ZEROS", 7)  # several writes, the last one short
    path = tmp_path / "r.bin"
    path.write_bytes(b"abc")
    with open(path, "r+b") as f:
        store_format.reserve_bytes(f.fileno(), 5, 30)
    assert path.read_bytes() == b"abc" + bytes(32)  # the hole before the range reads as zeros
    with FileWriter(tmp_path / "m.bin", "graph") as out:  # and a mapped section works on it
        section = out.map_section("m", np.int64, (9,))
        section.array[:] = np.arange(9)
        section.finish()
        out.close()
    np.testing.assert_array_equal(StoreFile(tmp_path / "m.bin").array("m"), np.arange(9))


def test_a_string_foreign_key_is_matched_in_batches_when_its_parent_is_small(tmp_path,
                                                                           monkeypatch):
    """String keys: Arrow rebuilds its hash table for every lookup, so a string foreign key is
    matched batch by batch only against a parent with few keys per batch row; the graph and
    the validation warning are the same either way."""
    from tributary_core import keys as keys_module
    from tributary_core.preprocess import pipeline

    raw = tmp_path / "raw"
    raw.mkdir()
    pq.write_table(pa.table({"code": ["aa", "bb", "cc"], "name": ["A", "B", "C"]}),
                   raw / "carriers.parquet")
    codes = [["aa", "bb", "cc", "zz", None][i % 5] for i in range(N)]  # zz dangles
    pq.write_table(pa.table({"id": np.arange(N), "carrier": codes,
                             "x": np.arange(N) * 0.5}), raw / "flights.parquet",
                   row_group_size=6)
    md = tmp_path / "md.json"
    md.write_text(json.dumps({"name": "s", "tables": {
        "carriers": {"primary_key": "code", "columns": {
            "code": {"stype": "identifier"}, "name": {"stype": "categorical"}}},
        "flights": {"primary_key": "id", "columns": {
            "id": {"stype": "identifier"}, "x": {"stype": "numerical"},
            "carrier": {"stype": "identifier", "foreign_key": "carriers.code"}}}}}))
    hashing = get_registry().create_embedder("hashing")
    whole: list[str] = []
    read = pipeline._read

    def spy(path, columns):
        whole.extend(f"{path.stem}.{c}" for c in columns)
        return read(path, columns)

    monkeypatch.setattr(pipeline, "_read", spy)
    graphs, warnings = {}, {}
    for per_row, rows in ((0.0, 4), (1.0, 4), (1.0, 1)):  # never; 3 keys <= 4 rows; 3 > 1
        monkeypatch.setattr(keys_module, "STRING_KEYS_PER_ROW", per_row)
        whole.clear()
        result = preprocess(md, raw, tmp_path / f"s{per_row}-{rows}", embedder=hashing,
                            batch_rows=rows)
        graphs[(per_row, rows)] = (result.path / "graph.bin").read_bytes()
        warnings[(per_row, rows)] = [w for w in result.warnings if "carrier" in w]
        batched = per_row * rows >= 3
        assert ("flights.carrier" in whole) is not batched, (per_row, rows, whole)
    assert len(set(graphs.values())) == 1
    assert len({tuple(w) for w in warnings.values()}) == 1
    assert "have no row in carriers.code" in warnings[(1.0, 4)][0]
    assert result.dangling["flights.carrier"] == 8 and result.null_keys["flights.carrier"] == 8


def test_a_warning_from_a_batch_names_its_rows(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    values = np.arange(40, dtype=np.float64)
    values[25] = 1e300  # dominates mean and std: the others collapse onto one z-score
    pq.write_table(pa.table({"id": np.arange(40), "x": values}), raw / "t.parquet")
    md = tmp_path / "md.json"
    md.write_text(json.dumps({"name": "w", "tables": {"t": {"primary_key": "id", "columns": {
        "id": {"stype": "identifier"}, "x": {"stype": "numerical"}}}}}))
    hashing = get_registry().create_embedder("hashing")
    one = preprocess(md, raw, tmp_path / "one", embedder=hashing)
    many = preprocess(md, raw, tmp_path / "many", embedder=hashing, batch_rows=16)
    assert [w for w in one.warnings if "t.x" in w and "dominate" in w]
    found = [w for w in many.warnings if w.startswith("t.x: in rows ")]
    assert len(found) == 1 and "dominate mean and std" in found[0]
    assert "more batch(es) of 16 rows warn likewise" in found[0]


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_a_bad_batch_size_is_refused(database, tmp_path, bad):
    md, raw = database
    with pytest.raises(TributaryError, match="--batch-rows: must be a whole number"):
        preprocess(md, raw, tmp_path / "s", embedder=get_registry().create_embedder("hashing"),
                   batch_rows=bad)
    assert not (tmp_path / "s").exists()


def test_validation_checks_values_batch_by_batch_and_names_the_rows(tmp_path, monkeypatch):
    from tributary_core.metadata import validate, validate_metadata

    monkeypatch.setattr(validate, "CHECK_BATCH_ROWS", 4)
    raw = tmp_path / "raw"
    raw.mkdir()
    times = [f"2024-01-{d:02d}" for d in range(1, 11)]
    times[6] = "not a time"
    pq.write_table(pa.table({"id": list(range(10)), "t": times}), raw / "t.parquet")
    md = {"name": "v", "tables": {"t": {"primary_key": "id", "columns": {
        "id": {"stype": "identifier"}, "t": {"stype": "timestamp"}}}}}
    md_file = tmp_path / "md.json"
    md_file.write_text(json.dumps(md))
    report = validate_metadata(md_file, raw_dir=raw)
    errors = [str(p) for p in report.errors]
    assert len(errors) == 1
    assert "column 't' is not timestamp: in rows 4-7, 1 value(s) are not a time" in errors[0]
    assert "'not a time'" in errors[0]


# -- the pieces underneath ---------------------------------------------------------------------


def test_a_section_written_in_pieces_is_the_section_written_whole(tmp_path):
    rng = np.random.default_rng(3)
    arrays = {
        "f": rng.normal(size=(37, 3)).astype(np.float32),
        "bits": rng.random(37) > 0.5,
        "i": rng.integers(-9, 9, 37),
        "empty": np.zeros(0, np.uint32),
        "after": np.arange(5, dtype=np.int16),
    }
    write_file(tmp_path / "whole.bin", "table", arrays, {"k": 1})
    with FileWriter(tmp_path / "pieces.bin", "table", reserve=4096) as out:
        sinks = {name: out.begin_section(name, arr.dtype, arr.shape)
                 for name, arr in arrays.items() if name != "after"}
        cuts = [0, 1, 4, 11, 12, 30, 37]  # pieces of 1, 3, 7, 1, 18 and 7 rows
        for lo, hi in zip(cuts, cuts[1:], strict=False):
            for name, sink in sinks.items():
                if name != "empty":
                    sink.write(arrays[name][lo:hi])
        for sink in sinks.values():
            sink.finish()
        out.add("after", arrays["after"])
        out.close({"k": 1})
    assert (tmp_path / "pieces.bin").read_bytes() == (tmp_path / "whole.bin").read_bytes()
    StoreFile(tmp_path / "pieces.bin").verify()


def test_a_section_short_or_long_of_its_shape_removes_the_file(tmp_path):
    path = tmp_path / "t.bin"
    out = FileWriter(path, "table")
    sink = out.begin_section("v", np.float32, (10,))
    sink.write(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"section 'v' of shape \(10,\) needs 40 bytes, its "
                                         r"pieces gave 16"):
        sink.finish()
    assert not path.exists()
    out = FileWriter(path, "table")
    sink = out.begin_section("v", np.bool_, (10,))
    with pytest.raises(ValueError, match="holds 2 bytes; its pieces give more"):
        sink.write(np.ones(24, np.bool_))
    assert not path.exists()
    out = FileWriter(path, "table")
    out.begin_section("v", np.int64, (3,))
    with pytest.raises(ValueError, match="section\\(s\\) v begun but not written to their end"):
        out.close()
    assert not path.exists()


def test_a_mapped_section_is_the_section_written_whole(tmp_path):
    """Sections filled in place through a map, in any order, before and after sections added
    and written in pieces, give write_file's bytes; a header that outgrows its reserve moves
    them like any other."""
    rng = np.random.default_rng(5)
    arrays = {
        "a": np.arange(3, dtype=np.int64),
        "m": rng.integers(-99, 99, (41, 2)).astype(np.int32),
        "p": rng.normal(size=19),
        "empty": np.zeros(0, np.int64),
        "z": rng.integers(0, 9, 7).astype(np.uint16),
    }
    for reserve in (4096, 8):
        write_file(tmp_path / "whole.bin", "graph", arrays, {"k": 2})
        with FileWriter(tmp_path / "mapped.bin", "graph", reserve=reserve) as out:
            out.add("a", arrays["a"])
            mapped = out.map_section("m", np.int32, (41, 2))
            piece = out.begin_section("p", np.float64, (19,))
            empty = out.map_section("empty", np.int64, (0,))
            for row in rng.permutation(41):  # any order
                mapped.array[row] = arrays["m"][row]
            piece.write(arrays["p"])
            piece.finish()
            mapped.finish()
            empty.finish()
            out.add("z", arrays["z"])
            out.close({"k": 2})
        if reserve == 4096:  # write_file's own reserve: the very same bytes
            assert (tmp_path / "mapped.bin").read_bytes() == (tmp_path / "whole.bin").read_bytes()
        got = StoreFile(tmp_path / "mapped.bin")
        got.verify()  # the checksums recorded through the map are the bytes' (moved or not)
        for name, arr in arrays.items():
            np.testing.assert_array_equal(got.array(name), arr)


def test_a_mapped_section_on_a_full_disk_or_left_unfinished_removes_the_file(tmp_path,
                                                                             monkeypatch):
    import errno
    import os

    path = tmp_path / "g.bin"
    out = FileWriter(path, "graph")
    out.map_section("m", np.int32, (4,))
    with pytest.raises(ValueError, match="section\\(s\\) m begun but not written to their end"):
        out.close()
    assert not path.exists()
    with pytest.raises(ValueError, match="cannot map a section of bool"):
        FileWriter(path, "graph").map_section("b", np.bool_, (4,))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    monkeypatch.setattr(os, "ftruncate", full)
    out = FileWriter(path, "graph")
    out.add("a", np.arange(3))
    with pytest.raises(OSError, match="No space left"):
        out.map_section("m", np.int32, (1000,))
    assert not path.exists()


def test_moments_do_not_depend_on_how_the_column_is_split():
    rng = np.random.default_rng(11)
    n = 3 * CHUNK + 1234
    values = rng.normal(1e6, 3.0, n)
    values[rng.integers(0, n, 50)] = np.nan
    valid = rng.random(n) > 0.05
    rows = rng.random(n) > 0.3
    for window in (None, rows):
        whole = MomentFold()
        whole.add(values, valid, window)
        expected = whole.result()
        for _ in range(5):
            cuts = np.unique(np.concatenate([[0, n], rng.integers(0, n, 7)]))
            fold = MomentFold()
            for lo, hi in zip(cuts, cuts[1:], strict=False):
                fold.add(values[lo:hi], valid[lo:hi], None if window is None else window[lo:hi])
            assert fold.result() == expected
        count, mean, m2, scale = expected
        keep = valid & np.isfinite(values) & (True if window is None else window)
        assert count == keep.sum()
        np.testing.assert_allclose(mean * scale, values[keep].mean(), rtol=1e-14)
        np.testing.assert_allclose(m2 * scale * scale, ((values[keep] - values[keep].mean())
                                                        ** 2).sum(), rtol=1e-9)
        # the same numbers as the three-pass kernel, to rounding
        c3, m3, s3, sc3 = scaled_moments(values, valid, valid if window is None else window,
                                         window is not None)
        assert c3 == count
        np.testing.assert_allclose(m3 * sc3, mean * scale, rtol=1e-14)


def test_moments_of_huge_values_stay_finite():
    values = np.array([1.7e308, -1.6e308, 1e308] * 30000)
    fold = MomentFold()
    fold.add(values[:12345], np.ones(12345, bool), None)
    fold.add(values[12345:], np.ones(len(values) - 12345, bool), None)
    count, mean, m2, scale = fold.result()
    assert count == len(values) and np.isfinite(mean * scale) and np.isfinite(m2)
    std = np.sqrt(m2 / count) * scale
    assert np.isfinite(std) and 1e308 < std < 1.8e308


def test_the_cli_takes_batch_rows(database, tmp_path):
    from click.testing import CliRunner

    from tributary_core.cli import cli

    md, raw = database
    base = ["run", "preprocess", "--db", "batches", "--metadata", str(md), "--raw", str(raw),
            "--embedder", "hashing", "--dimension", "16"]
    done = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "a"), "--batch-rows", "5"])
    assert done.exit_code == 0, done.output
    default = preprocess(md, raw, tmp_path / "b",
                         embedder=get_registry().create_embedder("hashing", dimension=16))
    assert _files(tmp_path / "a") == _files(default.path)
    bad = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "c"), "--batch-rows", "0"])
    assert bad.exit_code == 2 and "--batch-rows" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("layout", ["dense", "sparse", "strings", "empty", "negative"])
def test_a_key_index_matches_as_match_keys_batch_by_batch(layout):
    from tributary_core.keys import KeyIndex, match_keys

    rng = np.random.default_rng(5)
    if layout == "dense":
        parent = pa.array(rng.permutation(np.arange(100, 600)), pa.int64())
    elif layout == "sparse":
        parent = pa.array(rng.choice(2**40, 300, replace=False) - 2**39, pa.int64())
    elif layout == "negative":
        parent = pa.array(np.arange(-50, 50)[::-1], pa.int32())
    elif layout == "strings":
        parent = pa.array([f"k{i}" for i in rng.permutation(200)])
    else:
        parent = pa.array([], pa.int64())
    keys = parent.to_pylist()
    picks = [keys[i] for i in rng.integers(0, len(keys), 900)] if keys else [1] * 900
    child = [None if i % 13 == 0 else (-7 if i % 17 == 0 and layout != "strings" else v)
             for i, v in enumerate(picks)]
    child[5] = "nope" if layout == "strings" else 2**62  # dangling, beyond every span
    child_array = pa.array(child, pa.string() if layout == "strings" else pa.int64())
    expected = match_keys(child_array, parent)
    index = KeyIndex(parent)
    for size in (1, 7, 900):
        got = index.match([child_array.slice(lo, size) for lo in range(0, 900, size)], 900)
        np.testing.assert_array_equal(got.rows, expected.rows)
        assert (got.n_null, got.n_dangling, got.example_dangling) == \
            (expected.n_null, expected.n_dangling, expected.example_dangling)
    assert expected.n_dangling >= 1 and expected.n_null >= 1
    with pytest.raises(ValueError, match="not the 901 announced"):
        index.match([child_array], 901)
    out = np.full(900, 12345, np.int32)  # rows written into a given array (a mapped section)
    got = index.match([child_array.slice(0, 400), child_array.slice(400)], 900, out=out)
    assert got.rows is out
    np.testing.assert_array_equal(out, expected.rows)
    with pytest.raises(ValueError, match=r"out must be int32 of shape \(900,\)"):
        index.match([child_array], 900, out=np.zeros(900, np.int64))


@pytest.mark.parametrize("with_null", [False, True])
def test_a_key_index_built_in_pieces_keeps_a_repeated_keys_first_row(monkeypatch, with_null):
    from tributary_core import keys as keys_module
    from tributary_core.keys import KeyIndex, match_keys

    monkeypatch.setattr(keys_module, "_PIECE", 2)
    parent = pa.array([5, 3, None if with_null else 8, 5, 9, 3, 5], pa.int64())
    child = pa.array([5, 3, 9, 8, 4, None], pa.int64())
    got = KeyIndex(parent).match([child], 6)
    # (a null child matches nothing; Arrow's lookup would match it to a null parent key)
    np.testing.assert_array_equal(got.rows[:5], match_keys(child, parent).rows[:5])
    assert got.rows.tolist() == [0, 1, 4, -1 if with_null else 2, -1, -1]


@pytest.mark.parametrize("layout", ["dense", "sparse", "nulls", "strings", "unique", "empty"])
def test_key_repeats_are_what_value_counts_finds(monkeypatch, layout):
    """A primary key's uniqueness check: the number of repeated values and the first of them,
    as Arrow's value_counts gives them (in pieces of 3 keys, so repeats cross pieces)."""
    import pyarrow.compute as pc

    from tributary_core import keys as keys_module
    from tributary_core.keys import KeyIndex

    monkeypatch.setattr(keys_module, "_PIECE", 3)
    rng = np.random.default_rng(9)
    values: list = [int(v) for v in rng.integers(0, 40, 60)]
    if layout == "sparse":
        values = [v * 2**35 - 2**36 for v in values]
    elif layout == "nulls":
        values = [None if i % 7 == 0 else v for i, v in enumerate(values)]
    elif layout == "strings":
        values = [f"s{v}" for v in values]
    elif layout == "unique":
        values = [int(v) for v in rng.permutation(60)]
    elif layout == "empty":
        values = []
    keys = pa.array(values, pa.string() if layout == "strings" else pa.int64())
    counts = pc.value_counts(keys.drop_null())
    dupes = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    expected = (len(dupes), dupes[0].as_py() if len(dupes) else None)
    assert KeyIndex(keys).repeats() == expected
    assert (expected[0] > 0) == (layout not in ("unique", "empty"))


def test_validation_finds_dangling_keys_across_batches(tmp_path, monkeypatch):
    from tributary_core.metadata import validate, validate_metadata

    raw = tmp_path / "raw"
    raw.mkdir()
    pq.write_table(pa.table({"id": pa.array([1, 2, 3], pa.int32())}), raw / "p.parquet")
    refs = [1, 2, 99, None, 3, 1, 2, 98, 3, 99, None, 1]  # 99 twice and 98: 3 values, 2 distinct
    pq.write_table(pa.table({"cid": list(range(12)), "ref": pa.array(refs, pa.int64())}),
                   raw / "c.parquet")
    md = tmp_path / "md.json"
    md.write_text(json.dumps({"name": "fk", "tables": {
        "p": {"primary_key": "id", "columns": {"id": {"stype": "identifier"}}},
        "c": {"primary_key": "cid", "columns": {
            "cid": {"stype": "identifier"},
            "ref": {"stype": "identifier", "foreign_key": "p.id"}}}}}))
    warnings = {}
    for rows in (1 << 20, 5, 1):
        monkeypatch.setattr(validate, "CHECK_BATCH_ROWS", rows)
        report = validate_metadata(md, raw_dir=raw)
        assert report.ok
        warnings[rows] = [str(p) for p in report.warnings]
    assert warnings[5] == warnings[1] == warnings[1 << 20]
    assert len(warnings[1]) == 1
    assert "3 value(s) (2 distinct) of c.ref have no row in p.id, e.g. 99" in warnings[1][0]
    # preprocessing's validation leaves the values to the graph stage, which warns alike
    assert validate_metadata(md, raw_dir=raw, foreign_key_values=False).warnings == []
    # ... but still reads them as keys: a uint64 past int64 is an error either way, and
    # preprocessing stops with it before anything is written
    pq.write_table(pa.table({"cid": list(range(3)),
                             "ref": pa.array([1, 2**64 - 1, 2], pa.uint64())}), raw / "c.parquet")
    for values in (True, False):
        report = validate_metadata(md, raw_dir=raw, foreign_key_values=values)
        assert [p.path for p in report.errors] == ["$.tables.c"], values
    with pytest.raises(TributaryError, match="18446744073709551615"):
        preprocess(md, raw, tmp_path / "bad", embedder=get_registry().create_embedder("hashing"))
    assert not (tmp_path / "bad").exists()
    pq.write_table(pa.table({"cid": list(range(12)), "ref": pa.array(refs, pa.int64())}),
                   raw / "c.parquet")
    for rows in (1 << 20, 5, 1):
        result = preprocess(md, raw, tmp_path / f"s{rows}", batch_rows=rows,
                            embedder=get_registry().create_embedder("hashing", dimension=8))
        assert [w for w in result.warnings if "no row in" in w] == warnings[1], rows
