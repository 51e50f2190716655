"""The verified, ordered, streaming merge: every input column (every key of every JSON row) unchanged +
``responses`` (verl's schema), plus per-sample metadata unless turned off. Trusts nothing but done markers and part checksums; holds one
shard at a time; writes atomically; refuses an incomplete run unless ``allow_partial``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from hpcgen.errors import IncompleteRunError, RunDirError
from hpcgen.login.merge_input import InputReader, check_names, output_format, output_names, spliced
from hpcgen.rundir import atomic
from hpcgen.rundir.fingerprint import changed_inputs
from hpcgen.rundir.layout import RunLayout, check_writable
from hpcgen.rundir.lock import Lock
from hpcgen.rundir.manifest import load_manifest
from hpcgen.rundir.parts import dropped_rows, finalize_shard, verify_done

log = logging.getLogger("hpcgen.merge")


@dataclass
class MergeResult:
    output: str
    rows: int
    shards: int
    error_rows: int
    missing_shards: list[int]
    seconds: float
    dropped_rows: int = 0


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


def _combine(inp: pa.Table, gen: pa.Table, names: dict[str, str]) -> pa.Table:
    out = inp
    for col, name in names.items():
        out = out.append_column(name, gen.column(col))
    return out


def _jsonl_lines(table: pa.Table) -> Iterator[bytes]:
    for batch in table.to_batches(max_chunksize=4096):
        for row in batch.to_pylist():
            yield (json.dumps(row, ensure_ascii=False, default=str) + "\n").encode()


def _spliced_lines(lines: list[bytes], gen: pa.Table, names: dict[str, str]) -> Iterator[bytes]:
    cols = {names[c]: gen.column(c).to_pylist() for c in names}
    for i, line in enumerate(lines):
        yield spliced(line, {name: values[i] for name, values in cols.items()})


def merge_run(run_dir: Path, *, output: Path | None = None, allow_partial: bool = False,
              metadata: bool | None = None) -> MergeResult:
    t0 = time.perf_counter()
    layout = RunLayout(run_dir)
    manifest = load_manifest(run_dir)
    job = manifest["job"]
    out = Path(output) if output else Path(job["data"]["output_path"] or layout.default_output)
    fmt = output_format(out)
    check_writable(out, "output path")
    metadata = job["merge"]["metadata"] if metadata is None else metadata
    names = output_names(job["merge"], metadata)
    shards = manifest["shards"]
    with Lock(layout.lock, "merge"):
        done = layout.list_done()
        for shard in range(len(shards)):  # every chunk marked but the shard not yet (tasks finishing at once)
            if shard not in done and finalize_shard(layout, manifest, shard):
                done.add(shard)
        missing = [i for i in range(len(shards)) if i not in done]
        if missing and not allow_partial:
            raise IncompleteRunError(
                f"run {layout.root} is incomplete: shards {compact_ranges(missing)} are not done "
                f"({len(missing)} of {len(shards)}); resume it, or merge with --allow-partial"
            )
        todo = [i for i in range(len(shards)) if i in done]
        problem = changed_inputs(manifest, model=False)
        if problem:  # the answers belong to the plan's prompts, not to what the file holds now
            raise RunDirError(f"cannot merge: {problem}; the saved answers belong to the earlier prompts")
        reader = InputReader(manifest)
        check_names(reader.columns(), job["merge"], metadata, f"input {reader.path}")
        passthrough = reader.format == "jsonl" and fmt == "jsonl"  # input lines kept byte for byte
        if reader.format == "jsonl" and not passthrough:
            reader.prepare_parquet_schema(todo)
        rows = errors = 0
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(out) as tmp:
            writer = None
            fh = open(tmp, "wb") if fmt == "jsonl" else None  # noqa: SIM115 - closed below
            try:
                for shard in todo:
                    gen, problem = verify_done(layout, manifest, shard)
                    if gen is None:
                        raise RunDirError(f"shard {shard} cannot be merged: {problem}; run 'hpcgen resume "
                                          f"{layout.root}' to regenerate it")
                    rows += gen.num_rows
                    errors += gen.num_rows - gen.column("gen_error").null_count
                    if passthrough:
                        fh.writelines(_spliced_lines(reader.lines(shard), gen, names))  # type: ignore[union-attr]
                        continue
                    table = _combine(reader.read(shard), gen, names)
                    if fh is not None:
                        fh.writelines(_jsonl_lines(table))
                    else:
                        if writer is None:
                            writer = pq.ParquetWriter(tmp, table.schema)
                        writer.write_table(table)
                if writer is None and fh is None:  # nothing done (partial): an empty file with the schema
                    pq.write_table(pa.table({names["responses"]: pa.array([], pa.list_(pa.string()))}), tmp)
            finally:
                if writer is not None:
                    writer.close()
                if fh is not None:
                    fh.close()
    dropped = sum(dropped_rows(layout, s) for s in todo)
    if dropped:
        log.warning("dropped %d duplicate rows (saved by tasks that had lost their chunk to another)", dropped)
    return MergeResult(str(out), rows, len(todo), errors, missing, time.perf_counter() - t0, dropped)
