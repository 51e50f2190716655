"""rundir.lock: the mkdir lock of merge/resume, with real processes on the real filesystem (fast), and across
the throwaway cluster's two slurmd "nodes" with flock made unavailable (ENOSYS, as on Lustre without flock).

NFS could not be mounted in this sandbox: the kernel has no NFS client (CONFIG_NFS_FS unset, no modules;
``mount(2)`` of type nfs/nfs4 fails with ENODEV "No such device"), so the cross-node test runs on the shared
local filesystem of the two slurmd nodes with flock() returning ENOSYS in every process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

import pytest
from conftest import need
from helpers import REPO, FakeEngine, hpcgen, make_run, wait_for

from hpcgen.errors import LockedError
from hpcgen.rundir import atomic
from hpcgen.rundir.lock import Lock, Owner, process_alive, process_start

HOLD = """
import sys, time
from pathlib import Path
from hpcgen.rundir.lock import Lock
with Lock(Path(sys.argv[1]), sys.argv[2], heartbeat=0.2):
    print("held", flush=True)
    Path(sys.argv[3]).touch()
    while not Path(sys.argv[4]).exists():
        time.sleep(0.05)
print("released", flush=True)
"""


wait_until = partial(wait_for, poll=0.05)


def holder(tmp_path: Path, lock: Path, what: str = "merge", env: dict | None = None,
           prefix: list[str] | None = None) -> tuple[subprocess.Popen, Path]:
    held, release = tmp_path / f"held.{time.monotonic_ns()}", tmp_path / f"release.{time.monotonic_ns()}"
    proc = subprocess.Popen([*(prefix or []), sys.executable, "-c", HOLD, str(lock), what, str(held), str(release)],
                            cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, text=True)
    wait_until(lambda: held.exists() or proc.poll() is not None, 120, "the holder to take the lock")
    assert proc.poll() is None, "the holder exited"
    return proc, release


def test_another_process_is_refused_naming_the_holder_then_gets_it(tmp_path):
    lock = tmp_path / ".lock.d"
    proc, release = holder(tmp_path, lock)
    with pytest.raises(LockedError) as exc:
        Lock(lock, "resume").acquire()
    assert str(exc.value) == (f"resume: {tmp_path} is locked by merge (pid {proc.pid} on {os.uname().nodename}); "
                              "try again when it finishes")
    release.touch()
    assert proc.wait(30) == 0
    assert not lock.exists() and not list(tmp_path.glob(".lock.d.*"))  # released and cleaned up
    with Lock(lock, "resume"):
        assert Lock(lock, "merge").try_acquire() is not None


def test_a_killed_holder_on_this_host_is_stale_at_once(tmp_path):
    lock = tmp_path / ".lock.d"
    proc, _ = holder(tmp_path, lock)
    proc.kill()
    proc.wait()
    assert Lock(lock, "merge").holder().pid == proc.pid  # its record is still there
    with Lock(lock, "merge") as mine:  # taken over at once: the holder's process is gone
        assert mine.holder().token == mine.token


def test_a_reused_pid_does_not_keep_a_lock_alive(tmp_path):
    """The record names a pid that now belongs to another live process (start time differs): stale."""
    lock = tmp_path / ".lock.d"
    other = subprocess.Popen(["sleep", "60"])
    try:
        lock.mkdir()
        rec = Owner("t0", "merge", os.uname().nodename, other.pid, "some-boot:1", 0.0, time.time())
        atomic.write_json(lock / "owner.json", asdict(rec))
        assert process_alive(other.pid, process_start(other.pid))
        assert not process_alive(other.pid, "some-boot:1")
        with Lock(lock, "resume"):
            pass
        assert other.poll() is None  # nothing was signalled
    finally:
        other.kill()
        other.wait()


def test_another_host_holder_is_stale_only_after_its_heartbeat_stops(tmp_path):
    lock = tmp_path / ".lock.d"
    lock.mkdir()
    rec = Owner("t1", "merge", "login-other", 4242, None, time.time() - 500, time.time() - 5)
    atomic.write_json(lock / "owner.json", asdict(rec))
    with pytest.raises(LockedError, match=r"locked by merge \(pid 4242 on login-other\)"):
        Lock(lock, "resume", stale_after=60).acquire()
    rec.beat = time.time() - 61
    atomic.write_json(lock / "owner.json", asdict(rec))
    mine = Lock(lock, "resume", stale_after=60)
    assert mine.try_acquire() is None and mine.holder().token == mine.token
    mine.release()


def test_refresh_tells_the_holder_its_lock_was_taken_over(tmp_path):
    lock = tmp_path / ".lock.d"
    a = Lock(lock, "merge", stale_after=1)
    assert a.try_acquire() is None and a.refresh()
    rec = a.holder()
    rec.host, rec.beat = "login-other", time.time() - 10  # as another host would see it: silent for 10 s
    atomic.write_json(lock / "owner.json", asdict(rec))
    b = Lock(lock, "resume", stale_after=1)
    assert b.try_acquire() is None
    assert not a.refresh()  # a learns that it lost the lock
    a.release()  # and does not remove b's
    assert b.holder().token == b.token
    b.release()
    assert not lock.exists()


def test_a_lock_directory_without_record_is_stale_only_when_old(tmp_path):
    lock = tmp_path / ".lock.d"
    lock.mkdir()
    with pytest.raises(LockedError, match="locked by another process"):
        Lock(lock, "merge", stale_after=30).acquire()
    old = time.time() - 60
    os.utime(lock, (old, old))
    with Lock(lock, "merge", stale_after=30):
        pass


RACE = """
import sys, time
from pathlib import Path
from hpcgen.rundir.lock import Lock
go = float(sys.argv[2])
while time.time() < go:
    pass
