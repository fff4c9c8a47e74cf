"""benchmarks/quality.py's page: tables, goal counts and the kept discussion, from a results file
(the runs themselves take 80 minutes and are not part of the suite)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("quality_benchmark", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _entry(head, metric, value, baseline):
    return {"loss_head": head, "metrics": {metric: value}, "baseline": {metric: baseline}}


def test_render_counts_goals_honestly(tmp_path):
    q = _module()
    data = {
        "settings": {"steps": 10, "pretrain_steps": 5, "eval_seeds": 100, "max_train": 1000,
                     "model": q.MODEL},
        "machine": {"cores": 2, "cpu": "x86_64", "torch": "2.x", "torch_threads": 2},
        "lightgbm/nycflights13": {"tasks": {"nycflights13/a": {"metrics": {"auroc": 0.8}},
                                            "nycflights13/m": {"metrics": {"mae": 2.0}}},
                                  "wall_s": 6, "cpu_s": 6},
        "eval/c-nycflights13": {"tasks": {"nycflights13/a": _entry("bce", "auroc", 0.85, 0.5),
                                          "nycflights13/m": _entry("huber", "mae", 2.5, 3.0)}},
        "eval/d-both": {"tasks": {"nycflights13/a": _entry("bce", "auroc", 0.9, 0.5),
                                  "nycflights13/m": _entry("huber", "mae", 3.5, 3.0)}},
        "eval/e-nycflights13": {"tasks": {"nycflights13/a": _entry("bce", "auroc", 0.55, 0.5),
                                          "nycflights13/m": _entry("huber", "mae", 3.1, 3.0)}},
        "train/c-nycflights13": {"steps": 10, "val_loss": [[5, 1.0], [10, 0.5]], "wall_s": 60, "cpu_s": 90,
                                 "step_s": 50},
        "train/f-nycflights13": {"steps": 10, "val_loss": [[5, 0.45], [10, 0.4]], "wall_s": 60, "cpu_s": 90},
    }
    page = q.render(data, argparse.Namespace())
    assert "| a | auroc ↑ | 0.500 | 0.800 | 0.850 | **0.900** | 0.550 | – |" in page
    assert "| m | mae ↓ | 3.000 | **2.000** | 2.500 | 3.500 | 3.100 | – |" in page
    assert "- (c) or (d) beats LightGBM on 1 of 2 tasks." in page
    assert "- (c) or (d) is at least the majority/mean baseline on 2 of 2 tasks." in page
    assert "- (e) beats majority/mean on 1 of 2 tasks." in page
    assert "- (c) beats LightGBM on 1 of 2 tasks (1 of 2 on nycflights13)" in page
    assert "mean relative gain over majority/mean +3.3%, against +43.3% for (c)" in page
    assert "- (f) on nycflights13 reaches (c)'s final validation loss: step 5 (50% of (c)'s steps)" in page
    assert "better on 1 of 2 tasks" in page
    assert "| nycflights13 | 0.5000 | 10 | 5 | 0.4000 |" in page  # (f) reaches (c)'s final loss at 5
    assert "| train/c-nycflights13 | 10 | 1.0 min | 0.8 min | 1.5 min |" in page


def test_discussion_survives_regeneration(tmp_path):
    q = _module()
    out, doc = tmp_path / "runs", tmp_path / "quality.md"
    out.mkdir()
    (out / "results.json").write_text('{"settings": {"steps": 1}}')
    doc.write_text("old page\n" + q.DISCUSSION + "## Discussion\nhand-written words\n")
    argv = sys.argv
    sys.argv = ["quality.py", "--render-only", "--out", str(out), "--doc", str(doc)]
    try:
        q.main()
    finally:
        sys.argv = argv
    text = doc.read_text()
    assert "old page" not in text and text.startswith("# Model quality")
    assert text.endswith(q.DISCUSSION + "## Discussion\nhand-written words\n")


def _ablation():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("ablation_benchmark", ROOT / "benchmarks" / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ablation_section_is_rewritten_in_place(tmp_path):
    """One row per setting with the best value bold, the majority row, and only the section
    between the markers rewritten: the page around it (and a second render) stays as it was."""
    a = _ablation()
    out, doc = tmp_path / "runs", tmp_path / "quality.md"
    out.mkdir()
    tasks = lambda auc, mae: {"nycflights13/a": _entry("bce", "auroc", auc, 0.5),  # noqa: E731
                              "nycflights13/m": _entry("huber", "mae", mae, 3.0)}
    (out / "results.json").write_text(json.dumps({
        "settings": {"steps": 10, "eval_seeds": 50, "seed": 0},
        "today/nycflights13": {"tasks": tasks(0.7, 2.5), "step_s": 5.0, "val_loss": [0.61]},
        "icl25/nycflights13": {"tasks": tasks(0.8, 2.7), "step_s": 6.0, "val_loss": [0.59]}}))
    doc.write_text("# Model quality\nabove\n" + a.BEGIN + "\nold\n" + a.END + "\nbelow\n")
    argv = sys.argv
    sys.argv = ["ablation.py", "--render-only", "--out", str(out), "--doc", str(doc),
                "--settings", "today,icl25", "--dbs", "nycflights13"]
    try:
        a.main()
        first = doc.read_text()
        a.main()
    finally:
        sys.argv = argv
    assert doc.read_text() == first
    assert first.startswith("# Model quality\nabove\n") and first.endswith(a.END + "\nbelow\n")
    assert "\nold\n" not in first
    assert "| today: the model before issue 16 | 0.700 | **2.500** | 0.6100 | 0.50 |" in first
    assert "| icl25: + labelled examples, 25% of the context | **0.800** | 2.700 | 0.5900 | 0.60 |" in first
    assert "| majority/mean | 0.500 | 3.000 | | |" in first
