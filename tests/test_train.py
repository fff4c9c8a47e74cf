"""Loss heads, the model's attention masks, training with real torch steps, resume after
SIGKILL, divergence, DDP on two gloo processes, evaluation and prediction."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from test_sampler import make_shop

from tributary_core import get_registry
from tributary_core.cli import cli
from tributary_core.metrics import auroc, macro_f1, r2
from tributary_core.sampler import Sampler, SamplerGraph, sample_batch
from tributary_core.train import TrainConfig, evaluate, load_run, predict, read_metrics, train
from tributary_core.train.model import RelationalTransformer, _Block, attention_masks
from tributary_core.train.trainer import batch_loss, build_model


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    return make_shop(tmp_path_factory.mktemp("shop"), 0, 40, 60, 80, dimension=8)


def small_config(store, **kw) -> TrainConfig:
    base = dict(stores=[str(store.path)], steps=8, batch_size=4, seq_len=32, width=3, d_model=24,
                n_layers=2, n_heads=3, warmup=2, val_every=4, val_batches=2, ckpt_every=4, lr=3e-3)
    base.update(kw)
    return TrainConfig(**base)


# -- loss heads (their contract runs through tributary_core.testing in test_contracts.py) -------


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=2, max_size=30))
def test_auroc_is_the_pairwise_probability(pairs):
    score = torch.tensor([float(s) for s, _ in pairs])
    label = torch.tensor([y for _, y in pairs])
    pos, neg = score[label], score[~label]
    got = auroc(score, label)
    if len(pos) == 0 or len(neg) == 0:
        assert np.isnan(got)
        return
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    assert got == pytest.approx(wins / (len(pos) * len(neg)))


def test_macro_f1_and_r2():
    pred, label = torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 2])
    # class 0: tp1 fp1 fn0 -> 2/3; class 1: tp1 fp0 fn1 -> 2/3; class 2: 1
    assert macro_f1(pred, label) == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert r2(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 3.0])) == 1.0
    assert r2(torch.tensor([2.0, 2.0, 2.0]), torch.tensor([1.0, 2.0, 3.0])) == 0.0


# -- attention masks --------------------------------------------------------------------------


def _masks_by_definition(batch, i):
    n = int(batch.n_cells[i])
    S = batch.row.shape[1]
    col, row = batch.column_id[i], batch.row[i]
    refs = {(k, int(p)) for k in range(int(batch.n_rows[i])) for p in batch.row_parents[i, k] if p >= 0}
    out = np.zeros((3, S, S), dtype=bool)
    for a in range(S):
        for b in range(S):
            if a == b:
                out[:, a, b] = True
            elif a < n and b < n:
                same = row[a] == row[b]
                out[0, a, b] = col[a] == col[b]
                out[1, a, b] = same or (int(row[a]), int(row[b])) in refs
                out[2, a, b] = same or (int(row[b]), int(row[a])) in refs
    return out


def test_attention_masks_follow_their_definitions(shop):
    graph = SamplerGraph.from_store(shop)
    view = graph.task("big_order")
    batch = sample_batch(graph, view, np.arange(6), context_len=40, width=3)
    t = batch.to_torch()
    masks = attention_masks(t["row"], t["row_parents"], t["column_id"], t["is_padding"]).numpy()
    for i in range(len(batch)):
        np.testing.assert_array_equal(masks[i], _masks_by_definition(batch, i))


@pytest.mark.parametrize("pattern", [0, 1, 2])
def test_each_mask_is_all_a_cell_sees(shop, pattern):
    """Changing a cell outside a cell's allowed set leaves that cell's output unchanged, and
    changing one inside changes it."""
    graph = SamplerGraph.from_store(shop)
    batch = sample_batch(graph, graph.task("big_order"), np.arange(3), context_len=40, width=3).to_torch()
    allowed = attention_masks(batch["row"], batch["row_parents"], batch["column_id"], batch["is_padding"])
    mask = torch.zeros(allowed.shape[0], 1, *allowed.shape[2:]).masked_fill(~allowed[:, pattern:pattern + 1],
                                                                              float("-inf"))
    torch.manual_seed(0)
    block = _Block(12, 3, 24, 0.0).eval()
    x = torch.randn(3, 40, 12)
    base = block(x, [mask, mask, mask])
    checked_out = checked_in = 0
    for b in range(3):
        for i in (0, 5, 17):
            for j in range(40):
                if i == j:
                    continue
                y = x.clone()
                y[b, j] += 3.0 * torch.randn(12)  # not a constant shift: LayerNorm removes those
                changed = not torch.allclose(block(y, [mask, mask, mask])[b, i], base[b, i], atol=1e-6)
                if allowed[b, pattern, i, j]:
                    checked_in += 1
                    assert changed
                else:
                    checked_out += 1
                    assert not changed
    assert checked_out > 50 and checked_in > 5


def test_padding_never_reaches_real_cells(shop):
    graph = SamplerGraph.from_store(shop)
    batch = sample_batch(graph, graph.task("user_kind"), np.arange(4), context_len=64, width=1).to_torch()
    assert batch["is_padding"].any()
    torch.manual_seed(0)
    model = RelationalTransformer(graph.stype_names, 8, d_model=12, n_layers=2, n_heads=3).eval()
    col = torch.from_numpy(np.asarray(shop.column_embeddings, np.float32))
    voc = torch.from_numpy(np.asarray(shop.vocab_embeddings, np.float32))
    out = model(batch, col, voc)
    noisy = dict(batch)
    pad = batch["is_padding"]
    noisy["number"] = batch["number"].masked_fill(pad, 123.0)
    noisy["column_id"] = batch["column_id"].masked_fill(pad, 1)
    noisy["stype"] = batch["stype"].masked_fill(pad, 1)
    again = model(noisy, col, voc)
    real = ~pad
    assert torch.allclose(out["hidden"][real], again["hidden"][real], atol=1e-6)
    assert torch.isfinite(out["hidden"]).all()


# -- training ---------------------------------------------------------------------------------


def test_training_runs_and_writes_a_run(shop, tmp_path):
    config = small_config(shop, steps=24, val_every=8, ckpt_every=8)
    train(config, tmp_path / "run")
    rows = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 25))
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert any("val_loss" in r for r in rows)
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl"))
    assert (tmp_path / "run" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert state["step"] == 24
    run = load_run(tmp_path / "run")
    results = evaluate(run, split="test")
    assert set(results) == {"shop/big_order", "shop/user_kind"}
    for entry in results.values():
        assert entry["labelled"] > 0 and entry["seeds"] >= entry["labelled"]
        assert set(entry["metrics"]) == set(entry["baseline"]) == set(
            get_registry().loss_head(entry["loss_head"]).metrics)
    table = predict(run, "big_order", seeds=[0, 3, 5])
    assert table.column("seed").to_pylist() == [0, 3, 5]
    probs = table.column("prediction").to_pylist()
    assert all(0.0 <= p <= 1.0 for p in probs)
    kinds = predict(run, "user_kind").column("prediction").to_pylist()
    assert set(kinds) <= {"a", "b", "c"} and len(kinds) == len(shop.tasks["user_kind"])


def test_learning_happens(shop, tmp_path):
    """A real signal (order amount > 50, with the amount visible) is learned in a few steps."""
    config = small_config(shop, tasks=["big_order"], steps=60, val_every=60, ckpt_every=60,
                          batch_size=16, lr=3e-3, warmup=5)
    train(config, tmp_path / "run")
    rows = [r["loss"] for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert np.mean(rows[-10:]) < np.mean(rows[:10])


def _cli_train(out, *extra):
    return [sys.executable, "-m", "tributary_core.cli", "run", "train", "--out", str(out), *extra]


def test_sigkill_then_resume_gives_the_same_losses(shop, tmp_path):
    args = ["--db", str(shop.path), "--steps", "40", "--batch-size", "4", "--seq-len", "32",
            "--d-model", "24", "--layers", "2", "--heads", "3", "--warmup", "3",
            "--val-every", "20", "--ckpt-every", "5"]
    whole = subprocess.run(_cli_train(tmp_path / "whole", *args), capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    proc = subprocess.Popen(_cli_train(tmp_path / "cut", *args), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if len(read_metrics(tmp_path / "cut")) >= 12:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    logged = len(read_metrics(tmp_path / "cut"))
    assert 12 <= logged < 40, "the run was not killed half-way"
    resumed = subprocess.run(_cli_train(tmp_path / "cut", *args), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a = [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "whole")]
    b = [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "cut")]
    assert [s for s, _ in b] == list(range(1, 41))
    np.testing.assert_allclose([x for _, x in b], [x for _, x in a], rtol=1e-5, atol=1e-6)
    wa = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)["model"]
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_divergence_stops_with_a_kept_checkpoint(shop, tmp_path):
    result = CliRunner().invoke(cli, ["run", "train", "--db", str(shop.path), "--steps", "50",
                                      "--batch-size", "4", "--seq-len", "16", "--d-model", "12",
                                      "--layers", "1", "--heads", "3", "--lr", "1e30", "--warmup", "0",
                                      "--ckpt-every", "1", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    line = result.output.strip().splitlines()[-1]
    assert "the loss is" in line and "training stopped; the last checkpoint is" in line
    kept = line.split("the last checkpoint is ")[1].split(". Lower")[0]
    state = torch.load(kept, weights_only=True)
    assert state["step"] >= 1 and "Traceback" not in result.output


def test_run_folder_with_other_settings_is_refused(shop, tmp_path):
    train(small_config(shop, steps=2, val_every=2, ckpt_every=2), tmp_path / "run")
    from tributary_core.errors import TributaryError

    with pytest.raises(TributaryError, match=r"holds a run with other settings \(lr\)"):
        train(small_config(shop, steps=2, val_every=2, ckpt_every=2, lr=1.0), tmp_path / "run")


def test_cli_evaluate_and_predict(shop, tmp_path):
    train(small_config(shop, steps=4, val_every=4, ckpt_every=4), tmp_path / "run")
    out = CliRunner().invoke(cli, ["run", "evaluate", "--run", str(tmp_path / "run"), "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert set(data["shop/big_order"]["metrics"]) == {"auroc", "accuracy"}
    table = CliRunner().invoke(cli, ["run", "evaluate", "--run", str(tmp_path / "run")])
    assert "baseline" in table.output and "shop/user_kind" in table.output
    capped = json.loads(CliRunner().invoke(cli, ["run", "evaluate", "--run", str(tmp_path / "run"),
                                                 "--max-seeds", "2", "--json"]).output)
    assert all(e["labelled"] <= 2 for e in capped.values())
    pred = CliRunner().invoke(cli, ["run", "predict", "--run", str(tmp_path / "run"), "--task",
                                    "user_kind", "--rows", "0-2,4", "--out", str(tmp_path / "p.parquet")])
    assert pred.exit_code == 0, pred.output
    assert pq.read_table(tmp_path / "p.parquet").column("seed").to_pylist() == [0, 1, 2, 4]
    bad = CliRunner().invoke(cli, ["run", "predict", "--run", str(tmp_path / "run"), "--task", "nope",
                                   "--out", str(tmp_path / "q.parquet")])
    assert bad.exit_code == 2 and "the run has no task 'nope'" in bad.output
    missing = CliRunner().invoke(cli, ["run", "evaluate", "--run", str(tmp_path)])
    assert missing.exit_code == 2 and "not a training run (no config.json)" in missing.output


def _renamed_copy(store, root, name, dimension):
    """The shop database again under another name (a second database), embedded at ``dimension``."""
    from test_sampler import SHOP_METADATA

    from tributary_core.preprocess import preprocess
    from tributary_core.store import open_store

    md = root / f"{name}.json"
    md.write_text(json.dumps(dict(SHOP_METADATA, name=name)))
    embedder = get_registry().create_embedder("hashing", dimension=dimension)
    preprocess(md, store.path.parent / "raw", root / name, embedder=embedder, force=True)
    return open_store(root / name)


def test_evaluate_on_tasks_and_databases_outside_the_run(shop, tmp_path):
    """Zero-shot evaluation: tasks the run never trained on, in its database or another one."""
    train(small_config(shop, tasks=["big_order"], steps=4, val_every=4, ckpt_every=4), tmp_path / "run")
    assert set(evaluate(tmp_path / "run", max_seeds=5)) == {"shop/big_order"}
    unseen = evaluate(tmp_path / "run", tasks=["user_kind"])
    assert set(unseen) == {"shop/user_kind"}
    assert unseen["shop/user_kind"]["labelled"] > 0
    assert set(unseen["shop/user_kind"]["metrics"]) == {"accuracy", "macro_f1"}
    mall = _renamed_copy(shop, tmp_path, "mall", dimension=8)
    elsewhere = evaluate(tmp_path / "run", stores=[mall])
    assert set(elsewhere) == {"mall/big_order", "mall/user_kind"}
    # same rows, same split, same weights: the renamed copy scores like the original
    assert elsewhere["mall/user_kind"]["metrics"] == unseen["shop/user_kind"]["metrics"]
    out = CliRunner().invoke(cli, ["run", "evaluate", "--run", str(tmp_path / "run"), "--db",
                                   str(mall.path), "--tasks", "user_kind", "--json"])
    assert out.exit_code == 0, out.output
    assert set(json.loads(out.output)) == {"mall/user_kind"}
    narrow = _renamed_copy(shop, tmp_path, "narrow", dimension=4)
    bad = CliRunner().invoke(cli, ["run", "evaluate", "--run", str(tmp_path / "run"), "--db",
                                   str(narrow.path)])
    assert bad.exit_code == 2 and f"store {narrow.path} was embedded with" in bad.output
    assert "Traceback" not in bad.output


# -- distributed ------------------------------------------------------------------------------


def _ddp_worker(rank, world, port, config, out, result_dir):
    import torch.distributed as dist

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = train(config, out)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()},
               f"{result_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_ddp_two_gloo_processes_match_one_process(shop, tmp_path):
    import torch.multiprocessing as mp

    from tributary_core.train.distributed import _free_port

    config = small_config(shop, steps=5, val_every=100, ckpt_every=100, batch_size=3)
    mp.spawn(_ddp_worker, args=(2, _free_port(), config, str(tmp_path / "run"), str(tmp_path)),
             nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(r0[k], r1[k]) for k in r0), "ranks hold different parameters"
    # the same steps in one process: each step's loss is the mean over both ranks' batches
    torch.manual_seed(config.seed)
    model = build_model(config, shop.embedder.dimension)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    from tributary_core.train.trainer import _schedule, store_embeddings

    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(config))
    samplers = [Sampler([shop], batch_size=3, context_len=config.seq_len, width=config.width,
                        seed=config.seed, rank=r, world_size=2, splitter=config.splitter())
                for r in range(2)]
    emb = {shop.name: store_embeddings(shop, torch.device("cpu"))}
    losses = []
    for step in range(1, config.steps + 1):
        parts = [batch_loss(model, s.batch_at(step), emb, torch.device("cpu"), config.null_weight)[0]
                 for s in samplers]
        loss = (parts[0] + parts[1]) / 2
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        opt.step()
        sched.step()
    logged = [r["loss"] for r in read_metrics(tmp_path / "run")]
    np.testing.assert_allclose(logged, losses, rtol=1e-4, atol=1e-5)
    single = model.state_dict()
    assert all(torch.allclose(single[k], r0[k], atol=1e-4) for k in r0)


def test_cli_nproc_two(shop, tmp_path):
    args = ["--db", str(shop.path), "--steps", "3", "--batch-size", "2", "--seq-len", "16",
            "--d-model", "12", "--layers", "1", "--heads", "3", "--val-every", "3", "--ckpt-every", "3",
            "--nproc", "2"]
    ok = subprocess.run(_cli_train(tmp_path / "run", *args), capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3]
    bad = subprocess.run(_cli_train(tmp_path / "bad", *args, "--lr", "1e30", "--warmup", "0",
                                    "--steps", "40", "--ckpt-every", "1"), capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("Error: step ")
    assert "the loss is" in bad.stderr and "Traceback" not in bad.stderr
    assert "Terminating process" not in bad.stderr


# -- pre-training, fine-tuning, quickstart ------------------------------------------------------


def test_masking_tasks_pretrain_then_finetune_frozen(shop, tmp_path):
    sampler = Sampler([shop], tasks=[], pretrain=True, batch_size=4, context_len=24)
    names = sorted(t.view.name for t in sampler.tasks)
    # every column that can be a target, and nothing else (no identifiers, no text)
    assert names == sorted(["orders.amount:mask", "orders.paid:mask", "orders.ts:mask",
                            "users.age:mask", "users.kind:mask", "items.price:mask"])
    batch = sampler.batch(next(t for t in sampler.tasks if t.view.name == "users.kind:mask"),
                          np.arange(4))
    kind_col = SamplerGraph.from_store(shop).column_index("users", "kind")
    assert (batch.cell_col[:, 0] == kind_col).all() and batch.is_target[:, 0].all()
    assert not ((batch.cell_col[:, 1:] == kind_col) & (batch.row[:, 1:] == 0)).any()
    assert [shop.vocab_values[v] for v in batch.target_vocab] == [
        shop.decode_row("users", int(r))["kind"] for r in batch.anchor_row]
    pre = small_config(shop, tasks=[], pretrain=True, steps=6, val_every=6, ckpt_every=6)
    train(pre, tmp_path / "pre")
    assert all(r["task"].endswith(":mask") for r in read_metrics(tmp_path / "pre"))
    base = torch.load(tmp_path / "pre" / "model.pt", weights_only=True)["model"]
    fine = small_config(shop, tasks=["big_order"], steps=4, val_every=4, ckpt_every=4,
                        init=str(tmp_path / "pre"), freeze_backbone=True)
    model = train(fine, tmp_path / "fine")
    after = model.state_dict()
    frozen = [k for k in base if not k.startswith(("heads.", "null_head."))]
    assert frozen and all(torch.equal(base[k], after[k]) for k in frozen)
    assert any(not torch.equal(base[k], after[k]) for k in base if k.startswith("heads.bool"))


def test_init_refuses_another_architecture(shop, tmp_path):
    from tributary_core.errors import TributaryError

    train(small_config(shop, steps=2, val_every=2, ckpt_every=2), tmp_path / "a")
    with pytest.raises(TributaryError, match=r"--init .*: its d_model is 24, this run's 48"):
        train(small_config(shop, steps=2, d_model=48, init=str(tmp_path / "a")), tmp_path / "b")
    assert not (tmp_path / "b").exists()  # a refused run leaves no folder behind
    with pytest.raises(TributaryError, match=r"no task 'nope' in the stores"):
        train(small_config(shop, tasks=["nope"]), tmp_path / "c")
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_quickstart(tmp_path, monkeypatch):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "metadata").mkdir(parents=True)
    (tmp_path / "data" / "metadata" / "nycflights13.json").write_text(
        (repo / "data" / "metadata" / "nycflights13.json").read_text())
    result = CliRunner().invoke(cli, ["run", "quickstart", "--steps", "4", "--eval-seeds", "64",
                                      "--embedder", "hashing"])
    assert result.exit_code == 0, result.output
    assert "nycflights13/flight_delayed" in result.output and "baseline" in result.output
    assert (tmp_path / "runs" / "quickstart" / "curves.png").exists()
    again = CliRunner().invoke(cli, ["run", "quickstart", "--steps", "4", "--eval-seeds", "64",
                                     "--embedder", "hashing"])
    assert again.exit_code == 0 and "is up to date" in again.output


def test_lightgbm_baseline_uses_visible_features_only(shop, tmp_path):
    from tributary_core.baselines import lightgbm_baseline, task_features

    sampler = Sampler([shop], tasks=["big_order"])
    task = sampler.tasks[0]
    X, names, cats = task_features(shop, task, task.seeds[:20])
    assert X.shape == (20, len(names))
    assert "amount" not in names  # hidden for this task
    assert "paid" in names and "user_id__users_age" in names  # its own row, and one hop out
    assert [names[i] for i in cats] == ["user_id__users_kind"]  # text (note) is left out
    results = lightgbm_baseline([shop], tasks=["big_order", "user_kind"], rounds=20)
    assert set(results["shop/big_order"]["metrics"]) == {"auroc", "accuracy"}
    out = CliRunner().invoke(cli, ["run", "baseline", "--db", str(shop.path), "--tasks", "big_order",
                                   "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["shop/big_order"]["labelled"] > 0


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("full_attention", [False, True])
def test_flex_attention_gives_the_dense_masks_outputs(shop, full_attention):
    """FlexAttention with block masks (the GPU path) computes what the dense masked SDPA does:
    the same loss and outputs for the same weights and batch (masked cells and labelled
    examples included, log-scaled queries too). Uncompiled, on the CPU, where torch has no
    backward for it: there it runs without gradients, and a training step keeps SDPA."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    from tributary_core.train import model as model_module
    from tributary_core.train.trainer import store_embeddings

    config = small_config(shop, seq_len=48, n_heads=4, mask_share=0.3, icl_share=0.25,
                          log_scale_attention=True, full_attention=full_attention)
    torch.manual_seed(0)
    model = build_model(config, shop.embedder.dimension)
    sampler = Sampler([shop], batch_size=6, context_len=48, width=3, icl_share=0.25,
                      mask_share=0.3)
    batch = sampler.batch_at(0)
    assert batch.is_masked.any() and not batch.is_padding.all()
    embeddings = {shop.name: store_embeddings(shop, torch.device("cpu"))}
    used = []
    real = model_module.block_masks

    def counting(allowed, *args, **kw):
        used.append(len(allowed))
        return real(allowed, *args, **kw)

    model_module.block_masks = counting
    try:
        results = {}
        for kernel in ("sdpa", "flex"):
            model.set_attention(kernel)
            with torch.no_grad():
                loss, out = batch_loss(model, batch, embeddings, torch.device("cpu"), 0.1)
            results[kernel] = (loss, out["prediction"], out["hidden"])
        assert used == [4 if full_attention else 3]  # flex ran, once for all blocks
        for a, b in zip(results["sdpa"], results["flex"], strict=True):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
        model.train()  # with gradients on the CPU: SDPA, the same loss
        loss, _ = batch_loss(model, batch, embeddings, torch.device("cpu"), 0.1)
        loss.backward()
        assert used == [4 if full_attention else 3]
        torch.testing.assert_close(loss.detach(), results["sdpa"][0], rtol=1e-5, atol=1e-6)
    finally:
        model_module.block_masks = real
    with pytest.raises(ValueError, match="attention kernel must be one of sdpa, flex"):
        model.set_attention("dense")
    assert build_model(small_config(shop, attention="flex"), shop.embedder.dimension).attention == "flex"
    from tributary_core import TributaryError

    with pytest.raises(TributaryError, match="--attention 'dense': must be one of sdpa, flex"):
        small_config(shop, attention="dense").check()
