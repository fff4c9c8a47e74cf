"""Masked cells (docs/training.md "Masked cells"): which cells the sampler masks, that the model
never sees their values, their in-batch categorical candidates, their loss, and the settings."""

from __future__ import annotations

import json

import attrs
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import assert_train_refuses
from test_sampler import make_shop

from tributary_core.cli import cli
from tributary_core.errors import TributaryError
from tributary_core.registry import get_registry
from tributary_core.sampler import HashSplit, Sampler, SamplerGraph, sample_batch
from tributary_core.sampler.masking import mask_cells
from tributary_core.train import TrainConfig, load_run, read_metrics, train
from tributary_core.train.trainer import batch_loss, build_model, masked_loss, masked_targets


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    return make_shop(tmp_path_factory.mktemp("shop"), 0, 40, 60, 80, dimension=8)


@pytest.fixture(scope="module")
def graph(shop):
    return SamplerGraph.from_store(shop)


def small_config(store, **kw) -> TrainConfig:
    base = dict(stores=[str(store.path)], steps=4, batch_size=4, seq_len=32, width=3, d_model=24,
                n_layers=2, n_heads=3, warmup=1, val_every=4, val_batches=2, ckpt_every=4, lr=3e-3)
    base.update(kw)
    return TrainConfig(**base)


def fields_equal(a, b, skip=()) -> None:
    for field in attrs.fields(type(a)):
        if field.name in skip:
            continue
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=field.name)
        else:
            assert x == y, field.name


# -- selection --------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["big_order", "user_kind"])
def test_no_masking_gives_the_batches_of_before(graph, task):
    view = graph.task(task)
    seeds = np.arange(12)
    before = sample_batch(graph, view, seeds, context_len=40, width=3, sampler_seed=5)
    off = sample_batch(graph, view, seeds, context_len=40, width=3, sampler_seed=5, mask_share=0.0)
    on = sample_batch(graph, view, seeds, context_len=40, width=3, sampler_seed=5, mask_share=0.6)
    assert not before.is_masked.any() and not off.is_masked.any() and on.is_masked.any()
    fields_equal(before, off)
    fields_equal(before, on, skip=("is_masked",))  # masking adds is_masked and nothing else


def test_masking_is_deterministic_and_independent_of_threads_and_batch(shop, graph):
    kw = dict(tasks=["big_order"], batch_size=8, context_len=40, width=3, seed=3, mask_share=0.5)
    one = Sampler([shop], n_threads=1, **kw)
    two = Sampler([shop], n_threads=2, **kw)
    for step in (0, 1, 7):
        a, b, c = one.batch_at(step), one.batch_at(step), two.batch_at(step)
        assert a.is_masked.any()
        fields_equal(a, b)
        fields_equal(a, c)
    assert not np.array_equal(one.batch_at(0).is_masked, one.batch_at(1).is_masked)
    # a context's masked cells do not depend on the other contexts of its batch
    view = graph.task("big_order")
    whole = sample_batch(graph, view, np.arange(10), context_len=40, width=3, mask_share=0.5)
    part = sample_batch(graph, view, np.array([6, 2]), context_len=40, width=3, mask_share=0.5)
    np.testing.assert_array_equal(part.is_masked, whole.is_masked[[6, 2]])


def test_the_share_grows_with_p_max(graph):
    view = graph.task("big_order")
    seeds = np.arange(len(view))
    shares = []
    for p_max in (0.1, 0.3, 0.6, 0.9):
        batch = sample_batch(graph, view, seeds, context_len=64, width=4, mask_share=p_max)
        eligible = eligible_of(graph, batch)
        share = batch.is_masked.sum() / eligible.sum()
        assert abs(share - p_max / 2) < 0.08, (p_max, share)  # p ~ U(0, p_max): mean p_max / 2
        shares.append(share)
    assert shares == sorted(shares)
    # the per-context share spreads over (0, p_max)
    streams = np.arange(4000, dtype=np.uint64)
    per = mask_cells(streams, np.ones((4000, 200), dtype=bool), 0.8).mean(1)
    assert per.min() < 0.05 and 0.7 < per.max() < 0.9 and abs(per.mean() - 0.4) < 0.02


def eligible_of(graph, batch) -> np.ndarray:
    names = np.array(graph.stype_names)
    kinds = np.where(batch.stype >= 0, names[batch.stype.clip(0)], "")
    typed = np.isin(kinds, ["numerical", "timestamp", "boolean", "categorical"])
    return typed & ~batch.is_padding & ~batch.is_target & ~batch.is_null


@pytest.mark.parametrize("task", ["big_order", "user_kind"])
def test_masked_cells_are_never_padding_target_null_identifier_or_text(shop, graph, task):
    view = graph.task(task)
    examples = view.examples(HashSplit())
    batch = sample_batch(graph, view, np.arange(len(view)), context_len=48, width=3,
                         examples=examples, icl_share=0.4, mask_share=0.95)
    m = batch.is_masked
    assert m.any()
    assert not (m & (batch.is_padding | batch.is_target | batch.is_null)).any()
    names = np.array(graph.stype_names)
    kinds = set(names[batch.stype[m]])
    assert kinds <= {"numerical", "timestamp", "boolean", "categorical"}
    assert not kinds & {"identifier", "text"}
    assert (m <= eligible_of(graph, batch)).all()
    # labelled examples' label cells are eligible (training-split labels: no leak)
    assert (m & batch.is_label).any()


