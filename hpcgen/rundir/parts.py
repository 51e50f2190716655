"""Part files and done markers: how they are written, and the only code that decides "this verifies".

A part holds finished rows of one shard (``PART_SCHEMA``), written atomically; a shard's done marker, written
last, lists its parts with their sizes and sha256. Used by the worker (writing, skipping saved rows), resume
(invalidating what no longer verifies) and merge (reading only what verifies).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
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


def valid_parts(layout: RunLayout, shard: int, parts: list[PartName], bounds: tuple[int, int]) -> tuple[
        list[PartName], set[int]]:
    """Parts that read back whole with in-range, unique row ids; others are moved aside as ``.corrupt``."""
    good, seen = [], set()
    for p in parts:
        path = layout.parts_dir / p.name
        try:
            ids = pq.read_table(path, columns=["row_id"]).column(0).to_pylist()
            ok = len(ids) == p.rows and all(bounds[0] <= i < bounds[1] and i not in seen for i in ids)
            ok = ok and len(set(ids)) == len(ids)
        except Exception:  # any read failure means the file is not trustworthy
            ok = False
        if not ok:
            log.warning("part %s is corrupt or inconsistent: moved aside, its rows are regenerated", path)
            os.replace(path, path.with_name(path.name + f".corrupt.{int(time.time())}"))
            continue
        good.append(p)
        seen.update(ids)
    return good, seen


def done_marker_ok(layout: RunLayout, shard: int, rows: int) -> bool:
    try:
        marker = atomic.read_json(layout.done(shard))
    except (OSError, ValueError):
        return False
    return marker.get("rows") == rows and all((layout.parts_dir / p["name"]).is_file() for p in marker["parts"])


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_done(layout: RunLayout, shard: int, parts: list[PartName], errors: int, jid: str) -> None:
    hashes = [sha256_file(layout.parts_dir / p.name) for p in parts]
    entries = [{"name": p.name, "rows": p.rows, "sha256": h} for p, h in zip(parts, hashes, strict=True)]
    checksum = hashlib.sha256("".join(hashes).encode()).hexdigest()
    atomic.write_json(layout.done(shard), {
        "shard": shard, "rows": sum(p.rows for p in parts), "errors": errors, "parts": entries,
        "checksum": checksum, "job_id": jid, "finished": time.time(), "stats": shard_stats(layout, parts),
    })


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



class PartWriter:
    """Buffers finished rows of one shard and saves them as atomic part files."""

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
            name = PartName(self.shard, self.seq, len(rows), self.tag)
            atomic.write_with(self.layout.parts_dir / name.name, lambda p: pq.write_table(table, p))
            self.parts.append(name)
            self.seq += 1
            if self.progress is not None:
                self.progress.flushed(self.shard, rows)
            self.rows = []
            self.last_flush = time.monotonic()
        finally:
            self._busy = False


def verify_done(layout: RunLayout, shard: int, bounds: tuple[int, int], n_samples: int) -> tuple[
        pa.Table | None, str | None]:
    """Read a done shard's parts, checking marker, checksums, row ids (each exactly once) and sample counts.

    Returns (sorted table, None) or (None, problem).
    """
    try:
        marker = atomic.read_json(layout.done(shard))
    except (OSError, ValueError) as exc:
        return None, f"done marker unreadable ({exc})"
    tables = []
    for entry in marker.get("parts", []):
        path = layout.parts_dir / entry["name"]
        try:
            data = path.read_bytes()
        except OSError:
            return None, f"part {path.name} is missing"
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            return None, f"part {path.name} does not match its checksum"
        try:
            tables.append(pq.ParquetFile(pa.BufferReader(data)).read())
        except Exception as exc:  # corrupt despite the checksum: never merged
            return None, f"part {path.name} is unreadable ({exc})"
    start, end = bounds
    if not tables:
        return None, "no parts"
    table = pa.concat_tables(tables).sort_by("row_id")
    ids = table.column("row_id").to_numpy()
    if len(ids) != end - start or (len(ids) and (ids[0] != start or ids[-1] != end - 1)) or (
            len(ids) > 1 and not (ids[1:] - ids[:-1] == 1).all()):
        return None, f"rows are not exactly {start}..{end - 1} once each"
    counts = pc.list_value_length(table.column("responses")).to_numpy(zero_copy_only=False)
    ok_rows = table.column("gen_error").is_null().to_numpy(zero_copy_only=False)
    if (counts[ok_rows] != n_samples).any():
        return None, f"a row has not exactly {n_samples} responses"
    return table, None
