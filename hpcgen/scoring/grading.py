"""Grading one batch of rows (in this process or in a worker process): per-row checks, the grader(s),
per-data_source sums, and what the per-sample output needs.

**Failed rows.** A row whose ``gen_error`` is set, or whose ``responses`` is null/empty, counts in
``errors`` and scores 0 for every sample: it adds 0 to ``mean``, ``pass@k`` and ``maj@k`` but still
counts in ``rows``. Its ground truth is not looked at and its n does not count towards ``n``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hpcgen.errors import ScoreError
from hpcgen.scoring.graders import GraderSpec, make_grader
from hpcgen.scoring.metrics import Accumulator
from hpcgen.scoring.samples import CORRECT_THRESHOLD, RowScorer, Sample


@dataclass(frozen=True)
class GradeJob:
    """What a batch is graded with: the grader, optionally a second one to compare, and whether the
    per-sample output needs the samples back."""

    grader: GraderSpec
    compare: GraderSpec | None = None
    want_samples: bool = False


@dataclass
class BatchResult:
    rows: int = 0
    samples: int = 0
    by_ds: dict[str, Accumulator] = field(default_factory=dict)
    other_by_ds: dict[str, Accumulator] = field(default_factory=dict)  # the compared grader's sums
    differ: dict[str, int] = field(default_factory=dict)  # samples on which the graders disagree
    rules: dict[str, str] = field(default_factory=dict)
    other_rules: dict[str, str | None] = field(default_factory=dict)  # None: that grader does not know it
    scores: list[list[float]] | None = None
    extracted: list[list[str | None]] | None = None
    disagreements: list[list[dict[str, Any]]] | None = None


def _ground_truth(row: dict[str, Any], index: int, ds: str) -> Any:
    rm = row.get("reward_model")
    if not isinstance(rm, dict) or rm.get("ground_truth") is None:
        raise ScoreError(f"row {index} (data_source {ds!r}): reward_model.ground_truth is missing")
    return rm["ground_truth"]


def _responses(row: dict[str, Any], index: int) -> list[str]:
    responses = row.get("responses")
    if responses is not None and not isinstance(responses, list | tuple):
        raise ScoreError(f"row {index}: responses must be a list of strings, got {type(responses).__name__}")
    return [r if isinstance(r, str) else "" if r is None else str(r) for r in responses or []]


def _grade(grader: RowScorer, ds: str, responses: list[str], truth: Any, row: dict[str, Any],
           index: int) -> list[Sample]:
    try:
        samples = grader.score_row(ds, responses, truth, row.get("extra_info"))
    except ScoreError as exc:
        raise ScoreError(f"row {index} (data_source {ds!r}): {exc}") from exc
    if len(samples) != len(responses):  # our own invariant, not user input
        raise RuntimeError(f"grader returned {len(samples)} results for {len(responses)} responses")
    return samples


def _safe(name: str) -> str:
    return name.replace("-", "_")


def grade_rows(rows: Any, first_index: int, job: GradeJob) -> BatchResult:
    """Grade ``rows`` (a RecordBatch or a list of row dicts) whose first row is row ``first_index``."""
    if not isinstance(rows, list):
        rows = rows.to_pylist()
    grader = make_grader(job.grader)
    other = make_grader(job.compare) if job.compare is not None else None
    res = BatchResult(rows=len(rows))
    if job.want_samples:
        res.scores, res.extracted = [], []
        res.disagreements = [] if other is not None else None
    for offset, row in enumerate(rows):
        index = first_index + offset
        ds = row.get("data_source")
        if not isinstance(ds, str) or not ds:
            raise ScoreError(f"row {index}: data_source is missing or not a string ({ds!r})")
        if ds not in res.rules:
            try:
                res.rules[ds] = grader.rules(ds)
            except ScoreError as exc:
                raise ScoreError(f"row {index}: {exc}") from exc
            if other is not None:
                try:
                    res.other_rules[ds] = other.rules(ds)
                except ScoreError:
                    res.other_rules[ds] = None
        responses = _responses(row, index)
        failed = bool(row.get("gen_error")) or not responses
        acc = res.by_ds.get(ds)
        if acc is None:
            acc = res.by_ds[ds] = Accumulator()
        cmp = other if other is not None and res.other_rules[ds] is not None else None
        if failed:
            samples = [Sample(0.0) for _ in responses]
            acc.add(True, samples)
            if cmp is not None:
                res.other_by_ds.setdefault(ds, Accumulator()).add(True, samples)
            theirs: Sequence[Sample] = samples
        else:
            truth = _ground_truth(row, index, ds)
            samples = _grade(grader, ds, responses, truth, row, index)
            acc.add(False, samples)
            res.samples += len(samples)
            theirs = samples
            if cmp is not None:
                theirs = _grade(cmp, ds, responses, truth, row, index)
                res.other_by_ds.setdefault(ds, Accumulator()).add(False, theirs)
        if cmp is not None and job.compare is not None:
            diff = [i for i, (a, b) in enumerate(zip(samples, theirs, strict=True))
                    if (a.score > CORRECT_THRESHOLD) != (b.score > CORRECT_THRESHOLD)]
            res.differ[ds] = res.differ.get(ds, 0) + len(diff)
            if res.disagreements is not None:
                a_name, b_name = _safe(job.grader.label), _safe(job.compare.label)
                res.disagreements.append([
                    {"sample": i, f"{a_name}_score": samples[i].score, f"{a_name}_extracted": samples[i].extracted,
                     f"{b_name}_score": theirs[i].score, f"{b_name}_extracted": theirs[i].extracted}
                    for i in diff])
        elif res.disagreements is not None:
            res.disagreements.append([])
        if res.scores is not None and res.extracted is not None:
            res.scores.append([s.score for s in samples])
            res.extracted.append([s.extracted for s in samples])
    return res
