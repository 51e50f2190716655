"""The run's frozen plan (``manifest.json``): reading it back, and the job spec it holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpcgen.errors import RunDirError
from hpcgen.rundir import atomic
from hpcgen.rundir.layout import FORMAT, RunLayout, is_sweep
from hpcgen.spec.schema import JobSpec


def load_manifest(run_dir: Path) -> dict[str, Any]:
    layout = RunLayout(run_dir)
    if not layout.root.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist")
    try:
        manifest = atomic.read_json(layout.manifest)
    except FileNotFoundError:
        if is_sweep(layout.root):  # hpcgen.login.sweep's folder: status/merge/score/report take it
            runs = sorted(p.name for p in layout.root.iterdir() if (p / "manifest.json").is_file())
            raise RunDirError(f"{run_dir} is a sweep folder: this command takes one of its runs"
                              f"{', e.g. ' + str(layout.root / runs[0]) if runs else ''}") from None
        raise RunDirError(f"{run_dir} is not an hpcgen run directory (no manifest.json)") from None
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{layout.manifest} is unreadable: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise RunDirError(f"{layout.manifest} has unknown format {manifest.get('format')!r}")
    return manifest


def spec_from_manifest(manifest: dict[str, Any]) -> JobSpec:
    return JobSpec.model_validate(manifest["job"])
