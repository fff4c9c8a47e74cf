"""Every validation rule, each with a file that breaks it (and only it)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from conftest import tiny_tables, write_tables

from tributary_core import MetadataError, load_metadata, validate_metadata

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    keys = path.split("/")

    def mutate(md: dict[str, Any]) -> None:
        node = md
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value

    return mutate


def _delete(path: str) -> Mutation:
    keys = path.split("/")

    def mutate(md: dict[str, Any]) -> None:
        node = md
        for k in keys[:-1]:
            node = node[k]
        del node[keys[-1]]

    return mutate


ORDERS = "tables/orders"
CUST = "tables/customers"
TASK = "tasks/order_returned"

# (id, mutation, JSON path of the error, a fragment of its message)
STATIC_CASES = [
    ("bad-db-name", _set("name", "../x"), "$.name", "must start with a letter"),
    ("no-tables", _set("tables", {}), "$.tables", "at least one table"),
    ("table-name-path", lambda md: md["tables"].update({"a/b": md["tables"]["orders"]}),
     "$.tables['a/b']", "cannot be a file name"),
    ("no-columns", _set(f"{CUST}/columns", {}), "$.tables.customers.columns", "at least one column"),
    ("unknown-stype", _set(f"{ORDERS}/columns/amount/stype", "money"),
     "$.tables.orders.columns.amount.stype", "registered: boolean, categorical"),
    ("pk-missing", _set(f"{ORDERS}/primary_key", "id"), "$.tables.orders.primary_key",
     "no column 'id'"),
    ("pk-not-identifier", _set(f"{ORDERS}/columns/order_id/stype", "numerical"),
     "$.tables.orders.columns.order_id.stype", "primary key must have stype"),
    ("temporal-missing", _set(f"{ORDERS}/temporal_column", "when"),
     "$.tables.orders.temporal_column", "no column 'when'"),
    ("temporal-not-timestamp", _set(f"{ORDERS}/temporal_column", "amount"),
     "$.tables.orders.columns.amount.stype", "temporal column must have stype"),
    ("fk-format", _set(f"{ORDERS}/columns/customer_id/foreign_key", "customers"),
     "$.tables.orders.columns.customer_id.foreign_key", "must be written"),
    ("fk-table", _set(f"{ORDERS}/columns/customer_id/foreign_key", "clients.customer_id"),
     "$.tables.orders.columns.customer_id.foreign_key", "table 'clients' does not exist"),
    ("fk-column", _set(f"{ORDERS}/columns/customer_id/foreign_key", "customers.cid"),
     "$.tables.orders.columns.customer_id.foreign_key", "has no column 'cid'"),
    ("fk-not-pk", _set(f"{ORDERS}/columns/customer_id/foreign_key", "customers.segment"),
     "$.tables.orders.columns.customer_id.foreign_key", "is not the primary key"),
    ("fk-not-identifier", _set(f"{ORDERS}/columns/customer_id/stype", "categorical"),
     "$.tables.orders.columns.customer_id.stype", "foreign-key column must have stype"),
    ("temporal-from-not-fk",
     lambda md: (md["tables"]["orders"].pop("temporal_column"),
                 md["tables"]["orders"].update(temporal_from="amount")),
     "$.tables.orders.temporal_from", "must be one of its foreign-key columns"),
    ("temporal-from-parent-untimed",
     lambda md: (md["tables"]["orders"].pop("temporal_column"),
                 md["tables"]["customers"].pop("temporal_column"),
                 md["tables"]["orders"].update(temporal_from="customer_id")),
     "$.tables.orders.temporal_from", "has no temporal_column"),
    ("temporal-both", _set(f"{ORDERS}/temporal_from", "customer_id"),
     "$.tables.orders.temporal_from", "not both"),
    ("anchor-table", _set(f"{TASK}/anchor_table", "order"), "$.tasks.order_returned.anchor_table",
     "table 'order' does not exist"),
    ("anchor-key", _set(f"{TASK}/anchor_key", "oid"), "$.tasks.order_returned.anchor_key",
     "has no column 'oid'"),
    ("anchor-key-not-pk", _set(f"{TASK}/anchor_key", "amount"),
     "$.tasks.order_returned.anchor_key", "must be the primary key"),
    ("target-stype", _set(f"{TASK}/target_stype", "identifier"),
     "$.tasks.order_returned.target_stype", "cannot be a prediction target"),
    ("target-stype-unknown", _set(f"{TASK}/target_stype", "money"),
     "$.tasks.order_returned.target_stype", "unknown stype 'money'"),
    ("hidden-column", _set(f"{TASK}/hidden_columns", ["orders.nope"]),
     "$.tasks.order_returned.hidden_columns[0]", "is not a \"table.column\""),
    ("hidden-other-table", _set(f"{TASK}/hidden_columns", ["customers.segment"]),
     "$.tasks.order_returned.hidden_columns[0]", "is not a column of the anchor table 'orders'"),
    ("horizon-unit", _set(f"{TASK}/horizon", "7 fortnights"),
     "$.tasks.order_returned.horizon", "is not a duration such as \"7 days\""),
    ("horizon-negative", _set(f"{TASK}/horizon", "-1 day"),
     "$.tasks.order_returned.horizon", "is not a duration"),
    ("sql-parse", _set(f"{TASK}/query", "SELEC order_id FROM orders"),
     "$.tasks.order_returned.query", "SQL does not parse"),
    ("sql-two", _set(f"{TASK}/query", "SELECT 1; SELECT 2"),
     "$.tasks.order_returned.query", "expected one SQL statement, found 2"),
    ("sql-not-select", _set(f"{TASK}/query", "DELETE FROM orders"),
     "$.tasks.order_returned.query", "expected a SELECT query"),
]


def _problems(report) -> list[tuple[str, str]]:
    return [(p.path, p.message) for p in report.errors]


def test_tiny_metadata_is_valid(tiny_metadata, tiny_raw, write_json):
    report = validate_metadata(write_json(tiny_metadata), raw_dir=tiny_raw)
    assert report.ok, _problems(report)
    # The dangling c9 is a warning, not an error: real databases have them.
    [warning] = report.warnings
    assert warning.path == "$.tables.orders.columns.customer_id.foreign_key"
    assert "'c9'" in warning.message


@pytest.mark.parametrize(("mutate", "path", "fragment"),
                         [c[1:] for c in STATIC_CASES], ids=[c[0] for c in STATIC_CASES])
def test_static_rule(tiny_metadata, write_json, mutate, path, fragment):
    mutate(tiny_metadata)
    report = validate_metadata(write_json(tiny_metadata))
    assert not report.ok
    hits = [m for p, m in _problems(report) if p == path and fragment in m]
    assert hits, _problems(report)


# -- structural errors (cattrs), before any rule runs -------------------------------------

STRUCTURE_CASES = [
    ("missing-name", _delete("name"), "$.name", "required"),
    ("tables-not-object", _set("tables", []), "$.tables", "expected an object"),
    ("missing-stype", _delete(f"{ORDERS}/columns/amount/stype"),
     "$.tables.orders.columns.amount.stype", "required"),
    ("stype-not-string", _set(f"{ORDERS}/columns/amount/stype", 3),
     "$.tables.orders.columns.amount.stype", "expected a string"),
    ("typo-key", _set(f"{ORDERS}/primary_kye", "order_id"),
     "$.tables.orders", "did you mean 'primary_key'"),
    ("hidden-not-list", _set(f"{TASK}/hidden_columns", "orders.returned"),
     "$.tasks.order_returned.hidden_columns", "expected an array of strings"),
]


@pytest.mark.parametrize(("mutate", "path", "fragment"),
                         [c[1:] for c in STRUCTURE_CASES], ids=[c[0] for c in STRUCTURE_CASES])
def test_structure_error(tiny_metadata, write_json, mutate, path, fragment):
    mutate(tiny_metadata)
    file = write_json(tiny_metadata)
    with pytest.raises(MetadataError) as info:
        load_metadata(file)
    lines = str(info.value).splitlines()
    assert any(line.startswith(f"{file}: {path}") and fragment in line for line in lines), lines


def test_not_json(write_json, tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"name": "x",')
    with pytest.raises(MetadataError, match=r"broken\.json.*not valid JSON.*line 1"):
        load_metadata(bad)


def test_missing_file(tmp_path):
    with pytest.raises(MetadataError, match="nope.json"):
        load_metadata(tmp_path / "nope.json")


# -- data rules (--raw) -------------------------------------------------------------------


def _with_table(name: str, table: pa.Table) -> Callable[[Path], None]:
    def change(raw: Path) -> None:
        tables = tiny_tables()
        tables[name] = table
        write_tables(raw, tables)

    return change


def _orders(**columns: Any) -> pa.Table:
    base = tiny_tables()["orders"]
    for name, values in columns.items():
        if values is None:
            base = base.drop_columns([name])
        else:
            base = base.set_column(base.schema.get_field_index(name), name, pa.array(values))
    return base


DATA_CASES = [
    ("missing-parquet", lambda raw: (raw / "orders.parquet").unlink(), None,
     "$.tables.orders", "orders.parquet not found"),
    ("extra-parquet", _with_table("refunds", pa.table({"x": [1]})), None,
     "$.tables", "refunds.parquet has no table in the metadata"),
    ("unreadable-parquet", lambda raw: (raw / "orders.parquet").write_text("not parquet"), None,
     "$.tables.orders", "is not a readable parquet file"),
    ("unannotated-column",
     _with_table("orders", tiny_tables()["orders"].append_column("coupon", pa.array(["a"] * 5))),
     None, "$.tables.orders.columns", "column 'coupon' of orders.parquet is not annotated"),
    ("annotated-but-absent", _with_table("orders", _orders(amount=None)), None,
     "$.tables.orders.columns.amount", "has no column 'amount'"),
    ("numerical-is-text", _with_table("orders", _orders(amount=["a", "b", "c", "d", "e"])), None,
     "$.tables.orders.columns.amount.stype", "is not numerical"),
    ("timestamp-unparseable",
     _with_table("orders", _orders(placed=["2024-01-05", "soon", "later", None, "2024-01-09"])),
     None, "$.tables.orders.columns.placed.stype", "is not timestamp"),
    ("boolean-not-boolean", _with_table("orders", _orders(returned=[1.5, 2.0, 0.0, 1.0, 0.0])),
     None, "$.tables.orders.columns.returned.stype", "is not boolean"),
    ("pk-null", _with_table("orders", _orders(order_id=[1, 2, None, 4, 5])), None,
     "$.tables.orders.primary_key", "1 null value(s)"),
    ("pk-duplicate", _with_table("orders", _orders(order_id=[1, 2, 2, 4, 5])), None,
     "$.tables.orders.primary_key", "is not unique: 1 value(s) repeat, e.g. 2"),
    ("pk-past-int64", _with_table("orders", tiny_tables()["orders"].set_column(
        0, "order_id", pa.array([1, 2, 2**63 + 5, 4, 5], pa.uint64()))), None,
     "$.tables.orders.primary_key", "does not fit a 64-bit signed integer"),
    ("fk-kind-mismatch", _with_table("orders", _orders(customer_id=[1, 1, 2, 3, 9])), None,
     "$.tables.orders.columns.customer_id.foreign_key", "orders.customer_id is int64"),
    ("sql-binds", None, _set(f"{TASK}/query", "SELECT order_id, returned FROM order_lines"),
     "$.tasks.order_returned.query", "SQL fails in DuckDB"),
    # binds, then fails on the data: preprocessing would refuse it after encoding every table
    ("sql-fails-on-data", None,
     _set(f"{TASK}/query", "SELECT order_id, CAST(CAST(order_id AS VARCHAR) || 'x' AS BOOLEAN) "
                           "AS returned FROM orders"),
     "$.tasks.order_returned.query", "SQL fails in DuckDB: Conversion Error"),
    ("sql-no-anchor-key", None, _set(f"{TASK}/query", "SELECT returned FROM orders"),
     "$.tasks.order_returned.anchor_key", "the query returns no column 'order_id'"),
    ("sql-no-target", None, _set(f"{TASK}/query", "SELECT order_id FROM orders"),
     "$.tasks.order_returned.target_column", "the query returns no column 'returned'"),
    ("sql-anchor-type", None, _set(f"{TASK}/query", "SELECT 'x' AS order_id, returned FROM orders"),
     "$.tasks.order_returned.anchor_key", "but orders.order_id is"),
    ("sql-target-type", None,
     _set(f"{TASK}/query", "SELECT order_id, DATE '2024-01-01' AS returned FROM orders"),
     "$.tasks.order_returned.target_column", "query column 'returned'"),
    ("sql-obs-time-missing", None,
     _set("tasks/customer_spend_next_week/observation_time_column", "as_of"),
     "$.tasks.customer_spend_next_week.observation_time_column", "returns no column 'as_of'"),
    ("sql-obs-time-type", None,
     _set("tasks/customer_spend_next_week/query",
          "SELECT customer_id, 'soon' AS cutoff, 1.0 AS spend FROM customers"),
     "$.tasks.customer_spend_next_week.observation_time_column", "expected a TIMESTAMP or DATE"),
]


@pytest.mark.parametrize(("change_data", "mutate", "path", "fragment"),
                         [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_data_rule(tiny_metadata, tiny_raw, write_json, change_data, mutate, path, fragment):
    if change_data is not None:
        change_data(tiny_raw)
    if mutate is not None:
        mutate(tiny_metadata)
    file = write_json(tiny_metadata)
    assert validate_metadata(file).ok  # the file alone is fine: only the data breaks it
    report = validate_metadata(file, raw_dir=tiny_raw)
    assert not report.ok
    hits = [m for p, m in _problems(report) if p == path and fragment in m]
    assert hits, _problems(report)


def test_raw_dir_missing(tiny_metadata, write_json, tmp_path):
    report = validate_metadata(write_json(tiny_metadata), raw_dir=tmp_path / "nowhere")
    assert [(p.path, "does not exist" in p.message) for p in report.errors] == [("$", True)]


def test_task_sql_cannot_read_files(tiny_metadata, tiny_raw, write_json):
    tiny_metadata["tasks"]["order_returned"]["query"] = (
        "SELECT column0 AS order_id, column1 AS returned FROM read_csv('/etc/passwd')"
    )
    report = validate_metadata(write_json(tiny_metadata), raw_dir=tiny_raw)
    [(path, message)] = _problems(report)
    assert path == "$.tasks.order_returned.query"
    assert "SQL fails in DuckDB" in message
    assert "root:" not in message


def test_report_json_roundtrip(tiny_metadata, tiny_raw, write_json):
    """Metadata written back out parses to the same model (no field is lost)."""
    from tributary_core.metadata import dump_metadata, parse_metadata

    md = load_metadata(write_json(tiny_metadata))
    again = parse_metadata(json.loads(json.dumps(dump_metadata(md))))
    assert again == md


def test_query_validation_refuses_preprocessing_refuses(tiny_metadata, tiny_raw, write_json, tmp_path):
    """A query that validates is one preprocessing runs; one it refuses, validation refuses."""
    from tributary_core import TributaryError, get_registry
    from tributary_core.preprocess import preprocess

    tiny_metadata["tasks"]["order_returned"]["query"] = (
        "SELECT order_id, error('no returns here') AS returned FROM orders")
    file = write_json(tiny_metadata)
    [(path, message)] = _problems(validate_metadata(file, raw_dir=tiny_raw))
    assert path == "$.tasks.order_returned.query" and "no returns here" in message
    with pytest.raises(TributaryError, match="no returns here"):
        preprocess(file, tiny_raw, tmp_path / "store",
                   embedder=get_registry().create_embedder("hashing", dimension=4))


def test_table_description_is_allowed(tiny_metadata, tiny_raw, write_json):
    tiny_metadata["tables"]["orders"]["description"] = "one row per order"
    md = load_metadata(write_json(tiny_metadata))
    assert md.tables["orders"].description == "one row per order"
    assert validate_metadata(write_json(tiny_metadata), raw_dir=tiny_raw).ok


def test_unreadable_parquet_data_is_a_problem_not_a_crash(tiny_metadata, tiny_raw, write_json):
    """A parquet file whose footer reads but whose data does not is reported, not raised."""
    path = tiny_raw / "orders.parquet"
    data = bytearray(path.read_bytes())
    for i in range(8, len(data) // 2):  # scribble over the column chunks, keep the footer
        data[i] = 0xFF
    path.write_bytes(bytes(data))
    report = validate_metadata(write_json(tiny_metadata), raw_dir=tiny_raw)
    assert any(p.path == "$.tables.orders" and "is not a readable parquet file" in p.message
               for p in report.errors), _problems(report)
