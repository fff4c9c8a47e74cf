"""``poisson``: count targets, Poisson negative log-likelihood.

The head predicts the log of the expected count, ``log λ``; the loss is
``λ - y log λ`` (``torch.nn.functional.poisson_nll_loss`` with ``log_input=True``), whose
minimum is at ``λ = y``. Targets arrive as the ``count`` type stores them, ``log1p(y)``.
Metrics: the mean Poisson deviance (0 for a perfect prediction) and the MAE of ``λ`` in counts.
The baseline predicts the training mean for every seed; the tabular baseline is LightGBM's
``poisson`` objective on the counts (its raw score is ``log λ``, this head's prediction).
Predictions are shown as expected counts.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from tributary_core import LossHead


class Poisson(LossHead):
    name = "poisson"
    description = "count targets: Poisson negative log-likelihood of log-rates"
    metrics = ("deviance", "mae")
    higher_is_better = {"deviance": False, "mae": False}
    tabular_objective = "poisson"

    def build_head(self, d_model: int, d_text: int, target_stype: str) -> nn.Module:
        return _LogRate(d_model)

    def target(self, batch):
        return torch.expm1(batch["target_number"].double()).round().float()  # (N,) counts

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.poisson_nll_loss(prediction, target, log_input=True, full=False)

    def compute_metrics(self, prediction, target, stats):
        rate = prediction.double().clamp(max=30).exp()
        y = target.double()
        term = torch.where(y > 0, y * torch.log(y / rate), torch.zeros_like(y))
        deviance = 2 * (term - (y - rate))
        return {"deviance": float(deviance.mean()), "mae": float((rate - y).abs().mean())}

    def baseline(self, train_target: torch.Tensor, n: int) -> torch.Tensor:
        mean = float(train_target.double().mean()) if len(train_target) else 1.0
        return torch.full((n,), float(np.log(max(mean, 1e-6))))

    def decode(self, prediction: torch.Tensor) -> np.ndarray:
        return prediction.float().clamp(max=30).exp().cpu().numpy()  # expected counts

    def to_user_units(self, decoded, target_type, stats, candidate_values):
        return pa.array(np.asarray(decoded, dtype=np.float64))  # already counts


class _LogRate(nn.Module):
    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.out = nn.Linear(d_model, 1)

    def forward(self, hidden: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        return self.out(hidden)[:, 0]  # (N, d_model) -> (N,) log-rates
