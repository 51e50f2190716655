"""Small helpers shared by tests (importable as ``helpers`` because tests/ is on sys.path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def write_job(path: Path, *, data: Path, model: Path, **sections: Any) -> Path:
    """A job file on the tiny model + dev cluster presets, with absolute paths and extra sections merged."""
    job: dict[str, Any] = {
        "defaults": ["model/tiny", "cluster/dev"],
        "data": {"path": str(data), "n_samples": 2, "output_path": str(path.parent / "out.parquet")},
        "model": {"path": str(model)},
        "rollout": {"temperature": 1.0, "top_p": 0.9, "response_length": 16},
        "sharding": {"num_shards": 2},
        "checkpoint": {"every_rows": 8, "every_seconds": 5},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            job.setdefault(key, {}).update(value)
        else:
            job[key] = value
    path.write_text(yaml.safe_dump(job))
    return path


def hpcgen(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
           timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess; stdout/stderr captured as text."""
    return subprocess.run([sys.executable, "-m", "hpcgen", *args], cwd=cwd or REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "HPCGEN_POLL_SECONDS": "2", **(env or {})})


def part_files(run_dir: Path, shard: int | None = None) -> list[Path]:
    """Every part file of a run (or of one shard), in shard, chunk, save order."""
    pattern = "*/*.parquet" if shard is None else f"s{shard:06d}/*.parquet"
    return sorted((Path(run_dir) / "work").glob(pattern))


def parts_of(layout: Any, shard: int) -> list[Any]:
    """PartNames of one shard, in chunk and save order."""
    scan = layout.scan(shard)
    return [p for c in sorted(scan.parts) for p in scan.parts[c]]


def status_json(run_dir: Path) -> dict[str, Any]:
    res = hpcgen("status", str(run_dir), "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


class FakeEngine:
    """Stands in for hpcgen.task.engine.Engine in fast unit tests: deterministic text per (row, sample)."""

    def __init__(self, spec: Any, model_path: str, *, per_step: int = 3, fail_rows: tuple[int, ...] = ()):
        self.spec, self.per_step, self.fail_rows = spec, per_step, fail_rows
        self.queue: list[int] = []
        self.added: list[int] = []
        self.sampling: dict[int, dict[str, Any]] = {}

    def encode(self, prompt: Any, chat: Any = None) -> tuple[list[int], bool]:
        from hpcgen.task.engine import PromptError, normalize_messages

        msgs = normalize_messages(prompt)
        ids = list(range(sum(len(m["content"]) for m in msgs) % 50 + 1))
        if len(ids) > self.spec.rollout.prompt_length:
            raise PromptError("too long")
        return ids, False

    def add(self, row_id: int, ids: list[int], sampling: dict[str, Any] | None = None) -> None:
        from hpcgen.task.engine import PromptError

        if row_id in self.fail_rows:
            raise PromptError(f"row {row_id} rejected by the engine")
        self.queue.append(row_id)
        self.added.append(row_id)
        self.sampling[row_id] = dict(sampling or {"n": self.spec.data.n_samples})

    def has_unfinished(self) -> bool:
        return bool(self.queue)

    def step(self) -> list[Any]:
        from hpcgen.task.engine import Finished

        done, self.queue = self.queue[: self.per_step], self.queue[self.per_step:]
        return [Finished(r, [self.text(r, i, sp) for i in range(sp["n"])], ["stop"] * sp["n"], [3] * sp["n"], 5)
                for r in done for sp in [self.sampling.pop(r)]]

    def text(self, row_id: int, i: int, sampling: dict[str, Any]) -> str:
        return f"row {row_id} sample {i}"


class SeedEngine(FakeEngine):
    """Text from the request's seed, not the run row id: what a real engine's samples depend on (so a row of a
    run of several datasets and seeds reads like the same row of a single-dataset run with that seed)."""

    def text(self, row_id: int, i: int, sampling: dict[str, Any]) -> str:
        extra = {k: v for k, v in sorted(sampling.items()) if k not in ("n", "seed")}
        return f"seed {sampling['seed'] + i}" + (f" {extra}" if extra else "")


def make_run(tmp_path: Path, dataset: Path, model: Path, *overrides: str) -> Any:
    """A planned run directory (no jobs queued) for fast worker/merge tests."""
    from hpcgen.login.plan import create_run_dir, make_plan
    from hpcgen.spec.loader import load_job

    data = {"data": {"path": str(dataset), "n_samples": 2}, "model": {"path": str(model)},
            "sharding": {"num_shards": 3, "steal": False}, "checkpoint": {"every_rows": 4},
            "rollout": {"max_num_seqs": 8}}  # 8 rows in flight: chunks of 8 rows, claimed one ahead
    spec = load_job(None, list(overrides), data=data)
    plan = make_plan(spec, job_file=None, overrides=list(overrides))
    return create_run_dir(tmp_path / "run", plan.manifest)


def voluntary_switches(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return int(next(x for x in fh if x.startswith("voluntary_ctxt_switches:")).split()[1])


def wait_guard_scanned(pid: int, timeout: float = 30) -> None:
    """Wait until the guard ``pid`` has scanned /proc at least once since this call: its loop is scan, sleep;
    each sleep is one voluntary context switch, so three more switches mean a whole scan in between."""
    import time

    start = voluntary_switches(pid)
    deadline = time.monotonic() + timeout
    while voluntary_switches(pid) < start + 3:
        assert time.monotonic() < deadline, f"guard {pid} made no round in {timeout} s"
        time.sleep(0.05)


def wait_for(cond, timeout: float, what: str, poll: float = 0.5):
    """Poll ``cond`` until it returns something true (returned), failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := cond():
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
