"""Issue 15, "Trust": statistics that cannot overflow, task SQL with a time limit and Ctrl-C,
unusable labels refused, an edited store refused, byte-identical rebuilds, and a store that is
published (or replaced) only where that is safe."""

from __future__ import annotations

import _thread
import copy
import json
import os
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import REPO, TINY_METADATA, tiny_tables, write_tables

from tributary_core import TributaryError, get_registry
from tributary_core.preprocess import preprocess
from tributary_core.sql import QueryTimeout, run_query, sandbox_connection
from tributary_core.store import StoreFileError, open_store
from tributary_core.store.format import FileWriter, StoreFile, unpack_bits, write_file
from tributary_core.timeconv import to_epoch_us

SLOW = "SELECT count(*) AS n FROM range(100000) a, range(100000) b, range(100000) c"


@pytest.fixture
def hashing():
    return get_registry().create_embedder("hashing", dimension=8)


def build(tmp_path: Path, metadata: dict, tables: dict[str, pa.Table] | None = None,
          out: str = "store", **kwargs):
    raw = write_tables(tmp_path / "raw", tables or tiny_tables())
    md = tmp_path / "md.json"
    md.write_text(json.dumps(metadata))
    embedder = get_registry().create_embedder("hashing", dimension=8)
    return preprocess(md, raw, tmp_path / out, embedder=embedder, **kwargs)


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary or moved-aside folders left beside a store."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# -- 1. statistics that cannot overflow -----------------------------------------------------


def encode_numbers(values):
    stype = get_registry().semantic_type("numerical")
    prepared = stype.prepare(pa.chunked_array([pa.array(values, pa.float64())]))
    stats = stype.fit(prepared)
    return stype, prepared, stats, stype.encode(prepared, stats)


@pytest.mark.parametrize("values", [
    [1e308, 1.5e308, -1.7e308],
    [1.7976931348623157e308, -1.7976931348623157e308, 0.0],
    [1e-310, 2e-310, 3e-310],  # subnormal: a std with no finite inverse
])
def test_numerical_statistics_cannot_overflow(values):
    _, _, stats, enc = encode_numbers(values)
    assert np.isfinite(stats["mean"]) and np.isfinite(stats["std"]) and stats["std"] > 0
    # the reference, scaled by hand so that it cannot overflow
    scale = max(abs(v) for v in values)
    x = np.array(values) / scale
    expected = (x - x.mean()) / x.std()
    assert enc.valid.all()
    np.testing.assert_allclose(enc.arrays["value"], expected, rtol=1e-5)


def test_one_huge_value_keeps_the_column_and_warns():
    values = [float(v) for v in range(1, 50)] + [1e308]
    stype, prepared, stats, enc = encode_numbers(values)
    assert np.isfinite(stats["std"])
    z = enc.arrays["value"]
    assert enc.valid.all() and z[-1] > 5  # the outlier is far out, not 0
    note = stype.check_encoded(prepared, stats, enc)
    assert note is not None and "dominate" in note and "1e+308" in note
    # an ordinary column gets no note
    stype, prepared, stats, enc = encode_numbers([1.0, 2.0, 3.5, None])
    assert stype.check_encoded(prepared, stats, enc) is None


def test_z_score_beyond_float32_is_null_and_reported():
    stype = get_registry().semantic_type("numerical")
    prepared = stype.prepare(pa.chunked_array([pa.array([1.0, 2.0, 1e300])]))
    stats = stype.fit(prepared, rows=np.array([True, True, False]))  # window without the giant
    enc = stype.encode(prepared, stats)
    assert enc.valid.tolist() == [True, True, False]
    assert np.isfinite(enc.arrays["value"]).all()
    assert "exceeds float32" in stype.check_encoded(prepared, stats, enc)


def test_huge_value_through_preprocess(tmp_path):
    tables = tiny_tables()
    amounts = tables["orders"].column("amount").to_pylist()
    amounts[0] = 1.7e308
    tables["orders"] = tables["orders"].set_column(2, "amount", pa.array(amounts))
    result = build(tmp_path, copy.deepcopy(TINY_METADATA), tables)
    stats = open_store(result.path).tables["orders"].columns["amount"]["stats"]
    assert np.isfinite(stats["std"]) and stats["std"] > 1e307
    z = open_store(result.path).tables["orders"].field("amount", "value")
    assert z[0] > 1 and np.isfinite(z).all()


def test_coarse_timestamps_never_wrap_around():
    conv = to_epoch_us(pa.array([0, 10**13, -(10**13), 5], pa.timestamp("s", tz="UTC")))
    assert conv.valid.tolist() == [True, False, False, True]
    assert conv.values.tolist() == [0, 0, 0, 5_000_000]
    assert conv.n_unparsed == 2 and "out of range" in conv.example_unparsed
    conv = to_epoch_us(pa.array([0, 10**17], pa.date64()))
    assert conv.valid.tolist() == [True, False] and conv.n_unparsed == 1


