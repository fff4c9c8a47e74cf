"""Reading and writing metadata.json with one cattrs converter.

The converter forbids unknown keys (a typo is an error, with a suggestion) and checks types
exactly: ``"false"`` never becomes a boolean and ``5`` never becomes the string ``"5"``.
Every structural error carries its JSON path.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import attrs
import cattrs
from cattrs.errors import ForbiddenExtraKeysError

from tributary_core.errors import MetadataError, Problem
from tributary_core.metadata.model import Metadata
from tributary_core.metadata.paths import tidy_cattrs_path

__all__ = ["make_converter", "load_metadata", "parse_metadata", "dump_metadata", "write_metadata"]


class _TypeMismatch(TypeError):
    """A JSON value of the wrong type; its message is shown as is."""


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _show(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _expect(kind: type, label: str):
    def hook(value: Any, _type: Any) -> Any:
        # bool is an int in Python; JSON true must never pass as a number.
        if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
            raise _TypeMismatch(f"expected {label}, got {_json_type(value)} {_show(value)}")
        return value

    return hook


def make_converter(*, omit_if_default: bool = False) -> cattrs.Converter:
    """The one converter for metadata and plugin config classes."""
    conv = cattrs.Converter(
        forbid_extra_keys=True, detailed_validation=True, omit_if_default=omit_if_default
    )
    conv.register_structure_hook(str, _expect(str, "a string"))
    conv.register_structure_hook(bool, _expect(bool, "true or false"))
    conv.register_structure_hook(int, _expect(int, "an integer"))
    default_str_tuple = conv.get_structure_hook(tuple[str, ...])

    def str_tuple(value: Any, type_: Any) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise _TypeMismatch(
                f"expected an array of strings, got {_json_type(value)} {_show(value)}"
            )
        return default_str_tuple(value, type_)

    conv.register_structure_hook_func(lambda t: t == tuple[str, ...], str_tuple)
    conv.register_unstructure_hook(tuple, list)
    return conv


_CONVERTER = make_converter()
_WRITER = make_converter(omit_if_default=True)


def _format_exception(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, _TypeMismatch):
        return str(exc)
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, ForbiddenExtraKeysError):
        known = [a.name for a in attrs.fields(exc.cl)] if attrs.has(exc.cl) else []
        parts = []
        for extra in sorted(exc.extra_fields):
            close = difflib.get_close_matches(extra, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            parts.append(f"unknown field {extra!r}{hint}")
        allowed = f"; allowed: {', '.join(known)}" if known else ""
        return "; ".join(parts) + allowed
    if isinstance(exc, (AttributeError, TypeError)) and type_ is not None and "dict" in str(type_):
        return "expected an object"
    return cattrs.v.format_exception(exc, type_)


def parse_metadata(data: Any, *, source: str = "<metadata>") -> Metadata:
    """Structure already-decoded JSON into :class:`Metadata`; raises :class:`MetadataError`."""
    if not isinstance(data, dict):
        raise MetadataError(source, [Problem("$", f"expected an object, got {_json_type(data)}")])
    try:
        return _CONVERTER.structure(data, Metadata)
    except cattrs.BaseValidationError as exc:
        problems = []
        for line in cattrs.transform_error(exc, path="$", format_exception=_format_exception):
            message, _, path = line.rpartition(" @ ")
            problems.append(Problem(tidy_cattrs_path(path), message))
        raise MetadataError(source, problems) from None


def load_metadata(path: str | Path) -> Metadata:
    """Read and structure a metadata.json file (structure only: see ``validate_metadata``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MetadataError(str(path), [Problem("$", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MetadataError(str(path), [Problem("$", f"cannot read file: {exc}")]) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MetadataError(
            str(path), [Problem("$", f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})")]
        ) from None
    return parse_metadata(data, source=str(path))


def dump_metadata(metadata: Metadata) -> dict[str, Any]:
    """Metadata as JSON-ready data, leaving out fields at their defaults."""
    return _WRITER.unstructure(metadata)


def write_metadata(metadata: Metadata, path: str | Path) -> None:
    from tributary_core.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(dump_metadata(metadata), indent=2) + "\n")
