"""``infonce``: categorical targets, scored against the frozen text embeddings of the target
column's categories (InfoNCE: cross-entropy over the candidates, temperature learned).
Predictions are shown as the chosen category's value. An ensemble (:meth:`InfoNCE.combine`)
averages the probabilities over the candidates and gives their logarithm."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from tributary_core.loss import LossHead
from tributary_core.metrics import macro_f1


class InfoNCE(LossHead):
    name = "infonce"
    description = "categorical targets: InfoNCE against the categories' text embeddings"
    metrics = ("accuracy", "macro_f1")
    higher_is_better = {"accuracy": True, "macro_f1": True}
    tabular_objective = "multiclass"  # one class per candidate, in candidate order

    def build_head(self, d_model: int, d_text: int, target_stype: str) -> nn.Module:
        return _Contrast(d_model, d_text)

    def target(self, batch):
        # the target's position among the candidates (-1 if it is not one of them)
        cands = batch["candidates"]
        match = batch["target_vocab"][:, None] == cands[None, :].to(batch["target_vocab"].dtype)
        return torch.where(match.any(1), match.float().argmax(1), torch.full_like(match[:, 0], -1,
                                                                                   dtype=torch.long))

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(prediction, target.long(), ignore_index=-1)

    def compute_metrics(self, prediction, target, stats):
        pred = prediction.argmax(-1)
        return {"accuracy": float((pred == target).float().mean()),
                "macro_f1": macro_f1(pred, target.long())}

    def baseline(self, train_target: torch.Tensor, n: int) -> torch.Tensor:
        k = int(train_target.max()) + 1 if len(train_target) else 1
        counts = torch.bincount(train_target[train_target >= 0].long(), minlength=k)
        out = torch.zeros(n, max(k, 1))
        out[:, int(counts.argmax())] = 1.0
        return out

    def combine(self, predictions):
        """The log of the mean softmax over the candidates: ``log(mean_k(softmax(s_k)))``,
        ``(N, candidates)`` log-probabilities. They are scores like the head's own (the
        cross-entropy of log-probabilities is their negative log-likelihood, ``argmax`` picks
        the most probable category), so the metrics and ``decode`` read them unchanged."""
        if len(predictions) <= 1:
            return super().combine(predictions)
        scores = torch.stack([p.float() for p in predictions])  # (K, N, candidates)
        return torch.logsumexp(torch.log_softmax(scores, -1), 0) - math.log(len(predictions))

    def mix_examples(self, prediction, weights, gate, batch):
        """The softmax over the candidates mixed with the examples' weighted votes for each
        candidate (``(1 - gate) softmax + gate votes``), as log-probabilities (read like the
        head's scores, as in :meth:`combine`)."""
        cands = batch["candidates"]  # (K,)
        match = batch["vocab"][:, :, None] == cands[None, None, :].to(batch["vocab"].dtype)
        votes = (weights.float()[:, :, None] * match.float()).sum(1)  # (N, K)
        g = gate.float().clamp(1e-6, 1 - 1e-6)[:, None]
        return torch.logaddexp(torch.log1p(-g) + torch.log_softmax(prediction.float(), -1),
                               g.log() + votes.clamp_min(1e-12).log())

    def decode(self, prediction: torch.Tensor) -> np.ndarray:
        return prediction.argmax(-1).cpu().numpy()

    def to_user_units(self, decoded, target_type, stats, candidate_values):
        if candidate_values is None:
            raise ValueError(f"the infonce head needs the categories of its target "
                             f"({target_type.name!r}) to show its predictions")
        return pa.array([candidate_values[int(i)] for i in decoded], pa.string())

    def tabular_label(self, target: torch.Tensor) -> np.ndarray:
        # a target that is not one of the candidates (-1) has no class
        labels = target.detach().cpu().numpy().astype(np.float64)
        return np.where(labels >= 0, labels, np.nan)


class _Contrast(nn.Module):
    def __init__(self, d_model: int, d_text: int) -> None:
        super().__init__()
        self.query = nn.Linear(d_model, d_text)
        self.key = nn.Linear(d_text, d_text)
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def forward(self, hidden: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        q = nn.functional.normalize(self.query(hidden), dim=-1)  # (N, d_text)
        k = nn.functional.normalize(self.key(candidates), dim=-1)  # (K, d_text)
        return self.log_scale.exp() * q @ k.T  # (N, K)