# -- 2. a time limit and Ctrl-C for task SQL --------------------------------------------------


def test_query_time_limit_interrupts_duckdb():
    con = sandbox_connection({"t": pa.table({"x": [1]})})
    start = time.monotonic()
    with pytest.raises(QueryTimeout):
        run_query(con, SLOW, timeout_s=0.2)
    assert time.monotonic() - start < 10
    assert run_query(con, "SELECT 41 + 1 AS v").column("v").to_pylist() == [42]  # still usable


def test_ctrl_c_interrupts_a_query_promptly():
    con = sandbox_connection({"t": pa.table({"x": [1]})})
    timer = threading.Timer(0.3, _thread.interrupt_main)
    start = time.monotonic()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        run_query(con, SLOW, timeout_s=None)
    assert time.monotonic() - start < 10
    assert run_query(con, "SELECT 1 AS v").num_rows == 1


def test_slow_task_query_is_stopped_and_nothing_is_left(tmp_path, monkeypatch):
    # Validation runs each task query too, under the same limit (the next test): let it look
    # at the schema only, so that this test times the query of the tasks stage.
    from tributary_core.metadata import validate
    from tributary_core.sql import fetch_arrow

    monkeypatch.setattr(validate, "run_task_query",
                        lambda con, query, **_: fetch_arrow(con.sql(query).limit(0)).schema)
    md = copy.deepcopy(TINY_METADATA)
    md["tasks"]["order_returned"]["query"] = (
        "SELECT o.order_id, o.returned FROM orders o, range(100000) a, range(100000) b, "
        "range(100000) c WHERE a.range + b.range + c.range = -1")
    with pytest.raises(TributaryError, match=r"task 'order_returned': the query ran longer than "
                                             r"0\.3 s .*--query-timeout"):
        build(tmp_path, md, query_timeout_s=0.3)
    assert not (tmp_path / "store").exists() and leftovers(tmp_path) == []


def test_slow_task_query_is_stopped_at_validation(tmp_path, tiny_raw, write_json):
    from click.testing import CliRunner

    from tributary_core.cli import cli

    md = copy.deepcopy(TINY_METADATA)
    md["tasks"]["order_returned"]["query"] = (
        "SELECT o.order_id, o.returned FROM orders o, range(100000) a, range(100000) b, "
        "range(100000) c WHERE a.range + b.range + c.range = -1")
    path = write_json(md)
    start = time.monotonic()
    result = CliRunner().invoke(cli, ["run", "preprocess", "--db", "tiny", "--metadata", str(path),
                                      "--raw", str(tiny_raw), "--out", str(tmp_path / "store"),
                                      "--embedder", "hashing", "--query-timeout", "0.3"])
    assert time.monotonic() - start < 60
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "tasks.order_returned.query: the query ran past the 0.3 s limit" in result.output
    assert "--query-timeout" in result.output
    assert not (tmp_path / "store").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("stage", ["encode", "tasks", "embed"])
def test_ctrl_c_at_any_stage_leaves_nothing(tmp_path, stage):
    def progress(name, done, total, note=""):
        if name == stage:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build(tmp_path, copy.deepcopy(TINY_METADATA), progress=progress)
    assert not (tmp_path / "store").exists() and leftovers(tmp_path) == []


# -- 3. unusable labels -------------------------------------------------------------------


def with_task_query(query: str, **changes) -> dict:
    md = copy.deepcopy(TINY_METADATA)
    md["tasks"]["order_returned"]["query"] = query
    md["tasks"]["order_returned"].update(changes)
    return md


@pytest.mark.parametrize(("query", "message"), [
    ("SELECT order_id, CASE WHEN returned THEN 'late' ELSE 'on time' END AS returned "
     "FROM orders", r"task 'order_returned': target column 'returned' \(boolean\): .*not a "
                    r"boolean.*distinct bad values: 'on time', 'late'"),
    ("SELECT order_id, NULL::BOOLEAN AS returned FROM orders",
     r"task 'order_returned': .*every label is null; the task cannot be trained"),
    ("SELECT order_id, returned FROM orders WHERE false",
     r"task 'order_returned': the query returns no rows"),
    ("SELECT order_id + 100 AS order_id, returned FROM orders",
     r"task 'order_returned': none of the query's 5 anchor keys \(order_id\) is a key of "
     r"orders\.order_id, e\.g\. 101"),
])
def test_unusable_tasks_are_refused(tmp_path, query, message):
    with pytest.raises(TributaryError, match=message):
        build(tmp_path, with_task_query(query))
    assert not (tmp_path / "store").exists() and leftovers(tmp_path) == []


def test_boolean_strings_are_read_and_partial_nulls_warned(tmp_path):
    query = ("SELECT order_id, CASE WHEN returned THEN 'Yes' WHEN NOT returned THEN 'no' END "
             "AS returned FROM orders")
    result = build(tmp_path, with_task_query(query))
    task = open_store(result.path).tasks["order_returned"]
    assert task.target("value").tolist() == [False, True, False, False, False]
    assert task.target_valid.tolist() == [True, True, True, False, True]
    assert any("order_returned" in w and "1 of 5 labels are null" in w for w in result.warnings)


