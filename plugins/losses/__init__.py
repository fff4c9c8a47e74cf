"""Built-in loss heads: ``null``, ``huber``, ``bce``, ``infonce``, one module each.

Registered through the ``tributary.losses`` entry-point group like any third-party package.
"""

from __future__ import annotations

from tributary_core import hookimpl
from tributary_core.loss import LossHead

from .bce import BCE
from .huber import Huber
from .infonce import InfoNCE
from .null import Null

__all__ = ["BCE", "Huber", "InfoNCE", "Null"]


@hookimpl
def tributary_loss_heads() -> list[type[LossHead]]:
    return [Null, Huber, BCE, InfoNCE]
