"""An offline first draft of metadata.json from the parquet files alone.

Every guess is explained in the column's ``description`` (``"draft: ..."``), which the reviewer
replaces with a real description before preprocessing: descriptions are embedded with the column
name.

- **Profile** (DuckDB, one aggregate query per table): rows, non-null and distinct counts,
  string lengths, whether integers are only 0/1, whether strings all parse as times or as
  yes/no words (those the ``boolean`` type reads: yes/no, y/n, true/false, t/f, 1/0).
- **Semantic types**: Arrow timestamps and dates, and strings that all parse as times ->
  timestamp; bool, 0/1 integers and two yes/no words -> boolean; primary and foreign keys, and
  key-like names (``id``, ``..._id``, ``...ID``, ``...key``) with many distinct values (over
  1,000, or over half the rows: ``lgID`` with 7 is a category) -> identifier; other numbers ->
  numerical; strings -> categorical when few distinct values (at most 1,000, or at most 5% of
  the non-null values) unless mostly distinct (over half, from 50 values on), else text; a
  constant or all-null column, and ``year``/``month``/``day``/``hour``/``minute`` beside a time
  column -> ignored.
- **Primary key**: a unique, non-null column, preferring a key-like name, else the first column.
- **Foreign keys**: a column whose distinct values are included in another table's primary key
  (DuckDB), at a match rate of at least 80% when the names agree (same name, or the name ends
  with the key's, or they are equal without a short table prefix such as TPC-H's ``l_``/``o_``)
  and 95% for strings whose names do not; integers need agreeing names (years are
  included in any integer id), and so do references within one table. The match rate is
  recorded.
- **Temporal column**: a table's only time column, or among several the one with a time-like name.
- **Tasks**: one cell-masking task per informative column (numerical, categorical or boolean;
  at least two values; at most half null) of a table with a primary key, as a starting point.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pyarrow as pa
import pyarrow.dataset as pads

from tributary_core.errors import TributaryError
from tributary_core.registry import get_registry
from tributary_core.sql import fetch_arrow, quote_identifier, sandbox_connection

__all__ = ["ColumnProfile", "TableProfile", "profile_tables", "draft_metadata", "read_tables",
           "key_inclusion"]

_KEY_NAME = re.compile(r"(^id$|_id$|[a-z0-9]ID$|[a-z0-9]Id$|key$|_code$)")
#: a short table prefix in front of column names (TPC-H's ``l_orderkey``, ``o_orderkey``)
_PREFIX = re.compile(r"^[a-z]{1,3}_")
_TIME_NAME = re.compile(r"(time|date|timestamp|^ts$|_at$|season|created|updated)", re.IGNORECASE)
_TIME_PARTS = {"year", "month", "day", "hour", "minute", "second"}
MAX_CATEGORIES = 1000


@attrs.define
class ColumnProfile:
    name: str
    arrow: pa.DataType
    rows: int
    non_null: int
    distinct: int
    mean_length: float | None = None  # strings
    zero_one: bool = False  # integers: only 0 and 1
    all_times: bool = False  # strings: every value parses as a time
    yes_no: bool = False  # strings: at most two values, all yes/no words

    @property
    def kind(self) -> str:
        t = self.arrow
        if pa.types.is_timestamp(t) or pa.types.is_date(t):
            return "time"
        if pa.types.is_boolean(t):
            return "bool"
        if pa.types.is_integer(t):
            return "int"
        if pa.types.is_floating(t) or pa.types.is_decimal(t):
            return "float"
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
            return "string"
        return "other"

    @property
    def unique(self) -> bool:
        return self.non_null == self.rows and self.distinct == self.rows and self.rows > 0


@attrs.define
class TableProfile:
    name: str
    rows: int
    columns: dict[str, ColumnProfile]


def read_tables(raw_dir: str | Path) -> dict[str, pads.Dataset]:
    """``<table>.parquet`` files of ``raw_dir`` as Arrow datasets, by table name."""
    raw = Path(raw_dir)
    if not raw.is_dir():
        raise TributaryError(f"{raw}: not a folder of <table>.parquet files")
    files = sorted(f for f in raw.glob("*.parquet") if f.is_file())
    if not files:
        raise TributaryError(f"{raw}: no .parquet files")
    out = {}
    for f in files:
        try:
            data = pads.dataset(f, format="parquet")
        except (pa.ArrowInvalid, OSError) as exc:
            raise TributaryError(f"{f}: not a readable parquet file ({str(exc).splitlines()[0]})") from None
        names = data.schema.names
        if not names:
            raise TributaryError(f"{f}: the table has no columns")
        if any(not n.strip() for n in names):
            raise TributaryError(f"{f}: a column has an empty name; name every column")
        folded: dict[str, str] = {}
        for n in names:
            if n.lower() in folded:
                raise TributaryError(f"{f}: columns {folded[n.lower()]!r} and {n!r} differ only in "
                                     f"case, which SQL (DuckDB) cannot tell apart; rename one")
            folded[n.lower()] = n
        out[f.stem] = data
    return out


def _yes_no_words() -> list[str]:
    """The strings the ``boolean`` semantic type reads as true or false (lower case): its
    ``true_strings`` and ``false_strings``, so the draft and the type never disagree."""
    boolean = get_registry().semantic_type("boolean")
    return sorted({*boolean.true_strings, *boolean.false_strings})


def profile_tables(con: Any, tables: dict[str, pads.Dataset]) -> dict[str, TableProfile]:
    """One aggregate query per table over ``con`` (a sandbox connection holding ``tables``)."""
    out = {}
    for tname, data in tables.items():
        exprs = ["count(*)"]
        plan = []
        for field in data.schema:
            col = ColumnProfile(field.name, field.type, 0, 0, 0)
            q = quote_identifier(field.name)
            exprs += [f"count({q})", f"count(DISTINCT {q})"]
            extra = []
            if col.kind == "string":
                extra = [f"avg(length({q}))", f"count(TRY_CAST({q} AS TIMESTAMP))",
                         f"bool_and(lower(trim({q})) IN ({', '.join(repr(w) for w in _yes_no_words())}))"]
            elif col.kind == "int":
                extra = [f"bool_and({q} IN (0, 1))"]
            exprs += extra
            plan.append((col, len(extra)))
        row = fetch_arrow(con.sql(f"SELECT {', '.join(exprs)} FROM {quote_identifier(tname)}")).to_pylist()[0]
        values = list(row.values())
        rows, pos = int(values[0]), 1
        columns = {}
        for col, n_extra in plan:
            col.rows, col.non_null, col.distinct = rows, int(values[pos]), int(values[pos + 1])
            extra = values[pos + 2 : pos + 2 + n_extra]
            pos += 2 + n_extra
            if col.kind == "string":
                col.mean_length = float(extra[0]) if extra[0] is not None else None
                col.all_times = col.non_null > 0 and int(extra[1]) == col.non_null
                col.yes_no = bool(extra[2]) and col.distinct <= 2
            elif col.kind == "int":
                col.zero_one = bool(extra[0]) and col.distinct == 2
            columns[col.name] = col
        out[tname] = TableProfile(tname, rows, columns)
    return out


def _key_like(name: str) -> bool:
    return bool(_KEY_NAME.search(name))


def _primary_key(table: TableProfile) -> tuple[str | None, str]:
    unique = [c for c in table.columns.values() if c.unique and c.kind in ("int", "string")]
    named = [c for c in unique if _key_like(c.name)]
    if named:
        return named[0].name, "unique, non-null and named like a key"
    first = next(iter(table.columns.values()), None)
    if first is not None and first in unique:
        return first.name, "unique and non-null, and the table's first column"
    return None, ""


def _names_agree(child: str, parent_key: str) -> bool:
    c, p = child.lower(), parent_key.lower()
    if c == p or (c.endswith(p) and len(p) >= 3):
        return True
    bare_c, bare_p = _PREFIX.sub("", c), _PREFIX.sub("", p)
    return bare_c == bare_p and len(bare_p) >= 3


def _foreign_keys(con: Any, profiles: dict[str, TableProfile], keys: dict[str, str | None],
                  min_named: float = 0.8,
                  min_unnamed: float = 0.95) -> dict[tuple[str, str], tuple[str, str, float, int]]:
    """(table, column) -> (parent table, parent key, match rate of distinct values, distinct values)."""
    found: dict[tuple[str, str], tuple[str, str, float, int]] = {}
    for tname, table in profiles.items():
        for col in table.columns.values():
            if col.name == keys.get(tname) or col.kind not in ("int", "string") or col.distinct < 1:
                continue
            if col.yes_no or col.zero_one or (col.mean_length or 0) > 40:
                continue
            best = None
            for pname, pk in keys.items():
                if pk is None or (pname == tname and col.name == pk):
                    continue
                parent = profiles[pname].columns[pk]
                if parent.kind != col.kind:
                    continue
                named = _names_agree(col.name, pk)
                if not named and (col.kind == "int" or pname == tname):
                    continue
                distinct, hit = key_inclusion(con, tname, col.name, pname, pk)
                rate = hit / distinct if distinct else 0.0
                if rate < (min_named if named else min_unnamed):
                    continue
                score = (named, rate, -parent.distinct)
                if best is None or score > best[0]:
                    best = (score, (pname, pk, rate, col.distinct))
            if best is not None:
                found[(tname, col.name)] = best[1]
    return found


def key_inclusion(con: Any, table: str, column: str, parent: str, key: str) -> tuple[int, int]:
    """``(distinct non-null values of table.column, how many of them are values of parent.key)``."""
    c, k = quote_identifier(column), quote_identifier(key)
    sql = (f"SELECT count(*) AS n, count(p.v) AS hit FROM (SELECT DISTINCT {c} AS v FROM "
           f"{quote_identifier(table)} WHERE {c} IS NOT NULL) AS d LEFT JOIN (SELECT DISTINCT {k} AS v "
           f"FROM {quote_identifier(parent)}) AS p ON d.v = p.v")
    row = fetch_arrow(con.sql(sql)).to_pylist()[0]
    return int(row["n"]), int(row["hit"])


def _stype(col: ColumnProfile, table: TableProfile, is_key: bool, fk: tuple | None,
           has_time: bool) -> tuple[str, str]:
    n, d = col.non_null, col.distinct
    if n == 0:
        return "ignored", ("the table has no rows" if table.rows == 0 else "every value is null")
    if fk is not None:
        parent, key, rate, distinct = fk
        return "identifier", (f"foreign key to {parent}.{key}: {rate:.0%} of its {distinct:,} distinct "
                              f"values are keys there")
    if is_key:
        return "identifier", "the table's primary key"
    if d == 1:
        return "ignored", "a single value"
    if col.name.lower() in _TIME_PARTS and has_time and col.kind == "int":
        return "ignored", f"'{col.name}' repeats part of the table's time column"
    kind = col.kind
    if kind == "time":
        return "timestamp", f"Arrow type {col.arrow}"
    if kind == "bool":
        return "boolean", "Arrow type bool"
    if kind == "int" and col.zero_one:
        return "boolean", "integers 0 and 1 only"
    if kind == "string" and col.yes_no:
        return "boolean", "two yes/no words"
    if kind == "string" and col.all_times:
        return "timestamp", "every value parses as a time"
    if _key_like(col.name) and kind in ("int", "string") and (d > MAX_CATEGORIES or d > 0.5 * n):
        return "identifier", f"named like a key, {d:,} distinct values in {n:,}"
    if kind in ("int", "float"):
        return "numerical", f"Arrow type {col.arrow}, {d:,} distinct values"
    if kind == "string":
        ratio = d / n
        if (d <= MAX_CATEGORIES or ratio <= 0.05) and not (ratio > 0.5 and n >= 50):
            return "categorical", f"string, {d:,} distinct values in {n:,} ({ratio:.1%})"
        return "text", (f"string, {d:,} distinct values in {n:,} ({ratio:.1%}), mean length "
                        f"{col.mean_length or 0:.0f}")
    return "ignored", f"Arrow type {col.arrow} has no semantic type"


def _temporal(table: TableProfile, stypes: dict[str, str]) -> tuple[str | None, str]:
    times = [c for c, s in stypes.items() if s == "timestamp"]
    if len(times) == 1:
        return times[0], "its only time column"
    named = [c for c in times if _TIME_NAME.search(c)]
    if len(named) == 1:
        return named[0], "its time column with a time-like name"
    return None, ""


def draft_metadata(raw_dir: str | Path, *, name: str | None = None,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """A metadata.json draft (as JSON-ready data) for the parquet files in ``raw_dir``."""
    say = log or (lambda _t: None)
    raw = Path(raw_dir)
    tables = read_tables(raw)
    con = sandbox_connection(tables)
    try:
        say(f"profiling {len(tables)} tables")
        profiles = profile_tables(con, tables)
        keys = {}
        key_reason = {}
        for tname, table in profiles.items():
            keys[tname], key_reason[tname] = _primary_key(table)
        say("looking for foreign keys")
        fks = _foreign_keys(con, profiles, keys)
    finally:
        con.close()
    out_tables: dict[str, Any] = {}
    tasks: dict[str, Any] = {}
    for tname, table in profiles.items():
        has_time = any(c.kind == "time" or c.all_times for c in table.columns.values())
        columns, stypes = {}, {}
        for cname, col in table.columns.items():
            fk = fks.get((tname, cname))
            stype, why = _stype(col, table, cname == keys[tname], fk, has_time)
            stypes[cname] = stype
            entry: dict[str, Any] = {"stype": stype}
            if fk is not None:
                entry["foreign_key"] = f"{fk[0]}.{fk[1]}"
            entry["description"] = f"draft: {stype}: {why}"
            columns[cname] = entry
        t: dict[str, Any] = {}
        if keys[tname]:
            t["primary_key"] = keys[tname]
            columns[keys[tname]]["description"] += f" ({key_reason[tname]})"
        temporal, why = _temporal(table, stypes)
        if temporal:
            t["temporal_column"] = temporal
            columns[temporal]["description"] += f"; the table's temporal column: {why}"
        t["columns"] = columns
        out_tables[tname] = t
        if not keys[tname]:
            continue
        for cname, col in table.columns.items():
            stype = stypes[cname]
            if stype not in ("numerical", "categorical", "boolean") or col.distinct < 2:
                continue
            if col.non_null < 0.5 * col.rows:
                continue
            pk, q = quote_identifier(keys[tname]), quote_identifier(cname)
            tasks[f"{tname}_{cname}_masked"] = {
                "query": f"SELECT {pk}, {q} AS target FROM {quote_identifier(tname)} WHERE {q} IS NOT NULL",
                "anchor_table": tname, "anchor_key": keys[tname], "target_column": "target",
                "target_stype": stype, "hidden_columns": [f"{tname}.{cname}"],
            }
    return {"name": name or raw.resolve().name, "tables": out_tables, "tasks": tasks}
