"""``hpcgen score``: resolve a run directory, a sweep folder or a file to merged outputs, score them, write the
report. A run of one dataset (and a file) gets the per-data_source table; a run of several datasets the dataset
x metric table; a sweep the model x dataset table (:mod:`hpcgen.scoring.evaluation`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hpcgen.errors import ScoreError
from hpcgen.rundir.blocks import dataset_output
from hpcgen.rundir.layout import SWEEP_FILE, RunLayout, is_sweep
from hpcgen.scoring.evaluation import merged_keys


def resolve_target(target: Path) -> tuple[Path, Path, dict[str, Any], tuple[str, str, str]]:
    """(merged file, default scores path, score settings, column names) for a run of one dataset or a file."""
    if target.is_dir():
        from hpcgen.rundir.manifest import load_manifest

        manifest = load_manifest(target)
        layout = RunLayout(target)
        merged = dataset_output(layout, manifest, 0)
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
    if a.workers is not None and a.workers < 0:
        raise ScoreError(f"--workers must be 0 (automatic) or more, got {a.workers}")
    target = Path(a.target)
    several = _several(target)
    if several is not None:
        return several_score(a, target, several)
    merged, scores_path, settings, (response_key, gen_error_key, seed_key) = resolve_target(target)
    grader = a.grader or settings.get("grader") or DEFAULT_GRADER
    custom_path, custom_name = settings.get("custom_path"), settings.get("custom_name") or "compute_score"
    if a.custom:
        custom_path, _, name = a.custom.partition(":")
        custom_name = name or "compute_score"
    report = score_file(merged, grader=grader, custom_path=Path(custom_path) if custom_path else None,
                        custom_name=custom_name, per_sample_output=Path(a.per_sample) if a.per_sample else None,
                        compare=a.compare, workers=a.workers or None,
                        response_key=a.response_key or response_key, gen_error_key=gen_error_key,
                        seed_key=seed_key)
    out = Path(a.output) if a.output else scores_path
    write_report(report, out)
    report["scores_path"] = str(out)
    return report, format_table(report)


def _several(target: Path) -> str | None:
    """'sweep' for a sweep folder, 'run' for a run of several datasets, None otherwise."""
    if not target.is_dir():
        return None
    if is_sweep(target):
        return "sweep"
    from hpcgen.rundir.manifest import load_manifest

    datasets = load_manifest(target)["datasets"]  # a batch file alone: score_run says it is not graded
    return "run" if len(datasets) > 1 or datasets[0]["kind"] == "openai_batch" else None


def several_score(a: argparse.Namespace, target: Path, kind: str) -> tuple[dict[str, Any], str]:
    """A run of several datasets, or a sweep: one table (per-sample output and --compare are per file)."""
    from hpcgen.rundir import atomic
    from hpcgen.scoring.evaluation import SWEEP_FORMAT, Settings, format_run, format_sweep, score_run
    from hpcgen.scoring.score import write_report

    for flag, value in (("--per-sample", a.per_sample), ("--compare", a.compare), ("--response-key", a.response_key)):
        if value:
            raise ScoreError(f"{flag} works on one merged output: score a dataset's file (RUN_DIR/merged/<name>."
                             "parquet) instead of the whole run")
    settings = Settings(a.grader, a.custom, a.workers or None)
    if kind == "run":
        report = score_run(target, settings)
        out = Path(a.output) if a.output else RunLayout(target).scores
        write_report(report, out)
        report["scores_path"] = str(out)
        return report, format_run(report)
    sweep = atomic.read_json(target / SWEEP_FILE)
    runs = []
    for run in sweep["runs"]:
        entry = {"name": run["name"], "label": run["label"]}
        try:
            entry["scores"] = score_run(target / run["dir"], settings)
            write_report(entry["scores"], RunLayout(target / run["dir"]).scores)
        except ScoreError as exc:
            entry["error"] = str(exc).split(":")[0][:40]
            entry["problem"] = str(exc)
        runs.append(entry)
    report = {"format": SWEEP_FORMAT, "sweep": str(target.resolve()), "runs": runs}
    out = Path(a.output) if a.output else target / "scores.json"
    write_report(report, out)
    report["scores_path"] = str(out)
    notes = "".join(f"{r['label']}: {r['problem']}\n" for r in runs if "problem" in r)
    return report, format_sweep(runs) + notes
