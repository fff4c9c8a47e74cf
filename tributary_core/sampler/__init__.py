"""The context sampler (DESIGN §5): temporal BFS around seed rows, batches, splits, shards and
a prefetching loader."""

from tributary_core.sampler.batch import Batch, context_seeds, sample_batch
from tributary_core.sampler.graph import SamplerGraph, TaskView, stype_names

__all__ = ["Batch", "SamplerGraph", "TaskView", "context_seeds", "sample_batch", "stype_names"]
