"""The context sampler: properties on random small databases, agreement with the plain-Python
reference on the same draws, splits, shards, the loader and the debug view."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from conftest import write_tables
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tributary_core import get_registry
from tributary_core.cli import cli
from tributary_core.errors import TributaryError
from tributary_core.preprocess import preprocess
from tributary_core.sampler import (
    HashSplit,
    Sampler,
    SamplerGraph,
    TemporalSplit,
    context_seeds,
    prefetch,
    sample_batch,
    shard,
)
from tributary_core.sampler.kernel import NO_TIME
from tributary_core.sampler.reference import reference_context
from tributary_core.store import open_store
from tributary_core.timefeatures import features

UTC = dt.timezone.utc
T0 = dt.datetime(2024, 1, 1, tzinfo=UTC)

SHOP_METADATA = {
    "name": "shop",
    "tables": {
        "users": {"primary_key": "user_id", "columns": {
            "user_id": {"stype": "identifier"}, "age": {"stype": "numerical"},
            "kind": {"stype": "categorical"}}},
        "orders": {"primary_key": "order_id", "temporal_column": "ts", "columns": {
            "order_id": {"stype": "identifier"},
            "user_id": {"stype": "identifier", "foreign_key": "users.user_id"},
            "prev_id": {"stype": "identifier", "foreign_key": "orders.order_id"},
            "ts": {"stype": "timestamp"}, "amount": {"stype": "numerical"},
            "paid": {"stype": "boolean"}, "note": {"stype": "text"}}},
        "items": {"primary_key": "item_id", "columns": {
            "item_id": {"stype": "identifier"},
            "order_id": {"stype": "identifier", "foreign_key": "orders.order_id"},
            "price": {"stype": "numerical"}}},
    },
    "tasks": {
        "big_order": {
            "query": "SELECT order_id, ts AS at, amount > 50 AS big FROM orders",
            "anchor_table": "orders", "anchor_key": "order_id", "target_column": "big",
            "target_stype": "boolean", "observation_time_column": "at",
            "hidden_columns": ["orders.amount"]},
        "user_kind": {
            "query": "SELECT user_id, kind FROM users",
            "anchor_table": "users", "anchor_key": "user_id", "target_column": "kind",
            "target_stype": "categorical"},
    },
}


#: The shop with tasks that hide foreign-key columns: an order task observed after the order
#: (so earlier orders show their keys and later ones do not) and a task on the untimed items.
HIDDEN_FK_METADATA = {**SHOP_METADATA, "tasks": {
    **SHOP_METADATA["tasks"],
    "big_order": {**SHOP_METADATA["tasks"]["big_order"], "horizon": "36 hours"},
    "paid_later": {
        "query": "SELECT order_id, ts + INTERVAL 2 DAY AS at, paid FROM orders",
        "anchor_table": "orders", "anchor_key": "order_id", "target_column": "paid",
        "target_stype": "boolean", "observation_time_column": "at", "horizon": "1 day",
        "hidden_columns": ["orders.user_id", "orders.prev_id", "orders.paid"]},
    "item_price": {
        "query": "SELECT item_id, price FROM items", "anchor_table": "items",
        "anchor_key": "item_id", "target_column": "price", "target_stype": "numerical",
        "hidden_columns": ["items.order_id"]},
}}


def shop_tables(rng: np.random.Generator, n_users: int, n_orders: int, n_items: int) -> dict:
    users = pa.table({
        "user_id": pa.array(np.arange(n_users), pa.int64()),
        "age": rng.integers(18, 80, n_users).astype(float),
        "kind": pa.array([["a", "b", "c"][k] for k in rng.integers(0, 3, n_users)]),
    })
    user_of = rng.integers(-1, n_users + 1, n_orders)  # -1 null, n_users dangling
    prev = [int(p) if p < i else None for i, p in enumerate(rng.integers(0, max(n_orders, 1), n_orders))]
    orders = pa.table({
        "order_id": pa.array(np.arange(n_orders), pa.int64()),
        "user_id": pa.array([None if u < 0 else int(u) for u in user_of], pa.int64()),
        "prev_id": pa.array(prev, pa.int64()),
        "ts": pa.array([T0 + dt.timedelta(hours=int(h)) for h in rng.integers(0, 24 * 30, n_orders)],
                       pa.timestamp("us", tz="UTC")),
        "amount": rng.uniform(0, 100, n_orders),
        "paid": pa.array(rng.integers(0, 2, n_orders).astype(bool)),
        "note": pa.array([f"note {k}" for k in rng.integers(0, 5, n_orders)]),
    })
    items = pa.table({
        "item_id": pa.array(np.arange(n_items), pa.int64()),
        "order_id": pa.array([int(o) if n_orders else None
                              for o in rng.integers(0, max(n_orders, 1), n_items)], pa.int64()),
        "price": rng.uniform(1, 10, n_items),
    })
    return {"users": users, "orders": orders, "items": items}


def make_shop(root: Path, seed: int, n_users: int, n_orders: int, n_items: int, dimension: int = 4,
              metadata: dict = SHOP_METADATA):
    rng = np.random.default_rng(seed)
    raw = write_tables(root / "raw", shop_tables(rng, n_users, n_orders, n_items))
    md = root / "shop.json"
    md.write_text(json.dumps(metadata))
    embedder = get_registry().create_embedder("hashing", dimension=dimension)
    preprocess(md, raw, root / "store", embedder=embedder, force=True)
    return open_store(root / "store")


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    return make_shop(tmp_path_factory.mktemp("shop"), 0, 6, 40, 60)


def kernel_context(graph: SamplerGraph, batch, i: int) -> dict:
    rows = [(graph.table_names[batch.row_table[i, k]], int(batch.row_index[i, k]),
             int(batch.row_hops[i, k])) for k in range(batch.n_rows[i])]
    cells = []
    for k in range(batch.n_cells[i]):
        c = int(batch.cell_col[i, k])
        cells.append((rows[batch.row[i, k]][0], graph.col_name[c] if c < graph.n_cols else None,
                      int(batch.row[i, k]), bool(batch.is_target[i, k]), bool(batch.is_label[i, k])))
    parents = [[int(x) for x in batch.row_parents[i, k] if x >= 0] for k in range(batch.n_rows[i])]
    return {"rows": rows, "cells": cells, "parents": parents}


def check_batch(store, graph, task_name, batch, L, width, walk_cells=None):
    """Every property a batch must have; returns the contexts as plain data. ``walk_cells``:
    the cells the walk may fill before labelled examples take over (default all L)."""
    walk_cells = L if walk_cells is None else walk_cells
    meta = store.tasks[task_name].meta
    tables = store.tables
    B = len(batch)
    assert batch.n_cells.max(initial=0) <= L and batch.n_rows.max(initial=0) <= L
    pad = batch.is_padding
    np.testing.assert_array_equal(pad, np.arange(L)[None, :] >= batch.n_cells[:, None])
    # padding positions carry nothing
    assert (batch.column_id[pad] == -1).all() and (batch.stype[pad] == -1).all()
    assert not batch.number[pad].any() and not batch.timestamp[pad].any()
    assert not batch.vocab[pad].any() and not batch.boolean[pad].any()
    assert not batch.is_null[pad].any() and not batch.is_target[pad].any() and not batch.row[pad].any()
    row_pad = np.arange(L)[None, :] >= batch.n_rows[:, None]
    assert (batch.row_table[row_pad] == -1).all() and (batch.row_parents[row_pad] == -1).all()
    out = []
    for i in range(B):
        ctx = kernel_context(graph, batch, i)
        obs = int(batch.observation_time[i])
        # the target: exactly one cell, first, on the anchor row, value left out
        assert batch.is_target[i].sum() == 1 and batch.is_target[i, 0] and batch.row[i, 0] == 0
        assert batch.number[i, 0] == 0 and batch.vocab[i, 0] == 0 and not batch.is_null[i, 0]
        assert ctx["rows"][0][:2] == (meta["anchor_table"], int(batch.anchor_row[i]))
        if meta["target_is_anchor_column"]:
            assert not [c for c in ctx["cells"][1:] if c[2] == 0 and c[1] == meta["target_column"]]
        # nothing after the observation time, except the anchor row itself
        for t, r, _ in ctx["rows"][1:]:
            time = tables[t].time
            assert time is None or time[r] == NO_TIME or time[r] <= obs, (t, r, obs)
        # hidden columns: never on anchor-table rows at or after the observation time
        def hides(k, ctx=ctx, obs=obs):
            t, r, _ = ctx["rows"][k]
            return t == meta["anchor_table"] and (
                k == 0 or tables[t].time is None or tables[t].time[r] == NO_TIME
                or tables[t].time[r] >= obs)

        for t, c, k, target, label in ctx["cells"]:
            if f"{t}.{c}" in meta["hidden_columns"] and not target and not label:
                assert not hides(k), (t, c, k)
                assert batch.row_hops[i, k] != -1, "a labelled example shows a hidden column"
        # ... nor their edges: a row that hides a key is not linked to the parent through it
        def cut(k, fk, ctx=ctx, hides=hides):
            example = ctx["rows"][k][2] == -1  # a labelled example hides as the anchor does
            return (hides(k) or example) and fk.child_table == ctx["rows"][k][0] and \
                f"{fk.child_table}.{fk.column}" in meta["hidden_columns"]

        index = {x[:2]: k for k, x in enumerate(ctx["rows"])}
        for k, (t, r, _) in enumerate(ctx["rows"]):
            expected = sorted(index[(fk.parent_table, int(fk.parent[r]))]
                              for fk in store.foreign_keys
                              if fk.child_table == t and fk.parent[r] >= 0 and not cut(k, fk)
                              and (fk.parent_table, int(fk.parent[r])) in index)
            assert sorted(ctx["parents"][k]) == expected, (k, ctx["parents"][k], expected)
        # rows appear once; hops: the anchor 0, others >= 1
        assert len(set(x[:2] for x in ctx["rows"])) == len(ctx["rows"])
        assert ctx["rows"][0][2] == 0 and all(h >= 1 or h == -1 for *_, h in ctx["rows"][1:])
        np.testing.assert_array_equal(batch.row_is_example[i, : len(ctx["rows"])],
                                      [h == -1 for *_, h in ctx["rows"]])
        # items can only be reached from their order: at most `width` per order
        items_of: dict[int, int] = {}
        for t, r, h in ctx["rows"][1:]:
            if t == "items" and h != -1:  # (labelled examples are not reached from a row)
                parent = int(store.foreign_keys[_fk(store, "items", "order_id")].parent[r])
                items_of[parent] = items_of.get(parent, 0) + 1
        assert all(v <= width for v in items_of.values())
        # the frontier ran dry before the walk's share of L: every eligible parent of every
        # row the walk reached made it in
        walked = [c for c in ctx["cells"] if not c[4] and ctx["rows"][c[2]][2] != -1]
        n_walk_rows = sum(1 for *_, h in ctx["rows"] if h != -1)
        if len(walked) < walk_cells and n_walk_rows < L and batch.n_rows[i] < L:
            present = {x[:2] for x in ctx["rows"]}
            for k, (t, r, h) in enumerate(ctx["rows"]):
                if h == -1:
                    continue  # labelled examples do not walk on
                for fk in store.foreign_keys:
                    if fk.child_table != t or fk.parent[r] < 0 or cut(k, fk):
                        continue
                    p = int(fk.parent[r])
                    ptime = tables[fk.parent_table].time
                    if ptime is None or ptime[p] <= obs:
                        assert (fk.parent_table, p) in present
        out.append(ctx)
    return out


def _fk(store, child: str, column: str) -> int:
    return next(i for i, fk in enumerate(store.foreign_keys)
                if fk.child_table == child and fk.column == column)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31), n_users=st.integers(1, 6), n_orders=st.integers(1, 30),
       n_items=st.integers(1, 40), L=st.integers(1, 60), width=st.integers(0, 5),
       sampler_seed=st.integers(0, 1000))
def test_random_databases(tmp_path_factory, seed, n_users, n_orders, n_items, L, width, sampler_seed):
    """Every property, and the kernel equal to the reference, on random shops whose tasks hide
    plain columns and foreign-key columns (of a timed and of an untimed anchor table)."""
    store = make_shop(tmp_path_factory.mktemp("rand"), seed, n_users, n_orders, n_items,
                      metadata=HIDDEN_FK_METADATA)
    graph = SamplerGraph.from_store(store)
    for task_name in store.tasks:
        view = graph.task(task_name)
        seeds = np.arange(len(view))
        batch = sample_batch(graph, view, seeds, context_len=L, width=width, sampler_seed=sampler_seed)
        contexts = check_batch(store, graph, task_name, batch, L, width)
        # the same draws through the plain-Python reference
        rng = context_seeds(sampler_seed, task_name, view.anchor_rows[seeds])
        for i, ctx in enumerate(contexts):
            ref = reference_context(store, task_name, int(view.anchor_rows[i]),
                                    int(view.observation_time[i]), int(rng[i]),
                                    context_len=L, width=width)
            assert ref.pop("labels") == [] and ref == ctx
        # deterministic, whatever the thread count
        again = sample_batch(graph, view, seeds, context_len=L, width=width,
                             sampler_seed=sampler_seed, n_threads=2)
        for name in ("column_id", "number", "timestamp", "vocab", "is_null", "row", "row_parents"):
            np.testing.assert_array_equal(getattr(batch, name), getattr(again, name))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31), n_users=st.integers(1, 6), n_orders=st.integers(1, 30),
       n_items=st.integers(1, 40), L=st.integers(1, 60), width=st.integers(0, 5),
       sampler_seed=st.integers(0, 1000), icl_share=st.sampled_from([0.1, 0.4, 0.8]),
       temporal=st.booleans(), split_seed=st.integers(0, 50))
def test_labelled_examples_random_databases(tmp_path_factory, seed, n_users, n_orders, n_items, L,
                                            width, sampler_seed, icl_share, temporal, split_seed):
    """Labelled examples on random shops, against the reference on the same draws, and never a
    leak: every label shown is a training seed's, of another anchor row, known (its observation
    time plus the task's horizon) at the context's observation time, and equal to the task's
    label; example rows hide the task's hidden columns and keys. Both split kinds."""
    from tributary_core.sampler.batch import example_cells
    from tributary_core.sampler.examples import known_times
    from tributary_core.timeconv import parse_duration

    store = make_shop(tmp_path_factory.mktemp("icl"), seed, n_users, n_orders, n_items,
                      metadata=HIDDEN_FK_METADATA)
    graph = SamplerGraph.from_store(store)
    hashed = HashSplit(ratios=(0.5, 0.25, 0.25), seed=split_seed)
    splitter = (TemporalSplit(int((T0 + dt.timedelta(days=12)).timestamp() * 1e6),
                              int((T0 + dt.timedelta(days=20)).timestamp() * 1e6), fallback=hashed)
                if temporal else hashed)
    for task_name in store.tasks:
        view = graph.task(task_name)
        horizon = parse_duration(HIDDEN_FK_METADATA["tasks"][task_name].get("horizon") or "0 days")
        assert view.horizon_us == horizon
        table = graph.table_names[view.anchor_table]
        train = splitter.assign(table, view.anchor_rows, view.observation_time) == 0
        examples = view.examples(splitter)
        seeds = np.arange(len(view))
        batch = sample_batch(graph, view, seeds, context_len=L, width=width, sampler_seed=sampler_seed,
                             examples=examples, icl_share=icl_share)
        walk = L - example_cells(L, icl_share) if len(examples.order) else L
        contexts = check_batch(store, graph, task_name, batch, L, width, walk_cells=walk)
        rng = context_seeds(sampler_seed, task_name, view.anchor_rows[seeds])
        known = known_times(view.observation_time, horizon)
        task = store.tasks[task_name]
        for i, ctx in enumerate(contexts):
            ref = reference_context(store, task_name, int(view.anchor_rows[i]),
                                    int(view.observation_time[i]), int(rng[i]), context_len=L,
                                    width=width, icl_share=icl_share, train=train)
            labels = ref.pop("labels")
            assert ref == ctx
            shown = dict(labels)
            assert len(shown) == len(labels), "a row shows two labels"
            label_pos = np.flatnonzero(batch.is_label[i, : batch.n_cells[i]])
            assert sorted(int(batch.row[i, k]) for k in label_pos) == sorted(shown)
            obs = int(view.observation_time[i])
            for k in label_pos:
                local = int(batch.row[i, k])
                e = shown[local]
                # a training seed, of another anchor row (never this seed or its entity),
                # its label known at the observation time, valid, on its own row
                assert train[e] and task.target_valid[e]
                assert view.anchor_rows[e] != view.anchor_rows[i]
                assert known[e] <= obs
                assert batch.row_table[i, local] == view.anchor_table
                assert batch.row_index[i, local] == view.anchor_rows[e]
                assert batch.column_id[i, k] == batch.column_id[i, 0]  # the target's column
                assert not batch.is_null[i, k] and not batch.is_target[i, k]
                if view.stype == "boolean":
                    assert batch.boolean[i, k] == bool(view.target[e])
                elif view.stype == "numerical":
                    assert batch.number[i, k] == view.target[e]
                elif view.stype == "categorical":
                    assert batch.vocab[i, k] == view.target[e]
        again = sample_batch(graph, view, seeds, context_len=L, width=width,
                             sampler_seed=sampler_seed, examples=examples, icl_share=icl_share,
                             n_threads=2)
        for name in ("column_id", "number", "vocab", "is_label", "row", "row_parents"):
            np.testing.assert_array_equal(getattr(batch, name), getattr(again, name))


