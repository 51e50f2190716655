"""The plan: dataset fingerprint, shard table and task groups, frozen into the run's manifest.

Parquet datasets are planned from their metadata alone (row counts, schema, footer); JSON-lines datasets
need one streaming pass (line offsets, UTF-8 and JSON checks). Rows are never held in memory here.
"""

from __future__ import annotations

import errno
import hashlib
import json
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
from hpcgen.login.merge_input import KindCheck, check_names, output_format
from hpcgen.login.staging import is_hub_id, stage_models
from hpcgen.rundir import atomic
from hpcgen.rundir.chunks import auto_chunk_rows, shard_chunks
from hpcgen.rundir.fingerprint import dataset_sample, model_fingerprint
from hpcgen.rundir.layout import FORMAT, RunLayout, check_writable
from hpcgen.spec.loader import expand_path
from hpcgen.spec.schema import JobSpec

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass
class DatasetInfo:
    path: str
    format: str  # "parquet" | "jsonl"
    rows: int
    size: int
    fingerprint: str
    columns: list[str]
    line_offsets: list[int] = field(default_factory=list)  # jsonl: byte offset of each row

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.pop("line_offsets")
        return d


def dataset_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".parquet") or name.endswith(".pq"):
        return "parquet"
    if name.endswith(".jsonl") or name.endswith(".json") or name.endswith(".ndjson"):
        return "jsonl"
    raise DatasetError(f"data.path {path}: unsupported format (use .parquet or .jsonl)")


def inspect_dataset(path: Path, prompt_key: str, *, parquet_output: bool = False) -> DatasetInfo:
    """Row count, columns and a content fingerprint; checks that ``prompt_key`` is a column (and, for JSON lines
    merged into parquet, that every key has one type)."""
    if not path.exists():
        raise DatasetError(f"data.path {path} does not exist")
    if not path.is_file():
        raise DatasetError(f"data.path {path} is not a file")
    fmt = dataset_format(path)
    kinds = KindCheck(str(path)) if parquet_output else None
    info = _inspect_parquet(path) if fmt == "parquet" else _inspect_jsonl(path, prompt_key, kinds)
    if info.rows == 0:
        raise DatasetError(f"data.path {path} has no rows")
    if prompt_key not in info.columns:
        raise DatasetError(
            f"data.prompt_key '{prompt_key}' is not a column of {path} (columns: {', '.join(info.columns)})"
        )
    return info


def _inspect_parquet(path: Path) -> DatasetInfo:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a non-parquet file
        raise DatasetError(f"data.path {path} is not a readable parquet file: {exc}") from None
    size = path.stat().st_size
    with open(path, "rb") as fh:  # the footer (schema, row groups, statistics) identifies the content
        fh.seek(max(0, size - 8))
        tail = fh.read(8)
        footer_len = int.from_bytes(tail[:4], "little") if len(tail) == 8 else 0
        fh.seek(max(0, size - 8 - footer_len))
        footer = fh.read()
    digest = hashlib.sha256(size.to_bytes(8, "little") + footer).hexdigest()
    return DatasetInfo(str(path), "parquet", pf.metadata.num_rows, size, digest, list(pf.schema_arrow.names))


def _inspect_jsonl(path: Path, prompt_key: str, kinds: KindCheck | None = None) -> DatasetInfo:
    """One streaming pass: line offsets, UTF-8 and JSON checks, the union of every row's keys (in order of
    first appearance) and, for a parquet output, one type per key."""
    h = hashlib.sha256()
    offsets: list[int] = []
    columns: dict[str, None] = {}
    pos = 0
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            h.update(line)
            if line.strip():
                try:
                    obj = json.loads(line.decode("utf-8"))
                except UnicodeDecodeError:
                    raise DatasetError(f"data.path {path} line {lineno}: invalid UTF-8") from None
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"data.path {path} line {lineno}: not JSON ({exc.msg})") from None
                if not isinstance(obj, dict):
                    raise DatasetError(f"data.path {path} line {lineno}: a row must be a JSON object")
                if columns and prompt_key not in obj and prompt_key in columns:
                    raise DatasetError(f"data.path {path} line {lineno}: no '{prompt_key}' key")
                for key in obj:
                    if key not in columns:
                        columns[key] = None
                if kinds is not None:
                    kinds.add(obj, lineno)
                offsets.append(pos)
            pos += len(line)
    return DatasetInfo(str(path), "jsonl", len(offsets), pos, h.hexdigest(), list(columns), offsets)


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


def task_groups(num_shards: int, shards_per_task: int) -> list[list[int]]:
    return [list(range(i, min(num_shards, i + shards_per_task))) for i in range(0, num_shards, shards_per_task)]


@dataclass
class Plan:
    spec: JobSpec
    dataset: DatasetInfo
    model_path: str
    output_path: str
    shards: list[tuple[int, int]]
    tasks: list[list[int]]
    manifest: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # for stderr (model staging)


def make_plan(spec: JobSpec, *, job_file: str | None, overrides: list[str], download: bool = True) -> Plan:
    """Validate everything the login node can check and build the manifest (nothing written yet).
    A hub-id model is staged first (``download=False``, as in a dry run: only found in the cache)."""
    data_path = expand_path(spec.data.path)
    output = str(expand_path(spec.data.output_path)) if spec.data.output_path else ""
    out_fmt = output_format(Path(output)) if output else "parquet"
    dataset = inspect_dataset(data_path, spec.data.prompt_key, parquet_output=out_fmt == "parquet")
    check_names(dataset.columns, spec.merge.model_dump(), spec.merge.metadata, f"data.path {data_path}")
    staged = stage_models(spec, download=download)
    model_path = check_model(staged.model_path, staged.tokenizer_path)
    shards = shard_ranges(dataset.rows, spec.sharding.num_shards, spec.sharding.rows_per_shard)
    tasks = task_groups(len(shards), spec.sharding.shards_per_task)
    if output:
        check_writable(Path(output), "data.output_path")
    resolved = spec.model_copy(deep=True)
    resolved.data.path = str(data_path)
    resolved.model.path = model_path
    resolved.model.tokenizer_path = staged.tokenizer_path
    resolved.env = {**resolved.env, **staged.task_env}
    resolved.data.output_path = output or None
    chunk_rows = spec.sharding.rows_per_chunk or auto_chunk_rows(shards, spec.feed_window)
    offsets = [[dataset.line_offsets[lo] for lo, _ in shard_chunks(s, chunk_rows)] for s in shards] if (
        dataset.format == "jsonl") else []
    manifest = {
        "format": FORMAT,
        "hpcgen_version": __version__,
        "run_id": uuid.uuid4().hex,
        "created": time.time(),
        "job_file": job_file,
        "overrides": overrides,
        "job": resolved.model_dump(mode="json"),
        "generation": resolved.generation_settings(),
        "dataset": {**dataset.to_dict(), "sample": dataset_sample(str(data_path))},
        "model_fingerprint": model_fingerprint(model_path),
        "shards": [list(s) for s in shards],
        "chunk_rows": chunk_rows,
        "jsonl_offsets": offsets,  # per shard, per chunk: byte offset of the chunk's first line
        "tasks": tasks,
    }
    if staged.sources:  # hub id -> pinned revision and snapshot folder
        manifest["model_source"] = staged.sources
    return Plan(resolved, dataset, model_path, output, shards, tasks, manifest, staged.notes)


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
