"""Part files and done markers: how they are written, and the only code that decides "this verifies".

A part holds finished rows of one chunk (``PART_SCHEMA``). Its bytes are built in memory, hashed, and written
atomically under a name that carries that sha256 (:class:`~hpcgen.rundir.layout.PartName`), so the checksum is
recorded at the moment the rows were saved and never taken again from the file. A chunk's marker, written
last by the task that finished it, lists its parts with their rows and sha256; a shard's done marker, written
by whoever sees the shard's last chunk marker (a task, merge or resume), lists every part of every chunk. The worker (skipping saved rows), resume
(invalidating what no longer verifies) and merge (reading only what verifies) all judge with
:func:`check_part`: a part that does not match its recorded checksum, does not read back, holds rows outside
its chunk or twice, or rows without the run's number of samples, is set aside (renamed ``*.corrupt.<time>``,
kept for inspection, never deleted) and its rows are generated again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hpcgen.rundir import atomic
from hpcgen.rundir.blocks import NRuns, expected_n, shard_n
from hpcgen.rundir.chunks import chunk_bounds, num_chunks
from hpcgen.rundir.layout import PartName, RunLayout, ShardScan
from hpcgen.rundir.progress import COUNTERS

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


def write_part(layout: RunLayout, shard: int, chunk: int, seq: int, tag: str, table: pa.Table) -> PartName:
    data = encode(table)
    name = PartName(shard, chunk, seq, table.num_rows, tag, hashlib.sha256(data).hexdigest())
    atomic.write_bytes(layout.part(name), data)
    return name


def check_part(layout: RunLayout, part: PartName, bounds: tuple[int, int], n_samples: int | NRuns) -> tuple[
        pa.Table | None, str | None]:
    """(its rows, None) when the part verifies, else (None, what is wrong). ``n_samples``: the shard's
    (:func:`hpcgen.rundir.blocks.shard_n`)."""
    path = layout.part(part)
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
    want = expected_n(n_samples, ids)
    if (counts[ok_rows] != (want[ok_rows] if isinstance(want, np.ndarray) else want)).any():
        shown = n_samples if isinstance(n_samples, int) else "its requested number of"
        return None, f"part {part.name} has a row without exactly {shown} responses"
    return table, None


def set_aside(path: Path, why: str) -> None:
    """Rename a part or marker that does not verify out of the way (kept for inspection, never deleted)."""
    kind = "invalid" if path.name.endswith(".json") else "corrupt"
    aside = path.with_name(f"{path.name}.{kind}.{int(time.time())}")
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


def usable_parts(layout: RunLayout, parts: list[PartName], bounds: tuple[int, int], n_samples: int | NRuns
                 ) -> Saved:
    """Earlier parts of a chunk that verify; every other one is set aside. A part repeating a row that an
    earlier verified part holds (two writers of one chunk) is set aside too."""
    saved = Saved()
    for p in parts:
        table, problem = check_part(layout, p, bounds, n_samples)
        if table is not None:
            ids = set(table.column("row_id").to_pylist())
            if ids & saved.ids:
                table, problem = None, f"part {p.name} repeats rows of an earlier part"
        if table is None:
            set_aside(layout.part(p), problem or "")
            continue
        saved.parts.append(p)
        saved.ids |= ids
        saved.errors += table.num_rows - table.column("gen_error").null_count
    return saved


def write_chunk_done(layout: RunLayout, shard: int, chunk: int, parts: list[PartName], errors: int, tag: str,
                     gen: int) -> None:
    """A chunk's marker, written last: its parts with the checksums recorded when they were written."""
    atomic.write_json(layout.chunk_done(shard, chunk), {
        "shard": shard, "chunk": chunk, "rows": sum(p.rows for p in parts), "errors": errors,
        "parts": [{"name": p.rel, "rows": p.rows, "sha256": p.sha} for p in parts], "task": tag, "gen": gen,
        "finished": time.time()})


def _listed(entries: list[dict[str, Any]], shard: int, chunk: int | None = None) -> list[PartName] | None:
    out = []
    for e in entries:
        p = PartName.parse_rel(str(e.get("name")))
        if p is None or p.sha != e.get("sha256") or p.shard != shard or (chunk is not None and p.chunk != chunk):
            return None
        out.append(p)
    return out


def finalize_shard(layout: RunLayout, manifest: dict[str, Any], shard: int, scan: ShardScan | None = None) -> bool:
    """Write the shard's done marker from its chunk markers once every chunk has one; True if the shard is done.
    Parts in the folder that no marker lists (a holder that lost its lease and saved rows anyway: the rows are
    duplicates) are never merged (:func:`dropped_rows` counts them)."""
    if layout.done(shard).exists():
        return True
    scan = scan or layout.scan(shard)
    if len(scan.done) < num_chunks(manifest, shard):
        return False
    parts: list[dict[str, Any]] = []
    rows = errors = 0
    for chunk in range(num_chunks(manifest, shard)):
        try:
            marker = atomic.read_json(layout.chunk_done(shard, chunk))
        except (OSError, ValueError):
            return False
        parts += marker["parts"]
        rows += int(marker["rows"])
        errors += int(marker.get("errors", 0))
    atomic.write_json(layout.done(shard), {
        "shard": shard, "rows": rows, "errors": errors, "parts": parts, "stats": _stats(layout, parts),
        "checksum": hashlib.sha256("".join(e["sha256"] for e in parts).encode()).hexdigest(),
        "finished": time.time()})
    return True


