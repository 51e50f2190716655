"""Metrics over graded samples: mean@n with its standard error, unbiased pass@k, maj@k (see
:mod:`hpcgen.scoring.score`).

Error bars are analytic: each row's mean score is one observation; the standard error of mean@n is the
sample standard deviation of the row means (ddof=1) over sqrt(rows), and the 95% confidence interval is
mean +- 1.96 standard errors (normal approximation; needs at least 2 rows). Row means are accumulated with
Welford's update and merged across worker processes with Chan et al.'s formula.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from hpcgen.scoring.samples import CORRECT_THRESHOLD, Sample


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k = 1 - C(n-c, k) / C(n, k), in the stable product form (Chen et al., 2021)."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


@lru_cache(maxsize=4096)
def pass_curve(n: int, c: int) -> tuple[float, ...]:
    """(pass@1, ..., pass@n) for one row, via C(n-c,k+1)/C(n,k+1) = C(n-c,k)/C(n,k) * (n-c-k)/(n-k)."""
    out = []
    ratio = 1.0
    for k in range(n):
        ratio *= max(n - c - k, 0) / (n - k)
        out.append(1.0 - ratio)
    return tuple(out)


def maj_curve(samples: Sequence[Sample]) -> list[float]:
    """(maj@1, ..., maj@n) for one row: 1.0 where the vote over the first k samples is correct."""
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    rep_score: dict[str, float] = {}
    leader: str | None = None
    out = []
    for i, s in enumerate(samples):
        key = s.key
        if key is not None:
            if key not in counts:
                counts[key] = 0
                first[key] = i
                rep_score[key] = s.score
            counts[key] += 1
            # Only ``key``'s count changed, so the leader is the old one or ``key``.
            if (
                leader is None
                or counts[key] > counts[leader]
                or (counts[key] == counts[leader] and first[key] < first[leader])
            ):
                leader = key
        out.append(1.0 if leader is not None and rep_score[leader] > CORRECT_THRESHOLD else 0.0)
    return out


def _add_prefix(acc: list[float] | None, row: Sequence[float]) -> list[float]:
    """Element-wise sum over the common prefix (only k <= min n is ever reported)."""
    if acc is None:
        return list(row)
    m = min(len(acc), len(row))
    return [acc[i] + row[i] for i in range(m)]


Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


@dataclass
class Accumulator:
    """Sums of one group of rows (one data_source, or all): ``add`` each row (or ``merge`` another
    group's sums), ``result`` the metrics."""

    rows: int = 0
    errors: int = 0
    min_n: int | None = None
    mean_sum: float = 0.0
    reward_sum: float = 0.0
    has_reward: bool = False
    pass_sum: list[float] | None = None
    maj_sum: list[float] | None = None
    votes: bool = True
    w_mean: float = 0.0  # Welford: running mean and sum of squared deviations of the row means
    w_m2: float = 0.0

    def _observe(self, x: float) -> None:
        delta = x - self.w_mean
        self.w_mean += delta / self.rows
        self.w_m2 += delta * (x - self.w_mean)

    def add(self, failed: bool, samples: Sequence[Sample]) -> None:
        self.rows += 1
        if failed:
            self.errors += 1
            self._observe(0.0)
            return
        n = len(samples)
        self.min_n = n if self.min_n is None else min(self.min_n, n)
        row_mean = sum(s.score for s in samples) / n
        self.mean_sum += row_mean
        self._observe(row_mean)
        if any(s.reward is not None for s in samples):
            self.has_reward = True
        self.reward_sum += sum(s.score if s.reward is None else s.reward for s in samples) / n
        c = sum(1 for s in samples if s.score > CORRECT_THRESHOLD)
        self.pass_sum = _add_prefix(self.pass_sum, pass_curve(n, c))
        if self.votes and all(s.votes for s in samples):
            self.maj_sum = _add_prefix(self.maj_sum, maj_curve(samples))
        else:
            self.votes = False
            self.maj_sum = None

    def merge(self, other: Accumulator) -> None:
        """Add another group's sums (rows graded elsewhere, e.g. in a worker process)."""
        if other.rows == 0:
            return
        total = self.rows + other.rows
        delta = other.w_mean - self.w_mean
        self.w_m2 += other.w_m2 + delta * delta * self.rows * other.rows / total
        self.w_mean += delta * other.rows / total
        self.rows = total
        self.errors += other.errors
        if other.min_n is not None:
            self.min_n = other.min_n if self.min_n is None else min(self.min_n, other.min_n)
        self.mean_sum += other.mean_sum
        self.reward_sum += other.reward_sum
        self.has_reward = self.has_reward or other.has_reward
        if other.pass_sum is not None:
            self.pass_sum = _add_prefix(self.pass_sum, other.pass_sum)
        self.votes = self.votes and other.votes
        if not self.votes:
            self.maj_sum = None
        elif other.maj_sum is not None:
            self.maj_sum = _add_prefix(self.maj_sum, other.maj_sum)

    def result(self) -> dict[str, Any]:
        n = self.min_n or 0
        rows = self.rows
        mean = self.mean_sum / rows if rows else 0.0
        out: dict[str, Any] = {"rows": rows, "n": n, "mean": mean}
        if rows >= 2:
            se = math.sqrt(max(self.w_m2, 0.0) / (rows - 1) / rows)
            out["mean_se"] = se
            out["mean_ci95"] = [mean - Z95 * se, mean + Z95 * se]
        if self.has_reward:
            out["mean_reward"] = self.reward_sum / rows if rows else 0.0
        if n and self.pass_sum is not None:
            for k in range(1, n + 1):
                out[f"pass@{k}"] = self.pass_sum[k - 1] / rows
            if self.votes and self.maj_sum is not None:
                for k in range(1, n + 1):
                    out[f"maj@{k}"] = self.maj_sum[k - 1] / rows
        out["errors"] = self.errors
        return out
