"""Tributary: a foundation model for relational databases, trained by predicting their cells.

The public Python API. Everything named in ``__all__`` is stable; other modules are internal.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from tributary_core.embedder import DEFAULT_DIMENSION, Embedder, EmbedderIdentity
from tributary_core.errors import MetadataError, PluginError, Problem, TributaryError
from tributary_core.loss import LossHead
from tributary_core.metadata import (
    Column,
    Metadata,
    Table,
    Task,
    load_metadata,
    validate_metadata,
)
from tributary_core.registry import Registry, get_registry, hookimpl, reset_registry
from tributary_core.semantic_type import EncodedColumn, Prepared, SemanticType, Vocabulary

try:
    __version__ = version("tributary")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    "Column",
    "DEFAULT_DIMENSION",
    "Embedder",
    "EmbedderIdentity",
    "EncodedColumn",
    "LossHead",
    "Metadata",
    "MetadataError",
    "PluginError",
    "Prepared",
    "Problem",
    "Registry",
    "SemanticType",
    "Table",
    "Task",
    "TributaryError",
    "Vocabulary",
    "get_registry",
    "hookimpl",
    "load_metadata",
    "reset_registry",
    "validate_metadata",
]
