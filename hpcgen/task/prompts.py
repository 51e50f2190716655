"""A task's prompts: (run row id, prompt value, sampling) for a chunk's rows only.

A chunk belongs to one block (dataset, seed) (:mod:`hpcgen.rundir.blocks`); its rows are read from the
dataset's files (:mod:`hpcgen.rundir.sources`), and each row's sampling values are its dataset's ``n`` and the
per-row seed ``row_seed(block seed, dataset row, n)`` (so a row gets the samples a single-dataset run with that
seed gives it), plus, for an OpenAI batch file, the values its request's body sets (:mod:`hpcgen.spec.batch`).

JSON lines: the plan recorded each chunk's file and byte offset, so a task reads exactly the chunk's lines.
Parquet: the smallest unit a reader can address is a row group's column chunk, so a task reads only the row
groups that hold the chunk's rows and only the prompt column. A small row group (prompt column under
``CACHE_BYTES`` uncompressed) stays decoded while the task reads its chunks; a larger one is streamed in batches
of ``BATCH_ROWS`` rows, and a task reading chunks front to back (an owner) continues the stream where the last
chunk ended. Memory stays one batch (or one small row group) whatever the row-group size; a task that jumps
back in a big row group (a thief taking a shard's far end) decodes the rows before its chunk again: the price
of a dataset written as few huge row groups (``bench/bench_prompts.py``). Arrow IPC files
(``datasets.save_to_disk``) are memory-mapped: their batches are views, read without copying.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from hpcgen.rundir.blocks import NRuns, shard_block, shard_n
from hpcgen.rundir.sources import FileSet, arrow_rows, jsonl_lines
from hpcgen.spec.batch import BatchLineError, chat_messages, sampling_overrides
from hpcgen.task.engine import row_seed

BATCH_ROWS = 1024
CACHE_BYTES = 32 * 1024 * 1024
READ_BUFFER = 1 << 20  # bytes: the column chunk is read through a buffer, not loaded whole
OPEN_FILES = 4  # parquet files kept open per dataset (their metadata), least recently used dropped


class _Parquet:
    """One parquet file's prompt column, read by row group."""

    def __init__(self, path: str, key: str) -> None:
        self.pf = pq.ParquetFile(path, buffer_size=READ_BUFFER, pre_buffer=False)
        self.key = key
        md = self.pf.metadata
        self.groups: list[tuple[int, int]] = []  # (first row, rows)
        first = 0
        for rg in range(md.num_row_groups):
            self.groups.append((first, md.row_group(rg).num_rows))
            first += md.row_group(rg).num_rows
        col = self.pf.schema_arrow.get_field_index(key)
        self._sizes = [md.row_group(rg).column(col).total_uncompressed_size if col >= 0 else 0
                       for rg in range(md.num_row_groups)]
        self._cached: tuple[int, pa.Array] | None = None
        self._stream: tuple[int, Iterator[pa.RecordBatch], int, pa.Array | None] | None = None  # rg, batches, pos, rest

    def values(self, start: int, end: int) -> Iterator[Any]:
        for rg, (first, n) in enumerate(self.groups):
            lo, hi = max(start, first), min(end, first + n)
            if lo >= hi:
                continue
            if self._sizes[rg] <= CACHE_BYTES:
                yield from self._group(rg).slice(lo - first, hi - lo).to_pylist()
            else:
                yield from self._streamed(rg, first, lo, hi)

    def _group(self, rg: int) -> pa.Array:
        if self._cached is None or self._cached[0] != rg:
            self._cached = (rg, self.pf.read_row_group(rg, columns=[self.key]).column(0))
        return self._cached[1]

    def _streamed(self, rg: int, first: int, lo: int, hi: int) -> Iterator[Any]:
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
                yield from rest.slice(skip, take - skip).to_pylist()
            rest, pos = rest.slice(take), pos + take
        self._stream = (rg, batches, pos, rest)


