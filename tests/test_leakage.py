"""The leakage guard: proxies found by `metadata check-leakage`, untimed tables under timed
ones, tasks without an observation time, and a self-reference back to the anchor row."""

from __future__ import annotations

import copy
import json

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from conftest import write_tables
from test_sampler import SHOP_METADATA, shop_tables

from tributary_core import get_registry
from tributary_core.cli import cli
from tributary_core.leakage import check_leakage
from tributary_core.preprocess import preprocess
from tributary_core.sampler import SamplerGraph, sample_batch
from tributary_core.store import open_store


@pytest.fixture
def planted(tmp_path):
    """The shop database with proxies planted: a scaled copy of the amount, and a code that is
    the user's kind in disguise."""
    rng = np.random.default_rng(1)
    tables = shop_tables(rng, 200, 600, 50)
    amount = tables["orders"].column("amount").to_numpy()
    tables["orders"] = tables["orders"].append_column("amount_cents", pa.array(amount * 100))
    kinds = tables["users"].column("kind").to_pylist()
    tables["users"] = tables["users"].append_column("kind_code", pa.array([f"K-{k}" for k in kinds]))
    raw = write_tables(tmp_path / "raw", tables)
    md = copy.deepcopy(SHOP_METADATA)
    md["tables"]["orders"]["columns"]["amount_cents"] = {"stype": "numerical"}
    md["tables"]["users"]["columns"]["kind_code"] = {"stype": "categorical"}
    md["tasks"]["order_amount"] = {
        "query": "SELECT order_id, ts AS at, amount FROM orders", "anchor_table": "orders",
        "anchor_key": "order_id", "target_column": "amount", "target_stype": "numerical",
        "observation_time_column": "at", "hidden_columns": ["orders.amount"]}
    md["tasks"]["user_orders"] = {  # reads orders, observed at no time
        "query": "SELECT u.user_id, count(o.order_id) > 3 AS busy FROM users u "
                 "LEFT JOIN orders o ON o.user_id = u.user_id GROUP BY u.user_id",
        "anchor_table": "users", "anchor_key": "user_id", "target_column": "busy",
        "target_stype": "boolean"}
    path = tmp_path / "shop.json"
    path.write_text(json.dumps(md))
    return path, raw, md


def test_planted_proxies_are_found(planted):
    path, raw, _ = planted
    scores: dict = {}
    findings = check_leakage(path, raw, scores=scores)
    proxies = {(f.task, f.column, f.metric) for f in findings if f.kind == "proxy"}
    assert ("big_order", "orders.amount_cents", "auroc") in proxies
    assert ("order_amount", "orders.amount_cents", "r2") in proxies
    assert ("user_kind", "users.kind_code", "accuracy") in proxies
    # hidden columns are not tried; harmless columns are tried and pass
    assert "orders.amount" not in scores["big_order"]
    assert scores["big_order"]["orders.paid"] < 0.7
    assert not any(f.column == "orders.paid" for f in findings)
    # one hop out: the user's and the previous order's columns are tried for order tasks
    assert "users.age (via user_id)" in scores["big_order"]
    assert scores["big_order"]["orders.amount (via prev_id)"] < 0.7


def test_untimed_tables_and_unobserved_tasks_are_reported(planted):
    path, raw, _ = planted
    findings = check_leakage(path, raw)
    untimed = [f for f in findings if f.kind == "untimed"]
    assert [f.column for f in untimed] == ["items.order_id"]
    assert 'set "temporal_from": "order_id"' in untimed[0].message
    unobserved = [f for f in findings if f.kind == "no_observation_time"]
    assert [f.task for f in unobserved] == ["user_orders"]
    assert "reads timed table(s) orders" in unobserved[0].message


def test_fixes_silence_the_findings(planted, tmp_path):
    path, raw, md = planted
    md["tables"]["items"]["temporal_from"] = "order_id"
    for task in ("big_order", "order_amount"):
        md["tasks"][task]["hidden_columns"] = ["orders.amount", "orders.amount_cents"]
    md["tasks"]["user_kind"]["hidden_columns"] = ["users.kind_code"]
    del md["tasks"]["user_orders"]
    fixed = tmp_path / "fixed.json"
    fixed.write_text(json.dumps(md))
    assert check_leakage(fixed, raw) == []
    result = CliRunner().invoke(cli, ["metadata", "check-leakage", str(fixed), "--raw", str(raw)])
    assert result.exit_code == 0 and "0 finding(s) over 3 task(s)" in result.output


