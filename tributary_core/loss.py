"""The loss-head interface: the prediction head, loss and metrics for one kind of target."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import torch

__all__ = ["LossHead"]


class LossHead:
    """Base class of every loss head. Subclasses set ``name`` and ``metrics``.

    Class attributes:
        name: unique across installed plugins; semantic types refer to it in ``target_losses``.
        description: one line shown by ``tributary plugins list``.
        metrics: names of the metrics :meth:`compute_metrics` returns, the headline one first.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    metrics: ClassVar[tuple[str, ...]] = ()

    def build_head(self, d_model: int) -> torch.nn.Module:
        """The module mapping a target cell's final hidden state ``(N, d_model)`` to a prediction."""
        raise NotImplementedError(f"loss head {self.name!r} does not implement build_head()")

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss over the batch: a scalar tensor that gradients flow through."""
        raise NotImplementedError(f"loss head {self.name!r} does not implement loss()")

    def compute_metrics(self, prediction: torch.Tensor, target: torch.Tensor) -> Mapping[str, float]:
        """Metrics named in ``metrics`` over a whole evaluation split."""
        raise NotImplementedError(f"loss head {self.name!r} does not implement compute_metrics()")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