def test_repeated_seeds_with_different_labels_are_warned(tmp_path):
    query = ("SELECT order_id, returned FROM orders UNION ALL "
             "SELECT order_id, NOT returned FROM orders WHERE order_id <= 2")
    result = build(tmp_path, with_task_query(query))
    [warning] = [w for w in result.warnings if "repeat" in w]
    assert "task 'order_returned': 2 seed(s) repeat" in warning
    assert "2 such pair(s) have different labels" in warning


# -- 4. an edited metadata.json ---------------------------------------------------------------


@pytest.mark.parametrize("edit", [
    lambda m: m["tables"]["orders"].__setitem__("rows", 50),
    lambda m: m["tasks"]["order_returned"].__setitem__("target_stype", "numerical"),
])
def test_edited_metadata_is_refused(tmp_path, edit):
    result = build(tmp_path, copy.deepcopy(TINY_METADATA))
    path = result.path / "metadata.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta, indent=1))
    with pytest.raises(StoreFileError, match=r"metadata\.json: checksum mismatch: the file was "
                                             r"edited"):
        open_store(result.path, verify=False)
    del meta["checksum"]
    path.write_text(json.dumps(meta, indent=1))
    with pytest.raises(StoreFileError, match=r"metadata\.json: has no checksum"):
        open_store(result.path)


def test_edited_metadata_is_one_line_in_the_cli(tmp_path):
    from click.testing import CliRunner

    from tributary_core.cli import cli

    result = build(tmp_path, copy.deepcopy(TINY_METADATA))
    path = result.path / "metadata.json"
    path.write_bytes(path.read_bytes().replace(b'"rows": 5', b'"rows": 9', 1))
    out = CliRunner().invoke(cli, ["inspect", str(result.path), "--table", "orders"])
    assert out.exit_code == 2 and "checksum mismatch" in out.output
    assert "Traceback" not in out.output and len(out.output.strip().splitlines()) == 1


# -- 5. the same inputs give the same bytes ---------------------------------------------------


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_rebuild_is_byte_identical(tmp_path):
    """Once here and once in a fresh interpreter with another string-hash seed, into folders
    of different names: every file of the two stores is the same, byte for byte."""
    result = build(tmp_path, copy.deepcopy(TINY_METADATA), out="first")
    script = (
        "import sys; from pathlib import Path; "
        "from tributary_core import get_registry; from tributary_core.preprocess import preprocess; "
        "p = Path(sys.argv[1]); "
        "preprocess(p / 'md.json', p / 'raw', p / 'elsewhere' / 'second', "
        "embedder=get_registry().create_embedder('hashing', dimension=8))")
    env = dict(os.environ, PYTHONHASHSEED=str(1 + int(os.environ.get("PYTHONHASHSEED", "0")
                                                      if os.environ.get("PYTHONHASHSEED", "")
                                                      .isdigit() else 0)))
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, env=env, cwd=REPO)
    first, second = files_of(result.path), files_of(tmp_path / "elsewhere" / "second")
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []


def test_seed_order_does_not_depend_on_the_query_order(tmp_path):
    asc = build(tmp_path / "a", with_task_query(
        "SELECT order_id, returned FROM orders ORDER BY order_id"))
    desc = build(tmp_path / "b", with_task_query(
        "SELECT order_id, returned FROM orders ORDER BY order_id DESC"))
    one, two = files_of(asc.path), files_of(desc.path)
    assert one["tasks/order_returned.bin"] == two["tasks/order_returned.bin"]
    assert open_store(asc.path).tasks["order_returned"].anchor_row.tolist() == [0, 1, 2, 3, 4]


def test_seeds_repeating_a_pair_are_ordered_by_label_whatever_the_query_order(tmp_path):
    """Where an (anchor row, time) pair repeats, the labels decide the seeds' order (False
    before True), so the task's file does not depend on the order the query returns rows in;
    anchor rows with one seed each stay in row order."""
    both = ("SELECT order_id, returned FROM orders UNION ALL "
            "SELECT order_id, NOT returned FROM orders WHERE order_id <= 2")
    asc = build(tmp_path / "a", with_task_query(f"{both} ORDER BY order_id, returned"))
    desc = build(tmp_path / "b", with_task_query(f"{both} ORDER BY order_id DESC, returned DESC"))
    one, two = files_of(asc.path), files_of(desc.path)
    assert one["tasks/order_returned.bin"] == two["tasks/order_returned.bin"]
    task = open_store(asc.path).tasks["order_returned"]
    assert task.anchor_row.tolist() == [0, 0, 1, 1, 2, 3, 4]
    labels = task.target("value").tolist()
    assert labels[:4] == [False, True, False, True]


# -- 6. statistics window, publishing and --force ---------------------------------------------


