"""Predictions with a trained run: for a task's own seeds, or for any entities of its anchor
table at any time, in the user's units, keyed by the user's own keys, with explanations.

:class:`Predictor` holds a loaded run (its model, sampler graphs and embeddings) for many
requests: ``tributary run predict`` makes one for a call, ``tributary serve model`` one for its
lifetime. :func:`predict` is the one-call form.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pyarrow as pa
import torch

from tributary_core.errors import TributaryError
from tributary_core.keys import as_key, key_kind
from tributary_core.registry import get_registry
from tributary_core.sampler import SampledTask
from tributary_core.sampler.batch import Batch, sample_batch
from tributary_core.sampler.graph import TaskView
from tributary_core.sampler.kernel import NO_TIME
from tributary_core.train.trainer import Run, _recode, batch_loss, load_run

__all__ = ["predict", "Predictor", "read_keys", "NO_CUTOFF", "EXPLAIN_METHOD"]

#: Observation time of a seed with no cut-off (an untimed task or database).
NO_CUTOFF = np.iinfo(np.int64).max
#: How explanations are computed (written into each explained table's schema metadata).
EXPLAIN_METHOD = ("gradient x input: the gradient of the prediction's score (the logit, the "
                  "value, or the predicted class's score) with respect to each cell's input "
                  "vector, times that vector, summed over the model width; the cells with the "
                  "largest absolute attribution, sign kept (positive: pushed the score up)")
_RESERVED = ("seed", "observation_time", "prediction", "probability", "top_k", "p_null",
             "explanation", "anchor_row")


def _check_count(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise TributaryError(f"{name} must be a whole number >= {low}; got {value!r}")
    return int(value)


class Predictor:
    """A trained run ready to answer predictions (see the module's docstring)."""

    def __init__(self, run: str | Path | Run, *, batch_size: int | None = None) -> None:
        from tributary_core.train.evaluate import inference_batch_size

        self.run = run if isinstance(run, Run) else load_run(run)
        self.registry = get_registry()
        self.sampler = self.run.sampler("train")
        self.batch_size = batch_size or inference_batch_size(self.run)
        self._latest: dict[str, int] = {}
        self._indexes: dict[tuple[str, str], _KeyIndex] = {}

    # -- what can be asked ------------------------------------------------------------------

    def tasks(self) -> list[SampledTask]:
        """The run's tasks that have a prediction head."""
        return [t for t in self.sampler.tasks if t.view.stype in self.run.model.loss_of]

    def task(self, name: str) -> SampledTask:
        """A task of the run by ``"task"`` or ``"db/task"``."""
        matches = [t for t in self.sampler.tasks if name in (t.view.name, t.key)]
        if not matches:
            known = ", ".join(t.key for t in self.sampler.tasks)
            raise TributaryError(f"the run has no task {name!r} (tasks: {known})")
        t = matches[0]
        if t.view.stype not in self.run.model.loss_of:
            raise TributaryError(f"task {t.key!r} has no prediction head (a {t.view.stype} target)")
        return t

    def describe(self, t: SampledTask) -> dict[str, Any]:
        """What ``GET /v1/tasks`` lists of a task."""
        store = t.graph.store
        meta = store.tasks[t.name].meta if t.name in store.tasks else {}
        table = t.graph.table_names[t.view.anchor_table]
        return {"task": t.key, "database": t.database, "name": t.name, "anchor_table": table,
                "key_column": store.tables[table].meta.get("primary_key"),
                "target_stype": t.view.stype, "target_column": meta.get("target_column"),
                "horizon_us": t.view.horizon_us, "seeds": len(t.view),
                "latest_time": _format_us(self.latest_time(t))}

    def latest_time(self, t: SampledTask) -> int:
        """The latest row time of the task's database (epoch µs), the default ``at``; the
        "no cut-off" time for a database without times."""
        db = t.database
        if db not in self._latest:
            latest = NO_TIME
            for table in t.graph.store.tables.values():
                times = table.time
                if times is not None and len(times):
                    latest = max(latest, int(np.max(times)))
            self._latest[db] = NO_CUTOFF if latest == NO_TIME else latest
        return self._latest[db]

    # -- entities -----------------------------------------------------------------------------

    def key_column(self, t: SampledTask) -> str:
        table = t.graph.table_names[t.view.anchor_table]
        pk = t.graph.store.tables[table].meta.get("primary_key")
        if not pk:
            raise TributaryError(f"task {t.key!r}: its anchor table {table!r} has no primary key, "
                                 f"so its rows cannot be named by key")
        return pk

    def rows_of_keys(self, t: SampledTask, keys: pa.Array | Sequence[Any],
                     where: str = "keys") -> np.ndarray:
        """Rows of the task's anchor table whose primary key is each of ``keys``; an error
        naming ``where`` and a missing key when one is not there."""
        table = t.graph.table_names[t.view.anchor_table]
        pk = self.key_column(t)
        index = self._key_index(t.database, table)
        values = keys if isinstance(keys, (pa.Array, pa.ChunkedArray)) else _key_array(keys, where)
        values = _as_kind(values, index.kind, where, f"{table}.{pk}")
        if values.null_count:
            raise TributaryError(f"{where}: {values.null_count} key(s) are empty; every key names "
                                 f"a row of {table}.{pk}")
        rows = index.rows(values)
        missing = np.flatnonzero(rows < 0)
        if len(missing):
            raise TributaryError(f"{where}: {len(missing)} of {len(values)} key(s) are not in "
                                 f"{table}.{pk} (e.g. {values[int(missing[0])].as_py()!r})")
        return rows

    def _key_index(self, db: str, table: str) -> _KeyIndex:
        """A lookup from the table's key values to rows, built once per table."""
        if (db, table) not in self._indexes:
            store = self.sampler.graphs.stores[db]
            self._indexes[(db, table)] = _KeyIndex(store.tables[table].keys())
        return self._indexes[(db, table)]

    def rows_where(self, t: SampledTask, where: str, raw: str | Path | None = None) -> np.ndarray:
        """Rows of the task's anchor table that satisfy the SQL condition ``where``, run in
        DuckDB on the database's parquet files (``raw``; default ``data/raw/<database>``)."""
        import pyarrow.dataset as pads

        from tributary_core.sql import (
            QueryTimeout,
            fetch_arrow,
            quote_identifier,
            run_interruptible,
            sandbox_connection,
        )

        table = t.graph.table_names[t.view.anchor_table]
        pk = self.key_column(t)
        folder = Path(raw) if raw is not None else Path("data/raw") / t.database
        path = folder / f"{table}.parquet"
        if not path.is_file():
            raise TributaryError(f"--where reads the database's parquet files: {path} does not "
                                 f"exist (give the folder with --raw)")
        con = sandbox_connection({table: pads.dataset(path)}, threads=1)
        try:
            # parsed as one expression: a second statement or a UNION is a syntax error
            result = run_interruptible(con, lambda: fetch_arrow(
                con.table(table).filter(where).select(quote_identifier(pk))))
        except QueryTimeout as exc:
            raise TributaryError(f"--where: {exc}") from None
        except Exception as exc:  # DuckDB's parser and binder errors: the user's SQL
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if first.startswith("Parser Error"):
                first += " (--where is one condition on the table's columns, not a statement)"
            raise TributaryError(f"--where on {table}: {first}") from None
        finally:
            con.close()
        if result.num_rows == 0:
            raise TributaryError(f"--where: no row of {table} satisfies {where!r}")
        return self.rows_of_keys(t, result.column(0), "--where")

    # -- new questions --------------------------------------------------------------------------

    def ask(self, spec: dict[str, Any], *, name: str = "question", database: str | None = None,
            raw: str | Path | None = None) -> _Asked:
        """A task defined now (``spec``: the fields of a task of metadata.json), materialised on
        the database's parquet files (``raw``; default ``data/raw/<database>``) and answerable
        like the run's own tasks, with no training: the model reads its labelled examples in
        context. ``database``: which of the run's databases (default: its only one)."""
        from tributary_core.preprocess.question import materialize_question

        stores = self.sampler.graphs.stores
        if database is None:
            if len(stores) != 1:
                raise TributaryError(f"the run has {len(stores)} databases; say which one the "
                                     f"question is about ({', '.join(stores)})")
            database = next(iter(stores))
        if database not in stores:
            raise TributaryError(f"the run has no database {database!r} ({', '.join(stores)})")
        store = stores[database]
        folder = Path(raw) if raw is not None else Path("data/raw") / database
        question = materialize_question(store, name, spec, folder)
        stype = question.task.meta["target_stype"]
        if stype not in self.run.model.loss_of:
            raise TributaryError(f"question {name!r}: the model has no head for a {stype} target "
                                 f"(heads: {', '.join(sorted(self.run.model.loss_of))})")
        graph = self.sampler.graphs[database]
        view = TaskView(graph, name, question.task)
        col, voc = self.run.embeddings[database]
        extra_col = torch.from_numpy(question.column_vectors).to(col.device, col.dtype)
        extra_voc = torch.from_numpy(question.vocab_vectors).to(voc.device, voc.dtype)
        embeddings = {database: (torch.cat([col, extra_col]), torch.cat([voc, extra_voc]))}
        return _Asked(database=database, name=name, graph=graph, view=view,
                      stats=question.task.meta.get("stats") or {}, embeddings=embeddings,
                      vocab_values=list(store.vocab_values) + question.vocab_values,
                      warnings=question.warnings)

    def evaluate_asked(self, t: _Asked, *, split: str = "test", max_seeds: int | None = 2000,
                       bootstrap: int = 200, ensemble: int = 1) -> dict[str, Any]:
        """A question's metrics on its own seeds of ``split`` (the run's split of them), beside
        the majority/mean of its training split's labels, as :func:`evaluate` reports a task;
        labelled examples come from its training split, as in evaluation. ``ensemble=K``
        merges K contexts per seed with the loss head's ``combine``, as :func:`evaluate` does."""
        from tributary_core.sampler.splits import split_index
        from tributary_core.train.evaluate import (
            _combined,
            _labels,
            check_ensemble,
            evenly_spaced,
            score,
        )

        ensemble = check_ensemble(ensemble)
        view = t.view
        table = t.graph.table_names[view.anchor_table]
        assigned = self.sampler.splitter.assign(table, view.anchor_rows, view.observation_time)
        seeds = evenly_spaced(np.flatnonzero(assigned == split_index(split)), max_seeds)
        head = self.registry.loss_head(self.run.model.loss_of[view.stype])
        preds, targets = [], []
        for start in range(0, len(seeds), self.batch_size):
            chunk = seeds[start : start + self.batch_size]
            with torch.inference_mode():
                outs = [batch_loss(self.run.model, self._batch(t, view, chunk, k), t.embeddings,
                                   self.run.device, 0.0, targets_only=True)[1]
                        for k in range(ensemble)]
            out = outs[0]
            prediction = out["prediction"]
            if ensemble > 1:
                prediction = _combined(head, [o["prediction"] for o in outs])
            keep = out["labelled"]
            preds.append(prediction[keep].float().cpu())
            targets.append(out["target"][keep].cpu())
        entry: dict[str, Any] = {"split": split, "seeds": int(len(seeds)), "metrics": {},
                                 "baseline": {}, "ci": {}, "baseline_ci": {}, "ci_level": 0.95,
                                 "bootstrap": int(bootstrap), "ensemble": ensemble,
                                 "zero_shot": True}
        if preds and sum(len(p) for p in preds):
            target = torch.cat(targets)
            entry["labelled"] = int(len(target))
            entry.update(score(head, torch.cat(preds), target, t.stats,
                               _labels(head, t, np.flatnonzero(assigned == 0)), bootstrap))
        return entry

    # -- predicting ---------------------------------------------------------------------------

    def entity_view(self, t: SampledTask, rows: np.ndarray, at: int) -> TaskView:
        """The task asked about anchor rows ``rows`` at time ``at`` (epoch µs). An entity is
        asked about only from its own time on: a row from after ``at`` would show the model
        its own future (an error naming the first such key)."""
        self.check_times(t, rows, at)
        return t.view.for_entities(rows, np.full(len(rows), at, dtype=np.int64))

    def check_times(self, t: SampledTask, rows: np.ndarray, at: int) -> None:
        """An error naming the first of anchor rows ``rows`` whose time is after ``at``."""
        table = t.graph.table_names[t.view.anchor_table]
        times = t.graph.store.tables[table].time
        if times is not None and len(rows):
            row_times = np.asarray(times)[rows]
            late = np.flatnonzero((row_times != NO_TIME) & (row_times > at))
            if len(late):
                first = int(rows[late[0]])
                stored = t.graph.store.tables[table]
                name = stored.keys()[first].as_py() if stored.has_keys else f"row {first}"
                raise TributaryError(
                    f"{len(late)} of the {table} rows asked about are from after the observation "
                    f"time {_format_us(at)} (e.g. {name!r}, from {_format_us(int(row_times[late[0]]))}): "
                    f"an entity can be predicted only from its own time on")

    def _batch(self, t: SampledTask, view: TaskView, idx: np.ndarray, draw: int) -> Batch:
        s = self.sampler
        if view is t.view:
            return s.batch(t, idx, draw=draw, mask=False)
        return sample_batch(t.graph, view, idx, context_len=s.context_len, width=s.width,
                            sampler_seed=s.seed, draw=draw, n_threads=s.n_threads,
                            examples=view.examples(s.splitter) if s.icl_share > 0 else None,
                            icl_share=s.icl_share)

    def predict_view(self, t: SampledTask, view: TaskView, idx: np.ndarray, *, ensemble: int = 1,
                     top_k: int = 3, explain: int = 0) -> dict[str, Any]:
        """Predictions for seeds ``idx`` of ``view``: the columns of the answer but the key
        and seed ones, as Arrow arrays."""
        from tributary_core.train.evaluate import _combined, check_ensemble

        ensemble = check_ensemble(ensemble)
        top_k = _check_count(top_k, "top_k", 0)
        explain = _check_count(explain, "explain", 0)
        run = self.run
        head = self.registry.loss_head(run.model.loss_of[view.stype])
        null_head = self.registry.loss_head("null")
        decoded, p_null, scores, explained = [], [], [], []
        for start in range(0, len(idx), self.batch_size):
            chunk = idx[start : start + self.batch_size]
            batches = [self._batch(t, view, chunk, k) for k in range(ensemble)]
            embeddings = getattr(t, "embeddings", None) or run.embeddings
            with torch.inference_mode():
                outs = [batch_loss(run.model, b, embeddings, run.device, 0.0,
                                   targets_only=True)[1] for b in batches]
            prediction, null_logit = outs[0]["prediction"], outs[0]["null_logit"]
            if ensemble > 1:
                prediction = _combined(head, [o["prediction"] for o in outs])
                null_logit = _combined(null_head, [o["null_logit"] for o in outs])
            decoded.append(head.decode(prediction))
            p_null.append(torch.sigmoid(null_logit.float()).cpu().numpy())
            if prediction.dim() == 2:
                scores.append(prediction.float().cpu())
            if explain:
                explained.extend(self._explain(t, view, batches[0], explain))
        values = np.concatenate(decoded) if decoded else np.zeros(0)
        candidate_values = None
        if view.candidates is not None:
            names = getattr(t, "vocab_values", None) or t.graph.store.vocab_values
            candidate_values = [names[int(c)] for c in view.candidates]
        prediction = head.to_user_units(values, self.registry.semantic_type(view.stype), t.stats,
                                        candidate_values)
        if len(prediction) != len(idx):
            raise TributaryError(f"loss head {head.name!r} gave {len(prediction)} predictions for "
                                 f"{len(idx)} seeds in to_user_units()")
        columns: dict[str, Any] = {"prediction": prediction}
        if scores and candidate_values is not None:
            probs = torch.softmax(torch.cat(scores), -1).numpy()  # (N, K)
            pick = np.asarray(values, dtype=np.int64)
            columns["probability"] = pa.array(probs[np.arange(len(pick)), pick].astype(np.float64))
            if top_k:
                columns["top_k"] = _top_k(probs, candidate_values, top_k)
        columns["p_null"] = pa.array(np.concatenate(p_null) if p_null else np.zeros(0, np.float32))
        if explain:
            columns["explanation"] = pa.array(explained, type=_EXPLANATION)
        return columns

    def answer(self, task: str | _Asked, *, seeds: Sequence[int] | None = None,
               keys: pa.Array | Sequence[Any] | None = None, where: str | None = None,
               at: int | None = None, raw: str | Path | None = None, ensemble: int = 1,
               top_k: int = 3, explain: int = 0, keys_from: str = "keys") -> pa.Table:
        """:func:`predict`'s table (see there); ``task`` may be a question (:meth:`ask`)."""
        t = task if isinstance(task, _Asked) else self.task(task)
        chosen = sum(x is not None for x in (seeds, keys, where))
        if chosen > 1:
            raise TributaryError("give at most one of seeds (--rows), keys (--keys) and where "
                                 "(--where)")
        if at is not None and seeds is not None:
            raise TributaryError("--at applies to --keys and --where: a task's own seeds keep "
                                 "their observation times")
        by_entity = keys is not None or where is not None or at is not None
        if not by_entity:
            view = t.view
            idx = np.arange(len(view)) if seeds is None else np.asarray(seeds, dtype=np.int64)
            if len(idx) and (idx.min() < 0 or idx.max() >= len(view)):
                raise TributaryError(f"--rows: task {t.key!r} has seeds 0 to {len(view) - 1}")
        else:
            if keys is not None:
                rows = self.rows_of_keys(t, keys, keys_from)
            elif where is not None:
                rows = self.rows_where(t, where, raw)
            when = self.latest_time(t) if at is None else int(at)
            if keys is None and where is None:  # every row of the anchor table there is by then
                table = t.graph.store.tables[t.graph.table_names[t.view.anchor_table]]
                rows = np.arange(table.rows, dtype=np.int64)
                if table.time is not None:
                    times = np.asarray(table.time)
                    rows = rows[(times == NO_TIME) | (times <= when)]
            return self.answer_rows(t, rows, when, ensemble=ensemble, top_k=top_k, explain=explain)
        return self._table(t, view, idx, False, ensemble, top_k, explain)

    def answer_rows(self, t: SampledTask, rows: np.ndarray, at: int, *, ensemble: int = 1,
                    top_k: int = 3, explain: int = 0) -> pa.Table:
        """:meth:`answer` for anchor rows ``rows`` observed at ``at`` (epoch µs)."""
        view = self.entity_view(t, rows, at)
        return self._table(t, view, np.arange(len(rows), dtype=np.int64), True, ensemble, top_k,
                           explain)

    def _table(self, t: SampledTask, view: TaskView, idx: np.ndarray, by_entity: bool,
               ensemble: int, top_k: int, explain: int) -> pa.Table:
        columns = self.predict_view(t, view, idx, ensemble=ensemble, top_k=top_k, explain=explain)
        out: dict[str, Any] = {}
        if not by_entity:
            out["seed"] = pa.array(idx)
        table = t.graph.table_names[t.view.anchor_table]
        stored = t.graph.store.tables[table]
        anchors = view.anchor_rows[idx]
        if stored.has_keys:
            name = stored.meta["primary_key"]
            out[name if name not in _RESERVED else f"{name}_key"] = stored.keys().take(anchors)
        else:
            out["anchor_row"] = pa.array(anchors)
        out["observation_time"] = _times(view.observation_time[idx])
        out.update(columns)
        result = pa.table(out)
        if explain:
            result = result.replace_schema_metadata({"tributary.explanation": EXPLAIN_METHOD})
        return result

    # -- explanations -------------------------------------------------------------------------

    def _explain(self, t: SampledTask, view: TaskView, batch: Batch, k: int) -> list[list[dict]]:
        """The ``k`` cells of each context with the largest gradient x input attribution."""
        model, run = self.run.model, self.run
        tensors = batch.to_torch(run.device)
        tensors["stype"] = _recode(model, tensors["stype"])
        col, voc = (getattr(t, "embeddings", None) or run.embeddings)[batch.database]
        with torch.enable_grad():
            x = model.encode(tensors, col, voc).detach().requires_grad_(True)
            out = model(tensors, col, voc, cells=x)
            pred = out["prediction"].float()
            if pred.dim() == 2:
                pred = pred.gather(1, pred.argmax(1, keepdim=True)).squeeze(1)
            elif pred.dim() != 1:
                pred = pred.reshape(len(pred), -1).sum(1)
            (grad,) = torch.autograd.grad(pred.sum(), x)
        attr = (grad * x).sum(-1).detach().cpu().numpy()  # (B, S)
        eligible = ~batch.is_padding & ~batch.is_target
        attr = np.where(eligible, attr, 0.0)
        store = t.graph.store
        graph = t.graph
        decoded: dict[tuple[str, int], dict[str, Any]] = {}
        answers = []
        for b in range(len(batch)):
            order = np.argsort(-np.abs(attr[b]), kind="stable")[:k]
            cells = []
            for pos in order:
                if not eligible[b, pos] or attr[b, pos] == 0.0:
                    continue
                local = int(batch.row[b, pos])
                table = graph.table_names[int(batch.row_table[b, local])]
                r = int(batch.row_index[b, local])
                if batch.is_label[b, pos]:
                    column = f"{view.name} (label)"
                    value = self._label_value(t, view, batch, b, pos)
                else:
                    column = graph.col_name[int(batch.cell_col[b, pos])]
                    if (table, r) not in decoded:
                        decoded[(table, r)] = store.decode_row(table, r)
                    value = decoded[(table, r)].get(column)
                cells.append({"table": table, "key": _row_key(store, table, r), "column": column,
                              "value": None if value is None else str(value),
                              "attribution": float(attr[b, pos])})
            answers.append(cells)
        return answers

    def _label_value(self, t: SampledTask, view: TaskView, batch: Batch, b: int, pos: int) -> Any:
        from tributary_core.sampler.kernel import SLOT_BOOLEAN, SLOT_NUMBER, SLOT_TIMESTAMP, SLOT_VOCAB

        stype = self.registry.semantic_type(view.stype)
        if view.slot == SLOT_BOOLEAN:
            return bool(batch.boolean[b, pos])
        if view.slot == SLOT_VOCAB:
            names = getattr(t, "vocab_values", None) or t.graph.store.vocab_values
            return names[int(batch.vocab[b, pos])]
        if view.slot == SLOT_NUMBER:
            return stype.decode_prediction(np.array([batch.number[b, pos]]), t.stats)[0].as_py()
        if view.slot == SLOT_TIMESTAMP:
            return stype.decode_prediction(np.array([batch.timestamp[b, pos, -1]]), t.stats)[0].as_py()
        return None


@attrs.define
class _Asked:
    """A question (:meth:`Predictor.ask`) in the shape of the run's tasks."""

    database: str
    name: str
    graph: Any
    view: TaskView
    stats: dict[str, Any]
    embeddings: dict[str, tuple[torch.Tensor, torch.Tensor]]
    vocab_values: list[str]
    warnings: list[str]

    @property
    def key(self) -> str:
        return f"{self.database}/{self.name}"


class _KeyIndex:
    """Key values -> rows of one table: a sorted array for integer keys (binary search), a
    dictionary for string keys."""

    def __init__(self, keys: pa.Array) -> None:
        self.kind = key_kind(keys.type)
        if self.kind == "integer":
            values = np.asarray(keys.to_numpy(zero_copy_only=False), dtype=np.int64)
            self.order = np.argsort(values, kind="stable")
            self.sorted = values[self.order]
            self.lookup = None
        else:
            self.lookup = {v: i for i, v in enumerate(keys.to_pylist())}

    def rows(self, values: pa.Array) -> np.ndarray:
        """The row of each of ``values`` (-1 where none)."""
        if self.lookup is not None:
            return np.array([self.lookup.get(v, -1) for v in values.to_pylist()], dtype=np.int64)
        want = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int64)
        at = np.searchsorted(self.sorted, want)
        at_ok = np.minimum(at, max(len(self.sorted) - 1, 0))
        found = (at < len(self.sorted)) & (self.sorted[at_ok] == want) if len(self.sorted) else \
            np.zeros(len(want), dtype=np.bool_)
        return np.where(found, self.order[at_ok] if len(self.sorted) else -1, -1).astype(np.int64)