# -- the model ---------------------------------------------------------------------------------


def model_and_inputs(shop, graph, task="user_kind", n=8, mask_share=0.7):
    torch.manual_seed(0)
    model = build_model(small_config(shop), shop.embedder.dimension).eval()
    batch = sample_batch(graph, graph.task(task), np.arange(n), context_len=40, width=3,
                         mask_share=mask_share)
    col = torch.from_numpy(np.asarray(shop.column_embeddings, np.float32))
    voc = torch.from_numpy(np.asarray(shop.vocab_embeddings, np.float32))
    return model, batch, col, voc


@pytest.mark.parametrize("task", ["big_order", "user_kind"])
def test_the_model_never_sees_a_masked_value(shop, graph, task):
    model, batch, col, voc = model_and_inputs(shop, graph, task)
    m = batch.is_masked
    assert m.any()
    with torch.no_grad():
        base = model(batch.to_torch(), col, voc)
    changed = attrs.evolve(batch, number=batch.number.copy(), timestamp=batch.timestamp.copy(),
                           boolean=batch.boolean.copy(), vocab=batch.vocab.copy())
    rng = np.random.default_rng(0)
    changed.number[m] += rng.normal(5, 3, m.sum()).astype(np.float32)
    changed.timestamp[m] += rng.normal(2, 1, (m.sum(), changed.timestamp.shape[2])).astype(np.float32)
    changed.boolean[m] = ~changed.boolean[m]
    changed.vocab[m] = (changed.vocab[m] + 1) % len(voc)
    with torch.no_grad():
        after = model(changed.to_torch(), col, voc)
    for key in ("hidden", "prediction", "null_logit"):
        torch.testing.assert_close(after[key], base[key], rtol=0, atol=0)
    for name, got in base["masked"].items():
        if "candidates" not in got:  # categorical scores depend on the in-batch candidates
            torch.testing.assert_close(after["masked"][name]["prediction"], got["prediction"])
    # the same change to cells that are not masked does change the output
    unmasked = attrs.evolve(batch, is_masked=np.zeros_like(m))
    moved = attrs.evolve(changed, is_masked=np.zeros_like(m))
    with torch.no_grad():
        a = model(unmasked.to_torch(), col, voc)["hidden"]
        b = model(moved.to_torch(), col, voc)["hidden"]
    assert not torch.allclose(a, b)


def test_categorical_candidates_are_the_columns_values_in_the_batch(shop, graph):
    model, batch, col, voc = model_and_inputs(shop, graph, "user_kind", n=16, mask_share=0.9)
    with torch.no_grad():
        out = model(batch.to_torch(), col, voc)
    names = list(graph.stype_names)
    cat = names.index("categorical")
    got = out["masked"]["categorical"]
    where = got["where"].numpy()
    np.testing.assert_array_equal(where, batch.is_masked & (batch.stype == cat))
    ids = got["candidates"].numpy()
    scores = got["prediction"]
    pool = (batch.stype == cat) & ~batch.is_null & ~batch.is_target & ~batch.is_padding
    for n, (b, s) in enumerate(zip(*np.nonzero(where), strict=True)):
        column_values = set(batch.vocab[pool & (batch.column_id == batch.column_id[b, s])])
        allowed = set(ids[torch.isfinite(scores[n]).numpy()])
        assert allowed == column_values
        assert batch.vocab[b, s] in allowed  # the true value is always a candidate
    # the infonce head's targets: each masked cell's index among the candidates, never missing
    head = get_registry().loss_head(model.loss_of["categorical"])
    target = head.target(masked_targets(batch.to_torch(), "categorical", got["where"],
                                        got["candidates"]))
    assert (target >= 0).all()
    np.testing.assert_array_equal(ids[target.numpy()], batch.vocab[where])
    assert torch.isfinite(scores.gather(1, target[:, None])).all()


def test_single_candidate_cells_add_no_masked_loss():
    """A categorical cell whose column shows one category in the batch is a certain answer
    (log-softmax over one candidate is 0): masked_loss leaves it out of the mean."""
    from tributary_core.train.model import RelationalTransformer

    core = RelationalTransformer.__new__(RelationalTransformer)
    torch.nn.Module.__init__(core)
    core.loss_of = {"categorical": "infonce"}
    inf = float("-inf")
    scores = torch.tensor([[2.0, 0.0, inf], [inf, inf, 1.0]])  # cell 1: one candidate
    where = torch.tensor([[True, True]])
    tensors = {"vocab": torch.tensor([[10, 12]]), "number": torch.zeros(1, 2),
               "timestamp": torch.zeros(1, 2, 15), "boolean": torch.zeros(1, 2, dtype=torch.bool)}
    masked = {"categorical": {"where": where, "prediction": scores,
                              "candidates": torch.tensor([10, 11, 12])}}
    loss = masked_loss(core, masked, tensors)
    expected = -torch.log_softmax(torch.tensor([2.0, 0.0]), 0)[0]
    torch.testing.assert_close(loss, expected)  # the mean over cell 0 alone, not (x + 0) / 2
    only_one = {"categorical": {**masked["categorical"], "prediction": scores[1:],
                                "where": torch.tensor([[False, True]])}}
    assert float(masked_loss(core, only_one, tensors)) == 0.0


