"""Part files and done markers: how they are written, and the only code that decides "this verifies".

A part holds finished rows of one shard (``PART_SCHEMA``). Its bytes are built in memory, hashed, and written
atomically under a name that carries that sha256 (:class:`~hpcgen.rundir.layout.PartName`), so the checksum is
recorded at the moment the rows were saved and never taken again from the file. A shard's done marker,
written last, lists its parts with their rows and sha256. The worker (skipping saved rows), resume
(invalidating what no longer verifies) and merge (reading only what verifies) all judge with
:func:`check_part`: a part that does not match its recorded checksum, does not read back, holds rows outside
its shard or twice, or rows without the run's number of samples, is set aside (renamed ``*.corrupt.<time>``,
kept for inspection, never deleted) and its rows are generated again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hpcgen.rundir import atomic
from hpcgen.rundir.layout import PartName, RunLayout
from hpcgen.rundir.progress import COUNTERS, TaskProgress

log = logging.getLogger("hpcgen.parts")

PART_SCHEMA = pa.schema([
    ("row_id", pa.int64()),
    ("responses", pa.list_(pa.string())),
    ("finish_reasons", pa.list_(pa.string())),
    ("response_tokens", pa.list_(pa.int32())),
    ("prompt_tokens", pa.int32()),
    ("prompt_truncated", pa.bool_()),
    ("gen_error", pa.string()),
])


def encode(table: pa.Table) -> bytes:
    """A part's bytes (parquet), built in memory so that they are hashed before they reach the disk."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def write_part(layout: RunLayout, shard: int, seq: int, tag: str, table: pa.Table) -> PartName:
    data = encode(table)
    name = PartName(shard, seq, table.num_rows, tag, hashlib.sha256(data).hexdigest())
    atomic.write_bytes(layout.parts_dir / name.name, data)
    return name


def check_part(layout: RunLayout, part: PartName, bounds: tuple[int, int], n_samples: int) -> tuple[
        pa.Table | None, str | None]:
    """(its rows, None) when the part verifies, else (None, what is wrong)."""
    path = layout.parts_dir / part.name
    try:
        data = path.read_bytes()
    except OSError:
        return None, f"part {part.name} is missing"
    if hashlib.sha256(data).hexdigest() != part.sha:
        return None, f"part {part.name} does not match its checksum"
    try:
        table = pq.ParquetFile(pa.BufferReader(data)).read()
    except Exception as exc:  # noqa: BLE001 - any read failure: not trustworthy
        return None, f"part {part.name} is unreadable ({exc})"
    if not table.schema.equals(PART_SCHEMA):
        return None, f"part {part.name} does not have the part schema"
    if table.num_rows != part.rows:
        return None, f"part {part.name} holds {table.num_rows} rows, not {part.rows}"
    ids = table.column("row_id").to_numpy()
    if len(ids) and (ids.min() < bounds[0] or ids.max() >= bounds[1] or len(set(ids.tolist())) != len(ids)):
        return None, f"part {part.name} holds rows outside {bounds[0]}..{bounds[1] - 1} or a row twice"
    counts = pc.list_value_length(table.column("responses")).to_numpy(zero_copy_only=False)
    ok_rows = table.column("gen_error").is_null().to_numpy(zero_copy_only=False)
    if (counts[ok_rows] != n_samples).any():
        return None, f"part {part.name} has a row without exactly {n_samples} responses"
    return table, None


