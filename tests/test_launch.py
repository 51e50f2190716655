"""The launcher without a cluster: array_parallelism as a cap on the whole run (sbatch stand-in on PATH), local
jobs identified by pid and process start time (real processes). The real scheduler: test_scheduler.py."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import make_run

from hpcgen.login import launch, ops
from hpcgen.login.state import collect
from hpcgen.rundir.lock import process_start
from hpcgen.rundir.manifest import load_manifest, spec_from_manifest


def fake_sbatch(tmp_path: Path, monkeypatch) -> Path:
    """An sbatch that keeps each script and answers like SLURM; scancel/sacct/squeue that do nothing."""
    bin_dir, scripts = tmp_path / "bin", tmp_path / "scripts"
    bin_dir.mkdir()
    scripts.mkdir()
    (bin_dir / "sbatch").write_text(f"""#!/bin/sh
n=$(( $(ls {scripts} | wc -l) + 100 ))
cp "$1" {scripts}/$n.sh
echo "Submitted batch job $n"
""")
    for name in ("scancel", "sacct", "squeue", "srun", "scontrol"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 0\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return scripts


def arrays_of(scripts: Path) -> list[tuple[int, int, str | None]]:
    """(tasks, %cap, dependency) of each queued array, in order."""
    out = []
    for f in sorted(scripts.iterdir()):
        text = f.read_text()
        m = re.search(r"^#SBATCH --array=0-(\d+)%(\d+)$", text, re.M)
        dep = re.search(r"^#SBATCH --dependency=(\S+)$", text, re.M)
        if m is None:  # not an array (the merge+score step)
            continue
        out.append((int(m[1]) + 1, int(m[2]), dep[1] if dep else None))
    return out


@pytest.fixture
def run(tmp_path, fake_model):
    pq.write_table(pa.table({"prompt": [f"q{i}" for i in range(10)]}), tmp_path / "in.parquet")
    return make_run(tmp_path, tmp_path / "in.parquet", fake_model, "sharding.num_shards=10")


def test_cap_is_split_over_the_arrays_of_a_submission(run, tmp_path, monkeypatch):
    """MaxArraySize 4 cuts 10 tasks into 3 arrays: with array_parallelism=6 they get %2 each (was %4 each:
    12 at once)."""
    scripts = fake_sbatch(tmp_path, monkeypatch)
    monkeypatch.setattr(launch, "max_array_size", lambda: 4)
    spec = spec_from_manifest(load_manifest(run.root))
    spec.slurm.array_parallelism = 6
    sub = launch.submit_groups(run, spec, [[i] for i in range(10)], executor="slurm", kind="submit")
    assert arrays_of(scripts) == [(4, 2, None), (4, 2, None), (2, 2, None)]
    assert sub.arrays == ["100", "101", "102"] and sub.jobs[9] == "102_1"


def test_fewer_slots_than_arrays_run_the_arrays_one_after_the_other(run, tmp_path, monkeypatch):
    scripts = fake_sbatch(tmp_path, monkeypatch)
    monkeypatch.setattr(launch, "max_array_size", lambda: 4)
    spec = spec_from_manifest(load_manifest(run.root))
    spec.slurm.array_parallelism = 2
    launch.submit_groups(run, spec, [[i] for i in range(10)], executor="slurm", kind="submit")
    assert arrays_of(scripts) == [(4, 2, None), (4, 2, "afterany:100"), (2, 2, "afterany:101")]


def test_resume_counts_the_tasks_still_running(run, tmp_path, monkeypatch):
    """3 tasks of the first submission still run and the cap is 4: the resumed array gets %1; with the cap
    full, it waits for the old array (afterany), and so does the chained merge+score step."""
    scripts = fake_sbatch(tmp_path, monkeypatch)
    jobs = {str(i): f"7_{i}" for i in range(10)}
    (run.submissions_dir / "0001.json").write_text(json.dumps(
        {"seq": 1, "kind": "submit", "executor": "slurm", "time": 0, "jobs": jobs, "arrays": ["7"]}))
    running = "".join(f"7_{i}|RUNNING\\n" for i in range(3))
    (tmp_path / "bin" / "squeue").write_text(f"#!/bin/sh\nprintf '{running}'\n")
    (tmp_path / "bin" / "sacct").write_text("#!/bin/sh\nprintf '" + "".join(
        f"7_{i}|CANCELLED\\n" for i in range(3, 10)) + "'\n")
    manifest = load_manifest(run.root)
    manifest["job"]["slurm"]["array_parallelism"] = 4
    manifest["job"]["score"]["after_merge"] = True
    run.manifest.write_text(json.dumps(manifest))
    ops.resume(run.root)
    assert arrays_of(scripts)[0] == (7, 1, None)
    chain = (scripts / "101.sh").read_text()
    assert "#SBATCH --dependency=afterok:100,afterany:7" in chain
    manifest["job"]["slurm"]["array_parallelism"] = 3
    run.manifest.write_text(json.dumps(manifest))
    (run.submissions_dir / "0002.json").unlink()
    ops.resume(run.root)
    assert arrays_of(scripts)[1] == (7, 3, "afterany:7")


def test_plan_arrays_never_exceeds_the_cap():
    """Whatever the sizes: arrays queued together share the cap with the earlier tasks still running; an array
    that waits for the previous one (and for the earlier tasks) runs alone within the cap."""
    from hpcgen.login.launch import plan_arrays

    for n in (1, 5, 10, 33):
        for size in (1, 3, 4, 1001):
            for cap in (1, 2, 3, 7, 64):
                for busy in (0, 1, 5, 70):
                    plans = plan_arrays(n, cap, size, busy)
                    assert [(p.start, p.stop) for p in plans] == [(i, min(n, i + size)) for i in range(0, n, size)]
                    assert all(1 <= p.cap <= p.stop - p.start for p in plans)
                    if not any(p.after_previous or p.after_busy for p in plans):  # all queued at once
                        assert sum(p.cap for p in plans) + busy <= cap
                    else:  # one after the other
                        assert all(p.after_previous and (p.after_busy or not busy) for p in plans[1:])
                        assert all(p.cap + (0 if p.after_busy else busy) <= cap for p in plans)


def test_local_job_whose_pid_was_reused_is_neither_running_nor_signalled(tmp_path, fake_model):
    """A local run's job id is a pid. The recorded process ended and its pid now belongs to another process:
    status must not call the shard running, cancel must not signal that process."""
    pq.write_table(pa.table({"prompt": ["a", "b"]}), tmp_path / "in.parquet")
    run = make_run(tmp_path, tmp_path / "in.parquet", fake_model, "sharding.num_shards=1")
    stranger = subprocess.Popen(["sleep", "120"])  # holds the pid the task had
    try:
        pid = str(stranger.pid)
        real_start = process_start(stranger.pid)
        (run.submissions_dir / "0001.json").write_text(json.dumps(
            {"seq": 1, "kind": "submit", "executor": "local", "time": 0, "jobs": {"0": pid}, "arrays": [pid],
             "local_starts": {pid: real_start.split(":")[0] + ":1"}}))  # the task started at tick 1
        st = collect(run.root, load_manifest(run.root))
        assert st.shards[0].state == "failed"
        assert ops.cancel(run.root) == 0
        assert stranger.poll() is None  # not signalled
        # the very process that was started: running, and cancel stops it
        (run.submissions_dir / "0001.json").write_text(json.dumps(
            {"seq": 1, "kind": "submit", "executor": "local", "time": 0, "jobs": {"0": pid}, "arrays": [pid],
             "local_starts": {pid: real_start}}))
        assert collect(run.root, load_manifest(run.root)).shards[0].state == "running"
        assert ops.cancel(run.root) == 1
        assert stranger.wait(30) == -15
    finally:
        stranger.kill()
        stranger.wait()


def test_a_local_job_that_exited_is_failed_even_if_its_pid_is_reused(tmp_path, fake_model):
    """test_state used pid 999999 as 'dead'; here the process really ran and exited."""
    pq.write_table(pa.table({"prompt": ["a", "b"]}), tmp_path / "in.parquet")
    run = make_run(tmp_path, tmp_path / "in.parquet", fake_model, "sharding.num_shards=1")
    gone = subprocess.Popen(["true"])
    start = process_start(gone.pid)
    gone.wait()
    pid = str(gone.pid)
    (run.submissions_dir / "0001.json").write_text(json.dumps(
        {"seq": 1, "kind": "submit", "executor": "local", "time": 0, "jobs": {"0": pid}, "arrays": [pid],
         "local_starts": {pid: start or "gone"}}))
    assert collect(run.root, load_manifest(run.root)).shards[0].state == "failed"
