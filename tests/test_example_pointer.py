"""The example pointer (``--example-pointer``): the target's attention over the labelled
examples' label cells, mixed into its prediction by each loss head's ``mix_examples``. Real torch
on a tiny store."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_sampler import make_shop

from tributary_core.loss import LossHead
from tributary_core.registry import get_registry
from tributary_core.sampler import HashSplit, SamplerGraph, sample_batch
from tributary_core.train import TrainConfig, read_metrics, train
from tributary_core.train.model import RelationalTransformer


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    return make_shop(tmp_path_factory.mktemp("shop"), 0, 40, 60, 80, dimension=8)


def _batch(shop, task, icl_share=0.5, n=6, context_len=48):
    graph = SamplerGraph.from_store(shop)
    view = graph.task(task)
    batch = sample_batch(graph, view, np.arange(n), context_len=context_len, width=3,
                         examples=view.examples(HashSplit()), icl_share=icl_share)
    return graph, batch.to_torch()


def _model(graph, pointer=True):
    torch.manual_seed(0)
    return RelationalTransformer(graph.stype_names, 8, d_model=24, n_layers=1, n_heads=3,
                                 example_pointer=pointer).eval()


def _embeddings(shop):
    return (torch.from_numpy(np.asarray(shop.column_embeddings, np.float32)),
            torch.from_numpy(np.asarray(shop.vocab_embeddings, np.float32)))


def test_heads_mix_the_examples_labels_in_their_own_terms():
    registry = get_registry()
    weights = torch.tensor([[0.5, 0.25, 0.25]])
    # BCE: p = 0.5 mixed half and half with the examples' share of true (0.75) -> 0.625
    bce = registry.loss_head("bce")
    batch = {"boolean": torch.tensor([[True, True, False]])}
    mixed = bce.mix_examples(torch.tensor([0.0]), weights, torch.tensor([0.5]), batch)
    assert math.isclose(float(torch.sigmoid(mixed)), 0.625, rel_tol=1e-5)
    # InfoNCE: votes for the candidates (10: 0.75, 20: 0.25), all of the gate: their logarithms
    infonce = registry.loss_head("infonce")
    batch = {"vocab": torch.tensor([[10, 20, 10]]), "candidates": torch.tensor([10, 20])}
    mixed = infonce.mix_examples(torch.zeros(1, 2), weights, torch.tensor([1.0]), batch)
    torch.testing.assert_close(mixed.exp(), torch.tensor([[0.75, 0.25]]), atol=1e-6, rtol=0)
    # Huber: value 1 mixed half and half with the examples' mean label (2*0.5 + 4*0.25 + 8*0.25 = 4)
    huber = registry.loss_head("huber")
    batch = {"number": torch.tensor([[2.0, 4.0, 8.0]]), "target_stype": "numerical"}
    mixed = huber.mix_examples(torch.tensor([[1.0]]), weights, torch.tensor([0.5]), batch)
    torch.testing.assert_close(mixed, torch.tensor([[2.5]]))
    # a head that does not say how: its prediction as it is
    prediction = torch.tensor([0.3])
    assert LossHead.mix_examples(bce, prediction, weights, torch.tensor([1.0]), {}) is prediction


@pytest.mark.parametrize("task", ["big_order", "user_kind"])
def test_pointer_reads_only_visible_label_cells(shop, task):
    """The weights cover exactly the label cells; hiding them all (masked) or having none leaves
    the head's own prediction; changing a label cell's value changes the prediction."""
    graph, batch = _batch(shop, task)
    assert batch["is_label"].any()
    model = _model(graph)
    col, voc = _embeddings(shop)
    with torch.no_grad():
        out = model(batch, col, voc)
        assert "example_gate" in out
        x = out["hidden"]
        target = x[torch.arange(len(x)), batch["target_pos"].long()]
        weights, gate = model.pointer(target, x, batch["is_label"])
        assert torch.all(weights[~batch["is_label"]] == 0)
        has = batch["is_label"].any(1)
        torch.testing.assert_close(weights.sum(1)[has], torch.ones(int(has.sum())))
        assert torch.all(gate[~has] == 0)
        plain = _model(graph, pointer=False)
        plain.load_state_dict({k: v for k, v in model.state_dict().items()
                               if not k.startswith("pointer.")})
        own = plain(batch, col, voc)["prediction"]
        hidden = dict(batch, is_masked=batch["is_label"].clone())  # every label cell masked
        masked = model(hidden, col, voc)
        assert "example_gate" not in masked
        unmasked_plain = plain(hidden, col, voc)["prediction"]
        torch.testing.assert_close(masked["prediction"], unmasked_plain)
        none = dict(batch, is_label=torch.zeros_like(batch["is_label"]))
        torch.testing.assert_close(model(none, col, voc)["prediction"], own)
        # the examples' labels reach the prediction through the pointer
        changed = dict(batch)
        if task == "big_order":
            changed["boolean"] = torch.where(batch["is_label"], ~batch["boolean"], batch["boolean"])
        else:
            cands = batch["candidates"]
            flip = torch.where(batch["vocab"] == cands[0], cands[-1], cands[0])
            changed["vocab"] = torch.where(batch["is_label"], flip, batch["vocab"])
        assert not torch.allclose(model(changed, col, voc)["prediction"], out["prediction"])


def test_training_with_examples_and_pointer(shop, tmp_path):
    config = TrainConfig(stores=[str(shop.path)], steps=4, batch_size=4, seq_len=40, width=3,
                         d_model=24, n_layers=1, n_heads=3, warmup=1, val_every=2, val_batches=1,
                         ckpt_every=2, icl_share=0.4, example_pointer=True, mask_share=0.3)
    train(config, tmp_path / "run")
    rows = read_metrics(tmp_path / "run")
    assert all(math.isfinite(r["loss"]) for r in rows if "loss" in r)
    assert any("val_loss" in r for r in rows)
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert any(k.startswith("pointer.") for k in state["model"])


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_mixing_keeps_gradients_finite_at_unanimous_examples(share):
    """Every example true (or false) gave log(0) in the mix and a NaN gradient, which stopped a
    700-step run at step 64; the gradients stay finite at any gate."""
    registry = get_registry()
    for gate in (0.0, 0.5, 1.0):
        weights = torch.tensor([[0.5, 0.5, 0.0]], requires_grad=True)
        g = torch.tensor([gate], requires_grad=True)
        x = torch.tensor([4.0], requires_grad=True)
        batch = {"boolean": torch.tensor([[bool(share), bool(share), False]])}
        registry.loss_head("bce").mix_examples(x, weights, g, batch).sum().backward()
        scores = torch.tensor([[4.0, -4.0]], requires_grad=True)
        batch = {"vocab": torch.tensor([[1, 1, 2]]), "candidates": torch.tensor([1, 2])}
        registry.loss_head("infonce").mix_examples(scores, weights, g, batch).sum().backward()
        for t in (weights, g, x, scores):
            assert torch.isfinite(t.grad).all(), (share, gate)
