"""Pacing hooks for tests and benchmarks only (unset in real runs): slow a task down after each engine step.

- ``HPCGEN_TEST_STEP_DELAY_S=SECONDS`` pauses every task, or ``INDEX=SECONDS,...`` the array tasks with those
  indices: a kill, requeue or time limit then lands mid-shard however fast the machine generates.
- ``HPCGEN_TEST_SLOW_ROWS=LO-HI:SECONDS`` pauses while a row in [LO, HI) is in flight, in whichever task runs
  it: rows that cost more (long answers) than the tiny test model can be asked to give.

Pacing never changes samples (per-row seeds).
"""

from __future__ import annotations

import os
import time
from collections.abc import Container
from dataclasses import dataclass


@dataclass
class Pacing:
    step_s: float = 0.0
    slow_rows: range = range(0)
    slow_s: float = 0.0

    @classmethod
    def from_env(cls) -> Pacing:
        value = os.environ.get("HPCGEN_TEST_STEP_DELAY_S") or ""
        if "=" in value:
            per_task = dict(item.split("=", 1) for item in value.split(","))
            step = float(per_task.get(os.environ.get("SLURM_ARRAY_TASK_ID", ""), 0))
        else:
            step = float(value or 0)
        slow = os.environ.get("HPCGEN_TEST_SLOW_ROWS")
        if not slow:
            return cls(step)
        rows, _, secs = slow.partition(":")
        lo, _, hi = rows.partition("-")
        return cls(step, range(int(lo), int(hi)), float(secs))

    def __bool__(self) -> bool:
        return bool(self.step_s or self.slow_s)

    def after_step(self, inflight: Container[int] | dict[int, object]) -> None:
        delay = self.step_s
        if self.slow_s and any(r in self.slow_rows for r in inflight):  # type: ignore[union-attr]
            delay += self.slow_s
        if delay:
            time.sleep(delay)
