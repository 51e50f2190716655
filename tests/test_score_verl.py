"""The ``verl`` grader (the default) and what ``score`` does around the graders: the rules by example,
unknown and verl-package-only data sources, bad input, --compare, error bars, worker processes, job files."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import hpcgen

from hpcgen.errors import ScoreError
from hpcgen.rundir.layout import FORMAT
from hpcgen.scoring.lenient import MathVerifyGrader
from hpcgen.scoring.score import score_file
from hpcgen.scoring.verl_rules import VerlGrader, compute_score

REPO = Path(__file__).resolve().parents[1]
GSM, MATH, DAPO = "openai/gsm8k", "lighteval/MATH", "math_dapo"
PAST_300 = "#### 18" + "\nThat is all." * 25  # the answer is more than 300 characters before the end

# ------------------------------------------------------------------------------------- rules by example


@pytest.mark.parametrize(("ds", "response", "truth", "score"), [
    (GSM, "so #### 18", "18", 1.0),
    (GSM, "#### 1,234", "1234", 1.0),  # commas removed
    (GSM, "#### 18.00", "18", 0.0),  # compared as strings
    (GSM, "#### $18", "18", 0.0),  # "$" right after "#### " is not a number
    (GSM, "The answer is 18.", "18", 0.0),  # no fallback
    (GSM, "####18", "18", 0.0),  # "#### " needs its space
    (GSM, "#### 17\n#### 18", "18", 1.0),  # the last one
    (GSM, PAST_300, "18", 0.0),
    (GSM, "#### 18", 18, 1.0),  # a JSON number ground truth is compared as its text
    (MATH, r"$\boxed{\dfrac{1}{2}}$", r"\frac{1}{2}", 1.0),
    (MATH, r"\boxed{0.5}", r"\frac{1}{2}", 1.0),  # strip_string turns "0.5" into \frac{1}{2}
    (MATH, r"\boxed{\frac{2}{4}}", r"\frac{1}{2}", 0.0),
    (MATH, r"\boxed{90^\circ}", "90", 1.0),
    (MATH, r"\boxed{10\text{ cm}}", "10", 1.0),
    (MATH, r"\boxed{50\%}", "50", 1.0),
    (MATH, r"\boxed{(0,1]}", "(0, 1]", 1.0),
    (MATH, r"\boxed{x = 3}", "3", 1.0),
    (MATH, r"\fbox{3}", "3", 0.0),
    (MATH, r"\boxed{3", "3", 0.0),  # unclosed
    (MATH, r"\boxed{1} then \boxed{\boxed{2}}", "2", 1.0),  # the last "\boxed" to start is the inner one
    (MATH, r"\boxed 5$ and more", "5", 1.0),
    (DAPO, "Answer: 5", "5", 1.0),
    (DAPO, "answer : 1,000", "1000", 1.0),
    (DAPO, "Answer: 30 degrees", "30", 1.0),
    (DAPO, "Answer: 5\nAnswer: 6", "5", 0.0),
    (DAPO, r"so \boxed{5}", "5", 1.0),  # no Answer: line, a box in the last 100 characters
    (DAPO, r"so \boxed{5}" + " " * 100, "5", 0.0),
    ("aime2024", "Answer: 204", "204", 1.0),
    ("searchR1_nq", "<answer>the Beatles!</answer>", {"target": ["Beatles"]}, 1.0),
    ("searchR1_nq", "<answer>x</answer><answer>NYC</answer>", {"target": ["New York City", "NYC"]}, 1.0),
    ("searchR1_nq", "<answer>Paris</answer>" * 11, {"target": ["Paris"]}, 0.25),
    ("searchR1_nq", "Paris", {"target": ["Paris"]}, 0.0),
])
def test_verl_rules(ds, response, truth, score):
    assert compute_score(ds, response, truth) == score


def test_dapo_reports_acc_and_reward():
    right, wrong = VerlGrader().score_row("math_dapo", ["Answer: 5", "Answer: 6"], "5")
    assert (right.score, right.reward, right.extracted) == (1.0, 1.0, "5")
    assert (wrong.score, wrong.reward, wrong.extracted) == (0.0, -1.0, "6")


# Where the two graders differ (the README's table shows exactly these rows).
DIFFER = [
    (GSM, "18", "#### 18.00", "`#### 18.00`", 0.0, 1.0),
    (GSM, "1234", "The answer is 1,234.", "`The answer is 1,234.`", 0.0, 1.0),
    (GSM, "18", "#### $18", "`#### $18`", 0.0, 1.0),
    (GSM, "18", PAST_300, "`#### 18` then 300 more characters", 0.0, 1.0),
    (MATH, r"\frac{1}{2}", r"\boxed{\frac{2}{4}}", r"`\boxed{\frac{2}{4}}`", 0.0, 1.0),
    (MATH, r"\frac{\sqrt{2}}{2}", r"\boxed{\frac{1}{\sqrt{2}}}", r"`\boxed{\frac{1}{\sqrt{2}}}`", 0.0, 1.0),
    (MATH, "3", r"\boxed{3.0}", r"`\boxed{3.0}`", 0.0, 1.0),
    (MATH, "1,000", r"\boxed{1000}", r"`\boxed{1000}`", 0.0, 1.0),
    (MATH, "3", r"\fbox{3}", r"`\fbox{3}`", 0.0, 1.0),
    (DAPO, "5", "Answer: 5", "`Answer: 5`", 1.0, 0.0),
]


@pytest.mark.parametrize(("ds", "truth", "response", "shown", "verl", "lenient"), DIFFER)
def test_where_the_graders_differ_as_the_readme_says(ds, truth, response, shown, verl, lenient):
    assert VerlGrader().score_row(ds, [response], truth)[0].score == verl
    assert MathVerifyGrader().score_row(ds, [response], truth)[0].score == lenient
    row = f"| `{ds}` | `{truth}` | {shown} | {verl:g} | {lenient:g} |"
    assert row in (REPO / "README.md").read_text(), row


# ------------------------------------------------------------------------------------------------ files


def records(rows):
    return [{"data_source": ds, "responses": responses, "reward_model": {"style": "rule", "ground_truth": truth},
             "extra_info": {"index": i}} for i, (ds, truth, responses) in enumerate(rows)]


def jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records(rows)))
    return path


def parquet(path: Path, rows) -> Path:
    pq.write_table(pa.Table.from_pylist(records(rows)), path, row_group_size=3)
    return path


ROWS = [
    (GSM, "18", ["#### 18", "#### 18.00", "The answer is 18", "#### 18"]),
    (GSM, "7", ["#### 7", "#### 7", "#### 7", "#### 8"]),
    (GSM, "5", ["#### 4", "#### 6", "#### 5", "five"]),
    (MATH, r"\frac{1}{2}", [r"\boxed{0.5}", r"\boxed{\frac{2}{4}}", r"\boxed{1/2}", "no box"]),
    (MATH, "3", [r"\boxed{3}", r"\fbox{3}", r"\boxed{3.0}", r"\boxed{3}"]),
    (DAPO, "5", ["Answer: 5", r"\boxed{5}", "Answer: 6", "nothing"]),
    (DAPO, "12", ["Answer: 12", "Answer: 12", "Answer: 12", "Answer: 13"]),
]


def test_error_bars_per_data_source_and_overall(tmp_path):
    report = score_file(parquet(tmp_path / "m.parquet", ROWS))
    per_row = {GSM: [0.5, 0.75, 0.25], MATH: [0.5, 0.5], DAPO: [0.5, 0.75]}
    for ds, means in [*per_row.items(), ("overall", [m for v in per_row.values() for m in v])]:
        got = report["overall"] if ds == "overall" else report["by_data_source"][ds]
        se = statistics.stdev(means) / math.sqrt(len(means))
        assert got["mean"] == pytest.approx(statistics.fmean(means), abs=1e-12), ds
        assert got["mean_se"] == pytest.approx(se, abs=1e-12), ds
        assert got["mean_ci95"] == pytest.approx([got["mean"] - 1.96 * se, got["mean"] + 1.96 * se], abs=1e-4)
    assert report["by_data_source"][DAPO]["mean_reward"] == pytest.approx((0.0 + 0.5) / 2)
    assert "mean_reward" not in report["by_data_source"][GSM]
    one = score_file(parquet(tmp_path / "one.parquet", ROWS[:1]))
    assert "mean_se" not in one["overall"] and "mean_ci95" not in one["overall"]  # one row: no spread


def test_table_shows_grader_mean_se_and_ci(tmp_path):
    src = parquet(tmp_path / "m.parquet", ROWS)
    res = hpcgen("score", str(src))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "grader: verl" in out and "mean ± se" in out and "95% CI" in out and "mean_reward" in out
    overall = next(line for line in out.splitlines() if "overall" in line)
    report = json.loads(Path(str(src) + ".scores.json").read_text())
    o = report["overall"]
    assert f"{o['mean']:.4f} ± {o['mean_se']:.4f}" in overall
    assert f"[{o['mean_ci95'][0]:.4f}, {o['mean_ci95'][1]:.4f}]" in overall
    assert report["grader"] == "verl" and report["by_data_source"][GSM]["rules"].startswith("verl gsm8k")


def _same(a, b):
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-15)
    else:
        assert a == b


@pytest.mark.parametrize("row_group", [3, 1000])  # many row groups, or one split between the workers
def test_workers_give_the_same_report_and_per_sample_output(tmp_path, row_group, monkeypatch):
    from hpcgen.scoring import inputs

    monkeypatch.setattr(inputs, "MAX_BATCH_ROWS", 16)  # several batches per row group, shared by workers
    src = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(records(ROWS * 30)), src, row_group_size=row_group)
    one = score_file(src, workers=1, per_sample_output=tmp_path / "a.parquet", compare=True)
    two = score_file(src, workers=2, per_sample_output=tmp_path / "b.parquet", compare=True)
    _same(one, two)
    assert pq.read_table(tmp_path / "a.parquet").equals(pq.read_table(tmp_path / "b.parquet"))
    _same(score_file(src, workers=1), score_file(src, workers=2))  # workers reading their own shares
    _same(score_file(src, workers=1, compare=True), score_file(src, workers=3, compare=True))


def test_parquet_units_cover_every_row_once(tmp_path, monkeypatch):
    from hpcgen.scoring import inputs
    from hpcgen.scoring.inputs import iter_unit, parquet_units

    monkeypatch.setattr(inputs, "MAX_BATCH_ROWS", 16)
    for row_group in (3, 7, 1000):
        src = tmp_path / f"m{row_group}.parquet"
        pq.write_table(pa.Table.from_pylist(records(ROWS * 30)), src, row_group_size=row_group)
        for workers in (2, 3):
            units = parquet_units(src, workers, inputs.Keys())
            seen = [(b.first_index, b.count) for u in units for b in iter_unit(u)]
            rows = sorted(i for first, count in seen for i in range(first, first + count))
            assert rows == list(range(len(ROWS) * 30))
            assert sum(u.rows for u in units) == len(ROWS) * 30
            if row_group == 1000:
                assert [u.part for u in units] == list(range(workers))  # one row group, split in shares


def test_progress_bar_on_stderr(tmp_path, capfd):
    score_file(parquet(tmp_path / "m.parquet", ROWS), progress=True)
    err = capfd.readouterr().err
    assert "grading (verl)" in err and "7/7" in err


def test_compare_side_by_side_and_per_sample_disagreements(tmp_path):
    src = jsonl(tmp_path / "m.jsonl", [*ROWS, ("searchR1_nq", {"target": ["Paris"]}, ["<answer>Paris</answer>"])])
    out = tmp_path / "scored.jsonl"
    res = hpcgen("score", str(src), "--compare", "--per-sample", str(out), "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    cmp = report["compare"]
    assert report["grader"] == "verl" and cmp["grader"] == "math-verify"
    assert cmp["not_graded"] == ["searchR1_nq"]  # math-verify has no rules for it
    assert cmp["by_data_source"][GSM]["mean"] > report["by_data_source"][GSM]["mean"]
    assert cmp["by_data_source"][GSM]["samples_differ"] == 2
    assert cmp["by_data_source"][DAPO]["samples_differ"] == 4  # "Answer: ..." lines: verl reads them, math-verify not
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[0]["disagreements"] == [
        {"sample": 1, "verl_score": 0.0, "verl_extracted": "18.00",
         "math_verify_score": 1.0, "math_verify_extracted": "18"},
        {"sample": 2, "verl_score": 0.0, "verl_extracted": None,
         "math_verify_score": 1.0, "math_verify_extracted": "18"}]
    assert lines[5]["disagreements"] == [
        {"sample": 0, "verl_score": 1.0, "verl_extracted": "5", "math_verify_score": 0.0,
         "math_verify_extracted": None}]
    assert lines[1]["disagreements"] == []
    table = hpcgen("score", str(src), "--compare").stdout
    assert "verl mean ± se" in table and "math-verify mean ± se" in table and "samples differ" in table
    assert "- (not graded)" in table


# -------------------------------------------------------------------------------------------- bad input


def _fails(tmp_path: Path, *args: str, match: str) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    res = hpcgen("score", *args, "--per-sample", str(tmp_path / "per.parquet"))
    assert res.returncode == 2, res.stderr
    err = res.stderr.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert match in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    no_responses = tmp_path / "nr.parquet"
    pq.write_table(pa.Table.from_pylist([{"data_source": GSM, "reward_model": {"ground_truth": "1"}}]), no_responses)
    _fails(tmp_path, str(no_responses), match="no 'responses' column")
    nr = tmp_path / "nr.jsonl"
    nr.write_text(json.dumps({"data_source": GSM, "reward_model": {"ground_truth": "1"}}) + "\n")
    _fails(tmp_path, str(nr), match="nr.jsonl:1: no 'responses' column")
    bad = tmp_path / "nt.jsonl"
    bad.write_text(json.dumps({"data_source": GSM, "responses": ["#### 1"], "reward_model": {"style": "rule"}}) + "\n")
    _fails(tmp_path, str(bad), match="row 0 (data_source 'openai/gsm8k'): reward_model.ground_truth is missing")
    listy = jsonl(tmp_path / "lt.jsonl", [(GSM, "1", ["#### 1"]), (GSM, ["1"], ["#### 1"])])
    _fails(tmp_path, str(listy), match="row 1 (data_source 'openai/gsm8k'): reward_model.ground_truth must be")
    qa = jsonl(tmp_path / "qa.jsonl", [("searchR1_nq", "Paris", ["<answer>Paris</answer>"])])
    _fails(tmp_path, str(qa), match="row 0 (data_source 'searchR1_nq'): reward_model.ground_truth must be {'target'")
    unknown = parquet(tmp_path / "unk.parquet", [(GSM, "1", ["#### 1"]), ("acme/riddles", "1", ["1"])])
    _fails(tmp_path, str(unknown), match="row 1: the verl grader does not know data_source 'acme/riddles'")
    _fails(tmp_path, str(unknown), "--grader", "nope", match="--grader: unknown grader 'nope'")


def test_unknown_data_source_names_the_graders_and_custom():
    with pytest.raises(ScoreError) as info:
        compute_score("acme/riddles", "1", "1")
    msg = str(info.value)
    assert "'acme/riddles'" in msg and "--grader math-verify" in msg and "--custom" in msg
    assert "openai/gsm8k" in msg and "searchR1_nq" in msg


def test_verl_only_sources_need_verl_installed(tmp_path):
    src = jsonl(tmp_path / "n.jsonl", [("numina_olympiads", "2", [r"\boxed{2}"])])
    res = hpcgen("score", str(src))
    assert res.returncode == 2
    err = res.stderr.strip()
    assert "numina_olympiads" in err and "install verl" in err and "--custom" in err and "\n" not in err


STUB = '''
def default_compute_score(data_source, solution_str, ground_truth, extra_info=None, **kw):
    assert extra_info == {"index": 0}
    ok = solution_str.strip() == "\\\\boxed{" + ground_truth + "}"
    return {"score": 1.0 if ok else -1.0, "acc": ok, "pred": solution_str.strip()[7:-1]}
'''


def test_verl_only_sources_use_the_installed_verl(tmp_path):
    # A stand-in verl package (the real one pulls torch and Ray): its default_compute_score grades the row.
    pkg = tmp_path / "site" / "verl" / "utils" / "reward_score"
    pkg.mkdir(parents=True)
    for d in (pkg.parent.parent, pkg.parent):
        (d / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text(STUB)
    src = jsonl(tmp_path / "n.jsonl", [("numina_olympiads", "2", [r"\boxed{2}", r"\boxed{3}"])])
    env = {"PYTHONPATH": f"{REPO}:{tmp_path / 'site'}"}
    res = hpcgen("score", str(src), "--json", env=env)
    assert res.returncode == 0, res.stderr
    m = json.loads(res.stdout)["by_data_source"]["numina_olympiads"]
    assert m["rules"] == "the installed verl package's default_compute_score"
    assert (m["mean"], m["mean_reward"], m["pass@2"]) == (0.5, 0.0, 1.0)
    table = hpcgen("score", str(src), env=env).stdout
    assert "numina_olympiads: graded by the installed verl package's default_compute_score" in table


def test_job_file_grader_is_used_for_a_run_dir(tmp_path):
    merged = parquet(tmp_path / "out.parquet", ROWS[:3])
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"format": FORMAT, "job": {
        "data": {"output_path": str(merged)}, "score": {"grader": "math-verify"}},
        "datasets": [{"name": "data", "kind": "parquet", "output_path": str(merged)}]}))
    res = hpcgen("score", str(run), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["grader"] == "math-verify"
    assert json.loads((run / "scores.json").read_text())["grader"] == "math-verify"
    res = hpcgen("score", str(run), "--json", "--grader", "verl")
    assert json.loads(res.stdout)["grader"] == "verl"


def test_job_file_rejects_an_unknown_grader(tmp_path):
    from hpcgen.errors import ConfigError
    from hpcgen.spec.schema import JobSpec

    base = {"data": {"path": "x.parquet"}, "model": {"path": "m"}}
    assert JobSpec.model_validate(base).score.grader == "verl"
    with pytest.raises(Exception) as info:  # pydantic's error, turned into ConfigError by the loader
        JobSpec.model_validate({**base, "score": {"grader": "lenient"}})
    assert "grader" in str(info.value) and not isinstance(info.value, ConfigError | AssertionError)


def test_scoring_imports_no_heavy_package(tmp_path):
    src = parquet(tmp_path / "m.parquet", ROWS)
    code = ("import sys; from hpcgen.scoring.score import score_file; score_file(sys.argv[1], compare=True, "
            "workers=1); bad = [m for m in ('torch', 'vllm', 'ray', 'transformers', 'verl') if m in sys.modules]; "
            "print(bad)")
    res = subprocess.run([sys.executable, "-c", code, str(src)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_renamed_columns_of_a_run_are_the_ones_graded(tmp_path):
    # merge.response_key / metadata_prefix rename the generated columns when the input already has them:
    # score must grade the generated ones, not the input's own 'responses'.
    recs = [{"data_source": GSM, "responses": ["#### 1"], "answers": ["#### 2", "#### 2"],
             "gen_gen_error": None, "reward_model": {"style": "rule", "ground_truth": "2"}},
            {"data_source": GSM, "responses": ["#### 2"], "answers": ["#### 2"], "gen_gen_error": "oom",
             "reward_model": {"style": "rule", "ground_truth": "2"}}]
    merged = tmp_path / "out.parquet"
    pq.write_table(pa.Table.from_pylist(recs), merged)
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"format": FORMAT, "job": {
        "data": {"output_path": str(merged)}, "merge": {"response_key": "answers", "metadata_prefix": "gen_"}},
        "datasets": [{"name": "data", "kind": "parquet", "output_path": str(merged)}]}))
    for workers in ("1", "2"):
        res = hpcgen("score", str(run), "--json", "--workers", workers)
        assert res.returncode == 0, res.stderr
        overall = json.loads(res.stdout)["overall"]
        assert (overall["mean"], overall["errors"], overall["n"]) == (0.5, 1, 2)
    res = hpcgen("score", str(merged), "--json", "--response-key", "answers")
    assert json.loads(res.stdout)["overall"]["mean"] == 1.0  # a file: no gen_gen_error, both rows graded
    res = hpcgen("score", str(merged), "--json")
    assert json.loads(res.stdout)["overall"]["mean"] == 0.5  # the input's own column


def test_a_bad_row_in_a_worker_process_is_the_same_one_line_error(tmp_path):
    rows = [(GSM, "1", ["#### 1"])] * 40 + [(GSM, None, ["#### 1"])] + [(GSM, "1", ["#### 1"])] * 40
    src = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(records(rows)), src, row_group_size=10)
    for workers in (1, 2):
        with pytest.raises(ScoreError, match=r"^row 40 \(data_source 'openai/gsm8k'\): reward_model.ground_truth is missing$"):
            score_file(src, workers=workers)


def test_json_lines_under_any_suffix_merge_writes(tmp_path):
    for name in ("m.json", "m.NDJSON", "m.JsonL"):
        src = tmp_path / name
        src.write_text("".join(json.dumps(r) + "\n" for r in records(ROWS)))
        assert score_file(src)["overall"]["rows"] == len(ROWS)
