"""tributary-counts: a ``count`` semantic type (non-negative integer counts, stored as log1p)
and a ``poisson`` loss head (Poisson negative log-likelihood) for Tributary.

Tributary finds this module through the entry points in ``pyproject.toml`` and calls the two
hook functions below; nothing in Tributary's own code names this package.
"""

from __future__ import annotations

from tributary_core import hookimpl

from .count import Count
from .poisson import Poisson

__all__ = ["Count", "Poisson"]


@hookimpl
def tributary_semantic_types():
    return [Count]


@hookimpl
def tributary_loss_heads():
    return [Poisson]
