"""Multi-node tasks (``trainer.nnodes > 1``): every node of the SLURM job runs :func:`run_multinode`; node 0
(the head, first of ``SLURM_JOB_NODELIST``) processes the shards, the others lend their GPUs to its engine.

Rendezvous through the run directory, one folder per job attempt: ``RUN_DIR/multinode/<job>/node-<rank>.json``
is each node's heartbeat (node, pid, state, error, a beat counter; staleness is judged on the reader's clock).
The head publishes its address and a free port; the others wait for it (bounded), and the head for them.

- ``mp``: the head builds the engine with vLLM's ``nnodes/node_rank/master_addr/master_port``; the others run
  vLLM's headless workers (what ``vllm serve --headless`` runs) once the head starts its engine.
- ``ray``: ``ray start --head --block`` on the head, ``ray start --address --block`` elsewhere; the head waits
  until every node's raylet is alive, then builds the engine with the Ray executor.

Helpers run under a guard (:mod:`hpcgen.task.guard`) in their own session, which kills the whole session when the
task ends or dies (even by SIGKILL: proctrack/linuxproc loses orphans) and then marks the node failed. The head
has a guard of its own for its in-process vLLM engine. A watchdog on the head fails the task, naming the node,
when another node fails or stops beating; the others leave when the head is done, failed or silent.
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

from hpcgen.rundir import atomic
from hpcgen.rundir.layout import RunLayout
from hpcgen.task import guard

log = logging.getLogger("hpcgen.task.multinode")
BEAT_S = 2.0
ENDED = ("finishing", "done", "failed")  # head states after which helpers may stop


class NodeFailure(RuntimeError):
    """Another node of this multi-node task failed, vanished or never joined."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


# --- rendezvous ----------------------------------------------------------------------------------------


