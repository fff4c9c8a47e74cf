"""``null``: whether the target is null. Trained on every task beside the target's own head.
An ensemble of its logits is, as for ``bce``, the logit of the mean probability."""

from __future__ import annotations

from .bce import BCE


class Null(BCE):
    name = "null"
    description = "is the target null: binary cross-entropy, trained with every task"
    tabular_objective = None  # trained beside every task, never a task of its own

    def target(self, batch):
        return batch["target_is_null"].float()
