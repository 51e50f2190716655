"""The in-task loop: one engine load per task; chunks claimed one at a time (own shards first, then, with
``sharding.steal``, other shards' tails) and fed to the engine continuously; finished rows saved every K rows /
T seconds as atomic parts; a chunk's marker once its rows are saved; the task exits as soon as no work is left.

Runs inside a SLURM task (or submitit's local executor). Holds the prompts of the chunks in flight only.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import submitit

from hpcgen import __version__
from hpcgen.errors import RunDirError
from hpcgen.rundir import atomic
from hpcgen.rundir.blocks import shard_n
from hpcgen.rundir.fingerprint import changed_inputs
from hpcgen.rundir.layout import RunLayout, part_tag
from hpcgen.rundir.leases import BEAT_S, mark_dead
from hpcgen.rundir.manifest import load_manifest, spec_from_manifest
from hpcgen.rundir.parts import PART_SCHEMA, done_marker_ok, usable_parts
from hpcgen.rundir.progress import TaskProgress, task_gpus
from hpcgen.spec.schema import JobSpec
from hpcgen.task.identity import job_id, restart_count
from hpcgen.task.pacing import Pacing
from hpcgen.task.prompts import PromptReader, Row
from hpcgen.task.saver import ChunkSaver
from hpcgen.task.work import Claim, WorkQueue

log = logging.getLogger("hpcgen.task.worker")



def error_row(row_id: int, message: str) -> dict[str, Any]:
    return {"row_id": row_id, "responses": [], "finish_reasons": [], "response_tokens": [],
            "prompt_tokens": None, "prompt_truncated": False, "gen_error": message}


# --- the loop --------------------------------------------------------------------------------------


def generate_rows(engine: Any, prompts: Iterator[Row], writer: Any, window: int) -> None:
    """Feed the engine continuously (up to ``window`` rows in flight), collect finished rows, save often."""
    from hpcgen.task.engine import PromptError

    inflight: dict[int, bool] = {}
    exhausted = False
    pacing = Pacing.from_env()
    writer.last_flush = time.monotonic()
    while True:
        while not exhausted and len(inflight) < window:
            item = next(prompts, None)
            if item is None:
                exhausted = True
                break
            row_id = item.row_id
            try:
                ids, truncated = engine.encode(item.value, item.chat)
                engine.add(row_id, ids, item.sampling)
                inflight[row_id] = truncated
            except PromptError as exc:
                writer.add(error_row(row_id, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
        if not inflight:
            break
        for f in engine.step():
            writer.add({"row_id": f.row_id, "responses": f.texts, "finish_reasons": f.finish_reasons,
                        "response_tokens": f.response_tokens, "prompt_tokens": f.prompt_tokens,
                        "prompt_truncated": inflight.pop(f.row_id, False), "gen_error": None})
        writer.maybe_flush()
        if pacing:
            pacing.after_step(inflight)
    writer.flush()


class ShardTask(submitit.helpers.Checkpointable):
    """What each array task runs: ``ShardTask()(run_dir, shard_ids)``. Requeue-aware through submitit."""

    def __init__(self) -> None:
        self._writer: Any = None
        self.stop_reason: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def __call__(self, run_dir: str, shard_ids: list[int],
                 engine_factory: Callable[[JobSpec, str], Any] | None = None) -> dict[str, Any]:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
        spec = spec_from_manifest(load_manifest(Path(run_dir)))
        if spec.multi_node:  # every node of the job runs this; the head processes the shards
            from hpcgen.task.multinode import run_multinode

            result = run_multinode(Path(run_dir), shard_ids, spec, functools.partial(
                run_shards, Path(run_dir), shard_ids, task=self))
        else:
            from hpcgen.task import guard

            with guard.guarded():  # a SIGKILLed task leaves no vLLM engine behind, whatever the proctrack plugin
                result = run_shards(Path(run_dir), shard_ids, task=self, engine_factory=engine_factory)
        _ignore_late_warning()
        return result

    def checkpoint(self, run_dir: str, shard_ids: list[int], *args: Any) -> Any:
        """On SLURM's warning signal: save finished rows, then requeue (bounded by slurm.max_requeues)."""
        if self._writer is not None:
            self._writer.flush()
        spec = spec_from_manifest(load_manifest(Path(run_dir)))
        restarts = restart_count()
        if restarts >= spec.slurm.max_requeues:
            self.stop_reason = (f"not requeued: {restarts} requeues already (slurm.max_requeues="
                                f"{spec.slurm.max_requeues}); finished rows were saved, 'hpcgen resume' continues")
            log.error(self.stop_reason)
            return None
        return submitit.helpers.DelayedSubmission(ShardTask(), run_dir, shard_ids)