class Rendezvous:
    """This node's heartbeat file (rewritten every BEAT_S by a thread) and the view of the other nodes'."""

    def __init__(self, run_dir: Path, job: str, rank: int, hostnames: list[str]) -> None:
        self.dir = RunLayout(Path(run_dir)).multinode(job)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run_dir, self.job, self.rank, self.hostnames = Path(run_dir), job, rank, hostnames
        self.record: dict[str, Any] = {"rank": rank, "node": hostnames[rank], "pid": os.getpid(),
                                       "state": "starting", "error": None, "beat": 0}
        self.stale_s = float(os.environ.get("HPCGEN_MULTINODE_STALE_S", 20))
        self.helper: subprocess.Popen | None = None  # this node's supervised ray / vLLM workers
        self.guard: subprocess.Popen | None = None  # the head's: kills its vLLM processes if it dies
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._seen: dict[int, tuple[Any, float]] = {}
        self._t0 = time.monotonic()
        self.publish()
        threading.Thread(target=self._beat, daemon=True, name="hpcgen-heartbeat").start()

    def name(self, rank: int) -> str:
        return f"node {self.hostnames[rank]} (rank {rank})"

    def path(self, rank: int, suffix: str = "json") -> Path:
        return self.dir / f"node-{rank}.{suffix}"

    def publish(self, **fields: Any) -> None:
        with self._lock:
            self.record.update(fields, beat=self.record["beat"] + 1, time=time.time())
            atomic.write_json(self.path(self.rank), self.record)

    def _beat(self) -> None:
        while not self._stop.wait(BEAT_S):
            with contextlib.suppress(OSError):
                self.publish()

    def close(self) -> None:
        self._stop.set()

    def spawn(self, cmd: list[str], what: str) -> subprocess.Popen:
        """``cmd`` under a guard in a new session, output to ``node-<rank>.<what>.log``."""
        return guard.spawn(self.path(self.rank, f"{what}.log"), cmd, record=self.path(self.rank))

    def tail(self, what: str, n: int = 3) -> str:
        with contextlib.suppress(OSError):
            text = self.path(self.rank, f"{what}.log").read_text(errors="replace")
            return " | ".join(x.strip()[:200] for x in text.splitlines() if x.strip())[-600:]
        return ""

    def peer(self, rank: int) -> tuple[dict[str, Any], bool]:
        """(its last record, {} if none; stale?): stale when its beat has not moved for ``stale_s`` here."""
        try:
            rec = atomic.read_json(self.path(rank))
        except (OSError, ValueError):
            rec = {}
        now = time.monotonic()
        if rec and self._seen.get(rank, (None,))[0] != rec.get("beat"):
            self._seen[rank] = (rec.get("beat"), now)
        return rec, now - self._seen.get(rank, (None, self._t0))[1] > self.stale_s

    def problem(self, ranks: list[int], *, joined: bool = True) -> str | None:
        """Why one of ``ranks`` is unusable (failed; once joined also: left or silent), else None."""
        for r in ranks:
            rec, stale = self.peer(r)
            if rec.get("state") == "failed":
                return f"{self.name(r)} failed: {rec.get('error')}"
            if joined and rec.get("state") in ("exited", "done"):
                return f"{self.name(r)} left the task before the head finished"
            if joined and stale:
                return f"{self.name(r)} stopped responding (no heartbeat for {self.stale_s:.0f} s)"
        return None

    def explain(self, ranks: list[int]) -> str | None:
        """After the head's engine failed: was a peer the cause? Waits until a peer shows a problem (a dead
        node goes stale) or every peer beat twice more (all alive: the failure is the head's own)."""
        start = {r: self.peer(r)[0].get("beat", 0) for r in ranks}
        deadline = time.monotonic() + self.stale_s + 2 * BEAT_S
        while time.monotonic() < deadline:
            if (reason := self.problem(ranks)) is not None:
                return reason
            if all(self.peer(r)[0].get("beat", 0) >= start[r] + 2 for r in ranks):
                return None
            time.sleep(0.5)
        return self.problem(ranks)

    def record_failure(self, shard_ids: list[int], error: str) -> None:
        """Make ``status`` show ``error`` for this attempt of every shard the task did not finish."""
        layout = RunLayout(self.run_dir)
        for shard in (s for s in shard_ids if not layout.done(s).exists()):
            path = layout.attempt(shard, self.job)
            with contextlib.suppress(OSError, ValueError):
                rec = atomic.read_json(path) if path.exists() else {
                    "shard": shard, "job_id": self.job, "host": socket.gethostname(), "pid": os.getpid()}
                if rec.get("error") != error:
                    rec.update(error=error, cause=rec.get("error"), ended=time.time())
                    atomic.write_json(path, rec)


class _Watchdog:
    """While the head works: on a peer problem, raise NodeFailure in the main thread through SIGALRM, which
    also interrupts a blocking wait on the engine's output queue."""

    def __init__(self, rdv: Rendezvous, ranks: list[int]) -> None:
        self.rdv, self.ranks, self._raised = rdv, ranks, False
        self.reason: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="hpcgen-watchdog")

    def _handler(self, signum: int, frame: Any) -> None:
        if self.reason and not self._raised:
            self._raised = True
            raise NodeFailure(self.reason)

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            if (reason := self.rdv.problem(self.ranks)) is not None:
                self.reason = reason
                log.error("aborting: %s", reason)
                os.kill(os.getpid(), signal.SIGALRM)
                return

    def __enter__(self) -> _Watchdog:
        self._old = signal.signal(signal.SIGALRM, self._handler)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(3)  # a late SIGALRM must never meet the default action (ending the process)
        keep = self._old not in (signal.SIG_DFL, None)
        signal.signal(signal.SIGALRM, self._old if keep else signal.SIG_IGN)


# --- vLLM and Ray ---------------------------------------------------------------------------------------


def mp_engine_kwargs(spec: Any, model_path: str, node_rank: int, addr: str, port: int) -> dict[str, Any]:
    """The head's ``vllm.LLM`` kwargs and the headless workers' ``EngineArgs``: equal but for node_rank."""
    from vllm.platforms import current_platform

    from hpcgen.task.engine import cpu_build_adjustments, engine_kwargs

    kwargs = engine_kwargs(spec, model_path)
    if current_platform.is_cpu():
        kwargs = cpu_build_adjustments(kwargs)
    kwargs.update(distributed_executor_backend="mp", nnodes=spec.trainer.nnodes, node_rank=node_rank,
                  master_addr=addr, master_port=port)
    return kwargs


