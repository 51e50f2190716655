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

from hpcgen import __version__
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

    res = ops.submit(Path(a.job), a.overrides, run_dir=Path(a.run_dir) if a.run_dir else None,
                     executor=a.executor, dry_run=a.dry_run)
    p = res.plan
    for note in res.notes:  # model staging, and a partition check that could not run
        _err(note)
    sizes = [e - s for s, e in p.shards]
    _err(f"plan: {p.dataset.rows} rows of {p.dataset.path} -> {len(p.shards)} shards "
         f"({min(sizes)}-{max(sizes)} rows), {len(p.tasks)} tasks, n_samples={p.spec.data.n_samples}")
    if res.dry_run is not None:
        from hpcgen.login.advice import sizing_advice

        for line in sizing_advice(p.spec, sizes):
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

    if a.watch:
        from hpcgen.login.watch import check_interval, watch

        check_interval(a.interval)
        tty = sys.stdout.isatty() and not a.json
        watch(Path(a.run_dir), interval=a.interval, tty=tty, console=_console() if tty else None,
              out=lambda line: print(line, flush=True))
        return 0
    state = collect(Path(a.run_dir), load_manifest(Path(a.run_dir)))
    if a.json:
        print(json.dumps(state.to_dict()))
        return 0
    from rich.markup import escape
    from rich.table import Table

    shown = [s for s in state.shards if a.all or s.state != "done"][: None if a.all else 50]
    table = Table()
    for col in ("shard", "state", "rows", "job", "attempts", "last error"):
        table.add_column(col)
    for s in shown:
        note = (s.last_error or "") if s.state in ("failed", "cancelled") else (s.reason or "")
        table.add_row(str(s.id), s.state, f"{s.rows_done}/{s.rows_total}", s.job_id or "-", str(s.attempts),
                      escape(note))
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
    from hpcgen.login.merge import merge_run

    res = merge_run(Path(a.run_dir), output=Path(a.output) if a.output else None,
                    allow_partial=a.allow_partial, metadata=False if a.no_metadata else None)
    if res.missing_shards:
        _err(f"partial merge: {len(res.missing_shards)} shard(s) missing")
    if res.dropped_rows:
        _err(f"dropped {res.dropped_rows} duplicate row(s): saved by a task after another took its chunk over")
    _err(f"merged {res.rows} rows from {res.shards} shards ({res.error_rows} rows with errors) "
         f"in {res.seconds:.1f}s")
    print(res.output)
    return 0


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
    p = argparse.ArgumentParser(prog="hpcgen", description="Run a trained LLM over a prompt dataset on SLURM: "
                                "sharded job arrays of vLLM tasks, resumable, merged into one verified parquet.")
    p.add_argument("--version", action="version", version=f"hpcgen {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("submit", help="plan shards and queue one job array")
    s.add_argument("job", help="job file (YAML)")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override any key, e.g. data.n_samples=8")
    s.add_argument("--run-dir", help="run directory (default ./runs/<job>-<time>)")
    s.add_argument("--executor", choices=("slurm", "local"), default="slurm")
    s.add_argument("--dry-run", action="store_true", help="print the plan and the sbatch script; queue nothing")
    s.add_argument("--wait", action="store_true", help="block until every shard is done or failed")
    s.set_defaults(fn=cmd_submit)

    s = sub.add_parser("status", help="where every shard stands")
    s.add_argument("run_dir")
    s.add_argument("--json", action="store_true")
    s.add_argument("--all", action="store_true", help="list done shards too")
    s.add_argument("--watch", action="store_true",
                   help="refresh in place with progress bars until the run ends (plain lines if not a terminal)")
    s.add_argument("--interval", type=float, default=2.0, help="seconds between --watch refreshes (<= 5)")
    s.set_defaults(fn=cmd_status)

    s = sub.add_parser("logs", help="print the log of a shard's latest (or chosen) attempt")
    s.add_argument("run_dir")
    s.add_argument("shard", nargs="?", type=int, help="shard id (default: the first failed shard)")
    s.add_argument("--attempt", type=int, help="attempt number, 1 = first (default: the latest)")
    s.add_argument("--err", action="store_true", help="stderr (errors, tracebacks) instead of stdout")
    s.add_argument("--follow", "-f", action="store_true", help="keep printing until the attempt ends")
    s.set_defaults(fn=cmd_logs)

    s = sub.add_parser("report", help="write a self-contained HTML report of the run (plots, timeline, scores)")
    s.add_argument("run_dir")
    s.add_argument("--output", help="where to write it (default RUN_DIR/report.html)")
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("resume", help="resubmit only the shards that are not done")
    s.add_argument("run_dir")
    s.add_argument("--tasks", type=int, help="this many tasks share whatever is left (default: one per open shard)")
    s.add_argument("--wait", action="store_true")
    s.set_defaults(fn=cmd_resume)

    s = sub.add_parser("scale", help="add tasks to a running run; they take over remaining work")
    s.add_argument("run_dir")
    s.add_argument("add", metavar="+K", help="number of tasks to add, e.g. +4")
    s.set_defaults(fn=cmd_scale)

    s = sub.add_parser("merge", help="verify and merge every shard into one ordered file")
    s.add_argument("run_dir")
    s.add_argument("--output", help="output path (.parquet or .jsonl); default data.output_path")
    s.add_argument("--allow-partial", action="store_true", help="merge the done shards of an incomplete run")
    s.add_argument("--no-metadata", action="store_true", help="only add 'responses' (verl's exact schema)")
    s.set_defaults(fn=cmd_merge)

    s = sub.add_parser("cancel", help="cancel every job of the run (it stays resumable)")
    s.add_argument("run_dir")
    s.set_defaults(fn=cmd_cancel)

    s = sub.add_parser("doctor", help="check this site before the first real run (one line per check)")
    s.add_argument("job", nargs="?", help="job file whose partition, GPUs, setup and output path to check")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override any key of the job")
    s.add_argument("--partition", help="partition to check (default: the job's, else the cluster's default)")
    s.add_argument("--gpus", type=int, help="GPUs per node for the test job (default: the job's, else 1 where "
                   "the partition has GPUs)")
    s.add_argument("--run-dir", help="where runs go: the test job's files are written there (default ./runs)")
    s.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the test job (default 180)")
    s.set_defaults(fn=cmd_doctor)

    s = sub.add_parser("score", help="grade merged answers: mean@n ± se, pass@k, maj@k per data_source")
    s.add_argument("target", help="a run directory or a merged .parquet/.jsonl file")
    s.add_argument("--json", action="store_true")
    s.add_argument("--output", help="where to write the scores JSON")
    s.add_argument("--per-sample", help="also write the input with per-sample 'scores' and 'extracted' here")
    s.add_argument("--grader", help="verl (default: verl's default_compute_score rules) or math-verify "
                   "(lenient); default score.grader of the job")
    s.add_argument("--compare", action="store_true", help="grade with both graders, side by side")
    s.add_argument("--custom", help="custom scorer FILE.py[:FUNCTION] (verl's compute_score convention)")
    s.add_argument("--workers", type=int, help="grading processes (default: automatic; 1: none)")
    s.add_argument("--response-key", help="the responses column (default: the run's merge.response_key, "
                   "else 'responses')")
    s.set_defaults(fn=cmd_score)
    return p


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
