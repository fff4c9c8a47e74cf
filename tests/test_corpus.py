"""Corpora: many stores trained as one without holding them all (``StoreGraphs``,
``StoreEmbeddings``), raw corpora preprocessed in one command, ``run train --corpus``."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_tables
from test_sampler import SHOP_METADATA, shop_tables

from tributary_core import get_registry
from tributary_core.cli import cli
from tributary_core.corpus import find_databases, find_stores, preprocess_corpus
from tributary_core.errors import TributaryError
from tributary_core.preprocess import preprocess
from tributary_core.sampler import Sampler
from tributary_core.store import open_store
from tributary_core.train import TrainConfig, train
from tributary_core.train.trainer import StoreEmbeddings, read_metrics


def raw_database(folder, name: str, seed: int):
    """A raw database folder as a corpus holds it: parquet files and its own metadata.json."""
    write_tables(folder, shop_tables(np.random.default_rng(seed), 8, 60, 80))
    meta = copy.deepcopy(SHOP_METADATA)
    meta["name"] = name
    (folder / "metadata.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three small stores of different databases in one folder, and their raw corpus."""
    root = tmp_path_factory.mktemp("corpus")
    embedder = get_registry().create_embedder("hashing", dimension=8)
    for i in range(3):
        raw = raw_database(root / "raw" / f"shop{i}", f"shop{i}", i)
        preprocess(raw / "metadata.json", raw, root / "stores" / f"shop{i}", embedder=embedder)
    (root / "stores" / "notes").mkdir()  # not a store: skipped
    return root