def _headless(run_dir: str, rank: int, addr: str, port: int) -> None:
    """A non-head node's vLLM workers, as ``vllm serve --headless`` runs them; returns if a worker dies."""
    from vllm import EngineArgs
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.executor.multiproc_executor import MultiprocExecutor

    from hpcgen.rundir.manifest import load_manifest, spec_from_manifest

    spec = spec_from_manifest(load_manifest(Path(run_dir)))
    for key, value in spec.task_env().items():
        os.environ.setdefault(key, value)
    args = EngineArgs(**mp_engine_kwargs(spec, spec.model.path, rank, addr, port))
    config = args.create_engine_config(usage_context=UsageContext.LLM_CLASS, headless=True)
    MultiprocExecutor(config, monitor_workers=False).start_worker_monitor(inline=True)


def _ray_tmp(job: str, rank: int) -> Path:  # per job and node: sockets, ray_current_cluster never collide
    return Path(tempfile.gettempdir()) / f"hpcgen-ray-{re.sub(r'[^A-Za-z0-9_]', '_', job)}-{rank}"


def _ray_cmd(rank: int, job: str, addr: str, port: int, extra: list[str]) -> list[str]:
    exe = Path(sys.executable).with_name("ray")
    cpus = os.environ.get("SLURM_CPUS_ON_NODE") or os.environ.get("SLURM_CPUS_PER_TASK") or os.cpu_count()
    cmd = [str(exe) if exe.exists() else "ray", "start", "--block", "--disable-usage-stats",
           f"--temp-dir={_ray_tmp(job, rank)}", f"--num-cpus={cpus}",
           f'--resources={{"hpcgen_node_{rank}": 1}}',  # names the node in ray.nodes()
           f"--dashboard-agent-listen-port={_free_port()}", *extra]  # fixed defaults collide on shared nodes
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if gpus and gpus != "NoDevFiles":
        cmd.append(f"--num-gpus={len(gpus.split(','))}")
    if rank:
        return [*cmd, f"--address={addr}:{port}"]
    return [*cmd, "--head", f"--port={port}", "--include-dashboard=false", f"--dashboard-port={_free_port()}",
            f"--ray-client-server-port={_free_port()}"]


def _ray_join(rdv: Rendezvous, addr: str, port: int, helper: subprocess.Popen, timeout: float) -> None:
    """Connect this process to Ray and wait until every node's raylet is alive (else name the missing)."""
    import ray

    nnodes = len(rdv.hostnames)
    deadline, missing = time.monotonic() + timeout, list(range(nnodes))
    while missing:
        if helper.poll() is not None:
            raise RuntimeError(f"ray head exited with code {helper.returncode}: {rdv.tail('ray')}")
        if (bad := rdv.problem(list(range(1, nnodes)), joined=False)) is not None:
            raise NodeFailure(bad)
        if time.monotonic() > deadline:
            names = ", ".join(rdv.name(r) for r in missing)
            raise NodeFailure(f"{names} did not join the Ray cluster within {timeout:.0f} s")
        if not ray.is_initialized():
            with contextlib.suppress(OSError), socket.create_connection((addr, port), timeout=1):
                ray.init(address=f"{addr}:{port}", logging_level=logging.WARNING, log_to_driver=False)
        if ray.is_initialized():
            alive = {k for n in ray.nodes() if n.get("Alive") for k in n.get("Resources", {})}
            missing = [r for r in range(nnodes) if f"hpcgen_node_{r}" not in alive]
        time.sleep(0 if not missing else 1)


# --- the two roles ---------------------------------------------------------------------------------------


