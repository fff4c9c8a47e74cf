"""``huber``: targets in the ``number`` and ``timestamp`` batch slots (the ``numerical`` and
``timestamp`` types), Huber loss on normalised values.

The head predicts the target type's ``target_width`` values. Number slot: one z-score.
Timestamp slot: the 15 features; the loss weighs the epoch component (the z-scored time itself,
the last) apart from the 14 sin/cos ones: ``(1 - w) * mean(cyclic) + w * epoch`` with
``w = epoch_weight`` (0.5), so getting the date right counts as much as all the cycles together.
Metrics are on the last value (the z-score, or the epoch component): MAE in the column's units
(the z-score error times the target's std; days for timestamps) and R².
An ensemble keeps :meth:`LossHead.combine`'s default, the mean predicted value (of every
feature; the metrics and ``decode`` read the last).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tributary_core.loss import LossHead
from tributary_core.metrics import r2
from tributary_core.semantic_type import TIMESTAMP_WIDTH

US_PER_DAY = 86_400e6


class Huber(LossHead):
    name = "huber"
    description = "numerical and timestamp targets: Huber loss on z-scores"
    metrics = ("mae", "r2")
    higher_is_better = {"mae": False, "r2": True}
    tabular_objective = "huber"
    delta = 1.0
    epoch_weight = 0.5

    def build_head(self, d_model: int, d_text: int, target_stype: str) -> nn.Module:
        return _Regression(d_model, self.target_type(target_stype).target_width)

    def target(self, batch):
        slot = self.target_type(batch["target_stype"]).batch_slot
        if slot == "timestamp":
            return batch["target_timestamp"]  # (N, TIMESTAMP_WIDTH)
        if slot != "number":
            raise ValueError(f"the huber head trains number and timestamp targets; "
                             f"{batch['target_stype']!r} has batch slot {slot!r}")
        return batch["target_number"][:, None]  # (N, 1)

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        err = nn.functional.huber_loss(prediction, target, reduction="none", delta=self.delta)
        if err.shape[-1] == TIMESTAMP_WIDTH:
            return (1 - self.epoch_weight) * err[:, :-1].mean() + self.epoch_weight * err[:, -1].mean()
        return err.mean()

    def compute_metrics(self, prediction, target, stats):
        p, t = prediction[:, -1].double(), target[:, -1].double()
        scale = float(stats.get("std") or 1.0)
        if prediction.shape[-1] == TIMESTAMP_WIDTH:
            scale = float((stats.get("database") or stats).get("std") or US_PER_DAY) / US_PER_DAY
        return {"mae": float((p - t).abs().mean()) * scale, "r2": r2(p, t)}

    def baseline(self, train_target: torch.Tensor, n: int) -> torch.Tensor:
        mean = train_target.float().mean(0) if len(train_target) else torch.zeros(train_target.shape[1:])
        return mean.expand(n, *mean.shape).clone()

    def decode(self, prediction: torch.Tensor) -> np.ndarray:
        return prediction[:, -1].float().cpu().numpy()

    def mix_examples(self, prediction, weights, gate, batch):
        """The predicted value mixed with the examples' weighted mean label
        (``(1 - gate) value + gate mean``; for a timestamp, every feature)."""
        if self.target_type(batch["target_stype"]).batch_slot == "timestamp":
            values = batch["timestamp"].to(weights.dtype)  # (N, S, width)
            examples = (weights[:, :, None] * values).sum(1)  # (N, width)
        else:
            examples = (weights * batch["number"].to(weights.dtype)).sum(1)[:, None]  # (N, 1)
        return (1 - gate[:, None]) * prediction.float() + gate[:, None] * examples


class _Regression(nn.Module):
    def __init__(self, d_model: int, width: int) -> None:
        super().__init__()
        self.out = nn.Linear(d_model, width)

    def forward(self, hidden: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        return self.out(hidden)  # (N, d_model) -> (N, width)
