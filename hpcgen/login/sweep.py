"""A model sweep: one run per combination of swept values (:mod:`hpcgen.spec.sweep`), under one sweep folder::

    SWEEP_DIR/sweep.json          {"format": "hpcgen-sweep/1", "job_file", "created", "keys",
                                   "runs": [{"name", "dir", "label", "values", "overrides"}]}
    SWEEP_DIR/000-ckpt-100/       an ordinary run directory (manifest, work/, ...), one per combination
    SWEEP_DIR/report.html, scores.json

Every run is planned (and checked) before anything is created or queued. ``status``, ``merge``, ``score`` and
``report`` take the sweep folder and go through its runs; each run stays an ordinary run (``resume`` one by its
folder). In a sweep, an explicit output path gets the run's name as a folder (``out/gsm8k.parquet`` ->
``out/000-ckpt-100/gsm8k.parquet``), so runs never write the same file.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcgen.errors import RunDirError
from hpcgen.login.plan import Plan, create_run_dir, make_plan
from hpcgen.login.state import block_progress
from hpcgen.rundir import atomic
from hpcgen.rundir.layout import SWEEP_FILE
from hpcgen.spec.loader import load_job_traced
from hpcgen.spec.schema import JobSpec
from hpcgen.spec.sweep import SweepRun, sweep_runs

FORMAT = "hpcgen-sweep/1"


def load_sweep(root: Path) -> dict[str, Any]:
    try:
        data = atomic.read_json(Path(root) / SWEEP_FILE)
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{root}/{SWEEP_FILE} is unreadable: {exc}") from None
    if data.get("format") != FORMAT:
        raise RunDirError(f"{root}/{SWEEP_FILE} has unknown format {data.get('format')!r}")
    return data


@dataclass
class SweepSubmit:
    root: Path
    runs: list[SweepRun]
    plans: list[Plan]
    submissions: list[Any] = field(default_factory=list)
    dry_run: str | None = None
    notes: list[str] = field(default_factory=list)  # for stderr: staging, a partition check that could not run


def _own_outputs(spec: JobSpec, name: str) -> JobSpec:
    """Explicit output paths with the run's name as a folder (``out/x.parquet`` -> ``out/<name>/x.parquet``)."""
    spec = spec.model_copy(deep=True)
    if spec.data.output_path:
        p = Path(spec.data.output_path)
        spec.data.output_path = str(p.parent / name / p.name)
    for d in spec.datasets.values():
        if d.output_path:
            p = Path(d.output_path)
            d.output_path = str(p.parent / name / p.name)
    return spec


def plan_sweep(job_file: Path, sweeps: list[str], overrides: list[str], multirun: bool, site: Any = None,
               download: bool = True) -> tuple[list[SweepRun], list[Plan]]:
    """Load and plan every run of the sweep (any error stops it before anything is written)."""
    runs = sweep_runs(sweeps, overrides, multirun)
    plans = []
    for run in runs:
        spec, _ = load_job_traced(job_file, run.overrides, site=site)
        plans.append(make_plan(_own_outputs(spec, run.name), job_file=str(job_file.resolve()),
                               overrides=run.overrides, download=download))
    return runs, plans


def submit_sweep(job_file: Path, sweeps: list[str], overrides: list[str], *, multirun: bool, root: Path,
                 executor: str, dry_run: bool, submit_one: Any) -> SweepSubmit:
    """Plan every run, then create the sweep folder and each run and queue it (``submit_one(layout, plan)``)."""
    from hpcgen.spec.site import load_site, site_path

    site_file, _ = site_path()
    runs, plans = plan_sweep(job_file, sweeps, overrides, multirun, load_site(site_file) if site_file else None,
                             download=not dry_run)
    root = Path(root).resolve()
    out = SweepSubmit(root, runs, plans, notes=[n for p in plans for n in p.notes])
    if executor == "slurm":  # every run's request against the partition, before any folder is made
        from hpcgen.login.partition import check_before_queueing

        for plan in plans:
            if (note := check_before_queueing(plan.spec, dry_run=dry_run)) and note not in out.notes:
                out.notes.append(note)
    if dry_run:
        lines = [f"# sweep: {len(runs)} runs in {root} (not created)"]
        lines += [f"#   {r.name}: {' '.join(r.overrides)}" for r in runs]
        out.dry_run = "\n".join(lines)
        return out
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise RunDirError(f"sweep folder {root} exists and is not empty; pick another --run-dir")
    root.mkdir(parents=True, exist_ok=True)
    atomic.write_json(root / SWEEP_FILE, {
        "format": FORMAT, "job_file": str(job_file.resolve()), "created": time.time(),
        "keys": list(runs[0].values), "runs": [{"name": r.name, "dir": r.name, "label": r.label, "values": r.values,
                                               "overrides": r.overrides} for r in runs]})
    for run, plan in zip(runs, plans, strict=True):
        layout = create_run_dir(root / run.name, plan.manifest)
        out.submissions.append(submit_one(layout, plan))
    return out


