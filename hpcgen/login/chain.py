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
    """Runs inside the dependent job: merge every dataset, grade what can be graded, write the report."""
    from hpcgen.errors import ScoreError
    from hpcgen.login.merge import merge_all
    from hpcgen.rundir.manifest import load_manifest
    from hpcgen.scoring.evaluation import Settings, score_output, score_run
    from hpcgen.scoring.score import write_report

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    layout = RunLayout(Path(run_dir))
    results = merge_all(layout.root)
    manifest = load_manifest(layout.root)
    report: dict[str, Any] | None = None
    try:
        if len(manifest["datasets"]) == 1 and manifest["datasets"][0]["kind"] != "openai_batch":
            report = score_output(Path(results[0].output), manifest["job"], Settings(progress=False))
        else:
            report = score_run(layout.root, Settings(progress=False))
        write_report(report, layout.scores)
    except ScoreError as exc:  # nothing gradable (an OpenAI batch file): the merge is what was asked for
        log.warning("not scored: %s", exc)
    from hpcgen.login.report import write_report as write_html

    html = write_html(layout.root)
    outputs = [r.output for r in results]
    log.info("merged %d rows into %s; scores in %s; report %s", sum(r.rows for r in results), ", ".join(outputs),
             layout.scores, html)
    return {"outputs": outputs, "output": outputs[0], "scores": str(layout.scores), "report": str(html),
            "overall": (report or {}).get("overall")}


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