def _stats(layout: RunLayout, entries: list[dict[str, Any]]) -> dict[str, int]:
    """The progress counters (rundir.progress) of a shard's parts: rows, samples, output tokens, finish
    reason "length", error rows."""
    out = dict.fromkeys(COUNTERS, 0)
    for e in entries:
        t = pq.read_table(layout.work_dir / e["name"], columns=["finish_reasons", "response_tokens", "gen_error"])
        reasons = pc.list_flatten(t.column("finish_reasons"))
        out["rows"] += t.num_rows
        out["errors"] += t.num_rows - t.column("gen_error").null_count
        out["samples"] += len(reasons)
        out["length"] += int(pc.sum(pc.equal(reasons, "length")).as_py() or 0)
        out["output_tokens"] += int(pc.sum(pc.list_flatten(t.column("response_tokens"))).as_py() or 0)
    return out


def dropped_rows(layout: RunLayout, shard: int) -> int:
    """Rows of a done shard saved in parts that its marker does not list: saved twice, never merged."""
    try:
        listed = {e["name"] for e in atomic.read_json(layout.done(shard))["parts"]}
    except (OSError, ValueError, KeyError):
        return 0
    return sum(p.rows for ps in layout.scan(shard).parts.values() for p in ps if p.rel not in listed)


def record_dropped(layout: RunLayout, shard: int, chunk: int, tag: str, rows: int) -> None:
    """A task that lost a chunk it had saved rows of says so (``status`` sums these records)."""
    layout.dropped_dir.mkdir(exist_ok=True)
    atomic.write_json(layout.dropped(shard, chunk, tag), {"shard": shard, "chunk": chunk, "task": tag,
                                                          "dropped_rows": rows})


def done_marker_ok(layout: RunLayout, shard: int, rows: int) -> bool:
    """Cheap check that a shard is done (its marker and listed files exist); merge and resume verify fully."""
    try:
        marker = atomic.read_json(layout.done(shard))
    except (OSError, ValueError):
        return False
    return marker.get("rows") == rows and all((layout.work_dir / p["name"]).is_file() for p in marker["parts"])


def verify_done(layout: RunLayout, manifest: dict[str, Any], shard: int) -> tuple[pa.Table | None, str | None]:
    """Read a done shard's parts, checking marker, checksums, row ids (each exactly once) and sample counts.

    Returns (table sorted by row id, None) or (None, problem).
    """
    n_samples = shard_n(manifest, shard)
    try:
        marker = atomic.read_json(layout.done(shard))
        parts = _listed(marker["parts"], shard)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"done marker unreadable ({exc})"
    if parts is None:
        return None, f"done marker lists a part that is not one of shard {shard}'s"
    tables = []
    for part in parts:
        table, problem = check_part(layout, part, chunk_bounds(manifest, shard, part.chunk), n_samples)
        if table is None:
            return None, problem
        tables.append(table)
    start, end = manifest["shards"][shard]
    if not tables:
        return None, "no parts"
    table = pa.concat_tables(tables).sort_by("row_id")
    ids = table.column("row_id").to_numpy()
    if len(ids) != end - start or (len(ids) and (ids[0] != start or ids[-1] != end - 1)) or (
            len(ids) > 1 and not (ids[1:] - ids[:-1] == 1).all()):
        return None, f"rows are not exactly {start}..{end - 1} once each"
    return table, None


def chunk_verifies(layout: RunLayout, manifest: dict[str, Any], shard: int, chunk: int) -> bool:
    try:
        marker = atomic.read_json(layout.chunk_done(shard, chunk))
        parts = _listed(marker["parts"], shard, chunk)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if parts is None:
        return False
    bounds = chunk_bounds(manifest, shard, chunk)
    n = shard_n(manifest, shard)
    ids: list[int] = []
    for p in parts:
        table, _ = check_part(layout, p, bounds, n)
        if table is None:
            return False
        ids += table.column("row_id").to_pylist()
    return sorted(ids) == list(range(*bounds))


def invalidate_bad_done(layout: RunLayout, manifest: dict[str, Any]) -> list[int]:
    """Done shards that no longer verify lose their marker (set aside), and so do their chunks that do not
    verify, with their parts that do not verify: the next task on the chunk regenerates exactly those rows."""
    bad = []
    for shard in sorted(layout.list_done()):
        table, problem = verify_done(layout, manifest, shard)
        if table is not None:
            continue
        set_aside(layout.done(shard), f"shard {shard}: {problem}")
        scan = layout.scan(shard)
        for chunk in sorted(scan.done):
            if not chunk_verifies(layout, manifest, shard, chunk):
                set_aside(layout.chunk_done(shard, chunk), f"shard {shard} chunk {chunk}")
                usable_parts(layout, scan.parts.get(chunk, []), chunk_bounds(manifest, shard, chunk),
                             shard_n(manifest, shard))
        bad.append(shard)
    return bad