def test_stats_cutoff_before_all_data_is_an_error(tmp_path):
    cutoff = int(to_epoch_us(pa.array(["2001-01-01"])).values[0])
    with pytest.raises(TributaryError, match=r"--stats-cutoff 2001-01-01 00:00:00 is before every "
                                             r"row time .*earliest is 2024-01-01 12:00:00"):
        build(tmp_path, copy.deepcopy(TINY_METADATA), stats_cutoff_us=cutoff)
    assert not (tmp_path / "store").exists()


def test_stats_cutoff_with_an_empty_window_for_some_columns_warns(tmp_path):
    # customers are timed from 2024-01-01, orders from 2024-01-05: a cut-off between the two
    # leaves orders.amount with no value in the window
    cutoff = int(to_epoch_us(pa.array(["2024-01-04"])).values[0])
    result = build(tmp_path, copy.deepcopy(TINY_METADATA), stats_cutoff_us=cutoff)
    [warning] = [w for w in result.warnings if "statistics window" in w]
    assert "orders.amount" in warning and "customers" not in warning


def test_a_store_that_appears_meanwhile_is_not_replaced(tmp_path):
    out = tmp_path / "store"

    def progress(stage, done, total, note=""):
        if stage == "embed" and not out.exists():
            out.mkdir()
            (out / "theirs.txt").write_text("another run's store")

    with pytest.raises(TributaryError, match=r"store already exists \(it appeared while"):
        build(tmp_path, copy.deepcopy(TINY_METADATA), progress=progress)
    assert (out / "theirs.txt").read_text() == "another run's store"
    assert leftovers(tmp_path) == []


def test_force_replaces_only_a_store(tmp_path):
    out = tmp_path / "store"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(TributaryError, match=r"store: is not a Tributary store \(no "
                                             r"metadata\.json\); --force replaces only"):
        build(tmp_path, copy.deepcopy(TINY_METADATA), force=True)
    assert (out / "thesis.tex").read_text() == "precious"
    (out / "thesis.tex").unlink()
    build(tmp_path, copy.deepcopy(TINY_METADATA), force=True)  # an empty folder may go
    before = (out / "metadata.json").read_bytes()
    build(tmp_path, copy.deepcopy(TINY_METADATA), force=True)  # and so may a store
    assert (out / "metadata.json").read_bytes() == before and leftovers(tmp_path) == []
    with pytest.raises(TributaryError, match="already exists; use --force"):
        build(tmp_path, copy.deepcopy(TINY_METADATA))


# -- 7. write failures ------------------------------------------------------------------------


def test_out_under_a_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(TributaryError, match=r"afile.*: cannot create the output folder"):
        build(tmp_path, copy.deepcopy(TINY_METADATA), out="afile/store")