def same_batches(a, b):
    for field in ("cell_col", "row_index", "number", "vocab", "is_label", "is_masked"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_find_stores_lists_only_stores(corpus):
    assert [p.name for p in find_stores(corpus / "stores")] == ["shop0", "shop1", "shop2"]
    assert [p.name for p in find_databases(corpus / "raw")] == ["shop0", "shop1", "shop2"]
    with pytest.raises(TributaryError, match=r"notes: no Tributary store in it"):
        find_stores(corpus / "stores" / "notes")
    with pytest.raises(TributaryError, match=r"nowhere: corpus folder not found"):
        find_stores(corpus / "nowhere")
    with pytest.raises(TributaryError, match=r"stores: no database folder in it"):
        find_databases(corpus / "stores")  # stores are not raw databases


def test_bounded_graphs_give_the_same_batches(corpus):
    """With max_graphs=1 only one store's graph is held at a time, yet every batch equals the
    batch of a sampler holding all of them: dropping and rebuilding a graph changes nothing."""
    stores = [open_store(p) for p in find_stores(corpus / "stores")]
    kw = dict(batch_size=4, context_len=48, width=3, seed=3, icl_share=0.25, mask_share=0.3)
    free = Sampler(stores, **kw)
    bounded = Sampler(stores, max_graphs=1, **kw)
    assert bounded.graphs.builds == 0  # choosing the seeds builds no graph
    dbs = set()
    for step in range(24):
        a, b = free.batch_at(step), bounded.batch_at(step)
        assert (a.database, a.task) == (b.database, b.task)
        same_batches(a, b)
        dbs.add(b.database)
        assert bounded.graphs.held == [b.database]
    assert len(dbs) == 3  # the steps visited every store...
    assert bounded.graphs.builds > 3  # ...and graphs were dropped and built again
    # evaluation passes and single contexts go through the same cache
    for task in bounded.tasks[:2]:
        for x, y in zip(free.evaluation(task.key), bounded.evaluation(task.key), strict=True):
            same_batches(x, y)
    assert len(bounded.graphs.held) == 1
    with pytest.raises(TributaryError, match="max_graphs must be at least 1"):
        Sampler(stores, max_graphs=0)


def test_store_embeddings_load_on_use_and_drop(corpus):
    import torch

    stores = [open_store(p) for p in find_stores(corpus / "stores")]
    lazy = StoreEmbeddings(stores, torch.device("cpu"), limit=2)
    assert list(lazy) == ["shop0", "shop1", "shop2"] and len(lazy._held) == 0
    for name in ("shop0", "shop1", "shop2", "shop1"):
        col, voc = lazy[name]
        store = next(s for s in stores if s.name == name)
        np.testing.assert_array_equal(col.numpy(), np.asarray(store.column_embeddings))
        np.testing.assert_array_equal(voc.numpy(), np.asarray(store.vocab_embeddings))
    assert list(lazy._held) == ["shop2", "shop1"]  # shop0 dropped, shop1 most recent
    other = lazy.extended(stores[:1])
    assert list(other) == ["shop0", "shop1", "shop2"] and other["shop0"][0].shape == col.shape


def test_train_on_a_corpus_validates_on_held_out_stores(corpus, tmp_path):
    stores = [str(p) for p in find_stores(corpus / "stores")]
    config = TrainConfig(stores=stores[:2], val_stores=stores[2:], max_graphs=1, steps=4,
                         batch_size=4, seq_len=32, width=3, d_model=12, n_layers=1, n_heads=3,
                         warmup=1, val_every=4, val_batches=1, ckpt_every=4, icl_share=0.25)
    train(config, tmp_path / "run")
    rows = read_metrics(tmp_path / "run")
    trained = {r["task"].split("/")[0] for r in rows if "task" in r}
    assert trained <= {"shop0", "shop1"}
    val = [r for r in rows if "val_loss" in r]
    assert val and np.isfinite(val[-1]["val_loss"])
    assert any(k.startswith("val/shop2/") for k in val[-1])  # the held-out store validated
    assert not any(k.startswith(("val/shop0/", "val/shop1/")) for k in val[-1])


def test_cli_preprocess_and_train_a_corpus(corpus, tmp_path):
    runner = CliRunner()
    out = tmp_path / "stores"
    args = ["run", "preprocess", "--corpus", str(corpus / "raw"), "--out", str(out),
            "--embedder", "hashing", "--dimension", "8"]
    first = runner.invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "3 stores (3 made, 0 already current)" in first.output
    again = runner.invoke(cli, args)  # resumable: current stores are kept
    assert again.exit_code == 0 and "(0 made, 3 already current)" in again.output
    assert preprocess_corpus(corpus / "raw", out, get_registry().create_embedder(
        "hashing", dimension=8))["kept"] == 3
    run = tmp_path / "run"
    result = runner.invoke(cli, ["run", "train", "--corpus", str(out), "--steps", "2",
                                 "--batch-size", "4", "--seq-len", "32", "--d-model", "12",
                                 "--layers", "1", "--heads", "3", "--val-every", "2",
                                 "--val-batches", "1", "--out", str(run)])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert [p.rsplit("/", 1)[1] for p in config["stores"]] == ["shop0", "shop1", "shop2"]
    assert config["max_graphs"] == 32 and config["val_stores"] is None


@pytest.mark.parametrize("args, fragment", [
    (["run", "preprocess", "--embedder", "hashing"], "pass one of --db NAME or --corpus FOLDER"),
    (["run", "preprocess", "--corpus", "{raw}", "--embedder", "hashing"], "--corpus needs --out"),
    (["run", "preprocess", "--corpus", "{stores}", "--out", "{tmp}/x", "--embedder", "hashing"],
     "no database folder in it"),
    (["run", "train", "--corpus", "{raw}", "--out", "{tmp}/run"], "raw: a raw corpus"),
    (["run", "train", "--steps", "1", "--out", "{tmp}/run"], "pass --db or --corpus"),
])
def test_corpus_bad_input_is_one_line(corpus, tmp_path, args, fragment):
    names = {"raw": corpus / "raw", "stores": corpus / "stores", "tmp": tmp_path}
    result = CliRunner().invoke(cli, [a.format(**names) for a in args])
    assert result.exit_code != 0 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and fragment in errors[0], result.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "x").exists()


