"""Metadata drafting: the offline heuristics, and the agent against a scripted chat server on
127.0.0.1 (tool calls, an invalid answer then a valid one, 429 then success, a server that never
answers)."""

from __future__ import annotations

import copy
import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pytest
from chat_server import ScriptedChat, answer, tool_calls
from click.testing import CliRunner
from conftest import write_tables

from tributary_core.cli import cli
from tributary_core.draft import draft_metadata
from tributary_core.draft.agent import DraftAgent
from tributary_core.errors import TributaryError
from tributary_core.metadata import validate_metadata
from tributary_core.metadata.io import parse_metadata

KEY = "sk-or-test-0123456789abcdef"


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """Customers and their orders, with a dangling customer id, string times and free text."""
    rng = np.random.default_rng(0)
    n_c, n_o = 60, 400
    t0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    customers = pa.table({
        "customer_id": pa.array([f"C{i:04d}" for i in range(n_c)]),
        "segment": pa.array([["retail", "business", "public"][k] for k in rng.integers(0, 3, n_c)]),
        "vip": pa.array([["Y", "N"][k] for k in rng.integers(0, 2, n_c)]),
        "signup_at": pa.array([t0 + dt.timedelta(days=int(d)) for d in rng.integers(0, 100, n_c)],
                              pa.timestamp("us", tz="UTC")),
    })
    owner = [f"C{i:04d}" for i in rng.integers(0, n_c, n_o)]
    owner[0] = "C9999"  # one order of a customer the customers table lacks
    placed = [t0 + dt.timedelta(hours=int(h)) for h in rng.integers(0, 24 * 200, n_o)]
    orders = pa.table({
        "order_id": pa.array(np.arange(n_o) + 1000, pa.int64()),
        "customer_id": pa.array(owner),
        "placed_at": pa.array([p.strftime("%Y-%m-%d %H:%M:%S") for p in placed]),
        "year": pa.array([p.year for p in placed], pa.int64()),
        "total": rng.uniform(5, 500, n_o),
        "status": pa.array([["new", "paid", "shipped", "returned"][k] for k in rng.integers(0, 4, n_o)]),
        "comment": pa.array([f"customer wrote note number {i} about parcel {rng.integers(1e6)}"
                             for i in range(n_o)]),
        "channel": pa.array(["web"] * n_o),
    })
    return write_tables(tmp_path_factory.mktemp("draft") / "shop", {"customers": customers, "orders": orders})


def test_offline_draft_guesses_types_keys_and_times(raw):
    draft = draft_metadata(raw)
    assert draft["name"] == "shop"
    c, o = draft["tables"]["customers"], draft["tables"]["orders"]
    assert (c["primary_key"], o["primary_key"]) == ("customer_id", "order_id")
    assert (c["temporal_column"], o["temporal_column"]) == ("signup_at", "placed_at")
    stypes = {f"{t}.{k}": v["stype"] for t, tb in draft["tables"].items() for k, v in tb["columns"].items()}
    assert stypes == {
        "customers.customer_id": "identifier", "customers.segment": "categorical",
        "customers.vip": "boolean", "customers.signup_at": "timestamp",
        "orders.order_id": "identifier", "orders.customer_id": "identifier",
        "orders.placed_at": "timestamp", "orders.year": "ignored", "orders.total": "numerical",
        "orders.status": "categorical", "orders.comment": "text", "orders.channel": "ignored"}
    fk = o["columns"]["customer_id"]
    assert fk["foreign_key"] == "customers.customer_id"
    assert "98%" in fk["description"] or "99%" in fk["description"]  # 60 of 61 distinct ids match
    assert all(col["description"].startswith("draft: ") for tb in draft["tables"].values()
               for col in tb["columns"].values())
    assert "single value" in o["columns"]["channel"]["description"]
    targets = {(t["anchor_table"], t["hidden_columns"][0]) for t in draft["tasks"].values()}
    assert targets == {("customers", "customers.segment"), ("customers", "customers.vip"),
                       ("orders", "orders.total"), ("orders", "orders.status")}
    report = validate_metadata(parse_metadata(draft), raw_dir=raw)
    assert report.ok, [str(p) for p in report.problems]


