"""The in-task loop: one engine load for the task's shards; for each shard skip saved rows, keep the engine
fed, save finished rows every K rows / T seconds to an atomic part file, write the done marker last.

Runs inside a SLURM task (or submitit's local executor). Holds at most one shard's prompts in memory.
"""

from __future__ import annotations

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
from hpcgen.rundir.fingerprint import changed_inputs
from hpcgen.rundir.layout import RunLayout, part_tag
from hpcgen.rundir.manifest import load_manifest, spec_from_manifest
from hpcgen.rundir.parts import PART_SCHEMA, PartWriter, done_marker_ok, usable_parts, write_done
from hpcgen.rundir.progress import TaskProgress, task_gpus
from hpcgen.spec.schema import JobSpec
from hpcgen.task.identity import job_id, restart_count
from hpcgen.task.prompts import read_prompts

log = logging.getLogger("hpcgen.task.worker")



def error_row(row_id: int, message: str) -> dict[str, Any]:
    return {"row_id": row_id, "responses": [], "finish_reasons": [], "response_tokens": [],
            "prompt_tokens": None, "prompt_truncated": False, "gen_error": message}


# --- the loop --------------------------------------------------------------------------------------


def generate_shard(engine: Any, prompts: Iterator[tuple[int, Any]], writer: PartWriter, window: int) -> None:
    """Feed the engine continuously (up to ``window`` rows in flight), collect finished rows, save often."""
    from hpcgen.task.engine import PromptError

    inflight: dict[int, bool] = {}
    exhausted = False
    # Fault tests only (set through the job's env): a pause after each engine step, so that a kill, requeue or
    # time limit lands mid-shard however fast the machine generates. Unset in real runs.
    pace = float(os.environ.get("HPCGEN_TEST_STEP_DELAY_S") or 0)
    writer.last_flush = time.monotonic()
    while True:
        while not exhausted and len(inflight) < window:
            item = next(prompts, None)
            if item is None:
                exhausted = True
                break
            row_id, value = item
            try:
                ids, truncated = engine.encode(value)
                engine.add(row_id, ids)
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
        if pace:
            time.sleep(pace)
    writer.flush()


class ShardTask(submitit.helpers.Checkpointable):
    """What each array task runs: ``ShardTask()(run_dir, shard_ids)``. Requeue-aware through submitit."""

    def __init__(self) -> None:
        self._writer: PartWriter | None = None
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


def run_shards(run_dir: Path, shard_ids: list[int], *, task: ShardTask | None = None,
               engine_factory: Callable[[JobSpec, str], Any] | None = None) -> dict[str, Any]:
    _save_on_sigterm(task)
    layout = RunLayout(run_dir)
    manifest = load_manifest(run_dir)
    spec = spec_from_manifest(manifest)
    for key, value in spec.task_env().items():
        os.environ.setdefault(key, value)
    pa.Table.from_pylist([], schema=PART_SCHEMA)  # pays pyarrow's lazy imports now, not mid-generation
    jid = job_id()
    restarts = restart_count()
    if restarts > spec.slurm.max_requeues:  # requeued by SLURM itself (preemption) too often
        reason = f"requeued {restarts} times, over slurm.max_requeues={spec.slurm.max_requeues}; 'hpcgen resume' continues"
        for shard in shard_ids:
            atomic.write_json(layout.attempt(shard, jid), {"shard": shard, "job_id": jid, "error": reason,
                                                            "started": time.time(), "ended": time.time()})
        raise RuntimeError(reason)
    unfinished = [s for s in shard_ids if not done_marker_ok(layout, s, manifest["shards"][s][1] - manifest["shards"][s][0])]
    problem = inputs_problem(manifest, spec) if unfinished else None
    if problem:  # never put answers of another model or prompt next to the plan's
        for shard in unfinished:
            atomic.write_json(layout.attempt(shard, jid), {"shard": shard, "job_id": jid, "error": problem,
                                                            "started": time.time(), "ended": time.time()})
        raise RunDirError(problem)
    progress = TaskProgress(layout, jid, task_gpus(spec))  # counters for status, saved at each part flush
    progress.save()
    engine = None
    perf = {"engine_start_s": 0.0, "gen_s": 0.0, "rows": 0}
    summary: dict[str, Any] = {"job_id": jid, "shards": {}}
    for shard in shard_ids:
        start, end = manifest["shards"][shard]
        if done_marker_ok(layout, shard, end - start):
            summary["shards"][shard] = "already done"
            continue
        attempt = layout.attempt(shard, jid)
        record = {"shard": shard, "job_id": jid, "host": socket.gethostname(), "pid": os.getpid(),
                  "started": time.time(), "error": None}
        atomic.write_json(attempt, record)
        try:
            listed = layout.list_parts().get(shard, [])
            old = usable_parts(layout, listed, (start, end), spec.data.n_samples)
            saved = old.ids
            next_seq = max((p.seq for p in listed), default=-1) + 1
            writer = PartWriter(layout, shard, next_seq, spec.checkpoint.every_rows, spec.checkpoint.every_seconds,
                                tag=part_tag(jid), progress=progress)
            if task is not None:
                task._writer = writer
            todo = ((r, v) for r, v in read_prompts(manifest, shard) if r not in saved)
            if len(saved) < end - start:
                if engine is None:
                    from hpcgen.task.engine import Engine

                    t0 = time.monotonic()
                    engine = (engine_factory or Engine)(spec, spec.model.path)
                    perf["engine_start_s"] = time.monotonic() - t0
                t0 = time.monotonic()
                generate_shard(engine, todo, writer, window=max(8, 2 * spec.rollout.max_num_seqs))
                perf["gen_s"] += time.monotonic() - t0
                perf["rows"] += end - start - len(saved)
            write_done(layout, shard, old.parts + writer.parts, writer.errors + old.errors, jid)
            summary["shards"][shard] = {"rows": end - start, "generated": end - start - len(saved)}
        except BaseException as exc:
            if task is not None and task.stop_reason:
                record["error"] = task.stop_reason
            elif isinstance(exc, SystemExit):  # submitit leaves this way after requeueing the task
                record["error"] = f"task exited ({exc.code}): time-limit warning or preemption; requeued if allowed"
            else:
                record["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            record["traceback"] = traceback.format_exc(limit=20)
            record["ended"] = time.time()
            atomic.write_json(attempt, record)
            progress.finish(str(record["error"]))
            raise
        finally:
            if task is not None:
                task._writer = None
        record["ended"] = time.time()
        atomic.write_json(attempt, record)
    progress.finish()
    if perf["rows"] and perf["gen_s"] > 0 and engine_factory is None:
        from hpcgen.rundir.measurements import record_measurement

        record_measurement(spec, perf["engine_start_s"], perf["rows"] / perf["gen_s"])
    summary["perf"] = perf
    return summary

