"""The extension contract for contributions that many plugins may add at once.

A plugin is a module (or any object) with functions decorated by ``tributary_core.hookimpl``
and named like the specs below, announced through the entry-point group
``tributary.semantic_types`` or ``tributary.losses`` in the plugin's ``pyproject.toml``::

    [project.entry-points."tributary.semantic_types"]
    counts = "tributary_counts"

Every hook returns a list of classes. The core flattens the lists of all plugins and refuses a
name registered twice, naming both sources. Pick-one components (embedder backends) are not
hooks: they are entry points resolved by name, see :mod:`tributary_core.registry`.
"""

from __future__ import annotations

from tributary_core.loss import LossHead
from tributary_core.registry import hookspec
from tributary_core.semantic_type import SemanticType


@hookspec
def tributary_semantic_types() -> list[type[SemanticType]]:
    """Return the semantic types this plugin contributes.

    Each item is a subclass of :class:`tributary_core.SemanticType` with a unique ``name``
    (the value users write as ``"stype"`` in metadata.json). Return an empty list to
    contribute nothing.
    """


@hookspec
def tributary_loss_heads() -> list[type[LossHead]]:
    """Return the loss heads this plugin contributes.

    Each item is a subclass of :class:`tributary_core.LossHead` with a unique ``name``; a
    semantic type names the heads that can train its targets in ``target_losses``.
    """
