"""The context sampler (DESIGN §5): temporal BFS around seed rows, batches, splits, shards and
a prefetching loader. See docs/sampler.md."""

from typing import Any

from tributary_core.sampler.batch import Batch, context_seeds, sample_batch
from tributary_core.sampler.graph import SamplerGraph, TaskView, stype_names
from tributary_core.sampler.loader import SampledTask, Sampler, prefetch
from tributary_core.sampler.splits import SPLITS, HashSplit, TemporalSplit, shard

__all__ = ["SPLITS", "Batch", "ContextDataset", "HashSplit", "SampledTask", "Sampler",
           "SamplerGraph", "TaskView", "TemporalSplit", "context_seeds", "prefetch",
           "sample_batch", "shard", "stype_names"]


def __getattr__(name: str) -> Any:
    if name == "ContextDataset":  # imports torch
        from tributary_core.sampler import loader

        return loader.ContextDataset
    raise AttributeError(name)
