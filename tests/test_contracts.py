"""README promises that the code once broke: the run directory as submit's last stdout line even when --wait
fails, exit code 1 for an internal error, cancel of every job of the run, collision-free default run
directories. (Merge's output format from the suffix whatever its case: test_integrity.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import REPO, hpcgen, make_run

from hpcgen import cli
from hpcgen.login import ops


@pytest.fixture
def job(tmp_path: Path, fake_model: Path) -> Path:
    pq.write_table(pa.table({"prompt": ["a", "b", "c", "d"]}), tmp_path / "d.parquet")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"data": {"path": str(tmp_path / "d.parquet"), "n_samples": 1},
                                    "model": {"path": str(fake_model)}, "trainer": {"n_gpus_per_node": 1},
                                    "sharding": {"num_shards": 2}, "slurm": {"max_requeues": 0}}))
    return path


def test_failing_submit_wait_still_ends_with_the_run_dir(job, tmp_path):
    """The task fails at once (it believes SLURM requeued it 9 times, over slurm.max_requeues=0): exit 6, the
    failure on stderr, and the run directory as the last stdout line, as for a successful run."""
    run_dir = tmp_path / "run"
    res = hpcgen("submit", str(job), "--executor", "local", "--wait", "--run-dir", str(run_dir),
                 env={"SLURM_RESTART_COUNT": "9"}, timeout=300)
    assert res.returncode == 6, res.stderr
    assert "requeued 9 times, over slurm.max_requeues=0" in res.stderr
    assert res.stdout.strip().splitlines()[-1] == str(run_dir)
    res = hpcgen("resume", str(run_dir), "--wait", env={"SLURM_RESTART_COUNT": "9"}, timeout=300)
    assert res.returncode == 6 and res.stdout.strip().splitlines()[-1] == str(run_dir), res.stderr


def test_internal_error_is_exit_1_and_one_line(job, tmp_path, monkeypatch, capsys):
    def bug(*a, **k):
        raise KeyError("shards")

    monkeypatch.setattr(ops, "cancel", bug)
    assert cli.main(["cancel", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["hpcgen: internal error: KeyError: 'shards' (set HPCGEN_DEBUG=1 for a traceback)"]


def test_cancel_cancels_every_job_of_the_run(tmp_path, fake_model, monkeypatch):
    """Two submissions (an array per submission, one of them split in two) and their merge+score steps:
    every one is cancelled, not only the latest job of each unfinished shard."""
    pq.write_table(pa.table({"prompt": ["a", "b", "c", "d"]}), tmp_path / "in.parquet")
    run = make_run(tmp_path, tmp_path / "in.parquet", fake_model, "sharding.num_shards=4")
    (run.submissions_dir / "0001.json").write_text(json.dumps(
        {"seq": 1, "kind": "submit", "executor": "slurm", "time": 0, "arrays": ["7", "8"], "chain_job": "9",
         "jobs": {"0": "7_0", "1": "7_1", "2": "8_0", "3": "8_1"}}))
    (run.submissions_dir / "0002.json").write_text(json.dumps(
        {"seq": 2, "kind": "resume", "executor": "slurm", "time": 1, "arrays": ["12"], "chain_job": "13",
         "jobs": {"1": "12_0"}}))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "scancel.log"
    (bin_dir / "scancel").write_text(f"#!/bin/sh\necho \"$@\" >> {log}\n"
                                     "echo 'scancel: error: Kill job error on job id 7: Job/step already completing or "
                                     "completed' >&2\nexit 1\n")
    (bin_dir / "scancel").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    assert ops.cancel(run.root) == 5
    assert log.read_text().split() == ["7", "8", "9", "12", "13"]


def test_two_quick_submits_get_their_own_run_dirs(job, tmp_path, monkeypatch):
    """The default run directory has one-second resolution: submits in the same second must not collide."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ops.time, "strftime", lambda fmt, *a: "20261129-101500")
    monkeypatch.setattr(ops, "submit_groups", lambda *a, **k: None)
    monkeypatch.setattr(ops, "attach_chain", lambda *a, **k: None)
    roots = [ops.submit(job, [], executor="local").layout.root for _ in range(3)]
    assert [r.name for r in roots] == ["job-20261129-101500", "job-20261129-101500-2", "job-20261129-101500-3"]
    assert all((r / "manifest.json").is_file() for r in roots)


RACE = """
import sys, time
from pathlib import Path
from hpcgen.login.plan import create_run_dir
go = float(sys.argv[2])
while time.time() < go:
    pass
print(create_run_dir(Path(sys.argv[1]), {"who": sys.argv[3]}, unique=True).root, flush=True)
"""


def test_racing_default_run_dirs_are_distinct_and_whole(tmp_path):
    import time

    target, go = tmp_path / "runs" / "job-20261129-101500", time.time() + 1.0
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(target), str(go), str(i)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    roots = sorted(Path(o.strip()) for o, _ in outs)
    assert len(set(roots)) == 4
    whos = sorted(json.loads((r / "manifest.json").read_text())["who"] for r in roots)
    assert whos == ["0", "1", "2", "3"]  # each directory holds exactly the manifest of the submit that made it
