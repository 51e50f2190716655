"""The score report: JSON (atomically written) and a plain-text table."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from hpcgen.rundir import atomic


def write_report(report: dict, path: Path) -> None:
    """Write the report as JSON, atomically."""
    atomic.write_bytes(Path(path), (json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode())


def _shown_ks(n: int) -> tuple[list[int], list[int]]:
    if n <= 4:
        ks = list(range(1, n + 1))
        return ks, ks
    return [1, n], [n]


def mean_text(m: dict[str, Any] | None) -> str:
    """``0.3312 ± 0.0210`` (mean ± standard error), or the mean alone with one row."""
    if not m:
        return "-"
    if "mean_se" in m:
        return f"{m['mean']:.4f} ± {m['mean_se']:.4f}"
    return f"{m['mean']:.4f}"


def seeds_text(m: dict[str, Any] | None) -> str:
    """``0.3312 ± 0.0210 (se 0.0148, 2 seeds)``: the mean of per-seed means ± their standard deviation."""
    sd = (m or {}).get("seeds")
    if not sd:
        return "-"
    if "std" not in sd:
        return f"{sd['mean']:.4f} ({sd['seeds']} seed)"
    return f"{sd['mean']:.4f} ± {sd['std']:.4f} (se {sd['se']:.4f}, {sd['seeds']} seeds)"


def _ci_text(m: dict[str, Any]) -> str:
    ci = m.get("mean_ci95")
    return f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "-"


def _render(table: Any, width: int | None) -> str:
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=width or 10_000, color_system=None, force_terminal=False).print(table)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"


def _notes(report: dict) -> str:
    lines = [f"{ds}: graded by {m['rules']}" for ds, m in report.get("by_data_source", {}).items()
             if "installed verl package" in str(m.get("rules", ""))]
    return "".join(line + "\n" for line in lines)


def format_table(report: dict, *, width: int | None = None) -> str:
    """A plain-text table: one line per data_source plus overall (``compare`` reports get two graders).

    ``width`` caps the table (long data_source names then wrap); None renders it at its natural width.
    """
    if "compare" in report:
        return format_compare(report, width=width)
    from rich.table import Table

    overall = report["overall"]
    pass_ks, maj_ks = _shown_ks(int(overall.get("n", 0)))
    rewards = "mean_reward" in overall
    cols = [*(["mean_reward"] if rewards else []), *(f"pass@{k}" for k in pass_ks), *(f"maj@{k}" for k in maj_ks)]
    table = Table(title=f"scores (grader: {report.get('grader', '?')}): {report.get('input', '')}",
                  title_justify="left")
    table.add_column("data_source", overflow="fold", no_wrap=width is None)
    seeded = "seeds" in overall
    for name in ("rows", "errors", "n", "mean ± se", "95% CI", *(["across seeds: mean ± sd"] if seeded else []),
                 *cols):
        table.add_column(name, justify="right", no_wrap=True, min_width=len(name))

    def line(name: str, m: dict[str, Any], **style: Any) -> None:
        vals = [str(m.get("rows", "-")), str(m.get("errors", "-")), str(m.get("n", "-")), mean_text(m), _ci_text(m)]
        vals += [seeds_text(m)] if seeded else []
        vals += [f"{m[c]:.4f}" if c in m else "-" for c in cols]
        table.add_row(name, *vals, **style)

    for ds, m in report.get("by_data_source", {}).items():
        line(ds, m)
    table.add_section()
    line("overall", overall, style="bold")
    return _render(table, width) + _notes(report)


def format_compare(report: dict, *, width: int | None = None) -> str:
    """Both graders' mean@n side by side per data_source, and how many samples they disagree on."""
    from rich.table import Table

    cmp = report["compare"]
    a, b = report.get("grader", "?"), cmp.get("grader", "?")
    table = Table(title=f"scores, {a} vs {b}: {report.get('input', '')}", title_justify="left")
    table.add_column("data_source", overflow="fold", no_wrap=width is None)
    for name in ("rows", "n", f"{a} mean ± se", f"{b} mean ± se", "samples differ"):
        table.add_column(name, justify="right", no_wrap=True, min_width=len(name))
    total_differ = 0
    for ds, m in report["by_data_source"].items():
        other = cmp["by_data_source"].get(ds)
        differ = other["samples_differ"] if other else None
        total_differ += differ or 0
        table.add_row(ds, str(m["rows"]), str(m["n"]), mean_text(m),
                      mean_text(other) if other else "- (not graded)", "-" if differ is None else str(differ))
    table.add_section()
    o = report["overall"]
    table.add_row("overall", str(o["rows"]), str(o["n"]), mean_text(o), mean_text(cmp["overall"]),
                  str(total_differ), style="bold")
    note = ""
    if cmp.get("not_graded"):
        note = f"{b} does not grade {', '.join(cmp['not_graded'])}: its overall leaves them out\n"
    return _render(table, width) + note + _notes(report)
