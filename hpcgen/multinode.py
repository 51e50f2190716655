"""Multi-node tasks (``trainer.nnodes > 1``): every node of the SLURM job runs :func:`run_multinode`; node 0 (the
head, first of ``SLURM_JOB_NODELIST``) processes the shards, the others lend their GPUs to its engine.

Rendezvous through the run directory, one folder per job attempt: ``RUN_DIR/multinode/<job>/node-<rank>.json``
is each node's heartbeat (host, pid, state, error, a beat counter; staleness is judged on the reader's clock).
The head publishes the address and a free port it picked; the others wait for it (bounded).

- ``mp``: the head builds the engine with vLLM's ``nnodes/node_rank/master_addr/master_port``; the others run
  vLLM's headless workers (what ``vllm serve --headless`` runs) once the head starts its engine.
- ``ray``: ``ray start --head --block`` on the head, ``ray start --address --block`` elsewhere; the head waits
  until every node joined Ray, then builds the engine with the Ray executor.

Helpers run under a supervisor in their own session that kills the whole session when the task dies (even by
SIGKILL), so nothing outlives the task. A watchdog on the head fails the task, naming the node, when another
node reports a failure or stops beating; the other nodes leave when the head is done, failed or gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("hpcgen.multinode")
BEAT_S = 2.0


def _env_s(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


class NodeFailure(RuntimeError):
    """Another node of this multi-node task failed, vanished or never joined."""


# --- processes -------------------------------------------------------------------------------------


def _procs() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, session id) of every live (not zombie) process on this host."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{name}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                if fields[0] not in ("Z", "X"):
                    out[int(name)] = (int(fields[1]), int(fields[3]))
    return out


def _descendants(root: int) -> set[int]:
    procs, found, todo = _procs(), set(), [root]
    while todo:
        parent = todo.pop()
        kids = [p for p, (pp, _) in procs.items() if pp == parent and p not in found]
        found.update(kids)
        todo += kids
    return found


def _kill(pids_of: Callable[[], set[int]], grace: float) -> None:
    """SIGTERM whatever ``pids_of()`` lists, SIGKILL what is left after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 3.0)):
        for pid in pids_of():
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and pids_of():
            time.sleep(0.1)


def _session(sid: int) -> set[int]:
    return {p for p, (_, s) in _procs().items() if s == sid and p != os.getpid()}


def _spawn(cmd: list[str], logfile: Path, record: Path) -> subprocess.Popen:
    """Run ``cmd`` under a supervisor in a new session; the session dies with this process, and the supervisor
    then marks this node failed in ``record`` (its heartbeat file) so that the head knows at once."""
    with open(logfile, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "hpcgen.multinode", "supervise", str(os.getpid()), str(record),
                                 "--", *cmd],
                                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def _leftovers() -> set[int]:
    """This process's remaining descendants (vLLM engine/workers), except multiprocessing's resource tracker,
    which unlinks leaked shared memory once this process exits."""
    out = set()
    for pid in _descendants(os.getpid()):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as fh:
            if b"resource_tracker" not in fh.read():
                out.add(pid)
    return out


def _stop(helper: subprocess.Popen | None, grace: float = 3.0) -> None:
    if helper is not None:
        _kill(lambda: _session(helper.pid), grace)
        with contextlib.suppress(subprocess.TimeoutExpired):
            helper.wait(5)


def _supervise(parent: int, record: Path, cmd: list[str]) -> int:
    """Session leader: runs ``cmd``; when the parent dies, ``cmd`` ends or SIGTERM comes, kills the session."""
    from hpcgen import atomic

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    child = subprocess.Popen(cmd)
    try:
        while child.poll() is None and os.getppid() == parent:
            time.sleep(0.5)
        if os.getppid() != parent:
            with contextlib.suppress(OSError, ValueError):
                rec = atomic.read_json(record)
                if rec.get("state") not in ("done", "exited", "failed"):
                    atomic.write_json(record, {**rec, "state": "failed", "beat": rec.get("beat", 0) + 1,
                                               "error": f"its task process (pid {parent}) died"})
        return child.returncode if child.returncode is not None else 1
    finally:
        _kill(lambda: _session(os.getsid(0)), 3.0)


def _tail(path: Path, n: int = 3) -> str:
    with contextlib.suppress(OSError):
        lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
        return " | ".join(x.strip()[:200] for x in lines[-n:])
    return ""


