"""The embedder interface: a frozen text model mapping strings to ``[n, D]`` float32 vectors.

A backend subclasses :class:`Embedder` and implements :meth:`Embedder._embed_batch`, which
returns the model's *native* vectors (any width ``W >= D``). The base class plans batches (by
count and by characters), checks every batch and reduces it to D. The check, which every
backend's output passes through before it is used or cached, refuses a batch with a wrong
shape, a width that differs from the backend's earlier batches, a non-finite value, a
non-finite norm or a zero vector, naming the backend and the offending string.
Backends are chosen by name from the ``tributary.embedders`` entry-point group.

Reduction (``"ortho-v1"``, recorded in the store's embedder identity): a model giving exactly D
values is only L2-normalised; a wider one is multiplied by a fixed ``W x D`` matrix with
orthonormal columns and then L2-normalised. The matrix is the Q factor (signs fixed so that
``diag(R) > 0``) of a standard-normal ``W x D`` matrix drawn from NumPy's legacy
``RandomState`` seeded with ``crc32("tributary-ortho-v1:{W}:{D}")``: the same on every machine
and version, and, unlike truncation, it keeps the geometry of models that are not trained to be
truncated (a random orthogonal projection preserves inner products up to a small distortion).
"""

from __future__ import annotations

import functools
import math
import numbers
import zlib
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any, ClassVar

import attrs
import numpy as np

from tributary_core.errors import TributaryError

__all__ = [
    "DEFAULT_DIMENSION",
    "Embedder",
    "EmbedderIdentity",
    "REDUCTION",
    "plan_batches",
    "reduce_vectors",
    "require_int",
    "require_float",
    "require_choice",
]

#: Width of column-name and value embeddings unless the user asks for another.
DEFAULT_DIMENSION = 256
#: The reduction every backend uses unless it produces exactly D values itself.
REDUCTION = "ortho-v1"


@attrs.frozen(kw_only=True)
class EmbedderIdentity:
    """What makes two embedders' vectors comparable; recorded in every store.

    Databases trained together must share one identity.
    """

    backend: str
    model: str
    dimension: int
    #: How a model's wider output is reduced to ``dimension`` (see the module docstring).
    reduction: str = "none"

    def describe(self) -> str:
        return f"{self.backend}/{self.model} D={self.dimension} ({self.reduction})"


@functools.lru_cache(maxsize=16)
def _projection(width: int, dimension: int) -> np.ndarray:
    seed = zlib.crc32(f"tributary-ortho-v1:{width}:{dimension}".encode())
    gauss = np.random.RandomState(seed).standard_normal((width, dimension))
    q, r = np.linalg.qr(gauss)
    q *= np.sign(np.diag(r))[None, :]
    out = q.astype(np.float32)
    out.flags.writeable = False
    return out


def reduce_vectors(native: np.ndarray, dimension: int) -> np.ndarray:
    """Apply the ``ortho-v1`` reduction to ``[n, W]`` vectors: returns ``[n, dimension]`` float32.

    Zero vectors stay zero (nothing to normalise).
    """
    native = np.asarray(native, dtype=np.float32)
    width = native.shape[1]
    if width < dimension:
        raise ValueError(f"cannot reduce {width}-wide vectors to {dimension}")
    out = native if width == dimension else native @ _projection(width, dimension)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.divide(out, norms, out=np.zeros_like(out), where=norms > 0).astype(np.float32)


def plan_batches(texts: Sequence[str], max_count: int, max_chars: int = 0) -> list[tuple[int, int]]:
    """Split ``texts`` (in order) into ``[start, stop)`` ranges of at most ``max_count`` strings
    and, when ``max_chars`` > 0, at most ``max_chars`` characters (a longer single string is a
    batch of its own)."""
    out: list[tuple[int, int]] = []
    start, chars = 0, 0
    for i, text in enumerate(texts):
        n = len(text)
        if i > start and (i - start >= max_count or (max_chars and chars + n > max_chars)):
            out.append((start, i))
            start, chars = i, 0
        chars += n
    if start < len(texts):
        out.append((start, len(texts)))
    return out


