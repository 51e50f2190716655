"""The merge's view of the input dataset: contiguous, ascending row ranges read back with every column and every
key of every row, and the names of the columns the merge adds (which must not clash with the input's).

Parquet is streamed in record batches (memory stays about one shard). JSON lines are read per shard; for a
JSON-lines output each input line is kept byte for byte (the generated fields are appended to the object), for
a parquet output the schema is the union of every row's keys with one type per key (numbers promoted to
float where ints and floats mix), checked before anything is written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from hpcgen.errors import DatasetError, RunDirError, UserError
from hpcgen.rundir.blocks import shard_block
from hpcgen.rundir.sources import FileSet, arrow_batches, jsonl_lines

GENERATED = ("responses", "finish_reasons", "response_tokens", "prompt_tokens", "prompt_truncated", "gen_error")
META = GENERATED[1:]
SOURCE_COLUMNS = ("source_file", "source_row")  # a dataset of several files: where each row came from
SEED_COLUMN = "sample_seed"  # several seeds: the seed of each sample (a list parallel to responses)
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
PARQUET_SUFFIXES = (".parquet", ".pq")


def output_format(path: Path) -> str:
    """'jsonl' or 'parquet' from the output's suffix, whatever its case; anything else is refused."""
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    raise UserError(f"output path {path}: unknown format {path.suffix or '(no suffix)'!r}; "
                    "use .parquet or .jsonl (also .pq, .ndjson)")


def output_names(merge: dict[str, Any], metadata: bool, *, sources: bool = False, seeds: bool = False
                 ) -> dict[str, str]:
    """Generated column -> its name in the output (``merge.response_key``, ``merge.metadata_prefix``); with
    metadata, a dataset of several files also gets ``source_file``/``source_row`` and a run of several seeds
    ``sample_seed``."""
    names = {"responses": merge.get("response_key") or "responses"}
    if metadata:
        prefix = merge.get("metadata_prefix") or ""
        names.update({c: prefix + c for c in META})
        if sources:
            names.update({c: prefix + c for c in SOURCE_COLUMNS})
        if seeds:
            names[SEED_COLUMN] = prefix + SEED_COLUMN
    return names


def check_names(columns: list[str], merge: dict[str, Any], metadata: bool, where: str, *, sources: bool = False,
                seeds: bool = False) -> None:
    """A generated column named like an input column would drop or shadow the input's: refuse, naming both."""
    names = output_names(merge, metadata, sources=sources, seeds=seeds)
    for gen, out in names.items():
        if out in columns:
            option = ("merge.response_key=<new name>" if gen == "responses"
                      else "merge.metadata_prefix=<prefix> (or merge.metadata=false, merge --no-metadata)")
            raise DatasetError(f"{where} already has a column '{out}', which the merged output adds; rename it "
                               f"in the input, or set {option}")
    if len(set(names.values())) != len(names):
        raise DatasetError("merge.response_key clashes with a metadata column name; choose another")


_KIND = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}


