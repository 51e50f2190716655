"""A task's prompts: (row id, prompt value) for a chunk's rows only.

JSON lines: the plan recorded each chunk's byte offset, so a task reads exactly the chunk's lines. Parquet:
the smallest unit a reader can address is a row group's column chunk, so a task reads only the row groups that
hold the chunk's rows and only the prompt column. The last row group read stays decoded in memory when it is
small (under ``CACHE_BYTES`` uncompressed), so consecutive chunks of one row group cost one read; a larger row
group is streamed in batches of ``BATCH_ROWS`` rows up to the chunk (memory stays one batch, but reading it
again for each chunk is the price of a dataset written as few huge row groups).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

BATCH_ROWS = 1024
CACHE_BYTES = 256 * 1024 * 1024


class PromptReader:
    def __init__(self, manifest: dict[str, Any]) -> None:
        self.manifest = manifest
        ds = manifest["dataset"]
        self.format, self.path = ds["format"], ds["path"]
        self.key = manifest["job"]["data"]["prompt_key"]
        self._cached: tuple[int, pa.Array] | None = None
        if self.format == "parquet":
            self.pf = pq.ParquetFile(self.path, buffer_size=1 << 20, pre_buffer=False)
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
                continue
            pos = first
            for batch in self.pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[rg], columns=[self.key],
                                              use_threads=False):
                blo, bhi = max(lo, pos), min(hi, pos + batch.num_rows)
                if blo < bhi:
                    yield from zip(range(blo, bhi), batch.column(0).slice(blo - pos, bhi - blo).to_pylist(),
                                   strict=True)
                pos += batch.num_rows
                if pos >= hi:
                    break

    def _group(self, rg: int) -> pa.Array:
        if self._cached is None or self._cached[0] != rg:
            self._cached = (rg, self.pf.read_row_group(rg, columns=[self.key]).column(0))
        return self._cached[1]

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
