"""Using a trained model (issue 18): keys in the store, predictions by the user's own keys for
any entities at any time, explanations, and fast evaluation (inference-only model outputs,
capped seeds, bootstrap intervals)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from test_sampler import SHOP_METADATA, make_shop, shop_tables, write_tables

from tributary_core import get_registry
from tributary_core.cli import cli
from tributary_core.errors import TributaryError
from tributary_core.preprocess import preprocess
from tributary_core.sampler.kernel import NO_TIME
from tributary_core.store import open_store
from tributary_core.train import Predictor, TrainConfig, evaluate, load_run, predict, train
from tributary_core.train.evaluate import bootstrap_intervals, evenly_spaced
from tributary_core.train.trainer import batch_loss


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    return make_shop(tmp_path_factory.mktemp("shop"), 0, 40, 120, 80, dimension=8)


@pytest.fixture(scope="module")
def run_dir(shop, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "run"
    config = TrainConfig(stores=[str(shop.path)], steps=6, batch_size=4, seq_len=48, width=3,
                         d_model=24, n_layers=3, n_heads=3, warmup=2, val_every=6, val_batches=1,
                         ckpt_every=6, lr=3e-3, icl_share=0.3, example_pointer=True)
    train(config, out)
    return out


@pytest.fixture(scope="module")
def run(run_dir):
    return load_run(run_dir)


# -- keys in the store ------------------------------------------------------------------------


def test_the_store_keeps_every_primary_key_in_its_own_type(shop, tmp_path):
    raw = shop_tables(np.random.default_rng(0), 40, 120, 80)
    for table, column in (("users", "user_id"), ("orders", "order_id"), ("items", "item_id")):
        keys = shop.tables[table].keys()
        assert keys.type == pa.int64()
        assert keys.equals(raw[table].column(column).combine_chunks())
    # string keys: users named "u0", "u1", ... (and the orders' foreign keys with them)
    tables = shop_tables(np.random.default_rng(1), 12, 30, 10)
    named = pc.binary_join_element_wise("u", pc.cast(tables["users"]["user_id"], pa.string()), "")
    tables["users"] = tables["users"].set_column(0, "user_id", named)
    refs = tables["orders"]["user_id"]
    tables["orders"] = tables["orders"].set_column(
        1, "user_id", pc.binary_join_element_wise("u", pc.cast(refs, pa.string()), ""))
    md = tmp_path / "md.json"
    md.write_text(json.dumps(SHOP_METADATA))
    preprocess(md, write_tables(tmp_path / "raw", tables), tmp_path / "store",
               embedder=get_registry().create_embedder("hashing", dimension=4), force=True)
    store = open_store(tmp_path / "store")
    keys = store.tables["users"].keys()
    assert pa.types.is_large_string(keys.type)
    assert keys.to_pylist() == [f"u{i}" for i in range(12)]
    assert store.tables["users"].meta["key"]["kind"] == "string"


def test_a_store_without_keys_says_to_preprocess_again(shop, tmp_path):
    table = shop.tables["users"]
    meta = dict(table.meta)
    meta.pop("key")
    old = type(table)("users", meta, table.file)
    assert not old.has_keys
    with pytest.raises(TributaryError, match="preprocess the database again"):
        old.keys()


# -- the last block computes only what predictions read ----------------------------------------


@pytest.mark.parametrize("task", ["big_order", "user_kind"])
def test_targets_only_gives_the_same_predictions(run, task):
    sampler = run.sampler("test", batch_size=16)
    t = next(x for x in sampler.tasks if x.view.name == task)
    batch = sampler.batch(t, t.seeds[:16], mask=False)
    assert batch.is_label.any()  # the example pointer reads label cells too
    with torch.inference_mode():
        _, full = batch_loss(run.model, batch, run.embeddings, run.device, 0.0)
        _, fast = batch_loss(run.model, batch, run.embeddings, run.device, 0.0, targets_only=True)
    torch.testing.assert_close(fast["prediction"], full["prediction"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast["null_logit"], full["null_logit"], atol=1e-5, rtol=1e-5)


# -- predict: keys, units, any entities at any time ----------------------------------------------


def test_predict_carries_the_anchor_key_time_and_units(run, shop):
    table = predict(run, "big_order")
    assert table.column_names[:3] == ["seed", "order_id", "observation_time"]
    assert table.schema.field("observation_time").type == pa.timestamp("us", tz="UTC")
    task = shop.tasks["big_order"]
    anchors = np.asarray(task.anchor_row)
    assert table.column("order_id").to_pylist() == shop.tables["orders"].keys().take(anchors).to_pylist()
    p = table.column("prediction").to_numpy()
    assert ((p >= 0) & (p <= 1)).all()  # the probability of true
    kinds = predict(run, "user_kind", top_k=2)
    assert kinds.column_names[:2] == ["seed", "user_id"]
    assert kinds.schema.field("observation_time").type == pa.timestamp("us", tz="UTC")
    assert kinds.column("observation_time").null_count == len(kinds)  # no cut-off
    for pred, prob, top in zip(kinds.column("prediction").to_pylist(),
                               kinds.column("probability").to_pylist(),
                               kinds.column("top_k").to_pylist(), strict=True):
        assert pred in {"a", "b", "c"}
        assert len(top) == 2 and top[0]["value"] == pred
        assert top[0]["probability"] == pytest.approx(prob)
        assert top[0]["probability"] >= top[1]["probability"]


def test_predict_for_any_keys_at_any_time_sees_no_future(run, shop):
    predictor = Predictor(run)
    t = predictor.task("big_order")
    orders = shop.tables["orders"]
    times = np.asarray(orders.time)
    at = int(np.sort(times)[len(times) // 2])
    ids = orders.keys().to_numpy()
    early = ids[times <= at]
    keys = [int(early[5]), int(early[17]), int(early[17]), int(early[3])]
    late = int(ids[times > at][0])
    with pytest.raises(TributaryError, match=f"from after the observation time .*{late}"):
        predictor.answer("big_order", keys=[keys[0], late], at=at)
    table = predictor.answer("big_order", keys=keys, at=at)
    assert "seed" not in table.column_names
    assert table.column("order_id").to_pylist() == keys
    assert {v.value for v in table.column("observation_time")} == {at}
    assert table.num_rows == 4
    # the contexts behind them: no row after `at`, labelled examples only from seeds known by then
    view = predictor.entity_view(t, predictor.rows_of_keys(t, keys), at)
    batch = predictor._batch(t, view, np.arange(4), 0)
    graph = t.graph
    for b in range(4):
        for i in range(batch.n_rows[b]):
            table_name = graph.table_names[batch.row_table[b, i]]
            row_times = shop.tables[table_name].time
            if row_times is not None:
                rt = int(row_times[batch.row_index[b, i]])
                assert rt == NO_TIME or rt <= at, (table_name, rt, at)
    examples = view.examples(None)
    known = examples.known[: np.searchsorted(examples.known, at, side="right")]
    assert len(known) and (known <= at).all()
    # the default time is the database's latest
    latest = predictor.answer("big_order", keys=[keys[0]])
    assert latest.column("observation_time")[0].value == predictor.latest_time(t)
    assert predictor.latest_time(t) == int(times.max())


def test_predict_by_where_and_keys_files(run_dir, shop, tmp_path):
    raw = tmp_path / "raw"
    write_tables(raw, shop_tables(np.random.default_rng(0), 40, 120, 80))
    out = tmp_path / "p.parquet"
    result = CliRunner().invoke(cli, ["run", "predict", "--run", str(run_dir), "--task", "big_order",
                                      "--where", "paid AND order_id < 60 AND ts <= TIMESTAMPTZ '2024-01-20'",
                                      "--raw", str(raw),
                                      "--at", "2024-01-20", "--out", str(out)])
    assert result.exit_code == 0, result.output
    got = pq.read_table(out)
    orders = pq.read_table(raw / "orders.parquet").to_pandas()
    cut = orders.ts <= __import__("pandas").Timestamp("2024-01-20", tz="UTC")
    wanted = orders[orders.paid & (orders.order_id < 60) & cut].order_id.tolist()
    assert wanted
    assert got.column("order_id").to_pylist() == wanted
    # keys from a CSV (read as text, cast to the key's integer kind) and from parquet
    csv = tmp_path / "keys.csv"
    csv.write_text("order_id,comment\n7,a\n2,b\n")
    result = CliRunner().invoke(cli, ["run", "predict", "--run", str(run_dir), "--task", "big_order",
                                      "--keys", str(csv), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert pq.read_table(out).column("order_id").to_pylist() == [7, 2]
    single = tmp_path / "keys.parquet"
    pq.write_table(pa.table({"whatever": pa.array([11, 12], pa.int32())}), single)
    result = CliRunner().invoke(cli, ["run", "predict", "--run", str(run_dir), "--task", "user_kind",
                                      "--keys", str(single), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert pq.read_table(out).column("user_id").to_pylist() == [11, 12]


@pytest.mark.parametrize("args, message", [
    (["--keys", "{missing}"], "does not exist"),
    (["--keys", "{unknown}"], "2 of 3 key\\(s\\) are not in orders.order_id \\(e.g. 9999"),
    (["--keys", "{wide}"], "has no column 'order_id' \\(columns: a, b\\)"),
    (["--keys", "{letters}"], "cannot name rows of orders.order_id"),
    (["--where", "no_such_column > 1", "--raw", "{raw}"], "--where on orders: "),
    (["--where", "order_id < 0", "--raw", "{raw}"], "no row of orders satisfies"),
    (["--where", "paid", "--raw", "{nowhere}"], "does not exist \\(give the folder with --raw\\)"),
    (["--at", "yesterday-ish"], "--at: 'yesterday-ish' is not a time"),
    (["--rows", "1", "--at", "2024-01-02"], "--at applies to --keys and --where"),
    (["--task", "nope"], "the run has no task 'nope'"),
    (["--rows", "0-99999999999"], "--rows: '0-99999999999' goes past the last seed"),
    (["--keys", "{bools}"], "keys of type bool cannot name rows of orders.order_id"),
    (["--keys", "{decimal}"], "keys like '1.0' cannot name rows of orders.order_id"),
    (["--where", "paid; SELECT 1", "--raw", "{raw}"], "--where on orders: .*one condition"),
    (["--where", "paid) UNION (SELECT 1", "--raw", "{raw}"], "--where on orders: .*syntax error"),
])
def test_predict_refuses_bad_requests_in_one_line(run_dir, tmp_path, args, message):
    raw = tmp_path / "raw"
    write_tables(raw, shop_tables(np.random.default_rng(0), 40, 120, 80))
    (tmp_path / "unknown.csv").write_text("order_id\n1\n9999\n10000\n")
    (tmp_path / "wide.csv").write_text("a,b\n1,2\n")
    (tmp_path / "letters.csv").write_text("order_id\nx\n")
    (tmp_path / "decimal.csv").write_text("order_id\n2\n1.0\n")
    pq.write_table(pa.table({"order_id": [True, False]}), tmp_path / "bools.parquet")
    paths = {"missing": tmp_path / "no.csv", "unknown": tmp_path / "unknown.csv",
             "wide": tmp_path / "wide.csv", "letters": tmp_path / "letters.csv", "raw": raw,
             "nowhere": tmp_path / "nowhere", "bools": tmp_path / "bools.parquet",
             "decimal": tmp_path / "decimal.csv"}
    args = [a.format(**{k: str(v) for k, v in paths.items()}) for a in args]
    if "--task" not in args:
        args = ["--task", "big_order", *args]
    out = tmp_path / "p.parquet"
    result = CliRunner().invoke(cli, ["run", "predict", "--run", str(run_dir), *args, "--out", str(out)])
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert __import__("re").search(message, result.output), result.output
    assert not out.exists()


# -- explanations ---------------------------------------------------------------------------


def test_explanations_name_the_cells_that_moved_a_prediction(run, shop):
    table = predict(run, "big_order", seeds=list(range(6)), explain=4)
    assert b"gradient x input" in table.schema.metadata[b"tributary.explanation"]
    columns = {f"{t}.{c}" for t in shop.tables for c in shop.tables[t].columns}
    for cells in table.column("explanation").to_pylist():
        assert 1 <= len(cells) <= 4
        sizes = [abs(c["attribution"]) for c in cells]
        assert sizes == sorted(sizes, reverse=True) and all(np.isfinite(sizes))
        for c in cells:
            assert c["table"] in shop.tables
            assert f"{c['table']}.{c['column']}" in columns or c["column"] == "big_order (label)"
            if c["column"] != "big_order (label)" and c["value"] is not None:
                row = shop.tables[c["table"]].keys().to_pylist().index(int(c["key"]))
                assert str(shop.decode_row(c["table"], row)[c["column"]]) == c["value"]
    # the same predictions as without explanations
    plain = predict(run, "big_order", seeds=list(range(6)))
    np.testing.assert_allclose(table.column("prediction").to_numpy(),
                               plain.column("prediction").to_numpy(), rtol=1e-5)


def test_gradient_x_input_finds_the_cell_that_decides(run):
    """Zeroing the input of the most attributed cell moves the prediction's score more than
    zeroing the least attributed one, on most seeds (the method's claim, checked directly)."""
    predictor = Predictor(run)
    t = predictor.task("big_order")
    batch = predictor._batch(t, t.view, np.arange(12), 0)
    model = run.model
    from tributary_core.train.trainer import _recode

    tensors = batch.to_torch(run.device)
    tensors["stype"] = _recode(model, tensors["stype"])
    col, voc = run.embeddings[batch.database]
    with torch.enable_grad():
        x = model.encode(tensors, col, voc).detach().requires_grad_(True)
        score = model(tensors, col, voc, cells=x)["prediction"].float()
        (grad,) = torch.autograd.grad(score.sum(), x)
    attr = (grad * x).sum(-1).detach()
    eligible = torch.from_numpy(~batch.is_padding & ~batch.is_target)
    wins = 0
    with torch.no_grad():
        base = model(tensors, col, voc, cells=x.detach())["prediction"].float()
        for b in range(12):
            a = attr[b].abs().masked_fill(~eligible[b], -1)
            top = int(a.argmax())
            low = int(attr[b].abs().masked_fill(~eligible[b], float("inf")).argmin())
            moved = []
            for pos in (top, low):
                y = x.detach().clone()
                y[b, pos] = 0
                moved.append(abs(float(model(tensors, col, voc, cells=y)["prediction"][b]) - float(base[b])))
            wins += moved[0] > moved[1]
    assert wins >= 9, wins


# -- fast evaluation --------------------------------------------------------------------------


def test_evaluate_gives_bootstrap_intervals_and_caps_seeds(run):
    results = evaluate(run, split="test", max_seeds=3)
    entry = results["shop/big_order"]
    assert entry["seeds"] == 3 and entry["bootstrap"] == 200 and entry["ci_level"] == 0.95
    assert set(entry["ci"]) == set(entry["metrics"])
    for name in entry["metrics"]:
        if entry["ci"][name] is not None:
            lo, hi = entry["ci"][name]
            assert lo <= hi
    every = evaluate(run, split="test", max_seeds=None, bootstrap=0)
    assert every["shop/big_order"]["ci"] == {}
    assert every["shop/big_order"]["seeds"] > 3


def test_bootstrap_intervals_cover_the_metric_of_a_known_sample():
    head = get_registry().loss_head("huber")
    rng = np.random.default_rng(0)
    target = torch.from_numpy(rng.normal(size=(400, 1)).astype(np.float32))  # (N, 1): one value
    prediction = target + torch.from_numpy(rng.normal(scale=0.5, size=(400, 1)).astype(np.float32))
    stats = {"mean": 0.0, "std": 1.0}
    ci = bootstrap_intervals(head, prediction, target, stats, 300)
    point = head.compute_metrics(prediction, target, stats)
    for name, (lo, hi) in ci.items():
        assert lo < point[name] < hi
    # the interval of the mean absolute error shrinks like 1/sqrt(n)
    wide = bootstrap_intervals(head, prediction[:100], target[:100], stats, 300)["mae"]
    narrow = ci["mae"]
    assert (wide[1] - wide[0]) > 1.5 * (narrow[1] - narrow[0])
    assert bootstrap_intervals(head, prediction, target, stats, 300) == ci  # a fixed stream


def test_evenly_spaced_is_the_same_subset_every_time():
    seeds = np.arange(100, 200)
    picked = evenly_spaced(seeds, 7)
    assert len(picked) == 7 and picked[0] == 100 and picked[-1] == 199
    assert (np.diff(picked) > 0).all()


def test_evaluate_cli_max_seeds(run_dir):
    ok = CliRunner().invoke(cli, ["run", "evaluate", "--run", str(run_dir), "--max-seeds", "all",
                                  "--json", "--bootstrap", "20"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["shop/big_order"]["bootstrap"] == 20
    table = CliRunner().invoke(cli, ["run", "evaluate", "--run", str(run_dir), "--max-seeds", "5"])
    assert table.exit_code == 0 and "model 95% CI" in table.output, table.output
    bad = CliRunner().invoke(cli, ["run", "evaluate", "--run", str(run_dir), "--max-seeds", "0"])
    assert bad.exit_code != 0 and "--max-seeds: '0' is neither" in bad.output


# -- new questions, answered without training ----------------------------------------------------

PAID = {"query": "SELECT order_id, ts AS at, paid FROM orders", "anchor_table": "orders",
        "anchor_key": "order_id", "target_column": "paid", "target_stype": "boolean",
        "observation_time_column": "at", "hidden_columns": ["orders.paid"]}
BAND = {"query": "SELECT user_id, CASE WHEN age > 50 THEN 'older' ELSE 'younger' END AS band "
                 "FROM users", "anchor_table": "users", "anchor_key": "user_id",
        "target_column": "band", "target_stype": "categorical"}


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory):
    return write_tables(tmp_path_factory.mktemp("raw"), shop_tables(np.random.default_rng(0), 40, 120, 80))


def test_a_new_question_is_materialised_as_preprocessing_would(run, shop, raw_dir, tmp_path):
    """The question's seeds, labels and statistics equal those of a store preprocessed with it
    as a task of metadata.json; no weight changes."""
    md = json.loads(json.dumps(SHOP_METADATA))
    md["tasks"]["paid_q"] = PAID
    preprocess(_write(tmp_path / "md.json", md), raw_dir, tmp_path / "store",
               embedder=get_registry().create_embedder("hashing", dimension=8), force=True)
    made = open_store(tmp_path / "store").tasks["paid_q"]
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    asked = Predictor(run).ask(PAID, name="paid_q", raw=raw_dir)
    task = asked.view
    np.testing.assert_array_equal(task.anchor_rows, np.asarray(made.anchor_row))
    np.testing.assert_array_equal(task.observation_time, np.asarray(made.observation_time))
    np.testing.assert_array_equal(task.target_valid, np.asarray(made.target_valid))
    np.testing.assert_array_equal(task.target, np.asarray(made.target("value")))
    assert task.horizon_us == 0 and task.hidden[asked.graph.column_index("orders", "paid")]
    after = run.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_new_questions_are_answered_for_entities_and_scored(run, raw_dir):
    predictor = Predictor(run)
    band = predictor.ask(BAND, name="band", raw=raw_dir)
    assert len(band.vocab_values) == len(predictor.sampler.graphs.stores["shop"].vocab_values) + 2
    table = predictor.answer(band, keys=[1, 2, 3], top_k=2)
    assert table.column("user_id").to_pylist() == [1, 2, 3]
    assert set(table.column("prediction").to_pylist()) <= {"older", "younger"}
    assert all({c["value"] for c in top} == {"older", "younger"}
               for top in table.column("top_k").to_pylist())
    scored = predictor.evaluate_asked(predictor.ask(PAID, name="paid_q", raw=raw_dir),
                                      split="test", bootstrap=50)
    assert scored["zero_shot"] and scored["seeds"] > 0
    assert set(scored["metrics"]) == {"auroc", "accuracy"} and scored["baseline"]


@pytest.mark.parametrize("spec, message", [
    ({**PAID, "anchor_key": "nope"}, "question 'q'.*anchor_key"),
    ({**PAID, "query": "SELEC broken"}, "question 'q'"),
    ({**PAID, "colour": 1}, "unknown field\\(s\\) colour"),
    ({**PAID, "target_stype": "identifier"}, "question 'q'"),
    ({**PAID, "horizon": 7}, "^question 'q': \\$\\.horizon: expected a string"),
    ({"query": None}, "^question 'q': \\$\\.query: required field missing \\(and 4 more\\)"),
])
def test_bad_questions_are_refused_in_one_line(run, raw_dir, spec, message):
    with pytest.raises(TributaryError, match=message) as info:
        Predictor(run).ask(spec, name="q", raw=raw_dir)
    assert "\n" not in str(info.value)


def test_questions_from_the_command_line(run_dir, raw_dir, tmp_path):
    out = tmp_path / "q.parquet"
    question = _write(tmp_path / "band.json", BAND)
    result = CliRunner().invoke(cli, ["run", "predict", "--run", str(run_dir), "--question",
                                      str(question), "--raw", str(raw_dir), "--keys",
                                      str(_keys(tmp_path)), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert pq.read_table(out).column("user_id").to_pylist() == [4, 5]
    inline = CliRunner().invoke(cli, [
        "run", "predict", "--run", str(run_dir), "--task", "paid_soon", "--query", PAID["query"],
        "--anchor-table", "orders", "--anchor-key", "order_id", "--target-column", "paid",
        "--target-stype", "boolean", "--observation-time-column", "at", "--hidden-column",
        "orders.paid", "--raw", str(raw_dir), "--rows", "0-4", "--out", str(out)])
    assert inline.exit_code == 0, inline.output
    assert pq.read_table(out).num_rows == 5
    scored = CliRunner().invoke(cli, ["run", "evaluate", "--run", str(run_dir), "--question",
                                      str(question), "--raw", str(raw_dir), "--json"])
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.output)["shop/question"]["zero_shot"] is True
    two = CliRunner().invoke(cli, ["run", "evaluate", "--run", str(run_dir), "--question",
                                   str(question), "--raw", str(raw_dir), "--tasks", "a,b"])
    assert two.exit_code == 2 and "--question scores one question" in two.output
    half = CliRunner().invoke(cli, ["run", "predict", "--run", str(run_dir), "--query", "SELECT 1",
                                    "--out", str(out)])
    assert half.exit_code != 0 and "--query needs --anchor-table too" in half.output


@pytest.mark.parametrize("command, content, message", [
    ("predict", "[" * 100_000 + "]" * 100_000, "nests too deeply"),
    ("predict", {**BAND, "name": [1]}, "a question's name must be a non-empty string; got \\[1\\]"),
    ("evaluate", {**BAND, "name": 5}, "a question's name must be a non-empty string; got 5"),
    ("evaluate", "[]", "must hold one JSON object"),
])
def test_bad_question_files_are_refused_in_one_line(run_dir, raw_dir, tmp_path, command, content,
                                                    message):
    path = tmp_path / "q.json"
    if isinstance(content, str):
        path.write_text(content)
    else:
        _write(path, content)
    out = tmp_path / "q.parquet"
    args = ["--out", str(out), "--rows", "0-1"] if command == "predict" else ["--bootstrap", "0"]
    result = CliRunner().invoke(cli, ["run", command, "--run", str(run_dir), "--question", str(path),
                                      "--raw", str(raw_dir), *args])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert __import__("re").search(message, result.output), result.output
    assert not out.exists()


def test_a_question_is_scored_with_an_ensemble_and_a_bounded_bootstrap(run, run_dir, raw_dir,
                                                                       tmp_path):
    predictor = Predictor(run)
    asked = predictor.ask(PAID, name="paid_q", raw=raw_dir)
    one = predictor.evaluate_asked(asked, bootstrap=0)
    three = predictor.evaluate_asked(asked, bootstrap=0, ensemble=3)
    assert one["ensemble"] == 1 and three["ensemble"] == 3 and three["seeds"] == one["seeds"]
    assert three["metrics"] != one["metrics"]  # the draws were combined, not ignored
    question = _write(tmp_path / "paid.json", PAID)
    huge = CliRunner().invoke(cli, ["run", "evaluate", "--run", str(run_dir), "--question",
                                    str(question), "--raw", str(raw_dir), "--bootstrap", "99999999999"])
    assert huge.exit_code == 2 and "0<=x<=10000" in huge.output


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def _keys(tmp_path):
    path = tmp_path / "users.csv"
    path.write_text("user_id\n4\n5\n")
    return path


def test_inspect_sample_shows_the_runs_prediction_and_explanation(run_dir, shop):
    args = ["inspect", str(shop.path), "--sample", "big_order", "--row", "2", "--run", str(run_dir),
            "--explain", "3"]
    shown = CliRunner().invoke(cli, args)
    assert shown.exit_code == 0, shown.output
    assert "prediction: " in shown.output and "gradient x input" in shown.output
    data = json.loads(CliRunner().invoke(cli, [*args, "--json"]).output)
    assert 0 <= data["prediction"] <= 1 and 1 <= len(data["explanation"]) <= 3
    mixed = CliRunner().invoke(cli, [*args, "--width", "7"])
    assert mixed.exit_code != 0 and "--width: with --run the run's own settings sample" in mixed.output
    alone = CliRunner().invoke(cli, ["inspect", str(shop.path), "--table", "users", "--run", str(run_dir)])
    assert alone.exit_code != 0 and "--run only goes with --sample TASK" in alone.output


def test_at_alone_predicts_every_entity_there_is_by_then(run, shop):
    times = np.asarray(shop.tables["orders"].time)
    at = int(np.sort(times)[30])
    table = predict(run, "big_order", at=at)
    ids = shop.tables["orders"].keys().to_numpy()
    assert sorted(table.column("order_id").to_pylist()) == sorted(ids[times <= at].tolist())
    assert 31 <= len(table) < len(ids)  # the 31st order's time, and any tied with it