_EXPLANATION = pa.list_(pa.struct([("table", pa.string()), ("key", pa.string()),
                                   ("column", pa.string()), ("value", pa.string()),
                                   ("attribution", pa.float64())]))


def _row_key(store: Any, table: str, row: int) -> str:
    t = store.tables[table]
    if t.has_keys:
        return str(t.keys()[row].as_py())
    return f"row {row}"


def _top_k(probs: np.ndarray, names: Sequence[str], k: int) -> pa.Array:
    k = min(k, probs.shape[1])
    best = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return pa.array([[{"value": names[int(j)], "probability": float(p[j])} for j in row]
                     for p, row in zip(probs, best, strict=True)],
                    type=pa.list_(pa.struct([("value", pa.string()),
                                             ("probability", pa.float64())])))


def _times(values: np.ndarray) -> pa.Array:
    values = np.asarray(values, dtype=np.int64)
    missing = (values == NO_CUTOFF) | (values == NO_TIME)
    return pa.array(np.where(missing, 0, values), type=pa.timestamp("us", tz="UTC"),
                    mask=missing)


def _format_us(us: int) -> str | None:
    if us in (NO_CUTOFF, NO_TIME):
        return None
    return _times(np.array([us]))[0].as_py().isoformat()


def _key_array(keys: Sequence[Any], where: str) -> pa.Array:
    try:
        return pa.array(list(keys))
    except OverflowError:
        raise TributaryError(f"{where}: a key is too large a number to be a key (keys are 64-bit "
                             f"whole numbers or strings)") from None
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise TributaryError(f"{where}: keys must all be whole numbers or all strings "
                             f"({str(exc).splitlines()[0]})") from None


