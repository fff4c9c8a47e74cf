"""The JSON Schema of metadata.json, derived from the attrs model.

The shipped file ``metadata.schema.json`` is this function's output; a test keeps the two equal
(regenerate with ``python -m tributary_core.metadata.schema > tributary_core/metadata/metadata.schema.json``).
The schema covers structure only; rules that need the plugins or the data (known stypes,
keys that exist, SQL that runs) are checked by ``tributary metadata validate``.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from importlib import resources
from typing import Any

import attrs

from tributary_core.metadata.model import Metadata

__all__ = ["metadata_json_schema", "shipped_schema", "SCHEMA_FILE"]

SCHEMA_FILE = "metadata.schema.json"


def _field_doc(cls: type, name: str) -> str | None:
    """The ``#:`` comment above a field, read from the class source."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except OSError:
        return None
    for i, line in enumerate(lines):
        if line.strip().startswith(f"{name}:"):
            doc = []
            j = i - 1
            while j >= 0 and lines[j].strip().startswith("#:"):
                doc.insert(0, lines[j].strip()[2:].strip())
                j -= 1
            return " ".join(doc) or None
    return None


def _schema_for(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    if tp is str:
        return {"type": "string"}
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        assert len(args) == 1, f"only Optional[...] unions are supported, got {tp}"
        return {"anyOf": [_schema_for(args[0], defs), {"type": "null"}]}
    if origin is dict:
        key, value = typing.get_args(tp)
        assert key is str, tp
        return {"type": "object", "additionalProperties": _schema_for(value, defs)}
    if origin is tuple:
        item, ellipsis = typing.get_args(tp)
        assert ellipsis is Ellipsis, tp
        return {"type": "array", "items": _schema_for(item, defs)}
    if attrs.has(tp):
        if tp.__name__ not in defs:
            defs[tp.__name__] = {}  # reserve the name before recursing
            defs[tp.__name__] = _object_schema(tp, defs)
        return {"$ref": f"#/$defs/{tp.__name__}"}
    raise TypeError(f"no JSON Schema for {tp!r}")


def _object_schema(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    required = []
    for field in attrs.fields(cls):
        prop = _schema_for(hints[field.name], defs)
        doc = _field_doc(cls, field.name)
        if doc:
            prop = {"description": doc, **prop}
        properties[field.name] = prop
        if field.default is attrs.NOTHING:
            required.append(field.name)
    out: dict[str, Any] = {"type": "object"}
    if cls.__doc__:
        out["description"] = cls.__doc__.strip().splitlines()[0]
    out.update({"properties": properties, "required": required, "additionalProperties": False})
    return out


def metadata_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a metadata.json file."""
    defs: dict[str, Any] = {}
    root = _object_schema(Metadata, defs)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Tributary database metadata",
        **root,
        "$defs": dict(sorted(defs.items())),
    }


def shipped_schema() -> dict[str, Any]:
    """The schema file shipped inside the package."""
    text = resources.files("tributary_core.metadata").joinpath(SCHEMA_FILE).read_text("utf-8")
    return json.loads(text)


if __name__ == "__main__":
    print(json.dumps(metadata_json_schema(), indent=2))
