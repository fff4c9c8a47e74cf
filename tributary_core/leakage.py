"""The leakage check: columns that give a task's label away, and time holes.

``tributary metadata check-leakage PATH --raw DIR`` runs three checks:

1. **Proxies.** Each task's query runs in the sandboxed DuckDB; on a sample of its seeds, every
   column a context can show (the anchor row's, minus the task's hidden columns, the anchor key
   and the target itself; and one hop out, the columns of the rows the anchor references) is
   tried alone as a predictor of the label. Labels and values are read by their semantic type
   (:meth:`SemanticType.label_values`: booleans 1/0, times epoch µs, categories class codes...).
   The column is binned by its type's batch slot (64 quantile bins of its values for the
   ``number``, ``timestamp`` and ``boolean`` slots, the 64 commonest values for ``vocab``
   (categories, text), presence for ``none`` (identifiers), one bin for nulls; a parent reached
   through a hidden foreign-key column is not tried: the sampler does not follow that edge),
   each bin predicts the mean (or majority) label of the first half of the sample, and the
   second half scores it, by the kind of problem the target's loss head declares
   (:attr:`LossHead.tabular_objective`): AUROC for ``binary`` (booleans), accuracy (against the
   majority class) for ``multiclass`` (categories), R² otherwise (numbers, times, counts). A
   column at or above the threshold
   (AUROC >= 0.98, R² >= 0.95, accuracy >= 0.98 where the majority is below it) is a likely
   proxy: hide it with the task's ``hidden_columns``.
2. **Untimed tables under timed ones.** A table with no time is visible at every observation
   time; if it references a timed table (order lines under an order) the future can leak
   through it. Every such table is reported, with ``temporal_from`` as the fix.
3. **Tasks with no observation time that read timed tables.** Without an
   ``observation_time_column`` a task on an untimed anchor table is observed at no time at all
   (everything visible), so the rows its label was computed from are in its contexts. The
   tables a query reads come from DuckDB's parse tree (``json_serialize_sql``); a query whose
   tree DuckDB cannot give is an error, never a silently skipped check.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from tributary_core.errors import TributaryError
from tributary_core.metadata import Metadata, validate_metadata
from tributary_core.metadata.model import split_ref
from tributary_core.registry import get_registry
from tributary_core.sql import QueryTimeout, quote_identifier, run_query, sandbox_connection

__all__ = ["Finding", "check_leakage", "Thresholds"]

BINS = 64


@attrs.frozen
class Thresholds:
    auroc: float = 0.98
    r2: float = 0.95
    accuracy: float = 0.98


@attrs.frozen
class Finding:
    kind: str  # "proxy", "untimed", "no_observation_time"
    message: str
    task: str | None = None
    column: str | None = None
    metric: str | None = None
    score: float | None = None


def check_leakage(metadata: Metadata | str | Path, raw_dir: str | Path, *, sample: int = 20_000,
                  seed: int = 0, thresholds: Thresholds = Thresholds(),
                  scores: dict[str, dict[str, float]] | None = None) -> list[Finding]:
    """Run the three checks; returns the findings (empty: nothing suspicious). ``scores``, when
    given, receives every column's score per task (proxies or not)."""
    raw_dir = Path(raw_dir)
    md = validate_metadata(metadata, raw_dir=raw_dir).raise_for_errors()
    findings: list[Finding] = []
    timed = {t for t, tb in md.tables.items() if tb.temporal_column or tb.temporal_from}
    for name, table in md.tables.items():
        if name in timed:
            continue
        for cname, col in table.columns.items():
            if col.foreign_key and split_ref(col.foreign_key)[0] in timed:
                parent = split_ref(col.foreign_key)[0]
                findings.append(Finding(
                    "untimed", f"table {name!r} has no time but references timed table "
                    f"{parent!r} through {cname!r}: its rows are visible at every observation "
                    f"time; set \"temporal_from\": \"{cname}\"", column=f"{name}.{cname}"))
    datasets = {t: pads.dataset(raw_dir / f"{t}.parquet") for t in md.tables}
    con = sandbox_connection(datasets)
    try:
        for name, task in md.tasks.items():
            read = tables_read(con, task.query, md.tables, where=f"task {name!r}")
            anchor_timed = task.anchor_table in timed
            if not task.observation_time_column and not anchor_timed and read & timed:
                findings.append(Finding(
                    "no_observation_time", f"task {name!r} reads timed table(s) "
                    f"{', '.join(sorted(read & timed))} but has no observation time and its anchor "
                    f"table {task.anchor_table!r} none either: every row is visible to its contexts, "
                    f"including those its label comes from; add an observation_time_column",
                    task=name))
            per_task = _proxies(con, md, name, task, sample, seed, thresholds)
            if scores is not None:
                scores[name] = {f.column: f.score for f in per_task}
            findings.extend(f for f in per_task if f.kind == "proxy")
    finally:
        con.close()
    return findings