def test_values_are_the_stored_encodings(shop):
    graph = SamplerGraph.from_store(shop)
    view = graph.task("big_order")
    batch = sample_batch(graph, view, np.arange(len(view)), context_len=64, width=3)
    orders = shop.tables["orders"]
    for i in range(len(batch)):
        for pos in range(1, batch.n_cells[i]):
            k = batch.row[i, pos]
            t = graph.table_names[batch.row_table[i, k]]
            r = batch.row_index[i, k]
            col = graph.col_name[batch.cell_col[i, pos]]
            valid = shop.tables[t].valid(col)[r]
            assert batch.is_null[i, pos] == (not valid)
            stype = shop.tables[t].columns[col]["stype"]
            if not valid:
                continue
            if stype == "numerical":
                assert batch.number[i, pos] == shop.tables[t].field(col, "value")[r]
            elif stype == "timestamp":  # stored as epoch µs, written as its features
                want = features(orders.field(col, "value")[r : r + 1], None,
                                orders.columns[col]["stats"])[0]
                np.testing.assert_array_equal(batch.timestamp[i, pos], want)
                assert batch.timestamp[i, pos].any()
            elif stype == "boolean":
                assert batch.boolean[i, pos] == shop.tables[t].field(col, "value")[r]
            elif stype in ("categorical", "text"):
                assert batch.vocab[i, pos] == shop.tables[t].field(col, "index")[r]
        assert batch.column_id[i, 0] == shop.tasks["big_order"].meta["target_column_id"]
    task = shop.tasks["big_order"]
    np.testing.assert_array_equal(batch.target_is_null, ~task.target_valid)
    np.testing.assert_array_equal(batch.target_boolean, task.target("value") & task.target_valid)


