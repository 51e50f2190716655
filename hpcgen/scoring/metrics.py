"""verl-style metrics over scored samples: mean@n, unbiased pass@k, maj@k (see :mod:`hpcgen.scoring.score`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from hpcgen.scoring.scorers import CORRECT_THRESHOLD, Sample


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


@dataclass
class Accumulator:
    """Sums of one group of rows (one data_source, or all): ``add`` each row, ``result`` the metrics."""

    rows: int = 0
    errors: int = 0
    min_n: int | None = None
    mean_sum: float = 0.0
    pass_sum: list[float] | None = None
    maj_sum: list[float] | None = None
    votes: bool = True

    def add(self, failed: bool, samples: Sequence[Sample]) -> None:
        self.rows += 1
        if failed:
            self.errors += 1
            return
        n = len(samples)
        self.min_n = n if self.min_n is None else min(self.min_n, n)
        self.mean_sum += sum(s.score for s in samples) / n
        c = sum(1 for s in samples if s.score > CORRECT_THRESHOLD)
        self.pass_sum = _add_prefix(self.pass_sum, pass_curve(n, c))
        if self.votes and all(s.votes for s in samples):
            self.maj_sum = _add_prefix(self.maj_sum, maj_curve(samples))
        else:
            self.votes = False
            self.maj_sum = None

    def result(self) -> dict[str, Any]:
        n = self.min_n or 0
        rows = self.rows
        out: dict[str, Any] = {"rows": rows, "n": n, "mean": self.mean_sum / rows if rows else 0.0}
        if n and self.pass_sum is not None:
            for k in range(1, n + 1):
                out[f"pass@{k}"] = self.pass_sum[k - 1] / rows
            if self.votes and self.maj_sum is not None:
                for k in range(1, n + 1):
                    out[f"maj@{k}"] = self.maj_sum[k - 1] / rows
        out["errors"] = self.errors
        return out