def require_int(owner: str, option: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """``value`` if it is an integer from ``minimum`` to ``maximum``, else a
    :class:`TributaryError` naming ``owner``, the option and the rule. For backends checking
    their ``-E`` options (a converter such as ``int`` only parses the text)."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum \
        and (maximum is None or value <= maximum)
    if not ok:
        rule = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise TributaryError(f"{owner}: {option} must be an integer {rule}, got {value!r}")
    return int(value)


def require_float(owner: str, option: str, value: Any, *, minimum: float,
                  inclusive: bool = False) -> float:
    """``value`` if it is a finite number above ``minimum`` (or equal to it, with
    ``inclusive``); NaN and infinity are refused."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) \
        and (value >= minimum if inclusive else value > minimum)
    if not ok:
        rule = f"{'>=' if inclusive else '>'} {minimum:g}"
        raise TributaryError(f"{owner}: {option} must be a finite number {rule}, got {value!r}")
    return float(value)


def require_choice(owner: str, option: str, value: Any, choices: Collection[str]) -> str:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        listed = ", ".join(choices)
        raise TributaryError(f"{owner}: {option} must be one of {listed}, got {value!r}")
    return value


class Embedder:
    """Base class of every embedder backend.

    Class attributes:
        name: the backend name users pass as ``--embedder``; matches the entry-point name.
        default_model: the model used when none is given.
        batch_size: at most this many strings per :meth:`_embed_batch` call.
        max_batch_chars: at most this many characters per call (0: no limit).
        reduction: :data:`REDUCTION`, or ``"none"`` for a backend that yields exactly D values.
        cacheable: whether preprocessing keeps its vectors in the embedding cache.
        options: extra constructor keywords a user may set from the command line
            (``-E name=value``), each with the type its text is converted to. The converter only
            parses; the constructor checks the value (:func:`require_int` and friends), so a
            value from Python is held to the same rule.
    """

    name: ClassVar[str]
    default_model: ClassVar[str] = ""
    description: ClassVar[str] = ""
    batch_size: ClassVar[int] = 256
    max_batch_chars: ClassVar[int] = 0
    reduction: ClassVar[str] = REDUCTION
    options: ClassVar[dict[str, Callable[[str], Any]]] = {}
    #: False for backends cheaper to run than to look up (the test-only ``hashing``).
    cacheable: ClassVar[bool] = True
    native_width: int | None = None

    def __init__(self, *, model: str | None = None, dimension: int = DEFAULT_DIMENSION) -> None:
        dimension = require_int(f"embedder {self.name!r}", "dimension", dimension, 1)
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise TributaryError(f"embedder {self.name!r}: the model name is empty (leave --model "
                                 f"out for the backend's default)")
        self.model = model or self.default_model
        self.dimension = dimension
        #: The native width of the first batch; every later batch must have the same.
        self.native_width: int | None = None

    @property
    def identity(self) -> EmbedderIdentity:
        return EmbedderIdentity(
            backend=self.name, model=self.model, dimension=self.dimension,
            reduction=self.reduction,
        )

    @property
    def source(self) -> str:
        """Where the vectors come from beyond the identity: ``""`` for a model run here, a
        server's endpoint (without credentials or query) for an HTTP backend. The embedding
        cache keeps each source's vectors apart; it never holds a secret."""
        return ""

    # -- what callers use ------------------------------------------------------------------

    def plan(self, texts: Sequence[str]) -> list[tuple[int, int]]:
        """The ``[start, stop)`` batches this backend wants ``texts`` sent in."""
        return plan_batches(texts, self.batch_size, self.max_batch_chars)

    def embed_batches(self, batches: Sequence[list[str]]) -> Iterator[tuple[int, np.ndarray]]:
        """Embed each batch; yields ``(batch index, [len(batch), D] float32)`` as batches finish.

        The base class runs them one after another in order; HTTP backends run several at once
        and yield them in the order they complete.
        """
        for i, batch in enumerate(batches):
            yield i, self.finish(batch, self._embed_batch(batch))

    def embed(
        self,
        texts: Sequence[str],
        *,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embed ``texts`` with no cache and no de-duplication: ``(len(texts), D)`` float32.

        ``progress`` is called with the number of strings finished after each batch.
        Preprocessing goes through :func:`tributary_core.embed_cache.embed_texts` instead.
        """
        texts = list(texts)
        spans = self.plan(texts)
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for i, vectors in self.embed_batches([texts[a:b] for a, b in spans]):
            a, b = spans[i]
            out[a:b] = vectors
            if progress is not None:
                progress(b - a)
        return out

    def embed_native(self, texts: list[str]) -> np.ndarray:
        """The model's own vectors for one batch, checked but not reduced (for the server)."""
        native = np.asarray(self._embed_batch(texts), dtype=np.float32)
        self._check(texts, native)
        return native

    def finish(self, texts: list[str], native: Any) -> np.ndarray:
        """Check one batch of native vectors and reduce it to D."""
        native = np.asarray(native, dtype=np.float32)
        self._check(texts, native)
        if self.reduction == "none":
            if native.shape[1] != self.dimension:
                raise TributaryError(f"embedder {self.name!r} (model {self.model!r}) returned "
                                     f"{native.shape[1]} values per string, expected "
                                     f"{self.dimension}")
            return native
        if native.shape[1] < self.dimension:
            raise TributaryError(
                f"embedder {self.name!r}: model {self.model!r} gives {native.shape[1]} values per "
                f"string, fewer than the requested dimension {self.dimension}; pass --dimension "
                f"{native.shape[1]} or less")
        reduced = reduce_vectors(native, self.dimension)
        self._check_norms(texts, reduced, "after the ortho-v1 reduction ")
        return reduced

    def load(self) -> None:
        """Load the model or open connections now rather than on the first batch (optional)."""

    def close(self) -> None:
        """Release connections, threads or models. The embedder may not be used afterwards."""

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what backends implement -----------------------------------------------------------

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        """Embed one batch: ``(len(texts), W)`` floats, W the model's width. Backends implement this."""
        raise NotImplementedError(f"embedder {self.name!r} does not implement _embed_batch()")

    def _where(self) -> str:
        source = f" at {self.source}" if self.source else ""
        return f"embedder {self.name!r} (model {self.model!r}){source}"

    def _check(self, texts: list[str], vectors: np.ndarray) -> None:
        """Refuse a degenerate batch (see the module docstring) before anything uses it."""
        if vectors.ndim != 2 or vectors.shape[0] != len(texts) or vectors.shape[1] < 1:
            raise TributaryError(
                f"{self._where()} returned shape {vectors.shape} for {len(texts)} strings")
        width = vectors.shape[1]
        if self.native_width is None:
            self.native_width = width
        elif width != self.native_width:
            raise TributaryError(
                f"{self._where()} returned {width} values per string for {_shown(texts[0])}, "
                f"after {self.native_width} for earlier strings; nothing from this batch is used")
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():
            bad = int(np.flatnonzero(~finite)[0])
            raise TributaryError(
                f"{self._where()} returned non-finite values (NaN or infinity) for "
                f"{_shown(texts[bad])}; nothing from this batch is used")
        self._check_norms(texts, vectors, "")

    def _check_norms(self, texts: list[str], vectors: np.ndarray, stage: str) -> None:
        with np.errstate(over="ignore", under="ignore"):
            norms = np.linalg.norm(vectors, axis=1)
        bad = np.flatnonzero(~np.isfinite(norms) | (norms <= 0))
        if len(bad):
            what = "a zero vector" if norms[bad[0]] <= 0 else "a vector whose norm overflows"
            raise TributaryError(
                f"{self._where()} returned {what} {stage}for {_shown(texts[int(bad[0])])}; "
                f"nothing from this batch is used")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} model={self.model!r} D={self.dimension}>"


def _shown(text: str, limit: int = 60) -> str:
    """``text`` quoted on one line, cut to about ``limit`` characters."""
    return repr(text if len(text) <= limit else text[:limit] + "...")