def test_full_disk_names_the_store_and_cleans_up(tmp_path, monkeypatch):
    import errno

    from tributary_core.preprocess import pipeline

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:  # the graph is written first, section by section
        patch.setattr(pipeline.FileWriter, "add", full)
        patch.setattr(pipeline, "write_file", full)
        with pytest.raises(TributaryError, match=r"store: cannot write graph\.bin .*"
                                                 r"No space left on device"):
            build(tmp_path, copy.deepcopy(TINY_METADATA))
    assert not (tmp_path / "store").exists() and leftovers(tmp_path) == []
    # a table's columns are written batch by batch into their sections
    monkeypatch.setattr(pipeline.SectionWriter, "write", full)
    with pytest.raises(TributaryError, match=r"store: cannot write tables/customers\.bin .*"
                                             r"No space left on device"):
        build(tmp_path, copy.deepcopy(TINY_METADATA))
    assert not (tmp_path / "store").exists() and leftovers(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_one_line(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(TributaryError, match=r"locked.*: cannot create the output folder"):
            build(tmp_path, copy.deepcopy(TINY_METADATA), out="locked/store")
    finally:
        locked.chmod(0o755)


# -- 8. the streaming store file writer -------------------------------------------------------


def stream(path: Path, sections: dict[str, np.ndarray], meta: dict | None = None, **kwargs):
    with FileWriter(path, "table", **kwargs) as writer:
        for name, array in sections.items():
            writer.add(name, array)
        return writer.close(meta)


def assert_reads_back(path: Path, sections: dict[str, np.ndarray], info: dict) -> StoreFile:
    f = StoreFile(path, expect_kind="table")
    f.verify()
    assert info == {"bytes": path.stat().st_size, "crc32": f.header_crc}
    assert list(f) == list(sections)
    for name, array in sections.items():
        got = f.array(name)
        assert got.shape == array.shape and got.dtype == array.dtype.newbyteorder("<"), name
        assert np.array_equal(got, array), name
        assert f.sections[name]["offset"] % 64 == 0
    return f


def mixed_sections() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "emb": rng.standard_normal((37, 5)).astype(np.float32),
        "ids": np.arange(-3, 20, dtype=np.int64),
        "big_endian": np.array([1, 2, 70000], dtype=">i4"),
        "bytes": np.array([0, 255, 7], dtype=np.uint8),
        "half": np.array([0.5, -2.0], dtype=np.float16),
        "valid": np.array([True, False, True] * 5 + [True, True]),  # 17 bits: 3 bytes
        "no_valid": np.zeros(0, dtype=np.bool_),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "last": np.array([9], dtype=np.uint32),
    }


def test_file_writer_round_trip(tmp_path):
    sections = mixed_sections()
    info = stream(tmp_path / "a.bin", sections, {"rows": 37})
    f = assert_reads_back(tmp_path / "a.bin", sections, info)
    assert f.meta == {"rows": 37}
    assert f.sections["valid"]["dtype"] == "bits" and f.sections["valid"]["shape"] == [17]
    assert f.raw("valid").tolist() == [0b01101101, 0b11011011, 0b1]
    assert f.sections["big_endian"]["dtype"] == "<i4"
    assert f.sections["emb"]["offset"] == 65600  # _align(32 + 65536): the default reserve
    assert f.sections["no_valid"]["nbytes"] == 0 and f.sections["empty"]["shape"] == [0, 4]


def test_file_writer_is_byte_identical_to_write_file(tmp_path):
    for name, sections in [("mixed", mixed_sections()),
                           ("wide", {f"column_{i:04d}_" + "n" * 60: np.arange(i, dtype=np.int32)
                                     for i in range(120)})]:
        info = write_file(tmp_path / f"{name}.bin", "table", sections, {"rows": 1})
        assert stream(tmp_path / f"{name}.stream", sections, {"rows": 1}, reserve=4096) == info
        data = (tmp_path / f"{name}.bin").read_bytes()
        assert (tmp_path / f"{name}.stream").read_bytes() == data
        assert_reads_back(tmp_path / f"{name}.bin", sections, info)
    first = StoreFile(tmp_path / "mixed.bin").sections["emb"]["offset"]
    assert first == 4160  # _align(32 + 4096): a small header fits write_file's first reserve
    hlen = int.from_bytes((tmp_path / "wide.bin").read_bytes()[12:16], "little")
    assert hlen > 4096  # the wide header outgrew it, so write_file grew its reserve
    first = StoreFile(tmp_path / "wide.bin").sections["column_0000_" + "n" * 60]["offset"]
    # its reserve grew to _align(len(header) + 1024) for a header (of smaller offsets) no longer
    # than the final one
    assert 32 + hlen <= first <= (32 + (hlen + 1024 + 63) // 64 * 64 + 63) // 64 * 64
    assert first - (32 + hlen) >= 1024 - 64


def test_file_writer_header_larger_than_reserve(tmp_path, monkeypatch):
    from tributary_core.store import format as fmt

    monkeypatch.setattr(fmt, "_MOVE_BLOCK", 1000)  # many overlapping blocks to move
    rng = np.random.default_rng(3)
    sections = {}
    for i in range(150):
        name = f"section_{i:03d}_with_a_rather_long_descriptive_name_" + "x" * (i % 40)
        if i % 3 == 0:
            sections[name] = rng.random(int(rng.integers(0, 50))) < 0.5
        elif i % 3 == 1:
            sections[name] = rng.standard_normal((int(rng.integers(0, 30)), 3)).astype(np.float32)
        else:
            sections[name] = rng.integers(-1000, 1000, int(rng.integers(0, 40)))
    sections["big"] = np.arange(100_000, dtype=np.int64)  # 800 kB, far more than one block
    sections["trailing_empty"] = np.zeros(0, dtype=np.int64)
    info = stream(tmp_path / "a.bin", sections, {"rows": 5}, reserve=64)
    f = assert_reads_back(tmp_path / "a.bin", sections, info)
    data = (tmp_path / "a.bin").read_bytes()
    hlen = int.from_bytes(data[12:16], "little")
    first = min(s["offset"] for s in f.sections.values())
    assert hlen > 64 and first >= 32 + hlen
    assert data[32 + hlen : first] == bytes(first - 32 - hlen)  # the old section bytes are gone
    assert f.array("big")[-1] == 99_999 and f.meta == {"rows": 5}


def test_file_writer_duplicate_name_raises(tmp_path):
    with FileWriter(tmp_path / "a.bin", "table") as writer:
        writer.add("x", np.array([1, 2, 3], dtype=np.int32))
        with pytest.raises(ValueError, match="'x' was already added"):
            writer.add("x", np.array([4], dtype=np.int32))
        with pytest.raises(ValueError, match="object"):
            writer.add("obj", np.array(["a", None], dtype=object))
        info = writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.add("y", np.array([1]))
    f = assert_reads_back(tmp_path / "a.bin", {"x": np.array([1, 2, 3], dtype=np.int32)}, info)
    assert f.meta == {}


def test_file_writer_abort_and_exception_leave_no_file(tmp_path):
    writer = FileWriter(tmp_path / "a.bin", "table")
    writer.add("x", np.arange(10))
    assert (tmp_path / "a.bin").exists()
    writer.abort()
    assert not (tmp_path / "a.bin").exists()
    with pytest.raises(ValueError, match="closed"):
        writer.close()

    with pytest.raises(RuntimeError, match="boom"), FileWriter(tmp_path / "b.bin", "table") as w:
        w.add("x", np.arange(10))
        raise RuntimeError("boom")
    assert not (tmp_path / "b.bin").exists()

    # A header that cannot be written (meta not JSON) removes the file too.
    with pytest.raises(TypeError), FileWriter(tmp_path / "c.bin", "table") as w:
        w.add("x", np.arange(10))
        w.close({"bad": object()})
    assert not (tmp_path / "c.bin").exists()

    # An unstorable array is refused before write_file touches an existing file.
    (tmp_path / "d.bin").write_bytes(b"old")
    with pytest.raises(ValueError, match="bitmaps"):
        write_file(tmp_path / "d.bin", "table", {"m": np.ones((2, 2), dtype=bool)})
    assert (tmp_path / "d.bin").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.bin"]


def test_write_file_still_reads_back(tmp_path):
    sections = mixed_sections()
    info = write_file(tmp_path / "a.bin", "table", sections, {"rows": 37, "name": "t"})
    f = assert_reads_back(tmp_path / "a.bin", sections, info)
    assert f.meta == {"rows": 37, "name": "t"}
    assert info["bytes"] == f.sections["last"]["offset"] + 4
    assert unpack_bits(f.raw("valid"), 17).tolist() == sections["valid"].tolist()
    info = write_file(tmp_path / "none.bin", "table", {})
    f = StoreFile(tmp_path / "none.bin")
    f.verify()
    assert f.sections == {} and info["bytes"] == (tmp_path / "none.bin").stat().st_size


@pytest.mark.parametrize("kernel", [True, False], ids=["copy_file_range", "reads and writes"])
def test_file_writer_add_copy_concatenates_ranges_and_combines_checksums(tmp_path, monkeypatch,
                                                                         kernel):
    """A section copied from other files' sections (how sampler.bin concatenates the tables')
    reads back as their concatenation, and its checksum, combined from the parts', is the
    CRC-32 of its bytes: the file verifies. Without copy_file_range the same bytes come."""
    from tributary_core.store.format import FileWriter, StoreFile, write_file

    if not kernel:
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    b = np.arange(100, 106, dtype=np.float32).reshape(2, 3)
    write_file(tmp_path / "a.bin", "t", {"x": a, "empty": np.zeros((0, 3), np.float32)})
    write_file(tmp_path / "b.bin", "t", {"pad": np.ones(5, np.int8), "y": b})
    fa, fb = StoreFile(tmp_path / "a.bin"), StoreFile(tmp_path / "b.bin")
    ranges = [(f.path, f.sections[n]["offset"], f.sections[n]["nbytes"], f.sections[n]["crc32"])
              for f, n in ((fa, "x"), (fa, "empty"), (fb, "y"))]
    with FileWriter(tmp_path / "x.bin", "test", reserve=64) as w:
        w.add("before", np.array([1, 2, 3], dtype=np.int16))
        w.add_copy("ts", np.float32, (6, 3), ranges)
        w.add("after", np.array([7, 8], dtype=np.int64))
        w.close({"k": 1})
    f = StoreFile(tmp_path / "x.bin")
    f.verify()
    np.testing.assert_array_equal(f.array("ts"), np.concatenate([a, b]))
    np.testing.assert_array_equal(f.array("after"), [7, 8])
    assert f.sections["ts"]["crc32"] == zlib.crc32(np.concatenate([a, b]).tobytes())


def test_file_writer_add_copy_refuses_short_parts_and_sources(tmp_path):
    """Parts short of the section's shape, or a source file that ends inside its range, raise
    and remove the file being written."""
    from tributary_core.store.format import FileWriter, StoreFile, write_file

    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    write_file(tmp_path / "a.bin", "t", {"x": a})
    s = StoreFile(tmp_path / "a.bin").sections["x"]
    part = (tmp_path / "a.bin", s["offset"], s["nbytes"], s["crc32"])
    w = FileWriter(tmp_path / "y.bin", "test")
    with pytest.raises(ValueError, match="needs 72 bytes, its parts gave 48"):
        w.add_copy("ts", np.float32, (6, 3), [part])
    assert not (tmp_path / "y.bin").exists()
    w = FileWriter(tmp_path / "z.bin", "test")
    with pytest.raises(ValueError, match=r"a\.bin: ends before byte"):
        w.add_copy("ts", np.float32, (6, 3), [(part[0], s["offset"], 72, 0)])
    assert not (tmp_path / "z.bin").exists()


def test_file_writer_add_copy_of_a_damaged_source_fails_verification(tmp_path):
    """The copied section's checksum comes from the source's header, not from the bytes
    copied: a source damaged after it was written gives a section that verify refuses."""
    from tributary_core.store.format import FileWriter, StoreFile, StoreFileError, write_file

    write_file(tmp_path / "a.bin", "t", {"x": np.arange(64, dtype=np.int64)})
    s = StoreFile(tmp_path / "a.bin").sections["x"]
    with open(tmp_path / "a.bin", "r+b") as f:
        f.seek(s["offset"] + 9)
        f.write(b"\xff")
    with FileWriter(tmp_path / "x.bin", "test") as w:
        w.add_copy("x", np.int64, (64,), [(tmp_path / "a.bin", s["offset"], s["nbytes"],
                                           s["crc32"])])
        w.close()
    with pytest.raises(StoreFileError, match="x"):
        StoreFile(tmp_path / "x.bin").verify()


def test_crc32_combine_matches_zlib():
    """zlib's crc32_combine, which Python's zlib lacks: the CRC of A + B from A's and B's."""
    from tributary_core.store.format import crc32_combine

    rng = np.random.default_rng(5)
    for n_a, n_b in [(0, 0), (0, 5), (5, 0), (1, 1), (17, 1000), (4096, 333), (3, 1 << 20)]:
        a = rng.integers(0, 256, n_a, dtype=np.uint8).tobytes()
        b = rng.integers(0, 256, n_b, dtype=np.uint8).tobytes()
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_syncer_closes_files_in_order_and_reports_the_first_failure(tmp_path):
    """A FileWriter with a syncer hands its flushes, fsync and close to the syncer's thread:
    after wait() the file is closed and reads back whole. A file that cannot be fsynced (a
    pipe) makes wait() raise an OSError naming that file; the syncer then takes no more."""
    from tributary_core.store.format import FLUSH_BYTES, FileWriter, StoreFile, Syncer

    syncer = Syncer()
    big = np.arange(FLUSH_BYTES // 8 + 10, dtype=np.int64)  # past one flush
    with FileWriter(tmp_path / "x.bin", "test", syncer=syncer) as w:
        w.add("big", big)
        w.add("small", np.arange(3, dtype=np.int32))
        w.close()
        handed = w._file
    r, wfd = os.pipe()
    os.close(wfd)
    pipe = open(r, "rb")  # noqa: SIM115 - the syncer closes it
    syncer.close(pipe, tmp_path / "pipe")
    with pytest.raises(OSError) as info:
        syncer.wait()
    assert info.value.filename == str(tmp_path / "pipe")
    assert handed.closed and pipe.closed
    f = StoreFile(tmp_path / "x.bin")
    f.verify()
    np.testing.assert_array_equal(f.array("big"), big)
    with pytest.raises(ValueError, match="stopped"):
        syncer.flush(handed, tmp_path / "x.bin")


def test_writers_of_a_stopped_syncer_sync_and_close_themselves(tmp_path):
    """A writer whose syncer has stopped (waited on) fsyncs and closes its own file, and an
    aborted one closes and removes it: nothing is handed to a thread that is gone."""
    from tributary_core.store.format import FileWriter, StoreFile, Syncer

    syncer = Syncer()
    kept = FileWriter(tmp_path / "kept.bin", "test", syncer=syncer)
    kept.add("a", np.arange(4))
    dropped = FileWriter(tmp_path / "dropped.bin", "test", syncer=syncer)
    syncer.wait()
    kept.close()
    dropped.abort()
    assert kept._file.closed and dropped._file.closed
    StoreFile(tmp_path / "kept.bin").verify()
    assert not (tmp_path / "dropped.bin").exists()


def test_a_failed_fsync_stops_preprocessing_with_one_line_naming_the_file(tmp_path):
    """The pipeline's writer turns a syncer's failure into one line naming the store and the
    file (in the temporary folder) that could not be made durable."""
    from tributary_core.preprocess.pipeline import _StoreWriter
    from tributary_core.store.format import Syncer

    syncer = Syncer()
    writer = _StoreWriter(tmp_path, tmp_path / "final", syncer)
    r, w = os.pipe()
    os.close(w)
    syncer.close(open(r, "rb"), tmp_path / "tables" / "t.bin")  # noqa: SIM115 - a pipe: no fsync
    with pytest.raises(TributaryError) as info:
        writer.durable()
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'final'}: cannot write "
                                                      "tables/t.bin")


def test_syncer_left_by_an_error_closes_without_syncing_and_aborted_files_go(tmp_path):
    """Leaving a syncer's block with an exception closes every file handed over (no fsync:
    they are thrown away) and raises only the block's error; a writer aborted meanwhile has
    its file removed and, once the syncer is done, closed."""
    from tributary_core.store.format import FileWriter, Syncer

    with pytest.raises(RuntimeError, match="boom"), Syncer() as syncer:
        done = FileWriter(tmp_path / "done.bin", "test", syncer=syncer)
        done.add("a", np.arange(5))
        done.close()
        aborted = FileWriter(tmp_path / "aborted.bin", "test", syncer=syncer)
        aborted.add("a", np.arange(5))
        aborted.abort()
        raise RuntimeError("boom")
    assert done._file.closed and aborted._file.closed
    assert not (tmp_path / "aborted.bin").exists()


@pytest.mark.parametrize("huge_from", [0, 1 << 40], ids=["mapped", "plain reads"])
def test_verify_reads_large_files_through_a_map_and_finds_the_same_faults(tmp_path, monkeypatch,
                                                                           huge_from):
    """Large files are checked through a map with huge pages asked for (their first read after
    preprocessing decides the page size the sampler gets), small ones with plain reads: both
    find the same damage, naming the section, and neither leaves a map open."""
    from tributary_core.store import format as fmt

    monkeypatch.setattr(fmt, "_HUGE_FROM", huge_from)
    sections = {"a": np.arange(50_000, dtype=np.int64), "b": np.linspace(0, 1, 999, dtype=np.float32)}
    path = tmp_path / "t.bin"
    write_file(path, "table", sections)
    f = StoreFile(path)
    f.verify()
    assert f._map is None
    fmt.drop_cached(path)  # only the cache goes: the file reads back the same
    np.testing.assert_array_equal(StoreFile(path).array("b"), sections["b"])
    data = bytearray(path.read_bytes())
    offset = f.sections["b"]["offset"] + 17
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StoreFileError, match=r"t\.bin: corrupted: checksum mismatch in section 'b'"):
        StoreFile(path).verify()
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    opened = StoreFile(path)
    opened.verify()
    with open(path, "r+b") as out:  # cut short after it was opened
        out.truncate(f.sections["b"]["offset"])
    with pytest.raises(StoreFileError, match=r"t\.bin: truncated"):
        opened.verify()