def test_batch_loss_adds_the_weighted_masked_part(shop, graph):
    model, batch, col, voc = model_and_inputs(shop, graph, "big_order", mask_share=0.8)
    model.train()
    emb = {shop.name: (col, voc)}
    cpu = torch.device("cpu")
    plain, _ = batch_loss(model, batch, emb, cpu, 0.1, 0.0)
    loss, out = batch_loss(model, batch, emb, cpu, 0.1, 2.0)
    assert set(out["masked"]) == {"numerical", "timestamp", "boolean", "categorical"} & set(
        graph.stype_names[c] for c in np.unique(batch.stype[batch.is_masked]))
    assert float(out["mask_loss"]) > 0
    torch.testing.assert_close(loss, plain + 2.0 * out["mask_loss"])
    loss.backward()
    assert all(p.grad is not None for p in model.heads["timestamp"].parameters())
    unmasked, out = batch_loss(model, attrs.evolve(batch, is_masked=np.zeros_like(batch.is_masked)),
                               emb, cpu, 0.1, 2.0)
    assert "mask_loss" not in out and "masked" not in out


# -- training and settings ---------------------------------------------------------------------


def test_training_with_masked_cells(shop, tmp_path):
    result = CliRunner().invoke(cli, [
        "run", "train", "--db", str(shop.path), "--steps", "4", "--batch-size", "4", "--seq-len",
        "32", "--width", "3", "--d-model", "12", "--layers", "1", "--heads", "3", "--warmup", "1",
        "--val-every", "4", "--val-batches", "1", "--mask-share", "0.5", "--mask-weight", "0.5",
        "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["mask_share"] == 0.5 and config["mask_weight"] == 0.5
    rows = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert len(rows) == 4 and all(np.isfinite(r["loss"]) for r in rows)
    assert all(r["mask_loss"] > 0 for r in rows if "mask_loss" in r)
    assert sum("mask_loss" in r for r in rows) >= 3
    assert np.isfinite(read_metrics(tmp_path / "run")[-1]["val_loss"])
    # the run's own samplers (evaluate, predict) never mask
    run = load_run(tmp_path / "run")
    sampler = run.sampler("test")
    assert sampler.mask_share == 0.0
    assert not any(b.is_masked.any() for b in sampler.evaluation())


def test_evaluation_never_masks(shop):
    sampler = Sampler([shop], tasks=["big_order"], batch_size=8, context_len=40, mask_share=0.9)
    assert sampler.batch_at(0).is_masked.any()
    assert not any(b.is_masked.any() for b in sampler.evaluation())
    assert not sampler.context("shop", "big_order", 0).is_masked.any()


def test_old_configs_load_without_masking(shop):
    data = small_config(shop).to_json()
    del data["mask_share"], data["mask_weight"]
    config = TrainConfig.from_json(data)
    assert (config.mask_share, config.mask_weight) == (0.0, 1.0)


@pytest.mark.parametrize(("change", "message"), [
    (dict(mask_share=1.0), "--mask-share 1.0: must be a share of the cells in [0, 1)"),
    (dict(mask_share=-0.1), "--mask-share -0.1"),
    (dict(mask_weight=-1.0), "--mask-weight -1.0: must be a finite number >= 0"),
    (dict(mask_weight=float("inf")), "--mask-weight inf"),
])
def test_bad_settings_are_refused(shop, tmp_path, change, message):
    with pytest.raises(TributaryError) as caught:
        train(small_config(shop, **change), tmp_path / "run")
    assert message in str(caught.value)
    assert not (tmp_path / "run").exists()
    with pytest.raises(TributaryError, match="mask_share"):
        Sampler([shop], mask_share=change.get("mask_share", 1.5))


@pytest.mark.parametrize(("args", "fragment"), [
    (["--mask-share", "1"], "--mask-share 1.0"),
    (["--mask-share", "-0.5"], "--mask-share -0.5"),
    (["--mask-share", "nan"], "--mask-share nan"),
    (["--mask-weight", "-2"], "--mask-weight -2.0"),
    (["--mask-weight", "nan"], "--mask-weight nan"),
    (["--mask-share", "lots"], "--mask-share"),
])
def test_cli_refuses_bad_values_in_one_line(shop, tmp_path, args, fragment):
    assert_train_refuses(shop.path, tmp_path, args, fragment)
