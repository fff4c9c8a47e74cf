"""Metrics in plain torch (no scikit-learn), for loss heads and the leakage check."""

from __future__ import annotations

import torch


def auroc(score: torch.Tensor, label: torch.Tensor) -> float:
    """Area under the ROC curve, ties counted half (Mann-Whitney U). NaN with one class only."""
    score, label = score.double().flatten(), label.bool().flatten()
    n_pos, n_neg = int(label.sum()), int((~label).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(score)
    ranks = torch.empty_like(score)
    sorted_scores = score[order]
    # average ranks over ties
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg = ends - (counts.double() - 1) / 2
    ranks[order] = avg[inverse]
    return float((ranks[label].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def macro_f1(pred: torch.Tensor, label: torch.Tensor) -> float:
    """F1 averaged over the classes that occur in ``label`` or ``pred``."""
    classes = torch.unique(torch.cat([pred, label]))
    scores = []
    for c in classes:
        tp = int(((pred == c) & (label == c)).sum())
        fp = int(((pred == c) & (label != c)).sum())
        fn = int(((pred != c) & (label == c)).sum())
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(sum(scores) / len(scores)) if scores else float("nan")


def r2(pred: torch.Tensor, target: torch.Tensor) -> float:
    target, pred = target.double(), pred.double()
    total = float(((target - target.mean()) ** 2).sum())
    if total == 0:
        return float("nan")
    return 1.0 - float(((target - pred) ** 2).sum()) / total