class KindCheck:
    """Top-level value kinds per key across JSON rows (for a parquet output: one type per column)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.kinds: dict[str, tuple[str, int]] = {}

    def add(self, row: dict[str, Any], lineno: int) -> None:
        for key, value in row.items():
            if value is None:
                continue
            kind = _KIND.get(type(value), type(value).__name__)
            seen = self.kinds.setdefault(key, (kind, lineno))
            if seen[0] != kind:
                raise DatasetError(
                    f"data.path {self.path}: key '{key}' is {seen[0]} on line {seen[1]} and {kind} on line {lineno}; "
                    "a parquet output needs one type per column: write JSON lines (data.output_path=<file>.jsonl) "
                    "or give the key one type")


class InputReader:
    """Sequential reads of one dataset's rows, shard by shard in ascending order (any shard of the dataset's
    blocks: every seed block covers the same dataset rows)."""

    def __init__(self, manifest: dict[str, Any], dataset: int = 0) -> None:
        self.manifest = manifest
        self.entry = manifest["datasets"][dataset]
        self.files = FileSet(self.entry)
        self.format = "jsonl" if self.entry["kind"] in ("jsonl", "openai_batch") else self.entry["kind"]
        given = self.entry.get("given")
        self.path = given if isinstance(given, str) else f"{len(self.files.paths)} files of {self.entry['name']}"
        self.schema: pa.Schema | None = None
        if self.format != "jsonl":
            self.schema = self._file_schema(0)
            self._batches: Iterator[pa.RecordBatch] | None = None
            self._buffer: list[pa.RecordBatch] = []  # batches not yet consumed, starting at row self._pos
            self._pos = 0

    def _file_schema(self, i: int) -> pa.Schema:
        if self.format == "parquet":
            return pq.ParquetFile(self.files.paths[i]).schema_arrow
        return arrow_batches(self.files.paths[i])[1]

    def _stream(self) -> Iterator[pa.RecordBatch]:
        """Every batch of every file, in reading order, with the first file's schema."""
        for path in self.files.paths:
            if self.format == "parquet":
                batches: Iterator[pa.RecordBatch] = pq.ParquetFile(path).iter_batches(batch_size=8192)
            else:
                batches = arrow_batches(path)[0]
            for b in batches:
                yield b if b.schema.equals(self.schema) else pa.RecordBatch.from_arrays(b.columns, schema=self.schema)

    def local(self, shard: int) -> tuple[int, int]:
        """The dataset rows a shard covers."""
        start, end = self.manifest["shards"][shard]
        base = shard_block(self.manifest, shard).start
        return start - base, end - base

    def columns(self) -> list[str]:
        return list(self.schema.names) if self.schema is not None else list(self.entry["columns"])

    def sources(self, shard: int) -> tuple[list[str], list[int]]:
        """Each row's file and its row index within that file."""
        files: list[str] = []
        rows: list[int] = []
        for i, a, b in self.files.spans(*self.local(shard)):
            files += [self.files.paths[i]] * (b - a)
            rows += range(a, b)
        return files, rows

    # --- JSON lines ----------------------------------------------------------------------------------
    def lines(self, shard: int) -> list[bytes]:
        """The shard's input lines, without their line ends."""
        lo, hi = self.local(shard)
        file, offset = self.manifest["jsonl_offsets"][shard][0]
        out = list(jsonl_lines(self.files.paths, file, offset, hi - lo))
        if len(out) != hi - lo:
            raise RunDirError(f"rows up to {hi} are beyond the dataset {self.path}: did it change since the plan?")
        return out

    def prepare_parquet_schema(self, shard_ids: list[int]) -> None:
        """JSON lines to parquet: the union of every row's keys, one type each (one extra pass)."""
        if self.format != "jsonl":
            return
        schema = pa.schema([])
        for shard in shard_ids:
            rows = [json.loads(x) for x in self.lines(shard)]
            keys = list(dict.fromkeys(k for r in rows for k in r))
            fields = []
            for key in keys:
                try:
                    fields.append(pa.field(key, pa.array([r.get(key) for r in rows]).type))
                except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
                    raise self._type_error(key, exc) from None
            try:
                schema = pa.unify_schemas([schema, pa.schema(fields)], promote_options="permissive")
            except (pa.ArrowException, TypeError, ValueError) as exc:
                m = re.search(r"Field (\S+) has incompatible types", str(exc))
                raise self._type_error(m[1] if m else "?", exc) from None
        self.schema = schema

    def _type_error(self, key: str, exc: Exception) -> DatasetError:
        return DatasetError(f"input {self.path}: the values of '{key}' do not share one type "
                            f"({str(exc).splitlines()[0][:160]}); merge to a JSON-lines output (--output <file>.jsonl), "
                            "which keeps every value as it is")

    def jsonl_table(self, shard: int) -> pa.Table:
        rows = [json.loads(x) for x in self.lines(shard)]
        try:
            return pa.Table.from_pylist(rows, schema=self.schema)
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            for f in self.schema or []:  # name the key whose values do not fit
                try:
                    pa.array([r.get(f.name) for r in rows], type=f.type)
                except (pa.ArrowException, TypeError, ValueError, OverflowError):
                    raise self._type_error(f.name, exc) from None
            raise self._type_error("?", exc) from None

    # --- parquet -------------------------------------------------------------------------------------
    def read(self, shard: int) -> pa.Table:
        if self.format == "jsonl":
            return self.jsonl_table(shard)
        start, end = self.local(shard)
        if self._batches is None or start < self._pos:  # (re)start the stream
            self._batches, self._buffer, self._pos = self._stream(), [], 0
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


def spliced(line: bytes, fields: dict[str, Any]) -> bytes:
    """The input object's own bytes with ``fields`` appended: every input value stays exactly as written."""
    body = line.rstrip()
    if not body.endswith(b"}"):
        raise RunDirError("an input line is not a JSON object any more: did the dataset change since the plan?")
    extra = json.dumps(fields, ensure_ascii=False)[1:-1].encode()
    inner = body[:-1].rstrip()
    sep = b"" if inner.endswith(b"{") else b", "
    return inner + sep + extra + b"}\n"
