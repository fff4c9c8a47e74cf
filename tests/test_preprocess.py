"""Preprocessing end to end on a small database full of real-world oddities, and the store."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import write_tables

from tributary_core import MetadataError, TributaryError, get_registry
from tributary_core.preprocess import NO_CUTOFF, preprocess
from tributary_core.preprocess.graph import NO_TIME
from tributary_core.store import StoreFileError, open_store
from tributary_core.store.format import FORMAT_VERSION

UTC = dt.timezone.utc


def _t(day: int) -> dt.datetime:
    return dt.datetime(2024, 3, day, 9, 30, tzinfo=UTC)


def odd_tables() -> dict[str, pa.Table]:
    employees = pa.table({
        "emp_id": pa.array([10, 11, 12, 13], pa.int32()),
        "manager_id": pa.array([None, 10, 10, 99], pa.int64()),  # self-reference; 99 dangles
        "hired": pa.array([_t(1), _t(2), _t(3), None], pa.timestamp("ns", tz="Europe/Paris")),
        "dept": pa.array(["ops", "ops", "dev", None]).dictionary_encode(),
        "name": ["Ada", "Bob", "Cy", "Di"],
        "active": ["yes", "no", "YES", None],
    })
    projects = pa.table({
        "code": ["P1", "P2", "P3"],
        "title": ["Apollo", "Borealis", "Cygnus"],
        "start": pa.array([dt.date(2024, 3, 1), dt.date(2024, 3, 5), dt.date(2024, 3, 9)],
                          pa.date32()),
        "budget": pa.array([Decimal("10.50"), Decimal("99.99"), None], pa.decimal128(10, 2)),
    })
    assignments = pa.table({  # a link table: no primary key
        "emp_id": pa.array([10, 10, 11, 12, 13, None], pa.int64()),
        "project": ["P1", "P2", "P2", "P9", None, "P3"],  # P9 dangles, one null
        "hours": [1.5, float("nan"), float("inf"), 4.0, -2.0, 3.0],
    })
    return {"employees": employees, "projects": projects, "assignments": assignments}


ODD_METADATA = {
    "name": "odd",
    "tables": {
        "employees": {
            "primary_key": "emp_id", "temporal_column": "hired",
            "columns": {
                "emp_id": {"stype": "identifier"},
                "manager_id": {"stype": "identifier", "foreign_key": "employees.emp_id"},
                "hired": {"stype": "timestamp"},
                "dept": {"stype": "categorical", "description": "department"},
                "name": {"stype": "text"},
                "active": {"stype": "boolean"},
            },
        },
        "projects": {
            "primary_key": "code", "temporal_column": "start",
            "columns": {"code": {"stype": "identifier"}, "title": {"stype": "ignored"},
                        "start": {"stype": "timestamp"}, "budget": {"stype": "numerical"}},
        },
        "assignments": {
            "temporal_from": "project",
            "columns": {
                "emp_id": {"stype": "identifier", "foreign_key": "employees.emp_id"},
                "project": {"stype": "identifier", "foreign_key": "projects.code"},
                "hours": {"stype": "numerical"},
            },
        },
    },
    "tasks": {
        "first_project_title": {  # a categorical target reached by a join, not a table column
            "query": ("SELECT a.emp_id, min(p.title) AS project_title "
                      "FROM 'assignments.parquet' a JOIN projects p ON p.code = a.project "
                      "GROUP BY a.emp_id UNION ALL SELECT 999, 'Ghost'"),
            "anchor_table": "employees", "anchor_key": "emp_id",
            "target_column": "project_title", "target_stype": "categorical",
        },
        "is_active": {
            "query": "SELECT emp_id, active FROM employees",
            "anchor_table": "employees", "anchor_key": "emp_id",
            "target_column": "active", "target_stype": "boolean",
            "hidden_columns": ["employees.active"],
        },
        "budget_later": {
            "query": ("SELECT code, start + INTERVAL 1 DAY AS seen, budget FROM projects"),
            "anchor_table": "projects", "anchor_key": "code",
            "target_column": "budget", "target_stype": "numerical",
            "observation_time_column": "seen",
        },
    },
}


@pytest.fixture
def odd(tmp_path: Path):
    raw = write_tables(tmp_path / "raw", odd_tables())
    md = tmp_path / "odd.json"
    md.write_text(json.dumps(ODD_METADATA))
    return md, raw


@pytest.fixture
def hashing():
    return get_registry().create_embedder("hashing", dimension=16)


@pytest.fixture
def store(odd, hashing, tmp_path):
    md, raw = odd
    result = preprocess(md, raw, tmp_path / "processed" / "odd", embedder=hashing)
    return result, open_store(result.path)


def test_rows_cells_and_report(store):
    result, s = store
    assert result.rows == {"employees": 4, "projects": 3, "assignments": 6}
    assert result.dangling == {"employees.manager_id": 1, "assignments.emp_id": 0,
                               "assignments.project": 1}
    assert result.null_keys == {"employees.manager_id": 1, "assignments.emp_id": 1,
                                "assignments.project": 1}
    # 999 has no employee, and the assignment with a null emp_id gives a null anchor key.
    assert result.tasks["first_project_title"]["unmatched"] == 2
    assert s.meta["format_version"] == FORMAT_VERSION
    assert s.embedder.backend == "hashing" and s.embedder.dimension == 16


def test_self_reference_and_dangling(store):
    _, s = store
    [manager] = [fk for fk in s.foreign_keys if fk.column == "manager_id"]
    assert manager.parent.tolist() == [-1, 0, 0, -1]  # null, Ada, Ada, dangling 99
    # Ada (row 0) has children Bob and Cy, oldest first; nobody else has any.
    assert manager.indptr.tolist() == [0, 2, 2, 2, 2]
    assert manager.children.tolist() == [1, 2]
    assert manager.child_time.tolist() == sorted(manager.child_time.tolist())


def test_link_table_string_keys_and_temporal_from(store):
    _, s = store
    [project] = [fk for fk in s.foreign_keys if fk.column == "project"]
    assert project.parent.tolist() == [0, 1, 1, -1, -1, 2]
    # assignments take their time from their project; P9 and null have none.
    start = s.tables["projects"].time
    expected = [start[0], start[1], start[1], NO_TIME, NO_TIME, start[2]]
    assert s.tables["assignments"].time.tolist() == expected
    [emp] = [fk for fk in s.foreign_keys if fk.column == "emp_id"]
    # Employee 10's assignments sorted by time: P1 (1 March) before P2 (5 March).
    assert emp.children[emp.indptr[0]:emp.indptr[1]].tolist() == [0, 1]


def test_every_stype_decodes(store):
    _, s = store
    ada = s.decode_row("employees", 0)
    assert ada == {"emp_id": "(present)", "manager_id": None,
                   "hired": "2024-03-01T09:30:00+00:00", "dept": "ops", "name": "Ada",
                   "active": True}
    di = s.decode_row("employees", 3)
    assert di["manager_id"] == "(dangling: no parent row)"
    assert di["hired"] is None and di["dept"] is None and di["active"] is None
    assert s.decode_row("projects", 1) == {"code": "(present)",
                                           "start": "2024-03-05T00:00:00+00:00", "budget": 99.99}
    hours = [s.decode_row("assignments", i)["hours"] for i in range(6)]
    assert hours == [1.5, None, None, 4.0, -2.0, 3.0]  # NaN is null, inf is invalid
    assert s.tables["assignments"].columns["hours"]["n_invalid"] == 1


def test_vocabulary_and_column_texts(store):
    _, s = store
    texts = s.vocab_texts
    assert {"dept is ops", "dept is dev", "Ada", "project_title is Apollo"} <= set(texts)
    assert len(texts) == len(set(texts)) == s.vocab_embeddings.shape[0]
    columns = [c["text"] for c in s.meta["columns"]]
    assert "dept : department" in columns and "project_title" in columns
    assert s.column_embeddings.shape == (len(columns), 16)
    assert s.column_embeddings.dtype == np.float16
    assert "title" not in [c["column"] for c in s.meta["columns"]]  # ignored


def test_tasks(store):
    _, s = store
    title = s.tasks["first_project_title"]
    assert title.anchor_row.tolist() == [0, 1]  # employees 10, 11; 12's project dangles; 999 gone
    values = [s.vocab_values[i] for i in title.target("index")]
    assert values == ["Apollo", "Borealis"]
    assert sorted(s.vocab_values[i] for i in title.candidates) == ["Apollo", "Borealis"]
    assert title.meta["target_is_anchor_column"] is False
    assert title.observation_time.tolist() == s.tables["employees"].time[[0, 1]].tolist()

    active = s.tasks["is_active"]
    assert active.target("value").tolist() == [True, False, True, False]
    assert active.target_valid.tolist() == [True, True, True, False]
    assert active.meta["target_is_anchor_column"] is True
    assert active.meta["hidden_columns"] == ["employees.active"]
    assert active.observation_time[3] == NO_CUTOFF  # Di has no hire time: no cut-off

    budget = s.tasks["budget_later"]
    day = 86_400_000_000
    assert (budget.observation_time - s.tables["projects"].time).tolist() == [day] * 3
    assert budget.target_valid.tolist() == [True, True, False]


def test_statistics_cutoff_is_recorded_and_used(odd, hashing, tmp_path):
    md, raw = odd
    cutoff = int(dt.datetime(2024, 3, 2, tzinfo=UTC).timestamp() * 1e6)
    result = preprocess(md, raw, tmp_path / "cut", embedder=hashing, stats_cutoff_us=cutoff)
    s = open_store(result.path)
    assert s.meta["stats_window"] == {"to_us": cutoff}
    # Only project P1 (1 March) is inside the window: the budget mean is its budget.
    assert s.tables["projects"].columns["budget"]["stats"]["mean"] == pytest.approx(10.5)
    # The task target too: budget_later is observed a day after each start, so only P1's seed
    # (seen 2 March) is inside; the later seeds' budgets do not shape its normalisation.
    task_stats = s.tasks["budget_later"].meta["stats"]
    assert task_stats["count"] == 1 and task_stats["mean"] == pytest.approx(10.5)
    # The database's timestamp statistics count only times inside the window as well.
    whole = open_store(preprocess(md, raw, tmp_path / "all", embedder=hashing).path)
    assert s.meta["database_stats"]["timestamp"]["mean"] < whole.meta["database_stats"]["timestamp"]["mean"]


def test_existing_store_needs_force(store, odd, hashing):
    result, _ = store
    md, raw = odd
    marker = result.path / "metadata.json"
    before = marker.read_bytes()
    with pytest.raises(TributaryError, match="already exists; use --force"):
        preprocess(md, raw, result.path, embedder=hashing)
    assert marker.read_bytes() == before
    preprocess(md, raw, result.path, embedder=hashing, force=True)
    open_store(result.path)
    assert [p.name for p in result.path.parent.iterdir()] == ["odd"]


def test_crash_leaves_nothing(odd, tmp_path):
    md, raw = odd

    class Broken(type(get_registry().create_embedder("hashing"))):
        def _embed_batch(self, texts):
            raise RuntimeError("embedding service went away")

    out = tmp_path / "processed" / "odd"
    with pytest.raises(RuntimeError, match="went away"):
        preprocess(md, raw, out, embedder=Broken(dimension=8))
    assert list((tmp_path / "processed").iterdir()) == []


def test_invalid_metadata_is_refused_before_writing(odd, hashing, tmp_path):
    md, raw = odd
    data = json.loads(md.read_text())
    data["tasks"]["is_active"]["query"] = "SELECT * FROM read_csv('/etc/passwd')"
    md.write_text(json.dumps(data))
    with pytest.raises(MetadataError, match=r"\$\.tasks\.is_active\.query: SQL fails in DuckDB"):
        preprocess(md, raw, tmp_path / "p" / "odd", embedder=hashing)
    assert not (tmp_path / "p").exists() or list((tmp_path / "p").iterdir()) == []


# -- the reader refuses damaged stores, naming the file -----------------------------------


def test_truncated_file(store):
    result, _ = store
    path = result.path / "tables" / "employees.bin"
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(StoreFileError, match=r"employees\.bin: truncated"):
        open_store(result.path)


def test_bit_flip_in_data(store):
    result, s = store
    path = result.path / "graph.bin"
    section = s.files["graph.bin"].sections["fk0.children"]
    data = bytearray(path.read_bytes())
    data[section["offset"]] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(StoreFileError, match=r"graph\.bin: corrupted: checksum mismatch in "
                                             r"section 'fk0.children'"):
        open_store(result.path)
    open_store(result.path, verify=False)  # a quick open skips the data pass, by request


def test_bit_flip_in_header(store):
    result, _ = store
    path = result.path / "tasks" / "is_active.bin"
    data = bytearray(path.read_bytes())
    data[40] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(StoreFileError, match=r"is_active\.bin: corrupted: header checksum"):
        open_store(result.path)


def test_wrong_version(store):
    result, _ = store
    path = result.path / "vocab_embeddings.bin"
    data = bytearray(path.read_bytes())
    data[8:12] = (FORMAT_VERSION + 1).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(StoreFileError,
                       match=rf"vocab_embeddings\.bin: format version {FORMAT_VERSION + 1}"):
        open_store(result.path)


def test_not_a_store(tmp_path):
    with pytest.raises(StoreFileError, match="is not a preprocessed store"):
        open_store(tmp_path)
    with pytest.raises(StoreFileError, match="does not exist"):
        open_store(tmp_path / "nope")


def test_arrays_are_memory_mapped(store):
    _, s = store
    import mmap

    hours = s.tables["assignments"].field("hours", "value")
    def mapping(array):
        base = array
        while isinstance(base, np.ndarray):
            base = base.base
        return base.obj if isinstance(base, memoryview) else base

    base = mapping(hours)  # a view of the file's one read-only memory map
    assert isinstance(base, mmap.mmap) and not hours.flags.writeable
    other = s.tables["assignments"].valid("hours")
    base2 = mapping(s.tables["assignments"].file.raw(s.tables["assignments"].columns["hours"]["valid"]))
    assert base2 is base and len(other) == len(hours)  # every section shares that map


def test_task_queries_run_once_and_their_kept_results_are_removed(odd, hashing, tmp_path,
                                                                 monkeypatch):
    """Validation runs each task query to the end anyway: it keeps the result (an Arrow IPC
    file in a temporary folder) and the tasks stage reads it back instead of running the query
    again. The store is the same as one whose tasks ran their queries; the folder goes."""
    import tempfile

    from tributary_core.preprocess import pipeline

    md, raw = odd
    validate = pipeline.validate_metadata

    def keeping_nothing(*args, keep_results=None, **kwargs):
        return validate(*args, **kwargs)

    with monkeypatch.context() as patch:  # validation keeps nothing: the tasks stage runs them
        patch.setattr(pipeline, "validate_metadata", keeping_nothing)
        again = open_store(preprocess(md, raw, tmp_path / "again", embedder=hashing).path)
    before = set(Path(tempfile.gettempdir()).glob(".tributary-task-results.*.tmp"))

    def no_second_run(*args, **kwargs):
        raise AssertionError("the tasks stage ran a task query again")

    monkeypatch.setattr(pipeline, "run_query", no_second_run)
    once = open_store(preprocess(md, raw, tmp_path / "once", embedder=hashing).path)
    assert set(Path(tempfile.gettempdir()).glob(".tributary-task-results.*.tmp")) == before
    assert list(once.tasks) == list(again.tasks) and once.tasks
    for name, task in once.tasks.items():
        for field in ("anchor_row", "observation_time", "target_valid"):
            np.testing.assert_array_equal(getattr(task, field), getattr(again.tasks[name], field))
    for rel in once.files:
        assert (once.path / rel).read_bytes() == (again.path / rel).read_bytes(), rel
