"""status figures and --json format, status --watch, hpcgen logs, hpcgen report, and the small faults of
issue 13 (dry-run and local executor without SLURM, override values YAML would cut) — fast, no cluster.
The same features on the real cluster with real vLLM: tests/test_observe_cluster.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from helpers import REPO, hpcgen, part_files
from observe_helpers import ARRAY, STATUS_FIELDS, fresh_observe_run, no_slurm_path, use_executor


@pytest.fixture(scope="module")
def obs_run(tmp_path_factory) -> Path:
    return fresh_observe_run(tmp_path_factory.mktemp("observe"))


def _progress(run: Path) -> dict[str, dict]:
    return {json.loads(p.read_text())["job_id"]: json.loads(p.read_text()) for p in (run / "progress").iterdir()}


def test_progress_records_and_done_marker_counters(obs_run):
    """The worker's counters (written at each flush) equal what the parts hold; done markers carry them."""
    prog = _progress(obs_run)
    assert set(prog) == {f"{ARRAY}_0.r0", f"{ARRAY}_1.r0", f"{ARRAY}_1.r1", f"{ARRAY}_2.r0"}
    assert prog[f"{ARRAY}_1.r0"]["error"] == "RuntimeError: preempted: node reclaimed"
    assert prog[f"{ARRAY}_2.r0"]["error"].startswith("RuntimeError: engine start failed")
    assert prog[f"{ARRAY}_2.r0"]["rows"] == 0 and prog[f"{ARRAY}_2.r0"]["ended"] is not None
    for shard in (0, 1):
        parts = part_files(obs_run, shard)
        t = pa.concat_tables([pq.read_table(p) for p in parts])
        reasons = pc.list_flatten(t.column("finish_reasons")).to_pylist()
        want = {"rows": t.num_rows, "samples": len(reasons), "length": reasons.count("length"),
                "output_tokens": sum(pc.list_flatten(t.column("response_tokens")).to_pylist()),
                "errors": t.num_rows - t.column("gen_error").null_count}
        marker = json.loads((obs_run / "done" / f"s{shard:06d}.json").read_text())
        assert marker["stats"] == want
        by_task = [r["shards"][str(shard)] for r in prog.values() if str(shard) in r["shards"]]
        assert {k: sum(c[k] for c in by_task) for k in want} == want  # which task did which rows, summed
    assert len([r for r in prog.values() if "1" in r["shards"]]) == 2  # shard 1's rows came from two attempts


def test_status_json_carries_every_field(obs_run):
    res = hpcgen("status", str(obs_run), "--json")
    assert res.returncode == 0, res.stderr
    st = json.loads(res.stdout)
    assert STATUS_FIELDS <= set(st), STATUS_FIELDS - set(st)
    assert st["format"] == "hpcgen-status/1"
    prog = _progress(obs_run)
    assert st["rows_generated"] == sum(r["rows"] for r in prog.values())
    assert st["output_tokens"] == sum(r["output_tokens"] for r in prog.values()) > 0
    assert st["finished_length"] == sum(r["length"] for r in prog.values()) > 0
    assert st["length_share"] == pytest.approx(st["finished_length"] / st["samples"])
    errors = sum(pq.read_table(p, columns=["gen_error"]).column(0).null_count * -1 + pq.read_metadata(p).num_rows
                 for p in part_files(obs_run))
    assert st["error_rows"] == errors >= 1  # row 3 is over prompt_length (rows regenerated: none here)
    gpu_h = sum(r["gpus"] * (r["ended"] - r["started"]) for r in prog.values()) / 3600
    assert st["gpu_hours"] == pytest.approx(gpu_h)
    assert {t["job_id"]: t["state"] for t in st["tasks"]} == {
        f"{ARRAY}_0.r0": "done", f"{ARRAY}_1.r0": "requeued", f"{ARRAY}_1.r1": "done", f"{ARRAY}_2.r0": "failed"}
    assert all(t["gpu_hours"] == pytest.approx(t["gpus"] * t["seconds"] / 3600) for t in st["tasks"])
    assert st["counts"] == {"done": 2, "failed": 1}
    assert st["elapsed_seconds"] is not None and st["ended"] is not None  # nothing runs: the clock stopped
    assert st["eta_seconds"] is None and st["rows_per_second"] > 0 and st["tokens_per_second"] > 0
    failed = st["shards"][2]
    assert failed["logs_command"] == f"hpcgen logs {obs_run} 2 --err"
    assert "engine start failed" in failed["last_error"]


