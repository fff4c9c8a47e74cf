"""Shared fixtures: a tiny, valid database (parquet + metadata) that tests then break."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tributary_core.registry import reset_registry

REPO = Path(__file__).resolve().parent.parent


def _ts(day: int) -> datetime:
    return datetime(2024, 1, day, 12, tzinfo=timezone.utc)


def tiny_tables() -> dict[str, pa.Table]:
    """customers <- orders: string keys, a timestamp, a dangling FK, a boolean and a category."""
    customers = pa.table({
        "customer_id": ["c1", "c2", "c3"],
        "segment": ["retail", "retail", "corporate"],
        "signup": pa.array([_ts(1), _ts(2), _ts(3)], pa.timestamp("us", tz="UTC")),
    })
    orders = pa.table({
        "order_id": pa.array([1, 2, 3, 4, 5], pa.int64()),
        "customer_id": ["c1", "c1", "c2", "c3", "c9"],  # c9 dangles
        "amount": [10.0, 12.5, None, 7.0, 3.0],
        "placed": ["2024-01-05", "2024-01-06", "2024-01-07", "2024-01-08", "2024-01-09"],
        "returned": [False, True, False, None, False],
    })
    return {"customers": customers, "orders": orders}


TINY_METADATA: dict[str, Any] = {
    "name": "tiny",
    "tables": {
        "customers": {
            "primary_key": "customer_id",
            "temporal_column": "signup",
            "columns": {
                "customer_id": {"stype": "identifier"},
                "segment": {"stype": "categorical", "description": "market segment"},
                "signup": {"stype": "timestamp"},
            },
        },
        "orders": {
            "primary_key": "order_id",
            "temporal_column": "placed",
            "columns": {
                "order_id": {"stype": "identifier"},
                "customer_id": {"stype": "identifier", "foreign_key": "customers.customer_id"},
                "amount": {"stype": "numerical"},
                "placed": {"stype": "timestamp"},
                "returned": {"stype": "boolean"},
            },
        },
    },
    "tasks": {
        "order_returned": {
            "query": "SELECT order_id, returned FROM orders",
            "anchor_table": "orders",
            "anchor_key": "order_id",
            "target_column": "returned",
            "target_stype": "boolean",
            "hidden_columns": ["orders.returned"],
        },
        "customer_spend_next_week": {
            "query": (
                "SELECT c.customer_id, c.signup + INTERVAL 7 DAY AS cutoff, "
                "(SELECT coalesce(sum(o.amount), 0) FROM orders o WHERE o.customer_id = c.customer_id "
                "AND o.placed::TIMESTAMP >= c.signup + INTERVAL 7 DAY) AS spend FROM customers c"
            ),
            "anchor_table": "customers",
            "anchor_key": "customer_id",
            "target_column": "spend",
            "target_stype": "numerical",
            "observation_time_column": "cutoff",
        },
    },
}


def write_tables(raw: Path, tables: dict[str, pa.Table]) -> Path:
    raw.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        pq.write_table(table, raw / f"{name}.parquet")
    return raw


@pytest.fixture
def tiny_metadata() -> dict[str, Any]:
    """A fresh deep copy of the tiny database's metadata, free to mutate."""
    return copy.deepcopy(TINY_METADATA)


@pytest.fixture
def tiny_raw(tmp_path: Path) -> Path:
    return write_tables(tmp_path / "raw", tiny_tables())


@pytest.fixture
def write_json(tmp_path: Path):
    def write(data: Any, name: str = "metadata.json") -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(data, indent=2))
        return path

    return write


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch: pytest.MonkeyPatch):
    """Every test sees the registry of the plugins actually installed, with no env overrides."""
    monkeypatch.delenv("TRIBUTARY_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("TRIBUTARY_PLUGINS", raising=False)
    reset_registry()
    yield
    reset_registry()


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """No test reads or writes the user's embedding cache, and none sees a real API key."""
    monkeypatch.setenv("TRIBUTARY_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    for var in ("BASETEN_EMBEDDER_URL", "BASETEN_API_KEY", "OPENROUTER_API_KEY", "OPENROUTER_BASE_URL",
                "TRIBUTARY_EMBEDDER_URL", "TRIBUTARY_EMBEDDER_API_KEY"):
        monkeypatch.delenv(var, raising=False)


def assert_train_refuses(store_path, tmp_path, args, fragment):
    """``tributary run train`` with ``args`` on a tiny model fails with one ``Error:`` line
    holding ``fragment``, no traceback, and no run folder left behind."""
    from click.testing import CliRunner

    from tributary_core.cli import cli

    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", "train", "--db", str(store_path), "--steps", "2",
                                      "--d-model", "12", "--layers", "1", *args, "--out", str(out)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    errors = [line for line in result.output.strip().splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and fragment in errors[0], result.output
    assert not out.exists()
