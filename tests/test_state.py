"""Shard states from the run directory's files (fast; the real scheduler is covered in test_pipeline.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import FakeEngine, hpcgen, make_run

from hpcgen.login.state import collect, sacct_states
from hpcgen.rundir.lock import process_start
from hpcgen.rundir.manifest import load_manifest
from hpcgen.task.worker import run_shards


def test_states_from_files_and_failed_shard_rendering(tmp_path, fake_model):
    pq.write_table(pa.table({"prompt": ["a", "b", "c", "d"]}), tmp_path / "in.parquet")
    run = make_run(tmp_path, tmp_path / "in.parquet", fake_model, "sharding.num_shards=2")
    run_shards(run.root, [1], engine_factory=FakeEngine)
    # shard 0 was given to a local job that has exited (a real process, recorded with its start time; its pid
    # may be reused, its start time not) and recorded an error with rich markup in it
    gone = subprocess.Popen(["true"])
    start = process_start(gone.pid) or "gone"
    gone.wait()
    pid = str(gone.pid)
    (run.submissions_dir / "0001.json").write_text(json.dumps(
        {"seq": 1, "kind": "submit", "executor": "local", "time": 0, "jobs": {"0": pid, "1": pid},
         "local_starts": {pid: start}}))
    (run.attempts_dir / f"s000000.{pid}.r0.json").write_text(json.dumps(
        {"shard": 0, "job_id": f"{pid}.r0", "error": "RuntimeError: [bold]boom[/bold]"}))
    st = collect(run.root, load_manifest(run.root))
    assert [s.state for s in st.shards] == ["failed", "done"]
    assert st.shards[0].last_error == "RuntimeError: [bold]boom[/bold]"
    assert st.shards[0].log.endswith(f"logs/{pid}/{pid}_0_log.err")
    assert st.rows_done == 2 and st.rows_total == 4 and st.sacct_calls == 0
    res = hpcgen("status", str(run.root))
    assert res.returncode == 0, res.stderr
    assert "[bold]boom[/bold]" in res.stdout and "failed=1" in res.stdout
    js = json.loads(hpcgen("status", str(run.root), "--json").stdout)
    assert js["shards"][0]["state"] == "failed" and js["complete"] is False


def test_sacct_pending_ranges_are_expanded(tmp_path, monkeypatch):
    fake = tmp_path / "sacct"
    fake.write_text("#!/bin/sh\nprintf '12_[3-5%%2]|PENDING\\n12_0|RUNNING\\n12_1|COMPLETED\\n12_2|CANCELLED by 0\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    states = sacct_states(["12_0", "12_4"])
    assert states == {"12_3": "PENDING", "12_4": "PENDING", "12_5": "PENDING", "12_0": "RUNNING",
                      "12_1": "COMPLETED", "12_2": "CANCELLED"}


def test_task_finishing_between_listing_and_sacct_is_done_not_failed(tmp_path, fake_model, monkeypatch):
    """Files are listed first, sacct asked second: a task that writes its done marker and exits in between
    is COMPLETED for sacct with no marker in the listing; it must read as done (``submit --wait`` would
    otherwise report a failure)."""
    from hpcgen.login import state

    pq.write_table(pa.table({"prompt": ["a", "b"]}), tmp_path / "in.parquet")
    run = make_run(tmp_path, tmp_path / "in.parquet", fake_model, "sharding.num_shards=1")
    (run.submissions_dir / "0001.json").write_text(json.dumps(
        {"seq": 1, "kind": "submit", "executor": "slurm", "time": 0, "jobs": {"0": "7_0"}}))

    def sacct_after_the_task_finished(jobs):
        run_shards(run.root, [0], engine_factory=FakeEngine)
        return {"7_0": "COMPLETED"}

    monkeypatch.setattr(state, "sacct_states", sacct_after_the_task_finished)
    st = collect(run.root, load_manifest(run.root))
    assert [s.state for s in st.shards] == ["done"] and st.rows_done == 2 and st.complete


# --- jobs that sacct does not know (accounting off or failing, purged): squeue and the attempt records ------


def fake_slurm(tmp_path, monkeypatch, *, sacct: str | None, squeue: str | None) -> Path:
    """sacct/squeue stand-ins on PATH: print the given lines, or fail like SLURM does (None); each call is logged."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "calls.log"
    for name, out in (("sacct", sacct), ("squeue", squeue)):
        body = (f"printf '{out}'\nexit 0" if out is not None else
                "echo 'sacct: error: Problem talking to the database: Connection refused' >&2\nexit 1")
        (bin_dir / name).write_text(f"#!/bin/sh\necho {name} >> {calls}\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return calls


def slurm_run(tmp_path, fake_model, shards: int = 1):
    pq.write_table(pa.table({"prompt": [f"q{i}" for i in range(2 * shards)]}), tmp_path / "in.parquet")
    run = make_run(tmp_path, tmp_path / "in.parquet", fake_model, f"sharding.num_shards={shards}")
    jobs = {str(i): f"7_{i}" for i in range(shards)}
    (run.submissions_dir / "0001.json").write_text(json.dumps(
        {"seq": 1, "kind": "submit", "executor": "slurm", "time": 0, "jobs": jobs, "arrays": ["7"]}))
    return run


def attempt(run, shard: int, job: str, **rec) -> None:
    (run.attempts_dir / f"s{shard:06d}.{job}.r0.json").write_text(json.dumps(
        {"shard": shard, "job_id": f"{job}.r0", "host": "n1", "started": 1_700_000_000, "error": None, **rec}))


def test_accounting_down_running_job_read_from_squeue(tmp_path, fake_model, monkeypatch):
    run = slurm_run(tmp_path, fake_model, shards=2)
    calls = fake_slurm(tmp_path, monkeypatch, sacct=None, squeue="7_0|RUNNING\\n7_1|PENDING\\n")
    attempt(run, 0, "7_0")
    st = collect(run.root, load_manifest(run.root))
    assert [s.state for s in st.shards] == ["running", "pending"]
    assert calls.read_text().split() == ["sacct", "squeue"]  # one call each per status
    assert st.sacct_calls == 1 and st.squeue_calls == 1 and st.scheduler_answered


def test_job_no_source_knows_is_unknown_wait_ends_and_resume_takes_it(tmp_path, fake_model, monkeypatch):
    """Accounting off and the job gone from the queue: a shard whose task started and recorded no end, and
    one that never started, are 'unknown' with a reason (not running forever); one whose attempt recorded an
    error is failed. --wait ends; resume resubmits all three."""
    from hpcgen.errors import ShardFailedError
    from hpcgen.login import ops

    run = slurm_run(tmp_path, fake_model, shards=3)
    fake_slurm(tmp_path, monkeypatch, sacct=None, squeue="")
    attempt(run, 0, "7_0")
    attempt(run, 2, "7_2", error="RuntimeError: engine died", ended=1_700_000_100)
    st = collect(run.root, load_manifest(run.root))
    assert [s.state for s in st.shards] == ["unknown", "unknown", "failed"]
    assert "7_0 is known to neither sacct nor squeue" in st.shards[0].reason
    assert "started on n1" in st.shards[0].reason and "recorded no end" in st.shards[0].reason
    assert "never started a task" in st.shards[1].reason
    assert st.shards[2].last_error == "RuntimeError: engine died"
    with pytest.raises(ShardFailedError, match=r"3 shard\(s\) failed.*unknown.*shard 0 unknown: job 7_0"):
        ops.wait(run.root, poll_seconds=0.05, timeout=30)
    res = hpcgen("status", str(run.root))
    assert "unknown=2" in res.stdout and "known to neither sacct nor squeue" in res.stdout
    queued = []
    monkeypatch.setattr(ops, "submit_groups", lambda layout, spec, groups, **kw: queued.append(groups))
    ops.resume(run.root)
    assert queued == [[[0], [1], [2]]]


def test_stale_accounting_record_is_not_trusted(tmp_path, fake_model, monkeypatch):
    """sacct says RUNNING (slurmdbd missed the end) but the controller does not know the job."""
    run = slurm_run(tmp_path, fake_model)
    fake_slurm(tmp_path, monkeypatch, sacct="7_0|RUNNING\\n", squeue="")
    st = collect(run.root, load_manifest(run.root))
    assert st.shards[0].state == "unknown" and "stale accounting record" in st.shards[0].reason


def test_slurm_unreachable_resume_refuses_and_wait_keeps_waiting(tmp_path, fake_model, monkeypatch):
    from hpcgen.errors import SchedulerError
    from hpcgen.login import ops

    run = slurm_run(tmp_path, fake_model)
    fake_slurm(tmp_path, monkeypatch, sacct=None, squeue=None)
    st = collect(run.root, load_manifest(run.root))
    assert st.shards[0].state == "unknown" and "unreachable" in st.shards[0].reason and not st.scheduler_answered
    with pytest.raises(SchedulerError, match="neither sacct nor squeue answered"):
        ops.resume(run.root)
    with pytest.raises(SchedulerError, match="neither sacct nor squeue answered for 0s"):
        ops.wait(run.root, poll_seconds=0.05, unreachable_for=0.2)


def test_an_array_cancelled_before_any_task_started_has_one_record_for_all(tmp_path):
    """sacct lists a held array cancelled before it ran as one line ('252|CANCELLED+'): its tasks are cancelled,
    not unknown (seen on the throwaway cluster)."""
    from hpcgen.login.state import Scheduler, _parse_states

    sched = Scheduler(_parse_states("252|CANCELLED+\n"), {})
    assert sched.state("252_3") == ("CANCELLED", None)
