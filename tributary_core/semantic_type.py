"""The semantic-type interface: how one kind of column is checked, encoded and embedded.

A semantic type ("stype") is what a user writes as ``"stype"`` for a column in metadata.json.
Built-in types live in ``tributary_plugins.semantic_types``; third-party packages add more
through the ``tributary_semantic_types`` hook. The core only ever talks to this class.

The life of a column, and the method that serves each step:

1. ``check_arrow_type`` and ``check_column``: is the parquet column usable at all?
   (``tributary metadata validate --raw``)
2. ``fit``: column statistics over the non-null values, optionally up to a cut-off time.
3. ``encode``: Arrow column + statistics -> named numpy arrays plus a validity mask (the store).
4. ``value_encoder``: the torch module turning a batch of encoded values into ``d_model`` vectors.

Steps 2-4 are filled by the preprocessing and model layers; a type that cannot be a prediction
target leaves ``target_losses`` empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:  # torch is heavy; only the model layer imports it for real
    import torch

__all__ = ["SemanticType", "EncodedColumn"]


class EncodedColumn:
    """A column encoded for the store: named arrays of one row each plus a validity mask.

    ``arrays`` maps a field name (e.g. ``"value"``) to an array whose first axis is the row;
    ``valid`` is a boolean array, False where the cell is null (or unparseable).
    """

    __slots__ = ("arrays", "valid")

    def __init__(self, arrays: Mapping[str, np.ndarray], valid: np.ndarray) -> None:
        n = len(valid)
        for key, value in arrays.items():
            assert value.shape[0] == n, f"field {key!r} has {value.shape[0]} rows, validity {n}"
        self.arrays = dict(arrays)
        self.valid = valid


class SemanticType:
    """Base class of every semantic type. Subclasses set ``name`` and override the methods.

    Class attributes:
        name: the value of ``"stype"`` in metadata.json; unique across installed plugins.
        description: one line shown by ``tributary plugins list``.
        target_losses: names of loss heads that can train a task whose ``target_stype`` is this
            type, the default first. Empty: this type cannot be a prediction target.
        is_ignored: True only for the type that marks a column as skipped entirely.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    target_losses: ClassVar[tuple[str, ...]] = ()
    is_ignored: ClassVar[bool] = False

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

    def fit(self, column: pa.ChunkedArray, *, time_us: np.ndarray | None = None,
            cutoff_us: int | None = None) -> dict[str, Any]:
        """Column statistics over non-null values (rows with ``time_us <= cutoff_us`` if given)."""
        raise NotImplementedError(f"semantic type {self.name!r} does not implement fit()")

    def encode(self, column: pa.ChunkedArray, stats: Mapping[str, Any]) -> EncodedColumn:
        """Encode ``column`` using statistics from :meth:`fit`; never modifies its input."""
        raise NotImplementedError(f"semantic type {self.name!r} does not implement encode()")

    def value_encoder(self, d_model: int) -> torch.nn.Module:
        """The module mapping this type's encoded values to ``(..., d_model)`` vectors."""
        raise NotImplementedError(
            f"semantic type {self.name!r} does not implement value_encoder()"
        )

    @property
    def can_be_target(self) -> bool:
        return bool(self.target_losses)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
