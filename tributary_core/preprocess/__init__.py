"""Turning a raw database into a store: see :mod:`.pipeline`."""

from tributary_core.preprocess.pipeline import NO_CUTOFF, PreprocessResult, preprocess

__all__ = ["preprocess", "PreprocessResult", "NO_CUTOFF"]
