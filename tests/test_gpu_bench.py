"""benchmarks/gpu.py runs on the CPU too (issue 19): a short run on a small store gives every
figure, measured."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from test_sampler import make_shop

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


import pytest


@pytest.mark.parametrize("attention", ["sdpa", "flex"])
def test_the_gpu_benchmark_runs_on_the_cpu(tmp_path, attention):
    import gpu

    if attention == "flex":
        pytest.importorskip("torch.nn.attention.flex_attention")

    shop = make_shop(tmp_path / "shop", 0, 20, 60, 40, dimension=8)
    out = tmp_path / "figures.json"
    figures = gpu.main(["--store", str(shop.path), "--seconds", "2", "--steps", "4", "--warmup",
                        "1", "--batch", "4", "--seq", "32", "--d-model", "24", "--layers", "1",
                        "--heads", "3", "--json", str(out), "--attention", attention])
    assert json.loads(out.read_text()) == json.loads(json.dumps(figures))
    assert figures["device"] == "cpu" and 1 <= figures["steps"] <= 4
    assert figures["attention"] == attention
    assert figures["tokens_per_s"] > 0 and 0 < figures["cells_per_s"] <= figures["tokens_per_s"]
    assert 0 <= figures["sampler_wait_share"] < 1
    assert figures["compute_ms_median"] > 0 and figures["peak_memory_gib"] > 0
    assert figures["inference_seeds_per_s"] > 0
