"""What ``hpcgen report`` shows, read from the run directory: attempts (timeline), tasks (which shard's rows
each did), throughput over time, lengths and finish reasons, errors by kind, scores. Unlike ``status``, the
report reads part files (or the merged output when it has the metadata columns).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcgen.login.runstats import job_of
from hpcgen.rundir import atomic
from hpcgen.rundir.layout import RunLayout
from hpcgen.rundir.progress import read_records

META = ["prompt_tokens", "response_tokens", "finish_reasons", "gen_error"]
EXAMPLES = 3


@dataclass
class Attempt:
    shard: int
    job_id: str  # attempt id (job id + ".r<restart>")
    host: str | None
    start: float
    end: float | None
    outcome: str  # done | requeued | failed | cancelled | running | lost
    error: str | None


@dataclass
class RowData:
    source: str  # "merged output <path>" | "part files"
    prompt_tokens: list[int] = field(default_factory=list)
    response_tokens: list[int] = field(default_factory=list)
    finish_reasons: Counter[str] = field(default_factory=Counter)
    errors: list[tuple[int | None, str]] = field(default_factory=list)  # (row id, message)
    rows: int = 0


def outcome_of(rec: dict[str, Any], later_same_job: bool, shard_state: str, done_job: str | None) -> str:
    err = rec.get("error")
    if later_same_job:
        return "requeued"
    if err:
        return "cancelled" if "SIGTERM" in str(err) and shard_state == "cancelled" else "failed"
    if rec.get("ended") is not None or done_job == rec.get("job_id"):
        return "done"
    return "running" if shard_state == "running" and not later_same_job else "failed"


def attempts(layout: RunLayout, shard_states: dict[int, str]) -> list[Attempt]:
    recs: list[dict[str, Any]] = []
    for shard, names in layout.list_attempts().items():
        for n in names:
            try:
                r = atomic.read_json(layout.attempts_dir / n)
            except (OSError, ValueError):
                continue
            r["shard"] = shard
            recs.append(r)
    newest: dict[tuple[int, str], int] = {}
    for r in recs:
        base, k = job_of(str(r.get("job_id")))
        newest[(r["shard"], base)] = max(newest.get((r["shard"], base), k), k)
    done_jobs: dict[int, str | None] = {}
    for shard in layout.list_done():
        try:
            done_jobs[shard] = atomic.read_json(layout.done(shard)).get("job_id")
        except (OSError, ValueError):
            done_jobs[shard] = None
    updated = {str(p.get("job_id")): p.get("updated") for p in read_records(layout)}
    out = []
    for r in recs:
        base, k = job_of(str(r.get("job_id")))
        later = newest[(r["shard"], base)] > k
        state = shard_states.get(r["shard"], "pending")
        o = outcome_of(r, later, state, done_jobs.get(r["shard"]))
        start = float(r.get("started") or 0)
        end = r.get("ended")
        err = r.get("error")
        if end is None and o != "running":  # died without an end record: its last sign of life
            end = _last_seen(layout, str(r.get("job_id")), updated)
            if o == "failed" and not err:
                err = "ended without an end record: killed (SIGKILL, out of memory) or its node was lost; see its log"
        out.append(Attempt(r["shard"], str(r.get("job_id")), r.get("host"), start,
                           float(end) if end is not None else None, o, err))
    out.sort(key=lambda a: (a.shard, a.start))
    return out


def _last_seen(layout: RunLayout, attempt_id: str, updated: dict[str, Any]) -> float | None:
    """The later of the attempt's last progress save and its log's last write (requeues share the log, so
    only the newest attempt of a job uses the log's time)."""
    times = [float(updated[attempt_id])] if updated.get(attempt_id) else []
    base, k = job_of(attempt_id)
    newer = any(job_of(a)[0] == base and job_of(a)[1] > k for a in updated)
    if not newer:
        for err in (False, True):
            try:
                times.append(layout.log(base, err=err).stat().st_mtime)
            except OSError:
                pass
    return max(times) if times else None


def tasks(layout: RunLayout) -> list[dict[str, Any]]:
    """Progress records, oldest first: which shard's rows each task attempt did (the hook for shared work)."""
    return sorted(read_records(layout), key=lambda r: (r.get("started") or 0, str(r.get("job_id"))))


def _read_meta(path: Path) -> Any:
    import pyarrow.parquet as pq

    names = set(pq.ParquetFile(path).schema_arrow.names)
    if not set(META) <= names:
        return None
    cols = META + (["row_id"] if "row_id" in names else [])
    return pq.read_table(path, columns=cols)


def _add(data: RowData, table: Any, first_row: int | None) -> None:
    import pyarrow.compute as pc

    data.rows += table.num_rows
    data.prompt_tokens += [x for x in table.column("prompt_tokens").to_pylist() if x is not None]
    data.response_tokens += [x for x in pc.list_flatten(table.column("response_tokens")).to_pylist() if x is not None]
    data.finish_reasons.update(x or "none" for x in pc.list_flatten(table.column("finish_reasons")).to_pylist())
    errs = table.column("gen_error")
    if errs.null_count < len(errs):
        ids = table.column("row_id").to_pylist() if "row_id" in table.column_names else None
        for i, e in enumerate(errs.to_pylist()):
            if e:
                data.errors.append((ids[i] if ids else (first_row + i if first_row is not None else None), e))


def row_data(layout: RunLayout, manifest: dict[str, Any]) -> RowData:
    """Lengths, finish reasons and errors: the merged output if it is a parquet with hpcgen's metadata
    columns, else every part file."""
    merged = Path(manifest["datasets"][0].get("output_path") or layout.default_output)
    single = len(manifest["blocks"]) == 1  # a merged output's row positions are then run row ids
    if single and merged.suffix == ".parquet" and merged.is_file():
        try:
            table = _read_meta(merged)
        except Exception:  # unreadable or foreign: fall back to the parts
            table = None
        if table is not None:
            data = RowData(f"merged output {merged}")
            _add(data, table, 0)
            return data
    data = RowData("part files")
    for p in layout.all_parts():
        try:
            table = _read_meta(layout.part(p))
        except Exception:  # a part being moved aside or corrupt: the report shows what reads
            continue
        if table is not None:
            _add(data, table, None)
    return data


def throughput(layout: RunLayout, records: list[dict[str, Any]]) -> list[tuple[float, int, int]]:
    """(time, rows, output tokens) events: one per saved part (its mtime; tokens from the progress records'
    saves when they line up, else read from the part), else the progress records' recent saves."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    events: list[tuple[float, int, int]] = []
    for p in layout.all_parts():
        path = layout.part(p)
        try:
            t = path.stat().st_mtime
            tok = pq.read_table(path, columns=["response_tokens"]).column(0)
            n_tok = int(pc.sum(pc.list_flatten(tok)).as_py() or 0)
        except Exception:  # moved aside meanwhile: skip
            continue
        events.append((t, p.rows, n_tok))
    if not events:
        for rec in records:
            prev = (0, 0)
            for t, rows, tok in rec.get("recent") or []:
                events.append((float(t), int(rows) - prev[0], int(tok) - prev[1]))
                prev = (int(rows), int(tok))
    return sorted(events)


_NUM = re.compile(r"\d+")


def error_kinds(errors: list[tuple[int | None, str]]) -> list[tuple[str, int, list[tuple[int | None, str]]]]:
    """Errors grouped by kind (the message with numbers blanked), most frequent first, with a few examples."""
    groups: dict[str, list[tuple[int | None, str]]] = {}
    for rid, msg in errors:
        kind = _NUM.sub("N", msg.split(":")[0] if ":" in msg[:60] else msg)[:120]
        groups.setdefault(kind, []).append((rid, msg))
    return sorted(((k, len(v), v[:EXAMPLES]) for k, v in groups.items()), key=lambda x: -x[1])


def prompt_snippets(manifest: dict[str, Any], row_ids: list[int], limit: int = 300) -> dict[int, str]:
    """The prompts of a few rows (run row ids), read from the dataset (parquet: only the row groups holding them)."""
    import json

    from hpcgen.rundir.sources import row_values

    want = [r for r in row_ids if r is not None]
    try:
        values = row_values(manifest, want)
    except Exception:  # the dataset moved or changed: the report still shows the error messages
        return {}
    return {r: json.dumps(v, ensure_ascii=False, default=str)[:limit] for r, v in values.items()}


# --- scores: tolerate plain numbers and values with standard errors / confidence intervals -----------

_VALUE_KEYS = ("value", "mean", "estimate", "score")
_SE_KEYS = ("se", "stderr", "std_err", "standard_error", "sem")
_CI_KEYS = ("ci95", "ci", "ci_95", "confidence_interval")


def metric_value(entry: dict[str, Any], name: str) -> tuple[float, float | None, tuple[float, float] | None] | None:
    """(value, standard error, (ci low, ci high)) of one metric in a scores.json entry, whichever way it is
    written: ``"mean": 0.5`` with ``"mean_se"``/``"mean_stderr"``/``"mean_ci"`` siblings, or
    ``"mean": {"value": 0.5, "se": 0.1, "ci": [0.3, 0.7]}``."""
    raw = entry.get(name)
    se: Any = None
    ci: Any = None
    if isinstance(raw, dict):
        val = next((raw[k] for k in _VALUE_KEYS if isinstance(raw.get(k), int | float)), None)
        se = next((raw[k] for k in _SE_KEYS if raw.get(k) is not None), None)
        ci = next((raw[k] for k in _CI_KEYS if raw.get(k) is not None), None)
        if ci is None and raw.get("ci_low") is not None and raw.get("ci_high") is not None:
            ci = [raw["ci_low"], raw["ci_high"]]
    else:
        val = raw
        se = next((entry[f"{name}_{k}"] for k in _SE_KEYS if entry.get(f"{name}_{k}") is not None), None)
        ci = next((entry[f"{name}_{k}"] for k in _CI_KEYS if entry.get(f"{name}_{k}") is not None), None)
        lo, hi = entry.get(f"{name}_ci_low"), entry.get(f"{name}_ci_high")
        if ci is None and lo is not None and hi is not None:
            ci = [lo, hi]
    if not isinstance(val, int | float) or isinstance(val, bool):
        return None
    if isinstance(ci, dict):
        ci = [ci.get("low", ci.get("lo")), ci.get("high", ci.get("hi"))]
    ci_t = (float(ci[0]), float(ci[1])) if isinstance(ci, list | tuple) and len(ci) == 2 and None not in ci else None
    return float(val), float(se) if isinstance(se, int | float) else None, ci_t


def score_metrics(entry: dict[str, Any]) -> list[str]:
    """Metric names of an entry: mean first, then pass@k, maj@k, others (counts and annotations left out)."""
    names = []
    for k, v in entry.items():
        if k in ("rows", "errors", "n") or any(k.endswith(f"_{s}") for s in _SE_KEYS + _CI_KEYS):
            continue
        if k.endswith(("_ci_low", "_ci_high")):
            continue
        if isinstance(v, int | float | dict) and not isinstance(v, bool) and metric_value(entry, k) is not None:
            names.append(k)

    def order(k: str) -> tuple[int, int, str]:
        m = re.match(r"(pass|maj)@(\d+)$", k)
        if k == "mean":
            return 0, 0, k
        return (1 if m and m[1] == "pass" else 2, int(m[2]), k) if m else (3, 0, k)

    return sorted(names, key=order)
