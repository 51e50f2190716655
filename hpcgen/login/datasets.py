"""A dataset's files at plan time: what ``path`` names (a file, a list of files, a directory, a glob, a
``datasets.save_to_disk`` folder), each file's rows, columns and fingerprints, and the checks that make many
files one dataset (one format, the same columns, the prompt column in every file).

Reading order: a list is read in the order given; a directory or a glob in sorted path order; a
``save_to_disk`` folder in the order of its ``state.json``. Parquet files are planned from their footers
(no rows read); JSON lines and OpenAI batch files take one streaming pass; Arrow IPC files are memory-mapped
and their batch headers counted. ``datasets`` is never imported.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcgen.errors import DatasetError
from hpcgen.login.batch_input import BATCH_COLUMNS, BatchContext, check_batch, is_batch_file
from hpcgen.login.merge_input import KindCheck
from hpcgen.rundir.fingerprint import file_digest
from hpcgen.rundir.sources import arrow_batches
from hpcgen.spec.datasets import DatasetEntry
from hpcgen.spec.loader import expand_path

SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
            ".arrow": "arrow"}
HF_STATE = "state.json"


@dataclass
class DatasetInfo:
    """One file of a dataset."""

    path: str
    format: str  # "parquet" | "jsonl" | "arrow" | "openai_batch"
    rows: int
    size: int
    fingerprint: str
    columns: list[str]
    line_offsets: Any = field(default_factory=lambda: array("q"))  # jsonl: byte offset of each row
    schema: Any = None  # parquet / arrow: the Arrow schema (compared across files)
    n_per_row: Any = None  # openai_batch: n of each request

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "rows": self.rows, "size": self.size, "fingerprint": self.fingerprint,
                "sample": file_digest(Path(self.path))}


def file_format(path: Path, key: str = "data.path") -> str:
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise DatasetError(f"{key} {path}: unsupported format (use .parquet, .jsonl or .arrow files)")
    return fmt


def resolve_files(given: str | list[str], key: str) -> tuple[list[Path], bool]:
    """The files ``given`` names, in reading order, and whether it is a ``save_to_disk`` folder."""
    if isinstance(given, list):
        if not given:
            raise DatasetError(f"{key}.path is an empty list")
        files: list[Path] = []
        for item in given:
            files += resolve_files(str(item), key)[0]
        seen: set[Path] = set()
        for f in files:
            if f in seen:
                raise DatasetError(f"{key}.path lists {f} twice")
            seen.add(f)
        return files, False
    text = os.path.expanduser(os.path.expandvars(given))
    # absolute, symlinks kept: a file is named (and its format read) by its own name, not its link target's
    p = Path(os.path.abspath(text))
    if any(c in text for c in "*?[") and not p.exists():  # a file named "x[1].parquet" is a file
        pattern = str(p)
        # sorted by the names as matched (absolute, symlinks kept): a hub snapshot's links to blobs keep their order
        found = sorted(Path(os.path.abspath(m)) for m in glob.glob(pattern, recursive=True) if os.path.isfile(m))
        if not found:
            raise DatasetError(f"{key}.path {given!r} matches no file")
        return found, False
    if not p.exists():
        raise DatasetError(f"{key}.path {p} does not exist")
    if p.is_dir():
        return _folder(p, key)
    return [p], False


def _folder(d: Path, key: str) -> tuple[list[Path], bool]:
    if (d / HF_STATE).is_file():
        try:
            state = json.loads((d / HF_STATE).read_text())
            names = [str(f["filename"]) for f in state["_data_files"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"{key}.path {d}/{HF_STATE} is not a datasets.save_to_disk state file ({exc})") from None
        if state.get("_indices_data_files"):
            raise DatasetError(f"{key}.path {d}: a save_to_disk folder with an indices mapping (old datasets "
                               "versions); save it again with a recent datasets, or flatten_indices() first")
        if not names:
            raise DatasetError(f"{key}.path {d}/{HF_STATE} lists no data file")
        for name in names:
            if "/" in name or name.startswith("."):
                raise DatasetError(f"{key}.path {d}/{HF_STATE}: data file {name!r} is not a plain file name")
        files = [d / n for n in names]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise DatasetError(f"{key}.path {d}: {missing[0].name} (listed in {HF_STATE}) does not exist")
        return files, True
    if (d / "dataset_dict.json").is_file():
        try:
            splits = json.loads((d / "dataset_dict.json").read_text()).get("splits", [])
        except (OSError, ValueError, AttributeError):
            splits = []
        raise DatasetError(f"{key}.path {d} holds the splits {', '.join(map(str, splits)) or '?'} of a "
                           f"DatasetDict: point it at one of them, e.g. {d / (splits[0] if splits else 'test')}")
    files = sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith((".", "_"))
                   and p.suffix.lower() in SUFFIXES)
    if not files:
        raise DatasetError(f"{key}.path {d} holds no .parquet, .jsonl or .arrow file")
    return files, False


# --- one file -------------------------------------------------------------------------------------


def inspect_parquet(path: Path, key: str = "data.path") -> DatasetInfo:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a non-parquet file
        raise DatasetError(f"{key} {path} is not a readable parquet file: {exc}") from None
    size = path.stat().st_size
    with open(path, "rb") as fh:  # the footer (schema, row groups, statistics) identifies the content
        fh.seek(max(0, size - 8))
        tail = fh.read(8)
        footer_len = int.from_bytes(tail[:4], "little") if len(tail) == 8 else 0
        fh.seek(max(0, size - 8 - footer_len))
        footer = fh.read()
    digest = hashlib.sha256(size.to_bytes(8, "little") + footer).hexdigest()
    schema = pf.schema_arrow
    return DatasetInfo(str(path), "parquet", pf.metadata.num_rows, size, digest, list(schema.names), schema=schema)


def inspect_arrow(path: Path, key: str = "data.path") -> DatasetInfo:
    import pyarrow as pa

    try:
        batches, schema = arrow_batches(str(path))
        rows = sum(b.num_rows for b in batches)
    except (OSError, pa.ArrowException) as exc:
        raise DatasetError(f"{key} {path} is not a readable Arrow IPC file: {exc}") from None
    digest = file_digest(path)
    return DatasetInfo(str(path), "arrow", rows, path.stat().st_size, digest, list(schema.names), schema=schema)


def lines(path: Path, key: str) -> Any:
    """(line number, byte offset, object) of each non-blank line; UTF-8, JSON and object checks."""
    pos = 0
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    obj = json.loads(line.decode("utf-8"))
                except UnicodeDecodeError:
                    raise DatasetError(f"{key} {path} line {lineno}: invalid UTF-8") from None
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{key} {path} line {lineno}: not JSON ({exc.msg})") from None
                if not isinstance(obj, dict):
                    raise DatasetError(f"{key} {path} line {lineno}: a row must be a JSON object")
                yield lineno, pos, obj, line
            pos += len(line)


def inspect_jsonl(path: Path, prompt_key: str, kinds: KindCheck | None = None, key: str = "data.path") -> DatasetInfo:
    """One streaming pass: line offsets, the union of every row's keys (in order of first appearance) and, for a
    parquet output, one type per key."""
    h = hashlib.sha256()
    offsets = array("q")
    columns: dict[str, None] = {}
    size = 0
    for lineno, pos, obj, line in lines(path, key):
        h.update(line)
        if columns and prompt_key not in obj and prompt_key in columns:
            raise DatasetError(f"{key} {path} line {lineno}: no '{prompt_key}' key")
        for k in obj:
            if k not in columns:
                columns[k] = None
        if kinds is not None:
            kinds.add(obj, lineno)
        offsets.append(pos)
        size = pos + len(line)
    size = max(size, path.stat().st_size)
    return DatasetInfo(str(path), "jsonl", len(offsets), size, h.hexdigest(), list(columns), offsets)


def inspect_batch(path: Path, ctx: BatchContext) -> DatasetInfo:
    """An OpenAI batch file, every line checked (:mod:`hpcgen.login.batch_input`)."""
    f = check_batch(path, lines(path, f"{ctx.key}.path"), ctx)
    return DatasetInfo(str(path), "openai_batch", len(f.offsets), f.size, f.digest, list(BATCH_COLUMNS), f.offsets,
                       n_per_row=f.n_per_row)


def _schema_difference(a: Any, b: Any) -> str:
    missing = [n for n in a.names if n not in b.names]
    extra = [n for n in b.names if n not in a.names]
    if missing or extra:
        parts = ([f"lacks {', '.join(missing)}"] if missing else []) + ([f"adds {', '.join(extra)}"] if extra else [])
        return "; ".join(parts)
    for f in a:
        g = b.field(f.name)
        if not f.type.equals(g.type):
            return f"column '{f.name}' is {g.type}, not {f.type}"
    return "its columns are in another order"


def check_same_columns(files: list[DatasetInfo], key: str, prompt_key: str) -> None:
    """Parquet and Arrow files of one dataset must have one schema (the merge writes one)."""
    first = files[0]
    for info in files:
        if prompt_key not in info.columns:
            raise DatasetError(f"{key}.prompt_key '{prompt_key}' is not a column of {info.path} (columns: "
                               f"{', '.join(info.columns)})")
        if info.schema is not None and not info.schema.remove_metadata().equals(first.schema.remove_metadata()):
            raise DatasetError(f"{key}.path: {info.path} has other columns than {first.path} "
                               f"({_schema_difference(first.schema, info.schema)}); one dataset needs one schema")


# --- one dataset ----------------------------------------------------------------------------------


@dataclass
class DatasetPlan:
    """A dataset of the run as planned: its files in reading order and what the manifest records of it."""

    entry: DatasetEntry
    kind: str
    files: list[DatasetInfo]
    columns: list[str]
    output_path: str | None
    n_samples: int
    n_runs: list[list[int]] | None = None

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def given(self) -> str:
        p = self.entry.path
        return p if isinstance(p, str) else f"{len(p)} files"

    def describe(self) -> str:
        files = f"{len(self.files)} {self.kind} files" if len(self.files) > 1 else self.files[0].path
        return f"{self.rows} rows of {files}"

    def offset(self, row: int) -> list[int]:
        """[file index, byte offset] of dataset row ``row`` (JSON lines and batch files)."""
        first = 0
        for i, f in enumerate(self.files):
            if row < first + f.rows:
                return [i, int(f.line_offsets[row - first])]
            first += f.rows
        raise IndexError(row)

    def manifest_entry(self) -> dict[str, Any]:
        e = self.entry
        return {"name": e.name, "kind": self.kind, "given": e.path, "files": [f.to_dict() for f in self.files],
                "rows": self.rows, "columns": self.columns, "prompt_key": e.prompt_key, "n_samples": self.n_samples,
                "n_runs": self.n_runs, "output_path": self.output_path,
                "apply_chat_template_kwargs": e.apply_chat_template_kwargs, "source_columns": len(self.files) > 1}


def _kind(entry: DatasetEntry, files: list[Path], hf: bool) -> str:
    key = entry.key
    fmts = sorted({file_format(f, f"{key}.path") for f in files})
    if len(fmts) > 1:
        raise DatasetError(f"{key}.path mixes {' and '.join(fmts)} files: one format per dataset")
    fmt = fmts[0]
    want = entry.format
    if want == "auto":
        return "openai_batch" if fmt == "jsonl" and is_batch_file(files[0]) else fmt
    if (want == "openai_batch" and fmt != "jsonl") or (want != "openai_batch" and want != fmt):
        raise DatasetError(f"{key}.format is {want}, but {files[0]} is a {fmt} file")
    return want


def plan_dataset(entry: DatasetEntry, *, parquet_output: bool, response_length: int, seeds: list[int],
                 temperature: float = 1.0) -> DatasetPlan:
    """Resolve, read (metadata, or one pass) and check one dataset's files."""
    from hpcgen.login.merge_input import output_format

    key = entry.key
    paths, hf = resolve_files(entry.path, key)
    kind = _kind(entry, paths, hf)
    output = str(expand_path(entry.output_path)) if entry.output_path else None
    if kind == "openai_batch" and output and output_format(Path(output)) != "jsonl":
        raise DatasetError(f"{key}.output_path {output}: an OpenAI batch dataset is answered in the batch output "
                           "format, JSON lines: use a .jsonl path")
    n = entry.n_samples
    if kind == "parquet":
        files = [inspect_parquet(p, f"{key}.path") for p in paths]
    elif kind == "arrow":
        files = [inspect_arrow(p, f"{key}.path") for p in paths]
    elif kind == "jsonl":
        kinds = KindCheck("") if parquet_output else None
        files = []
        for p in paths:
            if kinds is not None:
                kinds.path = str(p)
            files.append(inspect_jsonl(p, entry.prompt_key, kinds, f"{key}.path"))
    else:
        ctx = BatchContext(key, response_length, seeds, entry.n_samples if entry.n_explicit else 1, temperature)
        files = [inspect_batch(p, ctx) for p in paths]
    rows = sum(f.rows for f in files)
    if rows == 0:
        raise DatasetError(f"{key}.path {paths[0] if len(paths) == 1 else entry.path} has no rows")
    n_runs = None
    if kind == "openai_batch":
        ns = [x for f in files for x in f.n_per_row]
        n = max(ns)
        if min(ns) != n:
            n_runs = [[i, x] for i, x in enumerate(ns) if i == 0 or ns[i - 1] != x]
        columns = list(BATCH_COLUMNS)
    elif kind == "jsonl":
        columns = list(dict.fromkeys(c for f in files for c in f.columns))
        for f in files:
            if f.rows and entry.prompt_key not in f.columns:
                raise DatasetError(f"{key}.prompt_key '{entry.prompt_key}' is not a column of {f.path} "
                                   f"(columns: {', '.join(f.columns)})")
    else:
        check_same_columns(files, key, entry.prompt_key)
        columns = list(files[0].columns)
    return DatasetPlan(entry, kind, files, columns, output, n, n_runs)


def changed_files(entry: dict[str, Any]) -> str | None:
    """Re-read a planned dataset's files (footers, or one pass): the first whose rows or fingerprint differ."""
    key = f"dataset {entry['name']}"
    for f in entry["files"]:
        p = Path(f["path"])
        try:
            if entry["kind"] == "parquet":
                now = inspect_parquet(p, key)
            elif entry["kind"] == "arrow":
                now = inspect_arrow(p, key)
            else:
                now = inspect_jsonl(p, entry["prompt_key"] if entry["kind"] == "jsonl" else "body", None, key)
        except (OSError, DatasetError) as exc:
            return f"dataset file {p} cannot be read as planned ({exc})"
        if now.rows != f["rows"] or now.fingerprint != f["fingerprint"]:
            return f"dataset {p} changed since the plan (rows {f['rows']} -> {now.rows}, fingerprint differs)"
    return None