def one_order_per_user(root: Path, hide_key: bool):
    """Each user has exactly one order, so an order's user is reachable only through
    ``orders.user_id``; the task predicts that user's kind from the order."""
    rng = np.random.default_rng(3)
    tables = shop_tables(rng, 30, 30, 20)
    tables["orders"] = tables["orders"].set_column(1, "user_id", pa.array(np.arange(30), pa.int64()))
    tables["orders"] = tables["orders"].set_column(2, "prev_id", pa.nulls(30, pa.int64()))
    raw = write_tables(root / "raw", tables)
    md = {**SHOP_METADATA, "tasks": {"user_kind_of_order": {
        "query": "SELECT o.order_id, u.kind FROM orders o JOIN users u USING (user_id)",
        "anchor_table": "orders", "anchor_key": "order_id", "target_column": "kind",
        "target_stype": "categorical",
        "hidden_columns": ["orders.user_id"] if hide_key else []}}}
    (root / "shop.json").write_text(json.dumps(md))
    preprocess(root / "shop.json", raw, root / "store", force=True,
               embedder=get_registry().create_embedder("hashing", dimension=4))
    return root / "shop.json", raw, open_store(root / "store")


@pytest.mark.parametrize("hide_key", [True, False])
def test_hidden_foreign_key_hides_the_parent_everywhere(tmp_path, hide_key):
    from tributary_core.baselines import task_features
    from tributary_core.leakage import check_leakage

    md, raw, store = one_order_per_user(tmp_path, hide_key)
    graph = SamplerGraph.from_store(store)
    view = graph.task("user_kind_of_order")
    batch = sample_batch(graph, view, np.arange(len(view)), context_len=200, width=8)
    users = graph.table_index["users"]
    reached = [(batch.row_table[i, : batch.n_rows[i]] == users).any() for i in range(len(batch))]
    # the sampler: no context reaches the user (without hiding, every one does)
    assert not any(reached) if hide_key else all(reached)
    # the baseline: no feature of the user
    sampled = Sampler([store], tasks=["user_kind_of_order"]).tasks[0]
    _, names, _ = task_features(store, sampled, sampled.seeds)
    assert any(n.startswith("user_id__users_") for n in names) is not hide_key
    # the leakage check: the user's columns are not tried (without hiding, kind is a proxy)
    scores: dict = {}
    findings = check_leakage(md, raw, scores=scores)
    tried = [c for c in scores["user_kind_of_order"] if "(via user_id)" in c]
    assert bool(tried) is not hide_key
    assert any(f.column == "users.kind (via user_id)" for f in findings) is not hide_key