def test_status_table_names_the_logs_command(obs_run):
    res = hpcgen("status", str(obs_run))
    assert res.returncode == 0, res.stderr
    assert f"shard 2 failed, its log: hpcgen logs {obs_run} 2 --err\n" in res.stdout
    assert re.search(r"GPU-h", res.stdout) and "cut at response_length" in res.stdout and "elapsed" in res.stdout


def test_runstats_recent_rates_lost_and_running_tasks(tmp_path):
    """Deterministic clock: recent rate over the last saves, a task that died without an end record ends at
    its last save, a running task's GPU time runs to now, a requeued attempt is named so."""
    from hpcgen.login.runstats import gather
    from hpcgen.rundir.layout import RunLayout

    layout = RunLayout(tmp_path)
    (tmp_path / "progress").mkdir()
    now = 10_000.0

    def rec(jid, started, ended, updated, gpus, recent, rows, error=None):
        r = {"format": "hpcgen-progress/1", "job_id": jid, "host": "n1", "gpus": gpus, "started": started,
             "updated": updated, "ended": ended, "error": error, "rows": rows, "samples": 2 * rows,
             "output_tokens": 10 * rows, "length": 1, "errors": 0, "shards": {}, "recent": recent}
        layout.progress(jid).write_text(json.dumps(r))

    rec("7_0.r0", 9000, None, 9800, 4, [[9700, 10, 100], [9800, 30, 300]], 30)  # lost after its last save
    rec("7_1.r0", 9000, 9500, 9500, 2, [[9400, 5, 50]], 5, error="requeued")  # requeued: r1 exists
    rec("7_1.r1", 9600, None, 9990, 2, [[9890, 0, 0], [9990, 50, 500]], 50)  # running
    st = gather(layout, 8000.0, {"7_1"}, True, now=now)
    states = {t.job_id: t.state for t in st.tasks}
    assert states == {"7_0.r0": "lost", "7_1.r0": "requeued", "7_1.r1": "running"}
    secs = {t.job_id: t.seconds for t in st.tasks}
    assert secs == {"7_0.r0": 800, "7_1.r0": 500, "7_1.r1": 400}
    assert st.gpu_hours == pytest.approx((4 * 800 + 2 * 500 + 2 * 400) / 3600)
    # recent: 7_0.r0 saved 20 rows in 100 s (last save 200 s ago, inside the window); 7_1.r1 50 in 100 s
    assert st.rows_per_second_recent == pytest.approx(0.2 + 0.5)
    assert st.tokens_per_second_recent == pytest.approx(2 + 5)
    assert st.active_seconds == pytest.approx(10_000 - 9000)
    assert st.rows_per_second == pytest.approx(85 / 1000)
    assert st.elapsed_seconds == pytest.approx(2000)
    assert st.length_share == pytest.approx(3 / 170)