def set_aside(layout: RunLayout, name: str, why: str) -> None:
    """Rename a part or marker that does not verify out of the way (kept for inspection, never deleted)."""
    path = layout.parts_dir / name if not name.endswith(".json") else layout.done_dir / name
    aside = path.with_name(f"{path.name}.{'invalid' if name.endswith('.json') else 'corrupt'}.{int(time.time())}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    log.warning("%s: set aside as %s; its rows are generated again", why, aside.name)


@dataclass
class Saved:
    """What verified of a shard's earlier parts: the parts, their row ids, and their error rows."""

    parts: list[PartName] = field(default_factory=list)
    ids: set[int] = field(default_factory=set)
    errors: int = 0


def usable_parts(layout: RunLayout, parts: list[PartName], bounds: tuple[int, int], n_samples: int) -> Saved:
    """Earlier parts of a shard that verify; every other one is set aside. A part repeating a row that an
    earlier verified part holds (two writers of one shard) is set aside too."""
    saved = Saved()
    for p in parts:
        table, problem = check_part(layout, p, bounds, n_samples)
        if table is not None:
            ids = set(table.column("row_id").to_pylist())
            if ids & saved.ids:
                table, problem = None, f"part {p.name} repeats rows of an earlier part"
        if table is None:
            set_aside(layout, p.name, problem or "")
            continue
        saved.parts.append(p)
        saved.ids |= ids
        saved.errors += table.num_rows - table.column("gen_error").null_count
    return saved


def write_done(layout: RunLayout, shard: int, parts: list[PartName], errors: int, jid: str) -> None:
    """The done marker, written last: the parts with the checksums recorded when they were written."""
    entries = [{"name": p.name, "rows": p.rows, "sha256": p.sha} for p in parts]
    atomic.write_json(layout.done(shard), {
        "shard": shard, "rows": sum(p.rows for p in parts), "errors": errors, "parts": entries,
        "checksum": hashlib.sha256("".join(p.sha for p in parts).encode()).hexdigest(), "job_id": jid,
        "finished": time.time(), "stats": shard_stats(layout, parts),
    })


def done_marker_ok(layout: RunLayout, shard: int, rows: int) -> bool:
    """Cheap check that a shard is done (its marker and listed files exist); merge and resume verify fully."""
    try:
        marker = atomic.read_json(layout.done(shard))
    except (OSError, ValueError):
        return False
    return marker.get("rows") == rows and all((layout.parts_dir / p["name"]).is_file() for p in marker["parts"])


def shard_stats(layout: RunLayout, parts: list[PartName]) -> dict[str, int]:
    """The progress counters (rundir.progress) of a shard's parts: rows, samples, output tokens, finish
    reason "length", error rows."""
    out = dict.fromkeys(COUNTERS, 0)
    for p in parts:
        t = pq.read_table(layout.parts_dir / p.name, columns=["finish_reasons", "response_tokens", "gen_error"])
        reasons = pc.list_flatten(t.column("finish_reasons"))
        out["rows"] += t.num_rows
        out["errors"] += t.num_rows - t.column("gen_error").null_count
        out["samples"] += len(reasons)
        out["length"] += int(pc.sum(pc.equal(reasons, "length")).as_py() or 0)
        out["output_tokens"] += int(pc.sum(pc.list_flatten(t.column("response_tokens"))).as_py() or 0)
    return out


def verify_done(layout: RunLayout, shard: int, bounds: tuple[int, int], n_samples: int) -> tuple[
        pa.Table | None, str | None]:
    """Read a done shard's parts, checking marker, checksums, row ids (each exactly once) and sample counts.

    Returns (table sorted by row id, None) or (None, problem).
    """
    try:
        marker = atomic.read_json(layout.done(shard))
        entries = [(PartName.parse(e["name"]), e) for e in marker["parts"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"done marker unreadable ({exc})"
    tables = []
    for part, entry in entries:
        if part is None or part.sha != entry.get("sha256") or part.shard != shard:
            return None, f"done marker lists {entry.get('name')!r}, which is not a part of shard {shard}"
        table, problem = check_part(layout, part, bounds, n_samples)
        if table is None:
            return None, problem
        tables.append(table)
    start, end = bounds
    if not tables:
        return None, "no parts"
    table = pa.concat_tables(tables).sort_by("row_id")
    ids = table.column("row_id").to_numpy()
    if len(ids) != end - start or (len(ids) and (ids[0] != start or ids[-1] != end - 1)) or (
            len(ids) > 1 and not (ids[1:] - ids[:-1] == 1).all()):
        return None, f"rows are not exactly {start}..{end - 1} once each"
    return table, None


def invalidate_bad_done(layout: RunLayout, manifest: dict[str, Any]) -> list[int]:
    """Done shards that no longer verify lose their marker (set aside), and their parts that do not verify are
    set aside too, so that the next task on the shard regenerates exactly those rows."""
    bad = []
    n = manifest["job"]["data"]["n_samples"]
    for shard in sorted(layout.list_done()):
        bounds = tuple(manifest["shards"][shard])
        table, problem = verify_done(layout, shard, bounds, n)  # type: ignore[arg-type]
        if table is None:
            set_aside(layout, layout.done(shard).name, f"shard {shard}: {problem}")
            usable_parts(layout, layout.list_parts().get(shard, []), bounds, n)  # type: ignore[arg-type]
            bad.append(shard)
    return bad


class PartWriter:
    """Buffers finished rows of one shard and saves them as atomic, checksummed part files."""

    def __init__(self, layout: RunLayout, shard: int, next_seq: int, every_rows: int, every_seconds: float,
                 tag: str = "a0", progress: TaskProgress | None = None):
        self.layout, self.shard, self.seq, self.tag = layout, shard, next_seq, tag
        self.progress = progress  # the task's progress record, updated after each save
        self.every_rows, self.every_seconds = every_rows, every_seconds
        self.rows: list[dict[str, Any]] = []
        self.parts: list[PartName] = []
        self.errors = 0
        self.last_flush = time.monotonic()
        self._busy = False

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if row.get("gen_error"):
            self.errors += 1

    def maybe_flush(self) -> None:
        if len(self.rows) >= self.every_rows or (
                self.rows and time.monotonic() - self.last_flush >= self.every_seconds):
            self.flush()

    def flush(self) -> None:
        if not self.rows or self._busy:
            return
        self._busy = True
        try:
            rows = sorted(self.rows, key=lambda r: r["row_id"])
            table = pa.Table.from_pylist(rows, schema=PART_SCHEMA)
            self.parts.append(write_part(self.layout, self.shard, self.seq, self.tag, table))
            self.seq += 1
            if self.progress is not None:
                self.progress.flushed(self.shard, rows)
            self.rows = []
            self.last_flush = time.monotonic()
        finally:
            self._busy = False