def test_cli_draft_writes_a_valid_file_and_refuses_mistakes(raw, tmp_path):
    out = tmp_path / "md.json"
    result = CliRunner().invoke(cli, ["metadata", "draft", str(raw), "--out", str(out), "--name", "myshop"])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["name"] == "myshop"
    checked = CliRunner().invoke(cli, ["metadata", "validate", str(out), "--raw", str(raw)])
    assert checked.exit_code == 0 and "valid against" in checked.output
    again = CliRunner().invoke(cli, ["metadata", "draft", str(raw), "--out", str(out)])
    assert again.exit_code == 2 and "exists; use --force" in again.output
    named = CliRunner().invoke(cli, ["metadata", "draft", str(raw), "--name", "bad/name",
                                     "--out", str(tmp_path / "named.json")])
    assert named.exit_code == 2 and "Traceback" not in named.output
    assert f"{raw}: the draft does not validate: $.name: name 'bad/name'" in named.output
    assert "(choose another with --name)" in named.output and not (tmp_path / "named.json").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    none = CliRunner().invoke(cli, ["metadata", "draft", str(empty), "--out", str(tmp_path / "x.json")])
    assert none.exit_code == 2 and f"{empty}: no .parquet files" in none.output
    assert not (tmp_path / "x.json").exists() and "Traceback" not in none.output
    (empty / "bad.parquet").write_text("not parquet")
    broken = CliRunner().invoke(cli, ["metadata", "draft", str(empty)])
    assert broken.exit_code == 2 and "bad.parquet: not a readable parquet file" in broken.output


def _valid_answer(raw) -> dict:
    """What a good agent answers: the draft with real descriptions and a derived task."""
    md = copy.deepcopy(draft_metadata(raw))
    for table in md["tables"].values():
        for name, col in table["columns"].items():
            col["description"] = f"the {name}"
    md["tasks"]["customer_orders_next_30d"] = {
        "query": "SELECT c.customer_id, t.at, (SELECT count(*) FROM orders o WHERE o.customer_id = "
                 "c.customer_id AND CAST(o.placed_at AS TIMESTAMP) >= t.at AND CAST(o.placed_at AS "
                 "TIMESTAMP) < t.at + INTERVAL 30 DAY) AS n FROM customers c, (SELECT TIMESTAMP "
                 "'2024-03-01' AS at) t",
        "anchor_table": "customers", "anchor_key": "customer_id", "target_column": "n",
        "target_stype": "numerical", "observation_time_column": "at"}
    return md


