"""The semantic-type interface: how one kind of column is checked, encoded and embedded.

A semantic type ("stype") is what a user writes as ``"stype"`` for a column in metadata.json.
Built-in types live in the ``tributary_plugins.semantic_types`` package; third-party packages
add more through the ``tributary_semantic_types`` hook. The core only ever talks to this class.

The life of a column, and the method that serves each step:

1. ``check_arrow_type`` / ``check_column``: is the parquet column usable at all?
   (``tributary metadata validate --raw``)
2. ``prepare``: Arrow column -> :class:`Prepared` numpy values + validity (done once).
3. ``fit``: JSON-able statistics over the valid values, optionally only the rows of a time
   window; ``combine`` merges the statistics of every column of this type in a database when a
   type normalizes database-wide (timestamps do).
4. ``vocabulary``: the strings to embed for the column's distinct values (categorical, text).
5. ``encode``: prepared values + statistics (+ vocabulary ids) -> :class:`EncodedColumn`, the
   arrays the store keeps; ``check_encoded`` may warn that the encoding lost information.
   ``decode`` turns one stored cell back into a readable value.
6. ``value_encoder``: the torch module turning a batch of encoded values into vectors (model).
7. ``decode_prediction``: a head's predictions, in the scale the type stores, back in the
   column's units (``tributary run predict``); ``label_values``: raw task labels as numbers
   (the leakage check).

A type that cannot be a prediction target leaves ``target_losses`` empty.

The width of each batch slot has one home, :data:`SLOT_WIDTH` (:data:`TIMESTAMP_WIDTH` for the
timestamp slot); the sampler, the value encoders, the loss heads and the baselines read it here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:  # torch is heavy; only the model layer imports it for real
    import torch

__all__ = ["SemanticType", "ColumnEncoder", "EncodedColumn", "Prepared", "Vocabulary",
           "SLOT_WIDTH", "TIMESTAMP_WIDTH"]

#: Features per cell of the ``timestamp`` batch slot: 14 cyclic features and the z-scored
#: epoch, which comes last (DESIGN §3).
TIMESTAMP_WIDTH = 15
#: Values per cell that each batch slot holds: ``number`` one z-score (or other float),
#: ``timestamp`` :data:`TIMESTAMP_WIDTH` features, ``boolean`` one bit, ``vocab`` one
#: vocabulary id (the model embeds it as ``d_text`` floats), ``none`` nothing.
SLOT_WIDTH: Mapping[str, int] = {"number": 1, "timestamp": TIMESTAMP_WIDTH, "boolean": 1,
                                 "vocab": 1, "none": 0}


class Prepared:
    """A column read out of Arrow once: ``values`` (any numpy array, one row per cell, or None
    for types that keep no value) and ``valid`` (bool, False for null or unusable cells).

    ``extra`` holds whatever else a type needs between ``prepare`` and ``encode`` (the distinct
    values of a categorical column, say). ``n_invalid`` counts non-null cells that could not be
    read (unparseable times, ±inf numbers) for the preprocessing report.
    """

    __slots__ = ("values", "valid", "extra", "n_invalid")

    def __init__(self, values: np.ndarray | None, valid: np.ndarray, *,
                 extra: Mapping[str, Any] | None = None, n_invalid: int = 0) -> None:
        assert valid.dtype == np.bool_ and valid.ndim == 1, "valid must be a 1-d bool array"
        assert values is None or len(values) == len(valid), "values and valid differ in length"
        self.values = values
        self.valid = valid
        self.extra = dict(extra or {})
        self.n_invalid = n_invalid

    def __len__(self) -> int:
        return len(self.valid)


class EncodedColumn:
    """A column encoded for the store: named arrays of one row each plus a validity mask.

    ``arrays`` maps a field name (e.g. ``"value"``) to an array whose first axis is the row;
    bool arrays are stored as bitmaps. ``valid`` is False where the cell is null.
    """

    __slots__ = ("arrays", "valid")

    def __init__(self, arrays: Mapping[str, np.ndarray], valid: np.ndarray) -> None:
        n = len(valid)
        for key, value in arrays.items():
            assert value.shape[0] == n, f"field {key!r} has {value.shape[0]} rows, validity {n}"
        self.arrays = dict(arrays)
        self.valid = valid


class Vocabulary:
    """The database's shared table of embedded strings (categorical values and text values).

    ``add`` returns the ids of ``texts``, adding the new ones; equal texts share one id, so
    ``"carrier is AA"`` from two columns is embedded once. ``values`` keeps, per id, the raw value
    the text was made from, for decoding.
    """

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self.texts: list[str] = []
        self.values: list[str] = []

    def add(self, texts: Sequence[str], values: Sequence[str] | None = None) -> np.ndarray:
        values = texts if values is None else values
        out = np.empty(len(texts), dtype=np.uint32)
        ids = self._ids
        for i, text in enumerate(texts):
            found = ids.get(text)
            if found is None:
                found = ids[text] = len(self.texts)
                self.texts.append(text)
                self.values.append(values[i])
            out[i] = found
        return out

    def __len__(self) -> int:
        return len(self.texts)


class ColumnEncoder:
    """Fits and encodes one column in row batches, so preprocessing holds one batch of a large
    column in memory, never the column (:meth:`SemanticType.column_encoder`).

    Preprocessing reads the column's batches in row order (every batch but the last of one
    size) and turns each into a :class:`Prepared` with :meth:`SemanticType.prepare`; ``rows``
    is the batch's slice of the statistics window (None: every row counts). Then:

    - with ``one_pass`` False, it calls :meth:`fit` on every batch, then :meth:`stats`, then
      reads the column again and calls :meth:`encode` on every batch with those statistics
      (a z-score needs the column's mean before its first cell);
    - with ``one_pass`` True, it calls :meth:`fit` and then :meth:`encode` on each batch as it
      reads it once, ``stats`` being None there (the encoding does not depend on the
      statistics), and :meth:`stats` at the end. :meth:`SemanticType.check_encoded`, which
      needs the statistics, is called only in two passes: a type that overrides it keeps
      ``one_pass`` False (the contract kit checks this).

    ``vocab`` is the database's shared :class:`Vocabulary`: an embedded type adds each batch's
    new distinct values to it (in order of first occurrence, so the ids are those the whole
    column would get) and stores their ids. The statistics, the vocabulary and the encoded
    cells must not depend on the batch size: a test preprocesses a database with batches of a
    few rows and compares the stores byte for byte.

    ``n_invalid`` counts the non-null cells that could not be read, over the batches seen; it
    is the sum of the batches' ``Prepared.n_invalid`` unless a subclass says otherwise.
    """

    one_pass: ClassVar[bool] = False

    def __init__(self) -> None:
        self.n_invalid = 0

    def fit(self, prepared: Prepared, rows: np.ndarray | None) -> None:
        """Add one batch to the statistics."""
        self.n_invalid += prepared.n_invalid

    def stats(self) -> dict[str, Any]:
        """The column's JSON-able statistics, as :meth:`SemanticType.fit` gives them."""
        return {}

    def encode(self, prepared: Prepared, stats: Mapping[str, Any] | None,
               vocab: Vocabulary) -> EncodedColumn:
        """One batch's cells (the rows of ``prepared``)."""
        raise NotImplementedError


class SemanticType:
    """Base class of every semantic type. Subclasses set ``name`` and override the methods.

    Class attributes:
        name: the value of ``"stype"`` in metadata.json; unique across installed plugins.
        description: one line shown by ``tributary plugins list``.
        target_losses: names of loss heads that can train a task whose ``target_stype`` is this
            type, the default first. Empty: this type cannot be a prediction target.
        is_ignored: True only for the type that marks a column as skipped entirely.
        batch_slot: where the sampler puts this type's encoded cell in a batch: ``"number"``
            (field ``value``, float32), ``"timestamp"`` (field ``value``, int64 epoch
            microseconds, from which the sampler computes :data:`TIMESTAMP_WIDTH` float32
            features, :mod:`tributary_core.timefeatures`, z-scored with the column's
            ``stats["database"]`` mean and std), ``"boolean"`` (field ``value``), ``"vocab"``
            (field ``index``, a vocabulary id) or ``"none"`` (presence only, as identifiers).
        tabular_feature: whether the LightGBM baseline uses this type's cells as features
            (False for free text, whose vocabulary ids are not categories).
        reads_dictionary: True if the batches a :meth:`column_encoder` gets of a string column
            may come dictionary-encoded (``pa.DictionaryArray``, a batch's dictionary possibly
            holding values it does not use), as parquet files mostly store strings: preprocessing
            then reads them so, sparing the decoding of every string. False (the default): plain
            strings, unless the file's own schema says dictionary.

    A type that can be a target may override :meth:`decode_prediction`; every type may override
    :meth:`label_values`. The defaults read plain numbers.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    target_losses: ClassVar[tuple[str, ...]] = ()
    is_ignored: ClassVar[bool] = False
    batch_slot: ClassVar[str] = "none"
    tabular_feature: ClassVar[bool] = True
    reads_dictionary: ClassVar[bool] = False

    # -- checking (metadata validate) ------------------------------------------------------

    def check_arrow_type(self, arrow_type: pa.DataType) -> str | None:
        """Return None if a parquet column of ``arrow_type`` can hold this type, else the reason.

        The reason is a short phrase such as ``"expected a number, got string"``; the caller
        adds the file, table and column.
        """
        return None

    def check_column(self, column: pa.ChunkedArray) -> str | None:
        """Return None if every non-null value of ``column`` can be encoded, else the reason.

        Called after :meth:`check_arrow_type` accepted the type; for example a timestamp
        type reports strings that are not times. The reason names a count and an example.
        """
        return None

    # -- encoding (preprocess) -------------------------------------------------------------

    def prepare(self, column: pa.ChunkedArray) -> Prepared:
        """Read ``column`` out of Arrow into numpy. Never modifies its input."""
        raise NotImplementedError(f"semantic type {self.name!r} does not implement prepare()")

    def fit(self, prepared: Prepared, *, rows: np.ndarray | None = None) -> dict[str, Any]:
        """JSON-able statistics over the valid cells, only those where ``rows`` is True if given
        (the rows inside the statistics time window)."""
        return {}

    def combine(self, stats: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
        """Database-wide statistics from every column of this type, or None (the default) when
        each column is normalized on its own. The result reaches :meth:`encode` as
        ``stats["database"]``."""
        return None

    def vocabulary(self, prepared: Prepared, column_name: str) -> tuple[list[str], list[str]] | None:
        """``(texts, values)`` to embed, one per distinct value in ``prepared.extra`` order, or
        None for types that embed nothing. ``texts[i]`` is embedded; ``values[i]`` is shown."""
        return None

    def encode(self, prepared: Prepared, stats: Mapping[str, Any],
               vocab_ids: np.ndarray | None = None) -> EncodedColumn:
        """Encode using statistics from :meth:`fit` (and the ids :class:`Vocabulary` gave to
        :meth:`vocabulary`'s texts). Never modifies ``prepared``."""
        raise NotImplementedError(f"semantic type {self.name!r} does not implement encode()")

    def column_encoder(self, column_name: str) -> ColumnEncoder | None:
        """A :class:`ColumnEncoder` for one column of this type, or None (the default): the
        column is then read whole and goes through :meth:`prepare`, :meth:`fit`,
        :meth:`vocabulary` and :meth:`encode`, so its working set grows with the table. The
        built-in types give one; their whole-column methods compute the same bytes."""
        return None

    def check_encoded(self, prepared: Prepared, stats: Mapping[str, Any],
                      encoded: EncodedColumn) -> str | None:
        """None, or a short warning when the encoding lost information a user would want to
        hear about (values that collapsed onto one code, cells dropped as out of range).
        Preprocessing reports it with the table and column. The default finds nothing."""
        return None

    def decode(self, cell: Mapping[str, Any], stats: Mapping[str, Any],
               vocab_values: Sequence[str]) -> Any:
        """One stored cell (field name -> that row's value) back to a readable Python value."""
        raise NotImplementedError(f"semantic type {self.name!r} does not implement decode()")

    # -- model -----------------------------------------------------------------------------

    def value_encoder(self, d_model: int, d_text: int) -> torch.nn.Module:
        """The module mapping this type's cells, as its ``batch_slot`` holds them, to
        ``(N, d_model)``: ``number`` (N, 1), ``timestamp`` (N, :data:`TIMESTAMP_WIDTH`),
        ``boolean`` (N, 1), ``vocab`` (N, d_text) text embeddings, ``none`` (N, 0). The default is
        :func:`tributary_core.nn.slot_encoder` for the slot.

        A type may take a keyword ``options``, a mapping of the run's model-wide encoder settings
        (``"numeric_encoding"``: ``"linear"`` or ``"periodic"``); the model passes it only to a
        ``value_encoder`` that names that keyword (:func:`tributary_core.train.model.value_encoder`),
        so types written without it keep working. Read it with ``.get`` and a default: keys may
        be added."""
        if self.is_ignored:
            raise NotImplementedError(f"semantic type {self.name!r} has no cells to encode")
        from tributary_core.nn import slot_encoder

        return slot_encoder(self.batch_slot, d_model, d_text)

    @property
    def target_width(self) -> int:
        """Values per cell in this type's batch slot (:data:`SLOT_WIDTH`): the width of its
        ``target_*`` tensor per target, e.g. 1 for ``number``, :data:`TIMESTAMP_WIDTH` for
        ``timestamp``. A regression head predicts this many values."""
        try:
            return SLOT_WIDTH[self.batch_slot]
        except KeyError:
            raise ValueError(f"semantic type {self.name!r} has batch_slot {self.batch_slot!r}; "
                             f"expected one of {', '.join(sorted(SLOT_WIDTH))}") from None

    # -- predictions and labels ------------------------------------------------------------

    def decode_prediction(self, values: np.ndarray, stats: Mapping[str, Any]) -> pa.Array:
        """Predictions in the scale this type stores, back in the column's units.

        ``values`` (N,) float is what a regression head decodes: the predicted stored value (the
        last one of the slot's values, for the timestamp slot the z-scored epoch); ``stats`` are
        the target column's statistics as :meth:`fit` (and ``"database"``: :meth:`combine`)
        made them. Returns one Arrow value per prediction. The default returns ``values`` as
        float64 (the stored value is the value).

        Heads whose predictions are not stored values (probabilities, categories, counts already
        in the column's units) convert them themselves in :meth:`LossHead.to_user_units`.
        """
        return pa.array(np.asarray(values, dtype=np.float64))

    def label_values(self, values: Sequence[Any]) -> np.ndarray:
        """Raw values of this type, as DuckDB returns them from a task query (Python ``bool``,
        ``int``, ``float``, ``str``, ``datetime``, ``date`` or None), as float64 numbers: the
        labels and features the leakage check compares. NaN where a value is null or not a value
        of this type.

        The default reads each value with ``float()`` (booleans as 1/0) and gives NaN for None,
        non-finite numbers and anything ``float()`` refuses."""
        out = np.full(len(values), np.nan)
        for i, value in enumerate(values):
            if value is None:
                continue
            try:
                number = float(value)
            except (TypeError, ValueError, OverflowError):
                continue
            if math.isfinite(number):
                out[i] = number
        return out

    @property
    def can_be_target(self) -> bool:
        return bool(self.target_losses)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
