"""The loss-head interface: the prediction head, loss, metrics and baseline for one kind of target.

The model gives a head the final hidden state of each context's target cell. What a head
predicts is its own business; the trainer only passes predictions back to the same head's
:meth:`LossHead.loss`, :meth:`LossHead.compute_metrics` and :meth:`LossHead.decode`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["LossHead"]


class LossHead:
    """Base class of every loss head. Subclasses set ``name`` and ``metrics``.

    Class attributes:
        name: unique across installed plugins; semantic types refer to it in ``target_losses``.
        description: one line shown by ``tributary plugins list``.
        metrics: names of the metrics :meth:`compute_metrics` returns, the headline one first.
        higher_is_better: per metric, whether larger is better (for reports).
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    metrics: ClassVar[tuple[str, ...]] = ()
    higher_is_better: ClassVar[Mapping[str, bool]] = {}

    def build_head(self, d_model: int, d_text: int, target_stype: str) -> torch.nn.Module:
        """The module called as ``head(hidden, candidates)``: ``hidden`` is ``(N, d_model)``,
        ``candidates`` ``(K, d_text)`` text embeddings of the target column's categories or
        None; it returns this head's prediction for the N targets."""
        raise NotImplementedError(f"loss head {self.name!r} does not implement build_head()")

    def target(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """The labels this head learns, from a batch's tensors (``target_*`` fields)."""
        raise NotImplementedError(f"loss head {self.name!r} does not implement target()")

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss over the N targets: a scalar tensor that gradients flow through."""
        raise NotImplementedError(f"loss head {self.name!r} does not implement loss()")

    def compute_metrics(self, prediction: torch.Tensor, target: torch.Tensor,
                        stats: Mapping[str, Any]) -> dict[str, float]:
        """The metrics named in ``metrics`` over a whole evaluation split. ``stats`` are the
        task's target statistics (e.g. ``std`` to report errors in the column's units)."""
        raise NotImplementedError(f"loss head {self.name!r} does not implement compute_metrics()")

    def baseline(self, train_target: torch.Tensor, n: int) -> torch.Tensor:
        """The prediction of the majority (or mean) of ``train_target``, repeated ``n`` times."""
        raise NotImplementedError(f"loss head {self.name!r} does not implement baseline()")

    def decode(self, prediction: torch.Tensor) -> np.ndarray:
        """Predictions as plain values: a probability, a candidate index, a z-score..."""
        raise NotImplementedError(f"loss head {self.name!r} does not implement decode()")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