def test_query_memory_caps_duckdb_and_changes_no_result(tmp_path):
    """--query-memory sets DuckDB's memory limit for validation's and the tasks' queries; the
    tasks come out the same, and the spill folder is gone afterwards."""
    import tempfile

    before = set(Path(tempfile.gettempdir()).glob(".tributary-duckdb.*.tmp"))
    plain = open_store(build(tmp_path, copy.deepcopy(TINY_METADATA), out="plain").path)
    capped = open_store(build(tmp_path, copy.deepcopy(TINY_METADATA), out="capped",
                              query_memory="64MB").path)
    for name, task in plain.tasks.items():
        other = capped.tasks[name]
        assert len(task) == len(other) > 0
        for field in ("anchor_row", "observation_time", "target_valid"):
            np.testing.assert_array_equal(getattr(task, field), getattr(other, field))
        assert task.meta["stats"] == other.meta["stats"]
    assert set(Path(tempfile.gettempdir()).glob(".tributary-duckdb.*.tmp")) == before
    from tributary_core.sql import sandbox_connection

    con = sandbox_connection({"t": pa.table({"x": [1, 2]})}, memory_limit="64MB")
    try:
        assert con.execute("SELECT current_setting('memory_limit')").fetchone()[0] in ("64.0 MB", "61.0 MiB")
    finally:
        con.close()


