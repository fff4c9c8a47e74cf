"""The synthetic database generator: its databases validate, pass the leakage check, preprocess
and vary; the same seed gives the same bytes; a planted leak is found; a task is learnable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from tributary_core import get_registry, validate_metadata
from tributary_core.cli import cli
from tributary_core.datasets import synth
from tributary_core.datasets.synth import generate_corpus, generate_database
from tributary_core.errors import TributaryError
from tributary_core.leakage import check_leakage
from tributary_core.sql import fetch_arrow, sandbox_connection

CORPUS_SEED = 13  # its eight databases hold a link table, a self-reference and detail rows
COUNT = 8


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    return generate_corpus(COUNT, CORPUS_SEED, tmp_path_factory.mktemp("synth"))


def _tables(path: Path, md) -> dict[str, pa.Table]:
    return {t: pq.read_table(path / f"{t}.parquet") for t in md.tables}


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_databases_validate_and_pass_the_leakage_check(corpus):
    for path in corpus:
        report = validate_metadata(path / "metadata.json", raw_dir=path)
        assert report.ok and not report.warnings, [str(p) for p in report.problems]
        md = report.metadata
        assert md.name == path.name
        assert 3 <= len(md.tables) <= 12 and 2 <= len(md.tasks) <= 6
        manifest = json.loads((path / "_manifest.json").read_text())
        assert manifest["generator"] == synth.GENERATOR and manifest["seed"] == [
            CORPUS_SEED, corpus.index(path)]
        assert manifest["rows"] == report.rows
        assert sum(report.rows.values()) >= 1_000 and max(report.rows.values()) <= synth.MAX_ROWS
        findings = check_leakage(path / "metadata.json", path)
        assert findings == [], [f.message for f in findings]


def test_tasks_have_enough_rows_and_varied_labels(corpus):
    kinds = set()
    for path in corpus:
        md = validate_metadata(path / "metadata.json").raise_for_errors()
        con = sandbox_connection(_tables(path, md), threads=1)
        try:
            for name, task in md.tasks.items():
                result = fetch_arrow(con.sql(task.query))
                assert result.num_rows >= synth.MIN_TASK_ROWS, name
                label = result.column(task.target_column).drop_null()
                assert pc.count_distinct(label).as_py() >= 2, name
                window = task.horizon is not None
                kinds.add((task.target_stype, window))
                if window:  # a next-window label: observed on a grid of cut-offs
                    assert task.observation_time_column == "obs_time"
                    assert task.horizon.endswith("days") and "_next_" in name
                    times = result.column("obs_time").unique()
                    assert len(times) >= 3, name
        finally:
            con.close()
    assert {s for s, _ in kinds} == {"numerical", "boolean", "categorical"}
    assert {w for _, w in kinds} == {True, False}


def test_schemas_vary(corpus):
    stypes, table_counts, themes, skews = set(), set(), set(), []
    has_link = has_self_reference = has_untimed = has_detail = False
    for path in corpus:
        md = validate_metadata(path / "metadata.json").raise_for_errors()
        themes.add(json.loads((path / "_manifest.json").read_text())["theme"])
        table_counts.add(len(md.tables))
        for name, table in md.tables.items():
            stypes.update(c.stype for c in table.columns.values())
            has_link |= table.primary_key is None
            has_untimed |= table.temporal_column is None and table.temporal_from is None
            has_detail |= table.temporal_from is not None
            for cname, col in table.columns.items():
                if col.foreign_key is None:
                    continue
                parent = col.foreign_key.split(".")[0]
                has_self_reference |= parent == name
                if table.temporal_column:
                    keys = pq.read_table(path / f"{name}.parquet", columns=[cname]).column(cname)
                    counts = pc.value_counts(keys.drop_null()).field("counts").to_numpy()
                    if len(counts) >= 20:
                        skews.append(counts.max() / np.median(counts))
    assert stypes >= {"identifier", "numerical", "timestamp", "boolean", "categorical", "text"}
    assert len(table_counts) >= 3 and len(themes) >= 3
    assert has_link and has_self_reference and has_detail and has_untimed
    # fan-outs of varied shape: some parent has far more children than the typical one
    assert max(skews) >= 10, skews


def test_same_seed_same_bytes(corpus, tmp_path):
    a = generate_database(5, tmp_path / "a")
    b = generate_database(5, tmp_path / "b")
    assert a == b
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    generate_database(6, tmp_path / "c")
    assert (tmp_path / "a" / "metadata.json").read_bytes() != (tmp_path / "c" / "metadata.json").read_bytes()
    # database i of a corpus does not depend on how many were asked for
    again = generate_corpus(2, CORPUS_SEED, tmp_path / "again")
    assert _files(again[1]) == _files(corpus[1])
    assert _files(corpus[0]) != _files(corpus[1])


def test_a_database_preprocesses(corpus, tmp_path):
    from tributary_core.preprocess import preprocess
    from tributary_core.store import open_store

    path = corpus[0]
    embedder = get_registry().create_embedder("hashing", dimension=8)
    preprocess(path / "metadata.json", path, tmp_path / "store", embedder=embedder)
    store = open_store(tmp_path / "store")
    md = validate_metadata(path / "metadata.json").raise_for_errors()
    assert set(store.tasks) == set(md.tasks)
    assert all(len(seeds) >= synth.MIN_TASK_ROWS for seeds in store.tasks.values())


def test_planted_leaks_are_found(corpus, tmp_path):
    """A column copied from a task's label, and a hidden column made visible again."""
    path = corpus[2]
    md = json.loads((path / "metadata.json").read_text())
    raw = tmp_path / "raw"
    raw.mkdir()
    for f in path.glob("*.parquet"):
        (raw / f.name).write_bytes(f.read_bytes())
    name, task = next((n, t) for n, t in md["tasks"].items() if "horizon" not in t)
    anchor, key, target = task["anchor_table"], task["anchor_key"], task["target_column"]
    table = pq.read_table(raw / f"{anchor}.parquet")
    con = sandbox_connection({anchor: table}, threads=1)
    labels = fetch_arrow(con.sql(f"SELECT {key}, {target} AS label FROM ({task['query']})"))
    con.close()
    lookup = dict(zip(labels.column(key).to_pylist(), labels.column("label").to_pylist(), strict=True))
    found = [lookup.get(k) for k in table.column(key).to_pylist()]
    if task["target_stype"] == "numerical":  # the label in other units
        stype = "numerical"
        leak = pa.array([None if v is None else v * 100.0 for v in found], pa.float64())
    else:  # the label as a code
        stype = "categorical"
        leak = pa.array([None if v is None else f"code {v}" for v in found], pa.string())
    pq.write_table(table.append_column("audit_code", leak), raw / f"{anchor}.parquet")
    md["tables"][anchor]["columns"]["audit_code"] = {"stype": stype}
    (tmp_path / "md.json").write_text(json.dumps(md))
    findings = check_leakage(tmp_path / "md.json", raw)
    assert (name, f"{anchor}.audit_code") in [(f.task, f.column) for f in findings]
    assert all("audit_code" in f.column for f in findings), [f.message for f in findings]
    # un-hiding a column the generator hid (found in any database of the corpus) is caught too
    for other in corpus:
        md = json.loads((other / "metadata.json").read_text())
        hidden = [(n, t) for n, t in md["tasks"].items()
                  if any(h.split(".")[1] != t["target_column"] for h in t.get("hidden_columns", []))]
        if hidden:
            name, task = hidden[0]
            shown = [h for h in task["hidden_columns"] if h.split(".")[1] != task["target_column"]]
            task["hidden_columns"] = [h for h in task["hidden_columns"] if h not in shown]
            (tmp_path / "unhidden.json").write_text(json.dumps(md))
            findings = check_leakage(tmp_path / "unhidden.json", other)
            assert {f.column for f in findings if f.task == name} & set(shown)
            break
    else:
        pytest.fail("no database of the corpus hid a column that gives a label away")


