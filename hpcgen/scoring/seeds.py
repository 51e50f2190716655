"""The spread across seeds of a run of several seeds (its merged output's ``sample_seed`` column says which
seed gave each sample): mean@n of each seed alone, then the mean, standard deviation and standard error of
those per-seed means.

This is what NVIDIA NeMo-Skills reports for repeated runs (``nemo_skills/evaluation/metrics/base.py``,
``_add_std_metrics``): ``std_dev_across_runs`` is the sample standard deviation (ddof=1) of the per-run
averages and ``std_err_across_runs`` that over sqrt(runs). Here a "run" is one seed's samples. The grading
rules are those of the grader; only the grouping is added. A failed row scores 0 for every seed.
"""

from __future__ import annotations

import math
from typing import Any

from hpcgen.scoring.metrics import Accumulator


def _per_seed(by_seed: dict[tuple[str, int], Accumulator], seed_failed: dict[str, int], ds: str | None
              ) -> dict[int, Accumulator]:
    out: dict[int, Accumulator] = {}
    for (d, seed), acc in by_seed.items():
        if ds is None or d == ds:
            out.setdefault(seed, Accumulator()).merge(acc)
    failed = sum(seed_failed.values()) if ds is None else seed_failed.get(ds, 0)
    for acc in out.values():
        for _ in range(failed):
            acc.add(True, [])
    return out


def spread(means: list[float]) -> dict[str, Any]:
    """mean, std (ddof=1) and std-err of per-seed means (std and se from 2 seeds on)."""
    k = len(means)
    mean = sum(means) / k
    out: dict[str, Any] = {"seeds": k, "mean": mean}
    if k >= 2:
        std = math.sqrt(sum((m - mean) ** 2 for m in means) / (k - 1))
        out.update(std=std, se=std / math.sqrt(k))
    return out


def seed_section(by_seed: dict[tuple[str, int], Accumulator], seed_failed: dict[str, int],
                 ds: str | None) -> dict[str, Any] | None:
    """``{"per_seed": {seed: mean@n}, "seeds", "mean", "std", "se"}`` for one data_source (None: overall)."""
    accs = _per_seed(by_seed, seed_failed, ds)
    if len(accs) < 2:
        return None
    per_seed = {str(s): accs[s].result()["mean"] for s in sorted(accs)}
    return {"per_seed": per_seed, **spread(list(per_seed.values()))}
