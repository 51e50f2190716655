"""The run's life cycle on the login node: submit, resume, cancel, wait. Glue between plan, launch and state;
no printing (the CLI does that), no torch, no vllm.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcgen.errors import RunDirError, ShardFailedError, UserError
from hpcgen.login.launch import Submission, annotate_submission, cancel_jobs, dry_run_text, submit_groups
from hpcgen.login.merge import compact_ranges
from hpcgen.login.plan import Plan, create_run_dir, inspect_dataset, make_plan, task_groups
from hpcgen.login.state import RunState, collect, latest_jobs
from hpcgen.rundir import atomic
from hpcgen.rundir.fingerprint import changed_inputs
from hpcgen.rundir.layout import RunLayout
from hpcgen.rundir.manifest import load_manifest, spec_from_manifest
from hpcgen.rundir.parts import invalidate_bad_done
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
    notes = list(plan.notes)
    if executor == "slurm":  # the request against the partition's nodes, before sbatch refuses it unexplained
        from hpcgen.login.partition import check_before_queueing

        if note := check_before_queueing(plan.spec, dry_run=dry_run):
            notes.append(note)
    if dry_run:
        settings = [f"# site file: {site_file} ({how})" if site_file else f"# site file: {how}",
                    "# settings (presets < site file < job file < command line; built-in defaults not listed):",
                    *describe_sources(sources)]
        return SubmitResult(plan, layout, None,
                            "\n".join(settings) + "\n" + dry_run_text(layout, plan.spec, len(plan.tasks)), notes)
    layout = create_run_dir(layout.root, plan.manifest)
    sub = submit_groups(layout, plan.spec, plan.tasks, executor=executor, kind="submit",
                        extra={"rows_done_at_submit": 0})
    attach_chain(layout, plan.spec, sub)
    return SubmitResult(plan, layout, sub, notes=notes)


def attach_chain(layout: RunLayout, spec: Any, sub: Submission, previous: str | None = None) -> None:
    """``score.after_merge``: queue merge+score after this submission's arrays (replacing an older step)."""
    if not spec.score.after_merge or sub.executor != "slurm":
        return
    from hpcgen.login.chain import submit_chain

    if previous:
        cancel_jobs([previous], "slurm")
    annotate_submission(layout, sub.seq, chain_job=submit_chain(layout, spec, sub.arrays))


def check_unchanged(manifest: dict[str, Any]) -> None:
    """Resume refuses when the dataset or the model changed since the plan, and says what changed."""
    ds = manifest["dataset"]
    try:
        now = inspect_dataset(Path(ds["path"]), manifest["job"]["data"]["prompt_key"])
    except UserError as exc:
        raise RunDirError(f"cannot resume: {exc}") from None
    if now.fingerprint != ds["fingerprint"] or now.rows != ds["rows"]:
        raise RunDirError(f"cannot resume: dataset {ds['path']} changed since the plan "
                          f"(rows {ds['rows']} -> {now.rows}, fingerprint differs)")
    problem = changed_inputs(manifest)
    if problem:
        raise RunDirError(f"cannot resume: {problem}; its answers would mix with the earlier ones: start a new run")


def resume(run_dir: Path, *, executor: str | None = None) -> tuple[Submission | None, RunState, list[int]]:
    layout = RunLayout(run_dir)
    manifest = load_manifest(run_dir)
    with atomic.exclusive_lock(layout.lock, "resume"):
        check_unchanged(manifest)
        bad = invalidate_bad_done(layout, manifest)
        state = collect(run_dir, manifest)
        todo = state.shards_in("failed", "cancelled") + [
            s.id for s in state.shards if s.state == "pending" and s.job_id is None]
        todo += [s for s in bad if s not in todo]
        if not todo:
            return None, state, bad
        spec = spec_from_manifest(manifest)
        _, _, last_exec = latest_jobs(layout)
        order = sorted(todo)
        groups = [[order[i] for i in g] for g in task_groups(len(order), spec.sharding.shards_per_task)]
        sub = submit_groups(layout, spec, groups, executor=executor or last_exec or "slurm", kind="resume",
                            extra={"rows_done_at_submit": state.rows_done})
        attach_chain(layout, spec, sub, previous=state.chain.get("job_id") if state.chain else None)
        return sub, state, bad


def cancel(run_dir: Path) -> int:
    manifest = load_manifest(run_dir)
    state = collect(run_dir, manifest, query_scheduler=False)
    open_jobs = sorted({s.job_id for s in state.shards if s.state != "done" and s.job_id})
    if state.chain and state.chain["state"] != "done":  # the merge+score step would never run anyway
        open_jobs.append(state.chain["job_id"])
    return cancel_jobs(open_jobs, state.executor or "slurm")


def wait(run_dir: Path, *, poll_seconds: float = 5.0, on_poll: Callable[[RunState], None] | None = None,
         timeout: float | None = None) -> RunState:
    """Block until no shard is pending or running; raise ShardFailedError if any ended failed/cancelled."""
    manifest = load_manifest(run_dir)
    t0 = time.monotonic()
    while True:
        state = collect(run_dir, manifest)
        if on_poll:
            on_poll(state)
        if not state.shards_in("pending", "running"):
            break
        if timeout is not None and time.monotonic() - t0 > timeout:
            break
        time.sleep(poll_seconds)
    bad = state.shards_in("failed", "cancelled")
    if bad:
        first = next(s for s in state.shards if s.id == bad[0])
        raise ShardFailedError(
            f"{len(bad)} shard(s) failed or were cancelled ({compact_ranges(bad)}); first: shard {first.id} "
            f"{first.state}: {first.last_error or 'no error recorded'} (log {first.log}); "
            f"'hpcgen resume {state.run_dir}' continues them")
    return state