def test_a_task_is_learnable(tmp_path):
    """A short real training run beats the majority/mean baseline on a column target."""
    from tributary_core.preprocess import preprocess
    from tributary_core.train import TrainConfig, evaluate, load_run, train

    path = tmp_path / "db"
    generate_database([3, 9], path)
    md = validate_metadata(path / "metadata.json").raise_for_errors()
    tasks = [n for n, t in md.tasks.items() if t.horizon is None]
    assert tasks
    preprocess(path / "metadata.json", path, tmp_path / "store",
               embedder=get_registry().create_embedder("hashing", dimension=8))
    config = TrainConfig(stores=[str(tmp_path / "store")], tasks=tasks, steps=60, batch_size=16,
                         seq_len=48, width=4, d_model=32, n_layers=2, n_heads=4, warmup=5,
                         val_every=60, val_batches=1, ckpt_every=60, lr=3e-3)
    train(config, tmp_path / "run")
    results = evaluate(load_run(tmp_path / "run"), split="test", max_seeds=200)
    margins = []
    for entry in results.values():
        metrics, base = entry["metrics"], entry["baseline"]
        metric = next(m for m in ("auroc", "r2", "accuracy") if m in metrics)
        margins.append(metrics[metric] - base[metric])
    assert max(margins) > 0.1, results


