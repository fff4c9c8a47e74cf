"""The plugin contract kit (tributary_core.testing) on every built-in semantic type and loss
head, and proof that it catches broken plugins."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from tributary_core import get_registry
from tributary_core.semantic_type import EncodedColumn
from tributary_core.testing import check_loss_head, check_semantic_type

T = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
SAMPLES = {
    "identifier": pa.array(["a", None, "c", "d"]),
    "numerical": pa.array([1.5, None, -2.0, 3.0]),
    "timestamp": pa.array([T, None, T + dt.timedelta(days=40), T - dt.timedelta(hours=5)],
                          pa.timestamp("us", tz="UTC")),
    "boolean": pa.array([True, None, False, True]),
    "categorical": pa.array(["x", "y", None, "x"]),
    "text": pa.array(["hello world", None, "goodbye", "hello world"]),
    "ignored": pa.array([1, 2, None, 4]),
}


def test_every_builtin_type_has_a_sample():
    builtin = {n for n, c in get_registry().semantic_types.items()
               if c.__module__.startswith("tributary_plugins")}
    assert builtin == set(SAMPLES)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_builtin_semantic_type_contract(name):
    check_semantic_type(get_registry().semantic_type(name), SAMPLES[name])


def _pairs():
    registry = get_registry()
    return sorted({(loss, name) for name, cls in registry.semantic_types.items()
                   for loss in cls.target_losses} | {("null", "boolean")})


@pytest.mark.parametrize(("loss_name", "stype"), _pairs())
def test_loss_head_contract(loss_name, stype):
    check_loss_head(get_registry().loss_head(loss_name), stype)


def test_the_kit_catches_broken_plugins():
    numerical = type(get_registry().semantic_type("numerical"))

    class Mutating(numerical):
        name = "mutating"

        def encode(self, prepared, stats, vocab_ids=None):
            prepared.values[:] = 0.0  # a bug: the input is changed in place
            return super().encode(prepared, stats, vocab_ids)

    with pytest.raises(AssertionError, match="encode\\(\\) changed the prepared values"):
        check_semantic_type(Mutating(), SAMPLES["numerical"])

    class Random(numerical):
        name = "random"

        def encode(self, prepared, stats, vocab_ids=None):
            return EncodedColumn({"value": np.random.rand(len(prepared)).astype(np.float32)}, prepared.valid)

    with pytest.raises(AssertionError, match="encode\\(\\) is not deterministic"):
        check_semantic_type(Random(), SAMPLES["numerical"])

    class NanStats(numerical):
        name = "nanstats"

        def fit(self, prepared, *, rows=None):
            return {"mean": float("nan"), "std": 1.0}

    with pytest.raises(AssertionError, match="not strict JSON"):
        check_semantic_type(NanStats(), SAMPLES["numerical"])

    huber = type(get_registry().loss_head("huber"))

    class Exploding(huber):
        name = "exploding"

        def loss(self, prediction, target):
            return (prediction - target).pow(2).mean() / 0.0

    with pytest.raises(AssertionError, match="loss is not finite"):
        check_loss_head(Exploding(), "numerical")

    class Unnamed(huber):
        name = "unnamed"
        higher_is_better = {"mae": False}

    with pytest.raises(AssertionError, match="higher_is_better lacks \\['r2'\\]"):
        check_loss_head(Unnamed(), "numerical")
