"""Grade a merged output file (verl columns + ``responses``) and aggregate the metrics.

Input: a ``.parquet`` or ``.jsonl`` file with the columns ``responses`` (list of strings, n per row),
``data_source`` (string), ``reward_model`` (struct with ``ground_truth``), optionally ``extra_info``
(passed to custom scorers and verl's own function) and ``gen_error`` (see :mod:`hpcgen.scoring.inputs`).

**Graders** (:mod:`hpcgen.scoring.graders`): ``verl`` (default, verl's ``default_compute_score`` rules,
:mod:`hpcgen.scoring.verl_rules`), ``math-verify`` (lenient, :mod:`hpcgen.scoring.lenient`), or a custom
scorer (:mod:`hpcgen.scoring.custom`). With ``compare``, the other built-in grader grades the same samples.

**Metrics** (per data_source and overall; failed rows as in :mod:`hpcgen.scoring.grading`):

* ``rows``, ``errors``; ``n`` = the smallest number of samples of a non-failed row (0 if none).
* ``mean``: mean of each row's sample scores, then mean over rows (verl's main_eval). For verl's DAPO
  rules the score is ``acc`` (1/0) and ``mean_reward`` is the mean of verl's +1/-1 reward.
* ``mean_se``, ``mean_ci95`` (2+ rows): standard error and 95% interval of ``mean`` across rows
  (:mod:`hpcgen.scoring.metrics`).
* ``seeds`` (a run of several seeds, whose output has ``sample_seed``): mean@n of each seed's samples alone,
  and the mean, standard deviation and standard error of those per-seed means (:mod:`hpcgen.scoring.seeds`).
* ``pass@k`` for k in 1..n: the unbiased estimator 1 - C(n_i - c_i, k) / C(n_i, k) with each row's own
  n_i, averaged over rows; a sample is correct when its score > ``CORRECT_THRESHOLD`` (0.5).
* ``maj@k`` for k in 1..n: majority vote over the extracted answers of each row's FIRST k samples; the
  row counts as correct if the voted answer's first sample is correct. Samples without an extracted
  answer do not vote; if none votes, the row is wrong. Ties go to the answer that appeared first.
  Omitted when the scorer cannot extract answers (a custom scorer not returning ``{"pred": ...}``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hpcgen.errors import ScoreError
from hpcgen.rundir import atomic
from hpcgen.scoring import inputs, outputs, parallel
from hpcgen.scoring.graders import DEFAULT_GRADER, GRADERS, GraderSpec, check_grader_name, make_grader
from hpcgen.scoring.grading import BatchResult, GradeJob
from hpcgen.scoring.metrics import Accumulator
from hpcgen.scoring.report import format_table, write_report
from hpcgen.scoring.seeds import seed_section

__all__ = ["format_table", "score_file", "write_report"]


def _section(label: str, by_ds: dict[str, Accumulator], rules: dict[str, Any], totals: BatchResult | None = None
             ) -> dict[str, Any]:
    overall = Accumulator()
    for ds in sorted(by_ds):
        overall.merge(by_ds[ds])
    by_source: dict[str, dict[str, Any]] = {ds: {"rules": rules[ds], **by_ds[ds].result()} for ds in sorted(by_ds)}
    top = overall.result()
    out: dict[str, Any] = {"grader": label, "overall": top, "by_data_source": by_source}
    if totals is not None and totals.by_seed:  # several seeds: the spread of the per-seed means
        pairs: list[tuple[str | None, dict[str, Any]]] = [(None, top), *by_source.items()]
        for source, entry in pairs:
            section = seed_section(totals.by_seed, totals.seed_failed, source)
            if section is not None:
                entry["seeds"] = section
    return out


def _precheck(path: Path, fmt: str, spec: GraderSpec) -> None:
    """Fail before grading anything when a data_source has no rules (parquet: reads one column)."""
    if fmt != "parquet":
        return
    grader = make_grader(spec)
    for ds, first in sorted(inputs.data_sources(path).items(), key=lambda kv: kv[1]):
        try:
            grader.rules(ds)
        except ScoreError as exc:
            raise ScoreError(f"row {first}: {exc}") from exc


def score_file(
    path: Path,
    *,
    grader: str = DEFAULT_GRADER,
    custom_path: Path | None = None,
    custom_name: str = "compute_score",
    per_sample_output: Path | None = None,
    compare: bool = False,
    workers: int | None = None,
    progress: bool | None = None,
    response_key: str = "responses",
    gen_error_key: str = "gen_error",
    seed_key: str = "sample_seed",
) -> dict:
    """Score every response in ``path`` and return the report (see the module docstring).

    Returns ``{"grader", "overall", "by_data_source", ["compare",] "input"}``. With ``per_sample_output``
    (``.parquet`` or ``.jsonl``), also writes the input's rows plus ``scores``, ``extracted`` (and with
    ``compare`` ``disagreements``), atomically. ``workers``: processes (None: automatic, 1: none);
    ``progress``: a progress bar on stderr (None: for long files when stderr is a terminal).
    ``response_key``/``gen_error_key``: the file's names for those columns (a run's ``merge`` settings).
    """
    path = Path(path)
    fmt = inputs.file_format(path, "input")
    if not path.is_file():
        raise ScoreError(f"input file not found: {path}")
    if custom_path is not None:
        if compare:
            raise ScoreError("--compare compares the two built-in graders; it cannot be used with --custom")
        spec = GraderSpec(custom_path=str(custom_path), custom_name=custom_name)
    else:
        spec = GraderSpec(check_grader_name(grader))
    other = GraderSpec(next(g for g in GRADERS if g != spec.name)) if compare else None
    make_grader(spec)  # a custom scorer that does not load fails here, before any reading
    keys = inputs.Keys(response_key, gen_error_key, seed_key)
    info = inputs.inspect(path, keys)
    _precheck(path, fmt, spec)
    job = GradeJob(spec, other, want_samples=per_sample_output is not None)
    n_workers = parallel.auto_workers(info, job) if workers is None else max(1, int(workers))
    if custom_path is not None:
        n_workers = 1
    show = progress if progress is not None else (sys.stderr.isatty() and parallel.is_long(info))
    totals = BatchResult()

    def run(out: Any) -> None:
        with parallel.progress_bar(show, info.rows, f"grading ({spec.label})") as advance:
            if out is None and fmt == "parquet" and n_workers > 1:  # the workers read the file themselves
                for res in parallel.graded_units(path, keys, job, n_workers, advance):
                    totals.merge(res)
                return
            batches = inputs.iter_file(path, fmt, out is not None, keys)
            for batch, res in parallel.graded(batches, job, n_workers, advance):
                totals.merge(res)
                if out is not None and res.scores is not None and res.extracted is not None:
                    out.write(batch.raw, res.scores, res.extracted, res.disagreements)

    if per_sample_output is None:
        run(None)
    else:
        dest = Path(per_sample_output)
        out_fmt = inputs.file_format(dest, "per-sample output")
        if dest.resolve() == path.resolve():
            raise ScoreError(f"per-sample output {dest} must differ from the input file")
        if not dest.parent.is_dir():
            raise ScoreError(f"per-sample output directory does not exist: {dest.parent}")
        names = (spec.label.replace("-", "_"), other.label.replace("-", "_")) if other else None
        with atomic.atomic_path(dest) as tmp:
            out = outputs.ParquetOut(tmp, names) if out_fmt == "parquet" else outputs.JsonlOut(tmp, names)
            try:
                run(out)
                if totals.rows == 0:  # nothing to report: leave no output behind
                    raise ScoreError(f"{path} has no rows")
            finally:
                out.close()

    if totals.rows == 0:
        raise ScoreError(f"{path} has no rows")
    report: dict[str, Any] = _section(spec.label, totals.by_ds, totals.rules, totals)
    if other is not None:
        graded = {ds: acc for ds, acc in totals.other_by_ds.items() if totals.other_rules.get(ds)}
        cmp = _section(other.label, graded, totals.other_rules)
        for ds, entry in cmp["by_data_source"].items():
            entry["samples_differ"] = totals.differ.get(ds, 0)
        cmp["not_graded"] = sorted(ds for ds in totals.by_ds if not totals.other_rules.get(ds))
        report["compare"] = cmp
    report["input"] = str(path)
    return report
