"""The loss-head interface: the prediction head, loss, metrics and baseline for one kind of target.

The model gives a head the final hidden state of each context's target cell. What a head
predicts is its own business; the trainer only passes predictions back to the same head's
:meth:`LossHead.loss`, :meth:`LossHead.compute_metrics` and :meth:`LossHead.decode`, and
``tributary run predict`` the decoded values to :meth:`LossHead.to_user_units`. The tabular
(LightGBM) baseline fits :attr:`LossHead.tabular_objective` to :meth:`LossHead.tabular_label`
and scores :meth:`LossHead.tabular_prediction` with the same metrics. Test-time ensembling
(``evaluate(..., ensemble=K)``, ``predict(..., ensemble=K)``) merges a head's predictions for the
same targets from K contexts with :meth:`LossHead.combine`.

A head never tests the name of its target's semantic type: what it needs to know about it (the
batch slot, :attr:`SemanticType.target_width`) it reads from :meth:`LossHead.target_type`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa
    import torch

    from tributary_core.semantic_type import SemanticType

__all__ = ["LossHead"]


class LossHead:
    """Base class of every loss head. Subclasses set ``name`` and ``metrics``.

    Class attributes:
        name: unique across installed plugins; semantic types refer to it in ``target_losses``.
        description: one line shown by ``tributary plugins list``.
        metrics: names of the metrics :meth:`compute_metrics` returns, the headline one first.
        higher_is_better: per metric, whether larger is better (for reports).
        tabular_objective: the LightGBM objective of the tabular baseline for this head's
            targets (``"binary"``, ``"multiclass"``, ``"huber"``, ``"poisson"``, ...), or None
            (the default): no tabular baseline.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    metrics: ClassVar[tuple[str, ...]] = ()
    higher_is_better: ClassVar[Mapping[str, bool]] = {}
    tabular_objective: ClassVar[str | None] = None

    def target_type(self, target_stype: str) -> SemanticType:
        """The installed semantic type named ``target_stype`` (the registry's): where a head
        reads the target's ``batch_slot`` and ``target_width`` instead of testing its name."""
        from tributary_core.registry import get_registry

        return get_registry().semantic_type(target_stype)

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

    def combine(self, predictions: Sequence[torch.Tensor]) -> torch.Tensor:
        """One prediction from several predictions of the same targets: test-time ensembling,
        where each seed is predicted from K contexts sampled with different draws.

        ``predictions`` holds K >= 1 tensors of the same shape, this head's predictions (as
        :meth:`build_head`'s module returns them, cast to float) for the same N targets in the
        same order. The result has that shape too and is read like one prediction: by
        :meth:`loss`, :meth:`compute_metrics` and :meth:`decode`. The default is the
        element-wise mean, right for a head that predicts a value (a z-score); a head whose
        prediction is a logit or class scores overrides it to average probabilities (the
        ``bce`` and ``infonce`` heads do). Evaluation with ``ensemble=1`` never calls it."""
        import torch

        if not predictions:
            raise ValueError(f"loss head {self.name!r}: combine() needs at least one prediction")
        if len(predictions) == 1:
            return predictions[0]
        return torch.stack(list(predictions)).mean(0)

    def decode(self, prediction: torch.Tensor) -> np.ndarray:
        """Predictions as plain values: a probability, a candidate index, a z-score..."""
        raise NotImplementedError(f"loss head {self.name!r} does not implement decode()")

    def to_user_units(self, decoded: np.ndarray, target_type: SemanticType,
                      stats: Mapping[str, Any], candidate_values: Sequence[str] | None) -> pa.Array:
        """:meth:`decode`'s values as the user reads them: one Arrow value per prediction.

        ``target_type`` is the target column's semantic type, ``stats`` its statistics,
        ``candidate_values`` the target column's categories (in the order of the candidates the
        head scored) or None. The default hands ``decoded`` to
        :meth:`SemanticType.decode_prediction`, right for heads that decode a stored value
        (a z-score); heads that decode something else (a probability, a candidate index, a
        count) override it."""
        return target_type.decode_prediction(np.asarray(decoded), stats)

    def mix_examples(self, prediction: torch.Tensor, weights: torch.Tensor, gate: torch.Tensor,
                     batch: Mapping[str, Any]) -> torch.Tensor:
        """The model's example pointer (``example_pointer``): mix into ``prediction`` (N
        targets) the labels of the context's labelled examples, read from the batch's value
        slot of the target type (``batch["number"]``, ``["timestamp"]``, ``["boolean"]`` or
        ``["vocab"]``, ``(N, S...)``), averaged with ``weights`` ``(N, S)`` (the target's
        attention over its label cells, summing to 1; all 0 where a context has none) and
        mixed in by ``gate`` ``(N,)`` in [0, 1] (0 where there are none). The result must be a
        prediction of the same shape that :meth:`loss` and :meth:`compute_metrics` read.

        The default mixes nothing: a head that cannot say what an average of labels is in its
        own prediction's terms leaves its prediction as it is."""
        return prediction

    # -- the tabular baseline --------------------------------------------------------------

    def tabular_label(self, target: torch.Tensor) -> np.ndarray:
        """:meth:`target`'s labels as the 1-d float64 label LightGBM fits with
        :attr:`tabular_objective`; NaN marks a target the baseline leaves out. The default takes
        a 1-d target as it is and the last value of each row of a 2-d one (the z-scored value,
        for the timestamp slot the epoch)."""
        labels = target.detach().double().cpu()
        if labels.dim() == 2:
            labels = labels[:, -1]
        return labels.numpy().astype(np.float64)

    def tabular_prediction(self, raw: np.ndarray, target: torch.Tensor) -> torch.Tensor:
        """LightGBM's raw scores (``predict(raw_score=True)``: ``(N,)``, or ``(N, classes)`` for
        ``"multiclass"``) as this head's prediction for :meth:`compute_metrics` against
        ``target`` (the N targets they predict). The default repeats a 1-d score across a 2-d
        target's width (heads that score the last value) and keeps it as it is otherwise."""
        import torch

        scores = torch.from_numpy(np.asarray(raw, dtype=np.float64)).float()
        if scores.dim() == 1 and target.dim() == 2:
            scores = scores[:, None].expand(-1, target.shape[1]).clone()
        return scores

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