def _ignore_late_warning() -> None:
    """The work is done: a time-limit warning (USR2) that lands while the process exits (vLLM's shutdown can
    take seconds) must not make submitit requeue a finished task."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)


class Terminated(BaseException):
    """SIGTERM (scancel, preemption, ``scontrol requeue``): finished rows were saved before leaving."""


def _save_on_sigterm(task: ShardTask | None) -> None:
    """Replace submitit's SIGTERM bypass: save finished rows, then leave (SLURM sends SIGKILL soon after)."""
    if task is None or threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: Any) -> None:
        if task._writer is not None:
            task._writer.flush()
        raise Terminated("received SIGTERM (cancelled, preempted or requeued); finished rows were saved")

    signal.signal(signal.SIGTERM, handler)


def inputs_problem(manifest: dict[str, Any], spec: JobSpec) -> str | None:
    """Why this task must not generate for the plan: the dataset or model changed, or this task's hpcgen
    derives other generation settings from the plan than the login node did (another version)."""
    problem = changed_inputs(manifest)
    if problem:
        return f"{problem}; answers generated now would not match the plan: start a new run"
    now = json.loads(json.dumps(spec.generation_settings()))
    if manifest.get("generation") is not None and now != manifest["generation"]:
        diff = sorted(k for k in set(now) | set(manifest["generation"]) if now.get(k) != manifest["generation"].get(k))
        return (f"this task's hpcgen {__version__} derives other generation settings than the plan's "
                f"(hpcgen {manifest.get('hpcgen_version', '?')}): {', '.join(diff)} differ; use the same hpcgen")
    return None


def _feed(queue: WorkQueue, claim: Claim | None, saver: ChunkSaver, reader: PromptReader, layout: RunLayout,
          manifest: dict[str, Any]) -> Iterator[Row]:
    """Rows of one claimed chunk after another (of any dataset and seed), claiming the next only when the engine
    has room for it; rows an earlier holder saved (and that verify) are skipped."""
    while claim is not None:
        listed = layout.scan(claim.shard).parts.get(claim.chunk, [])
        saved = usable_parts(layout, listed, (claim.start, claim.end), shard_n(manifest, claim.shard))
        saver.open_chunk(claim, saved, max((p.seq for p in listed), default=-1) + 1)
        for row in reader.rows(claim.shard, claim.chunk, claim.start, claim.end):
            if row.row_id not in saved.ids:
                saver.expect(row.row_id, claim)
                yield row
        claim = queue.next()


