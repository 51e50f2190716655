"""Measured engine start time and throughput, per model and settings: written by tasks, read by
``submit --dry-run``'s sizing advice. A small per-user file (``$HPCGEN_CACHE`` or ``~/.cache/hpcgen``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hpcgen.rundir import atomic
from hpcgen.spec.schema import JobSpec


def perf_file() -> Path:
    base = os.environ.get("HPCGEN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hpcgen")
    return Path(base) / "measurements.json"


def perf_key(spec: JobSpec) -> str:
    r = spec.rollout
    return f"{spec.model.path}|tp{r.tensor_model_parallel_size}|pp{r.pipeline_model_parallel_size}|" \
           f"n{spec.dataset_entries()[0].n_samples}|len{r.response_length}"


def record_measurement(spec: JobSpec, start_s: float, rows_per_s: float) -> None:
    """Best effort: a worker that cannot write the cache still does its job."""
    path = perf_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data: dict[str, Any] = atomic.read_json(path) if path.is_file() else {}
        data[perf_key(spec)] = {"engine_start_s": round(start_s, 2), "rows_per_s": round(rows_per_s, 4)}
        atomic.write_json(path, data)
    except (OSError, ValueError):
        pass


def measured(spec: JobSpec) -> dict[str, float] | None:
    try:
        return json.loads(perf_file().read_text()).get(perf_key(spec))
    except (OSError, ValueError):
        return None
