"""``hpcgen score``: resolve a run directory or file to the merged output, score it, write the report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hpcgen.errors import ScoreError
from hpcgen.rundir.layout import RunLayout


def merged_keys(job: dict[str, Any]) -> tuple[str, str]:
    """The merged output's names for ``responses`` and ``gen_error`` (``merge.response_key``, ``metadata_prefix``)."""
    merge = job.get("merge") or {}
    return merge.get("response_key") or "responses", (merge.get("metadata_prefix") or "") + "gen_error"


def resolve_target(target: Path) -> tuple[Path, Path, dict[str, Any], tuple[str, str]]:
    """(merged file, default scores path, score settings, column names) for a run directory or a file."""
    if target.is_dir():
        from hpcgen.rundir.manifest import load_manifest

        manifest = load_manifest(target)
        layout = RunLayout(target)
        merged = Path(manifest["job"]["data"].get("output_path") or layout.default_output)
        if not merged.is_file():
            raise ScoreError(f"{merged} does not exist: run 'hpcgen merge {target}' first")
        return merged, layout.scores, manifest["job"].get("score", {}), merged_keys(manifest["job"])
    if not target.is_file():
        raise ScoreError(f"{target} is neither a run directory nor a file")
    return target, target.with_name(target.name + ".scores.json"), {}, merged_keys({})


def run_score(a: argparse.Namespace) -> tuple[dict[str, Any], str]:
    from hpcgen.scoring.graders import DEFAULT_GRADER, check_grader_name
    from hpcgen.scoring.score import format_table, score_file, write_report

    if a.grader is not None:
        check_grader_name(a.grader)  # before looking at the target: a typo is reported first
    merged, scores_path, settings, (response_key, gen_error_key) = resolve_target(Path(a.target))
    grader = a.grader or settings.get("grader") or DEFAULT_GRADER
    custom_path, custom_name = settings.get("custom_path"), settings.get("custom_name") or "compute_score"
    if a.custom:
        custom_path, _, name = a.custom.partition(":")
        custom_name = name or "compute_score"
    if a.workers is not None and a.workers < 0:
        raise ScoreError(f"--workers must be 0 (automatic) or more, got {a.workers}")
    report = score_file(merged, grader=grader, custom_path=Path(custom_path) if custom_path else None,
                        custom_name=custom_name, per_sample_output=Path(a.per_sample) if a.per_sample else None,
                        compare=a.compare, workers=a.workers or None,
                        response_key=a.response_key or response_key, gen_error_key=gen_error_key)
    out = Path(a.output) if a.output else scores_path
    write_report(report, out)
    report["scores_path"] = str(out)
    return report, format_table(report)
