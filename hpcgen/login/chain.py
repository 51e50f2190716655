"""Merge + score as a dependent SLURM job after the array succeeds (``score.after_merge: true``).

The step is a small CPU-only job with ``--dependency=afterok:<arrays>``; ``status`` shows it and ``resume``
re-attaches it to the new arrays and, with ``afterany``, to the older arrays that still have tasks pending or
running (a whole array: compact, and its ended tasks count as ended), so it never starts while one of them can
still write to the run. Its result is the files it writes (merged output, scores.json).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hpcgen.rundir.layout import RunLayout

log = logging.getLogger("hpcgen.login.chain")


def merge_and_score(run_dir: str) -> dict[str, Any]:
    """Runs inside the dependent job."""
    from hpcgen.login.merge import merge_run
    from hpcgen.rundir.manifest import load_manifest
    from hpcgen.scoring.command import merged_keys
    from hpcgen.scoring.score import score_file, write_report

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    layout = RunLayout(Path(run_dir))
    res = merge_run(layout.root)
    job = load_manifest(layout.root)["job"]
    settings = job.get("score", {})
    custom = settings.get("custom_path")
    response_key, gen_error_key = merged_keys(job)
    report = score_file(Path(res.output), grader=settings.get("grader") or "verl",
                        custom_path=Path(custom) if custom else None,
                        custom_name=settings.get("custom_name") or "compute_score", progress=False,
                        response_key=response_key, gen_error_key=gen_error_key)
    write_report(report, layout.scores)
    from hpcgen.login.report import write_report as write_html

    html = write_html(layout.root)
    log.info("merged %d rows into %s; scores in %s; report %s", res.rows, res.output, layout.scores, html)
    return {"output": res.output, "scores": str(layout.scores), "report": str(html), "overall": report["overall"]}


def chain_dependency(arrays: list[str], still_running: list[str] | None = None) -> str:
    """afterok on this submission's arrays, afterany on earlier jobs still able to write (both must hold)."""
    dep = "afterok:" + ":".join(arrays)
    if still_running:
        dep += ",afterany:" + ":".join(sorted(set(still_running)))
    return dep


def submit_chain(layout: RunLayout, spec: Any, arrays: list[str], still_running: list[str] | None = None) -> str:
    """Queue the merge+score step after every array of this submission succeeds and every earlier job in
    ``still_running`` has ended; returns its job id."""
    import submitit

    ex = submitit.SlurmExecutor(folder=str(layout.logs_dir / "%j"), python=spec.slurm.python or sys.executable)
    params: dict[str, Any] = {"job_name": f"{spec.slurm.job_name}-merge", "time": 60,
                              "nodes": 1, "ntasks_per_node": 1, "cpus_per_task": 1,
                              "dependency": chain_dependency(arrays, still_running), "setup": list(spec.slurm.setup)}
    for key in ("partition", "account", "qos"):
        if getattr(spec.slurm, key):
            params[key] = getattr(spec.slurm, key)
    ex.update_parameters(**params)
    return str(ex.submit(merge_and_score, str(layout.root)).job_id)
