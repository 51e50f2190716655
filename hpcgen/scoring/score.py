"""Grade a merged output file (verl columns + ``responses``) and aggregate verl-style metrics.

Input: a ``.parquet`` (read in record batches, so memory stays bounded) or ``.jsonl`` file with the
columns ``responses`` (list of strings, n per row), ``data_source`` (string), ``reward_model`` (struct
with ``ground_truth``), optionally ``extra_info`` (passed to custom scorers) and ``gen_error``.

**Failed rows.** A row whose ``gen_error`` is set, or whose ``responses`` is null/empty, counts in
``errors`` and scores 0 for every sample: it adds 0 to ``mean``, ``pass@k`` and ``maj@k`` but still
counts in ``rows`` (the denominator). Its ground truth is not looked at and its n does not count
towards ``n``. In the per-sample output its ``scores`` are 0.0 for each response it has.

**Metrics** (per data_source and overall; the scorers are described in :mod:`hpcgen.scoring.scorers`):

* ``rows``, ``errors``; ``n`` = the smallest number of samples of a non-failed row (0 if none).
* ``mean``: mean of each row's sample scores, then mean over rows (verl's main_eval).
* ``pass@k`` for k in 1..n: the unbiased estimator 1 - C(n_i - c_i, k) / C(n_i, k) with each row's own
  n_i, averaged over rows; a sample is correct when its score > ``CORRECT_THRESHOLD`` (0.5).
* ``maj@k`` for k in 1..n: majority vote over the extracted answers of each row's FIRST k samples; the
  row counts as correct if the voted answer's first sample is correct. Samples without an extracted
  answer do not vote; if none votes, the row is wrong. Ties go to the answer that appeared first.
  Omitted when the scorer cannot extract answers (a custom scorer not returning ``{"pred": ...}``).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcgen.errors import ScoreError
from hpcgen.rundir import atomic
from hpcgen.scoring.metrics import Accumulator, pass_at_k
from hpcgen.scoring.scorers import (
    CORRECT_THRESHOLD,
    BuiltinScorer,
    RowScorer,
    Sample,
    compute_score,
    gsm8k_extract,
    last_boxed,
    load_custom_scorer,
    math_extract,
)

__all__ = [
    "CORRECT_THRESHOLD",
    "compute_score",
    "format_table",
    "gsm8k_extract",
    "last_boxed",
    "math_extract",
    "pass_at_k",
    "score_file",
    "write_report",
]

REQUIRED_COLUMNS = ("responses", "data_source", "reward_model")
OUTPUT_COLUMNS = ("scores", "extracted")
BATCH_ROWS = 64  # rows per record batch: n long responses each, so keep batches small
PARQUET_SUFFIXES = (".parquet", ".pq")
JSONL_SUFFIXES = (".jsonl", ".ndjson")


# ---------------------------------------------------------------------------------------------- input


@dataclass
class _Batch:
    rows: list[dict[str, Any]]  # the columns scoring needs, one dict per row
    raw: Any = None  # pyarrow RecordBatch (parquet) or the same dicts (jsonl), for per-sample output
    first_index: int = 0


def _fmt(path: Path, what: str) -> str:
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    raise ScoreError(f"{what} {path}: unsupported format {suffix or '(no suffix)'!r}; use .parquet or .jsonl")


def _iter_parquet(path: Path, need_all: bool) -> Iterator[_Batch]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise ScoreError(f"cannot read parquet {path}: {exc}") from exc
    with contextlib.closing(pf):
        names = pf.schema_arrow.names
        for col in REQUIRED_COLUMNS:
            if col not in names:
                raise ScoreError(f"{path} has no {col!r} column (columns: {', '.join(names)})")
        wanted = [*REQUIRED_COLUMNS, *(c for c in ("extra_info", "gen_error") if c in names)]
        columns = None if need_all else wanted
        index = 0
        try:
            for rb in pf.iter_batches(batch_size=BATCH_ROWS, columns=columns):
                rows = rb.select(wanted).to_pylist()
                yield _Batch(rows, rb, index)
                index += len(rows)
        except pa.ArrowException as exc:
            raise ScoreError(f"cannot read parquet {path}: {exc}") from exc


def _iter_jsonl(path: Path) -> Iterator[_Batch]:
    try:
        fh = open(path, encoding="utf-8")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise ScoreError(f"cannot read {path}: {exc}") from exc
    with fh:
        rows: list[dict[str, Any]] = []
        index = 0
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ScoreError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise ScoreError(f"{path}:{lineno}: expected a JSON object per line")
            for col in REQUIRED_COLUMNS:
                if col not in row:
                    raise ScoreError(f"{path}:{lineno}: no {col!r} column")
            rows.append(row)
            if len(rows) >= BATCH_ROWS:
                yield _Batch(rows, rows, index)
                index += len(rows)
                rows = []
        if rows:
            yield _Batch(rows, rows, index)


# --------------------------------------------------------------------------------------------- output


def _strip_null_types(schema: Any) -> Any:
    """Null-typed fields (all-null in the first batch) become strings so later batches can fill them."""
    import pyarrow as pa

    def fix(t: Any) -> Any:
        if pa.types.is_null(t):
            return pa.string()
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return pa.list_(fix(t.value_type))
        if pa.types.is_struct(t):
            return pa.struct([pa.field(f.name, fix(f.type), f.nullable) for f in t])
        return t

    return pa.schema([pa.field(f.name, fix(f.type), f.nullable) for f in schema])


class _ParquetOut:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.writer: Any = None
        self.schema: Any = None

    def write(self, raw: Any, scores: list[list[float]], extracted: list[list[str | None]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        new = {
            "scores": pa.array(scores, type=pa.list_(pa.float64())),
            "extracted": pa.array(extracted, type=pa.list_(pa.string())),
        }
        if isinstance(raw, pa.RecordBatch):
            keep = [name for name in raw.schema.names if name not in OUTPUT_COLUMNS]
            table = pa.Table.from_batches([raw.select(keep)])
        else:  # jsonl rows
            keep_rows = [{k: v for k, v in r.items() if k not in OUTPUT_COLUMNS} for r in raw]
            try:
                table = pa.Table.from_pylist(keep_rows)
            except (pa.ArrowException, TypeError, ValueError) as exc:
                raise ScoreError(f"cannot write per-sample parquet from these rows: {exc}") from exc
        for name, arr in new.items():
            table = table.append_column(name, arr)
        if self.writer is None:
            self.schema = _strip_null_types(table.schema).remove_metadata()
            self.writer = pq.ParquetWriter(self.tmp, self.schema)
        try:
            table = table.cast(self.schema) if table.schema != self.schema else table
        except (pa.ArrowException, ValueError) as exc:
            raise ScoreError(
                f"cannot write per-sample parquet: column types vary between rows ({exc}); "
                "write a .jsonl per-sample output instead"
            ) from exc
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class _JsonlOut:
    def __init__(self, tmp: Path) -> None:
        self.fh = open(tmp, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, raw: Any, scores: list[list[float]], extracted: list[list[str | None]]) -> None:
        rows = raw if isinstance(raw, list) else raw.to_pylist()
        for row, sc, ex in zip(rows, scores, extracted, strict=True):
            out = {k: v for k, v in row.items() if k not in OUTPUT_COLUMNS}
            out["scores"] = sc
            out["extracted"] = ex
            self.fh.write(json.dumps(out, ensure_ascii=False, default=str) + "\n")

    def close(self) -> None:
        self.fh.close()


# ------------------------------------------------------------------------------------------- scoring


def _score_row(scorer: RowScorer, row: dict[str, Any], index: int) -> tuple[bool, list[Sample], str]:
    ds = row.get("data_source")
    if not isinstance(ds, str) or not ds:
        raise ScoreError(f"row {index}: data_source is missing or not a string ({ds!r})")
    responses = row.get("responses")
    if responses is not None and not isinstance(responses, list | tuple):
        raise ScoreError(f"row {index}: responses must be a list of strings, got {type(responses).__name__}")
    responses = [r if isinstance(r, str) else "" if r is None else str(r) for r in responses or []]
    failed = bool(row.get("gen_error")) or not responses
    if failed:
        return True, [Sample(0.0) for _ in responses], ds
    rm = row.get("reward_model")
    if not isinstance(rm, dict) or rm.get("ground_truth") is None:
        raise ScoreError(f"row {index} (data_source {ds!r}): reward_model has no ground_truth")
    try:
        samples = scorer.score_row(ds, responses, rm["ground_truth"], row.get("extra_info"))
    except ScoreError as exc:
        raise ScoreError(f"row {index}: {exc}") from exc
    if len(samples) != len(responses):  # our own invariant, not user input
        raise RuntimeError(f"scorer returned {len(samples)} results for {len(responses)} responses")
    return False, samples, ds


@dataclass
class _Totals:
    overall: Accumulator = field(default_factory=Accumulator)
    by_ds: dict[str, Accumulator] = field(default_factory=dict)


def _run(batches: Iterator[_Batch], scorer: RowScorer, out: Any) -> _Totals:
    totals = _Totals()
    for batch in batches:
        scores: list[list[float]] = []
        extracted: list[list[str | None]] = []
        for offset, row in enumerate(batch.rows):
            failed, samples, ds = _score_row(scorer, row, batch.first_index + offset)
            totals.overall.add(failed, samples)
            totals.by_ds.setdefault(ds, Accumulator()).add(failed, samples)
            scores.append([s.score for s in samples])
            extracted.append([s.extracted for s in samples])
        if out is not None:
            out.write(batch.raw, scores, extracted)
    return totals


def score_file(
    path: Path,
    *,
    custom_path: Path | None = None,
    custom_name: str = "compute_score",
    per_sample_output: Path | None = None,
) -> dict:
    """Score every response in ``path`` and return the report (see the module docstring).

    Returns ``{"overall": {...}, "by_data_source": {ds: {...}}, "input": str(path)}``. With
    ``per_sample_output`` (``.parquet`` or ``.jsonl``), also writes the input's rows plus ``scores``
    (list<float>) and ``extracted`` (list<string>, null where no answer), atomically.
    """
    path = Path(path)
    in_fmt = _fmt(path, "input")
    if not path.is_file():
        raise ScoreError(f"input file not found: {path}")
    scorer: RowScorer = (
        load_custom_scorer(Path(custom_path), custom_name) if custom_path is not None else BuiltinScorer()
    )

    def batches(need_all: bool) -> Iterator[_Batch]:
        return _iter_parquet(path, need_all) if in_fmt == "parquet" else _iter_jsonl(path)

    if per_sample_output is None:
        totals = _run(batches(False), scorer, None)
    else:
        dest = Path(per_sample_output)
        out_fmt = _fmt(dest, "per-sample output")
        if dest.resolve() == path.resolve():
            raise ScoreError(f"per-sample output {dest} must differ from the input file")
        if not dest.parent.is_dir():
            raise ScoreError(f"per-sample output directory does not exist: {dest.parent}")
        with atomic.atomic_path(dest) as tmp:
            out = _ParquetOut(tmp) if out_fmt == "parquet" else _JsonlOut(tmp)
            try:
                totals = _run(batches(True), scorer, out)
                if totals.overall.rows == 0:  # nothing to report: leave no output behind
                    raise ScoreError(f"{path} has no rows")
            finally:
                out.close()

    if totals.overall.rows == 0:
        raise ScoreError(f"{path} has no rows")
    return {
        "overall": totals.overall.result(),
        "by_data_source": {ds: acc.result() for ds, acc in sorted(totals.by_ds.items())},
        "input": str(path),
    }


# --------------------------------------------------------------------------------------------- report


def write_report(report: dict, path: Path) -> None:
    """Write the report as JSON, atomically."""
    atomic.write_bytes(Path(path), (json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode())


def _shown_ks(n: int) -> tuple[list[int], list[int]]:
    if n <= 4:
        ks = list(range(1, n + 1))
        return ks, ks
    return [1, n], [n]


def format_table(report: dict, *, width: int | None = None) -> str:
    """A plain-text table: one line per data_source plus overall.

    ``width`` caps the table (long data_source names then wrap); None renders it at its natural width.
    """
    from rich.console import Console
    from rich.table import Table

    overall = report["overall"]
    pass_ks, maj_ks = _shown_ks(int(overall.get("n", 0)))
    cols = ["mean", *(f"pass@{k}" for k in pass_ks), *(f"maj@{k}" for k in maj_ks)]
    table = Table(title=f"scores: {report.get('input', '')}", title_justify="left")
    table.add_column("data_source", overflow="fold", no_wrap=width is None)
    for name in ("rows", "errors", "n", *cols):
        table.add_column(name, justify="right", no_wrap=True, min_width=len(name))

    def line(name: str, m: dict[str, Any], **style: Any) -> None:
        vals = [str(m.get("rows", "-")), str(m.get("errors", "-")), str(m.get("n", "-"))]
        vals += [f"{m[c]:.4f}" if c in m else "-" for c in cols]
        table.add_row(name, *vals, **style)

    for ds, m in report.get("by_data_source", {}).items():
        line(ds, m)
    table.add_section()
    line("overall", overall, style="bold")
    buf = io.StringIO()
    Console(file=buf, width=width or 10_000, color_system=None, force_terminal=False).print(table)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"
