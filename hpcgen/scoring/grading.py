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
    by_seed: dict[tuple[str, int], Accumulator] = field(default_factory=dict)  # (data_source, seed): its samples
    seed_failed: dict[str, int] = field(default_factory=dict)  # failed rows, counted for every seed

    def merge(self, other: BatchResult) -> None:
        """Add the sums of rows graded after these (per-sample lists are not merged)."""
        self.rows += other.rows
        self.samples += other.samples
        for key, acc in other.by_seed.items():
            self.by_seed.setdefault(key, Accumulator()).merge(acc)
        for ds, k in other.seed_failed.items():
            self.seed_failed[ds] = self.seed_failed.get(ds, 0) + k
        for mine, theirs in ((self.by_ds, other.by_ds), (self.other_by_ds, other.other_by_ds)):
            for ds, acc in theirs.items():
                mine.setdefault(ds, Accumulator()).merge(acc)
        for ds, k in other.differ.items():
            self.differ[ds] = self.differ.get(ds, 0) + k
        self.rules.update(other.rules)
        self.other_rules.update(other.other_rules)


@dataclass
class _Columns:
    """A batch as columns of Python values (cheaper than one dict per row)."""

    data_source: list[Any]
    responses: list[Any]
    ground_truth: list[Any]  # None where reward_model or its ground_truth is missing
    gen_error: list[Any] | None
    extra: Any  # callable: row offset -> extra_info
    seeds: list[Any] | None = None  # sample_seed: each sample's seed (a run of several seeds)

    @classmethod
    def of(cls, rows: Any) -> _Columns:
        if isinstance(rows, list):  # jsonl: one dict per row
            gts = [rm.get("ground_truth") if isinstance(rm := r.get("reward_model"), dict) else None for r in rows]
            seeds = [r.get("sample_seed") for r in rows] if any(r.get("sample_seed") is not None for r in rows) \
                else None
            return cls([r.get("data_source") for r in rows], [r.get("responses") for r in rows], gts,
                       [r.get("gen_error") for r in rows], lambda i: rows[i].get("extra_info"), seeds)
        import pyarrow as pa
        import pyarrow.compute as pc

        names = rows.schema.names
        rm = rows.column("reward_model")
        if pa.types.is_struct(rm.type) and rm.type.get_field_index("ground_truth") >= 0:
            gts = pc.struct_field(rm, "ground_truth").to_pylist()
        else:
            gts = [None] * rows.num_rows
        extra_col = rows.column("extra_info") if "extra_info" in names else None
        return cls(rows.column("data_source").to_pylist(), rows.column("responses").to_pylist(), gts,
                   rows.column("gen_error").to_pylist() if "gen_error" in names else None,
                   lambda i: None if extra_col is None else extra_col[i].as_py(),
                   rows.column("sample_seed").to_pylist() if "sample_seed" in names else None)


def _responses(responses: Any, index: int) -> list[str]:
    if responses is not None and not isinstance(responses, list | tuple):
        raise ScoreError(f"row {index}: responses must be a list of strings, got {type(responses).__name__}")
    if not responses:
        return []
    if all(type(r) is str for r in responses):
        return responses if isinstance(responses, list) else list(responses)
    return [r if isinstance(r, str) else "" if r is None else str(r) for r in responses]


def _grade(grader: RowScorer, ds: str, responses: list[str], truth: Any, extra: Any,
           index: int) -> list[Sample]:
    try:
        samples = grader.score_row(ds, responses, truth, extra)
    except ScoreError as exc:
        raise ScoreError(f"row {index} (data_source {ds!r}): {exc}") from exc
    if len(samples) != len(responses):  # our own invariant, not user input
        raise RuntimeError(f"grader returned {len(samples)} results for {len(responses)} responses")
    return samples


def _safe(name: str) -> str:
    return name.replace("-", "_")


def grade_rows(rows: Any, first_index: int, job: GradeJob) -> BatchResult:
    """Grade ``rows`` (a RecordBatch or a list of row dicts) whose first row is row ``first_index``."""
    cols = _Columns.of(rows)
    grader = make_grader(job.grader)
    other = make_grader(job.compare) if job.compare is not None else None
    res = BatchResult(rows=len(cols.data_source))
    if job.want_samples:
        res.scores, res.extracted = [], []
        res.disagreements = [] if other is not None else None
    extra_for: dict[str, bool] = {}
    for offset, ds in enumerate(cols.data_source):
        index = first_index + offset
        if type(ds) is not str or ds not in res.rules:
            if not isinstance(ds, str) or not ds:
                raise ScoreError(f"row {index}: data_source is missing or not a string ({ds!r})")
            try:
                res.rules[ds] = grader.rules(ds)
            except ScoreError as exc:
                raise ScoreError(f"row {index}: {exc}") from exc
            extra_for[ds] = grader.uses_extra_info(ds)
            if other is not None:
                try:
                    res.other_rules[ds] = other.rules(ds)
                    extra_for[ds] = extra_for[ds] or other.uses_extra_info(ds)
                except ScoreError:
                    res.other_rules[ds] = None
        responses = _responses(cols.responses[offset], index)
        failed = (cols.gen_error is not None and bool(cols.gen_error[offset])) or not responses
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
            truth = cols.ground_truth[offset]
            if truth is None:
                raise ScoreError(f"row {index} (data_source {ds!r}): reward_model.ground_truth is missing")
            extra = cols.extra(offset) if extra_for[ds] else None
            samples = _grade(grader, ds, responses, truth, extra, index)
            acc.add(False, samples)
            res.samples += len(samples)
            theirs = samples
            if cmp is not None:
                theirs = _grade(cmp, ds, responses, truth, extra, index)
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
        if cols.seeds is not None:
            _by_seed(res, ds, failed, samples, cols.seeds[offset])
        if res.scores is not None and res.extracted is not None:
            res.scores.append([s.score for s in samples])
            res.extracted.append([s.extracted for s in samples])
    return res


def _by_seed(res: BatchResult, ds: str, failed: bool, samples: Sequence[Sample], seeds: Any) -> None:
    """The row's samples grouped by the seed that gave them (``sample_seed``), for per-seed means; a failed row
    counts as failed for every seed (it has no samples to group)."""
    if failed:
        res.seed_failed[ds] = res.seed_failed.get(ds, 0) + 1
        return
    groups: dict[int, list[Sample]] = {}
    for sample, seed in zip(samples, seeds or [], strict=False):
        groups.setdefault(int(seed), []).append(sample)
    for seed, group in groups.items():
        res.by_seed.setdefault((ds, seed), Accumulator()).add(False, group)