class _Dataset:
    def __init__(self, manifest: dict[str, Any], index: int) -> None:
        self.manifest = manifest
        self.entry = manifest["datasets"][index]
        self.kind = self.entry["kind"]
        self.key = self.entry["prompt_key"]
        self.files = FileSet(self.entry)
        self._open: OrderedDict[int, _Parquet] = OrderedDict()

    def _parquet(self, i: int) -> _Parquet:
        f = self._open.pop(i, None) or _Parquet(self.files.paths[i], self.key)
        self._open[i] = f
        while len(self._open) > OPEN_FILES:
            self._open.popitem(last=False)
        return f

    def values(self, shard: int, chunk: int, lo: int, hi: int) -> Iterator[Any]:
        """The prompt values (batch files: the request objects) of dataset rows [lo, hi), in order."""
        if self.kind in ("jsonl", "openai_batch"):
            file, offset = self.manifest["jsonl_offsets"][shard][chunk]
            for line in jsonl_lines(self.files.paths, file, offset, hi - lo):
                try:
                    obj = json.loads(line.decode("utf-8"))
                except (UnicodeDecodeError, ValueError):
                    obj = None
                if self.kind == "openai_batch":
                    yield obj
                else:
                    yield obj.get(self.key) if isinstance(obj, dict) else None
            return
        for i, a, b in self.files.spans(lo, hi):
            if self.kind == "parquet":
                yield from self._parquet(i).values(a, b)
            else:
                for batch in arrow_rows(self.files.paths[i], a, b, [self.key]):
                    yield from batch.column(0).to_pylist()


class Row(NamedTuple):
    """One prompt to generate for: its run row id, the prompt, the request's sampling values, and the chat
    template keywords of its dataset (None: the job's ``data.apply_chat_template_kwargs``)."""

    row_id: int
    value: Any
    sampling: dict[str, Any]
    chat: dict[str, Any] | None = None


class PromptReader:
    def __init__(self, manifest: dict[str, Any]) -> None:
        self.manifest = manifest
        self._datasets: dict[int, _Dataset] = {}

    def rows(self, shard: int, chunk: int, start: int, end: int) -> Iterator[Row]:
        """The rows [start, end) (run row ids) of one chunk; a missing key yields None (a per-row error)."""
        block = shard_block(self.manifest, shard)
        ds = self._datasets.get(block.dataset)
        if ds is None:
            ds = self._datasets[block.dataset] = _Dataset(self.manifest, block.dataset)
        n = shard_n(self.manifest, shard)
        chat = ds.entry.get("apply_chat_template_kwargs")
        lo = block.local(start)
        for i, value in enumerate(ds.values(shard, chunk, lo, block.local(end))):
            row = start + i
            local = lo + i
            count = n.at(row) if isinstance(n, NRuns) else n
            sampling = {"n": count, "seed": row_seed(block.seed, local, block.n_samples)}
            if ds.kind == "openai_batch":
                yield Row(row, *_request(value, sampling), chat)
            else:
                yield Row(row, value, sampling, chat)


def _request(obj: Any, sampling: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A batch request's messages and sampling values (the body's override the run's). A line that no longer
    parses (the file changed since the plan) gives no prompt: that row's error."""
    body = obj.get("body") if isinstance(obj, dict) else None
    if not isinstance(body, dict):
        return None, sampling
    try:
        over = sampling_overrides(body)
    except BatchLineError:
        return None, sampling
    return chat_messages(body.get("messages")), {**sampling, **over}


def read_prompts(manifest: dict[str, Any], shard: int) -> Iterator[tuple[int, Any]]:
    """(row_id, prompt value) for every row of a shard, chunk by chunk (an owner's order)."""
    from hpcgen.rundir.chunks import shard_chunks

    reader = PromptReader(manifest)
    start, end = manifest["shards"][shard]
    for chunk, (lo, hi) in enumerate(shard_chunks((start, end), manifest.get("chunk_rows") or (end - start))):
        for row in reader.rows(shard, chunk, lo, hi):
            yield row.row_id, row.value
