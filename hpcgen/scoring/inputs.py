"""Reading a merged output file in batches: ``.parquet`` (record batches, sized from the file's metadata so
memory stays bounded) or ``.jsonl``. Columns: ``responses``, ``data_source``, ``reward_model``, optionally
``extra_info`` and ``gen_error`` (the first and last named as the run's ``merge.response_key`` and
``merge.metadata_prefix`` made them: :class:`Keys`); graders always see them under those canonical names."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcgen.errors import ScoreError

REQUIRED_COLUMNS = ("responses", "data_source", "reward_model")
OPTIONAL_COLUMNS = ("extra_info", "gen_error", "sample_seed")  # sample_seed: a run of several seeds


@dataclass(frozen=True)
class Keys:
    """The file's names for the canonical ``responses``, ``gen_error`` and ``sample_seed`` columns."""

    responses: str = "responses"
    gen_error: str = "gen_error"
    sample_seed: str = "sample_seed"

    def file_name(self, canonical: str) -> str:
        return {"responses": self.responses, "gen_error": self.gen_error,
                "sample_seed": self.sample_seed}.get(canonical, canonical)

    def present(self, names: list[str]) -> tuple[list[str], list[str]]:
        """(the file's column names to read, their canonical names)."""
        canon = [*REQUIRED_COLUMNS, *(c for c in OPTIONAL_COLUMNS if self.file_name(c) in names)]
        return [self.file_name(c) for c in canon], canon

    def canonical_row(self, row: dict[str, Any]) -> dict[str, Any]:
        if self == Keys():
            return row
        return {c: row.get(self.file_name(c)) for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)}
PARQUET_SUFFIXES = (".parquet", ".pq")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")  # as merge writes them (JSON lines whatever the suffix)
JSONL_BATCH_ROWS = 256
BATCH_BYTES = 4 << 20  # aim for ~4 MB of (uncompressed) column data per parquet batch
MIN_BATCH_ROWS, MAX_BATCH_ROWS = 16, 8192


@dataclass
class Batch:
    rows: Any  # what grading needs: a pyarrow RecordBatch of the needed columns, or a list of row dicts
    raw: Any = None  # the whole rows (RecordBatch or the same dicts), for the per-sample output
    first_index: int = 0
    count: int = 0


@dataclass
class FileInfo:
    fmt: str
    rows: int | None  # None: unknown before reading (jsonl)
    samples: int | None
    size: int


def file_format(path: Path, what: str) -> str:
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    raise ScoreError(f"{what} {path}: unsupported format {suffix or '(no suffix)'!r}; use .parquet or .jsonl")


def _open_parquet(path: Path, keys: Keys) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise ScoreError(f"cannot read parquet {path}: {exc}") from exc
    names = pf.schema_arrow.names
    for col in map(keys.file_name, REQUIRED_COLUMNS):
        if col not in names:
            pf.close()
            raise ScoreError(f"{path} has no {col!r} column (columns: {', '.join(names)})")
    return pf


def inspect(path: Path, keys: Keys) -> FileInfo:
    """Format, row and sample counts (parquet metadata only), size in bytes."""
    fmt = file_format(path, "input")
    size = path.stat().st_size
    if fmt == "jsonl":
        return FileInfo(fmt, None, None, size)
    pf = _open_parquet(path, keys)
    with contextlib.closing(pf):
        md = pf.metadata
        leaf = [i for i in range(md.num_columns) if md.schema.column(i).path.split(".")[0] == keys.responses]
        samples = sum(md.row_group(g).column(i).num_values for g in range(md.num_row_groups) for i in leaf)
        return FileInfo(fmt, md.num_rows, samples, size)


