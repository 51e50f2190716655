"""Chunks: the unit of work that tasks claim, save and mark done. A shard's rows are cut into chunks of
``chunk_rows`` rows (the last one shorter), numbered from 0 within the shard; the plan freezes ``chunk_rows``.

Chunks are what lets a task that finished its own shard take over rows of another: small enough that the run's
tail is short (a chunk is the most one task can still be busy with after the others ran out of work), large
enough that claiming, saving and marking stay a small part of a chunk's cost on a shared filesystem.
"""

from __future__ import annotations

from typing import Any

CHUNKS_PER_SHARD = 32  # the default aims at this many chunks per shard ...
MIN_CHUNK_ROWS = 8  # ... but no fewer rows per chunk than this
MAX_CHUNK_ROWS = 4096


def auto_chunk_rows(shards: list[tuple[int, int]], window: int = 0) -> int:
    """Rows per chunk from the dataset size and the number of shards (one task each by default), and no fewer
    than half the rows a task keeps in flight (``window``): a task claims chunks as its engine has room, so
    smaller chunks would only let it hold more of them at once without making the tail any shorter."""
    biggest = max((e - s for s, e in shards), default=1)
    return max(MIN_CHUNK_ROWS, -(-window // 2), min(MAX_CHUNK_ROWS, -(-biggest // CHUNKS_PER_SHARD)))


def shard_chunks(bounds: tuple[int, int] | list[int], chunk_rows: int) -> list[tuple[int, int]]:
    """The chunks of a shard as global row ranges, in order (chunk k is the k-th)."""
    start, end = bounds
    return [(lo, min(end, lo + chunk_rows)) for lo in range(start, end, chunk_rows)]


def chunk_bounds(manifest: dict[str, Any], shard: int, chunk: int) -> tuple[int, int]:
    start, end = manifest["shards"][shard]
    lo = start + chunk * manifest["chunk_rows"]
    return lo, min(end, lo + manifest["chunk_rows"])


def num_chunks(manifest: dict[str, Any], shard: int) -> int:
    start, end = manifest["shards"][shard]
    return -(-(end - start) // manifest["chunk_rows"])


def chunk_of(manifest: dict[str, Any], shard: int, row: int) -> int:
    return (row - manifest["shards"][shard][0]) // manifest["chunk_rows"]
