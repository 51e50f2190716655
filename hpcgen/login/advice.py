"""Shard sizing advice for ``submit --dry-run``, from measured engine start time and throughput.

Workers record what they measured (engine start seconds, rows per second) in a small per-user file keyed by
model and parallelism; without a measurement, conservative defaults are used and said so.
"""

from __future__ import annotations

from hpcgen.rundir.measurements import measured
from hpcgen.spec.schema import JobSpec, time_minutes

DEFAULT_START_S = 90.0
DEFAULT_ROWS_PER_S = 2.0


def sizing_advice(spec: JobSpec, shard_rows: list[int]) -> list[str]:
    m = measured(spec)
    start = m["engine_start_s"] if m else DEFAULT_START_S
    rate = m["rows_per_s"] if m else DEFAULT_ROWS_PER_S
    src = "measured" if m else "default (no measurement yet for this model/settings)"
    per_task = spec.sharding.shards_per_task
    biggest = max(shard_rows) * per_task
    smallest = min(shard_rows) * per_task
    task_s = start + biggest / rate
    gen_small = smallest / rate
    limit_s = time_minutes(spec.slurm.time) * 60
    lines = [f"estimate ({src}): engine start {start:.0f}s, {rate:.2f} rows/s per task -> "
             f"longest task ~{task_s / 60:.1f} min (time limit {limit_s / 60:.0f} min)"]
    if gen_small < 10 * start:
        lines.append(f"warning: tasks generate for ~{gen_small:.0f}s, under 10x the engine start ({start:.0f}s): "
                     "use fewer, larger shards or sharding.shards_per_task > 1")
    if task_s > limit_s:
        lines.append(f"warning: the longest task (~{task_s / 60:.0f} min) outlives slurm.time "
                     f"({limit_s / 60:.0f} min): it will finish through requeues; consider smaller shards")
    return lines
