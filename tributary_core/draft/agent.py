"""An LLM agent that refines a metadata draft, over an OpenAI-compatible chat API (OpenRouter).

The agent starts from the offline draft (:func:`~tributary_core.draft.draft_metadata`) and may
look at the data through tools: list tables, a table's schema and profile, sample rows, distinct
counts, value counts, check a suspected foreign key, and run a read-only query. Queries run on
the sandboxed DuckDB connection task SQL uses (no file access, one SELECT, at most
``MAX_ROWS`` rows back).

Its final answer must be the whole metadata.json. The answer is checked the way
``tributary metadata validate --raw`` checks a file, every task's query is run once (it must
return rows), and tasks reading timed tables besides their anchor table need an observation
time; the errors go back to the
model until the answer passes or ``max_fixes`` is reached. Passing is not proof of no leak: run
``tributary metadata check-leakage`` on the result. Turns (requests) are capped by
``max_turns``.

Requests are retried on 408, 429 (after ``Retry-After``), 5xx, timeouts and dropped connections.
The API key goes only into the ``Authorization`` header; it is removed from every message this
module writes. Token use, and the cost when the server reports it (OpenRouter does with
``usage.include``), are added up in :class:`Usage`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import duckdb
import httpx

from tributary_core.draft.heuristics import key_inclusion, profile_tables, read_tables
from tributary_core.embedder import require_float, require_int
from tributary_core.errors import MetadataError, TributaryError
from tributary_core.http import (
    check_api_key,
    check_base_url,
    error_detail,
    post_with_retries,
    public_url,
)
from tributary_core.sql import (
    QueryTimeout,
    fetch_arrow,
    quote_identifier,
    run_interruptible,
    run_query,
    sandbox_connection,
)

__all__ = ["Usage", "AgentResult", "DraftAgent", "OPENROUTER_URL", "DEFAULT_MODEL", "KEY_ENV",
           "check_answer"]

OPENROUTER_URL = "https://openrouter.ai/api/v1"
#: Where the command line reads the agent's API key.
KEY_ENV = "OPENROUTER_API_KEY"
DEFAULT_MODEL = "openai/gpt-4.1-mini"
MAX_ROWS = 50
#: Seconds one of the model's tool queries may run.
TOOL_QUERY_TIMEOUT_S = 60.0

SYSTEM = """You annotate relational databases for Tributary, which trains a model to predict \
their cells. You get a database (parquet tables) and an automatic draft of its metadata.json. \
Check the draft against the data with the tools and fix it, then answer with the complete \
metadata.json and nothing else.

