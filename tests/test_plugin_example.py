"""The example plugin package (examples/tributary-counts), installed like any third-party
package, on the whole path: metadata with its type, preprocess, train, evaluate, predict; and
the error left when it is not installed."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import write_tables

from tributary_core import get_registry
from tributary_core.cli import cli

METADATA = {
    "name": "shops",
    "tables": {
        "shops": {"primary_key": "shop_id", "columns": {
            "shop_id": {"stype": "identifier"}, "city": {"stype": "categorical"}}},
        "visits": {"primary_key": "visit_id", "temporal_column": "ts", "columns": {
            "visit_id": {"stype": "identifier"},
            "shop_id": {"stype": "identifier", "foreign_key": "shops.shop_id"},
            "ts": {"stype": "timestamp"}, "items": {"stype": "count"},
            "spend": {"stype": "numerical"}}},
    },
    "tasks": {
        "visit_items": {
            "query": "SELECT visit_id, items FROM visits", "anchor_table": "visits",
            "anchor_key": "visit_id", "target_column": "items", "target_stype": "count",
            "hidden_columns": ["visits.spend"]},
    },
}


@pytest.fixture(scope="module")
def installed():
    try:
        dist = importlib.metadata.distribution("tributary-counts")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("the example plugin is not installed: pip install -e examples/tributary-counts "
                    "(scripts/bootstrap.sh does)")
    return dist


@pytest.fixture(scope="module")
def shops(tmp_path_factory):
    rng = np.random.default_rng(0)
    n_shops, n_visits = 12, 600
    t0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    shop = rng.integers(0, n_shops, n_visits)
    items = rng.poisson(1 + shop % 4 * 2)  # the shop tells the rate
    root = tmp_path_factory.mktemp("counts")
    raw = write_tables(root / "raw", {
        "shops": pa.table({"shop_id": pa.array(np.arange(n_shops), pa.int64()),
                           "city": pa.array([["north", "south", "east"][i % 3] for i in range(n_shops)])}),
        "visits": pa.table({
            "visit_id": pa.array(np.arange(n_visits), pa.int64()),
            "shop_id": pa.array(shop, pa.int64()),
            "ts": pa.array([t0 + dt.timedelta(hours=int(h)) for h in rng.integers(0, 24 * 60, n_visits)],
                           pa.timestamp("us", tz="UTC")),
            "items": pa.array(items, pa.int64()),
            "spend": items * 4.5 + rng.normal(0, 1, n_visits)})})
    md = root / "shops.json"
    md.write_text(json.dumps(METADATA))
    return root, raw, md


def test_plugins_list_shows_the_example(installed):
    result = CliRunner().invoke(cli, ["plugins", "list", "--json"])
    rows = {(c["name"], c["kind"]): c for c in json.loads(result.output)["components"]}
    assert rows[("count", "semantic type")]["distribution"] == "tributary-counts"
    assert rows[("poisson", "loss head")]["distribution"] == "tributary-counts"
    assert rows[("count", "semantic type")]["version"] == installed.version
    table = CliRunner().invoke(cli, ["plugins", "list"]).output
    assert any(line.split()[:3] == ["count", "semantic", "type"] and "tributary-counts" in line
               for line in table.splitlines())


def test_the_whole_path_with_a_plugin_type_and_loss(installed, shops, tmp_path):
    root, raw, md = shops
    store, run = root / "store", tmp_path / "run"
    steps = [
        ["metadata", "validate", str(md), "--raw", str(raw)],
        ["run", "preprocess", "--db", "shops", "--raw", str(raw), "--metadata", str(md), "--out", str(store),
         "--embedder", "hashing", "--dimension", "8"],
        ["run", "train", "--db", str(store), "--steps", "30", "--batch-size", "16", "--seq-len", "24",
         "--width", "4", "--d-model", "24", "--layers", "1", "--heads", "3", "--lr", "3e-3", "--warmup", "3",
         "--val-every", "15", "--ckpt-every", "15", "--out", str(run)],
    ]
    for args in steps:
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, (args[:2], result.output)
    assert get_registry().semantic_type("count").decode(
        {"value": np.float32(np.log1p(5))}, {}, []) == 5
    evaluated = CliRunner().invoke(cli, ["run", "evaluate", "--run", str(run), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    entry = json.loads(evaluated.output)["shops/visit_items"]
    assert entry["loss_head"] == "poisson" and set(entry["metrics"]) == {"deviance", "mae"}
    assert entry["labelled"] > 0 and entry["metrics"]["deviance"] >= 0
    out = tmp_path / "pred.parquet"
    predicted = CliRunner().invoke(cli, ["run", "predict", "--run", str(run), "--task", "visit_items",
                                         "--rows", "0-9", "--out", str(out)])
    assert predicted.exit_code == 0, predicted.output
    rates = pq.read_table(out).column("prediction").to_numpy()
    assert len(rates) == 10 and (rates > 0).all() and np.isfinite(rates).all()  # expected counts


def test_without_the_plugin_metadata_naming_its_type_fails_clearly(installed, shops):
    """What a user sees once the package is gone: the registry then has no entry point for it,
    as with autoloading of third-party plugins switched off."""
    _, raw, md = shops
    env = {**os.environ, "TRIBUTARY_DISABLE_PLUGIN_AUTOLOAD": "1"}
    result = subprocess.run([sys.executable, "-m", "tributary_core.cli", "metadata", "validate", str(md),
                             "--raw", str(raw)], capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert (f"{md}: error: $.tables.visits.columns.items.stype: unknown stype 'count'; registered: "
            "boolean, categorical, identifier, ignored, numerical, text, timestamp (a plugin's type "
            "needs its package installed: see `tributary plugins list`)") in result.stderr
    assert "$.tasks.visit_items.target_stype: unknown stype 'count'" in result.stderr
    assert "Traceback" not in result.stderr


def test_lightgbm_baseline_fits_the_poisson_objective_of_the_poisson_head(installed, shops, tmp_path):
    """The tabular baseline asks the head what to fit: for ``poisson`` LightGBM's ``poisson``
    objective on the counts, whose raw score is the head's log-rate. Fitted as a regression on
    counts instead, exp(score) would be far off and the MAE in counts huge."""
    from tributary_core.baselines import lightgbm_baseline
    from tributary_core.preprocess import preprocess
    from tributary_core.store import open_store

    _, raw, md = shops
    preprocess(md, raw, tmp_path / "store", force=True,
               embedder=get_registry().create_embedder("hashing", dimension=8))
    entry = lightgbm_baseline([open_store(tmp_path / "store")], rounds=50)["shops/visit_items"]
    assert (entry["loss_head"], entry["objective"]) == ("poisson", "poisson")
    assert "skipped" not in entry and entry["labelled"] > 0
    items = pq.read_table(raw / "visits.parquet").column("items").to_numpy().astype(float)
    spread = float(np.abs(items - items.mean()).mean())
    assert 0 <= entry["metrics"]["deviance"] < 10
    assert entry["metrics"]["mae"] < 1.5 * spread


def test_leakage_check_reads_count_labels(installed, shops, tmp_path):
    """A ``count`` target: labels read by the type's label_values, scored by R² (its head's
    objective is a regression), so spend (about 4.5 items) is a proxy until it is hidden."""
    from tributary_core.leakage import _label, check_leakage

    # counts as numbers (not class codes, where "10" sorts before "2"); non-counts unusable
    label, ok = _label(pa.chunked_array([[0, 2, 10, None, -1, 1.5]]), "count")
    assert label[ok].tolist() == [0, 2, 10] and ok.tolist() == [True] * 3 + [False] * 3
    _, raw, md = shops
    shown = json.loads(md.read_text())
    shown["tasks"]["visit_items"]["hidden_columns"] = []
    (tmp_path / "shown.json").write_text(json.dumps(shown))
    for path, hidden in ((tmp_path / "shown.json", False), (md, True)):
        scores: dict = {}
        findings = check_leakage(path, raw, scores=scores)
        assert "visits.ts" in scores["visit_items"]
        proxies = {f.column: f for f in findings if f.kind == "proxy"}
        if hidden:
            assert "visits.spend" not in scores["visit_items"] and not proxies
        else:
            assert proxies["visits.spend"].metric == "r2"
            assert proxies["visits.spend"].score >= 0.95
