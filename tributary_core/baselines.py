"""The tabular baseline: LightGBM on the anchor row's features plus those of the rows it
references one hop away (the RelBench-style baseline), on the same seeds, splits and
observation-time cut-offs as Tributary.

Features come from the store, so they are exactly what a context can show: the anchor row's
columns minus the task's hidden columns and the target itself; each parent's columns when the
parent is not after the observation time (else missing). As in the sampler, a hidden
foreign-key column hides its edge: the parent it references gives no features; a parent in the
anchor table shows its hidden columns only when its time is known and before the observation
time; and an anchor that references itself gives no parent features (a row appears once in a
context). Numbers are their z-scores, times their
:data:`~tributary_core.semantic_type.TIMESTAMP_WIDTH` features, booleans 0/1, categories their
vocabulary ids as LightGBM categorical features, identifiers present/absent; text is left out.

What is learnt and how it is scored come from the task's loss head (its target type's default):
LightGBM fits :attr:`LossHead.tabular_objective` to :meth:`LossHead.tabular_label` of the head's
own targets, and :meth:`LossHead.compute_metrics` scores :meth:`LossHead.tabular_prediction` of
LightGBM's raw scores, so the metrics are the ones ``tributary run evaluate`` reports. A task
whose head declares no tabular objective, or that has no labelled seed in a split, gets an entry
with no metrics and a ``skipped`` note saying why.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from tributary_core.errors import TributaryError
from tributary_core.registry import get_registry
from tributary_core.sampler import HashSplit, Sampler, TemporalSplit
from tributary_core.sampler.kernel import NO_TIME
from tributary_core.store import Store
from tributary_core.timefeatures import features

__all__ = ["lightgbm_baseline", "task_features"]


def task_features(store: Store, task: Any, seeds: np.ndarray) -> tuple[np.ndarray, list[str], list[int]]:
    """``(X [n, f] float64 with NaN for missing, feature names, categorical feature indices)``."""
    registry = get_registry()
    view = task.view
    meta = store.tasks[view.name].meta if view.name in store.tasks else {}
    hidden = set(meta.get("hidden_columns") or ())
    anchor_table = task.graph.table_names[view.anchor_table]
    rows = view.anchor_rows[seeds]
    obs = view.observation_time[seeds]
    columns: list[np.ndarray] = []
    names: list[str] = []
    categorical: list[int] = []

    def add(table: str, row_idx: np.ndarray, present: np.ndarray, prefix: str, skip: set[str]) -> None:
        t = store.tables[table]
        safe = np.where(present, row_idx, 0)
        for cname, cmeta in t.columns.items():
            stype = registry.semantic_type(cmeta["stype"])
            if stype.is_ignored or cname in skip or not stype.tabular_feature:
                continue
            valid = np.asarray(t.valid(cname))[safe] & present
            slot = stype.batch_slot
            if slot == "none":
                columns.append(np.where(present, valid.astype(float), np.nan))
                names.append(f"{prefix}{cname}:present")
            elif slot == "timestamp":
                values = features(np.asarray(t.field(cname, "value"))[safe], valid,
                                  t.columns[cname].get("stats") or {})
                for j in range(values.shape[1]):
                    columns.append(np.where(valid, values[:, j], np.nan))
                    names.append(f"{prefix}{cname}:{j}")
            else:
                field = "index" if slot == "vocab" else "value"
                whole = np.asarray(t.field(cname, field))
                values = whole[safe].astype(np.float64)
                if slot == "vocab":  # a column's vocabulary ids, renumbered from 0
                    ok = np.asarray(t.valid(cname))
                    values -= float(whole[ok].min()) if ok.any() else 0.0
                    categorical.append(len(columns))
                columns.append(np.where(valid, values, np.nan))
                names.append(f"{prefix}{cname}")

    skip = {c for c in store.tables[anchor_table].columns if f"{anchor_table}.{c}" in hidden}
    if meta.get("target_is_anchor_column") or view.name.endswith(":mask"):
        skip.add(meta.get("target_column") or view.name.split(".", 1)[1][: -len(":mask")])
    add(anchor_table, rows, np.ones(len(rows), bool), "", skip)
    hidden_here = {c for c in store.tables[anchor_table].columns if f"{anchor_table}.{c}" in hidden}
    for fk in store.foreign_keys:
        if fk.child_table != anchor_table or fk.column in hidden_here:
            continue  # the anchor's hidden key cell: the edge is hidden too
        parent = np.asarray(fk.parent)[rows].astype(np.int64)
        present = parent >= 0
        ptime = store.tables[fk.parent_table].time
        t = None
        if ptime is not None:
            t = np.asarray(ptime)[np.where(present, parent, 0)]
            present &= (t == NO_TIME) | (t <= obs)
        if fk.parent_table != anchor_table:
            add(fk.parent_table, parent, present, f"{fk.column}->{fk.parent_table}.", set())
            continue
        # a parent in the anchor table: never the anchor itself, and its hidden cells show
        # only where the sampler shows them (a known time before the observation time)
        present &= parent != rows
        shows = present & (t != NO_TIME) & (t < obs) if t is not None else np.zeros_like(present)
        prefix = f"{fk.column}->{fk.parent_table}."
        add(fk.parent_table, parent, present, prefix, hidden_here)
        if hidden_here:
            add(fk.parent_table, parent, shows, prefix, set(store.tables[anchor_table].columns)
                - hidden_here)
    X = np.column_stack(columns) if columns else np.zeros((len(rows), 0))
    names = [re.sub(r"[^0-9A-Za-z_]", "_", n) for n in names]  # LightGBM refuses JSON specials
    return X, names, categorical


def lightgbm_baseline(stores: Sequence[Store], *, tasks: Sequence[str] | None = None,
                      split: str = "test", splitter: HashSplit | TemporalSplit | None = None,
                      max_train: int = 200_000, seed: int = 0, rounds: int = 500,
                      max_seeds: int | None = None) -> dict[str, Any]:
    """Per task: LightGBM trained on the training split (early-stopped on validation), scored on
    ``split`` with the task's loss-head metrics. ``max_seeds`` scores the same evenly spaced
    subset of ``split`` that ``evaluate(max_seeds=...)`` scores the model on. A task that cannot
    be fitted has ``"metrics": {}`` and ``"skipped"``: the reason."""
    try:
        import lightgbm as lgb
    except ImportError:
        raise TributaryError("the LightGBM baseline needs lightgbm: "
                             "pip install 'tributary[baselines]'") from None
    import torch

    from tributary_core.train.evaluate import evenly_spaced, target_tensors

    registry = get_registry()
    splits = {name: Sampler(stores, tasks=tasks, split=name, splitter=splitter, seed=seed)
              for name in ("train", "val", split)}
    results: dict[str, Any] = {}
    for task in splits["train"].tasks:
        stype = registry.semantic_type(task.view.stype)
        if not stype.target_losses:
            continue
        head = registry.loss_head(stype.target_losses[0])
        objective = head.tabular_objective

        def skipped(reason: str, head=head) -> dict[str, Any]:
            return {"split": split, "labelled": 0, "loss_head": head.name, "metrics": {},
                    "skipped": reason}

        if objective is None:
            results[task.key] = skipped(f"loss head {head.name!r} declares no tabular objective "
                                        f"(tabular_objective is None)")
            continue
        parts = {}
        for name, sampler in splits.items():
            t = next(x for x in sampler.tasks if x.key == task.key)
            seeds = t.seeds
            if name == "train" and len(seeds) > max_train:
                seeds = np.random.default_rng(seed).choice(seeds, max_train, replace=False)
            elif name == split:
                seeds = evenly_spaced(seeds, max_seeds)
            tensors = target_tensors(t.view, seeds)
            target = head.target(tensors)
            label = np.asarray(head.tabular_label(target), dtype=np.float64)
            if label.shape != (len(seeds),):
                raise TributaryError(f"loss head {head.name!r} gave tabular labels of shape "
                                     f"{label.shape} for {len(seeds)} seeds in tabular_label()")
            keep = ~tensors["target_is_null"].numpy() & ~np.isnan(label)
            X, names, cats = task_features(t.graph.store, t, seeds)
            parts[name] = (X[keep], label[keep], target[torch.from_numpy(keep)])
        empty = [name for name, part in parts.items() if len(part[0]) == 0]
        if empty:
            results[task.key] = skipped(f"no labelled seed in the {' and '.join(empty)} split")
            continue
        params: dict[str, Any] = {"objective": objective, "learning_rate": 0.05, "num_leaves": 31,
                                  "verbose": -1, "seed": seed, "num_threads": 0,
                                  "min_data_in_leaf": 20}
        if objective.startswith(("multiclass", "softmax", "multiclassova", "ova", "ovr")):
            # classes are the head's labels 0..K-1: the target column's candidates when it has
            # them (a class unseen in training still gets its column), else the labels seen
            cands = task.view.candidates
            seen = int(max(p[1].max() for p in parts.values())) + 1
            params["num_class"] = max(len(cands) if cands is not None else 0, seen)
        train_set = lgb.Dataset(parts["train"][0], parts["train"][1], feature_name=names,
                                categorical_feature=cats, free_raw_data=False,
                                params={"verbose": -1})
        val_set = lgb.Dataset(parts["val"][0], parts["val"][1], reference=train_set,
                              params={"verbose": -1})
        model = lgb.train(params, train_set, num_boost_round=rounds, valid_sets=[val_set],
                          callbacks=[lgb.early_stopping(30, verbose=False)])
        X_eval, label_eval, target = parts[split]
        pred = head.tabular_prediction(model.predict(X_eval, raw_score=True), target)
        results[task.key] = {"split": split, "labelled": int(len(label_eval)),
                             "loss_head": head.name, "objective": objective,
                             "features": len(names), "rounds": int(model.best_iteration or rounds),
                             "metrics": head.compute_metrics(pred, target, task.stats)}
    return results
