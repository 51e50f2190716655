"""Saving finished rows: a buffer per claimed chunk, atomic checksummed parts every K rows / T seconds, a
chunk's marker once all its rows are saved (only while the task still holds the chunk), and the shard's done
marker when its last chunk is marked."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from hpcgen.rundir.layout import PartName, RunLayout
from hpcgen.rundir.parts import (
    PART_SCHEMA,
    Saved,
    finalize_shard,
    record_dropped,
    write_chunk_done,
    write_part,
)
from hpcgen.rundir.progress import TaskProgress
from hpcgen.task.work import Claim, WorkQueue

log = logging.getLogger("hpcgen.task.saver")


@dataclass
class _Open:
    claim: Claim
    saved: Saved  # verified parts of earlier holders (a takeover) or earlier attempts
    rows: list[dict[str, Any]] = field(default_factory=list)
    parts: list[PartName] = field(default_factory=list)
    written: int = 0
    errors: int = 0
    seq: int = 0

    @property
    def complete(self) -> bool:
        return len(self.saved.ids) + self.written + len(self.rows) >= self.claim.end - self.claim.start


class ChunkSaver:
    """Rows of every chunk the task holds, until they are saved; ``flush`` saves all buffers."""

    def __init__(self, layout: RunLayout, manifest: dict[str, Any], queue: WorkQueue, progress: TaskProgress,
                 tag: str, every_rows: int, every_seconds: float) -> None:
        self.layout, self.manifest, self.queue, self.progress, self.tag = layout, manifest, queue, progress, tag
        self.every_rows, self.every_seconds = every_rows, every_seconds
        self.open: dict[tuple[int, int], _Open] = {}
        self.by_row: dict[int, tuple[int, int]] = {}
        self.pending = 0
        self.last_flush = time.monotonic()
        self.lost_rows = 0  # saved after the chunk was taken over: duplicates, never listed by a marker
        self._busy = False

    def open_chunk(self, claim: Claim, saved: Saved, next_seq: int) -> None:
        self.open[(claim.shard, claim.chunk)] = _Open(claim, saved, seq=next_seq, errors=saved.errors)
        self._finish_if_complete((claim.shard, claim.chunk))

    def expect(self, row_id: int, claim: Claim) -> None:
        self.by_row[row_id] = (claim.shard, claim.chunk)

    def add(self, row: dict[str, Any]) -> None:
        key = self.by_row.pop(row["row_id"])
        ch = self.open[key]
        ch.rows.append(row)
        if row.get("gen_error"):
            ch.errors += 1
        self.pending += 1
        if ch.complete:
            self._finish_if_complete(key)

    def maybe_flush(self) -> None:
        if self.pending >= self.every_rows or (
                self.pending and time.monotonic() - self.last_flush >= self.every_seconds):
            self.flush()

    def flush(self) -> None:
        """Save every buffered row (one part per chunk); also called from signal handlers."""
        if self._busy:
            return
        self._busy = True
        try:
            for ch in list(self.open.values()):
                self._save(ch)
            self.pending = 0
            self.last_flush = time.monotonic()
        finally:
            self._busy = False

    def _save(self, ch: _Open) -> None:
        if not ch.rows:
            return
        rows = sorted(ch.rows, key=lambda r: r["row_id"])
        table = pa.Table.from_pylist(rows, schema=PART_SCHEMA)
        c = ch.claim
        ch.parts.append(write_part(self.layout, c.shard, c.chunk, ch.seq, self.tag, table))
        ch.seq += 1
        ch.written += len(rows)
        self.pending -= min(self.pending, len(rows))
        ch.rows = []
        self.progress.flushed(c.shard, rows)

    def _finish_if_complete(self, key: tuple[int, int]) -> None:
        ch = self.open[key]
        if not ch.complete or self._busy:
            return
        self._save(ch)
        c = ch.claim
        del self.open[key]
        if not self.queue.still_mine(c):  # taken over while we worked: the new holder's marker counts
            self.lost_rows += ch.written
            if ch.written:
                record_dropped(self.layout, c.shard, c.chunk, self.tag, ch.written)
            log.warning("shard %d chunk %d was taken over by another task: %d rows saved here are not used",
                        c.shard, c.chunk, ch.written)
            return
        write_chunk_done(self.layout, c.shard, c.chunk, ch.saved.parts + ch.parts, ch.errors, self.tag, c.gen)
        self.progress.chunk_done(c.stolen)
        if finalize_shard(self.layout, self.manifest, c.shard):
            log.info("shard %d done", c.shard)
