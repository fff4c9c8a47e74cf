"""A readable view of one sampled context (``tributary inspect --sample TASK --row N``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tributary_core.sampler.batch import Batch
from tributary_core.sampler.graph import SamplerGraph
from tributary_core.timeconv import format_epoch_us

__all__ = ["describe_context", "format_context"]


def describe_context(graph: SamplerGraph, batch: Batch, i: int = 0) -> dict[str, Any]:
    """Context ``i`` of ``batch`` as plain data: its rows and its cells with decoded values."""
    store = graph.store
    view = graph.task(batch.task)
    rows, decoded = [], {}
    for k in range(int(batch.n_rows[i])):
        table = graph.table_names[int(batch.row_table[i, k])]
        row = int(batch.row_index[i, k])
        rows.append({"table": table, "row": row, "hops": int(batch.row_hops[i, k]),
                     "example": bool(batch.row_is_example[i, k]),
                     "parents": [int(p) for p in batch.row_parents[i, k] if p >= 0]})
        decoded[k] = store.decode_row(table, row)
    cells = []
    for pos in range(int(batch.n_cells[i])):
        k = int(batch.row[i, pos])
        c = int(batch.cell_col[i, pos])
        target = bool(batch.is_target[i, pos])
        label = bool(batch.is_label[i, pos])
        column = graph.col_name[c] if c < graph.n_cols else view.name
        if target:
            value = "<masked target>"
        elif label:
            value = _slot_value(graph, view.slot, batch.number[i, pos], batch.timestamp[i, pos],
                                batch.boolean[i, pos], batch.vocab[i, pos])
        else:
            value = decoded[k].get(column)
        cells.append({"position": pos, "row": k, "table": rows[k]["table"], "column": column,
                      "stype": batch.stype_names[int(batch.stype[i, pos])], "target": target,
                      "label": label, "value": value})
    meta = store.tasks[batch.task].meta
    obs = int(batch.observation_time[i])
    return {
        "task": batch.task, "database": batch.database,
        "anchor": {"table": meta["anchor_table"], "row": int(batch.anchor_row[i])},
        "observation_time": None if obs == np.iinfo(np.int64).max else format_epoch_us(obs),
        "target": {"column": meta["target_column"], "stype": batch.target_stype,
                   "is_null": bool(batch.target_is_null[i]), "label": _label(graph, batch, i)},
        "rows": rows, "cells": cells,
    }


def _label(graph: SamplerGraph, batch: Batch, i: int) -> Any:
    if batch.target_is_null[i]:
        return None
    return _slot_value(graph, graph.task(batch.task).slot, batch.target_number[i],
                       batch.target_timestamp[i], batch.target_boolean[i], batch.target_vocab[i])


def _slot_value(graph: SamplerGraph, slot: int, number: Any, timestamp: Any, boolean: Any,
                vocab: Any) -> Any:
    """A label as it reads: the value in the slot of the target's type."""
    from tributary_core.sampler.kernel import SLOT_BOOLEAN, SLOT_NUMBER, SLOT_TIMESTAMP, SLOT_VOCAB

    if slot == SLOT_BOOLEAN:
        return bool(boolean)
    if slot == SLOT_VOCAB:
        return graph.store.vocab_values[int(vocab)]
    if slot == SLOT_NUMBER:
        return f"{float(number):.4g} (z-score)"
    if slot == SLOT_TIMESTAMP:
        return f"{float(timestamp[-1]):.4g} (epoch z-score)"
    return None


def format_context(info: dict[str, Any]) -> str:
    lines = [f"{info['database']}/{info['task']}: anchor {info['anchor']['table']} row "
             f"{info['anchor']['row']}, observation time {info['observation_time'] or 'none'}",
             f"target {info['target']['column']} ({info['target']['stype']}) = "
             f"{info['target']['label']!r}{' (null)' if info['target']['is_null'] else ''}",
             f"{len(info['rows'])} rows, {len(info['cells'])} cells, "
             f"{sum(1 for c in info['cells'] if c.get('label'))} labelled examples "
             "(hops \"ex\": a row added as an example)", "",
             f"{'ctx row':>7}  {'table':<20} {'row':>9}  {'hops':>4}  references"]
    for k, r in enumerate(info["rows"]):
        refs = ", ".join(str(p) for p in r["parents"]) or "-"
        hops = "ex" if r.get("example") else r["hops"]
        lines.append(f"{k:>7}  {r['table']:<20} {r['row']:>9}  {hops:>4}  {refs}")
    lines += ["", f"{'pos':>4}  {'ctx row':>7}  {'column':<24} {'stype':<12} value"]
    for c in info["cells"]:
        value = "null" if c["value"] is None else c["value"]
        mark = "  <- target" if c["target"] else "  <- example label" if c.get("label") else ""
        lines.append(f"{c['position']:>4}  {c['row']:>7}  {c['column']:<24} {c['stype']:<12} "
                     f"{value}{mark}")
    return "\n".join(lines)
