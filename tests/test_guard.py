"""hpcgen.task.guard without SLURM: what a SIGKILLed task started does not outlive it; a normal end stops the guard."""

from __future__ import annotations

import subprocess
import sys
import time

from helpers import REPO, wait_guard_scanned

from hpcgen.task import guard

TASK = """
import subprocess, sys, time
from hpcgen.task import guard
with guard.guarded():
    engine = subprocess.Popen(["sleep", "{secs}"])  # stands for vLLM's engine core process
    print(engine.pid, flush=True)
    time.sleep({hold})
"""


def _alive(pid: int) -> bool:
    return pid in guard.procs()


def _task(secs: int, hold: float) -> tuple[subprocess.Popen, int]:
    task = subprocess.Popen([sys.executable, "-c", TASK.format(secs=secs, hold=hold)], stdout=subprocess.PIPE,
                            text=True, cwd=REPO)
    return task, int(task.stdout.readline())


def _guards(task: subprocess.Popen, engine: int) -> list[int]:
    """The task's guard (spawned before the engine, so it is there once the engine's pid is printed)."""
    guards = [p for p in guard.tree(task.pid) if p != engine]
    assert len(guards) == 1, guards
    return guards


def test_sigkilled_task_leaves_nothing_behind():
    task, engine = _task(311, 300)
    guards = _guards(task, engine)
    wait_guard_scanned(guards[0])  # the guard has seen the engine
    assert _alive(engine)
    task.kill()
    task.wait()
    deadline = time.monotonic() + 10
    while (_alive(engine) or _alive(guards[0])) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(engine), "the orphaned engine survived its task"
    assert not _alive(guards[0]), "the guard outlived its task"


def test_normal_end_stops_the_guard_and_leaves_the_task_s_children_alone():
    task, engine = _task(312, 2)
    guards = _guards(task, engine)  # never empty: 'not any(...)' below cannot pass vacuously
    assert task.wait(30) == 0
    assert not any(_alive(p) for p in guards)
    # the engine was not the guard's to kill on a normal end (its owner shuts it down)
    assert _alive(engine)
    subprocess.run(["kill", str(engine)], check=False)


def test_usage_error():
    res = subprocess.run([sys.executable, "-m", "hpcgen.task.guard"], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 2 and "usage" in res.stderr


def test_helpers_leave_no_core_files(tmp_path):
    """A helper run under a guard (Ray, vLLM's headless workers) dumps no core into the working directory."""
    out = tmp_path / "out.log"
    g = guard.spawn(out, ["sh", "-c", "ulimit -c"])
    assert g.wait(30) == 0
    assert out.read_text().strip() == "0"