def test_cli_writes_keeps_and_refuses(tmp_path):
    out = tmp_path / "corpus"
    run = CliRunner().invoke
    first = run(cli, ["datasets", "synth", "--count", "2", "--seed", "4", "--out", str(out)])
    assert first.exit_code == 0, first.output
    lines = first.output.strip().splitlines()
    assert lines[0].startswith("synth-4-0000: ") and lines[1].startswith("synth-4-0001: ")
    assert lines[-1].startswith("wrote 2 synthetic databases") and "s per database" in lines[-1]
    before = _files(out / "synth-4-0001")
    again = run(cli, ["datasets", "synth", "--count", "3", "--seed", "4", "--out", str(out)])
    assert again.exit_code == 0 and "synth-4-0000: kept" in again.output
    assert "wrote 1 synthetic database, 2 kept" in again.output
    assert _files(out / "synth-4-0001") == before
    # another database in a target folder: refused before anything is written, unless --force
    manifest = out / "synth-4-0001" / "_manifest.json"
    data = json.loads(manifest.read_text())
    data["seed"] = [4, 99]
    manifest.write_text(json.dumps(data))
    refused = run(cli, ["datasets", "synth", "--count", "4", "--seed", "4", "--out", str(out)])
    assert refused.exit_code == 2 and "synth-4-0001 already exists" in refused.output
    assert "Traceback" not in refused.output and not (out / "synth-4-0003").exists()
    forced = run(cli, ["datasets", "synth", "--count", "2", "--seed", "4", "--out", str(out),
                       "--force"])
    assert forced.exit_code == 0 and _files(out / "synth-4-0001") == before
    # a folder of other files is never replaced
    (out / "synth-4-0005").mkdir()
    (out / "synth-4-0005" / "notes.txt").write_text("mine")
    mine = run(cli, ["datasets", "synth", "--count", "6", "--seed", "4", "--out", str(out), "--force"])
    assert mine.exit_code == 2 and "holds other files" in mine.output
    assert (out / "synth-4-0005" / "notes.txt").read_text() == "mine"
    bad = run(cli, ["datasets", "synth", "--count", "0", "--out", str(out)])
    assert bad.exit_code == 2 and bad.output.count("Error:") == 1


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    from tributary_core.datasets import _files as files

    def broken(out, tables):
        (out / "half.parquet").write_bytes(b"PAR1")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "write_tables", broken)
    with pytest.raises(OSError):
        generate_database(1, tmp_path / "db")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TributaryError, match="a seed is a whole number"):
        generate_database(-1, tmp_path / "db")


@pytest.mark.parametrize("args, fragment", [
    (["--count", "100000000000"], "--count 100000000000: at most 10,000 databases"),
    (["--count", "1", "--seed", str(10**300)], "the seed must be a whole number from 0 to 2**63 - 1"),
    (["--count", "1", "--seed", str(2**63)], "the seed must be a whole number from 0 to 2**63 - 1"),
])
def test_cli_refuses_huge_counts_and_seeds(tmp_path, args, fragment):
    """A typo'd --count is refused at once (it used to list 1e11 folders before writing any);
    a seed too long for a folder name is refused before the --out folder is made."""
    out = tmp_path / "corpus"
    result = CliRunner().invoke(cli, ["datasets", "synth", *args, "--out", str(out)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and fragment in errors[0], result.output
    assert "Traceback" not in result.output and list(tmp_path.iterdir()) == []
    with pytest.raises(TributaryError, match="from 0 to 2"):
        generate_corpus(1, 2**63, out)
    with pytest.raises(TributaryError, match="from 1 to 10,000"):
        generate_corpus(10_001, 0, out)


@pytest.mark.parametrize("marker", ["metadata.json", "_manifest.json"])
def test_cli_refuses_an_out_that_is_a_database(tmp_path, marker):
    """--out naming one database (or a store) rather than the corpus folder would nest a corpus
    inside it: refused, nothing written."""
    db = tmp_path / "synth-0-0000"
    db.mkdir()
    (db / marker).write_text("{}")
    result = CliRunner().invoke(cli, ["datasets", "synth", "--count", "1", "--out", str(db)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and f"--out {db}: is a database or store (it holds {marker})" in errors[0]
    assert [p.name for p in db.iterdir()] == [marker]