def test_foundation_command_prepares_corpora_once_and_trains(tmp_path):
    """`run foundation` generates and preprocesses a corpus and a held-out corpus, trains on the
    first with validation on the second, and a second call reuses both."""
    runner = CliRunner()
    args = ["run", "foundation", "--count", "2", "--heldout", "1", "--seed", "3", "--steps", "2",
            "--batch-size", "4", "--seq-len", "48", "--d-model", "12", "--layers", "1",
            "--heads", "3", "--embedder", "hashing", "--dimension", "8",
            "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")]
    first = runner.invoke(cli, args)
    assert first.exit_code == 0, first.output
    stores = find_stores(tmp_path / "data" / "processed" / "synth-3")
    held = find_stores(tmp_path / "data" / "processed" / "synth-3-heldout")
    assert [p.name for p in stores] == ["synth-3-0000", "synth-3-0001"]
    assert [p.name for p in held] == ["synth-4-0000"]  # the held-out corpus: seed + 1
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["stores"] == [str(p) for p in stores]
    assert config["val_stores"] == [str(p) for p in held] and config["max_graphs"] == 32
    rows = read_metrics(tmp_path / "run")
    val = [r for r in rows if "val_loss" in r]
    assert val and any(k.startswith("val/synth-4-0000/") for k in val[-1])
    again = runner.invoke(cli, args[:-2] + ["--prepare-only", "--out", str(tmp_path / "run")])
    assert again.exit_code == 0, again.output
    assert "0 made, 2 already current" in again.output and "0 made, 1 already current" in again.output


