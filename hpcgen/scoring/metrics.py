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
from dataclasses import dataclass, field
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
    first_key = samples[0].key if samples else None
    if first_key is not None and all(s.key == first_key for s in samples):  # one answer throughout
        return [1.0 if samples[0].score > CORRECT_THRESHOLD else 0.0] * len(samples)
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
    """Element-wise sum over the common prefix (only k <= min n is ever reported); in place."""
    if acc is None:
        return list(row)
    if len(row) < len(acc):
        del acc[len(row):]
    for i in range(len(acc)):
        acc[i] += row[i]
    return acc


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
    pass_counts: dict[tuple[int, int], int] = field(default_factory=dict)  # (n, correct) -> rows
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
        if self.min_n is None or n < self.min_n:
            self.min_n = n
        total = reward = 0.0
        c = 0
        votes = True
        for s in samples:
            score = s[0]
            total += score
            if score > CORRECT_THRESHOLD:
                c += 1
            r = s[4]
            if r is None:
                reward += score
            else:
                reward += r
                self.has_reward = True
            if not s[3]:
                votes = False
        row_mean = total / n
        self.mean_sum += row_mean
        self._observe(row_mean)
        self.reward_sum += reward / n
        key = (n, c)
        self.pass_counts[key] = self.pass_counts.get(key, 0) + 1
        if self.votes and votes:
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
        for key, count in other.pass_counts.items():
            self.pass_counts[key] = self.pass_counts.get(key, 0) + count
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
        if n and self.pass_counts:
            pass_sum = [0.0] * n
            for (row_n, c), count in sorted(self.pass_counts.items()):
                curve = pass_curve(row_n, c)
                for k in range(n):
                    pass_sum[k] += count * curve[k]
            for k in range(1, n + 1):
                out[f"pass@{k}"] = pass_sum[k - 1] / rows
            if self.votes and self.maj_sum is not None:
                for k in range(1, n + 1):
                    out[f"maj@{k}"] = self.maj_sum[k - 1] / rows
        out["errors"] = self.errors
        return out