def _as_kind(values: pa.Array | pa.ChunkedArray, kind: str, where: str, column: str) -> pa.Array:
    """``values`` as keys of ``kind`` (the stored key's): numbers written as text (a CSV) are
    read as numbers for an integer key, and numbers as text for a string key."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    have = key_kind(values.type)
    if have == kind:
        return as_key(values)
    if pa.types.is_null(values.type):
        return pa.nulls(len(values), pa.int64() if kind == "integer" else pa.string())
    try:
        if kind == "integer" and not pa.types.is_boolean(values.type):
            return values.cast(pa.int64())
        if kind == "string":
            return values.cast(pa.string())
        raise pa.ArrowInvalid("booleans are not keys")
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        bad = None
        if have == "string":  # numbers written as text (a CSV): name one that is not
            bad = next((v for v in values.to_pylist() if v is not None and not _is_int64(v)), None)
        if bad is not None:
            raise TributaryError(f"{where}: keys like {bad!r} cannot name rows of {column}, whose "
                                 f"keys are whole numbers") from None
        raise TributaryError(f"{where}: keys of type {values.type} cannot name rows of {column}, "
                             f"whose keys are {'whole numbers' if kind == 'integer' else 'strings'}"
                             ) from None


def _is_int64(text: str) -> bool:
    try:
        return -(2**63) <= int(text) < 2**63
    except ValueError:
        return False


def read_keys(path: str | Path, column: str) -> pa.Array:
    """The keys in a parquet or CSV file: its column ``column``, or its only column."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise TributaryError(f"--keys: {path} does not exist")
    try:
        if path.suffix.lower() == ".parquet":
            table = pq.read_table(path)
        else:
            # keys stay text here; they are cast to the stored key's kind on lookup
            with open(path, newline="") as f:
                header = next(csv.reader(f), None)
            if not header:
                raise TributaryError(f"--keys: {path} is empty (a CSV needs a header line)")
            options = pacsv.ConvertOptions(column_types={h: pa.string() for h in header})
            table = pacsv.read_csv(path, convert_options=options)
    except TributaryError:
        raise
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError, csv.Error) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TributaryError(f"--keys: {path} is not a readable parquet or CSV file ({text})") from None
    if column in table.column_names:
        values = table.column(column)
    elif table.num_columns == 1:
        values = table.column(0)
    else:
        raise TributaryError(f"--keys: {path} has no column {column!r} (columns: "
                             f"{', '.join(table.column_names)}); name it so, or keep one column")
    if len(values) == 0:
        raise TributaryError(f"--keys: {path} holds no keys")
    return values.combine_chunks()