def _attempt_error(exc: BaseException, task: ShardTask | None) -> str:
    if task is not None and task.stop_reason:
        return task.stop_reason
    if isinstance(exc, SystemExit):  # submitit leaves this way after requeueing the task
        return f"task exited ({exc.code}): time-limit warning or preemption; requeued if allowed"
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def run_shards(run_dir: Path, shard_ids: list[int], *, task: ShardTask | None = None,
               engine_factory: Callable[[JobSpec, str], Any] | None = None, job: str | None = None) -> dict[str, Any]:
    """One task: its own shards ``shard_ids`` (possibly none: a task added by ``scale``), then others' work.
    ``job`` names the task instead of SLURM's job id (tests and the stealing simulation run many in one process)."""
    _save_on_sigterm(task)
    layout = RunLayout(run_dir)
    manifest = load_manifest(run_dir)
    spec = spec_from_manifest(manifest)
    for key, value in spec.env.items():
        os.environ.setdefault(key, value)
    pa.Table.from_pylist([], schema=PART_SCHEMA)  # pays pyarrow's lazy imports now, not mid-generation
    jid = job or job_id()
    tag = part_tag(jid)
    own = [s for s in shard_ids if not done_marker_ok(layout, s, manifest["shards"][s][1] - manifest["shards"][s][0])]
    started = time.time()

    def attempts(**fields: Any) -> None:
        for shard in own:
            atomic.write_json(layout.attempt(shard, jid), {"shard": shard, "job_id": jid, "task": tag,
                                                           "host": socket.gethostname(), "pid": os.getpid(),
                                                           "started": started, **fields})

    # the task record first: whoever sees an attempt record finds this task in status (killed the next moment)
    progress = TaskProgress(layout, jid, task_gpus(spec), own)  # status figures and this task's heartbeat
    progress.save()
    restarts = restart_count()
    if restarts > spec.slurm.max_requeues:  # requeued by SLURM itself (preemption) too often
        reason = f"requeued {restarts} times, over slurm.max_requeues={spec.slurm.max_requeues}; 'hpcgen resume' continues"
        attempts(error=reason, ended=time.time())
        progress.finish(reason)
        raise RuntimeError(reason)
    problem = inputs_problem(manifest, spec)
    if problem:  # never put answers of another model or prompt next to the plan's
        attempts(error=problem, ended=time.time())
        progress.finish(problem)
        raise RunDirError(problem)
    attempts(error=None)
    progress.start_beat(BEAT_S)
    for earlier in range(restarts):  # SLURM restarted this job: its earlier runs are gone, free their chunks
        mark_dead(layout, f"{jid.rsplit('.r', 1)[0]}.r{earlier}", "its job was requeued")
    queue = WorkQueue(layout, manifest, jid, own, steal=spec.sharding.steal, timeout_s=spec.sharding.lease_timeout_s)
    saver = ChunkSaver(layout, manifest, queue, progress, tag, spec.checkpoint.every_rows,
                       spec.checkpoint.every_seconds)
    perf = {"engine_start_s": 0.0, "gen_s": 0.0, "rows": 0}
    engine = None
    try:
        if task is not None:
            task._writer = saver
        claim = queue.next() or queue.after_suspects()
        if claim is not None:  # a task that starts when no work is left never loads an engine
            from hpcgen.task.engine import Engine

            t0 = time.monotonic()
            engine = (engine_factory or Engine)(spec, spec.model.path)
            perf["engine_start_s"] = time.monotonic() - t0
            progress.engine_started(perf["engine_start_s"])
            t0 = time.monotonic()
            reader = PromptReader(manifest)
            while claim is not None:  # the engine stays loaded while chunks held by silent holders come free
                generate_rows(engine, _feed(queue, claim, saver, reader, layout, manifest), saver, spec.feed_window)
                claim = queue.after_suspects()
            perf["gen_s"] = time.monotonic() - t0
            perf["rows"] = progress.record["rows"]
    except BaseException as exc:
        with contextlib.suppress(Exception):
            saver.flush()
        error = _attempt_error(exc, task)
        progress.finish(error)
        attempts(error=error, ended=time.time(), traceback=traceback.format_exc(limit=20))
        raise
    finally:
        if task is not None:
            task._writer = None
    progress.finish(None, lost_rows=saver.lost_rows)
    attempts(error=None, ended=time.time())
    if perf["rows"] and perf["gen_s"] > 0 and engine_factory is None:
        from hpcgen.rundir.measurements import record_measurement

        record_measurement(spec, perf["engine_start_s"], perf["rows"] / perf["gen_s"])
    done = layout.list_done()
    rec = progress.record
    return {"job_id": jid, "task": tag, "own": {s: "done" if s in done else "not done" for s in shard_ids},
            "chunks": rec["chunks"], "stolen_chunks": rec["stolen_chunks"],
            "rows": {k: v["rows"] for k, v in rec["shards"].items()}, "engine": engine is not None, "perf": perf}
