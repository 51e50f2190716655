"""The plan: dataset fingerprints, blocks of (dataset, seed), the shard table and task groups, frozen into the
run's manifest.

Parquet datasets are planned from their metadata alone (row counts, schema, footer); JSON-lines datasets
need one streaming pass (line offsets, UTF-8 and JSON checks). Rows are never held in memory here. The row
space (``hpcgen.rundir.blocks``): one block per (dataset, seed), each cut into shards the same way.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcgen import __version__
from hpcgen.errors import DatasetError, ModelError, RunDirError
from hpcgen.login.datasets import (
    DatasetInfo,
    DatasetPlan,
    file_format,
    inspect_jsonl,
    inspect_parquet,
    plan_dataset,
)
from hpcgen.login.merge_input import KindCheck, check_names, output_format
from hpcgen.login.staging import is_hub_id, stage_models
from hpcgen.rundir import atomic
from hpcgen.rundir.chunks import auto_chunk_rows, shard_chunks
from hpcgen.rundir.fingerprint import model_fingerprint
from hpcgen.rundir.layout import FORMAT, RunLayout, check_writable
from hpcgen.spec.loader import expand_path
from hpcgen.spec.schema import JobSpec

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")

__all__ = ["DatasetInfo", "inspect_dataset"]


def inspect_dataset(path: Path, prompt_key: str, *, parquet_output: bool = False) -> DatasetInfo:
    """One file: row count, columns and a content fingerprint; checks that ``prompt_key`` is a column (and, for
    JSON lines merged into parquet, that every key has one type)."""
    if not path.exists():
        raise DatasetError(f"data.path {path} does not exist")
    if not path.is_file():
        raise DatasetError(f"data.path {path} is not a file")
    fmt = file_format(path)
    if fmt == "parquet":
        info = inspect_parquet(path)
    elif fmt == "jsonl":
        info = inspect_jsonl(path, prompt_key, KindCheck(str(path)) if parquet_output else None)
    else:
        raise DatasetError(f"data.path {path}: unsupported format (use .parquet or .jsonl)")
    if info.rows == 0:
        raise DatasetError(f"data.path {path} has no rows")
    if prompt_key not in info.columns:
        raise DatasetError(
            f"data.prompt_key '{prompt_key}' is not a column of {path} (columns: {', '.join(info.columns)})"
        )
    return info


def check_model(model_path: str, tokenizer_path: str | None = None) -> str:
    """Local model directories need a config and a tokenizer; hub ids are left to the task."""
    p = expand_path(model_path)
    if not p.exists():
        if is_hub_id(model_path):  # not staged (dry run, model not in the cache yet)
            return model_path
        raise ModelError(f"model.path {model_path} does not exist")
    if not (p / "config.json").is_file():
        raise ModelError(f"model.path {p} has no config.json")
    if tokenizer_path and is_hub_id(tokenizer_path):  # not staged (dry run)
        return str(p)
    tok = expand_path(tokenizer_path) if tokenizer_path else p
    if not any((tok / f).is_file() for f in _TOKENIZER_FILES):
        raise ModelError(f"model.path {tok} has no tokenizer (tokenizer.json / tokenizer_config.json)")
    return str(p)


def shard_ranges(rows: int, num_shards: int | None, rows_per_shard: int | None) -> list[tuple[int, int]]:
    """Contiguous, non-empty row ranges covering [0, rows)."""
    if num_shards is None:
        rows_per_shard = rows_per_shard or 1000
        num_shards = -(-rows // rows_per_shard)
        return [(i * rows_per_shard, min(rows, (i + 1) * rows_per_shard)) for i in range(num_shards)]
    num_shards = min(num_shards, rows)
    return [(i * rows // num_shards, (i + 1) * rows // num_shards) for i in range(num_shards)]


def task_groups(num_shards: int, shards_per_task: int, num_tasks: int | None = None) -> list[list[int]]:
    """Shards per task: ``shards_per_task`` consecutive shards each, or ``num_tasks`` groups of about equal size."""
    if num_tasks is not None:
        tasks = min(num_tasks, num_shards)
        return [list(range(i * num_shards // tasks, (i + 1) * num_shards // tasks)) for i in range(tasks)]
    return [list(range(i, min(num_shards, i + shards_per_task))) for i in range(0, num_shards, shards_per_task)]


def plan_blocks(datasets: list[DatasetPlan], seeds: list[int], num_shards: int | None,
                rows_per_shard: int | None) -> tuple[list[dict[str, Any]], list[tuple[int, int]]]:
    """Blocks of (dataset, seed) and their shards (run row ids). ``num_shards`` is spread over the blocks in
    proportion to their rows (at least one each); every seed block of a dataset is cut the same way."""
    total = sum(d.rows for d in datasets) * len(seeds)
    blocks: list[dict[str, Any]] = []
    shards: list[tuple[int, int]] = []
    start = 0
    for i, d in enumerate(datasets):
        if num_shards is not None:
            k = max(1, min(d.rows, int(num_shards * d.rows / total + 0.5)))
            local = shard_ranges(d.rows, k, None)
        else:
            local = shard_ranges(d.rows, None, rows_per_shard)
        for seed in seeds:
            blocks.append({"dataset": i, "seed": seed, "start": start, "rows": d.rows, "first_shard": len(shards),
                           "shards": len(local)})
            shards += [(start + a, start + b) for a, b in local]
            start += d.rows
    return blocks, shards


@dataclass
class Plan:
    spec: JobSpec
    datasets: list[DatasetPlan]
    model_path: str
    shards: list[tuple[int, int]]
    tasks: list[list[int]]
    manifest: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # for stderr (model staging)

    @property
    def rows(self) -> int:
        return self.shards[-1][1] if self.shards else 0


def _absolute(path: str | list[str]) -> str | list[str]:
    """A path (or glob, or list of them) made absolute against the submit directory, as the plan read it."""
    if isinstance(path, list):
        return [str(expand_path(p)) for p in path]
    return str(expand_path(path))


def absolute_data_paths(spec: JobSpec) -> JobSpec:
    """A copy of the job with every dataset and output path absolute (against the submit directory)."""
    resolved = spec.model_copy(deep=True)
    if spec.data.path is not None:
        resolved.data.path = _absolute(spec.data.path)
    if spec.data.output_path:
        resolved.data.output_path = str(expand_path(spec.data.output_path))
    for d in resolved.datasets.values():
        d.path = _absolute(d.path)
        if d.output_path:
            d.output_path = str(expand_path(d.output_path))
    return resolved


def _resolved_spec(spec: JobSpec, model_path: str) -> JobSpec:
    """The job as the manifest freezes it: absolute paths everywhere."""
    resolved = absolute_data_paths(spec)
    resolved.model.path = model_path
    return resolved


def make_plan(spec: JobSpec, *, job_file: str | None, overrides: list[str], download: bool = True) -> Plan:
    """Validate everything the login node can check and build the manifest (nothing written yet).
    A hub-id model is staged first (``download=False``, as in a dry run: only found in the cache)."""
    seeds = spec.run_seeds
    datasets = []
    for entry in spec.dataset_entries():
        output = str(expand_path(entry.output_path)) if entry.output_path else None
        dp = plan_dataset(entry, parquet_output=output_format(Path(output)) == "parquet" if output else True,
                          response_length=spec.rollout.response_length, seeds=seeds,
                          temperature=spec.temperature)
        if dp.kind != "openai_batch":
            check_names(dp.columns, spec.merge.model_dump(), spec.merge.metadata, f"{entry.key}.path {dp.given}",
                        sources=len(dp.files) > 1, seeds=len(seeds) > 1)
        if output:
            check_writable(Path(output), f"{entry.key}.output_path")
        datasets.append(dp)
    inputs = {os.path.realpath(f.path): d.entry.key for d in datasets for f in d.files}
    for d in datasets:
        if d.output_path and (src := inputs.get(os.path.realpath(d.output_path))):
            raise DatasetError(f"{d.entry.key}.output_path {d.entry.output_path} is an input file of {src}.path: "
                               "the merge would overwrite it")
    staged = stage_models(spec, download=download)
    model_path = check_model(staged.model_path, staged.tokenizer_path)
    blocks, shards = plan_blocks(datasets, seeds, spec.sharding.num_shards, spec.sharding.rows_per_shard)
    tasks = task_groups(len(shards), spec.sharding.shards_per_task, spec.sharding.num_tasks)
    resolved = _resolved_spec(spec, model_path)
    resolved.model.tokenizer_path = staged.tokenizer_path
    resolved.env = {**resolved.env, **staged.task_env}
    chunk_rows = spec.sharding.rows_per_chunk or auto_chunk_rows(shards, spec.feed_window)
    offsets: list[list[list[int]]] = []
    for b in blocks:
        d = datasets[b["dataset"]]
        for lo, hi in shards[b["first_shard"]:b["first_shard"] + b["shards"]]:
            offsets.append([d.offset(c - b["start"]) for c, _ in shard_chunks((lo, hi), chunk_rows)]
                           if d.kind in ("jsonl", "openai_batch") else [])
    manifest = {
        "format": FORMAT,
        "hpcgen_version": __version__,
        "run_id": uuid.uuid4().hex,
        "created": time.time(),
        "job_file": job_file,
        "overrides": overrides,
        "job": resolved.model_dump(mode="json"),
        "generation": resolved.generation_settings(),
        "datasets": [d.manifest_entry() for d in datasets],
        "seeds": seeds,
        "blocks": blocks,
        "model_fingerprint": model_fingerprint(model_path),
        "shards": [list(s) for s in shards],
        "chunk_rows": chunk_rows,
        "jsonl_offsets": offsets,  # per shard, per chunk: [file index, byte offset] of the chunk's first line
        "tasks": tasks,
    }
    if staged.sources:  # hub id -> pinned revision and snapshot folder
        manifest["model_source"] = staged.sources
    return Plan(resolved, datasets, model_path, shards, tasks, manifest, staged.notes)


def create_run_dir(run_dir: Path, manifest: dict[str, Any], *, unique: bool = False) -> RunLayout:
    """Materialise the run directory atomically: built in a temp sibling, then renamed into place.

    ``unique`` (the default run directory): a name already taken gets a suffix (-2, -3, ...), found by the
    atomic rename itself, so two submits in the same second never share a directory."""
    run_dir = run_dir.resolve()
    if run_dir.exists() and not unique:
        if (run_dir / "manifest.json").exists():
            raise RunDirError(f"run directory {run_dir} already holds a run; pick another --run-dir or resume it")
        if not run_dir.is_dir() or any(run_dir.iterdir()):
            raise RunDirError(f"run directory {run_dir} exists and is not empty")
    check_writable(run_dir.with_name(f".{run_dir.name}.new") if unique else run_dir, "--run-dir")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.", dir=run_dir.parent))
    try:
        tmp.chmod(0o777 & ~atomic.current_umask())  # mkdtemp makes 0700: a shared project folder could not read it
        layout = RunLayout(tmp)
        layout.make_dirs()
        atomic.write_json(layout.manifest, manifest)
        for i in range(1, 10_000):
            target = run_dir if i == 1 else run_dir.with_name(f"{run_dir.name}-{i}")
            if unique and (target.exists() or target.is_symlink()):
                continue
            try:
                if target.exists():
                    target.rmdir()  # an empty directory the user made for the run
                os.rename(tmp, target)
                return RunLayout(target)
            except OSError as exc:  # taken in between by another submit
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                    raise
                if not unique:
                    raise RunDirError(f"run directory {run_dir} was just taken by another submit; "
                                      "pick another --run-dir") from None
        raise RunDirError(f"no free run directory name next to {run_dir}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
