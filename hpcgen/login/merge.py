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
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from hpcgen.errors import IncompleteRunError, RunDirError, UserError
from hpcgen.login.batch_output import batch_lines
from hpcgen.login.combine import combine_seeds
from hpcgen.login.merge_input import InputReader, check_names, output_format, output_names, spliced
from hpcgen.rundir import atomic
from hpcgen.rundir.blocks import dataset_index, dataset_output, dataset_shards
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
    dataset: str = ""


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
              metadata: bool | None = None, dataset: str | None = None) -> MergeResult:
    """Merge one dataset of the run (``dataset``; a run of one dataset needs no name) into its output."""
    manifest = load_manifest(run_dir)
    if dataset is None and len(manifest["datasets"]) > 1:
        names = ", ".join(d["name"] for d in manifest["datasets"])
        raise UserError(f"run {run_dir} holds several datasets ({names}): merge them all (no --output), or "
                        "name one with --dataset")
    index = dataset_index(manifest, dataset) if dataset is not None else 0
    return merge_all(run_dir, allow_partial=allow_partial, metadata=metadata, datasets=[index],
                     output=output)[0]


def merge_all(run_dir: Path, *, allow_partial: bool = False, metadata: bool | None = None,
              datasets: list[int] | None = None, output: Path | None = None) -> list[MergeResult]:
    """Merge every dataset of the run (or the ``datasets`` given, by index), each into its own verified output."""
    layout = RunLayout(run_dir)
    manifest = load_manifest(run_dir)
    picked = list(range(len(manifest["datasets"]))) if datasets is None else datasets
    if output is not None and len(picked) != 1:
        raise UserError("--output names one file: with several datasets, pick one with --dataset")
    outs = [Path(output) if output is not None else dataset_output(layout, manifest, d) for d in picked]
    for out, d in zip(outs, picked, strict=True):
        kind = manifest["datasets"][d]["kind"]
        if kind == "openai_batch" and output_format(out) != "jsonl":
            raise UserError(f"output path {out}: an OpenAI batch dataset is written in the batch output format "
                            "(JSON lines): use a .jsonl path")
        output_format(out)
        check_writable(out, "output path")
    results = []
    with Lock(layout.lock, "merge"):
        done = layout.list_done()
        for shard in range(len(manifest["shards"])):  # every chunk marked but the shard not yet (tasks finishing)
            if shard not in done and finalize_shard(layout, manifest, shard):
                done.add(shard)
        for out, d in zip(outs, picked, strict=True):
            results.append(_merge_dataset(layout, manifest, d, out, allow_partial, metadata, done))
    return results


def _merge_dataset(layout: RunLayout, manifest: dict[str, Any], d: int, out: Path, allow_partial: bool,
                   metadata: bool | None, done: set[int]) -> MergeResult:
    t0 = time.perf_counter()
    job, entry, seeds = manifest["job"], manifest["datasets"][d], manifest["seeds"]
    fmt = output_format(out)
    metadata = job["merge"]["metadata"] if metadata is None else metadata
    sources = bool(entry.get("source_columns")) and metadata
    names = output_names(job["merge"], metadata, sources=sources, seeds=len(seeds) > 1)
    groups = dataset_shards(manifest, d)  # per shard position: its shard in each seed block
    missing = sorted(s for g in groups for s in g if s not in done)
    named = f" dataset {entry['name']}" if len(manifest["datasets"]) > 1 else ""
    if missing and not allow_partial:
        raise IncompleteRunError(
            f"run {layout.root}{named} is incomplete: shards {compact_ranges(missing)} are not done "
            f"({len(missing)} of {sum(map(len, groups))}); resume it, or merge with --allow-partial")
    todo = [g for g in groups if all(s in done for s in g)]
    problem = changed_inputs(manifest, model=False, datasets=[d])
    if problem:  # the answers belong to the plan's prompts, not to what the file holds now
        raise RunDirError(f"cannot merge: {problem}; the saved answers belong to the earlier prompts")
    reader = InputReader(manifest, d)
    batch = entry["kind"] == "openai_batch"
    if not batch:
        check_names(reader.columns(), job["merge"], metadata, f"input {reader.path}", sources=sources,
                    seeds=len(seeds) > 1)
    passthrough = reader.format == "jsonl" and fmt == "jsonl"  # input lines kept byte for byte
    if reader.format == "jsonl" and not passthrough:
        reader.prepare_parquet_schema([g[0] for g in todo])
    rows = errors = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(out) as tmp:
        writer = None
        fh = open(tmp, "wb") if fmt == "jsonl" else None  # noqa: SIM115 - closed below
        try:
            for group in todo:
                gen = _verified(layout, manifest, group)
                rows += gen.num_rows
                errors += gen.num_rows - gen.column("gen_error").null_count
                if batch:
                    fh.writelines(batch_lines(reader.lines(group[0]), gen, model=job["model"]["path"],  # type: ignore[union-attr]
                                              created=int(manifest["created"]), run_id=manifest["run_id"]))
                    continue
                if sources:
                    files, local_rows = reader.sources(group[0])
                    gen = gen.append_column("source_file", pa.array(files, pa.string())).append_column(
                        "source_row", pa.array(local_rows, pa.int64()))
                if passthrough:
                    fh.writelines(_spliced_lines(reader.lines(group[0]), gen, names))  # type: ignore[union-attr]
                    continue
                table = _combine(reader.read(group[0]), gen, names)
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
    done_groups = [s for g in todo for s in g]
    dropped = sum(dropped_rows(layout, s) for s in done_groups)
    if dropped:
        log.warning("dropped %d duplicate rows (saved by tasks that had lost their chunk to another)", dropped)
    return MergeResult(str(out), rows, len(done_groups), errors, missing, time.perf_counter() - t0, dropped,
                       entry["name"])


def _verified(layout: RunLayout, manifest: dict[str, Any], group: list[int]) -> pa.Table:
    """The verified rows of one shard position, every seed's samples side by side (hpcgen.login.combine)."""
    tables = []
    for shard in group:
        gen, problem = verify_done(layout, manifest, shard)
        if gen is None:
            raise RunDirError(f"shard {shard} cannot be merged: {problem}; run 'hpcgen resume {layout.root}' to "
                              "regenerate it")
        tables.append(gen)
    return combine_seeds(tables, manifest["seeds"])
