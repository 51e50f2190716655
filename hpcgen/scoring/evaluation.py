"""Scoring a whole evaluation: every dataset of a run (one merged output each) in one dataset x metric table,
and every run of a model sweep in one model x dataset table. The grading of each output is
:func:`hpcgen.scoring.score.score_file`'s, unchanged; this module only groups.

``RUN_DIR/scores.json`` of a run of several datasets::

    {"format": "hpcgen-scores/2", "grader": "verl", "datasets": {"gsm8k": <score_file report>, ...},
     "not_graded": {"requests": "an OpenAI batch file has no ground truth"}}

``SWEEP_DIR/scores.json``: ``{"format": "hpcgen-sweep-scores/1", "runs": [{"name", "label", "scores"}]}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcgen.errors import ScoreError
from hpcgen.rundir.blocks import dataset_output
from hpcgen.rundir.layout import RunLayout
from hpcgen.scoring.report import _render, mean_text, seeds_text

FORMAT = "hpcgen-scores/2"
SWEEP_FORMAT = "hpcgen-sweep-scores/1"


@dataclass
class Settings:
    """How to grade (``None``: the run's ``score.*`` settings)."""

    grader: str | None = None
    custom: str | None = None  # FILE[:FUNCTION]
    workers: int | None = None
    progress: bool | None = None


def merged_keys(job: dict[str, Any]) -> tuple[str, str, str]:
    """The merged output's names for ``responses``, ``gen_error`` and ``sample_seed``."""
    merge = job.get("merge") or {}
    prefix = merge.get("metadata_prefix") or ""
    return merge.get("response_key") or "responses", prefix + "gen_error", prefix + "sample_seed"


def score_output(path: Path, job: dict[str, Any], settings: Settings) -> dict[str, Any]:
    from hpcgen.scoring.graders import DEFAULT_GRADER
    from hpcgen.scoring.score import score_file

    conf = job.get("score") or {}
    custom_path, custom_name = conf.get("custom_path"), conf.get("custom_name") or "compute_score"
    if settings.custom:
        custom_path, _, name = settings.custom.partition(":")
        custom_name = name or "compute_score"
    if not path.is_file():
        raise ScoreError(f"{path} does not exist: run 'hpcgen merge' first")
    responses, gen_error, seed = merged_keys(job)
    return score_file(path, grader=settings.grader or conf.get("grader") or DEFAULT_GRADER,
                      custom_path=Path(custom_path) if custom_path else None, custom_name=custom_name,
                      workers=settings.workers, progress=settings.progress, response_key=responses,
                      gen_error_key=gen_error, seed_key=seed)


def score_run(run_dir: Path, settings: Settings) -> dict[str, Any]:
    """Every dataset of a run, graded from its merged output (an OpenAI batch dataset is not graded)."""
    from hpcgen.rundir.manifest import load_manifest

    manifest = load_manifest(run_dir)
    layout = RunLayout(run_dir)
    out: dict[str, Any] = {"format": FORMAT, "run_dir": str(layout.root), "datasets": {}, "not_graded": {}}
    for d, entry in enumerate(manifest["datasets"]):
        if entry["kind"] == "openai_batch":
            out["not_graded"][entry["name"]] = "an OpenAI batch file has no ground truth to grade against"
            continue
        report = score_output(dataset_output(layout, manifest, d), manifest["job"], settings)
        out["datasets"][entry["name"]] = report
        out["grader"] = report.get("grader")
    if not out["datasets"]:
        why = "; ".join(f"{name}: {reason}" for name, reason in out["not_graded"].items())
        raise ScoreError(f"run {run_dir} has no dataset to grade (not graded: {why})")
    return out


def _k_cols(report: dict[str, Any]) -> tuple[int, bool]:
    o = report["overall"]
    return int(o.get("n") or 0), "maj@1" in o


def format_run(scores: dict[str, Any], *, width: int | None = None) -> str:
    """One table: a line per dataset (its overall), with the spread across seeds when there are several."""
    from rich.table import Table

    reports = scores["datasets"]
    seeded = any("seeds" in r["overall"] for r in reports.values())
    table = Table(title=f"scores (grader: {scores.get('grader', '?')}): {scores.get('run_dir', '')}",
                  title_justify="left")
    table.add_column("dataset", overflow="fold", no_wrap=width is None)
    cols = ["rows", "errors", "n", "mean ± se", *(["across seeds: mean ± sd"] if seeded else []), "pass@1",
            "pass@n", "maj@n"]
    for name in cols:
        table.add_column(name, justify="right", no_wrap=True, min_width=len(name))
    for name, r in reports.items():
        o = r["overall"]
        n, maj = _k_cols(r)
        vals = [str(o.get("rows", "-")), str(o.get("errors", "-")), str(n), mean_text(o)]
        vals += [seeds_text(o)] if seeded else []
        vals += [f"{o['pass@1']:.4f}" if "pass@1" in o else "-",
                 f"{o[f'pass@{n}']:.4f} (n={n})" if f"pass@{n}" in o else "-",
                 f"{o[f'maj@{n}']:.4f} (n={n})" if maj and f"maj@{n}" in o else "-"]
        table.add_row(name, *vals)
    notes = "".join(f"{name}: not graded ({why})\n" for name, why in scores.get("not_graded", {}).items())
    return _render(table, width) + notes


def cell(report: dict[str, Any] | None) -> str:
    if report is None:
        return "-"
    o = report["overall"]
    return seeds_text(o) if "seeds" in o else mean_text(o)


def format_sweep(runs: list[dict[str, Any]], *, width: int | None = None) -> str:
    """Model (run) x dataset: mean@n ± se, or across seeds mean ± sd when the runs have several seeds."""
    from rich.table import Table

    names = list(dict.fromkeys(n for r in runs for n in (r.get("scores") or {}).get("datasets", {})))
    table = Table(title="scores by run (rows) and dataset (columns)", title_justify="left")
    table.add_column("run", overflow="fold", no_wrap=width is None)
    for n in names:
        table.add_column(n, justify="right", no_wrap=True, min_width=len(n))
    for r in runs:
        reports = (r.get("scores") or {}).get("datasets", {})
        table.add_row(r["label"], *[cell(reports.get(n)) if r.get("scores") else r.get("error", "-")
                                    for n in names])
    return _render(table, width)
