"""`tributary run preprocess` and `tributary inspect` as a user types them."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import write_tables
from test_preprocess import ODD_METADATA, odd_tables

from tributary_core.cli import cli


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A project folder laid out like the repository: data/raw/odd, data/metadata/odd.json."""
    monkeypatch.chdir(tmp_path)
    write_tables(tmp_path / "data" / "raw" / "odd", odd_tables())
    (tmp_path / "data" / "metadata").mkdir(parents=True)
    (tmp_path / "data" / "metadata" / "odd.json").write_text(json.dumps(ODD_METADATA))
    return tmp_path


def preprocess(*extra: str):
    return CliRunner().invoke(cli, ["run", "preprocess", "--db", "odd", "--embedder", "hashing",
                                    "--dimension", "8", *extra])


def test_preprocess_defaults_and_summary(workdir):
    result = preprocess()
    assert result.exit_code == 0, result.output
    assert (workdir / "data" / "processed" / "odd" / "metadata.json").exists()
    out = result.output
    assert "tables      3, 13 rows" in out
    assert "employees.manager_id: 1 dangling" in out
    assert "task        first_project_title: 2 seeds, 2 unmatched anchor keys" in out
    assert "seconds     validate" in out


def test_preprocess_refuses_to_overwrite(workdir):
    assert preprocess().exit_code == 0
    again = preprocess()
    assert again.exit_code == 2
    assert "data/processed/odd already exists; use --force" in again.output
    assert preprocess("--force").exit_code == 0


@pytest.mark.parametrize(("args", "fragment"), [
    (["--raw", "nowhere"], "nowhere: raw data folder not found"),
    (["--metadata", "none.json"], "none.json: metadata file not found"),
    (["--stats-cutoff", "someday"], "--stats-cutoff: 'someday' is not a time"),
    (["-E", "speed=fast"], "-E 'speed=fast': embedder 'hashing' takes KEY=VALUE with KEY one of: none"),
])
def test_preprocess_user_errors(workdir, args, fragment):
    result = preprocess(*args)
    assert result.exit_code == 2 and fragment in result.output
    assert "Traceback" not in result.output


def test_unknown_embedder(workdir):
    result = CliRunner().invoke(cli, ["run", "preprocess", "--db", "odd", "--embedder", "bert"])
    assert result.exit_code == 2 and "unknown embedder 'bert'; installed:" in result.output


def test_inspect(workdir):
    assert preprocess().exit_code == 0
    store = str(workdir / "data" / "processed" / "odd")
    summary = CliRunner().invoke(cli, ["inspect", store])
    assert summary.exit_code == 0
    assert "employees.manager_id" in summary.output and "first_project_title" in summary.output
    row = CliRunner().invoke(cli, ["inspect", store, "--table", "employees", "--row", "1",
                                   "--json"])
    assert json.loads(row.output)["values"]["name"] == "Bob"
    table = CliRunner().invoke(cli, ["inspect", store, "--table", "projects"])
    assert "budget" in table.output and "numerical" in table.output
    task = CliRunner().invoke(cli, ["inspect", store, "--task", "first_project_title"])
    assert json.loads(task.output)["candidates"] == ["Apollo", "Borealis"]
    as_json = json.loads(CliRunner().invoke(cli, ["inspect", store, "--json"]).output)
    assert as_json["tables"]["assignments"]["rows"] == 6


@pytest.mark.parametrize(("args", "fragment"), [
    (["--table", "nope"], "no table 'nope'"),
    (["--task", "nope"], "no task 'nope'"),
    (["--row", "3"], "--row needs --table"),
    (["--table", "projects", "--row", "7"], "projects has 3 rows; row 7 does not exist"),
])
def test_inspect_user_errors(workdir, args, fragment):
    assert preprocess().exit_code == 0
    result = CliRunner().invoke(cli, ["inspect", "data/processed/odd", *args])
    assert result.exit_code == 2 and fragment in result.output


def test_inspect_damaged_store_is_one_line(workdir):
    assert preprocess().exit_code == 0
    path = workdir / "data" / "processed" / "odd" / "tables" / "projects.bin"
    path.write_bytes(path.read_bytes()[:100])
    result = CliRunner().invoke(cli, ["inspect", "data/processed/odd"])
    assert result.exit_code == 2
    assert result.output.startswith("Error: data/processed/odd/tables/projects.bin: truncated")


def test_embedder_options_and_cache_flags(workdir, monkeypatch):
    pytest.importorskip("uvicorn")  # the embeddings server is the `serve` extra's
    from tributary_core.registry import get_registry
    from tributary_core.serve import EmbeddingServer

    with EmbeddingServer(get_registry().create_embedder("hashing", dimension=8)) as server:
        monkeypatch.setenv("TRIBUTARY_EMBEDDER_URL", server.url)
        base = ["run", "preprocess", "--db", "odd", "--embedder", "http", "--dimension", "8",
                "--cache-dir", "cache", "--force"]
        bad = CliRunner().invoke(cli, [*base, "-E", "concurrency=many"])
        assert bad.exit_code == 2
        assert "-E 'concurrency=many': concurrency must be an integer, got 'many'" in bad.output
        first = CliRunner().invoke(cli, [*base, "-E", "batch-size=5", "-E", "concurrency=2"])
        assert first.exit_code == 0, first.output
        assert "from the cache, " in first.output and server.stats.requests > 1
        assert any((workdir / "cache").glob("http-*/*.seg"))
        sent = server.stats.texts
        cached = CliRunner().invoke(cli, base)
        assert "0 embedded in 0 batches" in cached.output and server.stats.texts == sent
        fresh = CliRunner().invoke(cli, [*base, "--no-cache"])
        assert fresh.exit_code == 0 and " 0 from the cache" in fresh.output
        assert server.stats.texts == 2 * sent