def _batch_rows(pf: Any, columns: list[str] | None) -> int:
    md = pf.metadata
    if not md.num_rows:
        return MIN_BATCH_ROWS
    top = None if columns is None else set(columns)
    total = sum(md.row_group(g).column(i).total_uncompressed_size for g in range(md.num_row_groups)
                for i in range(md.num_columns)
                if top is None or md.schema.column(i).path.split(".")[0] in top)
    per_row = max(total / md.num_rows, 1.0)
    return int(min(MAX_BATCH_ROWS, max(MIN_BATCH_ROWS, BATCH_BYTES // per_row)))


def data_sources(path: Path) -> dict[str, int]:
    """Each data_source of a parquet file and the first row that has it (reads only that column)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        col = pq.read_table(path, columns=["data_source"]).column("data_source")
    except (OSError, pa.ArrowException) as exc:
        raise ScoreError(f"cannot read parquet {path}: {exc}") from exc
    out = {}
    for ds in pc.unique(col).to_pylist():
        if isinstance(ds, str) and ds:
            out[ds] = int(pc.index(col, ds).as_py())
    return out


def iter_parquet(path: Path, need_all: bool, keys: Keys) -> Iterator[Batch]:
    import pyarrow as pa

    pf = _open_parquet(path, keys)
    with contextlib.closing(pf):
        wanted, canon = keys.present(pf.schema_arrow.names)
        columns = None if need_all else wanted
        index = 0
        try:
            for rb in pf.iter_batches(batch_size=_batch_rows(pf, columns), columns=columns):
                yield Batch(rb.select(wanted).rename_columns(canon), rb, index, rb.num_rows)
                index += rb.num_rows
        except pa.ArrowException as exc:
            raise ScoreError(f"cannot read parquet {path}: {exc}") from exc


@dataclass(frozen=True)
class Unit:
    """A share of a parquet file a worker process reads and grades itself: every ``parts``-th batch
    (starting at ``part``) of row group ``group``, whose first row is row ``first_index``."""

    path: str
    group: int
    part: int
    parts: int
    first_index: int
    rows: int
    batch_rows: int
    columns: tuple[str, ...]
    canonical: tuple[str, ...]
    keys: Keys


def parquet_units(path: Path, workers: int, keys: Keys) -> list[Unit]:
    """Split a parquet file into units: whole row groups when there are enough of them, else each row group
    in ``workers`` interleaved shares (each share then decompresses its whole row group)."""
    pf = _open_parquet(path, keys)
    with contextlib.closing(pf):
        wanted, canon = keys.present(pf.schema_arrow.names)
        batch_rows = _batch_rows(pf, wanted)
        md = pf.metadata
        units, first = [], 0
        for g in range(md.num_row_groups):
            rows = md.row_group(g).num_rows
            batches = -(-rows // batch_rows)
            parts = 1 if md.num_row_groups >= 2 * workers else max(1, min(workers, batches))
            for part in range(parts):
                share = sum(min(batch_rows, rows - b * batch_rows) for b in range(part, batches, parts))
                units.append(Unit(str(path), g, part, parts, first, share, batch_rows, tuple(wanted),
                                  tuple(canon), keys))
            first += rows
        return units


_OPEN: dict[str, Any] = {}


def iter_unit(unit: Unit) -> Iterator[Batch]:
    """The batches of one unit (in a worker process; the file stays open for the worker's next unit)."""
    import pyarrow as pa

    pf = _OPEN.get(unit.path)
    if pf is None:
        pf = _OPEN[unit.path] = _open_parquet(Path(unit.path), unit.keys)
    index = unit.first_index
    try:
        for i, rb in enumerate(pf.iter_batches(batch_size=unit.batch_rows, row_groups=[unit.group],
                                               columns=list(unit.columns), use_threads=False)):
            if i % unit.parts == unit.part:
                yield Batch(rb.rename_columns(list(unit.canonical)), None, index, rb.num_rows)
            index += rb.num_rows
    except pa.ArrowException as exc:
        raise ScoreError(f"cannot read parquet {unit.path}: {exc}") from exc


def iter_jsonl(path: Path, keys: Keys) -> Iterator[Batch]:
    try:
        fh = open(path, encoding="utf-8")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise ScoreError(f"cannot read {path}: {exc}") from exc
    with fh:
        rows: list[dict[str, Any]] = []
        index = 0
        try:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ScoreError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
                if not isinstance(row, dict):
                    raise ScoreError(f"{path}:{lineno}: expected a JSON object per line")
                for col in map(keys.file_name, REQUIRED_COLUMNS):
                    if col not in row:
                        raise ScoreError(f"{path}:{lineno}: no {col!r} column")
                rows.append(row)
                if len(rows) >= JSONL_BATCH_ROWS:
                    yield Batch([keys.canonical_row(r) for r in rows], rows, index, len(rows))
                    index += len(rows)
                    rows = []
        except UnicodeDecodeError as exc:
            raise ScoreError(f"{path}: not UTF-8 text ({exc.reason})") from exc
        if rows:
            yield Batch([keys.canonical_row(r) for r in rows], rows, index, len(rows))


def iter_file(path: Path, fmt: str, need_all: bool, keys: Keys) -> Iterator[Batch]:
    return iter_parquet(path, need_all, keys) if fmt == "parquet" else iter_jsonl(path, keys)
