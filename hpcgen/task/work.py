"""Which chunk a task does next: its own shards first, front to back; then (with ``sharding.steal``) chunks of
other shards, from the far end of the shard with the most work left, until nothing is left.

A chunk is work when it has no marker and either no lease or a lease whose holder is gone
(:mod:`hpcgen.rundir.leases`). Owners take chunks from the front and thieves from the back, so they meet in
the middle without stepping on each other; an owner simply skips chunks a thief holds. Finding a victim lists
``done/`` once and the folders of a few unfinished shards picked at random (all of them only when the sample
finds nothing), so its cost does not grow with the run's size.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from hpcgen.rundir.chunks import chunk_bounds, num_chunks
from hpcgen.rundir.layout import RunLayout, ShardScan
from hpcgen.rundir.leases import BEAT_S, Liveness, claim, holder

log = logging.getLogger("hpcgen.task.work")
SAMPLE = 16


@dataclass(frozen=True)
class Claim:
    """A chunk this task holds: generation ``gen`` of its lease."""

    shard: int
    chunk: int
    gen: int
    start: int
    end: int
    stolen: bool


class WorkQueue:
    def __init__(self, layout: RunLayout, manifest: dict[str, Any], job: str, own: list[int], *, steal: bool,
                 timeout_s: float, beat_s: float = BEAT_S, rng: random.Random | None = None) -> None:
        self.layout, self.manifest, self.job = layout, manifest, job
        self.own, self.steal, self.timeout_s, self.beat_s = list(own), steal, timeout_s, beat_s
        self._victim: int | None = None  # a thief drains one shard's tail before looking for another
        self.suspects = 0  # chunks seen held by silent holders at the last look
        self.suspect_shards: set[int] = set()
        self.rng = rng or random.Random()
        self._cursor = {s: 0 for s in own}  # owners move front to back
        self.held: set[tuple[int, int]] = set()
        self.scans = 0

    # --- inspection ----------------------------------------------------------------------------------
    def _scan(self, shard: int) -> ShardScan:
        self.scans += 1
        return self.layout.scan(shard)

    def _available(self, shard: int, chunk: int, scan: ShardScan, live: Liveness) -> int | None:
        """The lease generation to claim if the chunk is work, else None."""
        if chunk in scan.done:
            return None
        gen = scan.leases.get(chunk)
        if gen is None:
            return 0
        who = holder(self.layout, shard, chunk, gen)
        if who is None:  # a lease being written this instant, or unreadable: not ours to judge yet
            return None
        if who == self.job:  # ours if this run claimed it; else an earlier run under the same name, gone
            return None if (shard, chunk) in self.held else gen + 1
        status = live.status(who)
        if status == "suspect":
            self.suspects += 1
            self.suspect_shards.add(shard)
        return None if status != "gone" else gen + 1

    def _try(self, shard: int, chunk: int, gen: int, stolen: bool) -> Claim | None:
        if not claim(self.layout, shard, chunk, gen, self.job):
            return None
        self.held.add((shard, chunk))
        if gen:
            log.info("took over shard %d chunk %d (generation %d): its holder is gone", shard, chunk, gen)
        lo, hi = chunk_bounds(self.manifest, shard, chunk)
        return Claim(shard, chunk, gen, lo, hi, stolen)

    # --- the two phases --------------------------------------------------------------------------------
    def next(self) -> Claim | None:
        return self._own() or (self._steal() if self.steal else None)

    def _live(self) -> Liveness:
        return Liveness(self.layout, self.timeout_s, self.beat_s)

    def _own(self) -> Claim | None:
        for shard in self.own:
            n = num_chunks(self.manifest, shard)
            while self._cursor[shard] < n:
                scan, live = self._scan(shard), self._live()
                chunk = self._cursor[shard]
                self._cursor[shard] += 1
                gen = self._available(shard, chunk, scan, live)
                if gen is not None and (got := self._try(shard, chunk, gen, stolen=False)):
                    return got
        return None

    def _steal(self, only: list[int] | None = None) -> Claim | None:
        """A chunk of another shard: the last victim's tail, else the best of a random sample, else (once the
        sample finds nothing) of every unfinished shard. ``only`` restricts the look to those shards."""
        self.suspects = 0
        for _ in range(8):  # a lost race for a chunk: look again
            found = None
            if self._victim is not None:  # keep draining the last victim's tail: one listing per chunk
                found = self._best([self._victim])
                if found is None:
                    self._victim = None
            if found is None:
                if only is None:
                    done = self.layout.list_done()
                    candidates = [s for s in range(len(self.manifest["shards"])) if s not in done]
                else:
                    candidates = list(only)
                self.rng.shuffle(candidates)
                found = self._best(candidates[:SAMPLE]) or (
                    self._best(candidates[SAMPLE:]) if len(candidates) > SAMPLE else None)
            if found is None:
                return None
            shard, chunk, gen = found
            self._victim = shard
            got = self._try(shard, chunk, gen, stolen=shard not in self.own)
            if got is not None:
                return got
        return None

    def after_suspects(self, sleep: Any = time.sleep) -> Claim | None:
        """Nothing is free, but chunks are held by holders that have gone silent (a lost node?): rather than
        leave them to a resume, wait, beat by beat, until they come back, finish, or are judged gone (then
        take them over). Only the shards where silent holders were seen are looked at again, so a run's end
        does not cost every idle task a listing of every shard each beat. Returns the next claim, or None
        when nothing is left to wait for."""
        deadline = time.monotonic() + self.timeout_s + self.beat_s
        while self.steal and self.suspects and self.suspect_shards and time.monotonic() < deadline:
            sleep(self.beat_s)
            watched, self.suspect_shards = sorted(self.suspect_shards), set()
            got = self._steal(only=watched)
            if got is not None:
                return got
        return None

    def _best(self, shards: list[int]) -> tuple[int, int, int] | None:
        """(shard, chunk, generation): the last unclaimed chunk of the shard with the most unclaimed ones; if
        none is unclaimed anywhere, the last chunk whose holder is gone (a takeover). Holders are only read in
        that second case, so a look costs one listing per shard."""
        best: tuple[int, int, int] | None = None  # (unclaimed count, shard, chunk)
        busy: list[tuple[int, ShardScan, int]] = []
        for shard in shards:
            scan = self._scan(shard)
            n = num_chunks(self.manifest, shard)
            if len(scan.done) >= n:
                continue
            free = [c for c in range(n) if c not in scan.done and c not in scan.leases]
            if free and (best is None or len(free) > best[0]):
                best = (len(free), shard, free[-1])
            elif not free:
                busy.append((shard, scan, n))
        if best is not None:
            return best[1], best[2], 0
        live = self._live()
        for shard, scan, n in busy:
            for c in reversed(range(n)):
                if c not in scan.done and (gen := self._available(shard, c, scan, live)) is not None:
                    return shard, c, gen
        return None

    def still_mine(self, c: Claim) -> bool:
        """No higher generation of the chunk's lease exists (nobody took it over)."""
        return not self.layout.lease(c.shard, c.chunk, c.gen + 1).exists()