def test_cli_exit_codes_and_json(planted, tmp_path):
    path, raw, _ = planted
    result = CliRunner().invoke(cli, ["metadata", "check-leakage", str(path), "--raw", str(raw)])
    assert result.exit_code == 1
    assert f"{path}: proxy: task 'big_order': orders.amount_cents alone predicts" in result.output
    as_json = CliRunner().invoke(cli, ["metadata", "check-leakage", str(path), "--raw", str(raw),
                                       "--json"])
    data = json.loads(as_json.stdout)
    assert {f["kind"] for f in data["findings"]} == {"proxy", "untimed", "no_observation_time"}
    missing = CliRunner().invoke(cli, ["metadata", "check-leakage", str(path), "--raw",
                                       str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "Traceback" not in missing.output


def test_self_reference_back_to_the_anchor_keeps_the_target_masked(tmp_path):
    people = pa.table({
        "emp_id": pa.array([1, 2, 3], pa.int64()),
        "manager_id": pa.array([1, 1, 3], pa.int64()),  # 1 and 3 manage themselves
        "salary": [10.0, 20.0, 30.0],
    })
    raw = write_tables(tmp_path / "raw", {"people": people})
    md = {"name": "firm", "tables": {"people": {"primary_key": "emp_id", "columns": {
        "emp_id": {"stype": "identifier"},
        "manager_id": {"stype": "identifier", "foreign_key": "people.emp_id"},
        "salary": {"stype": "numerical"}}}},
        "tasks": {"salary": {"query": "SELECT emp_id, salary FROM people", "anchor_table": "people",
                             "anchor_key": "emp_id", "target_column": "salary",
                             "target_stype": "numerical"}}}
    (tmp_path / "firm.json").write_text(json.dumps(md))
    preprocess(tmp_path / "firm.json", raw, tmp_path / "store",
               embedder=get_registry().create_embedder("hashing", dimension=4))
    store = open_store(tmp_path / "store")
    graph = SamplerGraph.from_store(store)
    batch = sample_batch(graph, graph.task("salary"), np.arange(3), context_len=50, width=5)
    salary_col = graph.column_index("people", "salary")
    for i in range(3):
        rows = [(int(batch.row_table[i, k]), int(batch.row_index[i, k])) for k in range(batch.n_rows[i])]
        assert len(rows) == len(set(rows))  # the anchor is not visited twice
        anchor_cells = [p for p in range(batch.n_cells[i]) if batch.row[i, p] == 0]
        salary_cells = [p for p in anchor_cells if batch.cell_col[i, p] == salary_col]
        assert salary_cells == [0] and batch.is_target[i, 0] and batch.number[i, 0] == 0
    # employee 2 reaches manager 1, whose salary is visible (another row), once
    i = 1
    others = [p for p in range(batch.n_cells[i])
              if batch.row[i, p] != 0 and batch.cell_col[i, p] == salary_col]
    assert len(others) == 1


def test_tables_read_fails_closed_and_ignores_case():
    from tributary_core.errors import TributaryError
    from tributary_core.leakage import tables_read
    from tributary_core.sql import sandbox_connection

    con = sandbox_connection({"orders": pa.table({"order_id": [1]}), "users": pa.table({"u": [1]})})
    names = ["orders", "users"]
    assert tables_read(con, "SELECT * FROM ORDERS JOIN \"Users\" ON true", names) == {"orders", "users"}
    assert tables_read(con, "SELECT * FROM 'orders.parquet'", names) == {"orders"}
    for bad in ("SELEC order_id FROM orders", "PIVOT orders ON order_id USING count(*)"):
        with pytest.raises(TributaryError, match=r"^task 't': cannot tell which tables the query reads"):
            tables_read(con, bad, names, where="task 't'")


def test_boolean_labels_read_no_as_false():
    from tributary_core.leakage import _bins, _label

    column = pa.chunked_array([pa.array(["yes", "no", "No ", "N", "true", "false", None, "maybe"])])
    values, ok = _label(column, "boolean")
    assert ok.tolist() == [True] * 6 + [False, False]
    assert values[ok].tolist() == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    bins = _bins(column, "boolean", np.arange(8))
    assert bins[0] == bins[4] != bins[1] == bins[2] == bins[3] == bins[5] and bins[6] == bins[7] == 0
