"""metadata.json: the model, reading and writing, the JSON Schema, and validation."""

from tributary_core.metadata.io import dump_metadata, load_metadata, parse_metadata, write_metadata
from tributary_core.metadata.model import Column, Metadata, Table, Task, split_ref
from tributary_core.metadata.validate import ValidationReport, validate_metadata

__all__ = [
    "Column",
    "Metadata",
    "Table",
    "Task",
    "ValidationReport",
    "dump_metadata",
    "load_metadata",
    "parse_metadata",
    "split_ref",
    "validate_metadata",
    "write_metadata",
]