def _head(rdv: Rendezvous, backend: str, work: Callable[..., dict[str, Any]], engine: Callable[..., Any],
          shard_ids: list[int], ray_args: list[str], join_s: float) -> dict[str, Any]:
    addr, port, peers, built = rdv.hostnames[0], _free_port(), list(range(1, len(rdv.hostnames))), []
    rdv.publish(backend=backend, addr=addr, port=port)
    rdv.guard = rdv.spawn([], "guard")
    if backend == "ray":
        rdv.helper = rdv.spawn(_ray_cmd(0, rdv.job, addr, port, ray_args), "ray")
        _ray_join(rdv, addr, port, rdv.helper, join_s)
        os.environ["RAY_ADDRESS"] = f"{addr}:{port}"
    deadline = time.monotonic() + join_s
    while missing := [r for r in peers if rdv.peer(r)[0].get("state") != "ready"]:
        if (bad := rdv.problem(peers, joined=False)) is not None:
            raise NodeFailure(bad)
        if time.monotonic() > deadline:
            raise NodeFailure(f"{', '.join(rdv.name(r) for r in missing)} did not join within {join_s:.0f} s")
        time.sleep(0.5)

    def factory(spec: Any, model_path: str) -> Any:
        rdv.publish(engine=True)  # the mp nodes start their workers now
        built.append(engine(spec, model_path, addr, port))
        return built[-1]

    rdv.publish(state="running")
    with _Watchdog(rdv, peers) as dog:
        try:
            result = work(engine_factory=factory)
        except BaseException as exc:  # a peer's death surfaces in vLLM or as srun's SIGTERM: name the node
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            reason = dog.reason or rdv.explain(peers)
            for _ in range(6 if reason is None and type(exc).__name__ == "Terminated" else 0):
                time.sleep(0.5)  # srun --kill-on-bad-exit signals us as soon as the peer's task is gone
                reason = dog.reason or rdv.explain(peers)
            if reason:
                rdv.record_failure(shard_ids, f"NodeFailure: {reason}")
                raise NodeFailure(reason) from exc
            raise
    rdv.publish(state="finishing")
    for eng in built:
        with contextlib.suppress(Exception):
            eng.shutdown()
    return {**result, "nodes": rdv.hostnames, "backend": backend}


def _worker(rdv: Rendezvous, backend: str, join_s: float, ray_args: list[str]) -> dict[str, Any]:
    deadline = time.monotonic() + join_s
    while not (head := rdv.peer(0)[0]).get("port"):
        if time.monotonic() > deadline:
            raise NodeFailure(f"head {rdv.name(0)} did not publish its address within {join_s:.0f} s")
        time.sleep(0.5)
    addr, port, what = head["addr"], int(head["port"]), "ray" if backend == "ray" else "vllm"
    if backend == "ray":
        rdv.helper = rdv.spawn(_ray_cmd(rdv.rank, rdv.job, addr, port, ray_args), what)
    rdv.publish(state="ready")
    while True:
        head, stale = rdv.peer(0)
        if head.get("state") in ("done", "failed"):
            return {"node": rdv.rank, "host": rdv.hostnames[rdv.rank], "head": head["state"]}
        if stale:
            raise NodeFailure(f"head {rdv.name(0)} stopped responding (no heartbeat for {rdv.stale_s:.0f} s)")
        if backend == "mp" and rdv.helper is None and head.get("engine"):
            rdv.helper = rdv.spawn([sys.executable, "-m", "hpcgen.task.multinode", "headless", str(rdv.run_dir),
                                    str(rdv.rank), addr, str(port)], what)
        code = rdv.helper.poll() if rdv.helper is not None else None
        if code is not None and rdv.peer(0)[0].get("state") not in ENDED:
            kind = "ray" if backend == "ray" else "vLLM headless workers"
            raise NodeFailure(f"{kind} on {rdv.name(rdv.rank)} exited with code {code}: "
                              f"{rdv.tail(what)}")
        time.sleep(0.5)


