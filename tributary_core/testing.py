"""The plugin contract kit: checks a plugin author runs on their semantic types and loss heads.

Call them from your own tests (the built-in plugins and the ``tributary-counts`` example do)::

    import pyarrow as pa
    from tributary_core.testing import check_loss_head, check_semantic_type

    def test_count_contract():
        check_semantic_type(Count(), pa.chunked_array([[0, 3, None, 12, 1]]))

    def test_poisson_contract():
        check_loss_head(Poisson(), "count")

Each check raises ``AssertionError`` saying which rule broke, so a plain ``pytest`` run reports
it. What they check:

:func:`check_semantic_type` on a sample column (give one with a null):
  names and slot; the column passes the type's own Arrow and value checks; ``prepare`` leaves
  its input alone, returns one validity flag per row, and is deterministic; ``fit`` returns
  JSON-able statistics, the same twice, also for a row subset; ``vocabulary`` returns one text
  and one value per entry; ``encode`` leaves ``prepared`` alone, returns arrays of one row per
  cell, finite where valid, the same twice (a ``timestamp``-slot type: int64 epoch µs, one per
  cell); ``decode`` reads back each valid cell; a type with a ``column_encoder`` gives, fed
  batches of 1, 2 and 3 rows, the statistics (also for a row subset), vocabulary, invalid
  count and cells of the whole-column methods (a type with its own ``check_encoded`` must
  encode in two passes, where the statistics are known);
  ``label_values`` gives one float per value of the sample's Python values, NaN for nulls,
  finite for every cell ``prepare`` accepts, the same twice; for a type that can be a target,
  ``decode_prediction`` turns the stored values (the last of the slot's values) into one Arrow
  value each; the value encoder maps the slot's input to ``(N, d_model)`` finite vectors that
  gradients flow through.
:func:`check_loss_head` for one target type:
  metrics named, each with a direction; the head's prediction for ``N`` hidden states; a finite
  scalar loss, the same twice, with finite gradients for the hidden states and every parameter;
  ``compute_metrics`` returns exactly the named metrics, as floats, for the model and for the
  baseline; ``decode`` gives one value per target and ``to_user_units`` one Arrow value per
  decoded value; ``tabular_objective`` is None or a name, and if a name, ``tabular_label`` gives
  one float (or NaN) per target and ``compute_metrics`` accepts ``tabular_prediction`` of zero
  raw scores (``(N, k)`` for ``"multiclass"``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tributary_core.loss import LossHead
from tributary_core.semantic_type import (
    SLOT_WIDTH,
    TIMESTAMP_WIDTH,
    ColumnEncoder,
    Prepared,
    SemanticType,
    Vocabulary,
)
from tributary_core.timefeatures import features

__all__ = ["check_semantic_type", "check_loss_head", "fake_batch"]


def _instance(obj: Any) -> Any:
    return obj() if isinstance(obj, type) else obj


def _snapshot(prepared: Prepared) -> tuple[Any, np.ndarray]:
    values = None if prepared.values is None else np.array(prepared.values, copy=True)
    return values, prepared.valid.copy()


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind in "fc":
        return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))
    return a.shape == b.shape and bool(np.array_equal(a, b))


def check_semantic_type(stype: SemanticType | type[SemanticType], column: pa.Array | pa.ChunkedArray, *,
                        d_model: int = 16, d_text: int = 8, registry: Any = None) -> None:
    """Check ``stype`` against the contract on ``column``, a sample it must accept."""
    from tributary_core.sampler.graph import SLOTS  # the slots the sampler knows

    st = _instance(stype)
    who = f"semantic type {getattr(st, 'name', type(st).__name__)!r}"
    assert isinstance(st, SemanticType), f"{who}: not a SemanticType subclass"
    assert isinstance(st.name, str) and st.name, f"{who}: name must be a non-empty string"
    assert st.batch_slot in SLOTS, f"{who}: batch_slot {st.batch_slot!r} is not one of {sorted(SLOTS)}"
    if registry is None:
        from tributary_core.registry import get_registry

        registry = get_registry()
    for loss in st.target_losses:
        assert loss in registry.loss_heads, (f"{who}: target loss {loss!r} is not a registered loss head "
                                             f"({', '.join(sorted(registry.loss_heads))})")
    if isinstance(column, pa.Array):
        column = pa.chunked_array([column])
    before = column.to_pylist()
    n = len(column)
    if st.is_ignored:
        return
    reason = st.check_arrow_type(column.type)
    assert reason is None, f"{who}: refuses the sample's Arrow type: {reason}"
    reason = st.check_column(column)
    assert reason is None, f"{who}: refuses the sample's values: {reason}"

    prepared = st.prepare(column)
    assert column.to_pylist() == before, f"{who}: prepare() changed its input column"
    assert isinstance(prepared, Prepared), f"{who}: prepare() must return a Prepared"
    assert len(prepared) == n, f"{who}: prepare() returned {len(prepared)} validity flags for {n} rows"
    again = st.prepare(column)
    assert _same(prepared.valid, again.valid) and _same(prepared.values, again.values), \
        f"{who}: prepare() is not deterministic"
    assert prepared.valid.any(), f"{who}: no valid cell in the sample; give a column with values"

    snap = _snapshot(prepared)
    stats = st.fit(prepared)
    assert isinstance(stats, dict), f"{who}: fit() must return a dict"
    try:
        text = json.dumps(stats, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"{who}: fit() statistics are not strict JSON: {exc}") from None
    assert json.dumps(st.fit(prepared), sort_keys=True, allow_nan=False) == text, \
        f"{who}: fit() is not deterministic"
    rows = np.zeros(n, dtype=np.bool_)
    rows[::2] = True
    assert isinstance(st.fit(prepared, rows=rows), dict), f"{who}: fit(rows=...) must return a dict"
    assert _same(snap[0], prepared.values) and _same(snap[1], prepared.valid), \
        f"{who}: fit() changed the prepared values"

    vocab_ids = None
    vocab = Vocabulary()
    listed = st.vocabulary(prepared, "sample")
    if listed is not None:
        texts, values = listed
        assert len(texts) == len(values), f"{who}: vocabulary() gave {len(texts)} texts, {len(values)} values"
        assert all(isinstance(t, str) for t in texts), f"{who}: vocabulary texts must be strings"
        vocab_ids = vocab.add(texts, values)
    assert st.batch_slot != "vocab" or listed is not None, f"{who}: a vocab-slot type needs vocabulary()"
    combined = st.combine([stats])
    if combined is not None:
        stats = {**stats, "database": combined}

    encoded = st.encode(prepared, stats, vocab_ids)
    assert _same(snap[0], prepared.values) and _same(snap[1], prepared.valid), \
        f"{who}: encode() changed the prepared values"
    assert encoded.valid.dtype == np.bool_ and encoded.valid.shape == (n,), \
        f"{who}: encode() validity must be a bool array of {n}"
    second = st.encode(prepared, stats, vocab_ids)
    for field, array in encoded.arrays.items():
        assert array.shape[0] == n, f"{who}: field {field!r} has {array.shape[0]} rows for {n}"
        if array.dtype.kind == "f":
            assert np.isfinite(array[encoded.valid]).all(), \
                f"{who}: field {field!r} is not finite where valid"
        assert _same(array, second.arrays[field]), f"{who}: encode() is not deterministic ({field!r})"
    if st.batch_slot in ("number", "timestamp", "boolean"):
        assert "value" in encoded.arrays, f"{who}: slot {st.batch_slot!r} reads the field 'value'"
    if st.batch_slot == "timestamp":
        value = encoded.arrays["value"]
        assert value.dtype == np.int64 and value.shape == (n,), \
            f"{who}: slot 'timestamp' stores epoch microseconds: field 'value' must be int64 ({n},)"
    if st.batch_slot == "vocab":
        assert "index" in encoded.arrays, f"{who}: slot 'vocab' reads the field 'index'"
    for i in np.flatnonzero(encoded.valid):
        st.decode({f: a[i] for f, a in encoded.arrays.items()}, stats, vocab.values)

    _check_column_encoder(st, who, column, prepared, stats, encoded, vocab)
    _check_label_values(st, who, before, prepared)
    if st.can_be_target:
        _check_decode_prediction(st, who, encoded, stats)
    _check_value_encoder(st, who, encoded, stats, d_model, d_text)


def _check_column_encoder(st: SemanticType, who: str, column: pa.ChunkedArray, prepared: Prepared,
                          stats: dict[str, Any], encoded: Any, vocab: Vocabulary) -> None:
    """A type's :class:`ColumnEncoder`, given batches of 1, 2 and 3 rows, must give the
    statistics, vocabulary and cells that the whole-column methods give; a type that
    ``reads_dictionary`` must give them from dictionary-encoded batches of a string column
    too."""
    n = len(column)
    rows = np.zeros(n, dtype=np.bool_)
    rows[::2] = True
    t = column.type
    coded = [False]
    if st.reads_dictionary and (pa.types.is_string(t) or pa.types.is_large_string(t)
                                or pa.types.is_string_view(t)):
        coded.append(True)  # batches as preprocessing reads them from parquet: dictionary-encoded
    for size, dictionary in ((size, d) for size in (1, 2, 3) for d in coded):
        for window in (None, rows):
            encoder = st.column_encoder("sample")
            if encoder is None:
                return
            assert isinstance(encoder, ColumnEncoder), \
                f"{who}: column_encoder() must return a ColumnEncoder or None"
            assert not (encoder.one_pass and type(st).check_encoded is not SemanticType.check_encoded), \
                (f"{who}: a one-pass column_encoder() encodes before the statistics exist, so "
                 "preprocessing never calls its check_encoded(); make it two-pass")
            own = Vocabulary()
            pieces: list[Any] = []
            batches = [st.prepare(_coded(column.slice(lo, size)) if dictionary
                                  else column.slice(lo, size)) for lo in range(0, n, size)]
            for lo, batch in zip(range(0, n, size), batches, strict=True):
                encoder.fit(batch, None if window is None else window[lo:lo + len(batch)])
                if encoder.one_pass:
                    pieces.append(encoder.encode(batch, None, own))
            got = encoder.stats()
            expected = st.fit(prepared, rows=window)
            assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True), \
                (f"{who}: column_encoder() in batches of {size} gave the statistics {got}, "
                 f"fit() on the whole column {expected}")
            if window is not None:
                continue
            assert encoder.n_invalid == prepared.n_invalid, \
                (f"{who}: column_encoder() counted {encoder.n_invalid} invalid cells, prepare() "
                 f"{prepared.n_invalid}")
            if not encoder.one_pass:
                full = {**got, **({"database": stats["database"]} if "database" in stats else {})}
                pieces = [encoder.encode(batch, full, own) for batch in batches]
            assert own.texts == vocab.texts and own.values == vocab.values, \
                f"{who}: column_encoder() in batches of {size} built another vocabulary"
            valid = np.concatenate([p.valid for p in pieces])
            assert _same(valid, encoded.valid), \
                f"{who}: column_encoder() in batches of {size} gave other validity"
            for field, array in encoded.arrays.items():
                assert all(field in p.arrays for p in pieces), \
                    f"{who}: column_encoder() gave no field {field!r}"
                joined = np.concatenate([p.arrays[field] for p in pieces])
                assert joined.dtype == array.dtype and _same(joined, array), \
                    f"{who}: column_encoder() in batches of {size} encoded {field!r} otherwise"


def _coded(batch: pa.ChunkedArray) -> pa.ChunkedArray:
    """``batch`` dictionary-encoded as a parquet reader may give it: a dictionary holding the
    batch's values in another order than their first use, its first value twice (every other
    cell of it pointing at the second copy) and a value no cell uses; a batch of nulls only
    comes with an empty dictionary."""
    plain = batch.cast(pa.string()) if pa.types.is_string_view(batch.type) else batch
    values = pc.unique(plain).drop_null()
    k = len(values)
    dictionary = pa.concat_arrays([values[::-1], values[:1],
                                   pa.array(["(unused)"], values.type)]) if k else values
    chunks = []
    for chunk in plain.chunks:
        index = pc.index_in(chunk, value_set=values[::-1], skip_nulls=True)
        codes = index.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int32)
        first = np.flatnonzero(codes == k - 1)[::2] if k else codes[:0]
        codes[first] = k  # the second copy of the first value
        chunks.append(pa.DictionaryArray.from_arrays(
            pa.array(codes, mask=~pc.is_valid(chunk).to_numpy(zero_copy_only=False)), dictionary))
    return pa.chunked_array(chunks, type=pa.dictionary(pa.int32(), values.type))


def _check_label_values(st: SemanticType, who: str, raw: list[Any], prepared: Prepared) -> None:
    given = list(raw)
    labels = st.label_values(given)
    assert given == raw, f"{who}: label_values() changed its input"
    assert isinstance(labels, np.ndarray) and labels.dtype.kind == "f" and labels.shape == (len(raw),), \
        f"{who}: label_values() must return a float array of {len(raw)} values"
    nulls = np.array([v is None for v in raw], dtype=np.bool_)
    assert np.isnan(labels[nulls]).all(), f"{who}: label_values() must give NaN for None"
    bad = np.flatnonzero(prepared.valid & ~np.isfinite(labels))
    assert not len(bad), (f"{who}: label_values() gave {labels[bad[0]]} for {raw[bad[0]]!r}, "
                          "a value prepare() accepts")
    assert _same(st.label_values(given), labels), f"{who}: label_values() is not deterministic"
    assert st.label_values([]).shape == (0,), f"{who}: label_values([]) must return an empty array"


def _check_decode_prediction(st: SemanticType, who: str, encoded: Any, stats: dict[str, Any]) -> None:
    valid = np.flatnonzero(encoded.valid)
    stored = np.asarray(encoded.arrays["value"][valid], dtype=np.float64) \
        if "value" in encoded.arrays else np.zeros(len(valid))
    if st.batch_slot == "timestamp":  # the features the sampler computes from the stored µs
        stored = features(encoded.arrays["value"][valid], None, stats).astype(np.float64)
    if stored.ndim == 2:
        stored = stored[:, -1]  # a regression head predicts the last of the slot's values
    shown = st.decode_prediction(stored, stats)
    assert isinstance(shown, (pa.Array, pa.ChunkedArray)), \
        f"{who}: decode_prediction() must return an Arrow array"
    assert len(shown) == len(stored), \
        f"{who}: decode_prediction() gave {len(shown)} values for {len(stored)} predictions"
    assert shown.null_count == 0, f"{who}: decode_prediction() gave nulls for finite predictions"


def _check_value_encoder(st: SemanticType, who: str, encoded: Any, stats: dict[str, Any],
                         d_model: int, d_text: int) -> None:
    import torch

    module = st.value_encoder(d_model, d_text)
    assert isinstance(module, torch.nn.Module), f"{who}: value_encoder() must return a torch module"
    valid = np.flatnonzero(encoded.valid)
    slot = st.batch_slot
    if slot in ("number", "boolean"):
        inputs = torch.from_numpy(np.asarray(encoded.arrays["value"][valid], dtype=np.float32))[:, None]
    elif slot == "timestamp":
        inputs = torch.from_numpy(features(encoded.arrays["value"][valid], None, stats))
    elif slot == "vocab":
        inputs = torch.randn(len(valid), d_text)
    else:
        inputs = torch.zeros(len(valid), 0)
    width = d_text if slot == "vocab" else SLOT_WIDTH[slot]
    assert inputs.shape == (len(valid), width), f"{who}: slot {slot!r} input should be (N, {width})"
    out = module(inputs)
    assert tuple(out.shape) == (len(valid), d_model), \
        f"{who}: value encoder gave {tuple(out.shape)} for (N={len(valid)}, d_model={d_model})"
    assert torch.isfinite(out).all(), f"{who}: value encoder output is not finite"
    out.float().pow(2).mean().backward()
    for pname, p in module.named_parameters():
        if p.requires_grad and p.grad is not None:
            assert torch.isfinite(p.grad).all(), f"{who}: value encoder gradient of {pname} is not finite"


def fake_batch(slot: str, target_stype: str, n: int = 8, k: int = 3, seed: int = 0) -> dict[str, Any]:
    """Target tensors as a batch holds them for a type with batch slot ``slot``: ``n`` targets,
    every third null, ``k`` candidates (vocabulary ids 10..10+k) for vocab targets. Numbers are
    ``log1p`` of small counts (non-negative, as any number slot may hold)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return {"target_stype": target_stype,
            "target_number": torch.log1p(torch.randint(0, 10, (n,), generator=g).float()),
            "target_timestamp": torch.randn(n, TIMESTAMP_WIDTH, generator=g),
            "target_boolean": torch.arange(n) % 2 == 0, "target_vocab": torch.arange(n) % k + 10,
            "target_is_null": torch.arange(n) % 3 == 0,
            "candidates": torch.arange(10, 10 + k, dtype=torch.int32) if slot == "vocab" else None}


