"""Value encoders: ``(N, slot width) -> (N, d_model)``.

The model hands each semantic type's encoder the cells of that type, as the type's batch slot
holds them: ``number`` (N, 1) z-scores, ``timestamp`` (N, 15) features, ``boolean`` (N, 1) 0/1,
``vocab`` (N, d_text) the frozen text embeddings of the cells' vocabulary entries, ``none``
(N, 0). The widths come from :data:`tributary_core.semantic_type.SLOT_WIDTH`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tributary_core.semantic_type import SLOT_WIDTH


class LinearEncoder(nn.Module):
    """A linear map of the slot's values, then a GELU and a second linear map."""

    def __init__(self, d_in: int, d_model: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, d_model), nn.GELU(), nn.Linear(d_model, d_model))

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return self.net(values)  # (N, d_in) -> (N, d_model)


class PeriodicEncoder(nn.Module):
    """Periodic embeddings of numbers, "PLR (lite)" of Gorishniy et al. 2022 ("On Embeddings for
    Numerical Features in Tabular Deep Learning"): each of the ``d_in`` values x becomes
    ``concat(sin(2π c x), cos(2π c x))`` over ``n_frequencies`` trainable frequencies c
    (initialised from N(0, ``sigma``)), then one Linear to ``d_model`` and a ReLU.

    The phases are computed in float32 whatever the input's dtype (bf16 autocast included)."""

    def __init__(self, d_in: int, d_model: int, *, n_frequencies: int = 48,
                 sigma: float = 0.1) -> None:
        super().__init__()
        self.frequencies = nn.Parameter(torch.randn(d_in, n_frequencies) * sigma)
        self.linear = nn.Linear(2 * d_in * n_frequencies, d_model)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        phase = 2 * math.pi * self.frequencies.float() * values.float()[..., None]  # (N, d_in, k)
        features = torch.cat([torch.sin(phase), torch.cos(phase)], -1).flatten(1)  # (N, 2 d_in k)
        return torch.relu(self.linear(features))  # (N, d_model)


class PresenceEncoder(nn.Module):
    """For types with no value (identifiers): one learned vector for "present"."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.present = nn.Parameter(torch.randn(d_model) * 0.02)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return self.present.expand(values.shape[0], -1)  # (N, 0) -> (N, d_model)


def slot_encoder(slot: str, d_model: int, d_text: int) -> nn.Module:
    """The default encoder for a batch slot: ``SLOT_WIDTH[slot]`` values in (``d_text`` for
    ``vocab``, whose one vocabulary id arrives embedded), ``d_model`` out."""
    if slot == "none":
        return PresenceEncoder(d_model)
    width = d_text if slot == "vocab" else SLOT_WIDTH[slot]
    return LinearEncoder(width, d_model)
