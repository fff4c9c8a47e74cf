"""``bce``: boolean targets. The head gives a logit; binary cross-entropy; AUROC and accuracy.
Predictions are shown as the probability of true. An ensemble of logits (:meth:`BCE.combine`)
is the logit of their mean probability."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from tributary_core.loss import LossHead
from tributary_core.metrics import auroc


class BCE(LossHead):
    name = "bce"
    description = "boolean targets: binary cross-entropy on a logit"
    metrics = ("auroc", "accuracy")
    higher_is_better = {"auroc": True, "accuracy": True}
    tabular_objective = "binary"

    def build_head(self, d_model: int, d_text: int, target_stype: str) -> nn.Module:
        return _Logit(d_model)

    def target(self, batch):
        return batch["target_boolean"].float()

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(prediction, target.float())

    def compute_metrics(self, prediction, target, stats):
        return {"auroc": auroc(prediction, target),
                "accuracy": float(((prediction > 0) == target.bool()).float().mean())}

    def baseline(self, train_target: torch.Tensor, n: int) -> torch.Tensor:
        p = float(train_target.float().mean()) if len(train_target) else 0.5
        p = min(max(p, 1e-6), 1 - 1e-6)
        return torch.full((n,), math.log(p / (1 - p)))

    def combine(self, predictions):
        """The logit of the mean probability: ``logit(mean(sigmoid(x_k)))``, computed in log
        space (``logsumexp`` of ``logsigmoid``) so confident logits stay finite. Averaging the
        logits themselves would be a geometric mean of odds, letting one confident context
        outvote the others; the mean probability is what ``predict`` shows and what accuracy
        (threshold 0.5) reads, and it keeps the order AUROC ranks by."""
        if len(predictions) <= 1:
            return super().combine(predictions)
        logits = torch.stack([p.float() for p in predictions])
        log_k = math.log(len(predictions))
        log_p = torch.logsumexp(nn.functional.logsigmoid(logits), 0) - log_k  # log mean p
        log_q = torch.logsumexp(nn.functional.logsigmoid(-logits), 0) - log_k  # log mean (1 - p)
        return log_p - log_q

    def mix_examples(self, prediction, weights, gate, batch):
        """The probability of true mixed with the examples' weighted share of true labels
        (``(1 - gate) p + gate p_examples``), as a logit."""
        examples = (weights.float() * batch["boolean"].float()).sum(1)  # (N,)
        # in log space, so confident logits keep their order up to |logit| ~ 13 instead of
        # tying at a clamp; the clamps keep log() and its gradient finite (an examples' share
        # of exactly 0 or 1 is common: every example delayed)
        x = prediction.float()
        g = gate.float().clamp(1e-6, 1 - 1e-6)
        e = examples.clamp(1e-6, 1 - 1e-6)  # (1 - 1e-12 would round to 1 in float32)
        log_p = torch.logaddexp(torch.log1p(-g) + nn.functional.logsigmoid(x), g.log() + e.log())
        log_q = torch.logaddexp(torch.log1p(-g) + nn.functional.logsigmoid(-x),
                                g.log() + torch.log1p(-e))
        return log_p - log_q

    def decode(self, prediction: torch.Tensor) -> np.ndarray:
        return torch.sigmoid(prediction.float()).cpu().numpy()

    def to_user_units(self, decoded, target_type, stats, candidate_values):
        return pa.array(np.asarray(decoded, dtype=np.float64))  # the probability of true


class _Logit(nn.Module):
    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.out = nn.Linear(d_model, 1)

    def forward(self, hidden: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        return self.out(hidden).squeeze(-1)  # (N, d_model) -> (N,)
