"""A task's prompts: (row id, prompt value) for a chunk's rows only.

JSON lines: the plan recorded each chunk's byte offset, so a task reads exactly the chunk's lines. Parquet:
the smallest unit a reader can address is a row group's column chunk, so a task reads only the row groups that
hold the chunk's rows and only the prompt column. A small row group (prompt column under ``CACHE_BYTES``
uncompressed) stays decoded while the task reads its chunks; a larger one is streamed in batches of
``BATCH_ROWS`` rows, and a task reading chunks front to back (an owner) continues the stream where the last
chunk ended. Memory stays one batch (or one small row group) whatever the row-group size; a task that jumps
back in a big row group (a thief taking a shard's far end) decodes the rows before its chunk again: the price
of a dataset written as few huge row groups (``bench/bench_prompts.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

BATCH_ROWS = 1024
CACHE_BYTES = 32 * 1024 * 1024
READ_BUFFER = 1 << 20  # bytes: the column chunk is read through a buffer, not loaded whole


class PromptReader:
    def __init__(self, manifest: dict[str, Any]) -> None:
        self.manifest = manifest
        ds = manifest["dataset"]
        self.format, self.path = ds["format"], ds["path"]
        self.key = manifest["job"]["data"]["prompt_key"]
        self._cached: tuple[int, pa.Array] | None = None
        self._stream: tuple[int, Iterator[pa.RecordBatch], int, pa.Array | None] | None = None  # rg, batches, pos, rest
        if self.format == "parquet":
            self.pf = pq.ParquetFile(self.path, buffer_size=READ_BUFFER, pre_buffer=False)
            md = self.pf.metadata
            self.groups: list[tuple[int, int]] = []  # (first row, rows)
            first = 0
            for rg in range(md.num_row_groups):
                self.groups.append((first, md.row_group(rg).num_rows))
                first += md.row_group(rg).num_rows
            col = self.pf.schema_arrow.get_field_index(self.key)
            self._sizes = [md.row_group(rg).column(col).total_uncompressed_size if col >= 0 else 0
                           for rg in range(md.num_row_groups)]

    def rows(self, shard: int, chunk: int, start: int, end: int) -> Iterator[tuple[int, Any]]:
        """(row_id, value) for rows [start, end); a missing key yields None (a per-row error)."""
        if self.format == "jsonl":
            yield from self._jsonl(self.manifest["jsonl_offsets"][shard][chunk], start, end)
            return
        for rg, (first, n) in enumerate(self.groups):
            lo, hi = max(start, first), min(end, first + n)
            if lo >= hi:
                continue
            if self._sizes[rg] <= CACHE_BYTES:
                col = self._group(rg)
                yield from zip(range(lo, hi), col.slice(lo - first, hi - lo).to_pylist(), strict=True)
            else:
                yield from self._streamed(rg, first, lo, hi)

    def _group(self, rg: int) -> pa.Array:
        if self._cached is None or self._cached[0] != rg:
            self._cached = (rg, self.pf.read_row_group(rg, columns=[self.key]).column(0))
        return self._cached[1]

    def _streamed(self, rg: int, first: int, lo: int, hi: int) -> Iterator[tuple[int, Any]]:
        """Rows [lo, hi) of a big row group, continuing the last stream when it has not passed ``lo``."""
        if self._stream is None or self._stream[0] != rg or self._stream[2] > lo:
            batches = self.pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[rg], columns=[self.key],
                                           use_threads=False)
            self._stream = (rg, batches, first, None)
        _, batches, pos, rest = self._stream
        while pos < hi:
            if rest is None or len(rest) == 0:
                batch = next(batches, None)
                if batch is None:
                    break
                rest = batch.column(0)
            take = min(len(rest), hi - pos)
            if pos + take > lo:
                skip = max(0, lo - pos)
                yield from zip(range(pos + skip, pos + take), rest.slice(skip, take - skip).to_pylist(),
                               strict=True)
            rest, pos = rest.slice(take), pos + take
        self._stream = (rg, batches, pos, rest)

    def _jsonl(self, offset: int, start: int, end: int) -> Iterator[tuple[int, Any]]:
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            row = start
            for line in fh:
                if row >= end:
                    break
                if not line.strip():
                    continue
                try:
                    value = json.loads(line.decode("utf-8")).get(self.key)
                except (UnicodeDecodeError, ValueError, AttributeError):
                    value = None
                yield row, value
                row += 1


def read_prompts(manifest: dict[str, Any], shard: int) -> Iterator[tuple[int, Any]]:
    """(row_id, prompt value) for every row of a shard, chunk by chunk (an owner's order)."""
    from hpcgen.rundir.chunks import shard_chunks

    reader = PromptReader(manifest)
    start, end = manifest["shards"][shard]
    for chunk, (lo, hi) in enumerate(shard_chunks((start, end), manifest.get("chunk_rows") or (end - start))):
        yield from reader.rows(shard, chunk, lo, hi)
