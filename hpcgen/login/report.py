"""``hpcgen report``: one self-contained HTML file (no server, no network, no script; plots are PNG data URIs
drawn with matplotlib's Agg backend) with the run's summary, a timeline of every task attempt per shard, the
tasks and which shard's rows each did, throughput over time, prompt/response length histograms, finish
reasons, errors by kind with example rows, the score table with error bars, and the job and plan.
"""

from __future__ import annotations

import base64
import html
import io
import time
from pathlib import Path
from typing import Any

from hpcgen.login import report_data as rd
from hpcgen.login.state import collect
from hpcgen.login.watch import fmt_secs, summary_line
from hpcgen.rundir import atomic
from hpcgen.rundir.layout import RunLayout
from hpcgen.rundir.manifest import load_manifest

MAX_TIMELINE_SHARDS = 200
COLORS = {"done": "#2e7d32", "requeued": "#ef6c00", "failed": "#c62828", "cancelled": "#757575",
          "running": "#1565c0", "lost": "#6a1b9a"}
CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;
vertical-align:top;font-size:.9em}th{background:#f4f4f4}img.plot{display:block;max-width:100%;margin:.5em 0}
pre{background:#f6f6f6;padding:.8em;overflow:auto;font-size:.85em}.muted{color:#777}
.plots{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
.done{color:#2e7d32}.failed,.lost{color:#c62828}.requeued{color:#ef6c00}"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _img(fig: Any, name: str, alt: str) -> str:
    return f'<img class="plot" id="plot-{_e(name)}" alt="{_e(alt)}" src="{_png(fig)}">'


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def timeline_plot(atts: list[rd.Attempt], t0: float, now: float) -> str:
    plt = _plt()
    shards = sorted({a.shard for a in atts})
    interesting = [s for s in shards if any(a.shard == s and a.outcome != "done" for a in atts)]
    shown = (interesting + [s for s in shards if s not in interesting])[:MAX_TIMELINE_SHARDS]
    shown.sort()
    ypos = {s: i for i, s in enumerate(shown)}
    fig, ax = plt.subplots(figsize=(10, max(2.0, 0.35 * len(shown) + 1.2)))
    seen: set[str] = set()
    for a in atts:
        if a.shard not in ypos:
            continue
        end = a.end if a.end is not None else now
        lo, hi = (a.start - t0) / 60, (max(end, a.start) - t0) / 60
        label = a.outcome if a.outcome not in seen else None
        seen.add(a.outcome)
        ax.barh(ypos[a.shard], max(hi - lo, 0.02), left=lo, height=0.6, color=COLORS.get(a.outcome, "#999"),
                edgecolor="black", linewidth=0.4, label=label)
        if a.outcome in ("failed", "lost", "cancelled"):
            ax.plot(hi, ypos[a.shard], marker="X", color="black", markersize=8)
        elif a.outcome == "requeued":
            ax.plot(hi, ypos[a.shard], marker=">", color="black", markersize=7)
    ax.set_yticks(range(len(shown)), [f"shard {s}" for s in shown])
    ax.invert_yaxis()
    ax.set_xlabel("minutes since the first submission")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18 if len(shown) < 6 else -0.05), ncol=6,
              frameon=False)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("task attempts per shard (X: failed/killed, >: requeued)")
    return _img(fig, "timeline", "timeline of task attempts per shard")


def throughput_plot(events: list[tuple[float, int, int]], t0: float) -> str | None:
    if len(events) < 1:
        return None
    plt = _plt()
    import numpy as np

    times = np.array([e[0] for e in events])
    lo = min(t0, float(times.min()))
    span = max(float(times.max()) - lo, 1.0)
    bins = int(min(60, max(5, len(events))))
    edges = np.linspace(lo, lo + span, bins + 1)
    rows, _ = np.histogram(times, bins=edges, weights=[e[1] for e in events])
    toks, _ = np.histogram(times, bins=edges, weights=[e[2] for e in events])
    width = span / bins
    mid = (edges[:-1] + edges[1:]) / 2
    x = (mid - t0) / 60
    fig, ax = plt.subplots(figsize=(10, 3.2))
    ax.bar(x, rows / width, width=width / 60, color="#1565c0", alpha=0.35, label="rows/s")
    ax.set_xlabel("minutes since the first submission")
    ax.set_ylabel("rows/s", color="#1565c0")
    ax2 = ax.twinx()
    ax2.step(x, toks / width, where="mid", color="#ef6c00", label="output tokens/s")
    ax2.set_ylabel("output tokens/s", color="#ef6c00")
    ax.set_title(f"throughput (saved rows, {bins} bins of {width:.0f} s)")
    ax.grid(alpha=0.3)
    return _img(fig, "throughput", "rows and output tokens per second over time")


def hist_plot(values: list[int], name: str, title: str, xlabel: str, limit: int | None) -> str | None:
    if not values:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(values, bins=min(50, max(5, len(set(values)))), color="#5c6bc0", edgecolor="white")
    alt = title
    if limit and max(values) >= limit / 2:  # the limit line only where it does not squash the data
        ax.axvline(limit, color="#c62828", linestyle="--", label=f"limit {limit}")
        ax.legend(frameon=False)
    elif limit:
        title += f" (limit {limit})"
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    return _img(fig, name, alt)


def reasons_plot(reasons: dict[str, int]) -> str | None:
    if not reasons:
        return None
    plt = _plt()
    items = sorted(reasons.items(), key=lambda kv: -kv[1])
    fig, ax = plt.subplots(figsize=(5, 0.45 * len(items) + 1.2))
    ax.barh([k for k, _ in items], [v for _, v in items], color="#26a69a")
    ax.invert_yaxis()
    total = sum(reasons.values())
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {v} ({100 * v / total:.1f}%)", va="center")
    ax.set_title("finish reasons (per sample)")
    ax.set_xlim(0, max(v for _, v in items) * 1.35)
    return _img(fig, "finish-reasons", "finish reasons per sample")


def scores_section(scores: dict[str, Any]) -> str:
    several = isinstance(scores.get("datasets"), dict)  # a run of several datasets: a line per dataset
    if several:
        scores = {"by_data_source": {n: r.get("overall") for n, r in scores["datasets"].items()}}
    overall = scores.get("overall") or {}
    entries = [(str(ds), e) for ds, e in (scores.get("by_data_source") or {}).items() if isinstance(e, dict)]
    if not several:
        entries.append(("overall", overall))
    first = overall if not several else (entries[0][1] if entries else {})
    metrics = rd.score_metrics(first) if isinstance(first, dict) else []
    head = "".join(f"<th>{_e(m)}</th>" for m in ["dataset" if several else "data_source", "rows", "errors", "n",
                                                 *metrics])
    body = []
    for ds, e in entries:
        cells = [f"<td>{_e(ds)}</td>"] + [f"<td>{_e(e.get(k, ''))}</td>" for k in ("rows", "errors", "n")]
        for m in metrics:
            v = rd.metric_value(e, m)
            if v is None:
                cells.append("<td></td>")
                continue
            txt = f"{v[0]:.4f}" + (f" ± {v[1]:.4f}" if v[1] is not None else "")
            txt += f" [{v[2][0]:.4f}, {v[2][1]:.4f}]" if v[2] else ""
            cells.append(f"<td>{_e(txt)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    out = f"<table><tr>{head}</tr>{''.join(body)}</table>"
    out += '<p class="muted">value ± standard error [95% confidence interval] where scores.json has them.</p>'
    vals = [(ds, v) for ds, e in entries if (v := rd.metric_value(e, "mean")) is not None]
    if vals:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(8, 0.5 * len(vals) + 1.4))
        ys = list(range(len(vals)))
        xerr: Any = None
        if any(v[2] for _, v in vals):
            xerr = [[v[0] - v[2][0] if v[2] else 0 for _, v in vals], [v[2][1] - v[0] if v[2] else 0 for _, v in vals]]
        elif any(v[1] is not None for _, v in vals):
            xerr = [1.96 * (v[1] or 0) for _, v in vals]
        ax.barh(ys, [v[0] for _, v in vals], xerr=xerr, capsize=4, color="#42a5f5", edgecolor="black",
                linewidth=0.4)
        ax.set_yticks(ys, [ds for ds, _ in vals])
        ax.invert_yaxis()
        ax.set_xlim(0, 1.05)
        ax.set_title("mean score per data_source" + (" (95% CI)" if xerr is not None else ""))
        out += _img(fig, "scores", "mean score per data_source with error bars")
    return out


def _table(rows: list[list[Any]], head: list[str] | None, classes: list[str | None] | None = None) -> str:
    h = "<tr>" + "".join(f"<th>{_e(x)}</th>" for x in head) + "</tr>" if head else ""
    body = []
    for i, r in enumerate(rows):
        cls = f' class="{_e(classes[i])}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_e(x)}</td>" for x in r) + "</tr>")
    return f"<table>{h}{''.join(body)}</table>"


def _when(t: float | None, t0: float) -> str:
    return "-" if t is None else f"+{fmt_secs(t - t0)}"


def build_html(run_dir: Path) -> str:
    import yaml

    layout = RunLayout(run_dir)
    manifest = load_manifest(run_dir)
    state = collect(run_dir, manifest)
    now = time.time()
    subs = [atomic.read_json(p) for p in layout.list_submissions()]
    t0 = float(subs[0]["time"]) if subs else float(manifest.get("created") or now)
    atts = rd.attempts(layout, {s.id: s.state for s in state.shards})
    tasks = rd.tasks(layout)
    data = rd.row_data(layout, manifest)
    job = manifest["job"]
    rl = job.get("rollout", {})
    sec: list[str] = [f"<h1>hpcgen run report</h1><p>{_e(layout.root)}<br>"
                      f"<span class=muted>written {_e(time.strftime('%Y-%m-%d %H:%M:%S'))}</span></p>"]
    st = state.stats
    summ: list[list[Any]] = [["state", ", ".join(f"{k}={v}" for k, v in sorted(state.counts.items()))],
            ["rows", f"{state.rows_done}/{state.rows_total}"], ["summary", summary_line(state)]]
    if st is not None:
        summ += [["elapsed", fmt_secs(st.elapsed_seconds)], ["GPU-hours", f"{st.gpu_hours:.3f}"],
                 ["output tokens", st.output_tokens], ["error rows", st.error_rows]]
    sec.append("<h2>Summary</h2>" + _table(summ, None))

    sec.append("<h2>Timeline</h2>")
    if atts:
        sec.append(timeline_plot(atts, t0, now))
        if len({a.shard for a in atts}) > MAX_TIMELINE_SHARDS:
            sec.append(f"<p class=muted>first {MAX_TIMELINE_SHARDS} shards shown, those with trouble first</p>")
        sec.append(_table([[a.shard, a.job_id, a.host or "", _when(a.start, t0), _when(a.end, t0), a.outcome,
                            a.error or ""] for a in atts],
                          ["shard", "attempt", "host", "start", "end", "outcome", "error"],
                          [a.outcome for a in atts]))
    else:
        sec.append("<p>no task has started yet</p>")
    sec.append("<h3>Tasks: which shard's rows each task attempt did</h3>")
    if tasks:
        rows = []
        for r in tasks:
            did = ", ".join(f"shard {k}: {v.get('rows', 0)} rows" for k, v in sorted(
                (r.get("shards") or {}).items(), key=lambda kv: int(kv[0])))
            end = r.get("ended") or r.get("updated")
            rows.append([r.get("job_id"), r.get("host"), r.get("gpus"), _when(r.get("started"), t0), _when(end, t0),
                         r.get("rows"), r.get("output_tokens"), did or "-", r.get("error") or ""])
        sec.append(_table(rows, ["attempt", "host", "GPUs", "start", "last record", "rows", "output tokens",
                                 "rows by shard", "error"]))
    else:
        sec.append("<p class=muted>no progress records (runs before progress records existed have none)</p>")

    sec.append("<h2>Throughput</h2>")
    tp = throughput_plot(rd.throughput(layout, tasks), t0)
    sec.append(tp or "<p>no rows saved yet</p>")

    sec.append(f"<h2>Lengths and finish reasons</h2><p class=muted>from the {_e(data.source)} "
               f"({data.rows} rows)</p>")
    plots = [hist_plot(data.prompt_tokens, "prompt-lengths", "prompt length (tokens, per row)", "tokens",
                       rl.get("prompt_length")),
             hist_plot(data.response_tokens, "response-lengths", "response length (tokens, per sample)",
                       "tokens", rl.get("response_length")),
             reasons_plot(dict(data.finish_reasons))]
    sec.append(f"<div class=plots>{''.join(p for p in plots if p)}</div>" if any(plots) else "<p>no rows saved yet</p>")

    sec.append("<h2>Errors</h2>")
    kinds = rd.error_kinds(data.errors)
    if kinds:
        prompts = rd.prompt_snippets(manifest, [rid for _, _, ex in kinds for rid, _ in ex if rid is not None])
        rows = [[kind, n, "; ".join(f"row {rid}" if rid is not None else "row ?" for rid, _ in ex),
                 ex[0][1], prompts.get(ex[0][0], "") if ex[0][0] is not None else ""] for kind, n, ex in kinds]
        sec.append(_table(rows, ["kind", "rows", "examples", "first message", "first example's prompt"]))
    else:
        sec.append("<p>no row errors</p>")
    failed = [a for a in atts if a.error]
    if failed:
        sec.append("<h3>Task attempts that ended with an error</h3>")
        sec.append(_table([[a.shard, a.job_id, a.outcome, a.error, f"hpcgen logs {layout.root} {a.shard} --err"]
                           for a in failed], ["shard", "attempt", "outcome", "error", "log"]))

    sec.append("<h2>Scores</h2>")
    if layout.scores.is_file():
        try:
            sec.append(scores_section(atomic.read_json(layout.scores)))
        except (OSError, ValueError) as exc:
            sec.append(f"<p>scores.json unreadable: {_e(exc)}</p>")
    else:
        sec.append("<p>not scored yet (hpcgen score, or score.after_merge)</p>")

    sec.append("<h2>Job configuration and plan</h2>")
    sizes = [e - s for s, e in manifest["shards"]]
    plan: list[list[Any]] = [[f"dataset {d['name']}", f"{d.get('given')} ({d.get('rows')} rows in {len(d['files'])} "
                               f"{d.get('kind')} file(s), n_samples {d.get('n_samples')})"]
                              for d in manifest["datasets"]]
    plan += [["seeds", ", ".join(map(str, manifest.get("seeds") or []))],
            ["model", f"{job['model']['path']} (fingerprint {manifest.get('model_fingerprint')})"],
            ["shards", f"{len(sizes)} ({min(sizes)}-{max(sizes)} rows)" if sizes else "0"],
            ["tasks", len(manifest.get("tasks") or [])],
            ["submissions", "; ".join(f"{s.get('kind')} {_when(s.get('time'), t0)} {s.get('executor')} "
                                      f"arrays {','.join(map(str, s.get('arrays', [])))}" for s in subs)]]
    sec.append(_table(plan, None))
    sec.append("<details><summary>resolved job (YAML)</summary><pre>"
               + _e(yaml.safe_dump(job, sort_keys=False, allow_unicode=True)) + "</pre></details>")
    sec.append("<details><summary>shard table</summary>" + _table(
        [[i, s, e, e - s] for i, (s, e) in enumerate(manifest["shards"][:2000])], ["shard", "first row", "end", "rows"])
        + "</details>")
    title = f"hpcgen report: {layout.root.name}"
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>"
            f"<meta name=viewport content='width=device-width, initial-scale=1'><style>{CSS}</style></head>"
            f"<body>{''.join(sec)}</body></html>\n")


def write_report(run_dir: Path, output: Path | None = None) -> Path:
    """Write the report atomically (default RUN_DIR/report.html); returns its path."""
    from hpcgen.rundir.layout import check_writable

    out = Path(output) if output else RunLayout(run_dir).report
    check_writable(out, "--output")
    text = build_html(run_dir)
    atomic.write_bytes(out, text.encode("utf-8"))
    return out.resolve()