metadata.json: {"name": str, "tables": {TABLE: {"primary_key": COL|null, "temporal_column": \
COL|null, "columns": {COL: {"stype": STYPE, "foreign_key": "TABLE.COL"|null, \
"description": str}}}}, "tasks": {NAME: {"query": DuckDB SELECT, "anchor_table": TABLE, \
"anchor_key": its primary key (a column of the query's result), "target_column": a column of \
the result, "target_stype": numerical|categorical|boolean|timestamp, \
"observation_time_column": a time column of the result or null, "hidden_columns": \
["TABLE.COL", ...]}}}.
Every parquet column must be listed. STYPE is one of: identifier (keys and codes without \
meaning as values), numerical, timestamp, boolean, categorical (a small set of values), text \
(free text), ignored (useless or redundant). A foreign key points at another table's primary \
key and its column is an identifier. A table's temporal_column is the time its row became known.

Replace each "draft: ..." description with a short description of the column's meaning. Keep \
useful draft tasks and add 1 to 5 derived prediction tasks a business would care about (for \
example: will this customer order in the next 30 days). A derived task that reads timed tables \
needs an observation_time_column, and its label must come only from rows after that time while \
the context shows only rows before it: it must leak no future. List in hidden_columns any anchor \
table column that gives the label away. Every query is run once to prove it works.

Answer with the JSON object only (no prose; a ```json fence is fine)."""


def _tool(name: str, description: str, **params: str) -> dict[str, Any]:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": {p: {"type": "integer" if p in ("n", "limit") else
                                                              "string", "description": d}
                                                          for p, d in params.items()},
                       "required": [p for p in params if p not in ("n", "limit")]}}}


TOOLS = [
    _tool("list_tables", "Tables with their row and column counts."),
    _tool("table_schema", "A table's columns: Arrow type, non-null and distinct counts.", table="table name"),
    _tool("sample_rows", "The first n rows of a table (default 5, at most 50).", table="table name",
          n="rows"),
    _tool("distinct_count", "Distinct non-null values of a column.", table="table name", column="column"),
    _tool("value_counts", "The most frequent values of a column with their counts.", table="table name",
          column="column", limit="values (default 20, at most 50)"),
    _tool("check_foreign_key", "How many of a column's distinct values are keys of a parent column.",
          table="child table", column="child column", parent_table="parent table",
          parent_column="parent column"),
    _tool("run_query", f"Run one read-only DuckDB SELECT; at most {MAX_ROWS} rows come back.",
          sql="the query"),
]


@attrs.define
class Usage:
    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: USD, as the server reported it; None when it reported none.
    cost: float | None = None

    def add(self, usage: dict[str, Any] | None) -> None:
        if not isinstance(usage, dict):
            return
        self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.completion_tokens += int(usage.get("completion_tokens") or 0)
        if isinstance(usage.get("cost"), (int, float)):
            self.cost = (self.cost or 0.0) + float(usage["cost"])

    def describe(self) -> str:
        cost = f"${self.cost:.4f}" if self.cost is not None else "cost not reported by the server"
        return (f"{self.requests} requests ({self.retries} retried), {self.prompt_tokens:,} prompt + "
                f"{self.completion_tokens:,} completion tokens, {cost}")


@attrs.define
class AgentResult:
    metadata: dict[str, Any]
    usage: Usage
    #: answers sent back with errors before one passed
    fixes: int
    #: tool calls the model made
    tool_calls: int


def check_answer(data: Any, raw_dir: Path, con: Any) -> tuple[list[str], dict[str, int]]:
    """Problems of an answer (validation against the data, each task's query run once, tasks
    reading timed tables other than their anchor's without an observation time), and the rows each
    task's query returned."""
    from tributary_core.leakage import tables_read
    from tributary_core.metadata import validate_metadata
    from tributary_core.metadata.io import parse_metadata

    try:
        md = parse_metadata(data, source="answer")
    except MetadataError as exc:
        return [str(p) for p in exc.problems], {}
    report = validate_metadata(md, raw_dir=raw_dir)
    problems = [str(p) for p in report.errors]
    rows: dict[str, int] = {}
    if problems:
        return problems, rows
    timed = {t for t, tb in md.tables.items() if tb.temporal_column or tb.temporal_from}
    for name, task in md.tasks.items():
        try:
            counted = run_query(con, f"SELECT count(*) AS n FROM ({task.query})")
            rows[name] = int(counted.column("n")[0].as_py())
        except duckdb.Error as exc:
            problems.append(f"$.tasks.{name}.query: {str(exc).splitlines()[0]}")
            continue
        except QueryTimeout as exc:
            problems.append(f"$.tasks.{name}.query: ran past the {exc.seconds:g} s limit; make it "
                            f"cheaper")
            continue
        if rows[name] == 0:
            problems.append(f"$.tasks.{name}.query: returns no rows")
        # stricter than check-leakage: the anchor row's own time is a safe cut-off only for a
        # label taken from the anchor row itself
        try:
            others = (tables_read(con, task.query, md.tables) - {task.anchor_table}) & timed
        except TributaryError as exc:  # the check fails closed: report it, do not skip it
            problems.append(f"$.tasks.{name}.query: {exc}")
            continue
        if not task.observation_time_column and others:
            problems.append(f"$.tasks.{name}: reads timed table(s) {', '.join(sorted(others))} besides "
                            f"its anchor table but has no observation_time_column: the label may "
                            f"come from rows its contexts are allowed to see")
    return problems, rows


class DraftAgent:
    """One drafting conversation with a chat model; see the module's description."""

    def __init__(self, raw_dir: str | Path, *, api_key: str, model: str = DEFAULT_MODEL,
                 base_url: str = OPENROUTER_URL, key_env: str = KEY_ENV,
                 max_turns: int = 40, max_fixes: int = 4, timeout: float = 180.0, max_retries: int = 4,
                 backoff_base: float = 1.0, backoff_max: float = 30.0,
                 log: Callable[[str], None] | None = None) -> None:
        owner = "the drafting agent"
        api_key = check_api_key(api_key, key_env, owner)
        if not api_key:
            raise TributaryError(f"the drafting agent needs an API key: set {key_env}")
        if not isinstance(model, str) or not model.strip():
            raise TributaryError(f"{owner}: the model name is empty")
        base_url = check_base_url(base_url, f"{owner}: base URL")
        max_turns = require_int(owner, "max_turns", max_turns, 1)
        max_fixes = require_int(owner, "max_fixes", max_fixes, 0)
        max_retries = require_int(owner, "max_retries", max_retries, 0)
        timeout = require_float(owner, "timeout", timeout, minimum=0.0)
        backoff_base = require_float(owner, "backoff_base", backoff_base, minimum=0.0, inclusive=True)
        backoff_max = require_float(owner, "backoff_max", backoff_max, minimum=0.0, inclusive=True)
        self.raw_dir = Path(raw_dir)
        self.model, self.key_env, self._key = model, key_env, api_key
        self.url = base_url.rstrip("/") + ("" if base_url.rstrip("/").endswith("/chat/completions")
                                           else "/chat/completions")
        #: the URL as messages show it: no user:password
        self.shown_url = public_url(self.url)
        self.max_turns, self.max_fixes, self.max_retries = max_turns, max_fixes, max_retries
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.say = log or (lambda _t: None)
        self.usage = Usage()
        self.tables = read_tables(self.raw_dir)
        self.con = sandbox_connection(self.tables)
        self._client = httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)), headers={
            "Authorization": f"Bearer {api_key}", "X-Title": "Tributary metadata draft"})
        self._profiles: dict[str, Any] | None = None

    def close(self) -> None:
        self._client.close()
        self.con.close()

    def __enter__(self) -> DraftAgent:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def __repr__(self) -> str:  # never the key
        return f"DraftAgent(model={self.model!r}, url={self.shown_url!r})"

    # -- the conversation ------------------------------------------------------------------

    def run(self, draft: dict[str, Any]) -> AgentResult:
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Database {draft.get('name')!r}, tables: "
                                        f"{', '.join(self.tables)}.\nDraft:\n{json.dumps(draft)}"},
        ]
        fixes = tool_calls = 0
        last_problems: list[str] = []
        for turn in range(1, self.max_turns + 1):
            reply = self._complete(messages)
            message = reply["message"]
            calls = message.get("tool_calls") or []
            messages.append({k: v for k, v in message.items() if k in ("role", "content", "tool_calls")})
            if calls:
                for call in calls:
                    tool_calls += 1
                    messages.append({"role": "tool", "tool_call_id": call.get("id", ""),
                                     "content": self._call_tool(call)})
                continue
            data, error = _parse_answer(message.get("content") or "")
            problems = [error] if error else []
            if not problems:
                problems, rows = check_answer(data, self.raw_dir, self.con)
                if not problems:
                    self.say(f"turn {turn}: the answer validates; task rows: "
                             + ", ".join(f"{k} {v:,}" for k, v in rows.items()))
                    return AgentResult(data, self.usage, fixes, tool_calls)
            fixes += 1
            last_problems = problems
            self.say(f"turn {turn}: the answer has {len(problems)} problem(s); sent back")
            if fixes > self.max_fixes:
                raise TributaryError(f"the agent's answer still had {len(problems)} problem(s) after "
                                     f"{self.max_fixes} corrections; the first: {problems[0]}")
            listed = "\n".join(problems[:30]) + ("\n..." if len(problems) > 30 else "")
            messages.append({"role": "user", "content": f"The answer is not valid yet. Problems:\n{listed}\n"
                                                        "Fix them and answer with the whole JSON again."})
        where = f"; the last answer's first problem: {last_problems[0]}" if last_problems else ""
        raise TributaryError(f"the agent gave no valid answer within {self.max_turns} turns{where}")

    def _complete(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        body = {"model": self.model, "messages": messages, "tools": TOOLS, "tool_choice": "auto",
                "temperature": 0, "usage": {"include": True}}

        def before_attempt(attempt: int) -> None:
            self.usage.requests += 1
            self.usage.retries += attempt > 0

        def wait(delay: float, last: str) -> None:
            self.say(f"{last}; retrying in {delay:.1f} s")
            time.sleep(delay)

        response, last = post_with_retries(self._client, self.url, body, max_retries=self.max_retries,
                                           backoff_base=self.backoff_base, backoff_max=self.backoff_max,
                                           before_attempt=before_attempt, wait=wait)
        if response is None:
            raise TributaryError(self._redact(f"{self.shown_url}: gave up after {self.max_retries + 1} "
                                              f"attempts; the last: {last}"))
        if response.status_code != 200:
            hint = f" (check {self.key_env})" if response.status_code in (401, 403) else ""
            raise TributaryError(self._redact(f"{self.shown_url} refused the request: HTTP "
                                              f"{response.status_code}{error_detail(response)}{hint}"))
        return self._parse(response)

    def _parse(self, response: httpx.Response) -> dict[str, Any]:
        try:
            payload = response.json()
            choice = payload["choices"][0]
            message = choice["message"]
            if not isinstance(message, dict):
                raise TypeError
        except (ValueError, KeyError, IndexError, TypeError):
            raise TributaryError(self._redact(f"{self.shown_url}: the response is not a chat completion: "
                                              f"{' '.join(response.text.split())[:200]}")) from None
        self.usage.add(payload.get("usage"))
        return choice

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    # -- tools ------------------------------------------------------------------------------

    def _call_tool(self, call: dict[str, Any]) -> str:
        fn = call.get("function") or {}
        name = fn.get("name", "")
        try:
            args = json.loads(fn.get("arguments") or "{}")
            if not isinstance(args, dict):
                raise ValueError("arguments must be a JSON object")
            result = self._tool(name, args)
        except (ValueError, TypeError, KeyError, duckdb.Error, TributaryError, QueryTimeout) as exc:
            result = {"error": " ".join(str(exc).split())[:300]}
        self.say(f"tool {name}({fn.get('arguments', '')[:80]})")
        return json.dumps(result, default=str)[:20_000]

    def _table(self, args: dict[str, Any], key: str = "table") -> str:
        table = str(args.get(key, ""))
        if table not in self.tables:
            raise ValueError(f"no table {table!r}; tables: {', '.join(self.tables)}")
        return table

    def _column(self, table: str, args: dict[str, Any], key: str = "column") -> str:
        column = str(args.get(key, ""))
        if column not in self.tables[table].schema.names:
            raise ValueError(f"table {table!r} has no column {column!r}")
        return column

    def _query(self, sql: str, limit: int = MAX_ROWS) -> list[dict[str, Any]]:
        # the model's SQL: bounded in rows and in time (a QueryTimeout goes back to the model)
        return run_interruptible(self.con, lambda: fetch_arrow(self.con.sql(sql).limit(limit)),
                                 timeout_s=TOOL_QUERY_TIMEOUT_S).to_pylist()

    def _tool(self, name: str, args: dict[str, Any]) -> Any:
        q = quote_identifier
        if name == "list_tables":
            return [{"table": t, "rows": d.count_rows(), "columns": len(d.schema)}
                    for t, d in self.tables.items()]
        if name == "table_schema":
            table = self._table(args)
            if self._profiles is None:
                self._profiles = profile_tables(self.con, self.tables)
            return [{"column": c.name, "type": str(c.arrow), "non_null": c.non_null, "distinct": c.distinct,
                     "rows": c.rows} for c in self._profiles[table].columns.values()]
        if name == "sample_rows":
            table = self._table(args)
            n = max(1, min(int(args.get("n") or 5), MAX_ROWS))
            return self._query(f"SELECT * FROM {q(table)}", n)
        if name == "distinct_count":
            table = self._table(args)
            column = self._column(table, args)
            return self._query(f"SELECT count(DISTINCT {q(column)}) AS distinct FROM {q(table)}")[0]
        if name == "value_counts":
            table = self._table(args)
            column = self._column(table, args)
            limit = max(1, min(int(args.get("limit") or 20), MAX_ROWS))
            return self._query(f"SELECT {q(column)} AS value, count(*) AS n FROM {q(table)} GROUP BY 1 "
                               f"ORDER BY n DESC, value LIMIT {limit}")
        if name == "check_foreign_key":
            table, parent = self._table(args), self._table(args, "parent_table")
            column, key = self._column(table, args), self._column(parent, args, "parent_column")
            distinct, found = key_inclusion(self.con, table, column, parent, key)
            return {"distinct_values": distinct, "found_in_parent": found,
                    "match_rate": round(found / max(distinct, 1), 4)}
        if name == "run_query":
            sql = str(args.get("sql", ""))
            statements = duckdb.extract_statements(sql)
            if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
                raise ValueError("run_query takes exactly one SELECT statement")
            return self._query(sql)
        raise ValueError(f"no tool {name!r}; tools: {', '.join(t['function']['name'] for t in TOOLS)}")


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def _parse_answer(content: str) -> tuple[Any, str | None]:
    """The JSON object of an answer (bare, or in a ```json fence), or an error to send back."""
    text = content.strip()
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"$: the answer is not JSON ({exc.msg} at line {exc.lineno}); answer with the JSON only"
    if not isinstance(data, dict):
        return None, "$: the answer must be a JSON object"
    return data, None