def one_error(result) -> str:
    """The single ``Error:`` line of a failed command (and no traceback)."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


TRAIN = ["--steps", "1", "--batch-size", "4", "--seq-len", "32", "--d-model", "12", "--layers",
         "1", "--heads", "3"]


def test_train_refuses_stores_that_cannot_train_together(corpus, tmp_path):
    """Named before the run starts: a store given twice, two stores of one database name, a
    corpus of mixed embedders, a --val-corpus overlapping the training stores or embedded
    otherwise, and a --corpus that is a store or a raw database rather than a folder of stores."""
    stores, raw = corpus / "stores", corpus / "raw"
    same_name = tmp_path / "same"  # shop0 again under another folder name
    for name in ("shop0", "copy"):
        shutil.copytree(stores / "shop0", same_name / name)
    other = tmp_path / "other"  # shop3: another database, another embedder
    db = raw_database(tmp_path / "raw3" / "shop3", "shop3", 3)
    preprocess(db / "metadata.json", db, other / "shop3",
               embedder=get_registry().create_embedder("hashing", dimension=4))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "shop0").symlink_to(stores / "shop0", target_is_directory=True)
    (mixed / "shop3").symlink_to(other / "shop3", target_is_directory=True)
    cases = [
        (["--corpus", stores, "--db", stores / "shop1"], f"{stores / 'shop1'}: the store is given twice"),
        (["--corpus", stores, "--corpus", stores], f"{stores / 'shop0'}: the store is given twice"),
        (["--corpus", same_name], f"{same_name / 'shop0'}: database 'shop0' is also the store "
                                  f"{same_name / 'copy'}"),
        (["--corpus", mixed], f"{mixed / 'shop3'}: embedded with hashing"),
        (["--corpus", stores, "--val-corpus", stores],
         f"--val-corpus: {stores / 'shop0'}: database 'shop0' is also the training store"),
        (["--corpus", stores, "--val-corpus", other], f"--val-corpus: {other / 'shop3'}: embedded "
                                                      f"with hashing/char-ngram-blake2b-v1 D=4"),
        (["--corpus", stores / "shop0"], f"{stores / 'shop0'}: is a store, not a folder of stores"),
        (["--corpus", raw / "shop0"], f"{raw / 'shop0'}: is one raw database"),
        (["--corpus", raw], f"{raw}: a raw corpus (databases not preprocessed)"),
    ]
    runner = CliRunner()
    for args, fragment in cases:
        result = runner.invoke(cli, ["run", "train", *map(str, args), *TRAIN,
                                     "--out", str(tmp_path / "run")])
        assert fragment in one_error(result), (args, result.output)
        assert not (tmp_path / "run").exists()


def test_leftovers_of_an_interrupted_write_are_not_stores_or_databases(corpus, tmp_path):
    """The hidden folders an interrupted write leaves (a temporary one, or an old store moved
    aside) hold whole copies; a corpus listing skips them instead of training a database twice."""
    stores, raw = tmp_path / "stores", tmp_path / "raw"
    shutil.copytree(corpus / "stores" / "shop0", stores / "shop0")
    shutil.copytree(corpus / "stores" / "shop0", stores / ".shop0.old-4242")
    shutil.copytree(corpus / "raw" / "shop1", raw / "shop1")
    shutil.copytree(corpus / "raw" / "shop1", raw / ".shop1.4242.0bbfd16a.x1y2z3.tmp")
    assert find_stores(stores) == [stores / "shop0"]
    assert find_databases(raw) == [raw / "shop1"]


def test_preprocess_corpus_bad_input_writes_nothing(corpus, tmp_path):
    """A broken metadata.json anywhere in the raw corpus, or two databases of one name, fail
    before any store is made (and the --out folder is not left behind); --out may not be the
    raw corpus, a store or a database; --corpus may not be one database."""
    raw = tmp_path / "raw"
    for name in ("shop0", "shop1"):
        shutil.copytree(corpus / "raw" / name, raw / name)
    runner = CliRunner()

    def run(corpus_dir, out):
        return runner.invoke(cli, ["run", "preprocess", "--corpus", str(corpus_dir), "--out",
                                   str(out), "--embedder", "hashing", "--dimension", "8"])

    meta = raw / "shop1" / "metadata.json"
    good = meta.read_text()
    meta.write_text("{broken")
    error = one_error(run(raw, tmp_path / "out"))
    assert f"{meta}: $: not valid JSON" in error
    assert not (tmp_path / "out").exists()  # shop0 was not preprocessed first
    meta.write_text(good.replace('"shop1"', '"shop0"'))
    error = one_error(run(raw, tmp_path / "out"))
    assert f"{meta}: $.name: database 'shop0' is also {raw / 'shop0' / 'metadata.json'}" in error
    assert not (tmp_path / "out").exists()
    meta.write_text(good)
    assert f"--out {raw}: is the raw corpus itself" in one_error(run(raw, raw))
    store = corpus / "stores" / "shop0"
    assert f"--out {store}: is a store" in one_error(run(raw, store))
    assert f"--out {raw / 'shop0'}: is a database folder" in one_error(run(raw, raw / "shop0"))
    assert f"{raw / 'shop0'}: is one database" in one_error(run(raw / "shop0", tmp_path / "out"))
    assert sorted(p.name for p in raw.iterdir()) == ["shop0", "shop1"]
    assert sorted(p.name for p in (raw / "shop0").iterdir()) == sorted(
        p.name for p in (corpus / "raw" / "shop0").iterdir())
    assert not (tmp_path / "out").exists()


def test_preprocess_corpus_passes_the_query_timeout(corpus, tmp_path, monkeypatch):
    import tributary_core.preprocess as pre

    seen = []

    def fake(*args, query_timeout_s=None, **kwargs):
        seen.append(query_timeout_s)
        raise TributaryError("stop here")

    monkeypatch.setattr(pre, "preprocess", fake)
    result = CliRunner().invoke(cli, ["run", "preprocess", "--corpus", str(corpus / "raw"),
                                      "--out", str(tmp_path / "out"), "--embedder", "hashing",
                                      "--dimension", "8", "--query-timeout", "7"])
    assert "stop here" in one_error(result) and seen == [7.0]
    assert not (tmp_path / "out").exists()


def test_a_corpus_takes_query_memory_and_batch_rows(corpus, tmp_path):
    """--query-memory and --batch-rows apply to each database of a corpus; the stores are the
    stores made without them. A bad value is one line before anything is written."""
    runner = CliRunner()
    out = tmp_path / "stores"
    base = ["run", "preprocess", "--corpus", str(corpus / "raw"), "--embedder", "hashing",
            "--dimension", "8"]
    done = runner.invoke(cli, [*base, "--out", str(out), "--batch-rows", "3",
                               "--query-memory", "64MB"])
    assert done.exit_code == 0, done.output
    assert "3 stores (3 made, 0 already current)" in done.output
    for name in ("shop0", "shop1", "shop2"):
        made = {p.relative_to(out / name): p.read_bytes()
                for p in sorted((out / name).rglob("*.bin"))}
        plain = {p.relative_to(corpus / "stores" / name): p.read_bytes()
                 for p in sorted((corpus / "stores" / name).rglob("*.bin"))}
        assert made.keys() == plain.keys() and made and all(
            made[k] == plain[k] for k in made), name
    bad = runner.invoke(cli, [*base, "--out", str(tmp_path / "bad"), "--query-memory", "lots"])
    assert "--query-memory" in one_error(bad) and not (tmp_path / "bad").exists()
    with pytest.raises(TributaryError, match="--batch-rows: must be a whole number"):
        preprocess_corpus(corpus / "raw", tmp_path / "bad", get_registry().create_embedder(
            "hashing", dimension=8), batch_rows=0)
    assert not (tmp_path / "bad").exists()


def test_foundation_trains_on_exactly_the_databases_asked_for(corpus, tmp_path, monkeypatch):
    """Its corpus folders may hold more: databases of an earlier, larger --count and stores of
    the user's. Only the --count generated databases are preprocessed and trained on."""
    import tributary_core.train.distributed as distributed

    data = tmp_path / "data"
    shutil.copytree(corpus / "raw" / "shop0", data / "raw" / "synth-3" / "synth-3-0007")
    shutil.copytree(corpus / "stores" / "shop1", data / "processed" / "synth-3" / "aaa")
    launched = []
    monkeypatch.setattr(distributed, "launch", lambda config, out, **kw: launched.append(config))
    result = CliRunner().invoke(cli, [
        "run", "foundation", "--count", "1", "--heldout", "1", "--seed", "3", *TRAIN,
        "--embedder", "hashing", "--dimension", "8", "--data", str(data), "--out",
        str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    processed = data / "processed"
    assert launched[0].stores == [str(processed / "synth-3" / "synth-3-0000")]
    assert launched[0].val_stores == [str(processed / "synth-3-heldout" / "synth-4-0000")]
    assert sorted(p.name for p in (processed / "synth-3").iterdir()) == ["aaa", "synth-3-0000"]
    # under torchrun the ranks check for exactly those stores, before anything is written
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(cli, ["run", "foundation", "--count", "2", "--heldout", "1",
                                      "--seed", "3", "--data", str(data), "--out",
                                      str(tmp_path / "run2")])
    assert f"{processed / 'synth-3' / 'synth-3-0001'}: not prepared" in one_error(result)
    assert not (tmp_path / "run2").exists()


def test_foundation_data_under_a_file_is_one_line(tmp_path):
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "synth-0").write_text("mine")
    result = CliRunner().invoke(cli, ["run", "foundation", "--count", "1", "--heldout", "1",
                                      "--data", str(tmp_path / "data"), "--out",
                                      str(tmp_path / "run")])
    error = one_error(result)
    assert f"--data {tmp_path / 'data'}: {tmp_path / 'data' / 'raw' / 'synth-0'} is a file" in error
    assert sorted(p.name for p in (tmp_path / "data").rglob("*")) == ["raw", "synth-0"]


def test_a_folder_of_stores_given_as_db_points_to_corpus(corpus, tmp_path):
    result = CliRunner().invoke(cli, ["run", "train", "--db", str(corpus / "stores"), "--steps", "1",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and f"--corpus {corpus / 'stores'}" in errors[0], result.output
    assert not (tmp_path / "run").exists()


def _open_descriptors() -> int:
    import os

    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self/fd"), reason="needs /proc")
def test_open_stores_hold_one_descriptor_per_file(corpus):
    """A corpus run opens hundreds of stores: a store file holds one descriptor (its memory
    map) however many of its sections are read (one map per section held one each), and the
    checksum check leaves none open."""
    import gc
    import resource

    from tributary_core.corpus import raise_open_file_limit

    gc.collect()
    before = _open_descriptors()
    stores = [open_store(p) for p in find_stores(corpus / "stores")]  # verify=True reads all
    files = sum(len(s.files) for s in stores)
    sections = sum(len(f.sections) for s in stores for f in s.files.values())
    assert sections > 2 * files  # so that one map per section would show
    for store in stores:
        for f in store.files.values():
            for name in f.sections:
                f.raw(name)
    assert _open_descriptors() <= before + files
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert raise_open_file_limit(soft) == soft  # never lowered, and no-op when enough
