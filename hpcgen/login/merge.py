"""The verified, ordered, streaming merge: every input column unchanged + ``responses`` (verl's schema),
plus per-sample metadata unless turned off. Trusts nothing but done markers and part checksums; holds one
shard at a time; writes atomically; refuses an incomplete run unless ``allow_partial``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from hpcgen.errors import IncompleteRunError, RunDirError
from hpcgen.rundir import atomic
from hpcgen.rundir.layout import RunLayout, check_writable
from hpcgen.rundir.lock import Lock
from hpcgen.rundir.manifest import load_manifest
from hpcgen.rundir.parts import verify_done

META_COLUMNS = ("finish_reasons", "response_tokens", "prompt_tokens", "prompt_truncated", "gen_error")
OUTPUT_COLUMNS = ("responses", *META_COLUMNS)


@dataclass
class MergeResult:
    output: str
    rows: int
    shards: int
    error_rows: int
    missing_shards: list[int]
    seconds: float


def compact_ranges(ids: list[int]) -> str:
    """[0,1,2,5] -> '0-2,5'."""
    out, ids = [], sorted(ids)
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(out)


class InputReader:
    """Sequential reads of contiguous, ascending row ranges of the input dataset."""

    def __init__(self, manifest: dict[str, Any]) -> None:
        ds = manifest["dataset"]
        self.format, self.path = ds["format"], ds["path"]
        self.manifest = manifest
        self.schema: pa.Schema | None = None
        if self.format == "parquet":
            self.pf = pq.ParquetFile(self.path)
            self.schema = self.pf.schema_arrow
            self._batches: Iterator[pa.RecordBatch] | None = None
            self._buffer: list[pa.RecordBatch] = []  # batches not yet consumed, starting at row self._pos
            self._pos = 0

    def prepare(self, shard_ids: list[int]) -> None:
        """JSON lines have no schema: unify the shards' inferred schemas first (one extra pass)."""
        if self.format == "jsonl":
            schemas = [pa.Table.from_pylist(self._jsonl_rows(s)).schema for s in shard_ids]
            self.schema = pa.unify_schemas(schemas) if schemas else pa.schema([])

    def _jsonl_rows(self, shard: int) -> list[dict[str, Any]]:
        start, end = self.manifest["shards"][shard]
        rows: list[dict[str, Any]] = []
        with open(self.path, "rb") as fh:
            fh.seek(self.manifest["jsonl_offsets"][shard])
            for line in fh:
                if len(rows) >= end - start:
                    break
                if line.strip():
                    rows.append(json.loads(line))
        return rows

    def read(self, shard: int) -> pa.Table:
        if self.format == "jsonl":
            return pa.Table.from_pylist(self._jsonl_rows(shard), schema=self.schema)
        start, end = self.manifest["shards"][shard]
        if self._batches is None or start < self._pos:  # (re)start the stream
            self._batches, self._buffer, self._pos = self.pf.iter_batches(batch_size=8192), [], 0
        buffered = self._pos + sum(b.num_rows for b in self._buffer)
        while buffered < end:
            batch = next(self._batches, None)
            if batch is None:
                raise RunDirError(f"rows up to {end} are beyond the dataset {self.path}: did it change since the plan?")
            self._buffer.append(batch)
            buffered += batch.num_rows
        window = pa.Table.from_batches(self._buffer, schema=self.schema)
        # keep only what later shards may still need (rows from `end` on)
        self._buffer, offset, self._pos = window.slice(end - self._pos).to_batches(), self._pos, end
        return window.slice(start - offset, end - start)


def _combine(inp: pa.Table, gen: pa.Table, metadata: bool) -> pa.Table:
    keep = [c for c in inp.column_names if c not in OUTPUT_COLUMNS]
    out = inp.select(keep)
    for col in ("responses", *META_COLUMNS) if metadata else ("responses",):
        out = out.append_column(col, gen.column(col))
    return out


def _jsonl_lines(table: pa.Table) -> Iterator[bytes]:
    for batch in table.to_batches(max_chunksize=4096):
        for row in batch.to_pylist():
            yield (json.dumps(row, ensure_ascii=False, default=str) + "\n").encode()


def merge_run(run_dir: Path, *, output: Path | None = None, allow_partial: bool = False,
              metadata: bool | None = None) -> MergeResult:
    t0 = time.perf_counter()
    layout = RunLayout(run_dir)
    manifest = load_manifest(run_dir)
    job = manifest["job"]
    out = Path(output) if output else Path(job["data"]["output_path"] or layout.default_output)
    check_writable(out, "output path")
    metadata = job["merge"]["metadata"] if metadata is None else metadata
    n_samples = job["data"]["n_samples"]
    shards = manifest["shards"]
    with Lock(layout.lock, "merge"):
        done = layout.list_done()
        missing = [i for i in range(len(shards)) if i not in done]
        if missing and not allow_partial:
            raise IncompleteRunError(
                f"run {layout.root} is incomplete: shards {compact_ranges(missing)} are not done "
                f"({len(missing)} of {len(shards)}); resume it, or merge with --allow-partial"
            )
        todo = [i for i in range(len(shards)) if i in done]
        reader = InputReader(manifest)
        reader.prepare(todo)
        rows = errors = 0
        jsonl = out.name.endswith(".jsonl")
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(out) as tmp:
            writer = None
            fh = open(tmp, "wb") if jsonl else None
            try:
                for shard in todo:
                    gen, problem = verify_done(layout, shard, tuple(shards[shard]), n_samples)
                    if gen is None:
                        raise RunDirError(f"shard {shard} cannot be merged: {problem}; run 'hpcgen resume "
                                          f"{layout.root}' to regenerate it")
                    table = _combine(reader.read(shard), gen, metadata)
                    rows += table.num_rows
                    errors += table.num_rows - gen.column("gen_error").null_count
                    if fh is not None:
                        fh.writelines(_jsonl_lines(table))
                    else:
                        if writer is None:
                            writer = pq.ParquetWriter(tmp, table.schema)
                        writer.write_table(table)
                if writer is None and fh is None:  # nothing done (partial): an empty file with the schema
                    pq.write_table(pa.table({"responses": pa.array([], pa.list_(pa.string()))}), tmp)
            finally:
                if writer is not None:
                    writer.close()
                if fh is not None:
                    fh.close()
    return MergeResult(str(out), rows, len(todo), errors, missing, time.perf_counter() - t0)