def test_agent_uses_tools_gets_corrected_and_survives_a_429(raw, tmp_path, monkeypatch):
    good = _valid_answer(raw)
    bad = copy.deepcopy(good)
    bad["tables"]["orders"]["columns"]["total"]["stype"] = "number"  # no such semantic type
    leaky = copy.deepcopy(good)
    del leaky["tasks"]["customer_orders_next_30d"]["observation_time_column"]
    script = [
        tool_calls(("list_tables", {}), ("sample_rows", {"table": "orders", "n": 2})),
        tool_calls(("check_foreign_key", {"table": "orders", "column": "customer_id",
                                          "parent_table": "customers", "parent_column": "customer_id"}),
                   ("run_query", {"sql": "DELETE FROM orders"}),
                   ("run_query", {"sql": "SELECT * FROM read_csv('/etc/passwd')"}),
                   ("value_counts", {"table": "orders", "column": "nope"})),
        answer("```json\n" + json.dumps(bad) + "\n```"),
        answer(json.dumps(leaky)),
        {"status": 429, "headers": {"Retry-After": "0.1"}, "body": {"error": {"message": "slow down"}}},
        answer(json.dumps(good)),
    ]
    out = tmp_path / "agent.json"
    with ScriptedChat(script) as server:
        monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
        monkeypatch.setenv("OPENROUTER_BASE_URL", server.url)
        result = CliRunner().invoke(cli, ["metadata", "draft", str(raw), "--agent", "openrouter",
                                          "--model", "test/model", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text()) == good
    assert len(server.requests) == 6
    assert all(r["path"] == "/api/v1/chat/completions" for r in server.requests)
    assert all(r["headers"]["Authorization"] == f"Bearer {KEY}" for r in server.requests)
    first = server.requests[0]["body"]
    assert first["model"] == "test/model" and {t["function"]["name"] for t in first["tools"]} >= {
        "list_tables", "table_schema", "sample_rows", "distinct_count", "value_counts",
        "check_foreign_key", "run_query"}
    answered = [m for m in server.requests[2]["body"]["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in answered] == ["call_0", "call_1"] + [f"call_{i}" for i in range(4)]
    second_turn = answered[2:]
    fk, delete, passwd, nope = (json.loads(m["content"]) for m in second_turn)
    assert fk["distinct_values"] == 61 and fk["found_in_parent"] == 60
    assert "exactly one SELECT" in delete["error"]
    assert "error" in passwd
    assert "has no column 'nope'" in nope["error"]
    first_turn = [json.loads(m["content"]) for m in server.requests[1]["body"]["messages"]
                  if m["role"] == "tool"]
    assert {t["table"] for t in first_turn[0]} == {"customers", "orders"} and len(first_turn[1]) == 2
    fix = server.requests[3]["body"]["messages"][-1]["content"]
    assert "$.tables.orders.columns.total.stype" in fix and "number" in fix
    fix2 = server.requests[4]["body"]["messages"][-1]["content"]
    assert "$.tasks.customer_orders_next_30d: reads timed table(s) orders" in fix2
    assert "no observation_time_column" in fix2
    assert "2 answer(s) corrected" in result.output and "6 tool call(s)" in result.output
    assert "6 requests (1 retried)" in result.output
    assert "800 prompt + 170 completion tokens, $0.0080" in result.output  # as the server reported
    assert KEY not in result.output


def test_agent_gives_up_cleanly(raw, tmp_path, monkeypatch):
    never = [{"hang": 3.0}, {"hang": 3.0}]
    with (ScriptedChat(never) as server,
          DraftAgent(raw, api_key=KEY, base_url=server.url, timeout=0.3, max_retries=1,
                     backoff_base=0.01) as bot,
          pytest.raises(TributaryError, match="gave up after 2 attempts; the last: the request timed out")
          as err):
        bot.run(draft_metadata(raw))
    assert KEY not in str(err.value)
    bad_answers = [answer("I think the metadata looks fine!")] * 3
    with (ScriptedChat(bad_answers) as server,
          DraftAgent(raw, api_key=KEY, base_url=server.url, max_fixes=2) as bot,
          pytest.raises(TributaryError, match="after 2 corrections; the first: .*not JSON")):
        bot.run(draft_metadata(raw))
    refused = [{"status": 401, "body": {"error": {"message": f"invalid key {KEY}"}}}]
    out = tmp_path / "never.json"
    with ScriptedChat(refused) as server:
        monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
        monkeypatch.setenv("OPENROUTER_BASE_URL", server.url)
        result = CliRunner().invoke(cli, ["metadata", "draft", str(raw), "--agent", "openrouter",
                                          "--out", str(out)])
    assert result.exit_code == 2 and "HTTP 401" in result.output
    assert "check OPENROUTER_API_KEY" in result.output
    assert KEY not in result.output and "***" in result.output
    assert not out.exists() and "Traceback" not in result.output
    monkeypatch.delenv("OPENROUTER_API_KEY")
    missing = CliRunner().invoke(cli, ["metadata", "draft", str(raw), "--agent", "openrouter"])
    assert missing.exit_code == 2 and "set OPENROUTER_API_KEY" in missing.output
