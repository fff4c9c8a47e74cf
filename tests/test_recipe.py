"""The training recipe options (docs/training.md "Training recipe"): QK-norm, zero-init,
log-scaled attention, full attention, Muon, weight EMA and periodic numeric encoding. Real torch
steps on a tiny store; every run here takes a second or two."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import assert_train_refuses
from test_sampler import make_shop

from tributary_core.cli import cli
from tributary_core.errors import TributaryError
from tributary_core.nn import LinearEncoder, PeriodicEncoder
from tributary_core.registry import get_registry
from tributary_core.sampler import SamplerGraph, sample_batch
from tributary_core.semantic_type import SemanticType
from tributary_core.train import TrainConfig, load_run, read_metrics, train
from tributary_core.train.model import (
    LOG_SCALE_BASE,
    RelationalTransformer,
    _Block,
    attention_masks,
    log_scales,
    value_encoder,
)
from tributary_core.train.trainer import _Average, _Optimizers, checkpoints, read_config

#: Every recipe option switched on (n_heads 4 for the full-attention group).
ALL_ON = dict(qk_norm=True, zero_init=True, log_scale_attention=True, full_attention=True,
              optimizer="muon", ema=0.9, numeric_encoding="periodic")
RECIPE_FIELDS = ("qk_norm", "zero_init", "log_scale_attention", "full_attention", "optimizer",
                 "muon_lr", "ema", "numeric_encoding")


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    return make_shop(tmp_path_factory.mktemp("shop"), 0, 40, 60, 80, dimension=8)


def small_config(store, **kw) -> TrainConfig:
    base = dict(stores=[str(store.path)], steps=6, batch_size=4, seq_len=32, width=3, d_model=24,
                n_layers=2, n_heads=4, warmup=2, val_every=3, val_batches=1, ckpt_every=3, lr=3e-3)
    base.update(kw)
    return TrainConfig(**base)


def tensors(shop, task="big_order", n=4, context_len=40):
    graph = SamplerGraph.from_store(shop)
    batch = sample_batch(graph, graph.task(task), np.arange(n), context_len=context_len, width=3)
    return graph, batch.to_torch()


def embeddings(shop):
    return (torch.from_numpy(np.asarray(shop.column_embeddings, np.float32)),
            torch.from_numpy(np.asarray(shop.vocab_embeddings, np.float32)))


# -- settings -----------------------------------------------------------------------------------


def test_defaults_are_the_behaviour_from_before_and_old_configs_load(shop):
    config = small_config(shop)
    assert (config.qk_norm, config.zero_init, config.log_scale_attention, config.full_attention,
            config.optimizer, config.ema, config.numeric_encoding) == (
        False, False, False, False, "adamw", 0.0, "linear")
    saved = config.to_json()
    assert set(RECIPE_FIELDS) <= set(saved)
    old = {k: v for k, v in saved.items() if k not in RECIPE_FIELDS}  # a config.json from before
    assert TrainConfig.from_json(old) == config
    on = small_config(shop, **ALL_ON, muon_lr=0.05)
    assert TrainConfig.from_json(json.loads(json.dumps(on.to_json()))) == on


@pytest.mark.parametrize(("change", "message"), [
    (dict(optimizer="sgd"), "--optimizer 'sgd': must be one of adamw, muon"),
    (dict(muon_lr=0.0), "--muon-lr 0.0: must be a positive finite number"),
    (dict(ema=1.0), "--ema 1.0: must be a decay in [0, 1)"),
    (dict(ema=-0.1), "--ema -0.1"),
    (dict(numeric_encoding="fourier"), "--numeric-encoding 'fourier': must be one of"),
    (dict(n_heads=3, d_model=24, full_attention=True), "--heads 3: --full-attention needs at least 4"),
    (dict(qk_norm="yes"), "--qk-norm 'yes': must be true or false"),
])
def test_bad_settings_are_refused(shop, tmp_path, change, message):
    with pytest.raises(TributaryError) as caught:
        train(small_config(shop, **change), tmp_path / "run")
    assert message in str(caught.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("args", "fragment"), [
    (["--optimizer", "sgd"], "--optimizer"),
    (["--ema", "1.5"], "--ema 1.5"),
    (["--heads", "3", "--full-attention"], "--heads 3: --full-attention needs at least 4 heads"),
    (["--numeric-encoding", "fourier"], "--numeric-encoding"),
    (["--muon-lr", "-1"], "--muon-lr -1.0"),
    (["--icl-share", "1"], "--icl-share"),
    (["--icl-share", "-0.1"], "--icl-share"),
])
def test_cli_refuses_bad_values_in_one_line(shop, tmp_path, args, fragment):
    assert_train_refuses(shop.path, tmp_path, args, fragment)


def test_cli_options_reach_config_json(shop, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "run", "train", "--db", str(shop.path), "--steps", "2", "--batch-size", "4", "--seq-len",
        "16", "--d-model", "12", "--layers", "1", "--heads", "4", "--warmup", "1", "--val-every",
        "2", "--ckpt-every", "2", "--qk-norm", "--zero-init", "--log-scale-attention",
        "--full-attention", "--optimizer", "muon", "--muon-lr", "0.01", "--ema", "0.5",
        "--numeric-encoding", "periodic", "--out", str(out)])
    assert result.exit_code == 0, result.output
    config = read_config(out)
    assert {k: getattr(config, k) for k in RECIPE_FIELDS} == dict(ALL_ON, ema=0.5, muon_lr=0.01)


# -- each option trains -------------------------------------------------------------------------


@pytest.mark.parametrize("option", [dict(qk_norm=True), dict(zero_init=True),
                                    dict(log_scale_attention=True), dict(full_attention=True),
                                    dict(optimizer="muon"), dict(ema=0.9),
                                    dict(numeric_encoding="periodic"), ALL_ON],
                         ids=["qk_norm", "zero_init", "log_scale", "full", "muon", "ema", "periodic",
                              "all"])
def test_each_option_trains(shop, tmp_path, option):
    train(small_config(shop, **option), tmp_path / "run")
    rows = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert any(r.get("val_loss") is not None and math.isfinite(r["val_loss"]) for r in rows)
    if option.get("optimizer") == "muon":
        assert all(r["muon_lr"] > 0 for r in rows)
    run = load_run(tmp_path / "run")  # the run loads back into the architecture it trained
    assert run.model.full_attention == bool(option.get("full_attention"))


# -- resume -------------------------------------------------------------------------------------


class Stop(Exception):
    pass


def test_every_option_on_resumes_exactly(shop, tmp_path):
    """A run with every option on, stopped after its step-6 checkpoint and run again, logs the
    losses of an uninterrupted run and ends with the same weights (raw and averaged)."""
    config = small_config(shop, **ALL_ON, steps=12, ckpt_every=3, val_every=4)
    train(config, tmp_path / "whole")

    def stop_after_six(row):
        if row["step"] == 7:  # step 6 wrote its checkpoint; step 7 is logged, then lost
            raise Stop

    with pytest.raises(Stop):
        train(config, tmp_path / "cut", progress=stop_after_six)
    assert checkpoints(tmp_path / "cut")[-1].name == "step-00000006.pt"
    train(config, tmp_path / "cut")
    a = [(r["step"], r["loss"], r.get("val_loss")) for r in read_metrics(tmp_path / "whole")]
    b = [(r["step"], r["loss"], r.get("val_loss")) for r in read_metrics(tmp_path / "cut")]
    assert [s for s, _, _ in b] == list(range(1, 13))
    np.testing.assert_allclose([x for _, x, _ in b], [x for _, x, _ in a], rtol=1e-5, atol=1e-6)
    assert [v is None for *_, v in a] == [v is None for *_, v in b]
    np.testing.assert_allclose([v for *_, v in b if v is not None],
                               [v for *_, v in a if v is not None], rtol=1e-5, atol=1e-6)
    for name in ("model.pt", "checkpoints/step-00000012.pt"):
        wa = torch.load(tmp_path / "whole" / name, weights_only=True)
        wb = torch.load(tmp_path / "cut" / name, weights_only=True)
        parts = [p for p in ("model", "ema") if isinstance(wa.get(p), dict)]
        assert parts == (["model"] if name == "model.pt" else ["model", "ema"])
        for part in parts:
            assert all(torch.allclose(wa[part][k], wb[part][k], atol=1e-5) for k in wa[part])


# -- Muon ---------------------------------------------------------------------------------------


def test_muon_takes_the_block_matrices_and_its_checkpoint_round_trips(shop, tmp_path):
    config = small_config(shop, optimizer="muon", steps=4, ckpt_every=2, val_every=4)
    train(config, tmp_path / "run")
    state = torch.load(checkpoints(tmp_path / "run")[-1], weights_only=True)
    assert set(state["optimizer"]) == set(state["scheduler"]) == {"adamw", "muon"}
    model = build(shop, config)
    optimizers = _Optimizers(model, config)
    muon = {id(p) for g in optimizers.optimizers["muon"].param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert muon == {id(p) for n, p in named.items() if n.startswith("blocks.") and p.dim() == 2}
    adamw = {id(p) for g in optimizers.optimizers["adamw"].param_groups for p in g["params"]}
    assert not adamw & muon and len(adamw | muon) == len(named)
    assert optimizers.optimizers["muon"].param_groups[0]["lr"] == pytest.approx(
        config.muon_lr * 0.5)  # warm-up step 1 of 2, the AdamW schedule's factor
    optimizers.load_state_dict(state["optimizer"], state["scheduler"], tmp_path)
    again = optimizers.state_dict()
    assert again[1] == state["scheduler"]
    saved = state["optimizer"]["muon"]["state"]
    assert saved and all("momentum_buffer" in s for s in saved.values())
    for key, entry in saved.items():
        assert torch.equal(again[0]["muon"]["state"][key]["momentum_buffer"], entry["momentum_buffer"])
    # a checkpoint of a plain run holds its states by name too, and a pre-Muon one (a bare
    # AdamW state) still loads
    plain = small_config(shop, steps=2, ckpt_every=2, val_every=2)
    train(plain, tmp_path / "plain")
    state = torch.load(checkpoints(tmp_path / "plain")[-1], weights_only=True)
    assert set(state["optimizer"]) == {"adamw"}
    old = _Optimizers(build(shop, plain), plain)
    old.load_state_dict(state["optimizer"]["adamw"], state["scheduler"]["adamw"], tmp_path)
    assert old.state_dict()[1] == state["scheduler"]
    with pytest.raises(TributaryError, match=r"its optimizer state \(adamw\) does not fit"):
        optimizers.load_state_dict(state["optimizer"], state["scheduler"], tmp_path / "x.pt")


def test_old_checkpoint_with_one_adamw_state_resumes(shop, tmp_path):
    """A checkpoint written before Muon existed ("optimizer": one AdamW state dict) resumes."""
    config = small_config(shop, steps=6, ckpt_every=3, val_every=3)
    train(config, tmp_path / "whole")

    def stop(row):
        if row["step"] == 4:
            raise Stop

    with pytest.raises(Stop):
        train(config, tmp_path / "cut", progress=stop)
    path = checkpoints(tmp_path / "cut")[-1]
    state = torch.load(path, weights_only=True)
    state["optimizer"], state["scheduler"] = state["optimizer"]["adamw"], state["scheduler"]["adamw"]
    torch.save(state, path)
    train(config, tmp_path / "cut")
    a = [r["loss"] for r in read_metrics(tmp_path / "whole")]
    b = [r["loss"] for r in read_metrics(tmp_path / "cut")]
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def build(shop, config):
    from tributary_core.train.trainer import build_model

    return build_model(config, shop.embedder.dimension)


# -- EMA ----------------------------------------------------------------------------------------


def test_ema_weights_differ_from_the_raw_ones_and_are_model_pt(shop, tmp_path):
    config = small_config(shop, ema=0.9, steps=6, ckpt_every=6, val_every=6)
    returned = train(config, tmp_path / "run")
    final = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    ckpt = torch.load(checkpoints(tmp_path / "run")[-1], weights_only=True)
    assert final["ema"] == 0.9 and ckpt["step"] == 6
    assert set(final["model"]) == set(ckpt["model"]) == set(ckpt["ema"])
    assert all(torch.equal(final["model"][k], ckpt["ema"][k]) for k in final["model"])
    assert any(not torch.allclose(ckpt["model"][k], ckpt["ema"][k]) for k in ckpt["model"])
    assert all(torch.equal(v, final["model"][k]) for k, v in returned.state_dict().items())
    loaded = load_run(tmp_path / "run").model.state_dict()  # evaluate/predict load the average
    assert all(torch.equal(loaded[k], final["model"][k]) for k in final["model"])


def test_ema_update_rule():
    model = torch.nn.Linear(2, 2)
    average = _Average(model, 0.99)
    start = average.model.weight.detach().clone()
    assert not average.model.weight.requires_grad
    with torch.no_grad():
        model.weight.add_(1.0)
    average.update(model, 1)  # warm-up: decay min(0.99, 2 / 11)
    d = 2 / 11
    torch.testing.assert_close(average.model.weight, d * start + (1 - d) * model.weight.detach())
    before = average.model.weight.detach().clone()
    average.update(model, 10_000)  # past the warm-up: the decay itself
    torch.testing.assert_close(average.model.weight, 0.99 * before + 0.01 * model.weight.detach())


# -- model pieces -------------------------------------------------------------------------------


def test_full_attention_mask(shop):
    graph, t = tensors(shop, task="user_kind", context_len=64)
    pad = t["is_padding"]
    assert pad.any()
    masks = attention_masks(t["row"], t["row_parents"], t["column_id"], pad, full=True)
    three = attention_masks(t["row"], t["row_parents"], t["column_id"], pad)
    assert masks.shape[1] == 4 and torch.equal(masks[:, :3], three)
    full = masks[:, 3]
    S = full.shape[-1]
    eye = torch.eye(S, dtype=torch.bool)
    assert full[:, eye].all()  # every position sees itself
    real = ~pad
    # real cells see every real cell and no padding; padding sees only itself
    assert torch.equal(full, (real[:, :, None] & real[:, None, :]) | eye)
    assert not (full & pad[:, None, :] & ~eye).any()
    # every pattern is contained in the full one
    assert not (three & ~full[:, None]).any()


def test_full_attention_group_sees_every_real_cell(shop):
    """With full attention, changing any real cell moves a real cell's output (in one layer),
    and changing padding never does."""
    graph, t = tensors(shop, task="user_kind", context_len=64)
    allowed = attention_masks(t["row"], t["row_parents"], t["column_id"], t["is_padding"],
                              full=True)
    additive = [torch.zeros(allowed.shape[0], 1, *allowed.shape[2:]).masked_fill(
        ~allowed[:, p:p + 1], float("-inf")) for p in range(4)]
    torch.manual_seed(0)
    block = _Block(12, 4, 24, 0.0, n_patterns=4).eval()
    x = torch.randn(4, 64, 12)
    base = block(x, additive)
    b = int(t["is_padding"].any(1).nonzero()[0, 0])  # a context with padding
    n_real = int((~t["is_padding"][b]).sum())
    assert not t["is_padding"][b, :n_real].any()  # padding comes last
    for j in (1, n_real - 1, n_real, 63):
        y = x.clone()
        y[b, j] += 3.0 * torch.randn(12)
        changed = not torch.allclose(block(y, additive)[b, 0], base[b, 0], atol=1e-6)
        assert changed == bool(j < n_real)


def test_heads_split_into_four_groups():
    assert _Block(24, 4, 48, 0.0, n_patterns=4).groups == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert _Block(24, 8, 48, 0.0, n_patterns=4).groups == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert _Block(24, 4, 48, 0.0).groups == [(0, 2), (2, 3), (3, 4)]  # as before
    with pytest.raises(ValueError, match="at least 4"):
        _Block(24, 3, 48, 0.0, n_patterns=4)


def test_zero_init_blocks_start_as_the_identity():
    torch.manual_seed(0)
    block = _Block(12, 3, 24, 0.0, zero_init=True)
    assert not block.proj.weight.any() and not block.ff[-1].weight.any()
    x = torch.randn(2, 5, 12)
    masks = [torch.zeros(2, 1, 5, 5)] * 3
    torch.testing.assert_close(block(x, masks), x)
    assert _Block(12, 3, 24, 0.0).proj.weight.any()


def test_qk_norm_normalises_queries_and_keys_per_head():
    torch.manual_seed(0)
    plain = _Block(12, 3, 24, 0.0)
    normed = _Block(12, 3, 24, 0.0, qk_norm=True)
    assert isinstance(normed.q_norm, torch.nn.RMSNorm) and normed.q_norm.weight.shape == (4,)
    # without it no parameter is added: weights from before load unchanged
    assert set(plain.state_dict()) == set(normed.state_dict()) - {"q_norm.weight", "k_norm.weight"}
    normed.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(2, 5, 12)
    masks = [torch.zeros(2, 1, 5, 5)] * 3
    with torch.no_grad():
        normed.qkv.weight.mul_(100.0)  # huge queries and keys: the logits stay bounded
        normed.qkv.bias.mul_(100.0)
    assert torch.isfinite(normed(x, masks)).all()


def test_log_scales_follow_the_key_counts():
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 0, :] = True  # 4 keys
    mask[0, 1, 1] = True  # 1 key: clamped at 2
    mask[0, 2, :3] = True
    mask[0, 3, :2] = True
    (scale,) = log_scales([mask], torch.float32)
    assert scale.shape == (1, 1, 4, 1)
    expected = torch.tensor([math.log(4), math.log(2), math.log(3), math.log(2)]) / math.log(LOG_SCALE_BASE)
    torch.testing.assert_close(scale[0, 0, :, 0], expected)


def test_log_scale_attention_changes_the_model_and_scales_its_queries(shop):
    graph, t = tensors(shop)
    col, voc = embeddings(shop)
    torch.manual_seed(0)
    plain = RelationalTransformer(graph.stype_names, 8, d_model=12, n_layers=1, n_heads=3).eval()
    scaled = RelationalTransformer(graph.stype_names, 8, d_model=12, n_layers=1, n_heads=3,
                                   log_scale_attention=True).eval()
    scaled.load_state_dict(plain.state_dict())  # no new parameters
    a, b = plain(t, col, voc)["prediction"], scaled(t, col, voc)["prediction"]
    assert torch.isfinite(b).all() and not torch.allclose(a, b)


def test_periodic_encoder_is_finite_and_its_frequencies_learn():
    torch.manual_seed(0)
    encoder = PeriodicEncoder(1, 16)
    values = torch.cat([torch.linspace(-50, 50, 64), torch.tensor([0.0, 1e4, -1e4])])[:, None]
    out = encoder(values)
    assert out.shape == (67, 16) and torch.isfinite(out).all() and (out >= 0).all()
    out.pow(2).sum().backward()
    assert encoder.frequencies.grad is not None and encoder.frequencies.grad.abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(encoder(values.bfloat16())).all()


def test_numeric_encoding_reaches_the_numerical_encoder_and_third_party_types_still_work(shop):
    registry = get_registry()
    numerical = registry.semantic_type("numerical")
    assert isinstance(value_encoder(numerical, 12, 8, {"numeric_encoding": "periodic"}),
                      PeriodicEncoder)
    assert isinstance(value_encoder(numerical, 12, 8, {"numeric_encoding": "linear"}),
                      LinearEncoder)
    assert isinstance(numerical.value_encoder(12, 8), LinearEncoder)  # the plain interface

    class OldStyle(SemanticType):  # a third-party type written before options existed
        name = "old_style"
        batch_slot = "number"

        def value_encoder(self, d_model, d_text):
            return torch.nn.Linear(1, d_model)

    assert isinstance(value_encoder(OldStyle(), 12, 8, {"numeric_encoding": "periodic"}),
                      torch.nn.Linear)
    graph, t = tensors(shop)
    col, voc = embeddings(shop)
    torch.manual_seed(0)
    model = RelationalTransformer(graph.stype_names, 8, d_model=12, n_layers=1, n_heads=3,
                                  numeric_encoding="periodic")
    assert isinstance(model.value["numerical"], PeriodicEncoder)
    assert isinstance(model.value["timestamp"], LinearEncoder)  # other types as before
    model(t, col, voc)["prediction"].sum().backward()
    assert model.value["numerical"].frequencies.grad.abs().sum() > 0


# -- --init -------------------------------------------------------------------------------------


def test_init_needs_the_same_architecture_flags(shop, tmp_path):
    train(small_config(shop, steps=2, val_every=2, ckpt_every=2, qk_norm=True), tmp_path / "a")
    with pytest.raises(TributaryError, match=r"--init .*: its qk_norm is True, this run's False"):
        train(small_config(shop, steps=2, init=str(tmp_path / "a")), tmp_path / "b")
    assert not (tmp_path / "b").exists()
    # the command line takes the architecture from the run it starts from
    result = CliRunner().invoke(cli, [
        "run", "train", "--db", str(shop.path), "--steps", "2", "--batch-size", "4", "--seq-len",
        "32", "--warmup", "1", "--val-every", "2", "--ckpt-every", "2", "--init",
        str(tmp_path / "a"), "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    config = read_config(tmp_path / "c")
    assert config.qk_norm and (config.d_model, config.n_heads) == (24, 4)
