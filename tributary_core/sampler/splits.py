"""Train/validation/test splits of a task's seeds, and shards of a split for distributed ranks.

- :class:`HashSplit`: a stable hash of (anchor table, anchor row, split seed) -> a number in
  [0, 1) compared with the cumulative ratios. Every seed of one anchor row (a plane seen at
  several observation times) lands in the same split, so an entity never straddles two; and
  because the hash keys on the anchor *table*, not the task, a row is in the same split for every
  task anchored on its table, cell-masking tasks included. Training several tasks at once (or
  pre-training by cell masking) therefore never shows the model a test row's label under
  another task's name (``flight_delayed`` is a function of ``flight_dep_delay``).
- :class:`TemporalSplit`: by observation time, the RelBench way: before ``val_start`` train,
  before ``test_start`` validation, else test. Seeds without an observation time (tasks on an
  untimed table) fall back to the hash split.

:func:`shard` gives rank r of n every n-th seed of a split: disjoint, and together complete.
"""

from __future__ import annotations

import zlib

import attrs
import numpy as np

from tributary_core.errors import TributaryError

__all__ = ["HashSplit", "TemporalSplit", "SPLITS", "shard", "split_index"]

SPLITS = ("train", "val", "test")
_NO_CUTOFF = np.iinfo(np.int64).max


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's step and finaliser on uint64 arrays (wrapping arithmetic): a stable hash for
    splits and per-context random streams."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def split_index(name: str) -> int:
    try:
        return SPLITS.index(name)
    except ValueError:
        raise TributaryError(f"split must be one of {', '.join(SPLITS)}, not {name!r}") from None


@attrs.frozen
class HashSplit:
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0

    def __attrs_post_init__(self) -> None:
        if len(self.ratios) != 3 or min(self.ratios) < 0 or abs(sum(self.ratios) - 1.0) > 1e-6:
            raise TributaryError(f"split ratios must be three non-negative numbers summing to 1, "
                                 f"got {self.ratios}")

    def assign(self, table: str, anchor_rows: np.ndarray, observation_time: np.ndarray) -> np.ndarray:
        """0 (train), 1 (val) or 2 (test) per seed of a task anchored on ``table``."""
        salt = np.uint64((zlib.crc32(f"{table}\0{self.seed}".encode()) << 32) | (self.seed & 0xFFFFFFFF))
        h = mix64(np.asarray(anchor_rows, dtype=np.int64).astype(np.uint64) ^ salt)
        u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
        edges = np.cumsum(self.ratios)[:2]
        return np.searchsorted(edges, u, side="right").astype(np.int8)


@attrs.frozen
class TemporalSplit:
    val_start: int  # epoch µs
    test_start: int
    fallback: HashSplit = HashSplit()

    def __attrs_post_init__(self) -> None:
        if self.val_start > self.test_start:
            raise TributaryError("temporal split: the validation start must not be after the test start")

    def assign(self, table: str, anchor_rows: np.ndarray, observation_time: np.ndarray) -> np.ndarray:
        obs = np.asarray(observation_time, dtype=np.int64)
        out = np.where(obs < self.val_start, 0, np.where(obs < self.test_start, 1, 2)).astype(np.int8)
        untimed = obs == _NO_CUTOFF
        if untimed.any():
            out[untimed] = self.fallback.assign(table, np.asarray(anchor_rows)[untimed], obs[untimed])
        return out


def shard(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s share of ``indices``: every ``world_size``-th, starting at ``rank``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise TributaryError(f"rank {rank} is not within a world of size {world_size}")
    return np.asarray(indices)[rank::world_size]
