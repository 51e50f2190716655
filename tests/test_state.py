"""Shard states from the run directory's files (fast; the real scheduler is covered in test_pipeline.py)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
from helpers import FakeEngine, hpcgen, make_run

from hpcgen.login.state import collect, sacct_states
from hpcgen.rundir.manifest import load_manifest
from hpcgen.task.worker import run_shards


def test_states_from_files_and_failed_shard_rendering(tmp_path, fake_model):
    pq.write_table(pa.table({"prompt": ["a", "b", "c", "d"]}), tmp_path / "in.parquet")
    run = make_run(tmp_path, tmp_path / "in.parquet", fake_model, "sharding.num_shards=2")
    run_shards(run.root, [1], engine_factory=FakeEngine)
    # shard 0 was given to a local job that no longer exists and recorded an error with rich markup in it
    (run.submissions_dir / "0001.json").write_text(json.dumps(
        {"seq": 1, "kind": "submit", "executor": "local", "time": 0, "jobs": {"0": "999999", "1": "999999"}}))
    (run.attempts_dir / "s000000.999999.r0.json").write_text(json.dumps(
        {"shard": 0, "job_id": "999999.r0", "error": "RuntimeError: [bold]boom[/bold]"}))
    st = collect(run.root, load_manifest(run.root))
    assert [s.state for s in st.shards] == ["failed", "done"]
    assert st.shards[0].last_error == "RuntimeError: [bold]boom[/bold]"
    assert st.shards[0].log.endswith("logs/999999/999999_0_log.err")
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
