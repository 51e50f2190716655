"""hpcgen's argument parser: every command and its options (the commands themselves are in ``hpcgen.cli``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from hpcgen import __version__


def build_parser(handlers: dict[str, Callable[[argparse.Namespace], int]]) -> argparse.ArgumentParser:
    """Every command and option; ``handlers`` maps a command to the function that runs it."""
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
    s.add_argument("--sweep", action="append", metavar="KEY=A,B,...",
                   help="one run per value (repeat for a cartesian product), under one sweep folder")
    s.add_argument("-m", "--multirun", action="store_true",
                   help="as in Hydra: every KEY=A,B override with a comma is swept (quote a value to keep its comma)")
    s.set_defaults(fn=handlers["submit"])

    s = sub.add_parser("status", help="where every shard stands")
    s.add_argument("run_dir")
    s.add_argument("--json", action="store_true")
    s.add_argument("--all", action="store_true", help="list done shards too")
    s.add_argument("--watch", action="store_true",
                   help="refresh in place with progress bars until the run ends (plain lines if not a terminal)")
    s.add_argument("--interval", type=float, default=2.0, help="seconds between --watch refreshes (<= 5)")
    s.set_defaults(fn=handlers["status"])

    s = sub.add_parser("logs", help="print the log of a shard's latest (or chosen) attempt")
    s.add_argument("run_dir")
    s.add_argument("shard", nargs="?", type=int, help="shard id (default: the first failed shard)")
    s.add_argument("--attempt", type=int, help="attempt number, 1 = first (default: the latest)")
    s.add_argument("--err", action="store_true", help="stderr (errors, tracebacks) instead of stdout")
    s.add_argument("--follow", "-f", action="store_true", help="keep printing until the attempt ends")
    s.set_defaults(fn=handlers["logs"])

    s = sub.add_parser("report", help="write a self-contained HTML report of the run (plots, timeline, scores)")
    s.add_argument("run_dir")
    s.add_argument("--output", help="where to write it (default RUN_DIR/report.html)")
    s.set_defaults(fn=handlers["report"])

    s = sub.add_parser("resume", help="resubmit only the shards that are not done")
    s.add_argument("run_dir")
    s.add_argument("--tasks", type=int, help="this many tasks share whatever is left (default: one per open shard)")
    s.add_argument("--wait", action="store_true")
    s.set_defaults(fn=handlers["resume"])

    s = sub.add_parser("scale", help="add tasks to a running run; they take over remaining work")
    s.add_argument("run_dir")
    s.add_argument("add", metavar="+K", help="number of tasks to add, e.g. +4")
    s.set_defaults(fn=handlers["scale"])

    s = sub.add_parser("merge", help="verify and merge every shard into one ordered file")
    s.add_argument("run_dir")
    s.add_argument("--output", help="output path (.parquet or .jsonl); default data.output_path (one dataset)")
    s.add_argument("--dataset", help="merge only this dataset of the run (default: every dataset)")
    s.add_argument("--allow-partial", action="store_true", help="merge the done shards of an incomplete run")
    s.add_argument("--no-metadata", action="store_true", help="only add 'responses' (verl's exact schema)")
    s.set_defaults(fn=handlers["merge"])

    s = sub.add_parser("cancel", help="cancel every job of the run (it stays resumable)")
    s.add_argument("run_dir")
    s.set_defaults(fn=handlers["cancel"])

    s = sub.add_parser("doctor", help="check this site before the first real run (one line per check)")
    s.add_argument("job", nargs="?", help="job file whose partition, GPUs, setup and output path to check")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override any key of the job")
    s.add_argument("--partition", help="partition to check (default: the job's, else the cluster's default)")
    s.add_argument("--gpus", type=int, help="GPUs per node for the test job (default: the job's, else 1 where "
                   "the partition has GPUs)")
    s.add_argument("--run-dir", help="where runs go: the test job's files are written there (default ./runs)")
    s.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the test job (default 180)")
    s.set_defaults(fn=handlers["doctor"])

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
    s.set_defaults(fn=handlers["score"])
    return p