# --- rendezvous ------------------------------------------------------------------------------------


class Rendezvous:
    """This node's heartbeat file, written every BEAT_S by a thread, and the view of the other nodes'."""

    def __init__(self, run_dir: Path, job: str, rank: int, hostnames: list[str]) -> None:
        self.dir = Path(run_dir) / "multinode" / re.sub(r"[^A-Za-z0-9_.-]", "_", job)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.job, self.rank, self.hostnames = job, rank, hostnames
        self.record: dict[str, Any] = {"rank": rank, "node": hostnames[rank], "pid": os.getpid(),
                                       "state": "starting", "error": None, "beat": 0}
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._seen: dict[int, tuple[int, float]] = {}
        self._t0 = time.monotonic()
        self.stale_s = _env_s("HPCGEN_MULTINODE_STALE_S", 20)
        self.publish()
        threading.Thread(target=self._beat, daemon=True, name="hpcgen-heartbeat").start()

    def name(self, rank: int) -> str:
        return f"node {self.hostnames[rank]} (rank {rank})"

    def path(self, rank: int, suffix: str = "json") -> Path:
        return self.dir / f"node-{rank}.{suffix}"

    def publish(self, **fields: Any) -> None:
        from hpcgen import atomic

        with self._lock:
            self.record.update(fields, beat=self.record["beat"] + 1, time=time.time())
            atomic.write_json(self.path(self.rank), self.record)

    def _beat(self) -> None:
        while not self._stop.wait(BEAT_S):
            with contextlib.suppress(OSError):
                self.publish()

    def close(self) -> None:
        self._stop.set()

    def peer(self, rank: int) -> tuple[dict[str, Any] | None, bool]:
        """(its last record or None, stale?): stale when its beat has not moved for ``stale_s`` here."""
        from hpcgen import atomic

        try:
            rec = atomic.read_json(self.path(rank))
        except (OSError, ValueError):
            rec = None
        now = time.monotonic()
        if rec is not None and self._seen.get(rank, (None,))[0] != rec.get("beat"):
            self._seen[rank] = (rec.get("beat"), now)
        return rec, now - self._seen.get(rank, (None, self._t0))[1] > self.stale_s

    def problem(self, ranks: list[int], *, joined: bool = True) -> str | None:
        """Why one of ``ranks`` is not usable (failed, left, silent), or None."""
        for r in ranks:
            rec, stale = self.peer(r)
            state = (rec or {}).get("state")
            if state == "failed":
                return f"{self.name(r)} failed: {rec.get('error')}"  # type: ignore[union-attr]
            if joined and state in ("exited", "done"):
                return f"{self.name(r)} left the task before the head finished"
            if joined and stale:
                return f"{self.name(r)} stopped responding (no heartbeat for {self.stale_s:.0f} s)"
        return None


    def explain(self, ranks: list[int]) -> str | None:
        """After the head's engine failed: was a peer the cause? Waits until a peer shows a problem (a dead node
        goes stale) or every peer has beaten twice more (alive: the failure is the head's own)."""
        start = {r: (self.peer(r)[0] or {}).get("beat", 0) for r in ranks}
        deadline = time.monotonic() + self.stale_s + 2 * BEAT_S
        while time.monotonic() < deadline:
            if (reason := self.problem(ranks)) is not None:
                return reason
            if all((self.peer(r)[0] or {}).get("beat", 0) >= start[r] + 2 for r in ranks):
                return None
            time.sleep(0.5)
        return self.problem(ranks)


class _Watchdog:
    """While the head generates: on a peer problem, raise NodeFailure in the main thread (via SIGALRM, which
    also interrupts a blocking wait on the engine)."""

    def __init__(self, rdv: Rendezvous, ranks: list[int]) -> None:
        self.rdv, self.ranks, self.reason = rdv, ranks, None
        self._stop, self._raised = threading.Event(), False

    def _handler(self, signum: int, frame: Any) -> None:
        if self.reason and not self._raised:
            self._raised = True
            raise NodeFailure(self.reason)

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            self.reason = self.rdv.problem(self.ranks)
            if self.reason:
                log.error("aborting: %s", self.reason)
                os.kill(os.getpid(), signal.SIGALRM)
                return

    def __enter__(self) -> _Watchdog:
        self._old = signal.signal(signal.SIGALRM, self._handler)
        self._thread = threading.Thread(target=self._loop, daemon=True, name="hpcgen-watchdog")
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(3)  # a late SIGALRM must never meet the default handler (which ends the process)
        signal.signal(signal.SIGALRM, self._old if self._old not in (signal.SIG_DFL, None) else signal.SIG_IGN)


