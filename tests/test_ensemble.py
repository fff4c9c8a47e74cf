"""Test-time ensembling: each seed predicted from K contexts (draws 0..K-1), merged by the loss
head's ``combine()``; ``ensemble=1`` is exactly the single-context evaluation and prediction."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from test_sampler import make_shop

from tributary_core import get_registry
from tributary_core.cli import cli
from tributary_core.errors import TributaryError
from tributary_core.loss import LossHead
from tributary_core.train import TrainConfig, evaluate, load_run, predict, train
from tributary_core.train.trainer import batch_loss


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    return make_shop(tmp_path_factory.mktemp("shop"), 0, 40, 60, 80, dimension=8)


@pytest.fixture(scope="module")
def run_dir(shop, tmp_path_factory):
    out = tmp_path_factory.mktemp("ensemble") / "run"
    config = TrainConfig(stores=[str(shop.path)], steps=6, batch_size=4, seq_len=32, width=3,
                         d_model=24, n_layers=2, n_heads=3, warmup=2, val_every=6, val_batches=1,
                         ckpt_every=6, lr=3e-3)
    train(config, out)
    return out


@pytest.fixture(scope="module")
def run(run_dir):
    return load_run(run_dir)


# -- combine() on hand-made tensors -----------------------------------------------------------


def head(name: str) -> LossHead:
    return get_registry().loss_head(name)


@pytest.mark.parametrize("name", ["bce", "null"])
def test_logit_heads_average_probabilities(name):
    merged = head(name).combine([torch.tensor([0.0, 0.0]), torch.tensor([math.log(3), math.log(3)])])
    assert torch.sigmoid(merged).tolist() == pytest.approx([0.625, 0.625])
    assert merged.tolist() == pytest.approx([math.log(5 / 3)] * 2)  # not the mean logit, ln(3)/2
    # confident logits stay finite; opposite certainties meet at 1/2
    extreme = head(name).combine([torch.tensor([100.0, 100.0]), torch.tensor([100.0, -100.0])])
    assert torch.isfinite(extreme).all()
    assert extreme[0].item() == pytest.approx(100.0, rel=1e-4)
    assert extreme[1].item() == pytest.approx(0.0, abs=1e-5)


def test_infonce_averages_softmax_and_returns_log_probabilities():
    a = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
    b = torch.log(torch.tensor([[0.1, 0.2, 0.7], [0.3, 0.3, 0.4]])) + 5.0  # a shift: same softmax
    merged = head("infonce").combine([a, b])
    assert merged.shape == (2, 3)
    assert merged.exp().tolist()[0] == pytest.approx([0.4, 0.2, 0.4], abs=1e-6)
    assert merged.exp().tolist()[1] == pytest.approx([0.2, 0.2, 0.6], abs=1e-6)
    assert merged.exp().sum(-1).tolist() == pytest.approx([1.0, 1.0])
    # the loss of log-probabilities is their negative log-likelihood
    assert head("infonce").loss(merged, torch.tensor([2, 2])).item() == pytest.approx(
        -(math.log(0.4) + math.log(0.6)) / 2, rel=1e-5)


def test_huber_and_the_default_take_the_mean_value():
    a, b, c = torch.tensor([[1.0], [-2.0]]), torch.tensor([[3.0], [0.0]]), torch.tensor([[2.0], [4.0]])
    assert head("huber").combine([a, b, c]).tolist() == [[2.0], [pytest.approx(2 / 3)]]
    ts = [torch.zeros(2, 15), torch.ones(2, 15)]  # the timestamp slot: every feature averaged
    assert torch.equal(head("huber").combine(ts), torch.full((2, 15), 0.5))

    class Plain(LossHead):
        name = "plain"

    assert Plain().combine([torch.tensor([1.0, 5.0]), torch.tensor([3.0, 7.0])]).tolist() == [2.0, 6.0]


@pytest.mark.parametrize("name", ["bce", "null", "infonce", "huber"])
def test_one_prediction_is_returned_as_it_is_and_none_is_refused(name):
    one = torch.tensor([[0.3, -1.2, 4.0]])
    assert head(name).combine([one]) is one
    with pytest.raises(ValueError, match="at least one prediction"):
        head(name).combine([])


# -- evaluate and predict with a trained model ------------------------------------------------


def test_ensemble_one_is_the_default_evaluation(run):
    default = evaluate(run)
    assert evaluate(run, ensemble=1) == default
    assert all(entry["ensemble"] == 1 for entry in default.values())
    a, b = predict(run, "big_order"), predict(run, "big_order", ensemble=1)
    assert a.equals(b)


def test_ensemble_one_is_draw_zero(run):
    """K = 1 predicts from the draw-0 contexts, as before ensembling existed."""
    sampler = run.sampler("train", batch_size=run.config.batch_size)
    task = next(t for t in sampler.tasks if t.view.name == "big_order")
    rows = np.arange(run.config.batch_size)  # one batch, as predict() makes it
    with torch.no_grad():
        _, out = batch_loss(run.model, sampler.batch(task, rows), run.embeddings, run.device, 0.0)
    got = predict(run, "big_order", seeds=rows)
    expected = torch.sigmoid(out["prediction"].float()).numpy()
    # predict() runs the model on the target cells' attention paths only (targets_only), so its
    # float32 sums may differ in the last bit from the full forward pass
    np.testing.assert_allclose(got.column("prediction").to_numpy(), expected.astype(np.float64),
                               rtol=1e-6, atol=1e-7)


def _draws(run, task_name, rows, k):
    sampler = run.sampler("train", batch_size=run.config.batch_size)
    task = next(t for t in sampler.tasks if t.view.name == task_name)
    batches = [sampler.batch(task, rows, draw=d) for d in range(k)]
    with torch.no_grad():
        outs = [batch_loss(run.model, b, run.embeddings, run.device, 0.0)[1] for b in batches]
    return batches, outs


def test_draws_give_other_contexts_and_the_ensemble_is_their_mean_probability(run):
    rows = np.arange(20)
    batches, outs = _draws(run, "big_order", rows, 3)
    # the contexts differ between draws (else an ensemble could not change anything)
    assert any(not np.array_equal(batches[0].row_index, b.row_index) for b in batches[1:])
    probs = np.stack([torch.sigmoid(o["prediction"].float()).numpy() for o in outs])
    single = predict(run, "big_order", seeds=rows).column("prediction").to_numpy()
    merged = predict(run, "big_order", seeds=rows, ensemble=3)
    np.testing.assert_allclose(merged.column("prediction").to_numpy(), probs.mean(0), rtol=1e-5,
                               atol=1e-6)
    assert not np.allclose(merged.column("prediction").to_numpy(), single)
    p_null = np.stack([torch.sigmoid(o["null_logit"].float()).numpy() for o in outs]).mean(0)
    np.testing.assert_allclose(merged.column("p_null").to_numpy(), p_null, rtol=1e-5, atol=1e-6)


def test_categorical_ensemble_picks_the_most_probable_on_average(run):
    rows = np.arange(16)
    _, outs = _draws(run, "user_kind", rows, 3)
    mean = np.stack([torch.softmax(o["prediction"].float(), -1).numpy() for o in outs]).mean(0)
    names = run.sampler("train").graphs["shop"].store.vocab_values
    view = run.sampler("train").graphs["shop"].task("user_kind")
    expected = [names[int(view.candidates[i])] for i in mean.argmax(-1)]
    got = predict(run, "user_kind", seeds=rows, ensemble=3).column("prediction").to_pylist()
    assert got == expected


def test_ensemble_evaluation_gives_finite_metrics_and_other_losses(run):
    single = evaluate(run, split="test")
    merged = evaluate(run, split="test", ensemble=3)
    assert set(merged) == set(single) == {"shop/big_order", "shop/user_kind"}
    for key, entry in merged.items():
        assert entry["ensemble"] == 3
        assert entry["seeds"] == single[key]["seeds"] and entry["labelled"] == single[key]["labelled"]
        assert entry["labelled"] > 0 and np.isfinite(entry["loss"])
        assert set(entry["metrics"]) == set(head(entry["loss_head"]).metrics)
        assert all(v is None or np.isfinite(v) for v in entry["metrics"].values())
        assert entry["baseline"] == single[key]["baseline"]  # the baseline does not sample
    assert any(merged[k]["loss"] != single[k]["loss"] for k in merged)


def test_ensemble_metrics_are_those_of_the_merged_predictions(run):
    """The metrics of ensemble=3 are the head's metrics of its combine() of draws 0, 1, 2 of
    each evaluation batch of the test split."""
    sampler = run.sampler("test", batch_size=run.config.batch_size)
    bce = head("bce")
    for task in sampler.tasks:
        if task.view.name != "big_order":
            continue
        preds, targets = [], []
        for start in range(0, len(task.seeds), sampler.batch_size):
            seeds = task.seeds[start : start + sampler.batch_size]
            with torch.no_grad():
                outs = [batch_loss(run.model, sampler.batch(task, seeds, draw=k), run.embeddings,
                                   run.device, run.config.null_weight)[1] for k in range(3)]
            keep = outs[0]["labelled"]
            preds.append(bce.combine([o["prediction"].float() for o in outs])[keep])
            targets.append(outs[0]["target"][keep])
        expected = bce.compute_metrics(torch.cat(preds), torch.cat(targets), task.stats)
    got = evaluate(run, split="test", ensemble=3)["shop/big_order"]["metrics"]
    assert got == pytest.approx(expected)


@pytest.mark.parametrize("bad", [0, -2, True, 1.5, "3"])
def test_bad_ensemble_sizes_are_refused(run, bad):
    with pytest.raises(TributaryError, match="ensemble must be a whole number"):
        evaluate(run, ensemble=bad)
    with pytest.raises(TributaryError, match="ensemble must be a whole number"):
        predict(run, "big_order", ensemble=bad)


def test_a_combine_that_changes_the_shape_is_named(run, monkeypatch):
    monkeypatch.setattr(type(head("bce")), "combine", lambda self, predictions: predictions[0][:1])
    with pytest.raises(TributaryError, match=r"loss head 'bce' combined 2 predictions of shape"):
        predict(run, "big_order", seeds=[0, 1, 2], ensemble=2)


# -- the command line -------------------------------------------------------------------------


def test_cli_predict_with_an_ensemble_writes_the_same_rows_and_columns(run_dir, tmp_path):
    base = ["run", "predict", "--run", str(run_dir), "--task", "big_order", "--rows", "0-9"]
    one = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "one.parquet")])
    three = CliRunner().invoke(cli, [*base, "--ensemble", "3", "--out", str(tmp_path / "three.parquet")])
    assert one.exit_code == 0 and three.exit_code == 0, one.output + three.output
    a, b = pq.read_table(tmp_path / "one.parquet"), pq.read_table(tmp_path / "three.parquet")
    assert a.schema == b.schema and a.num_rows == b.num_rows == 10
    for column in ("seed", "order_id", "observation_time"):
        assert a.column(column).equals(b.column(column))
    assert not np.allclose(a.column("prediction").to_numpy(), b.column("prediction").to_numpy())


def test_cli_evaluate_records_the_ensemble(run_dir):
    out = CliRunner().invoke(cli, ["run", "evaluate", "--run", str(run_dir), "--ensemble", "2",
                                   "--max-seeds", "3", "--json"])
    assert out.exit_code == 0, out.output
    assert {e["ensemble"] for e in json.loads(out.output).values()} == {2}
    table = CliRunner().invoke(cli, ["run", "evaluate", "--run", str(run_dir), "--ensemble", "2",
                                     "--max-seeds", "3"])
    assert table.exit_code == 0, table.output
    assert "ensemble: 2 contexts per seed" in table.output and "baseline" in table.output
    plain = CliRunner().invoke(cli, ["run", "evaluate", "--run", str(run_dir), "--max-seeds", "3"])
    assert "ensemble: 1 context per seed" in plain.output


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_cli_refuses_an_ensemble_of_zero(run_dir, tmp_path, command):
    args = ["run", command, "--run", str(run_dir), "--ensemble", "0"]
    if command == "predict":
        args += ["--task", "big_order", "--out", str(tmp_path / "p.parquet")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "'--ensemble': 0 is not in the range x>=1" in errors[0], result.output
    assert not (tmp_path / "p.parquet").exists()
    helped = " ".join(CliRunner().invoke(cli, ["run", command, "--help"]).output.split())
    assert "--ensemble K" in helped and "Costs K times the time" in helped