def test_a_task_marked_dead_reads_requeued_or_lost_never_done(tmp_path):
    """A task SIGKILLed before it could write its end (e.g. requeued while loading its engine) is marked dead by
    its requeued successor or by resume: ``ended`` set, no ``error``; it must not read as done."""
    from hpcgen.login.runstats import gather
    from hpcgen.rundir.layout import RunLayout

    layout = RunLayout(tmp_path)
    (tmp_path / "progress").mkdir()
    base = {"format": "hpcgen-progress/1", "host": "n1", "gpus": 1, "error": None, "rows": 0, "shards": {},
            "recent": []}
    for jid, state, ended in (("8_0.r0", "dead", 120.0), ("8_0.r1", "exited", 200.0), ("8_1.r0", "dead", 150.0)):
        layout.progress(jid).write_text(json.dumps({**base, "job_id": jid, "state": state, "started": 100.0,
                                                    "updated": ended, "ended": ended}))
    states = {t.job_id: t.state for t in gather(layout, 90.0, set(), False, now=300.0).tasks}
    assert states == {"8_0.r0": "requeued", "8_0.r1": "done", "8_1.r0": "lost"}


# --- logs --------------------------------------------------------------------------------------------


def test_logs_default_is_the_failed_shards_latest_attempt(obs_run):
    res = hpcgen("logs", str(obs_run), "--err")
    assert res.returncode == 0, res.stderr
    assert "RuntimeError: engine start failed: CUDA out of memory" in res.stdout
    assert f"shard 2, attempt 1 of 1 (job {ARRAY}_2)" in res.stderr


def test_logs_of_a_requeued_shard_by_attempt(obs_run):
    latest = hpcgen("logs", str(obs_run), "1", "--err")
    first = hpcgen("logs", str(obs_run), "1", "--err", "--attempt", "1")
    out1 = hpcgen("logs", str(obs_run), "1", "--attempt", "1")
    assert latest.returncode == first.returncode == out1.returncode == 0
    assert "all good in r1" in latest.stdout and "preempted" not in latest.stdout
    assert "import noise" in first.stdout and "preempted: node reclaimed" in first.stdout
    assert "all good" not in first.stdout
    assert "out of attempt r0" in out1.stdout and "r1" not in out1.stdout
    assert "attempt 2 of 2" in latest.stderr and "restart 1" in latest.stderr


@pytest.mark.parametrize("args,needle", [(["7"], "shard 7 does not exist"),
                                         (["1", "--attempt", "3"], "--attempt 3: shard 1 has 2 attempt(s)")])
def test_logs_bad_choice_is_one_line(obs_run, args, needle):
    res = hpcgen("logs", str(obs_run), *args)
    assert res.returncode == 2 and needle in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_logs_follow_prints_appended_lines_until_the_attempt_ends(tmp_path):
    import io

    from hpcgen.login.logs import follow

    log = tmp_path / "x.log"
    log.write_text("one\n")
    out = io.StringIO()
    appended = iter(["two\n", "three\n", None, None])
    checks = iter([True, False])

    def sleep(_):
        line = next(appended, None)
        if line:
            with open(log, "a") as fh:
                fh.write(line)

    follow(log, lambda: next(checks), pos=4, out=out, poll=0, check_every=0, sleep=sleep)
    assert out.getvalue() == "two\nthree\n"


# --- watch -----------------------------------------------------------------------------------------


def _sacct_shim(tmp: Path, state: str) -> tuple[dict[str, str], Path]:
    bindir, calls = tmp / "bin", tmp / "sacct-calls"
    bindir.mkdir(exist_ok=True)
    shim = bindir / "sacct"
    shim.write_text(f"#!/bin/sh\necho call >> {calls}\necho '{ARRAY}_2|{state}'\n")
    shim.chmod(0o755)
    (bindir / "squeue").write_text(f"#!/bin/sh\necho '{ARRAY}_2|{state}'\n")  # the controller agrees
    (bindir / "squeue").chmod(0o755)
    calls.write_text("")
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}, calls