# --- engines and helpers -----------------------------------------------------------------------------


def mp_engine_kwargs(spec: Any, model_path: str, node_rank: int, addr: str, port: int) -> dict[str, Any]:
    """The head's ``vllm.LLM`` kwargs and the headless workers' ``EngineArgs``: identical but for node_rank."""
    from vllm.platforms import current_platform

    from hpcgen.engine import cpu_build_adjustments, engine_kwargs

    kwargs = engine_kwargs(spec, model_path)
    if current_platform.is_cpu():
        kwargs = cpu_build_adjustments(kwargs)
    kwargs.update(distributed_executor_backend="mp", nnodes=spec.trainer.nnodes, node_rank=node_rank,
                  master_addr=addr, master_port=port)
    return kwargs


def _headless(run_dir: str, rank: int, addr: str, port: int) -> None:
    """A non-head node's vLLM workers, as ``vllm serve --headless`` runs them; returns when a worker dies."""
    from vllm import EngineArgs
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.executor.multiproc_executor import MultiprocExecutor

    from hpcgen.plan import load_manifest, spec_from_manifest

    spec = spec_from_manifest(load_manifest(Path(run_dir)))
    for key, value in spec.env.items():
        os.environ.setdefault(key, value)
    kwargs = mp_engine_kwargs(spec, spec.model.path, rank, addr, port)
    config = EngineArgs(**kwargs).create_engine_config(usage_context=UsageContext.LLM_CLASS, headless=True)
    MultiprocExecutor(config, monitor_workers=False).start_worker_monitor(inline=True)


def _ray_tmp(job: str, rank: int) -> Path:  # per node and job: sockets and ray_current_cluster never collide
    return Path(tempfile.gettempdir()) / f"hpcgen-ray-{re.sub(r'[^A-Za-z0-9_]', '_', job)}-{rank}"


def _ray_cmd(rank: int, job: str, addr: str, port: int, num_cpus: int, extra: list[str]) -> list[str]:
    exe, tmp = Path(sys.executable).with_name("ray"), _ray_tmp(job, rank)
    cmd = [str(exe) if exe.exists() else "ray", "start", "--block", "--disable-usage-stats", f"--temp-dir={tmp}",
           f"--num-cpus={num_cpus}", f'--resources={{"hpcgen_node_{rank}": 1}}',
           f"--dashboard-agent-listen-port={_free_port()}", *extra]  # fixed defaults collide on shared nodes
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if visible and visible != "NoDevFiles":
        cmd.append(f"--num-gpus={len(visible.split(','))}")
    if rank == 0:
        return [*cmd, "--head", f"--port={port}", "--include-dashboard=false", f"--dashboard-port={_free_port()}",
                f"--ray-client-server-port={_free_port()}"]
    return [*cmd, f"--address={addr}:{port}"]


def _ray_wait_joined(rdv: Rendezvous, nnodes: int, addr: str, port: int, helper: subprocess.Popen,
                     timeout: float) -> None:
    """Connect this process to Ray and wait until every node's raylet is alive (or name the missing ones)."""
    import ray

    deadline, missing = time.monotonic() + timeout, list(range(nnodes))
    while True:
        if helper.poll() is not None:
            raise RuntimeError(f"ray head exited with code {helper.returncode}: {_tail(rdv.path(0, 'ray.log'))}")
        if (bad := rdv.problem(list(range(1, nnodes)), joined=False)) is not None:
            raise NodeFailure(bad)
        if not ray.is_initialized():
            with contextlib.suppress(OSError), socket.create_connection((addr, port), timeout=1):
                ray.init(address=f"{addr}:{port}", logging_level="WARNING", log_to_driver=False)
        if ray.is_initialized():
            alive = {k for n in ray.nodes() if n.get("Alive") for k in n.get("Resources", {})}
            missing = [r for r in range(nnodes) if f"hpcgen_node_{r}" not in alive]
            if not missing:
                return
        if time.monotonic() > deadline:
            raise NodeFailure(f"{', '.join(rdv.name(r) for r in missing)} did not join the Ray cluster within "
                              f"{timeout:.0f} s")
        time.sleep(1)


# --- the two roles -------------------------------------------------------------------------------------


