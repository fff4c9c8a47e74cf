"""tributary-counts against Tributary's plugin contract kit, plus the type's own rules."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from tributary_counts import Count, Poisson

from tributary_core import get_registry
from tributary_core.testing import check_loss_head, check_semantic_type


def test_count_contract():
    check_semantic_type(Count(), pa.array([0, 3, None, 12, 1, 250]))


def test_poisson_contract():
    check_loss_head(Poisson(), "count")


def test_registered_through_entry_points():
    registry = get_registry()
    assert type(registry.semantic_type("count")) is Count
    assert type(registry.loss_head("poisson")) is Poisson
    assert registry.semantic_type("count").target_losses == ("poisson",)


def test_count_values():
    count = Count()
    assert count.check_column(pa.chunked_array([[1, 2, None]])) is None
    assert count.check_column(
        pa.chunked_array([[1, -1, 2.5]])) == "2 value(s) are not non-negative integers, e.g. -1.0"
    prepared = count.prepare(pa.chunked_array([[0, 3, None, -2]]))
    assert prepared.valid.tolist() == [True, True, False, False] and prepared.n_invalid == 1
    encoded = count.encode(prepared, count.fit(prepared))
    assert [count.decode({"value": v}, {}, []) for v in encoded.arrays["value"][:2]] == [0, 3]


def test_poisson_prefers_the_true_rate():
    head = Poisson()
    counts = torch.tensor([0.0, 2.0, 5.0, 9.0])
    batch = {"target_number": torch.log1p(counts)}
    target = head.target(batch)
    assert target.tolist() == counts.tolist()
    exact, off = torch.log(counts.clamp(min=1e-3)), torch.log(counts + 3)
    assert head.loss(exact, target) < head.loss(off, target)
    metrics = head.compute_metrics(exact, target, {})
    assert metrics["mae"] < 1e-2 and metrics["deviance"] < 1e-2


def test_count_labels_and_predictions_in_counts():
    count = Count()
    labels = count.label_values([0, 3, 4.0, "7", -1, 2.5, "many", None])
    assert labels[:4].tolist() == [0.0, 3.0, 4.0, 7.0]
    assert np.isnan(labels[4:]).all()  # not counts: negative, fractional, text, null
    stored = np.log1p(np.array([0.0, 3.0, 12.0]))
    assert np.allclose(count.decode_prediction(stored, {}).to_numpy(), [0.0, 3.0, 12.0])


def test_poisson_shows_expected_counts_and_declares_its_tabular_objective():
    head = Poisson()
    log_rates = torch.log(torch.tensor([2.0, 0.5]))
    shown = head.to_user_units(head.decode(log_rates), Count(), {}, None)
    assert np.allclose(shown.to_numpy(), [2.0, 0.5])  # not passed through expm1 again
    assert head.tabular_objective == "poisson"
    counts = torch.tensor([0.0, 2.0, 5.0])
    assert head.tabular_label(counts).tolist() == [0.0, 2.0, 5.0]
    # LightGBM's raw poisson score is log(rate): the head's own prediction
    exact = head.tabular_prediction(np.log(np.array([1e-3, 2.0, 5.0])), counts)
    assert head.compute_metrics(exact, counts, {})["mae"] < 1e-2
