"""The embedder interface: a frozen text model mapping strings to ``[n, D]`` float32 vectors.

A backend subclasses :class:`Embedder` and implements :meth:`Embedder._embed_batch`; the base
class batches, checks every returned batch (count, dimension, finite values) and reports
progress. Backends are chosen by name from the ``tributary.embedders`` entry-point group.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import attrs
import numpy as np

from tributary_core.errors import TributaryError

__all__ = ["Embedder", "EmbedderIdentity", "DEFAULT_DIMENSION"]

#: Width of column-name and value embeddings unless the user asks for another.
DEFAULT_DIMENSION = 256


@attrs.frozen(kw_only=True)
class EmbedderIdentity:
    """What makes two embedders' vectors comparable; recorded in every store.

    Databases trained together must share one identity.
    """

    backend: str
    model: str
    dimension: int
    #: How a model's wider output is reduced to ``dimension`` (e.g. ``"truncate+l2"``).
    reduction: str = "none"


class Embedder:
    """Base class of every embedder backend.

    Class attributes:
        name: the backend name users pass as ``--embedder``; matches the entry-point name.
        default_model: the model used when none is given.
        batch_size: strings sent to :meth:`_embed_batch` at once.
    """

    name: ClassVar[str]
    default_model: ClassVar[str] = ""
    description: ClassVar[str] = ""
    batch_size: ClassVar[int] = 256
    #: How a wider model output is reduced to ``dimension``; backends that reduce override it.
    reduction: ClassVar[str] = "none"

    def __init__(self, *, model: str | None = None, dimension: int = DEFAULT_DIMENSION) -> None:
        if dimension < 1:
            raise TributaryError(f"embedder {self.name!r}: dimension must be >= 1, got {dimension}")
        self.model = model or self.default_model
        self.dimension = dimension

    @property
    def identity(self) -> EmbedderIdentity:
        return EmbedderIdentity(
            backend=self.name, model=self.model, dimension=self.dimension,
            reduction=self.reduction,
        )

    def embed(
        self,
        texts: Sequence[str],
        *,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embed ``texts`` in batches; returns ``(len(texts), dimension)`` float32.

        ``progress`` is called with the number of strings finished after each batch.
        """
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            vectors = np.asarray(self._embed_batch(batch))
            self._check_batch(batch, vectors)
            out[start : start + len(batch)] = vectors
            if progress is not None:
                progress(len(batch))
        return out

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        """Embed one batch: return ``(len(texts), dimension)`` floats. Backends implement this."""
        raise NotImplementedError(f"embedder {self.name!r} does not implement _embed_batch()")

    def _check_batch(self, texts: list[str], vectors: np.ndarray) -> None:
        expected = (len(texts), self.dimension)
        if vectors.shape != expected:
            raise TributaryError(
                f"embedder {self.name!r} (model {self.model!r}) returned shape {vectors.shape}, "
                f"expected {expected}"
            )
        if not np.isfinite(vectors).all():
            raise TributaryError(
                f"embedder {self.name!r} (model {self.model!r}) returned non-finite values"
            )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} model={self.model!r} D={self.dimension}>"
