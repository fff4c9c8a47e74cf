"""The preprocessed store: binary format, writer and memory-mapped reader."""

from tributary_core.store.format import StoreFileError
from tributary_core.store.reader import Store, open_store

__all__ = ["Store", "StoreFileError", "open_store"]