def test_anchor_column_target_gets_candidates_and_label(shop):
    graph = SamplerGraph.from_store(shop)
    view = graph.task("user_kind")
    batch = sample_batch(graph, view, np.arange(len(view)), context_len=32, width=2)
    kinds = [shop.vocab_values[v] for v in batch.target_vocab]
    assert kinds == [shop.decode_row("users", int(r))["kind"] for r in batch.anchor_row]
    assert sorted(shop.vocab_values[c] for c in batch.candidates) == ["a", "b", "c"]
    assert (batch.column_id[:, 0] == shop.tables["users"].columns["kind"]["column_id"]).all()


# -- splits and shards --------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 400), world=st.integers(1, 5), seed=st.integers(0, 99))
def test_splits_and_shards_are_disjoint_and_complete(n, world, seed):
    anchors = np.random.default_rng(seed).integers(0, max(n // 2, 1), n)
    assigned = HashSplit(seed=seed).assign("t", anchors, np.zeros(n, np.int64))
    assert set(np.unique(assigned)) <= {0, 1, 2}
    for a in np.unique(anchors):  # one anchor, one split
        assert len(set(assigned[anchors == a])) == 1
    for split in range(3):
        idx = np.flatnonzero(assigned == split)
        parts = [shard(idx, r, world) for r in range(world)]
        joined = np.concatenate(parts) if parts else np.array([], int)
        assert sorted(joined.tolist()) == idx.tolist()  # complete, and disjoint (no repeats)


def test_hash_split_ratios_and_stability():
    anchors = np.arange(20000)
    split = HashSplit(ratios=(0.7, 0.2, 0.1), seed=1)
    a = split.assign("task", anchors, anchors)
    assert np.allclose(np.bincount(a, minlength=3) / len(a), [0.7, 0.2, 0.1], atol=0.015)
    again = HashSplit(ratios=(0.7, 0.2, 0.1), seed=1).assign("task", anchors, anchors)
    np.testing.assert_array_equal(a, again)
    assert (a != HashSplit(ratios=(0.7, 0.2, 0.1), seed=2).assign("task", anchors, anchors)).any()
    with pytest.raises(TributaryError, match="split ratios must be three non-negative numbers"):
        HashSplit(ratios=(0.5, 0.2, 0.1))


def test_temporal_split():
    obs = np.array([0, 9, 10, 19, 20, 99, np.iinfo(np.int64).max])
    got = TemporalSplit(val_start=10, test_start=20).assign("t", np.arange(7), obs)
    assert got[:6].tolist() == [0, 0, 1, 1, 2, 2]
    assert got[6] == HashSplit().assign("t", np.array([6]), obs[6:])[0]  # untimed: hashed


def test_tasks_on_one_table_share_each_rows_split(shop):
    """A row is in one split for every task anchored on its table, cell-masking tasks included:
    multi-task training never shows a test row's label under another task's name."""
    split = HashSplit(ratios=(0.5, 0.25, 0.25))
    sampler = {name: Sampler([shop], tasks=None, pretrain=True, split=name, splitter=split)
               for name in ("train", "val", "test")}
    for name, s in sampler.items():
        by_task = {t.view.name: set(t.view.anchor_rows[t.seeds].tolist()) for t in s.tasks
                   if t.graph.table_names[t.view.anchor_table] == "orders"}
        assert {"big_order", "orders.amount:mask", "orders.paid:mask"} <= set(by_task)
        for other in sampler.values():
            if other is s:
                continue
            for t in other.tasks:
                if t.graph.table_names[t.view.anchor_table] == "orders":
                    rows = set(t.view.anchor_rows[t.seeds].tolist())
                    assert not rows & by_task["big_order"], (name, t.view.name)
        assert by_task["orders.amount:mask"] >= by_task["big_order"]


# -- the loader ---------------------------------------------------------------------------------


def test_sampler_streams_weighted_tasks_from_its_split(shop):
    sampler = Sampler([shop], tasks={"big_order": 3.0, "shop/user_kind": 1.0}, batch_size=4,
                      context_len=16, width=2, splitter=HashSplit(ratios=(0.5, 0.25, 0.25)))
    train = {t.view.name: set(t.seeds.tolist()) for t in sampler.tasks}
    counts = {"big_order": 0, "user_kind": 0}
    for batch, _ in zip(sampler, range(200), strict=False):
        counts[batch.task] += 1
        assert set(batch.seed.tolist()) <= train[batch.task]
        np.testing.assert_array_equal(batch.anchor_row, shop.tasks[batch.task].anchor_row[batch.seed])
    assert 0.65 < counts["big_order"] / 200 < 0.85
    val = Sampler([shop], split="val", batch_size=5, context_len=16,
                  splitter=HashSplit(ratios=(0.5, 0.25, 0.25)))
    seen = [int(r) for b in val.evaluation("big_order") for r in b.anchor_row]
    view = val.graphs["shop"].task("big_order")
    expected = HashSplit(ratios=(0.5, 0.25, 0.25)).assign("orders", view.anchor_rows,
                                                          view.observation_time)
    assert sorted(seen) == sorted(view.anchor_rows[expected == 1].tolist())
    first = [b.number.copy() for b in val.evaluation("big_order")]
    second = [b.number for b in val.evaluation("big_order")]
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_ranks_take_disjoint_shards(shop):
    seeds = [set(Sampler([shop], tasks=["big_order"], rank=r, world_size=3).tasks[0].seeds.tolist())
             for r in range(3)]
    whole = set(Sampler([shop], tasks=["big_order"]).tasks[0].seeds.tolist())
    assert seeds[0] | seeds[1] | seeds[2] == whole
    assert not (seeds[0] & seeds[1]) and not (seeds[1] & seeds[2]) and not (seeds[0] & seeds[2])


def test_sampler_refuses_mixed_embedders_and_unknown_tasks(shop, tmp_path):
    other = make_shop(tmp_path, 1, 2, 5, 5, dimension=8)
    other.name = "shop2"
    with pytest.raises(TributaryError, match=r"different embedders .*hashing/char-ngram-blake2b-v1 D=4.*D=8"):
        Sampler([shop, other])
    with pytest.raises(TributaryError, match=r"no task 'nope' in the stores \(tasks: shop/big_order"):
        Sampler([shop], tasks=["nope"])


def test_prefetch_matches_and_propagates_errors(shop):
    sampler = Sampler([shop], batch_size=3, context_len=16, seed=5)
    direct = [b.column_id for b, _ in zip(sampler, range(6), strict=False)]
    ahead = [b.column_id for b, _ in zip(prefetch(iter(sampler), depth=2), range(6), strict=False)]
    assert all(np.array_equal(a, b) for a, b in zip(direct, ahead, strict=True))

    def broken():
        yield 1
        raise ValueError("sampler broke")

    it = prefetch(broken())
    assert next(it) == 1
    with pytest.raises(ValueError, match="sampler broke"):
        next(it)


def test_torch_dataset(shop):
    import torch

    from tributary_core.sampler import ContextDataset

    loader = torch.utils.data.DataLoader(ContextDataset(Sampler([shop], batch_size=2, context_len=8)),
                                         batch_size=None)
    batch = next(iter(loader))
    assert batch["column_id"].shape == (2, 8) and batch["column_id"].dtype == torch.int32
    assert batch["timestamp"].shape == (2, 8, 15) and batch["row_parents"].shape[:2] == (2, 8)


def test_inspect_sample(shop):
    result = CliRunner().invoke(cli, ["inspect", str(shop.path), "--sample", "big_order", "--row", "2",
                                      "--context-len", "20"])
    assert result.exit_code == 0, result.output
    assert "shop/big_order: anchor orders row" in result.output and "<- target" in result.output
    assert "<masked target>" in result.output
    as_json = json.loads(CliRunner().invoke(cli, ["inspect", str(shop.path), "--sample", "big_order",
                                                  "--row", "2", "--json"]).output)
    assert as_json["cells"][0]["target"] and as_json["rows"][0]["hops"] == 0
    bad = CliRunner().invoke(cli, ["inspect", str(shop.path), "--sample", "big_order", "--row", "999"])
    assert bad.exit_code == 2 and "--row: task 'big_order' has 40 seeds (0 to 39)" in bad.output


def test_inspect_sample_marks_labelled_examples(shop):
    """The examples' rows show "ex" for hops and their label cells are marked with the label
    the task file holds for a training seed of that row; --icl-share 0 shows none."""
    from tributary_core.sampler.examples import known_times

    args = ["inspect", str(shop.path), "--sample", "big_order", "--row", "30", "--context-len", "60"]
    info = json.loads(CliRunner().invoke(cli, [*args, "--json", "--icl-share", "0.5"]).output)
    labels = [c for c in info["cells"] if c["label"]]
    assert labels and all(c["column"] == "big_order" and c["value"] in (True, False) for c in labels)
    task = shop.tasks["big_order"]
    train = HashSplit().assign("orders", task.anchor_row, task.observation_time) == 0
    obs = task.observation_time[30]
    known = known_times(task.observation_time, 0)
    for cell in labels:
        row = info["rows"][cell["row"]]
        assert row["table"] == "orders" and row["row"] != info["anchor"]["row"]
        seeds = [e for e in range(len(train)) if task.anchor_row[e] == row["row"] and train[e]
                 and known[e] <= obs]
        assert seeds and cell["value"] == bool(task.target("value")[max(seeds)])
    text = CliRunner().invoke(cli, [*args, "--icl-share", "0.5"]).output
    assert f"{len(labels)} labelled examples" in text and text.count("<- example label") == len(labels)
    none = CliRunner().invoke(cli, [*args, "--icl-share", "0"]).output
    assert "0 labelled examples" in none and "<- example label" not in none


def test_kernel_compilation_is_cached_on_disk(shop):
    """The kernel's structured (named-tuple) arguments keep Numba's on-disk cache working: the
    call was looked up in, or loaded from, the cache, whose index is on disk."""
    from tributary_core.sampler.kernel import sample_contexts

    graph = SamplerGraph.from_store(shop)
    sample_batch(graph, graph.task("big_order"), np.arange(2), context_len=8, width=1)
    stats = sample_contexts.stats
    assert sum(stats.cache_hits.values()) + sum(stats.cache_misses.values()) >= 1
    assert list(Path(stats.cache_path).glob("*sample_contexts-*.nbi"))


def test_cell_masking_tasks_get_labelled_examples(shop):
    """A cell-masking task (--pretrain) shows other rows of its table with that column's value
    as labelled examples: rows of the training split, never the anchor, the label equal to the
    stored cell and known at the context's time."""
    graph = SamplerGraph.from_store(shop)
    view = graph.task("orders.amount:mask")
    split = HashSplit()
    train = split.assign("orders", view.anchor_rows, view.observation_time) == 0
    batch = sample_batch(graph, view, np.arange(len(view)), context_len=48, width=2,
                         examples=view.examples(split), icl_share=0.5)
    amounts = shop.tables["orders"].field("amount", "value")
    times = shop.tables["orders"].time
    seen = 0
    for i in range(len(batch)):
        for k in np.flatnonzero(batch.is_label[i, : batch.n_cells[i]]):
            row = int(batch.row_index[i, batch.row[i, k]])
            assert batch.row_table[i, batch.row[i, k]] == graph.table_index["orders"]
            assert row != batch.anchor_row[i] and train[row]
            assert times[row] <= batch.observation_time[i]
            assert batch.number[i, k] == amounts[row]
            seen += 1
    assert seen > 0


def _batches_equal(a, b) -> None:
    for field in ("n_cells", "n_rows", "row", "row_table", "row_index", "row_parents", "cell_col",
                  "number", "timestamp", "boolean", "vocab", "is_null", "is_target"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def test_sampler_maps_the_store_instead_of_copying_it(shop):
    """Preprocessing writes sampler.bin; the graph's flat arrays are views of its memory map (no
    copy per process), and sample exactly what a copy read from the tables samples."""
    from tributary_core.store.reader import Store

    assert "sampler.bin" in shop.files
    mapped = SamplerGraph(shop)
    assert mapped.mapped
    for name in ("time", "parent", "children", "numbers", "timestamps", "vocab", "bits"):
        array = getattr(mapped, name)
        assert not array.flags.owndata and not array.flags.writeable, name
    # a store without the file (made before it existed) copies the same arrays into memory
    old = Store(shop.path, shop.meta, {k: v for k, v in shop.files.items() if k != "sampler.bin"})
    copied = SamplerGraph(old)
    assert not copied.mapped and copied.numbers.flags.owndata
    for name in ("time", "parent", "indptr", "children", "child_time", "numbers", "timestamps",
                 "vocab", "bits"):
        np.testing.assert_array_equal(getattr(mapped, name), getattr(copied, name), err_msg=name)
    for task in ("big_order", "user_kind"):
        va, vb = mapped.task(task), copied.task(task)
        seeds = np.arange(len(va))
        _batches_equal(sample_batch(mapped, va, seeds, context_len=48, width=3, sampler_seed=5),
                       sample_batch(copied, vb, seeds, context_len=48, width=3, sampler_seed=5))


def test_sampler_file_parts_must_match_to_be_mapped(shop):
    """A section of sampler.bin planned from other parts (e.g. another set of installed
    semantic types) is not used: that array is read from the tables instead."""
    import copy

    from tributary_core.store.format import StoreFile
    from tributary_core.store.reader import Store

    other = StoreFile(shop.files["sampler.bin"].path)
    other.meta = copy.deepcopy(other.meta)
    other.meta["parts"]["numbers"] = other.meta["parts"]["numbers"][:-1]
    store = Store(shop.path, shop.meta, {**shop.files, "sampler.bin": other})
    graph = SamplerGraph(store)
    assert not graph.mapped
    assert graph.numbers.flags.owndata and not graph.vocab.flags.owndata
    np.testing.assert_array_equal(graph.numbers, SamplerGraph(shop).numbers)


def test_timestamp_labels_are_features_of_the_stored_times(shop):
    """A timestamp target (here the masking task of orders.ts) is stored as epoch µs; the batch's
    label is its 15 features, the epoch z-score last, as the kernel writes a timestamp cell."""
    graph = SamplerGraph.from_store(shop)
    view = graph.task("orders.ts:mask")
    seeds = np.arange(len(view))
    batch = sample_batch(graph, view, seeds, context_len=32, width=2)
    orders = shop.tables["orders"]
    stored = orders.field("ts", "value")
    assert stored.dtype == np.int64
    want = features(stored[view.anchor_rows[seeds]], orders.valid("ts")[view.anchor_rows[seeds]],
                    orders.columns["ts"]["stats"])
    np.testing.assert_array_equal(batch.target_timestamp, want)
    mean, std = (orders.columns["ts"]["stats"]["database"][k] for k in ("mean", "std"))
    ok = ~batch.target_is_null
    np.testing.assert_allclose(batch.target_timestamp[ok, -1],
                               (stored[view.anchor_rows[seeds]][ok] - mean) / std, rtol=1e-5,
                               atol=1e-5)
