"""Every path inside a run directory. No other module builds run paths by hand.

```
RUN_DIR/
  manifest.json                  frozen plan: resolved job, fingerprints, shard table, rows per chunk, task groups
  work/s000003/                  shard 3's chunks (one folder per shard: no folder ever holds all of a run's files)
    c00002.g0.lease              chunk 2 claimed (link(2), atomic on NFS/Lustre/GPFS); content: the holder task
    c00002.g1.lease              ... taken over from a holder that is gone (the highest generation holds it)
    c00002.p0001.n64.<tag>.<sha256>.parquet   64 finished rows of chunk 2, saved by task <tag>
    c00002.done.json             chunk 2's marker: its parts and their sha256 (written last)
  done/s000003.json              shard 3's done marker: every part of every chunk, with checksums (written last)
  dropped/s000003.c00002.<tag>.json   only if task <tag> saved rows of chunk 2 after losing it: how many
  progress/<job>.json            one per task attempt: heartbeat, state, own shards, rows/tokens per shard (status)
  attempts/s000003.<job>.json    one per task start on its own shard: job id, host, pid, time, error
  submissions/0001.json          one per submit/resume/scale: job ids per shard, extra tasks
  logs/                          submitit folder (sbatch scripts, stdout/stderr per task)
  multinode/<job>/node-<rank>.json   multi-node rendezvous and heartbeats
  .lock.d/owner.json             merge/resume lock (rundir.lock: mkdir + owner record, works on NFS/Lustre)
```
``status`` lists ``done/`` once and the folder of each shard that is not done.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from hpcgen.errors import UserError

FORMAT = "hpcgen-run/3"
SWEEP_FILE = "sweep.json"  # a sweep folder's record (hpcgen.login.sweep writes it; every command reads it)

_PART = re.compile(r"^c(\d{5})\.p(\d{4})\.n(\d+)\.([A-Za-z0-9_-]+)\.([0-9a-f]{64})\.parquet$")
_LEASE = re.compile(r"^c(\d{5})\.g(\d+)\.lease$")
_CHUNK_DONE = re.compile(r"^c(\d{5})\.done\.json$")
_ATTEMPT = re.compile(r"^s(\d{6})\.(.+)\.json$")


def is_sweep(path: Path | str) -> bool:
    """A sweep folder (one run directory per swept value), not a run directory."""
    return (Path(path) / SWEEP_FILE).is_file()


def safe_job_id(job_id: str) -> str:
    """A job id as a file-name component (attempt records, multi-node folders)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", job_id)


def part_tag(job_id: str) -> str:
    """A job id as a part-file tag (no dots: they separate the fields of a part name)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", job_id)


@dataclass(frozen=True)
class PartName:
    """``work/s<shard>/c<chunk>.p<seq>.n<rows>.<task>.<sha256>.parquet``: the task tag keeps two writers (a task
    that lost its node but still runs, and its replacement) from ever replacing each other's files; the sha256
    of the file's bytes, taken when it was written, is the checksum every later reader verifies it against."""

    shard: int
    chunk: int
    seq: int
    rows: int
    tag: str
    sha: str

    @property
    def name(self) -> str:
        return f"c{self.chunk:05d}.p{self.seq:04d}.n{self.rows}.{self.tag}.{self.sha}.parquet"

    @property
    def rel(self) -> str:
        """The name relative to ``work/``, as markers list it."""
        return f"s{self.shard:06d}/{self.name}"

    @classmethod
    def parse(cls, name: str, shard: int) -> PartName | None:
        m = _PART.match(name)
        return cls(shard, int(m[1]), int(m[2]), int(m[3]), m[4], m[5]) if m else None

    @classmethod
    def parse_rel(cls, rel: str) -> PartName | None:
        folder, _, name = rel.partition("/")
        if not re.fullmatch(r"s\d{6}", folder):
            return None
        return cls.parse(name, int(folder[1:]))


