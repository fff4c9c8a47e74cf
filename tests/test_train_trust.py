"""Run folders, checkpoints and training settings against careless or hostile input: --force
never deletes what is not a run, bad settings are refused before anything is written, damaged
checkpoints give one line (and resuming falls back to the earlier kept one)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_METADATA
from test_sampler import make_shop

from tributary_core.cli import cli
from tributary_core.errors import TributaryError
from tributary_core.memory import rss_bytes
from tributary_core.train import TrainConfig, read_metrics, train
from tributary_core.train.trainer import checkpoints


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    return make_shop(tmp_path_factory.mktemp("shop"), 0, 40, 60, 80, dimension=8)


SMALL = ["--batch-size", "4", "--seq-len", "16", "--d-model", "12", "--layers", "1", "--heads", "3",
         "--warmup", "1", "--val-every", "4", "--ckpt-every", "4"]


def small_config(store, **kw) -> TrainConfig:
    base = dict(stores=[str(store.path)], steps=4, batch_size=4, seq_len=16, width=2, d_model=12,
                n_layers=1, n_heads=3, warmup=1, val_every=4, val_batches=1, ckpt_every=4)
    base.update(kw)
    return TrainConfig(**base)


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- --force and --out: never delete or fill what is not a run ---------------------------------


def test_force_on_the_working_directory_deletes_nothing(shop, tmp_path, monkeypatch):
    home = tmp_path / "work"
    home.mkdir()
    (home / "thesis.txt").write_text("years of work")
    monkeypatch.chdir(home)
    for out in (".", str(home), ".."):
        result = invoke("run", "train", "--db", shop.path, "--steps", "1", *SMALL, "--out", out,
                        "--force")
        one_line_error(result, f"--out {out}")
    assert (home / "thesis.txt").read_text() == "years of work"


def test_force_on_a_store_deletes_nothing(shop, tmp_path):
    before = snapshot(shop.path)
    result = invoke("run", "train", "--db", shop.path, "--steps", "1", *SMALL, "--out", shop.path,
                    "--force")
    one_line_error(result, "no training run")
    assert snapshot(shop.path) == before


def test_a_run_is_never_written_into_a_folder_of_other_files(shop, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.md").write_text("keep")
    result = invoke("run", "train", "--db", shop.path, "--steps", "1", *SMALL, "--out",
                    tmp_path / "mine")
    one_line_error(result, "holds other files and no training run")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.md"]


def test_a_foreign_config_json_is_not_a_run_to_replace(shop, tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "config.json").write_text('{"theme": "dark"}')
    result = invoke("run", "train", "--db", shop.path, "--steps", "1", *SMALL, "--out",
                    tmp_path / "app", "--force")
    one_line_error(result, "config.json", "not a training run")
    assert (tmp_path / "app" / "config.json").read_text() == '{"theme": "dark"}'


def test_force_replaces_a_run_and_keeps_other_files_in_it(shop, tmp_path):
    run = tmp_path / "run"
    train(small_config(shop, steps=4), run)
    (run / "predictions.parquet").write_bytes(b"the user's own file")
    train(small_config(shop, steps=2, lr=1e-3, val_every=2, ckpt_every=2), run, force=True)
    assert (run / "predictions.parquet").read_bytes() == b"the user's own file"
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == [1, 2]
    assert json.loads((run / "config.json").read_text())["lr"] == 1e-3


def test_out_under_a_file_is_one_line(shop, tmp_path):
    (tmp_path / "file").write_text("x")
    result = invoke("run", "train", "--db", shop.path, "--steps", "1", *SMALL, "--out",
                    tmp_path / "file" / "run")
    one_line_error(result, "is a file")
    result = invoke("run", "train", "--db", shop.path, "--steps", "1", *SMALL, "--out",
                    tmp_path / "file")
    one_line_error(result, "is a file")


@pytest.mark.parametrize("where", ["folder of files", "working directory"])
def test_fetch_force_replaces_only_a_fetch(tmp_path, monkeypatch, where):
    target = tmp_path / "nycflights13"  # fetch writes OUT/NAME
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    if where == "working directory":
        monkeypatch.chdir(target)
        out = ".."
    else:
        out = str(tmp_path)
    result = invoke("datasets", "fetch", "nycflights13", "--out", out, "--force")
    one_line_error(result, "nycflights13")
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]


def test_fetch_scale_must_be_positive(tmp_path):
    for scale in ("0", "-1", "nan"):
        one_line_error(invoke("datasets", "fetch", "tpch", "--scale", scale, "--out", tmp_path),
                       "--scale")
    assert not any(tmp_path.iterdir())


# -- settings refused before the run folder is touched ------------------------------------------


@pytest.mark.parametrize(("args", "fragment"), [
    (["--lr", "nan"], "--lr nan"),
    (["--lr", "-1"], "--lr -1"),
    (["--lr", "inf"], "--lr inf"),
    (["--clip", "-1"], "--clip -1"),
    (["--clip", "0"], "--clip 0"),
    (["--weight-decay", "-0.5"], "--weight-decay -0.5"),
    (["--tasks", ""], "--tasks ''"),
    (["--tasks", "nosuchtask"], "no task 'nosuchtask'"),
    (["--val-start", "notatime", "--test-start", "2024-01-01"], "--val-start: 'notatime'"),
    (["--val-start", "2024-01-01"], "--val-start and --test-start go together"),
    (["--val-start", "2024-02-01", "--test-start", "2024-01-01"], "--test-start must not be before"),
    (["--tasks", "big_order", "--val-start", "1900-01-01", "--test-start", "1900-01-02"],
     "no task has seeds in the train split"),
    (["--freeze-backbone"], "--freeze-backbone needs --init"),
    (["--d-model", "13"], "multiple of --heads"),
])
def test_bad_settings_leave_nothing_behind(shop, tmp_path, args, fragment):
    out = tmp_path / "run"
    result = invoke("run", "train", "--db", shop.path, "--steps", "1", *SMALL, *args, "--out", out)
    one_line_error(result, fragment)
    assert not out.exists()
    # the corrected command then runs
    good = invoke("run", "train", "--db", shop.path, "--steps", "1", *SMALL, "--out", out)
    assert good.exit_code == 0, good.output


def test_bad_settings_through_the_api(shop, tmp_path):
    for kw in ({"lr": float("nan")}, {"clip": -1.0}, {"batch_size": 0}, {"split_ratios": (0.5, 0.5, 0.5)}):
        with pytest.raises(TributaryError):
            train(small_config(shop, **kw), tmp_path / "run")
        assert not (tmp_path / "run").exists()


def test_nproc_refusal_leaves_no_folder(shop, tmp_path):
    result = invoke("run", "train", "--db", shop.path, "--steps", "1", *SMALL, "--tasks",
                    "nosuchtask", "--nproc", "2", "--out", tmp_path / "run")
    one_line_error(result, "no task 'nosuchtask'")
    assert not (tmp_path / "run").exists()


# -- damaged checkpoints -------------------------------------------------------------------------


def test_resume_falls_back_past_a_truncated_checkpoint(shop, tmp_path):
    run = tmp_path / "run"
    train(small_config(shop, steps=8), run)
    kept = checkpoints(run)
    assert [p.name for p in kept] == ["step-00000004.pt", "step-00000008.pt"]
    data = kept[-1].read_bytes()
    kept[-1].write_bytes(data[: len(data) // 3])  # the disk filled up while it was written
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(small_config(shop, steps=10), run)
    assert any("step-00000008.pt" in str(w.message) and "resuming from step-00000004.pt"
               in str(w.message) for w in caught)
    steps = [r["step"] for r in read_metrics(run) if "loss" in r]
    assert steps == list(range(1, 11))


def test_no_usable_checkpoint_is_one_line(shop, tmp_path):
    run = tmp_path / "run"
    train(small_config(shop, steps=8), run)
    for path in checkpoints(run):
        path.write_bytes(b"garbage")
    with pytest.raises(TributaryError, match="no usable checkpoint to resume from"):
        train(small_config(shop, steps=10), run)


@pytest.mark.parametrize("damage", ["truncated", "foreign", "tensor", "other model", "empty"])
def test_damaged_model_pt_is_one_line(shop, tmp_path, damage):
    run = tmp_path / "run"
    train(small_config(shop, steps=4), run)
    model = run / "model.pt"
    if damage == "truncated":
        model.write_bytes(model.read_bytes()[:200])
    elif damage == "foreign":
        model.write_text("this is a text file")
    elif damage == "tensor":
        torch.save(torch.zeros(3), model)
    elif damage == "other model":
        torch.save({"model": {"weight": torch.zeros(2)}}, model)
    else:
        model.write_bytes(b"")
    for args in (["run", "evaluate", "--run", run], ["run", "predict", "--run", run, "--task",
                                                     "big_order", "--out", tmp_path / "p.parquet"]):
        one_line_error(invoke(*args), "model.pt")
    result = invoke("run", "train", "--db", shop.path, "--steps", "1", *SMALL, "--init", run,
                    "--out", tmp_path / "tuned")
    one_line_error(result, "model.pt")
    assert not (tmp_path / "tuned").exists()


def test_damaged_config_json_is_one_line(shop, tmp_path):
    run = tmp_path / "run"
    train(small_config(shop, steps=4), run)
    (run / "config.json").write_text("{not json")
    one_line_error(invoke("run", "evaluate", "--run", run), "config.json")
    one_line_error(invoke("run", "train", "--db", shop.path, "--steps", "1", *SMALL, "--init", run,
                          "--out", tmp_path / "b"), "config.json")


# -- predict ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("rows", "fragment"), [("5-2", "empty range"), ("a", "not a list"),
                                                 (",", "names no seed"), ("99999", "has seeds 0 to")])
def test_predict_rows_refused(shop, tmp_path, rows, fragment):
    run = tmp_path / "run"
    train(small_config(shop, steps=4), run)
    result = invoke("run", "predict", "--run", run, "--task", "big_order", "--rows", rows, "--out",
                    tmp_path / "p.parquet")
    one_line_error(result, fragment)
    assert not (tmp_path / "p.parquet").exists()


def test_write_failure_is_one_line(shop, tmp_path):
    run = tmp_path / "run"
    train(small_config(shop, steps=4), run)
    (tmp_path / "file").write_text("x")
    result = invoke("run", "predict", "--run", run, "--task", "big_order", "--out",
                    tmp_path / "file" / "p.parquet")
    one_line_error(result, str(tmp_path / "file"))


# -- memory ----------------------------------------------------------------------------------


def test_heap_trimming_on_glibc(monkeypatch):
    import platform

    from tributary_core.memory import HeapTrimmer, trim_heap

    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert trim_heap() == glibc
    assert HeapTrimmer().enabled == glibc
    monkeypatch.setenv("TRIBUTARY_MALLOC_TUNING", "0")
    assert not HeapTrimmer().enabled
    assert rss_bytes() > 10_000_000


def test_metrics_read_while_a_line_is_being_appended(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 0.5}]
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n')
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


# -- a run records its semantic types -------------------------------------------------------


@pytest.mark.parametrize("change", ["plugin installed after training", "plugin removed after training"])
def test_installing_or_removing_a_plugin_keeps_a_run_loadable(shop, tmp_path, monkeypatch, change):
    """The example package adds the `count` type, which sorts between built-ins and shifts the
    batch codes of every later type; the run must give the same predictions either way."""
    from tributary_core.registry import ENV_PLUGINS, reset_registry
    from tributary_core.sampler import stype_names
    from tributary_core.train import load_run, predict

    without = {ENV_PLUGINS: "none-at-all"}  # only the built-ins

    def plugins(env: dict[str, str]) -> None:
        for key in (ENV_PLUGINS,):
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        reset_registry()

    before, after = (without, {}) if change.startswith("plugin installed") else ({}, without)
    plugins(before)
    if "count" not in stype_names() and not before:
        pytest.skip("the example plugin package is not installed")
    train(small_config(shop, steps=4), tmp_path / "run")
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["stypes"]
    assert recorded == stype_names()
    first = predict(load_run(tmp_path / "run"), "big_order").column("prediction").to_pylist()
    plugins(after)
    assert stype_names() != recorded  # the installed types really changed
    second = predict(load_run(tmp_path / "run"), "big_order").column("prediction").to_pylist()
    np.testing.assert_allclose(second, first, rtol=1e-6)
    if after:  # the plugin is gone: predicting works, training on needs it back
        with pytest.raises(TributaryError, match="no longer installed: install them"):
            train(small_config(shop, steps=6), tmp_path / "run")
    else:  # the run resumes with its own types, not refused as "other settings"
        train(small_config(shop, steps=6), tmp_path / "run")
        assert json.loads((tmp_path / "run" / "config.json").read_text())["stypes"] == recorded
    plugins(before)


# -- found in review ---------------------------------------------------------------------------


def test_a_full_disk_while_writing_names_the_file(shop, tmp_path, monkeypatch):
    """pyarrow and plain writes report a full disk as an OSError with no file name: the
    atomic writer names the file it was writing, and leaves no partial file."""
    import errno

    import pyarrow.parquet as pq

    run = tmp_path / "run"
    train(small_config(shop, steps=4), run)

    def full(*_args, **_kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", full)
    out = tmp_path / "preds" / "p.parquet"
    line = one_line_error(invoke("run", "predict", "--run", run, "--task", "big_order", "--out", out),
                          str(out))
    assert "No space left on device" in line
    assert list(out.parent.iterdir()) == []


def test_preprocess_never_writes_a_store_over_the_working_directory(tmp_path, monkeypatch,
                                                                      tiny_raw, write_json):
    tiny_metadata = write_json(TINY_METADATA)
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "keep.txt").write_text("keep")
    monkeypatch.chdir(tmp_path / "cwd")
    for out, force in ((".", []), (str(tmp_path / "cwd"), ["--force"]), ("..", ["--force"])):
        result = invoke("run", "preprocess", "--db", "tiny", "--raw", tiny_raw, "--metadata",
                        tiny_metadata, "--embedder", "hashing", "--out", out, *force)
        one_line_error(result, "working directory or a folder above it")
    assert sorted(p.name for p in (tmp_path / "cwd").iterdir()) == ["keep.txt"]


def test_writing_to_a_device_never_replaces_it(tmp_path):
    """As root, renaming a temporary file over /dev/null would replace the device node."""
    import stat

    from tributary_core.atomic import atomic_write_text

    atomic_write_text("/dev/null", "discarded")
    assert stat.S_ISCHR(Path("/dev/null").stat().st_mode)
    assert not list(Path("/dev").glob(".null.*.tmp"))
