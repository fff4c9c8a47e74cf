"""Every Python block of docs/api.md, run in order in one namespace in a fresh folder."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def test_api_doc_examples_run(tmp_path, monkeypatch, capsys):
    code = blocks()
    assert len(code) >= 8, "docs/api.md lost its examples"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "api_doc"}
    for i, block in enumerate(code):
        exec(compile(block, f"{DOC}:block{i + 1}", "exec"), namespace)  # noqa: S102 - our own docs
    out = capsys.readouterr().out
    assert "{'customers': 'customer_id', 'orders': 'order_id'}" in out  # the draft found the keys
    assert "big_order (8, 32)" in out
    assert (tmp_path / "runs" / "shop" / "model.pt").exists()
    results = namespace["results"]
    assert set(results) == {"shop/big_order", "shop/customer_segment"}
    assert namespace["table"].num_rows == 3
    assert {"numerical", "categorical", "boolean"} <= set(namespace["registry"].semantic_types)
    assert "loss" in out and "validation seeds" in out
