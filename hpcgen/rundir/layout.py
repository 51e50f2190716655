"""Every path inside a run directory. No other module builds run paths by hand.

```
RUN_DIR/
  manifest.json                  frozen plan: resolved job, dataset fingerprint, shard table, task groups
  parts/s000003.p000012.n64.<tag>.<sha256>.parquet   shard 3, 12th save, 64 rows, by attempt <tag>
  done/s000003.json              shard 3's done marker: rows, parts, checksums (written last)
  attempts/s000003.<job>.json    one per task start on a shard: job id, host, pid, time, error
  progress/<job>.json            one per task attempt: rows, tokens, finish reasons at each flush (status)
  submissions/0001.json          one per submit/resume: job ids per shard
  logs/                          submitit folder (sbatch scripts, stdout/stderr per task)
  multinode/<job>/node-<rank>.json   multi-node rendezvous and heartbeats
  .lock.d/owner.json             merge/resume lock (rundir.lock: mkdir + owner record, works on NFS/Lustre)
```
Flat folders keep ``status`` to a few directory listings even with 10,000 shards.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from hpcgen.errors import UserError

FORMAT = "hpcgen-run/1"

_PART = re.compile(r"^s(\d{6})\.p(\d{6})\.n(\d+)\.([A-Za-z0-9_-]+)\.([0-9a-f]{64})\.parquet$")
_ATTEMPT = re.compile(r"^s(\d{6})\.(.+)\.json$")


def safe_job_id(job_id: str) -> str:
    """A job id as a file-name component (attempt records, multi-node folders)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", job_id)


def part_tag(job_id: str) -> str:
    """A job id as a part-file tag (no dots: they separate the fields of a part name)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", job_id)


@dataclass(frozen=True)
class PartName:
    """``s<shard>.p<seq>.n<rows>.<attempt>.<sha256>.parquet``: the attempt tag keeps two writers (a task that
    lost its node but still runs, and its replacement) from ever replacing each other's files; the sha256 of
    the file's bytes, taken when it was written, is the checksum every later reader verifies it against."""

    shard: int
    seq: int
    rows: int
    tag: str
    sha: str

    @property
    def name(self) -> str:
        return f"s{self.shard:06d}.p{self.seq:06d}.n{self.rows}.{self.tag}.{self.sha}.parquet"

    @classmethod
    def parse(cls, name: str) -> PartName | None:
        m = _PART.match(name)
        return cls(int(m[1]), int(m[2]), int(m[3]), m[4], m[5]) if m else None


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def parts_dir(self) -> Path:
        return self.root / "parts"

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
        for d in (self.parts_dir, self.done_dir, self.attempts_dir, self.submissions_dir, self.logs_dir):
            d.mkdir(parents=True, exist_ok=True)

    # --- listings (one scandir each) -----------------------------------------------------------
    def list_parts(self) -> dict[int, list[PartName]]:
        out: dict[int, list[PartName]] = {}
        if self.parts_dir.is_dir():
            for entry in _names(self.parts_dir):
                p = PartName.parse(entry)
                if p is not None:
                    out.setdefault(p.shard, []).append(p)
        for parts in out.values():
            parts.sort(key=lambda p: (p.seq, p.tag))
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