# --- status, merge, report over the runs ---------------------------------------------------------------


def sweep_status(root: Path) -> list[dict[str, Any]]:
    """One entry per run: its label, counts of shard states and rows done/total per dataset."""
    from hpcgen.login.state import collect
    from hpcgen.rundir.manifest import load_manifest

    out = []
    for run in load_sweep(root)["runs"]:
        entry: dict[str, Any] = {"name": run["name"], "label": run["label"], "run_dir": str(Path(root) / run["dir"])}
        try:
            manifest = load_manifest(Path(root) / run["dir"])
        except RunDirError:
            entry.update(state="not submitted", datasets={})
            out.append(entry)
            continue
        state = collect(Path(root) / run["dir"], manifest)
        entry.update(state="done" if state.complete else ("failed" if state.shards_in("failed", "cancelled")
                                                            and not state.shards_in("running", "pending")
                                                            else "running"),
                     counts=state.counts, rows_done=state.rows_done, rows_total=state.rows_total,
                     datasets={k: list(v) for k, v in block_progress(manifest, state).items()})
        out.append(entry)
    return out


def format_status(root: Path, entries: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    names = list(dict.fromkeys(n for e in entries for n in e.get("datasets", {})))
    table = Table(title=f"sweep {root}: runs (rows) x datasets (rows done / total)", title_justify="left")
    table.add_column("run")
    table.add_column("state")
    for n in names:
        table.add_column(n, justify="right")
    for e in entries:
        cells = [f"{d[0]}/{d[1]}" if (d := e["datasets"].get(n)) else "-" for n in names]
        table.add_row(e["label"], e["state"], *cells)
    return table


def merge_sweep(root: Path, *, allow_partial: bool = False, metadata: bool | None = None) -> list[Any]:
    from hpcgen.login.merge import merge_all

    out = []
    for run in load_sweep(root)["runs"]:
        out += merge_all(Path(root) / run["dir"], allow_partial=allow_partial, metadata=metadata)
    return out


def write_sweep_report(root: Path, output: Path | None = None) -> Path:
    """Each run's report, and the sweep's page: runs x datasets (progress and scores), linking to them."""
    from hpcgen.login.report import CSS, write_report

    root = Path(root).resolve()
    entries = sweep_status(root)
    scores: dict[str, Any] = {}
    for e in entries:
        if e["state"] != "not submitted":
            write_report(Path(e["run_dir"]))
            path = Path(e["run_dir"]) / "scores.json"
            if path.is_file():
                scores[e["name"]] = atomic.read_json(path)
    names = list(dict.fromkeys(n for e in entries for n in e.get("datasets", {})))
    rows = []
    for e in entries:
        cells = []
        for n in names:
            done = e["datasets"].get(n)
            text = f"{done[0]}/{done[1]} rows" if done else "-"
            text += f"; {_score_cell(scores.get(e['name']), n)}"
            cells.append(f"<td>{html.escape(text)}</td>")
        link = f'<a href="{html.escape(e["name"])}/report.html">{html.escape(e["label"])}</a>'
        rows.append(f"<tr><td>{link}</td><td>{html.escape(e['state'])}</td>{''.join(cells)}</tr>")
    head = "".join(f"<th>{html.escape(n)}</th>" for n in ["run", "state", *names])
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>hpcgen sweep {html.escape(root.name)}"
            f"</title><style>{CSS}</style></head><body><h1>Sweep {html.escape(str(root))}</h1>"
            f"<table id='sweep'><tr>{head}</tr>{''.join(rows)}</table>"
            "<p class='muted'>rows done / total; score: mean@n ± standard error, or across seeds mean ± standard "
            "deviation (hpcgen score SWEEP_DIR)</p></body></html>")
    out = Path(output) if output else root / "report.html"
    atomic.write_bytes(out, page.encode("utf-8"))
    return out


def _score_cell(scores: dict[str, Any] | None, dataset: str) -> str:
    from hpcgen.scoring.report import mean_text, seeds_text

    if not scores:
        return "not scored"
    report = scores["datasets"].get(dataset) if "datasets" in scores else scores
    if not report:
        return "not scored"
    o = report["overall"]
    return seeds_text(o) if "seeds" in o else mean_text(o)
