"""hpcgen's command line. Data goes to stdout, status to stderr; ``main`` is the one place that maps errors
to exit codes. Heavy imports happen inside the commands, so ``hpcgen --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from hpcgen.errors import HpcgenError


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(file=sys.stderr if stderr else sys.stdout, width=None if sys.stdout.isatty() else 120,
                   soft_wrap=False, highlight=False)


def _summary_line(state: Any) -> str:
    from hpcgen.login.watch import summary_line

    return summary_line(state)


# --- commands ------------------------------------------------------------------------------------


def cmd_submit(a: argparse.Namespace) -> int:
    from hpcgen.login import ops

    if a.sweep or a.multirun:
        return _submit_sweep(a)
    res = ops.submit(Path(a.job), a.overrides, run_dir=Path(a.run_dir) if a.run_dir else None,
                     executor=a.executor, dry_run=a.dry_run)
    p = res.plan
    for note in res.notes:  # model staging, and a partition check that could not run
        _err(note)
    _plan_lines(p)
    if res.dry_run is not None:
        from hpcgen.login.advice import sizing_advice

        for line in sizing_advice(p.spec, [e - s for s, e in p.shards]):
            _err(line)
        print(f"# run directory (not created): {res.layout.root}")
        if a.executor == "slurm":
            print(f"# array tasks: {len(p.tasks)}; cap {p.spec.slurm.array_parallelism} at once")
        print(res.dry_run)
        return 0
    sub = res.submission
    assert sub is not None  # noqa: S101 - internal invariant
    _err(f"queued {len(p.tasks)} tasks with {sub.sbatch_calls} submission(s) ({sub.executor}): "
         f"{', '.join(sub.arrays)}")
    try:
        if a.wait:
            _wait(res.layout.root)
    finally:  # the last stdout line is the run directory, also when --wait ends in a failure
        print(res.layout.root, flush=True)
    return 0


def _submit_sweep(a: argparse.Namespace) -> int:
    from hpcgen.login import ops

    res = ops.submit_sweep(Path(a.job), a.sweep or [], a.overrides, multirun=a.multirun,
                           run_dir=Path(a.run_dir) if a.run_dir else None, executor=a.executor, dry_run=a.dry_run)
    for note in res.notes:
        _err(note)
    for run, plan in zip(res.runs, res.plans, strict=True):
        _err(f"run {run.name} ({run.label}):")
        _plan_lines(plan)
    if res.dry_run is not None:
        print(res.dry_run)
        return 0
    arrays = [x for sub in res.submissions for x in sub.arrays]
    _err(f"queued {len(res.runs)} runs ({sum(len(p.tasks) for p in res.plans)} tasks): {', '.join(arrays)}")
    if a.wait:
        for run in res.runs:
            _wait(res.root / run.name)
    print(res.root)
    return 0


def _plan_lines(p: Any) -> None:
    sizes = [e - s for s, e in p.shards]
    shards = f"{len(p.shards)} shards ({min(sizes)}-{max(sizes)} rows), {len(p.tasks)} tasks"
    seeds = p.spec.run_seeds
    if len(p.datasets) == 1 and len(seeds) == 1:
        d = p.datasets[0]
        _err(f"plan: {d.describe()} -> {shards}, n_samples={d.n_samples}")
        return
    for d in p.datasets:
        _err(f"dataset {d.name}: {d.describe()}, n_samples={d.n_samples}" + (" (per request)" if d.n_runs else ""))
    _err(f"plan: {len(p.datasets)} dataset(s) x {len(seeds)} seed(s) {seeds} = {p.rows} rows -> {shards}")


def _wait(run_dir: Path) -> None:
    from hpcgen.login import ops

    last = [""]

    def show(state: Any) -> None:
        line = _summary_line(state)
        if line != last[0]:
            _err(line)
            last[0] = line

    ops.wait(run_dir, poll_seconds=float(os.environ.get("HPCGEN_POLL_SECONDS", "5")), on_poll=show)


def cmd_status(a: argparse.Namespace) -> int:
    from hpcgen.login.state import collect
    from hpcgen.rundir.manifest import load_manifest

    if _sweep(a.run_dir) and not a.watch:
        from hpcgen.login.sweep import format_status, sweep_status

        entries = sweep_status(Path(a.run_dir))
        if a.json:
            print(json.dumps({"format": "hpcgen-sweep-status/1", "sweep": str(Path(a.run_dir).resolve()),
                              "runs": entries}))
        else:
            _console().print(format_status(Path(a.run_dir), entries))
        return 0
    if a.watch:
        from hpcgen.login.watch import check_interval, watch

        check_interval(a.interval)
        tty = sys.stdout.isatty() and not a.json
        watch(Path(a.run_dir), interval=a.interval, tty=tty, console=_console() if tty else None,
              out=lambda line: print(line, flush=True))
        return 0
    manifest = load_manifest(Path(a.run_dir))
    state = collect(Path(a.run_dir), manifest)
    from hpcgen.login.state import block_progress

    per_dataset = block_progress(manifest, state)
    if a.json:
        print(json.dumps({**state.to_dict(), "datasets": {k: {"rows_done": v[0], "rows_total": v[1]}
                                                          for k, v in per_dataset.items()}}))
        return 0
    from rich.markup import escape
    from rich.table import Table

    shown = [s for s in state.shards if a.all or s.state != "done"][: None if a.all else 50]
    table = Table()
    from hpcgen.rundir.blocks import shard_block

    blocks = len(manifest["blocks"]) > 1  # a run of several datasets or seeds: which one each shard is
    for col in ("shard", *(["dataset/seed"] if blocks else []), "state", "rows", "job", "attempts", "last error"):
        table.add_column(col)
    for s in shown:
        note = (s.last_error or "") if s.state in ("failed", "cancelled") else (s.reason or "")
        b = shard_block(manifest, s.id) if blocks else None
        table.add_row(str(s.id), *([f"{b.name}/{b.seed}"] if b else []), s.state, f"{s.rows_done}/{s.rows_total}",
                      s.job_id or "-", str(s.attempts), escape(note))
    con = _console()
    con.print(escape(f"run {state.run_dir}" + (f" ({state.executor})" if state.executor else "")))
    if state.chain:
        con.print(f"merge+score step: job {state.chain['job_id']} {state.chain['state']}")
    if shown:
        con.print(table)
    hidden = len([s for s in state.shards if a.all or s.state != "done"]) - len(shown)
    if hidden > 0:
        con.print(f"... {hidden} more shards not shown (--all)")
    bad = [s for s in shown if s.logs_command]
    for s in bad[:10]:
        con.print(escape(f"shard {s.id} {s.state}, its log: {s.logs_command}"), soft_wrap=True)
    if len(bad) > 10:
        con.print(f"... and {len(bad) - 10} more failed shards (hpcgen logs RUN SHARD --err)")
    if len(per_dataset) > 1 or len(manifest["seeds"]) > 1:
        con.print(escape("datasets (every seed): " + ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in per_dataset.items())
                         + f"; seeds {manifest['seeds']}"))
    con.print(_summary_line(state))
    return 0


def cmd_logs(a: argparse.Namespace) -> int:
    from hpcgen.login import logs
    from hpcgen.login.state import collect
    from hpcgen.rundir.layout import RunLayout
    from hpcgen.rundir.manifest import load_manifest

    run_dir = Path(a.run_dir)
    manifest = load_manifest(run_dir)
    layout = RunLayout(run_dir)
    failed: list[int] = []
    if a.shard is None:
        failed = collect(run_dir, manifest).shards_in("failed", "cancelled")
    shard = logs.pick_shard(layout, manifest, a.shard, failed)
    attempts = logs.shard_attempts(layout, shard)
    att = logs.pick_attempt(attempts, shard, a.attempt)
    path = layout.log(att.job_id, err=a.err)
    _err(f"shard {shard}, attempt {att.number} of {len(attempts)} (job {att.job_id}"
         f"{', restart ' + str(att.restart) if att.restart else ''}): {path}")
    try:
        pos = logs.print_log(layout, attempts, att, err=a.err)
    except HpcgenError:
        if not a.follow:
            raise
        _err(f"waiting for {path} to appear")
        pos = 0
    if a.follow:
        def running() -> bool:
            st = collect(run_dir, manifest)
            return st.shards[shard].state in ("pending", "running")

        try:
            logs.follow(path, running, pos=pos)
        except KeyboardInterrupt:
            pass
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from hpcgen.login.report import write_report

    if _sweep(a.run_dir):
        from hpcgen.login.sweep import write_sweep_report

        print(write_sweep_report(Path(a.run_dir), Path(a.output) if a.output else None))
        return 0
    out = write_report(Path(a.run_dir), Path(a.output) if a.output else None)
    print(out)
    return 0


def cmd_resume(a: argparse.Namespace) -> int:
    from hpcgen.login import ops

    sub, state, bad = ops.resume(Path(a.run_dir), tasks=a.tasks)
    if bad:
        _err(f"shards {bad} had parts that no longer verify: regenerating them")
    if sub is None:
        _err(f"nothing to resume: {_summary_line(state)}")
    else:
        n_tasks = len(set(sub.jobs.values())) + len(sub.extra_tasks)
        _err(f"resubmitted {len(sub.jobs)} shard(s) as {n_tasks} task(s): {', '.join(sub.arrays)} ({sub.executor})")
    try:
        if sub is not None and a.wait:
            _wait(Path(a.run_dir))
    finally:
        print(Path(a.run_dir).resolve(), flush=True)
    return 0


def cmd_scale(a: argparse.Namespace) -> int:
    from hpcgen.errors import UserError
    from hpcgen.login import ops

    text = a.add.strip()
    if not text.lstrip("+").isdigit():
        raise UserError(f"scale: {a.add!r} is not a number of tasks to add, e.g. +4")
    sub, state = ops.scale(Path(a.run_dir), int(text.lstrip("+")))
    _err(f"added {len(sub.extra_tasks)} task(s) as {', '.join(sub.arrays)} ({sub.executor}); they take over "
         f"remaining work at once: {_summary_line(state)}")
    print(Path(a.run_dir).resolve())
    return 0


def cmd_merge(a: argparse.Namespace) -> int:
    from hpcgen.login.merge import merge_all
    from hpcgen.rundir.blocks import dataset_index
    from hpcgen.rundir.manifest import load_manifest

    if _sweep(a.run_dir):
        from hpcgen.errors import ConfigError
        from hpcgen.login.sweep import merge_sweep

        if a.output or a.dataset:
            raise ConfigError(f"merge {a.run_dir}: --output and --dataset name one run's output; a sweep merges "
                              "each run to its own outputs (merge one run: hpcgen merge SWEEP/<run> ...)")
        for res in merge_sweep(Path(a.run_dir), allow_partial=a.allow_partial,
                               metadata=False if a.no_metadata else None):
            print(res.output)
        return 0
    picked = [dataset_index(load_manifest(Path(a.run_dir)), a.dataset)] if a.dataset else None
    results = merge_all(Path(a.run_dir), output=Path(a.output) if a.output else None, datasets=picked,
                        allow_partial=a.allow_partial, metadata=False if a.no_metadata else None)
    for res in results:
        name = f"dataset {res.dataset}: " if len(results) > 1 or a.dataset else ""
        if res.missing_shards:
            _err(f"{name}partial merge: {len(res.missing_shards)} shard(s) missing")
        if res.dropped_rows:
            _err(f"{name}dropped {res.dropped_rows} duplicate row(s): saved by a task after another took its chunk "
                 "over")
        _err(f"{name}merged {res.rows} rows from {res.shards} shards ({res.error_rows} rows with errors) "
             f"in {res.seconds:.1f}s")
        print(res.output)
    return 0


def _sweep(path: str) -> bool:
    """A sweep folder: checked without importing ``hpcgen.login.sweep``, so status stays fast."""
    from hpcgen.rundir.layout import is_sweep

    return is_sweep(path)


def cmd_cancel(a: argparse.Namespace) -> int:
    from hpcgen.login import ops

    n = ops.cancel(Path(a.run_dir))
    _err(f"cancelled {n} job(s); 'hpcgen resume {a.run_dir}' continues the run")
    return 0


def cmd_score(a: argparse.Namespace) -> int:
    from hpcgen.scoring.command import run_score

    report, table = run_score(a)
    if a.json:
        print(json.dumps(report))
    else:
        print(table)
    return 0


def cmd_doctor(a: argparse.Namespace) -> int:
    from hpcgen.errors import SiteCheckError
    from hpcgen.login import doctor

    if a.job and "=" in a.job and not Path(a.job).exists():  # `doctor KEY=VALUE` without a job file
        a.overrides, a.job = [a.job, *a.overrides], None
    spec = doctor.doctor_spec(Path(a.job) if a.job else None, a.overrides, partition=a.partition, gpus=a.gpus)
    run_root = Path(a.run_dir) if a.run_dir else Path.cwd() / "runs"
    checks = doctor.run(spec, run_root=run_root, output_path=spec.data.output_path if a.job else None,
                        timeout=a.timeout, report=lambda c: print(c.line(), flush=True))
    failed = [c.name for c in checks if c.ok is False]
    if failed:
        raise SiteCheckError(f"{len(failed)} check(s) failed: {', '.join(dict.fromkeys(failed))}")
    _err(f"doctor: all {len([c for c in checks if c.ok])} checks passed")
    return 0


# --- parser --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from hpcgen.cli_parser import build_parser as build

    return build({"submit": cmd_submit, "status": cmd_status, "logs": cmd_logs, "report": cmd_report, "resume": cmd_resume, "scale": cmd_scale, "merge": cmd_merge, "cancel": cmd_cancel, "doctor": cmd_doctor, "score": cmd_score})


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command in ("submit", "doctor"):  # KEY=VALUE may come after options, as in verl
        args.overrides += [x for x in extra if "=" in x and not x.startswith("-")]
        extra = [x for x in extra if x not in args.overrides]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.fn(args) or 0)
    except HpcgenError as exc:
        _err(f"hpcgen: error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        _err("hpcgen: interrupted")
        return 130
    except Exception as exc:  # a bug: one line unless asked for the traceback
        if os.environ.get("HPCGEN_DEBUG"):
            raise
        _err(f"hpcgen: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
             "(set HPCGEN_DEBUG=1 for a traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