lock = Lock(Path(sys.argv[1]), "merge")
ok = lock.try_acquire() is None
print("won" if ok else "lost", flush=True)
if ok:  # hold it until every contender has tried
    sys.stdin.readline()
    lock.release()
"""


def test_racing_processes_exactly_one_wins(tmp_path):
    lock = tmp_path / ".lock.d"
    for _ in range(3):
        go = time.time() + 1.0
        procs = [subprocess.Popen([sys.executable, "-c", RACE, str(lock), str(go)], cwd=REPO, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True) for _ in range(4)]
        results = [p.stdout.readline().strip() for p in procs]  # the winner holds the lock meanwhile
        for p in procs:
            p.communicate("release\n", timeout=60)
        assert sorted(results) == ["lost", "lost", "lost", "won"], results
        assert not lock.exists()


def test_merge_and_resume_work_without_flock(tmp_path, small_dataset, fake_model):
    """flock() failing with ENOSYS (Lustre without flock) must not matter: merge and resume take the lock."""
    shim = flock_enosys_shim(tmp_path)
    run = make_run(tmp_path, small_dataset, fake_model)
    from hpcgen.task.worker import run_shards

    run_shards(run.root, [0, 1, 2], engine_factory=FakeEngine)
    env = {"LD_PRELOAD": str(shim)}
    probe = subprocess.run([sys.executable, "-c", "import fcntl; fcntl.flock(open('/dev/null'), fcntl.LOCK_EX)"],
                           env={**os.environ, **env}, capture_output=True, text=True)
    assert "Function not implemented" in probe.stderr  # the shim really takes flock away
    res = hpcgen("merge", str(run.root), "--output", str(tmp_path / "o.parquet"), env=env)
    assert res.returncode == 0, res.stderr
    res = hpcgen("resume", str(run.root), env=env)
    assert res.returncode == 0 and "nothing to resume" in res.stderr, res.stderr


def flock_enosys_shim(tmp_path: Path) -> Path:
    """A tiny LD_PRELOAD library whose flock() fails with ENOSYS, as on Lustre mounted without flock."""
    cc = shutil.which("cc") or shutil.which("gcc")
    need(cc is not None, "a C compiler (cc) for the flock shim")
    src = tmp_path / "noflock.c"
    src.write_text("#include <errno.h>\nint flock(int fd, int op) { (void)fd; (void)op; errno = ENOSYS; return -1; }\n")
    lib = tmp_path / "noflock.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True, capture_output=True)
    return lib


@pytest.mark.slurm
def test_lock_across_the_two_slurm_nodes_without_flock(cluster, tmp_path, small_dataset, fake_model):
    """A resume-like holder on node n1 and merges on node n2, every process with flock() = ENOSYS: n2 is
    refused naming n1's holder; once the holder is SIGKILLed, n2's merge takes the stale lock over."""
    from hpcgen.task.worker import run_shards

    shim = flock_enosys_shim(tmp_path)
    run = make_run(tmp_path, small_dataset, fake_model)
    run_shards(run.root, [0, 1, 2], engine_factory=FakeEngine)
    srun = ["srun", "-p", cluster.partition, "-N1", "-n1", "--cpus-per-task=1", "--mem=500",
            f"--export=ALL,LD_PRELOAD={shim}"]
    proc, release = holder(tmp_path, run.lock, "resume", prefix=[*srun, "-w", "n1"])
    pid = Lock(run.lock, "merge").holder().pid
    merge = [*srun, "-w", "n2", sys.executable, "-m", "hpcgen", "merge", str(run.root), "--output"]
    res = subprocess.run([*merge, str(tmp_path / "a.parquet")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 4, res.stderr
    assert f"is locked by resume (pid {pid} on " in res.stderr and "try again when it finishes" in res.stderr
    assert not (tmp_path / "a.parquet").exists()
    os.kill(pid, signal.SIGKILL)  # the holder dies without releasing: its lock is stale at once
    wait_until(lambda: proc.poll() is not None, 60, "the holder's step to end", poll=0.5)
    res = subprocess.run([*merge, str(tmp_path / "b.parquet")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(subprocess.run([sys.executable, "-c", "import pyarrow.parquet as pq,json,sys;"
                                      "print(json.dumps(pq.read_metadata(sys.argv[1]).num_rows))",
                                      str(tmp_path / "b.parquet")], capture_output=True, text=True).stdout) == 100
    assert not run.lock.exists()
