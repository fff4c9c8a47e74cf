"""The shipped JSON Schema is generated from the attrs model and agrees with it."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest
from conftest import REPO, TINY_METADATA
from test_validate import STRUCTURE_CASES

from tributary_core import MetadataError
from tributary_core.metadata import parse_metadata
from tributary_core.metadata.schema import metadata_json_schema, shipped_schema


def test_shipped_file_is_the_generated_schema():
    assert shipped_schema() == metadata_json_schema(), (
        "regenerate: python -m tributary_core.metadata.schema > "
        "tributary_core/metadata/metadata.schema.json")


def test_schema_is_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(shipped_schema())


@pytest.mark.parametrize("name", ["nycflights13", "lahman", "tpch"])
def test_bundled_metadata_passes_schema_and_model(name):
    data = json.loads((REPO / "data" / "metadata" / f"{name}.json").read_text())
    jsonschema.validate(data, shipped_schema())
    parse_metadata(data)


@pytest.mark.parametrize("mutate", [c[1] for c in STRUCTURE_CASES], ids=[c[0] for c in STRUCTURE_CASES])
def test_schema_and_model_refuse_the_same_documents(mutate):
    data = copy.deepcopy(TINY_METADATA)
    mutate(data)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, shipped_schema())
    with pytest.raises(MetadataError):
        parse_metadata(data)


def test_every_model_field_is_documented_in_the_schema():
    defs = shipped_schema()["$defs"]
    for name, definition in defs.items():
        for field, spec in definition["properties"].items():
            assert spec.get("description"), f"{name}.{field} has no description"


def test_schema_and_model_accept_a_table_description():
    """docs/metadata.md allows a table ``description``: so do the schema and the model."""
    data = copy.deepcopy(TINY_METADATA)
    data["tables"]["orders"]["description"] = "one row per order"
    jsonschema.validate(data, shipped_schema())
    assert parse_metadata(data).tables["orders"].description == "one row per order"
    assert "`description`" in (REPO / "docs" / "metadata.md").read_text()