def test_a_bad_query_memory_is_one_line_naming_the_option(tmp_path):
    from click.testing import CliRunner

    from tributary_core.cli import cli

    with pytest.raises(TributaryError, match=r"--query-memory: 'lots' is not a memory size"):
        build(tmp_path, copy.deepcopy(TINY_METADATA), query_memory="lots")
    assert not (tmp_path / "store").exists() and leftovers(tmp_path) == []
    raw = write_tables(tmp_path / "raw2", tiny_tables())
    md = tmp_path / "md2.json"
    md.write_text(json.dumps(TINY_METADATA))
    result = CliRunner().invoke(cli, ["run", "preprocess", "--db", "tiny", "--metadata", str(md),
                                      "--raw", str(raw), "--out", str(tmp_path / "s"),
                                      "--embedder", "hashing", "--query-memory", "12 parsecs"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "--query-memory: '12 parsecs' is not a memory size" in lines[0]
    assert not (tmp_path / "s").exists()


def test_scratch_folders_go_when_done_and_a_killed_runs_are_swept(tmp_path):
    """Task results and DuckDB's spill files live in scratch folders named with the process's
    PID and this machine's tag: removed when their block ends, however it ends, and, when a
    process was killed outright, by the next one that makes such a folder here."""
    import subprocess

    from tributary_core.atomic import _host_tag, scratch_folder

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a PID that no longer runs
    stale = tmp_path / f".tributary-task-results.{dead.pid}.{_host_tag()}.abcd1234.tmp"
    stale.mkdir()
    (stale / "0.arrow").write_bytes(b"left by a killed run")
    alive = tmp_path / f".tributary-task-results.{os.getppid()}.{_host_tag()}.abcd1234.tmp"
    alive.mkdir()  # a live process's: kept
    other = tmp_path / "tributary-task-results-mine"
    other.mkdir()  # not named as a scratch folder: never touched
    with pytest.raises(KeyboardInterrupt), scratch_folder("tributary-task-results", tmp_path) as path:
        assert path.is_dir() and path.name.startswith(f".tributary-task-results.{os.getpid()}.")
        (path / "x").write_text("y")
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, other.name])
