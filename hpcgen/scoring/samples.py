"""What every grader returns per response, and the protocol graders follow."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

# A sample counts as correct (for pass@k and maj@k) when its score is above this. Built-in graders give
# 0 or 1 (verl's search-R1 rule also 0.25 for an exact match drowned in <answer> tags, which is not correct).
CORRECT_THRESHOLD = 0.5


class Sample(NamedTuple):
    """One graded response (a NamedTuple: a million of them are made per million samples)."""

    score: float  # what mean@n averages (DAPO rules: 1.0 when verl's ``acc`` is true, else 0.0)
    extracted: str | None = None  # the answer as the grader found it (None: no answer)
    key: str | None = None  # canonical form for majority voting (None: abstains)
    votes: bool = True  # False when the grader cannot extract answers (custom without "pred")
    reward: float | None = None  # the grader's reward when it is not ``score`` (DAPO: +1/-1)


class RowScorer(Protocol):
    def score_row(
        self, data_source: str, responses: Sequence[str], ground_truth: Any, extra_info: Any
    ) -> list[Sample]: ...

    def rules(self, data_source: str) -> str:
        """Which rules grade this data_source (raises ScoreError when none do)."""
        ...

    def uses_extra_info(self, data_source: str) -> bool:
        """Whether ``score_row`` looks at ``extra_info`` for this data_source (else it gets None)."""
        ...