def check_loss_head(head: LossHead | type[LossHead], target_stype: str, *, slot: str | None = None,
                    n: int = 8, d_model: int = 16, d_text: int = 8, k: int = 3,
                    stats: Mapping[str, Any] | None = None) -> None:
    """Check ``head`` against the contract for targets of ``target_stype`` (looked up in the
    registry; if ``slot`` is given and the type is not registered, a plain type with that batch
    slot stands in for it)."""
    import torch

    from tributary_core.errors import PluginError
    from tributary_core.registry import get_registry

    h = _instance(head)
    who = f"loss head {getattr(h, 'name', type(h).__name__)!r} for {target_stype!r}"
    assert isinstance(h, LossHead), f"{who}: not a LossHead subclass"
    assert h.metrics, f"{who}: names no metrics"
    missing = [m for m in h.metrics if m not in h.higher_is_better]
    assert not missing, f"{who}: higher_is_better lacks {missing}"
    objective = h.tabular_objective
    assert objective is None or (isinstance(objective, str) and objective), \
        f"{who}: tabular_objective must be None or a LightGBM objective name, got {objective!r}"
    try:
        st = get_registry().semantic_type(target_stype)
    except PluginError:
        if slot is None:
            raise
        st = type("Unregistered", (SemanticType,), {"name": target_stype, "batch_slot": slot})()
    slot = slot or st.batch_slot
    stats = dict(stats or {"mean": 0.0, "std": 1.0, "count": n})
    torch.manual_seed(0)
    module = h.build_head(d_model, d_text, target_stype)
    assert isinstance(module, torch.nn.Module), f"{who}: build_head() must return a torch module"
    hidden = torch.randn(n, d_model, requires_grad=True)
    candidates = torch.randn(k, d_text) if slot == "vocab" else None
    batch = fake_batch(slot, target_stype, n, k)
    prediction = module(hidden, candidates)
    assert prediction.shape[0] == n, f"{who}: {prediction.shape[0]} predictions for {n} hidden states"
    target = h.target(batch)
    assert target.shape[0] == n, f"{who}: target() gave {target.shape[0]} labels for {n}"
    from tributary_core.train.trainer import labelled

    keep = labelled(target, batch["target_is_null"])
    loss = h.loss(prediction[keep], target[keep])
    assert loss.dim() == 0, f"{who}: loss must be a scalar, got shape {tuple(loss.shape)}"
    assert torch.isfinite(loss), f"{who}: loss is not finite ({float(loss.detach())})"
    assert float(h.loss(prediction[keep], target[keep]).detach()) == float(loss.detach()), \
        f"{who}: loss is not deterministic"
    loss.backward()
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all(), \
        f"{who}: the gradient reaching the hidden states is missing or not finite"
    for pname, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), \
            f"{who}: the gradient of {pname} is missing or not finite"
    pred, tgt = prediction[keep].detach(), target[keep]
    for label, values in (("model", pred), ("baseline", h.baseline(tgt, int(keep.sum())))):
        metrics = h.compute_metrics(values, tgt, stats)
        assert set(metrics) == set(h.metrics), \
            f"{who}: {label} metrics {sorted(metrics)} != {sorted(h.metrics)}"
        for name, value in metrics.items():
            assert isinstance(value, float) and not math.isinf(value), \
                f"{who}: {label} metric {name} = {value!r} is not a finite float (NaN allowed: undefined)"
    decoded = h.decode(prediction.detach())
    assert len(decoded) == n, f"{who}: decode() gave {len(decoded)} values for {n}"
    candidate_values = [f"category {i}" for i in range(k)] if slot == "vocab" else None
    shown = h.to_user_units(decoded, st, stats, candidate_values)
    assert isinstance(shown, (pa.Array, pa.ChunkedArray)), \
        f"{who}: to_user_units() must return an Arrow array"
    assert len(shown) == n, f"{who}: to_user_units() gave {len(shown)} values for {n}"
    if objective is not None:
        _check_tabular(h, who, objective, tgt, stats, k)


def _check_tabular(h: LossHead, who: str, objective: str, target: Any, stats: Mapping[str, Any],
                   k: int) -> None:
    import torch

    labels = h.tabular_label(target)
    assert isinstance(labels, np.ndarray) and labels.dtype.kind == "f" and labels.shape == (len(target),), \
        f"{who}: tabular_label() must return a 1-d float array of {len(target)} labels"
    assert not np.isinf(labels).any(), f"{who}: tabular_label() gave an infinite label"
    usable = ~np.isnan(labels)
    assert usable.any(), f"{who}: tabular_label() left out every target"
    kept = target[torch.from_numpy(usable)]
    m = int(usable.sum())
    raw = np.zeros((m, k)) if objective.startswith("multiclass") else np.zeros(m)
    metrics = h.compute_metrics(h.tabular_prediction(raw, kept), kept, stats)
    assert set(metrics) == set(h.metrics), \
        f"{who}: metrics of tabular_prediction() {sorted(metrics)} != {sorted(h.metrics)}"
