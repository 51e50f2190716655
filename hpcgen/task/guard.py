"""Process guard for tasks: nothing a task started outlives it.

Under ``proctrack/linuxproc`` (and with ``--executor local``) SLURM tracks a task's processes by parentage,
so when the task process dies by SIGKILL (OOM killer, ``kill -9``) the processes it started — vLLM's engine
core and its workers, Ray, vLLM's headless workers — are re-parented to init and keep running (and holding
memory) after the task is gone. A guard is a small process in its own session, started by the task
(:func:`spawn`): it runs an optional helper command, remembers the task's other descendants every half
second, and when the task dies kills them (and, for multi-node tasks, marks the node failed in its heartbeat
record). When the task ends normally it stops the guard (:func:`stop`), which kills the guard's session.
Linux only (reads ``/proc``); the guard imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

POLL_S = 0.5


def procs() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, session id) of every live (not zombie) process of this host."""
    out = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{name}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
            if fields[0] not in ("Z", "X"):
                out[int(name)] = (int(fields[1]), int(fields[3]))
    return out


def _no_tracker(pids: set[int]) -> set[int]:
    """Without multiprocessing's resource trackers: each unlinks the shared memory its users leaked (vLLM's
    message queues) and exits by itself once they are gone; killing it would leak /dev/shm segments."""
    keep = set()
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as fh:
            if b"resource_tracker" not in fh.read():
                keep.add(pid)
    return keep


def session(sid: int) -> set[int]:
    """The processes of session ``sid`` but this one, resource trackers aside."""
    return _no_tracker({p for p, (_, s) in procs().items() if s == sid and p != os.getpid()})


def tree(root: int, table: dict[int, tuple[int, int]] | None = None) -> set[int]:
    """``root``'s descendants (e.g. vLLM's engine and workers), resource trackers aside; ``table`` is a
    :func:`procs` scan the caller already made."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in (procs() if table is None else table).items():
        children.setdefault(ppid, []).append(pid)
    todo, found = [root], set[int]()
    while todo:
        kids = [k for k in children.get(todo.pop(), ()) if k not in found]
        found.update(kids)
        todo += kids
    return _no_tracker(found)


def kill(pids_of: Callable[[], set[int]], grace: float) -> None:
    """SIGTERM whatever ``pids_of()`` lists, SIGKILL what is left after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 3.0)):
        for pid in pids_of():
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and pids_of():
            time.sleep(0.1)


def _mark_failed(record: Path, parent: int) -> None:
    from hpcgen.rundir import atomic

    with contextlib.suppress(OSError, ValueError):
        rec = atomic.read_json(record)
        if rec.get("state") not in ("done", "exited", "failed"):
            atomic.write_json(record, {**rec, "state": "failed", "beat": rec.get("beat", 0) + 1,
                                       "error": f"its task process (pid {parent}) died"})


def supervise(parent: int, record: Path | None, cmd: list[str]) -> int:
    """The guard's main loop (``python -m hpcgen.task.guard PID RECORD|- [-- CMD...]``), run as a session leader:
    runs ``cmd`` if given and keeps the list of the parent's other descendants. When ``cmd`` ends or SIGTERM
    comes, kills its own session; when the parent dies, also kills the orphans and marks ``record`` failed."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if cmd:  # Ray's raylet aborts when stopped after its GCS: no 160 MB core file in the user's directory
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    child, mine, orphans = subprocess.Popen(cmd) if cmd else None, os.getsid(0), set[int]()
    try:
        while (child is None or child.poll() is None) and os.getppid() == parent:
            table = procs()  # one /proc scan per round
            orphans = {p for p in tree(parent, table) if table[p][1] != mine}
            time.sleep(POLL_S)
        if os.getppid() != parent:
            if record is not None:
                _mark_failed(record, parent)
            kill(lambda: orphans & set(procs()), 3.0)
        return child.returncode if child is not None and child.returncode is not None else 1
    finally:
        kill(lambda: session(mine), 3.0)


def spawn(log_path: Path | None, cmd: list[str] | None = None, record: Path | None = None) -> subprocess.Popen:
    """Start a guard for this process (running ``cmd`` if given) in a new session, output to ``log_path``
    (or to this process's own stdout/stderr)."""
    with open(log_path, "ab") if log_path else contextlib.nullcontext() as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "hpcgen.task.guard", str(os.getpid()), str(record) if record else "-",
             *(["--", *cmd] if cmd else [])],
            stdout=fh, stderr=subprocess.STDOUT if fh else None, stdin=subprocess.DEVNULL,
            start_new_session=True)


def stop(guard: subprocess.Popen | None) -> None:
    """End a guard and everything in its session (its helper command)."""
    if guard is not None:
        kill(lambda: session(guard.pid), 3.0)
        with contextlib.suppress(subprocess.TimeoutExpired):
            guard.wait(5)


@contextlib.contextmanager
def guarded() -> Iterator[None]:
    """Run the block with a guard: if this process is SIGKILLed, what it started dies with it."""
    if not Path("/proc/self/stat").exists():  # not Linux: nothing to read, nothing to guard
        yield
        return
    guard = spawn(None)
    try:
        yield
    finally:
        stop(guard)


def _main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: python -m hpcgen.task.guard PID RECORD|- [-- CMD...]", file=sys.stderr)
        return 2
    cmd = argv[argv.index("--") + 1:] if "--" in argv else []
    return supervise(int(argv[0]), None if argv[1] == "-" else Path(argv[1]), cmd)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
