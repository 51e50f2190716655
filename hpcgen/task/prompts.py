"""A task's prompts: (row id, prompt value) for its shard's rows only, streamed in small batches.

JSON lines: the plan recorded each shard's byte offset, so a task reads exactly its lines. Parquet: the
smallest unit a reader can address is a row group's column chunk; a task reads only the row groups that
hold its rows and only the prompt column, in batches of ``BATCH_ROWS`` rows, skipping (decoding, not
keeping) the rows of the row group before its first one. Memory stays one batch whatever the row-group size;
reading is not free when a row group spans many shards (see ``bench/bench_prompts.py`` and the README).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pyarrow.parquet as pq

BATCH_ROWS = 1024
READ_BUFFER = 1 << 20  # bytes: the column chunk is read through a buffer, not loaded whole


def read_prompts(manifest: dict[str, Any], shard: int, batch_rows: int = BATCH_ROWS) -> Iterator[tuple[int, Any]]:
    """(row_id, prompt value) for the shard's rows only; a missing key yields None (a per-row error)."""
    start, end = manifest["shards"][shard]
    ds, key = manifest["dataset"], manifest["job"]["data"]["prompt_key"]
    if ds["format"] == "jsonl":
        yield from _jsonl(ds["path"], manifest["jsonl_offsets"][shard], start, end, key)
        return
    pf = pq.ParquetFile(ds["path"], buffer_size=READ_BUFFER, pre_buffer=False)
    md, first = pf.metadata, 0
    for rg in range(md.num_row_groups):
        n = md.row_group(rg).num_rows
        if first < end and start < first + n:
            pos = first
            for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[rg], columns=[key], use_threads=False):
                lo, hi = max(start, pos), min(end, pos + batch.num_rows)
                if lo < hi:
                    values = batch.column(0).slice(lo - pos, hi - lo).to_pylist()
                    yield from zip(range(lo, hi), values, strict=True)
                pos += batch.num_rows
                if pos >= end:
                    break
        first += n
        if first >= end:
            break


def _jsonl(path: str, offset: int, start: int, end: int, key: str) -> Iterator[tuple[int, Any]]:
    with open(path, "rb") as fh:
        fh.seek(offset)
        row = start
        for line in fh:
            if row >= end:
                break
            if not line.strip():
                continue
            try:
                value = json.loads(line.decode("utf-8")).get(key)
            except (UnicodeDecodeError, ValueError, AttributeError):
                value = None
            yield row, value
            row += 1
