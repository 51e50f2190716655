"""The HTML report in a real browser: Debian's headless Chromium (installed by the test set-up when missing,
as SLURM is for the cluster tests; CI fails without it) opens the file, and the test checks that the page
loads with no console errors and no network requests, and that every plot is drawn (its screenshot region
is not blank). A deliberately broken copy proves the checks can fail.
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
from conftest import need
from helpers import hpcgen
from observe_helpers import fresh_observe_run

PLOTS = {"plot-timeline", "plot-throughput", "plot-prompt-lengths", "plot-response-lengths",
         "plot-finish-reasons", "plot-scores"}
SCORES = {"overall": {"rows": 20, "errors": 1, "n": 2, "mean": 0.41, "mean_se": 0.05, "mean_ci95": [0.31, 0.51],
                      "pass@1": 0.41, "pass@2": 0.5, "maj@2": 0.4},
          "by_data_source": {"openai/gsm8k": {"rows": 12, "errors": 1, "n": 2, "mean": 0.5, "mean_se": 0.07,
                                              "mean_ci95": [0.36, 0.64]}}}


@pytest.fixture(scope="module")
def chromium():
    from hpcgen_dev import browser

    try:
        browser.ensure_chromium()
    except Exception as exc:  # noqa: BLE001 - reported as skip/fail
        need(False, f"headless Chromium ({exc})")
    return browser


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("browser")
    run = fresh_observe_run(tmp)
    (run / "scores.json").write_text(json.dumps(SCORES))
    res = hpcgen("report", str(run))
    assert res.returncode == 0, res.stderr
    return Path(res.stdout.strip())


def _problems(result: dict) -> list[str]:
    out = []
    if result["ready"] != "complete":
        out.append(f"page not loaded: {result['ready']}")
    out += [f"console: {e.get('level')} {e.get('message')}" for e in result["console"]]
    out += [f"network request: {r}" for r in result["resources"] if not r.startswith("data:")]
    for pid, p in result["plots"].items():
        if not (p["complete"] and p["w"] > 0 and p["shown_w"] > 0 and p["shown_h"] > 0):
            out.append(f"{pid} not loaded/shown: {p}")
        elif p["drawn_share"] < 0.01 or p["levels"] < 3:
            out.append(f"{pid} is blank: {p}")
    return out


def test_report_loads_with_every_plot_drawn(chromium, report):
    result = chromium.check_page(report)
    assert set(result["plots"]) == PLOTS
    assert _problems(result) == []


def test_the_browser_checks_catch_a_blank_plot_and_a_console_error(chromium, report, tmp_path):
    from PIL import Image

    blank = io.BytesIO()
    Image.new("RGB", (400, 300), "white").save(blank, format="PNG")
    page = report.read_text()
    page = re.sub(r'(id="plot-throughput" alt="[^"]*" src=")[^"]+"',
                  lambda m: m[1] + "data:image/png;base64," + base64.b64encode(blank.getvalue()).decode() + '"', page)
    page = page.replace("</body>", "<script>console.error('boom')</script></body>")
    broken = tmp_path / "broken.html"
    broken.write_text(page)
    problems = _problems(chromium.check_page(broken))
    assert any("plot-throughput is blank" in p for p in problems), problems
    assert any("boom" in p for p in problems), problems
    assert not any("plot-timeline" in p for p in problems)