@pytest.fixture
def running_run(obs_run, tmp_path):
    """The same run as seen while shard 2 is running (sacct says so, through a shim that counts calls)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(obs_run, run)
    use_executor(run, "slurm")
    env, calls = _sacct_shim(tmp_path, "RUNNING")
    return run, env, calls


def test_watch_plain_lines_one_sacct_call_per_refresh_and_ctrl_c(running_run):
    run, env, calls = running_run
    proc = subprocess.Popen([sys.executable, "-m", "hpcgen", "status", str(run), "--watch", "--interval", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, **env})
    lines = []
    deadline = time.monotonic() + 60
    while len(lines) < 4 and time.monotonic() < deadline:
        lines.append(proc.stdout.readline())
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    lines += rest.splitlines()
    lines = [x for x in lines if x.strip()]
    assert len(lines) >= 4
    assert all(re.match(r"\d\d:\d\d:\d\d \d+/30 rows", x) for x in lines), lines
    assert "running=1" in lines[0] and "\x1b" not in "".join(lines)  # plain text, no terminal codes
    n_calls = len(calls.read_text().splitlines())
    assert 1 <= n_calls <= len(lines) + 1  # at most one sacct per refresh (+ one cut short by Ctrl-C)


def test_watch_ends_by_itself_when_nothing_runs(obs_run):
    res = hpcgen("status", str(obs_run), "--watch", "--interval", "0.2", timeout=60)
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.strip().splitlines()) == 1 and "failed=1" in res.stdout


def test_watch_in_a_terminal_draws_bars_and_restores_it_on_ctrl_c(running_run):
    import pty

    run, env, calls = running_run
    pid, fd = pty.fork()
    if pid == 0:  # the child: hpcgen with the pty as its terminal
        os.environ.update(env)
        os.environ["COLUMNS"] = "150"
        os.execv(sys.executable, [sys.executable, "-m", "hpcgen", "status", str(run), "--watch", "--interval", "0.3"])
    out = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (out.count(b"overall") < 2 or b"task " not in out):
        try:
            out += os.read(fd, 65536)
        except OSError:
            break
    os.kill(pid, signal.SIGINT)
    import select

    deadline, reaped = time.monotonic() + 30, None
    while time.monotonic() < deadline:
        if not select.select([fd], [], [], 1.0)[0]:
            if (reaped := os.waitpid(pid, os.WNOHANG))[0]:
                break
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    else:
        os.kill(pid, signal.SIGKILL)
    _, status = reaped if reaped and reaped[0] else os.waitpid(pid, 0)
    text = out.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text[-2000:]
    assert "overall" in text and "━" in text  # rich progress bars
    assert f"task {ARRAY}_2" in text  # one bar per running task
    assert "Traceback" not in text
    assert "\x1b[?25h" in text  # cursor shown again


def test_watch_interval_over_five_seconds_is_refused(obs_run):
    res = hpcgen("status", str(obs_run), "--watch", "--interval", "9")
    assert res.returncode == 2 and "--interval" in res.stderr


# --- report ----------------------------------------------------------------------------------------


SCORES_PLAIN = {"overall": {"rows": 20, "errors": 1, "n": 2, "mean": 0.41, "mean_se": 0.05,
                            "mean_ci95": [0.31, 0.51], "pass@1": 0.41, "pass@2": 0.5, "maj@2": 0.4},
                "by_data_source": {"openai/gsm8k": {"rows": 12, "errors": 1, "n": 2, "mean": 0.5, "mean_se": 0.07,
                                                    "mean_ci95": [0.36, 0.64], "pass@1": 0.5, "pass@2": 0.6}}}
SCORES_NESTED = {"overall": {"rows": 20, "errors": 1, "n": 2, "mean": {"value": 0.41, "stderr": 0.05},
                             "pass@1": 0.41},
                 "by_data_source": {"x": {"rows": 20, "mean": {"value": 0.41, "se": 0.05, "ci": [0.3, 0.5]}}}}


@pytest.mark.parametrize("scores", [None, SCORES_PLAIN, SCORES_NESTED], ids=["unscored", "siblings", "nested"])
def test_report_is_self_contained_with_every_section(obs_run, tmp_path, scores):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(obs_run, run)
    if scores:
        (run / "scores.json").write_text(json.dumps(scores))
    res = hpcgen("report", str(run), "--output", str(tmp_path / "r.html"))
    assert res.returncode == 0, res.stderr
    page = (tmp_path / "r.html").read_text()
    srcs = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org", "")
    plots = set(re.findall(r'id="plot-([a-z-]+)"', page))
    assert {"timeline", "throughput", "prompt-lengths", "response-lengths", "finish-reasons"} <= plots
    for outcome in ("requeued", "failed", "done"):
        assert f'<tr class="{outcome}">' in page
    assert f"{ARRAY}_1.r0" in page and "preempted: node reclaimed" in page
    assert "shard 1: " in page  # which shard's rows each task did
    assert "over rollout.prompt_length" in page or "too long" in page  # errors by kind, with an example row
    assert "rollout:" in page and "shard table" in page  # the resolved job and the plan
    if scores is None:
        assert "not scored yet" in page
    else:
        assert "plot-scores" in page and "0.4100 ± 0.0500" in page
        if scores is SCORES_PLAIN:
            assert "[0.3100, 0.5100]" in page


def test_report_default_path_and_bad_run_dir(obs_run, tmp_path):
    res = hpcgen("report", str(tmp_path / "nope"))
    assert res.returncode == 2 and "does not exist" in res.stderr
    res = hpcgen("report", str(obs_run))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(obs_run / "report.html")


# --- small faults ----------------------------------------------------------------------------------


def _job(tmp: Path, obs_run: Path) -> Path:
    manifest = json.loads((obs_run / "manifest.json").read_text())
    job = tmp / "job.yaml"
    job.write_text(json.dumps({"defaults": ["model/tiny", "cluster/dev"],
                               "data": {"path": manifest["datasets"][0]["files"][0]["path"]},
                               "model": {"path": manifest["job"]["model"]["path"]},
                               "sharding": {"num_shards": 3}}))
    return job


def test_dry_run_without_slurm_commands_prints_the_same_script(obs_run, tmp_path):
    job = _job(tmp_path, obs_run)
    args = ("submit", str(job), "--dry-run", "--run-dir", str(tmp_path / "run"))
    bare = hpcgen(*args, env={"PATH": no_slurm_path(tmp_path)})
    assert bare.returncode == 0, bare.stderr
    assert "#SBATCH --array=0-2%2" in bare.stdout and "srun --unbuffered" in bare.stdout
    assert hpcgen(*args).stdout == bare.stdout  # with SLURM's commands (if any here): the very same text
    assert not (tmp_path / "run").exists()
    local = hpcgen(*args, "--executor", "local", env={"PATH": str(tmp_path / "noslurm")})
    assert local.returncode == 0, local.stderr
    assert "#SBATCH" not in local.stdout and "local executor: 2 process(es)" in local.stdout


def test_submit_to_slurm_without_its_commands_is_one_line_and_writes_nothing(obs_run, tmp_path):
    job = _job(tmp_path, obs_run)
    res = hpcgen("submit", str(job), "--run-dir", str(tmp_path / "run"), env={"PATH": no_slurm_path(tmp_path)})
    assert res.returncode == 5, res.stderr
    assert "sbatch and srun not found" in res.stderr and len(res.stderr.strip().splitlines()) <= 2
    assert "internal error" not in res.stderr and not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["debug\n#SBATCH --uid=0", "debug #x", "#x", "debug\r"])
def test_override_values_yaml_would_cut_are_refused(obs_run, tmp_path, value):
    job = _job(tmp_path, obs_run)
    res = hpcgen("submit", str(job), f"slurm.partition={value}", "--dry-run")
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "slurm.partition" in res.stderr
    assert "#SBATCH" not in res.stdout


def test_override_with_a_quoted_hash_is_read_as_written():
    from hpcgen.spec.loader import parse_overrides

    assert parse_overrides(["env.X='a #b'"]) == {"env": {"X": "a #b"}}
    assert parse_overrides(["slurm.partition=de#bug"]) == {"slurm": {"partition": "de#bug"}}