def predict(run: str | Path | Run | Predictor, task: str, *, seeds: Sequence[int] | None = None,
            keys: pa.Array | Sequence[Any] | None = None, where: str | None = None,
            at: int | None = None, raw: str | Path | None = None,
            batch_size: int | None = None, ensemble: int = 1, top_k: int = 3,
            explain: int = 0) -> pa.Table:
    """Predictions for ``task`` (``"task"`` or ``"db/task"``), one row per seed.

    **Whom.** By default every seed of the task file (``seeds``: some of them, by index); the
    table starts with ``seed``. Or any entities of the task's anchor table: ``keys`` (values
    of its primary key) or ``where`` (a SQL condition on the anchor table, run in DuckDB on the
    parquet files in ``raw``, default ``data/raw/<database>``), or with ``at`` alone every row
    of it there is by then; all observed at ``at`` (epoch µs; default: the latest time in the
    database). Such seeds need not be ones the task's SQL produced: their contexts see nothing after ``at``,
    and their labelled examples are the task's own labels known by then.

    **Columns.** The anchor's key under the key column's own name (``anchor_row`` for a store
    made before keys were stored), ``observation_time`` (UTC; null: no cut-off),
    ``prediction`` in the user's units (the loss head's :meth:`~LossHead.to_user_units`: the
    probability of true, the class, the value or time), for a categorical target also
    ``probability`` (the predicted class's) and ``top_k`` (the ``top_k`` most probable
    classes with their probabilities), and ``p_null`` (the probability of no label).

    ``ensemble=K`` merges K contexts per seed (draws 0 to K-1) with the loss head's
    ``combine``. ``explain=k`` adds ``explanation``: per seed the k cells (table, row key,
    column, value, attribution) that moved its prediction most, by :data:`EXPLAIN_METHOD`."""
    predictor = run if isinstance(run, Predictor) else Predictor(run, batch_size=batch_size)
    return predictor.answer(task, seeds=seeds, keys=keys, where=where, at=at, raw=raw,
                            ensemble=ensemble, top_k=top_k, explain=explain)