@dataclass
class ShardScan:
    """One listing of a shard's folder: parts per chunk, the highest lease generation per chunk, chunk markers."""

    parts: dict[int, list[PartName]]
    leases: dict[int, int]
    done: set[int]

    def rows_saved(self) -> int:
        return sum(p.rows for ps in self.parts.values() for p in ps)


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def work_dir(self) -> Path:
        return self.root / "work"

    def shard_dir(self, shard: int) -> Path:
        return self.work_dir / f"s{shard:06d}"

    def part(self, p: PartName) -> Path:
        return self.work_dir / p.rel

    def lease(self, shard: int, chunk: int, gen: int) -> Path:
        return self.shard_dir(shard) / f"c{chunk:05d}.g{gen}.lease"

    def chunk_done(self, shard: int, chunk: int) -> Path:
        return self.shard_dir(shard) / f"c{chunk:05d}.done.json"

    @property
    def dropped_dir(self) -> Path:
        return self.root / "dropped"

    def dropped(self, shard: int, chunk: int, tag: str) -> Path:
        """Written by a task that saved rows of a chunk it then lost to another task: how many (duplicates)."""
        return self.dropped_dir / f"s{shard:06d}.c{chunk:05d}.{tag}.json"

    def list_dropped(self) -> list[Path]:
        return [self.dropped_dir / n for n in _names(self.dropped_dir) if n.endswith(".json")]


    @property
    def done_dir(self) -> Path:
        return self.root / "done"

    @property
    def attempts_dir(self) -> Path:
        return self.root / "attempts"

    @property
    def progress_dir(self) -> Path:
        return self.root / "progress"

    @property
    def submissions_dir(self) -> Path:
        return self.root / "submissions"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def lock(self) -> Path:
        return self.root / ".lock.d"

    @property
    def scores(self) -> Path:
        return self.root / "scores.json"

    @property
    def default_output(self) -> Path:
        return self.root / "merged.parquet"

    @property
    def merged_dir(self) -> Path:
        """Default outputs of a run of several datasets: ``merged/<name>.parquet``."""
        return self.root / "merged"

    def done(self, shard: int) -> Path:
        return self.done_dir / f"s{shard:06d}.json"

    def attempt(self, shard: int, job_id: str) -> Path:
        return self.attempts_dir / f"s{shard:06d}.{safe_job_id(job_id)}.json"

    def progress(self, job_id: str) -> Path:
        """Progress record of one task attempt (rundir.progress)."""
        return self.progress_dir / f"{safe_job_id(job_id)}.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    def log(self, job_id: str, err: bool = False, rank: int = 0) -> Path:
        """submitit's log of one job (array task): logs/<job>/<job>_<rank>_log.out|err."""
        return self.logs_dir / job_id / f"{job_id}_{rank}_log.{'err' if err else 'out'}"

    def multinode(self, job_id: str) -> Path:
        """Rendezvous folder of one multi-node job attempt (heartbeats, head address)."""
        return self.root / "multinode" / safe_job_id(job_id)

    def submission(self, seq: int) -> Path:
        return self.submissions_dir / f"{seq:04d}.json"

    def make_dirs(self) -> None:
        for d in (self.work_dir, self.done_dir, self.progress_dir, self.attempts_dir, self.submissions_dir,
                  self.logs_dir):
            d.mkdir(parents=True, exist_ok=True)

    # --- listings (one scandir each) -----------------------------------------------------------
    def scan(self, shard: int) -> ShardScan:
        parts: dict[int, list[PartName]] = {}
        leases: dict[int, int] = {}
        done: set[int] = set()
        for name in _names(self.shard_dir(shard)):
            if (p := PartName.parse(name, shard)) is not None:
                parts.setdefault(p.chunk, []).append(p)
            elif m := _LEASE.match(name):
                leases[int(m[1])] = max(leases.get(int(m[1]), -1), int(m[2]))
            elif m := _CHUNK_DONE.match(name):
                done.add(int(m[1]))
        for ps in parts.values():
            ps.sort(key=lambda p: (p.seq, p.tag))
        return ShardScan(parts, leases, done)


    def all_parts(self) -> list[PartName]:
        """Every part of the run, shard by shard (one listing per shard folder: for reports, not status)."""
        out: list[PartName] = []
        for name in sorted(_names(self.work_dir)):
            if re.fullmatch(r"s\d{6}", name):
                scan = self.scan(int(name[1:]))
                out += [p for c in sorted(scan.parts) for p in scan.parts[c]]
        return out

    def list_done(self) -> set[int]:
        return {int(n[1:7]) for n in _names(self.done_dir) if n.startswith("s") and n.endswith(".json")}

    def list_attempts(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for n in _names(self.attempts_dir):
            m = _ATTEMPT.match(n)
            if m:
                out.setdefault(int(m[1]), []).append(n)
        return out

    def list_submissions(self) -> list[Path]:
        return sorted(self.submissions_dir / n for n in _names(self.submissions_dir) if n.endswith(".json"))


def _names(d: Path) -> list[str]:
    try:
        return [e.name for e in os.scandir(d)]
    except FileNotFoundError:
        return []


def check_writable(path: Path, key: str) -> None:
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if path.exists() and path.is_dir():
        raise UserError(f"{key} {path} is a directory")
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{key} {path} is not writable (directory {parent})")
