"""The run's life cycle on the login node: submit, resume, cancel, wait. Glue between plan, launch and state;
no printing (the CLI does that), no torch, no vllm.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcgen.errors import RunDirError, SchedulerError, ShardFailedError, UserError
from hpcgen.login.datasets import changed_files
from hpcgen.login.launch import (
    Submission,
    annotate_submission,
    cancel_jobs,
    check_script_path,
    dry_run_text,
    local_plan_text,
    require_slurm,
    submit_groups,
)
from hpcgen.login.merge import compact_ranges
from hpcgen.login.plan import Plan, create_run_dir, make_plan, task_groups
from hpcgen.login.state import PENDING, RUNNING, RunState, collect, latest_jobs, sacct_states
from hpcgen.rundir import atomic
from hpcgen.rundir.fingerprint import changed_inputs
from hpcgen.rundir.layout import RunLayout
from hpcgen.rundir.leases import mark_dead
from hpcgen.rundir.lock import Lock, process_alive
from hpcgen.rundir.manifest import load_manifest, spec_from_manifest
from hpcgen.rundir.parts import invalidate_bad_done
from hpcgen.rundir.progress import read_records
from hpcgen.spec.loader import describe_sources, load_job_traced
from hpcgen.spec.site import load_site, site_path


@dataclass
class SubmitResult:
    plan: Plan
    layout: RunLayout
    submission: Submission | None
    dry_run: str | None = None
    notes: list[str] = field(default_factory=list)  # for stderr: checks that could not run, staging


def default_run_dir(job_file: Path) -> Path:
    return Path.cwd() / "runs" / f"{job_file.stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def submit(job_file: Path, overrides: list[str], *, run_dir: Path | None = None, executor: str = "slurm",
           dry_run: bool = False) -> SubmitResult:
    site_file, how = site_path()
    spec, sources = load_job_traced(job_file, overrides, site=load_site(site_file) if site_file else None)
    plan = make_plan(spec, job_file=str(job_file.resolve()), overrides=overrides, download=not dry_run)
    layout = RunLayout(run_dir or default_run_dir(job_file))
    check_script_path(layout.root, "--run-dir")  # it is written into the sbatch script
    notes = list(plan.notes)
    if executor == "slurm":  # the request against the partition's nodes, before sbatch refuses it unexplained
        from hpcgen.login.partition import check_before_queueing

        if note := check_before_queueing(plan.spec, dry_run=dry_run):
            notes.append(note)
    if dry_run:
        settings = [f"# site file: {site_file} ({how})" if site_file else f"# site file: {how}",
                    "# settings (presets < site file < job file < command line; built-in defaults not listed):",
                    *describe_sources(sources)]
        text = (local_plan_text(plan.spec, plan.tasks) if executor == "local"
                else dry_run_text(layout, plan.spec, len(plan.tasks)))
        return SubmitResult(plan, layout, None, "\n".join(settings) + "\n" + text, notes)
    if executor == "slurm":
        require_slurm()
    layout = create_run_dir(layout.root, plan.manifest, unique=run_dir is None)
    sub = submit_groups(layout, plan.spec, plan.tasks, executor=executor, kind="submit",
                        extra={"rows_done_at_submit": 0})
    attach_chain(layout, plan.spec, sub)
    return SubmitResult(plan, layout, sub, notes=notes)


def submit_sweep(job_file: Path, sweeps: list[str], overrides: list[str], *, multirun: bool = False,
                 run_dir: Path | None = None, executor: str = "slurm", dry_run: bool = False) -> Any:
    """A sweep (``--sweep KEY=A,B`` / ``-m``): every run planned first, then each created and queued."""
    from hpcgen.login.sweep import submit_sweep as plan_and_submit

    if executor == "slurm" and not dry_run:
        require_slurm()

    def submit_one(layout: RunLayout, plan: Plan) -> Submission:
        sub = submit_groups(layout, plan.spec, plan.tasks, executor=executor, kind="submit",
                            extra={"rows_done_at_submit": 0})
        attach_chain(layout, plan.spec, sub)
        return sub

    res = plan_and_submit(job_file, sweeps, overrides, multirun=multirun, root=run_dir or default_run_dir(job_file),
                          executor=executor, dry_run=dry_run, submit_one=submit_one)
    if res.dry_run is not None and res.plans:
        first = res.plans[0]
        text = (local_plan_text(first.spec, first.tasks) if executor == "local"
                else dry_run_text(RunLayout(res.root / res.runs[0].name), first.spec, len(first.tasks)))
        res.dry_run += f"\n# the first run's script ({res.runs[0].name}); the others differ only in their folder\n" + text
    return res


def attach_chain(layout: RunLayout, spec: Any, sub: Submission, previous: str | None = None,
                 still_running: list[str] | None = None) -> None:
    """``score.after_merge``: queue merge+score after this submission's arrays and after every earlier job
    that may still write to the run (replacing an older step)."""
    if not spec.score.after_merge or sub.executor != "slurm":
        return
    from hpcgen.login.chain import submit_chain

    if previous:
        cancel_jobs([previous], "slurm")
    annotate_submission(layout, sub.seq, chain_job=submit_chain(layout, spec, sub.arrays, still_running))


def open_jobs(state: RunState) -> list[str]:
    """Jobs that may still write to the run: the latest jobs of shards that are pending or running, and the
    tasks without a shard of their own that are."""
    return sorted({s.job_id for s in state.shards if s.state in ("pending", "running") and s.job_id} | {
        j for j, st in state.extra_tasks.items() if st in ("pending", "running")})


def check_unchanged(manifest: dict[str, Any]) -> None:
    """Resume refuses when a dataset file or the model changed since the plan, and says what changed."""
    for entry in manifest["datasets"]:
        problem = changed_files(entry)
        if problem:
            raise RunDirError(f"cannot resume: {problem}")
    problem = changed_inputs(manifest)
    if problem:
        raise RunDirError(f"cannot resume: {problem}; its answers would mix with the earlier ones: start a new run")


def _bury_dead_tasks(layout: RunLayout, executor: str | None) -> list[str]:
    """Task records that still say running although the scheduler says their job is over (kill -9, a lost
    node): mark them dead, so that the chunks they held are taken over at once, not after the lease timeout."""
    running = {}
    for rec in read_records(layout):
        if rec.get("state", "running") == "running" and not rec.get("ended"):
            running[str(rec["job_id"])] = str(rec["job_id"]).rsplit(".r", 1)[0]
    if not running:
        return []
    if executor == "slurm":
        states = sacct_states(sorted(set(running.values()))) or {}
        gone = [t for t, j in running.items() if j in states and states[j] not in RUNNING | PENDING]
    else:
        gone = [t for t, j in running.items() if not j.isdigit() or not process_alive(int(j), None)]
    for job in gone:
        mark_dead(layout, job, "the scheduler says its job is over")
    return gone


def _spread(shards: list[int], tasks: int) -> list[list[int]]:
    """``tasks`` groups of contiguous shards (empty groups when there are more tasks than shards)."""
    return [shards[i * len(shards) // tasks:(i + 1) * len(shards) // tasks] for i in range(tasks)]


def resume(run_dir: Path, *, executor: str | None = None, tasks: int | None = None
           ) -> tuple[Submission | None, RunState, list[int]]:
    """Resubmit what is not done: one task per open shard (``shards_per_task`` per task), or ``tasks`` tasks that
    share whatever is left (they steal from each other; with more tasks than open shards, some start without
    a shard of their own)."""
    layout = RunLayout(run_dir)
    manifest = load_manifest(run_dir)
    with Lock(layout.lock, "resume"):
        check_unchanged(manifest)
        bad = invalidate_bad_done(layout, manifest)
        _bury_dead_tasks(layout, latest_jobs(layout)[2])
        state = collect(run_dir, manifest)
        if not state.scheduler_answered:  # a shard that may still run would be generated twice
            raise SchedulerError(f"cannot resume {run_dir}: neither sacct nor squeue answered, so whether its "
                                 "jobs still run is unknown; try again when SLURM answers")
        todo = state.shards_in("failed", "cancelled", "unknown") + [
            s.id for s in state.shards if s.state == "pending" and s.job_id is None]
        todo += [s for s in bad if s not in todo]
        if not todo:
            return None, state, bad
        spec = spec_from_manifest(manifest)
        _, _, last_exec = latest_jobs(layout)
        order = sorted(todo)
        if tasks is not None:
            if tasks < 1:
                raise UserError("--tasks must be at least 1")
            if not spec.sharding.steal and tasks != len(order):
                raise UserError(f"--tasks {tasks}: this run has sharding.steal=false, so its tasks cannot share "
                                f"shards; resume without --tasks ({len(order)} open shard(s))")
            groups = _spread(order, tasks)
        else:
            groups = [[order[i] for i in g] for g in task_groups(len(order), spec.sharding.shards_per_task)]
        busy = open_jobs(state)  # older tasks still queued or running: they share the cap and may still write
        busy_arrays = sorted({j.split("_")[0] for j in busy})
        sub = submit_groups(layout, spec, groups, executor=executor or last_exec or "slurm", kind="resume",
                            extra={"rows_done_at_submit": state.rows_done}, busy=len(busy), busy_arrays=busy_arrays)
        attach_chain(layout, spec, sub, previous=state.chain.get("job_id") if state.chain else None,
                     still_running=busy_arrays)  # ended tasks already count as satisfied
        return sub, state, bad


def scale(run_dir: Path, add: int) -> tuple[Submission, RunState]:
    """Add ``add`` tasks to a running run: they start without a shard of their own and take over the
    remaining chunks of others (``sharding.steal`` must be on)."""
    layout = RunLayout(run_dir)
    manifest = load_manifest(run_dir)
    spec = spec_from_manifest(manifest)
    if add < 1:
        raise UserError("scale: give the number of tasks to add, e.g. 'hpcgen scale RUN +4'")
    if not spec.sharding.steal:
        raise UserError("scale: this run has sharding.steal=false: added tasks could not take any work")
    _, _, last_exec = latest_jobs(layout)
    _bury_dead_tasks(layout, last_exec)  # their chunks are free for the new tasks at once
    state = collect(run_dir, manifest)
    if state.complete:
        raise UserError(f"scale: run {layout.root} is already complete")
    busy = open_jobs(state)
    sub = submit_groups(layout, spec, [[] for _ in range(add)], executor=last_exec or "slurm", kind="scale",
                        extra={"rows_done_at_submit": state.rows_done}, busy=len(busy),
                        busy_arrays=sorted({j.split("_")[0] for j in busy}))
    attach_chain(layout, spec, sub, previous=state.chain.get("job_id") if state.chain else None,
                 still_running=sorted({j.split("_")[0] for j in busy}))
    return sub, state


def cancel(run_dir: Path) -> int:
    """Cancel every job of the run: every array (or local process) of every submission and the merge+score
    steps; finished ones are left alone by SLURM. Local processes are signalled only while their pid still
    belongs to the process that was started."""
    from hpcgen.login.state import local_starts

    load_manifest(run_dir)
    layout = RunLayout(run_dir)
    jobs: list[str] = []
    executor = "slurm"
    for path in layout.list_submissions():
        try:
            sub = atomic.read_json(path)
        except (OSError, ValueError):
            continue
        executor = sub.get("executor", executor)
        jobs += sub.get("arrays") or sorted(set(sub.get("jobs", {}).values()))
        if sub.get("chain_job"):
            jobs.append(sub["chain_job"])
    jobs = list(dict.fromkeys(jobs))
    return cancel_jobs(jobs, executor, local_starts(layout) if executor == "local" else None)


def wait(run_dir: Path, *, poll_seconds: float = 5.0, on_poll: Callable[[RunState], None] | None = None,
         timeout: float | None = None, unreachable_for: float = 600.0) -> RunState:
    """Block until no shard is pending or running; raise ShardFailedError if any ended failed, cancelled or
    unknown (no source knows its job). SLURM not answering at all is waited out for ``unreachable_for`` s."""
    manifest = load_manifest(run_dir)
    t0 = time.monotonic()
    silent_since: float | None = None
    while True:
        state = collect(run_dir, manifest)
        if on_poll:
            on_poll(state)
        if state.scheduler_answered:
            silent_since = None
        else:
            silent_since = silent_since or time.monotonic()
            if time.monotonic() - silent_since > unreachable_for:
                raise SchedulerError(f"neither sacct nor squeue answered for {unreachable_for:.0f}s; "
                                     f"'hpcgen status {state.run_dir}' tells when SLURM is back")
        if state.scheduler_answered and not state.shards_in("pending", "running"):
            break
        if timeout is not None and time.monotonic() - t0 > timeout:
            break
        time.sleep(poll_seconds)
    bad = state.shards_in("failed", "cancelled", "unknown")
    if bad:
        first = next(s for s in state.shards if s.id == bad[0])
        what = (f"{first.reason}" if first.state == "unknown"
                else f"{first.last_error or 'no error recorded'} (log {first.log})")
        raise ShardFailedError(
            f"{len(bad)} shard(s) failed, were cancelled or are unknown to SLURM ({compact_ranges(bad)}); first: "
            f"shard {first.id} {first.state}: {what}; 'hpcgen resume {state.run_dir}' continues them")
    return state
