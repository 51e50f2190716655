"""A dataset's files read as one dataset: row positions across files, Arrow IPC files (``datasets.save_to_disk``)
and JSON lines that continue from one file into the next. Shared by the plan, the task's prompt reader and the
merge; no rows are held here.

A dataset entry of the manifest (:mod:`hpcgen.rundir.blocks`) lists its files in reading order with their
row counts: a dataset row ``r`` is row ``r - first`` of the file whose rows ``[first, first + rows)`` hold it.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa


class FileSet:
    """The files of one dataset (manifest entry) and where each dataset row lives."""

    def __init__(self, entry: dict[str, Any]) -> None:
        self.entry = entry
        self.kind: str = entry["kind"]
        self.paths: list[str] = [f["path"] for f in entry["files"]]
        self.firsts: list[int] = []
        first = 0
        for f in entry["files"]:
            self.firsts.append(first)
            first += int(f["rows"])
        self.rows = first

    def locate(self, row: int) -> tuple[int, int]:
        """(file index, row within that file) of dataset row ``row``."""
        i = bisect.bisect_right(self.firsts, row) - 1
        return i, row - self.firsts[i]

    def spans(self, lo: int, hi: int) -> Iterator[tuple[int, int, int]]:
        """(file index, first, end) rows within each file that dataset rows ``[lo, hi)`` cover, in order."""
        i = max(0, bisect.bisect_right(self.firsts, lo) - 1)
        while lo < hi and i < len(self.paths):
            first = self.firsts[i]
            end = first + int(self.entry["files"][i]["rows"])
            if end > lo:
                yield i, lo - first, min(hi, end) - first
                lo = min(hi, end)
            i += 1


def arrow_batches(path: str) -> tuple[Iterator[pa.RecordBatch], pa.Schema]:
    """The record batches and schema of a memory-mapped Arrow IPC file: the stream format (what ``datasets``
    writes), else the random-access file format. Batches are zero-copy views of the map."""
    source = pa.memory_map(path, "r")
    try:
        reader = pa.ipc.open_stream(source)
        return iter(reader), reader.schema
    except pa.ArrowInvalid:
        source.seek(0)
        f = pa.ipc.open_file(source)
        return (f.get_batch(i) for i in range(f.num_record_batches)), f.schema


def arrow_rows(path: str, lo: int, hi: int, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Slices of the file's batches holding its rows ``[lo, hi)`` (only ``columns`` if given)."""
    batches, _ = arrow_batches(path)
    pos = 0
    for batch in batches:
        n = batch.num_rows
        a, b = max(lo, pos), min(hi, pos + n)
        if a < b:
            part = batch.slice(a - pos, b - a)
            yield part.select(columns) if columns is not None else part
        pos += n
        if pos >= hi:
            break


def jsonl_lines(paths: list[str], file: int, offset: int, count: int) -> Iterator[bytes]:
    """``count`` non-blank lines (without line ends) from byte ``offset`` of file ``file``, going on into the
    following files as needed."""
    left = count
    while left > 0 and file < len(paths):
        with open(paths[file], "rb") as fh:
            fh.seek(offset)
            for line in fh:
                if not line.strip():
                    continue
                yield line.rstrip(b"\r\n")
                left -= 1
                if left == 0:
                    return
        file, offset = file + 1, 0


def json_value(line: bytes, key: str) -> Any:
    """The ``key`` value of one JSON-lines row (None when the line is not an object or lacks it)."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return obj.get(key) if isinstance(obj, dict) else None


def row_values(manifest: dict[str, Any], rows: list[int]) -> dict[int, Any]:
    """The prompt values of a few run rows (for reports: each read on its own; parquet by row group)."""
    import pyarrow.parquet as pq

    from hpcgen.rundir.blocks import blocks
    from hpcgen.rundir.chunks import chunk_of

    out: dict[int, Any] = {}
    for b in blocks(manifest):
        mine = sorted(r for r in set(rows) if b.start <= r < b.start + b.rows)
        if not mine:
            continue
        entry = manifest["datasets"][b.dataset]
        files, key = FileSet(entry), entry["prompt_key"]
        for r in mine:
            local = r - b.start
            if entry["kind"] in ("jsonl", "openai_batch"):
                shard = next(s for s in range(b.first_shard, b.first_shard + b.shards)
                             if manifest["shards"][s][0] <= r < manifest["shards"][s][1])
                chunk = chunk_of(manifest, shard, r)
                first = manifest["shards"][shard][0] + chunk * manifest["chunk_rows"]
                file, offset = manifest["jsonl_offsets"][shard][chunk]
                line = list(jsonl_lines(files.paths, file, offset, r - first + 1))[-1]
                value = json_value(line, "body" if entry["kind"] == "openai_batch" else key)
                out[r] = value.get("messages") if entry["kind"] == "openai_batch" and isinstance(value, dict) else value
                continue
            i, row = files.locate(local)
            if entry["kind"] == "parquet":
                pf = pq.ParquetFile(files.paths[i])
                first = 0
                for rg in range(pf.metadata.num_row_groups):
                    n = pf.metadata.row_group(rg).num_rows
                    if first <= row < first + n:
                        out[r] = pf.read_row_group(rg, columns=[key]).column(0)[row - first].as_py()
                        break
                    first += n
            else:
                for batch in arrow_rows(files.paths[i], row, row + 1, [key]):
                    out[r] = batch.column(0)[0].as_py()
    return out