def _context(nnodes: int) -> tuple[int, list[str], str]:
    """(rank, hostnames, job id) of this task, from SLURM through submitit."""
    import submitit

    from hpcgen.worker import job_id

    env = submitit.JobEnvironment()
    if env.num_nodes != nnodes or env.num_tasks != nnodes:
        raise RuntimeError(f"trainer.nnodes={nnodes} needs one task on each of {nnodes} nodes, but this task "
                           f"has {env.num_tasks} task(s) on {env.num_nodes} node(s): use the slurm executor")
    return env.global_rank, list(env.hostnames), job_id()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _record_failure(run_dir: Path, shard_ids: list[int], job: str, error: str) -> None:
    """Make ``status`` show ``error`` for this attempt of every shard the task did not finish."""
    from hpcgen import atomic
    from hpcgen.layout import RunLayout

    layout = RunLayout(run_dir)
    for shard in shard_ids:
        if layout.done(shard).exists():
            continue
        path = layout.attempt(shard, job)
        with contextlib.suppress(OSError, ValueError):
            rec = atomic.read_json(path) if path.exists() else {
                "shard": shard, "job_id": job, "host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
            if rec.get("error") != error:
                atomic.write_json(path, {**rec, "error": error, "cause": rec.get("error"), "ended": time.time()})


def _run(run_dir: Path, nnodes: int, backend: str, head_work: Callable[..., dict[str, Any]],
         engine: Callable[..., Any] | None, shard_ids: list[int], num_cpus: int, ray_args: list[str]) -> dict:
    rank, hostnames, job = _context(nnodes)
    rdv = Rendezvous(run_dir, job, rank, hostnames)
    join_s = _env_s("HPCGEN_MULTINODE_JOIN_TIMEOUT_S", 300)
    helper, built = None, []
    log.info("multi-node task %s: %s, backend %s", job, rdv.name(rank), backend)
    try:
        if rank == 0:
            addr, port = hostnames[0], _free_port()
            rdv.publish(state="starting", backend=backend, addr=addr, port=port)
            peers = list(range(1, nnodes))
            if backend == "ray":
                helper = _spawn(_ray_cmd(0, job, addr, port, num_cpus, ray_args), rdv.path(0, "ray.log"), rdv.path(0))
                _ray_wait_joined(rdv, nnodes, addr, port, helper, join_s)
                os.environ["RAY_ADDRESS"] = f"{addr}:{port}"
            else:
                deadline = time.monotonic() + join_s
                while (missing := [r for r in peers if (rdv.peer(r)[0] or {}).get("state") != "ready"]):
                    if (bad := rdv.problem(peers, joined=False)) is not None:
                        raise NodeFailure(bad)
                    if time.monotonic() > deadline:
                        raise NodeFailure(f"{', '.join(rdv.name(r) for r in missing)} did not join within {join_s:.0f} s")
                    time.sleep(0.5)

            def factory(spec: Any, model_path: str) -> Any:
                rdv.publish(engine=True)  # the mp workers start now
                built.append(engine(spec, model_path, addr, port) if engine else None)
                return built[-1]

            rdv.publish(state="running")
            with _Watchdog(rdv, peers) as dog:
                try:
                    result = head_work(engine_factory=factory)
                except BaseException as exc:
                    reason = dog.reason or rdv.explain(peers)
                    if reason:
                        _record_failure(run_dir, shard_ids, job, f"NodeFailure: {reason}")
                        raise NodeFailure(reason) from exc
                    raise
            rdv.publish(state="finishing")  # from here on, helpers may stop: that is no failure
            for eng in built:
                with contextlib.suppress(Exception):
                    eng.shutdown()
            rdv.publish(state="done")
            return {**result, "nodes": hostnames, "backend": backend}
        # other nodes: wait for the head's address, join, leave when the head is done, failed or gone
        deadline = time.monotonic() + join_s
        while not (head := rdv.peer(0)[0] or {}).get("port"):
            if time.monotonic() > deadline:
                raise NodeFailure(f"head {rdv.name(0)} did not publish its address within {join_s:.0f} s")
            time.sleep(0.5)
        addr, port = head["addr"], int(head["port"])
        if backend == "ray":
            helper = _spawn(_ray_cmd(rank, job, addr, port, num_cpus, ray_args), rdv.path(rank, "ray.log"), rdv.path(rank))
        rdv.publish(state="ready")
        while True:
            head, stale = rdv.peer(0)
            state = (head or {}).get("state")
            if state in ("done", "failed"):
                rdv.publish(state="exited")
                return {"node": rank, "host": hostnames[rank], "head": state}
            if stale:
                raise NodeFailure(f"head {rdv.name(0)} stopped responding (no heartbeat for {rdv.stale_s:.0f} s)")
            if backend == "mp" and helper is None and (head or {}).get("engine"):
                helper = _spawn([sys.executable, "-m", "hpcgen.multinode", "headless", str(run_dir), str(rank),
                                 addr, str(port)], rdv.path(rank, "vllm.log"), rdv.path(rank))
            if helper is not None and helper.poll() is not None:
                if (rdv.peer(0)[0] or {}).get("state") in ("finishing", "done", "failed"):
                    time.sleep(0.5)
                    continue
                what = "ray node" if backend == "ray" else "vLLM headless workers"
                raise NodeFailure(f"{what} on {rdv.name(rank)} exited with code {helper.returncode}: "
                                  f"{_tail(rdv.path(rank, 'ray.log' if backend == 'ray' else 'vllm.log'))}")
            time.sleep(0.5)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            rdv.publish(state="failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0][:500])
        if rank == 0 and isinstance(exc, NodeFailure):
            _record_failure(run_dir, shard_ids, job, f"NodeFailure: {exc}")
        raise
    finally:
        rdv.close()
        if backend == "ray" and "ray" in sys.modules:
            with contextlib.suppress(Exception):
                sys.modules["ray"].shutdown()
        _stop(helper)
        _kill(_leftovers, 5.0)
        if backend == "ray" and rdv.record["state"] in ("done", "exited"):  # logs kept when something failed
            shutil.rmtree(_ray_tmp(job, rank), ignore_errors=True)


def _cpus() -> int:
    return int(os.environ.get("SLURM_CPUS_ON_NODE") or os.environ.get("SLURM_CPUS_PER_TASK") or os.cpu_count() or 1)


def run_multinode(run_dir: Path, shard_ids: list[int], spec: Any, run_head: Callable[..., dict[str, Any]]) -> dict:
    """Run on every node of the task; the head calls ``run_head(engine_factory=...)`` once all nodes joined."""
    from hpcgen.engine import Engine

    for key, value in spec.env.items():
        os.environ.setdefault(key, value)
    backend = spec.rollout.distributed_backend

    def engine(s: Any, model_path: str, addr: str, port: int) -> Any:
        if backend == "ray":
            return Engine(s, model_path)  # engine_kwargs already picks the Ray executor; RAY_ADDRESS is set
        from vllm import LLM

        kwargs = mp_engine_kwargs(s, model_path, 0, addr, port)
        log.info("building multi-node vLLM engine: %s", kwargs)
        return Engine(s, model_path, llm=LLM(**kwargs))

    return _run(Path(run_dir), spec.trainer.nnodes, backend, run_head, engine, shard_ids, _cpus(), [])


def ray_bootstrap_check(run_dir: str, nnodes: int, ray_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """Form the Ray cluster exactly as a ray-backend task does and run one Ray task on each node; the head
    returns what ran where. For tests and to check a site before a long run (e.g. a 2-node submitit job)."""

    def work(engine_factory: Any = None) -> dict[str, Any]:
        import ray

        @ray.remote(num_cpus=0)
        def where() -> dict[str, Any]:
            return {"host": socket.gethostname(), "slurm_node": os.environ.get("SLURMD_NODENAME"),
                    "node_id": ray.get_runtime_context().get_node_id()}

        tasks = ray.get([where.options(resources={f"hpcgen_node_{r}": 0.01}).remote() for r in range(nnodes)],
                        timeout=120)
        return {"alive_nodes": sum(1 for n in ray.nodes() if n.get("Alive")), "tasks": tasks}

    return _run(Path(run_dir), nnodes, "ray", work, None, [], _cpus(), list(ray_args))


def _main(argv: list[str]) -> int:
    if argv[:1] == ["supervise"]:
        return _supervise(int(argv[1]), Path(argv[2]), argv[argv.index("--") + 1:])
    if argv[:1] == ["headless"]:
        logging.basicConfig(level=logging.INFO)
        _headless(argv[1], int(argv[2]), argv[3], int(argv[4]))
        return 0
    print("usage: python -m hpcgen.multinode supervise PID RECORD -- CMD... | headless RUN_DIR RANK ADDR PORT",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