def _run(run_dir: Path, nnodes: int, backend: str, work: Callable[..., dict[str, Any]],
         engine: Callable[..., Any], shard_ids: list[int], ray_args: list[str]) -> dict[str, Any]:
    import submitit

    from hpcgen.task.identity import job_id

    env = submitit.JobEnvironment()
    if env.num_nodes != nnodes or env.num_tasks != nnodes:
        raise RuntimeError(f"trainer.nnodes={nnodes} needs one task on each of {nnodes} nodes, but this task "
                           f"has {env.num_tasks} task(s) on {env.num_nodes} node(s): use the slurm executor")
    rdv = Rendezvous(run_dir, job_id(), env.global_rank, list(env.hostnames))
    join_s = float(os.environ.get("HPCGEN_MULTINODE_JOIN_TIMEOUT_S", 300))
    log.info("multi-node task %s: %s, backend %s", rdv.job, rdv.name(rdv.rank), backend)
    try:
        if rdv.rank:
            result = _worker(rdv, backend, join_s, ray_args)
            rdv.publish(state="exited")
        else:
            result = _head(rdv, backend, work, engine, shard_ids, ray_args, join_s)
            rdv.publish(state="done")
        return result
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        if rdv.rank == 0 and isinstance(exc, Exception) and (
                isinstance(exc, NodeFailure) or rdv.record["state"] == "starting"):  # else run_shards recorded it
            rdv.record_failure(shard_ids, error)
        with contextlib.suppress(OSError):
            rdv.publish(state="failed", error=error)
        raise
    finally:
        rdv.close()
        if "ray" in sys.modules:
            with contextlib.suppress(Exception):
                sys.modules["ray"].shutdown()
        guard.stop(rdv.helper)
        guard.kill(lambda: guard.tree(os.getpid()) - guard.session(rdv.guard.pid if rdv.guard else -1), 5.0)
        guard.stop(rdv.guard)
        if backend == "ray" and rdv.record["state"] != "failed":  # Ray's logs are kept when something failed
            shutil.rmtree(_ray_tmp(rdv.job, rdv.rank), ignore_errors=True)


def run_multinode(run_dir: Path, shard_ids: list[int], spec: Any, run_head: Callable[..., dict[str, Any]]
                  ) -> dict[str, Any]:
    """Runs on every node of the task; the head calls ``run_head(engine_factory=...)`` once all joined."""
    from hpcgen.task.engine import Engine

    for key, value in spec.task_env().items():
        os.environ.setdefault(key, value)
    backend = spec.rollout.distributed_backend

    def engine(s: Any, model_path: str, addr: str, port: int) -> Any:
        if backend == "ray":  # engine_kwargs already selects the Ray executor; RAY_ADDRESS points at the head
            return Engine(s, model_path)
        from vllm import LLM

        kwargs = mp_engine_kwargs(s, model_path, 0, addr, port)
        log.info("building multi-node vLLM engine: %s", kwargs)
        return Engine(s, model_path, llm=LLM(**kwargs))

    return _run(Path(run_dir), spec.trainer.nnodes, backend, run_head, engine, shard_ids, [])


def ray_bootstrap_check(run_dir: str, nnodes: int, ray_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """Forms the Ray cluster exactly as a ray-backend task does and runs one Ray task on each node; the head
    returns what ran where. For tests, and to check a site before a long run (submit it as a 2-node job)."""

    def work(engine_factory: Any = None) -> dict[str, Any]:
        import ray

        @ray.remote(num_cpus=0)
        def where() -> dict[str, Any]:
            return {"host": socket.gethostname(), "slurm_node": os.environ.get("SLURMD_NODENAME"),
                    "node_id": ray.get_runtime_context().get_node_id()}

        refs = [where.options(resources={f"hpcgen_node_{r}": 0.01}).remote() for r in range(nnodes)]
        tasks = ray.get(refs, timeout=120)
        return {"alive_nodes": sum(1 for n in ray.nodes() if n.get("Alive")), "tasks": tasks}

    return _run(Path(run_dir), nnodes, "ray", work, lambda *a: None, [], list(ray_args))


def _main(argv: list[str]) -> int:
    if argv[:1] == ["headless"]:
        logging.basicConfig(level=logging.INFO)
        _headless(argv[1], int(argv[2]), argv[3], int(argv[4]))
        return 0
    print("usage: python -m hpcgen.task.multinode headless RUN_DIR RANK ADDR PORT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