def tables_read(con: Any, query: str, tables: Iterable[str], *, where: str = "query") -> set[str]:
    """The ``tables`` that ``query`` reads, from DuckDB's parse tree (names compared as DuckDB
    does, ignoring case). Fails closed: a query DuckDB cannot serialize raises
    :class:`TributaryError` (starting with ``where``) rather than reading as "no tables"."""
    by_name: dict[str, set[str]] = {}
    for t in tables:
        by_name.setdefault(t.lower(), set()).add(t)
    try:
        text = con.execute("SELECT json_serialize_sql(?)", [query]).fetchall()[0][0]
        tree = json.loads(text)
    except (duckdb.Error, json.JSONDecodeError, TypeError, IndexError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TributaryError(f"{where}: cannot tell which tables the query reads: {detail}") from None
    if not isinstance(tree, dict) or tree.get("error") or not tree.get("statements"):
        detail = tree.get("error_message") if isinstance(tree, dict) else None
        raise TributaryError(f"{where}: cannot tell which tables the query reads: "
                             f"{detail or 'DuckDB gave no parse tree'}")
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "BASE_TABLE":
                table = str(node.get("table_name", ""))
                table = table[: -len(".parquet")] if table.lower().endswith(".parquet") else table
                found.update(by_name.get(table.lower(), ()))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(tree)
    return found


def _visible_columns(md: Metadata, task: Any) -> list[tuple[str, str, str, str, str]]:
    """(alias, table, column, stype, label) of every column a context of ``task`` can show at
    hop <= 1; the label names a parent's column by the key it is reached through."""
    registry = get_registry()
    hidden = set(task.hidden_columns)
    anchor = md.tables[task.anchor_table]
    out = []
    for cname, col in anchor.columns.items():
        ref = f"{task.anchor_table}.{cname}"
        if registry.semantic_type(col.stype).is_ignored or ref in hidden or cname == task.anchor_key:
            continue
        if cname == task.target_column:
            continue  # the target cell itself is masked
        out.append(("a", task.anchor_table, cname, col.stype, ref))
    for i, (cname, col) in enumerate(anchor.columns.items()):
        if not col.foreign_key or f"{task.anchor_table}.{cname}" in hidden:
            continue  # a hidden key hides its edge: the sampler never reaches the parent by it
        parent, pkey = split_ref(col.foreign_key)
        for pc, pcol in md.tables[parent].columns.items():
            if registry.semantic_type(pcol.stype).is_ignored or pc == pkey:
                continue
            out.append((f"p{i}", parent, pc, pcol.stype, f"{parent}.{pc} (via {cname})"))
    return out


def _proxies(con: Any, md: Metadata, name: str, task: Any, sample: int, seed: int,
             thresholds: Thresholds) -> list[Finding]:
    anchor = md.tables[task.anchor_table]
    if anchor.primary_key is None:
        return []
    cols = _visible_columns(md, task)
    q = quote_identifier
    select = [f"labels.{q(task.target_column)} AS __label"]
    joins = [f"JOIN {q(task.anchor_table)} a ON a.{q(anchor.primary_key)} = labels.{q(task.anchor_key)}"]
    hidden = set(task.hidden_columns)
    for i, (cname, col) in enumerate(anchor.columns.items()):
        if col.foreign_key and f"{task.anchor_table}.{cname}" not in hidden:
            parent, pkey = split_ref(col.foreign_key)
            joins.append(f"LEFT JOIN {q(parent)} p{i} ON p{i}.{q(pkey)} = a.{q(cname)}")
    for k, (alias, _table, cname, _stype, _where) in enumerate(cols):
        select.append(f"{alias}.{q(cname)} AS __f{k}")
    sql = (f"SELECT {', '.join(select)} FROM (SELECT * FROM ({task.query}) "
           f"USING SAMPLE reservoir({int(sample)} ROWS) REPEATABLE ({int(seed)})) labels "
           + " ".join(joins))
    try:
        data = run_query(con, sql)  # with the task SQL time limit, and Ctrl-C
    except duckdb.Error as exc:
        raise TributaryError(f"task {name!r}: the leakage query fails: {str(exc).splitlines()[0]}") from None
    except QueryTimeout as exc:
        raise TributaryError(f"task {name!r}: the leakage query ran past the {exc.seconds:g} s "
                             f"limit and was stopped") from None
    label, label_ok = _label(data.column("__label"), task.target_stype)
    target_metric = _metric(task.target_stype)
    if target_metric == "accuracy":  # class codes 0..K-1, whatever numbers the type gave
        label[label_ok] = np.unique(label[label_ok], return_inverse=True)[1]
    if label_ok.sum() < 20:
        return []
    rng = np.random.default_rng(seed)
    idx = np.flatnonzero(label_ok)
    rng.shuffle(idx)
    half = len(idx) // 2
    train, test = idx[:half], idx[half:]
    out = []
    for k, (_alias, table, cname, stype, where) in enumerate(cols):
        bins = _bins(data.column(f"__f{k}"), stype, train)
        metric, score = _score(bins, label, train, test, target_metric)
        if score is None:
            continue
        limit = getattr(thresholds, metric)
        is_proxy = score >= limit
        if metric == "accuracy":
            majority = _majority_accuracy(label, train, test)
            is_proxy = is_proxy and majority < limit
        out.append(Finding(
            "proxy" if is_proxy else "ok",
            f"task {name!r}: {where} alone predicts the label with {metric} {score:.3f} "
            f"(threshold {limit}); a likely proxy: add \"{table}.{cname}\" to the task's "
            f"hidden_columns" if is_proxy else "", task=name, column=where,
            metric=metric, score=round(float(score), 4)))
    return out


def _label(column: pa.ChunkedArray, stype: str) -> tuple[np.ndarray, np.ndarray]:
    """``(labels as numbers (0 where unusable), usable)``, read by the target's semantic type
    (:meth:`SemanticType.label_values`), so a label reads here as the type reads it."""
    values = _values(get_registry().semantic_type(stype), column)
    ok = np.isfinite(values)
    return np.where(ok, values, 0.0), ok


def _values(semantic_type: Any, column: pa.ChunkedArray) -> np.ndarray:
    values = np.asarray(semantic_type.label_values(column.to_pylist()), dtype=np.float64)
    if values.shape != (len(column),):
        raise TributaryError(f"semantic type {semantic_type.name!r} gave label_values() of shape "
                             f"{values.shape} for {len(column)} values")
    return values


def _metric(stype: str) -> str:
    """How a column's bins are scored against labels of ``stype``: by the kind of problem the
    type's default loss head declares (``tabular_objective``): AUROC for ``binary``, accuracy
    for ``multiclass``, R² otherwise (regression, counts, no tabular objective)."""
    registry = get_registry()
    losses = registry.semantic_type(stype).target_losses
    objective = registry.loss_head(losses[0]).tabular_objective if losses else None
    if objective == "binary":
        return "auroc"
    if objective is not None and objective.startswith(("multiclass", "softmax", "ova", "ovr")):
        return "accuracy"
    return "r2"


def _bins(column: pa.ChunkedArray, stype: str, train: np.ndarray) -> np.ndarray:
    """One integer bin per row; 0 is null. By the type's batch slot: presence for ``none``,
    quantiles of its :meth:`~SemanticType.label_values` for ``number``, ``timestamp`` and
    ``boolean``, the commonest values for ``vocab``."""
    n = len(column)
    semantic_type = get_registry().semantic_type(stype)
    slot = semantic_type.batch_slot
    if slot == "none":
        return np.array([0 if v is None else 1 for v in column.to_pylist()], dtype=np.int64)
    if slot != "vocab":
        values = _values(semantic_type, column)
        ok = np.isfinite(values)
        fit = values[np.intersect1d(train, np.flatnonzero(ok))]
        if not len(fit):
            return np.where(ok, 1, 0)
        edges = np.unique(np.quantile(fit, np.linspace(0, 1, BINS + 1)[1:-1]))
        return np.where(ok, np.searchsorted(edges, np.where(ok, values, 0.0), side="right") + 1, 0)
    values = [None if v is None else str(v) for v in column.to_pylist()]
    counts: dict[str, int] = {}
    for i in train:
        v = values[i]
        if v is not None:
            counts[v] = counts.get(v, 0) + 1
    top = {v: j + 2 for j, v in enumerate(sorted(counts, key=lambda v: -counts[v])[:BINS])}
    return np.array([0 if v is None else top.get(v, 1) for v in values], dtype=np.int64)[:n]


def _score(bins: np.ndarray, label: np.ndarray, train: np.ndarray, test: np.ndarray,
           metric: str) -> tuple[str, float | None]:
    k = int(bins.max()) + 1
    if metric == "accuracy":
        n_cls = int(label.max()) + 1
        table = np.zeros((k, n_cls))
        np.add.at(table, (bins[train], label[train].astype(np.int64)), 1)
        overall = int(np.bincount(label[train].astype(np.int64), minlength=n_cls).argmax())
        pred = np.where(table.sum(1) > 0, table.argmax(1), overall)[bins[test]]
        return "accuracy", float((pred == label[test]).mean())
    sums = np.bincount(bins[train], weights=label[train], minlength=k)
    counts = np.bincount(bins[train], minlength=k)
    mean = label[train].mean()
    pred = np.where(counts > 0, sums / np.maximum(counts, 1), mean)[bins[test]]
    y = label[test]
    if metric == "auroc":
        import torch

        from tributary_core.metrics import auroc

        score = auroc(torch.from_numpy(pred), torch.from_numpy(y > 0.5))
        return "auroc", None if np.isnan(score) else score
    total = float(((y - y.mean()) ** 2).sum())
    if total == 0:
        return "r2", None
    return "r2", 1.0 - float(((y - pred) ** 2).sum()) / total


def _majority_accuracy(label: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
    overall = int(np.bincount(label[train].astype(np.int64)).argmax())
    return float((label[test] == overall).mean())
