"""Scoring: the math-verify (lenient) grader, pass@k/maj@k aggregation, file I/O, custom scorers, the table.
The verl grader is in test_score_verl.py, its fidelity to verl's own code in test_score_fidelity.py."""

from __future__ import annotations

import json
import math
import statistics
import threading
from fractions import Fraction
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hpcgen.errors import ScoreError
from hpcgen.scoring.lenient import compute_score, gsm8k_extract, last_boxed, math_extract
from hpcgen.scoring.metrics import maj_curve, pass_at_k, pass_curve
from hpcgen.scoring.samples import Sample
from hpcgen.scoring.score import format_table, write_report
from hpcgen.scoring.score import score_file as _score_file

GSM = "openai/gsm8k"
MATH = "DigitalLearningGmbH/MATH-lighteval"


def score_file(path, **kw):
    """These tests' expected numbers are the lenient grader's."""
    kw.setdefault("grader", "math-verify")
    return _score_file(path, **kw)

# ------------------------------------------------------------------------------------------------ GSM8K


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so the total is\n#### 1,234", "1234"),
        ("#### $18", "18"),
        ("#### 18 dollars.", "18"),
        ("She pays 3 + 4 = 7 dollars, so the answer is 7.", "7"),  # no ####: last number
        ("#### -5", "-5"),
        ("the change is -12 degrees", "-12"),
        ("#### 18.00", "18"),
        ("#### 0.50", "0.5"),
        ("#### $1,234,567.50", "1234567.5"),
        ("#### -$5", "-5"),
        ("5-3=2", "2"),  # a hyphen after a digit is subtraction, not a sign
        ("#### 42\nunrelated 7 after", "42"),  # strict answer wins over later numbers
        ("first #### 3 then #### 9", "9"),  # the last ####
        ("no digits here", None),
        ("", None),
    ],
)
def test_gsm8k_extract(text, expected):
    assert gsm8k_extract(text) == expected


@pytest.mark.parametrize(
    ("response", "truth", "score"),
    [
        ("#### 1,234", "1234", 1.0),
        ("#### 1234", "1,234", 1.0),
        ("#### $18", "18", 1.0),
        ("#### 18 dollars.", "18", 1.0),
        ("#### 18.00", "18", 1.0),
        ("The answer is 18", "18", 1.0),
        ("#### -5", "-5", 1.0),
        ("#### 5", "-5", 0.0),
        ("#### 17", "18", 0.0),
        ("#### 18.5", "18", 0.0),
        ("I don't know", "18", 0.0),
        ("#### 72", "Natalia sold 48/2 = 24 clips in May.\n#### 72", 1.0),  # full solution as truth
    ],
)
def test_gsm8k_score(response, truth, score):
    assert compute_score(GSM, response, truth) == score
    assert compute_score("my/gsm8k-test", response, truth) == score  # any name containing gsm8k


# ------------------------------------------------------------------------------------------------- MATH


def test_last_boxed_nested_and_last():
    assert last_boxed(r"so \boxed{\frac{\sqrt{2}}{2}}.") == r"\frac{\sqrt{2}}{2}"
    assert last_boxed(r"\boxed{1} then \boxed{2} and finally \fbox{3}") == "3"
    assert last_boxed(r"\fbox{3} and then \boxed{ 4 }") == " 4 "
    assert last_boxed(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"
    assert last_boxed(r"\boxed 5$ done") == "5"
    assert last_boxed(r"\boxed{unclosed") is None
    assert last_boxed("no box") is None
    assert math_extract(r"\boxed{ 4 }") == "4"
    assert math_extract(r"\boxed{  }") is None


@pytest.mark.parametrize(
    ("response", "truth", "score"),
    [
        (r"The answer is $\boxed{0.5}$.", r"\frac{1}{2}", 1.0),
        (r"$\boxed{\dfrac{1}{2}}$", r"\frac{1}{2}", 1.0),
        (r"\boxed{\frac12}", r"\frac{1}{2}", 1.0),
        (r"\boxed{\frac{1}{3}}", r"\frac{1}{2}", 0.0),
        (r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{1}{\sqrt{2}}", 1.0),
        (r"\boxed{(0,1]}", "(0, 1]", 1.0),
        (r"\boxed{[0,1]}", "(0, 1]", 0.0),
        (r"first \boxed{3}, no wait: \boxed{4}", "4", 1.0),
        (r"first \boxed{4}, no wait: \boxed{3}", "4", 0.0),
        ("4", "4", 0.0),  # no box: no answer
        (r"\boxed{4}", r"\boxed{4}", 1.0),  # boxed ground truth is unboxed first
    ],
)
def test_math_score(response, truth, score):
    assert compute_score(MATH, response, truth) == score


def test_math_data_source_names():
    for ds in ("lighteval/MATH", "HuggingFaceH4/MATH-500", "my-math-set"):
        assert compute_score(ds, r"\boxed{2}", "2") == 1.0


def test_math_scoring_works_off_the_main_thread():
    # math-verify's signal-based timeouts only work in the main thread; scoring must not fail elsewhere.
    results: list[object] = []

    def work():
        try:
            results.append(compute_score(MATH, r"\boxed{\frac{2}{4}}", "0.5"))
        except BaseException as exc:  # noqa: BLE001 - reported through the assert
            results.append(exc)

    t = threading.Thread(target=work)
    t.start()
    t.join(60)
    assert results == [1.0]


def test_unknown_data_source_names_it_and_the_options():
    with pytest.raises(ScoreError) as info:
        compute_score("some/code-benchmark", "x", "y")
    msg = str(info.value)
    assert "some/code-benchmark" in msg and "gsm8k" in msg and "math" in msg and "--custom" in msg
    assert "--grader verl" in msg


# -------------------------------------------------------------------------------------------- estimators


def test_pass_at_k_matches_closed_form():
    for n in range(1, 11):
        for c in range(n + 1):
            curve = pass_curve(n, c)
            assert len(curve) == n
            for k in range(1, n + 1):
                exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
                assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12)
                assert curve[k - 1] == pytest.approx(float(exact), abs=1e-12)


def test_pass_at_k_known_values_and_large_n():
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(4, 4, 1) == 1.0
    assert pass_at_k(5, 2, 4) == 1.0  # n - c < k
    exact = 1 - Fraction(math.comb(1995, 1000), math.comb(2000, 1000))
    assert pass_at_k(2000, 5, 1000) == pytest.approx(float(exact), rel=1e-12)
    assert pass_curve(2000, 5)[999] == pytest.approx(float(exact), rel=1e-9)
    for bad in ((4, 5, 1), (4, 1, 0), (4, 1, 5), (4, -1, 1)):
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def _s(key, score):
    return Sample(score, key, key)


def test_maj_ties_go_to_first_appearing_answer():
    # k=2: "a" and "b" tie one vote each: "a" appeared first (correct). k=3: "b" leads (wrong).
    samples = [_s("a", 1.0), _s("b", 0.0), _s("b", 0.0), _s("a", 1.0)]
    # k=4: tie 2-2 again: "a" appeared first.
    assert maj_curve(samples) == [1.0, 1.0, 0.0, 1.0]
    # The same votes in the other order: the wrong answer appears first and wins its ties.
    samples = [_s("b", 0.0), _s("a", 1.0), _s("a", 1.0), _s("b", 0.0)]
    assert maj_curve(samples) == [0.0, 0.0, 1.0, 0.0]


def test_maj_abstentions_do_not_vote():
    samples = [_s(None, 0.0), _s(None, 0.0), _s("x", 1.0), _s(None, 0.0)]
    assert maj_curve(samples) == [0.0, 0.0, 1.0, 1.0]
    assert maj_curve([_s(None, 0.0)] * 3) == [0.0, 0.0, 0.0]


# ----------------------------------------------------------------------------------------- end to end

# Row A (gsm8k, truth "1,234"): scores 1,1,0,1 -> c=3. Votes 1234,1234,12,1234.
# Row B (gsm8k, truth 18):      scores 1,0,0,0 -> c=1. Votes 18,17,17,-: maj 1,1(tie->18),0,0.
# Row C (MATH, truth 1/2):      scores 1,1,0,0 -> c=2. Votes 1/2,1/2,2,2: maj 1,1,1,1(tie->1/2).
# Row D (MATH): generation failed, no responses -> error, 0 everywhere.
ROWS = [
    (GSM, "1,234", ["#### 1234", "The answer is 1,234.", "#### 12", "#### $1,234.00"], None),
    (GSM, "18", ["#### 18", "#### 17", "#### 17 apples", "no idea"], None),
    (
        MATH,
        r"\frac{1}{2}",
        [r"\boxed{0.5}", r"so $\boxed{\dfrac{1}{2}}$", r"\boxed{2}", r"\boxed{ 2 }"],
        None,
    ),
    (MATH, "3", [], "CUDA out of memory"),
]


def bars(row_means):
    """mean_se and mean_ci95 computed independently: stdev (ddof=1) / sqrt(rows), mean +- 1.96 se."""
    se = statistics.stdev(row_means) / math.sqrt(len(row_means))
    mean = statistics.fmean(row_means)
    return {"mean_se": se, "mean_ci95": [mean - 1.959964 * se, mean + 1.959964 * se]}


EXPECTED_GSM = {
    "rows": 2,
    "n": 4,
    "mean": 0.5,
    **bars([0.75, 0.25]),
    "pass@1": 0.5,
    "pass@2": 0.75,
    "pass@3": 0.875,
    "pass@4": 1.0,
    "maj@1": 1.0,
    "maj@2": 1.0,
    "maj@3": 0.5,
    "maj@4": 0.5,
    "errors": 0,
}
EXPECTED_MATH = {
    "rows": 2,
    "n": 4,
    "mean": 0.25,
    **bars([0.5, 0.0]),
    "pass@1": 0.25,
    "pass@2": 5 / 12,
    "pass@3": 0.5,
    "pass@4": 0.5,
    "maj@1": 0.5,
    "maj@2": 0.5,
    "maj@3": 0.5,
    "maj@4": 0.5,
    "errors": 1,
}
EXPECTED_OVERALL = {
    "rows": 4,
    "n": 4,
    "mean": 0.375,
    **bars([0.75, 0.25, 0.5, 0.0]),
    "pass@1": 1.5 / 4,
    "pass@2": (1 + 0.5 + 5 / 6) / 4,
    "pass@3": 2.75 / 4,
    "pass@4": 0.75,
    "maj@1": 0.75,
    "maj@2": 0.75,
    "maj@3": 0.5,
    "maj@4": 0.5,
    "errors": 1,
}


def verl_records(rows=ROWS):
    out = []
    for i, (ds, truth, responses, err) in enumerate(rows):
        out.append(
            {
                "data_source": ds,
                "prompt": [{"role": "user", "content": f"question {i}"}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": truth},
                "extra_info": {"split": "test", "index": i},
                "responses": responses,
                "gen_error": err,
            }
        )
    return out


VERL_SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        ("extra_info", pa.struct([("split", pa.string()), ("index", pa.int64())])),
        ("responses", pa.list_(pa.string())),
        ("gen_error", pa.string()),
    ]
)


def write_parquet(path: Path, records, schema=VERL_SCHEMA) -> Path:
    pq.write_table(pa.Table.from_pylist(records, schema=schema), path, row_group_size=2)
    return path


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def assert_metrics(got: dict, expected: dict) -> None:
    got = {k: v for k, v in got.items() if k != "rules"}
    assert list(got) == list(expected)  # exactly these keys, in this order
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6 if key == "mean_ci95" else 1e-12), key


def test_score_file_parquet_end_to_end(tmp_path):
    src = write_parquet(tmp_path / "merged.parquet", verl_records())
    report = score_file(src)
    assert report["input"] == str(src)
    assert list(report) == ["grader", "overall", "by_data_source", "input"]
    assert report["grader"] == "math-verify"
    assert sorted(report["by_data_source"]) == sorted([GSM, MATH])
    assert report["by_data_source"][GSM]["rules"].startswith("math-verify gsm8k")
    assert report["by_data_source"][MATH]["rules"].startswith("math-verify math")
    assert_metrics(report["by_data_source"][GSM], EXPECTED_GSM)
    assert_metrics(report["by_data_source"][MATH], EXPECTED_MATH)
    assert_metrics(report["overall"], EXPECTED_OVERALL)
    json.dumps(report)  # plain JSON types only


def test_score_file_jsonl_end_to_end(tmp_path):
    src = write_jsonl(tmp_path / "merged.jsonl", verl_records())
    report = score_file(src)
    assert_metrics(report["overall"], EXPECTED_OVERALL)
    assert_metrics(report["by_data_source"][MATH], EXPECTED_MATH)


def test_per_sample_output_parquet(tmp_path):
    src = write_parquet(tmp_path / "merged.parquet", verl_records())
    out = tmp_path / "scored.parquet"
    score_file(src, per_sample_output=out)
    table = pq.read_table(out)
    assert table.column_names == [*VERL_SCHEMA.names, "scores", "extracted"]
    assert table.schema.field("scores").type == pa.list_(pa.float64())
    assert table.schema.field("extracted").type == pa.list_(pa.string())
    assert table.column("scores").to_pylist() == [
        [1.0, 1.0, 0.0, 1.0],
        [1.0, 0.0, 0.0, 0.0],
        [1.0, 1.0, 0.0, 0.0],
        [],
    ]
    extracted = table.column("extracted").to_pylist()
    assert extracted[0] == ["1234", "1234", "12", "1234"]
    assert extracted[1] == ["18", "17", "17", None]
    assert extracted[2] == ["0.5", r"\dfrac{1}{2}", "2", "2"]
    assert table.column("prompt").to_pylist() == [r["prompt"] for r in verl_records()]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged.parquet", "scored.parquet"]


def test_per_sample_output_jsonl_from_jsonl(tmp_path):
    src = write_jsonl(tmp_path / "merged.jsonl", verl_records())
    out = tmp_path / "scored.jsonl"
    score_file(src, per_sample_output=out)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 4
    assert lines[1]["scores"] == [1.0, 0.0, 0.0, 0.0]
    assert lines[1]["extracted"] == ["18", "17", "17", None]
    assert lines[3]["gen_error"] == "CUDA out of memory" and lines[3]["scores"] == []
    assert lines[0]["reward_model"] == {"style": "rule", "ground_truth": "1,234"}


def test_per_sample_output_parquet_from_jsonl(tmp_path):
    src = write_jsonl(tmp_path / "merged.jsonl", verl_records())
    out = tmp_path / "scored.parquet"
    score_file(src, per_sample_output=out)
    table = pq.read_table(out)
    assert table.column("scores").to_pylist()[2] == [1.0, 1.0, 0.0, 0.0]
    assert table.column("gen_error").to_pylist() == [None, None, None, "CUDA out of memory"]


def test_failed_row_counts_as_error_and_scores_zero(tmp_path):
    rows = [
        (GSM, "7", ["#### 7", "#### 7"], None),
        (GSM, "7", [], "timeout"),
        (GSM, "7", ["#### 7", "#### 7"], "engine died after sampling"),  # gen_error set: failed
    ]
    report = score_file(write_parquet(tmp_path / "m.parquet", verl_records(rows)))
    overall = report["overall"]
    assert overall["rows"] == 3 and overall["errors"] == 2 and overall["n"] == 2
    assert overall["mean"] == pytest.approx(1 / 3)
    assert overall["pass@2"] == pytest.approx(1 / 3)
    assert overall["maj@1"] == pytest.approx(1 / 3)


def test_all_rows_failed(tmp_path):
    rows = [(GSM, "7", [], "oom"), (GSM, "7", [], "oom")]
    report = score_file(write_parquet(tmp_path / "m.parquet", verl_records(rows)))
    assert report["overall"] == {"rows": 2, "n": 0, "mean": 0.0, "mean_se": 0.0, "mean_ci95": [0.0, 0.0],
                                 "errors": 2}


def test_rows_with_different_n_use_their_own_n(tmp_path):
    rows = [
        (GSM, "1", ["#### 1", "#### 2", "#### 3"], None),  # n=3, c=1
        (GSM, "1", ["#### 2", "#### 1"], None),  # n=2, c=1
    ]
    report = score_file(write_jsonl(tmp_path / "m.jsonl", verl_records(rows)))
    overall = report["overall"]
    assert overall["n"] == 2
    assert "pass@3" not in overall and "maj@3" not in overall
    assert overall["mean"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert overall["pass@1"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert overall["pass@2"] == pytest.approx((2 / 3 + 1) / 2)
    assert overall["maj@2"] == pytest.approx((1 + 0) / 2)  # row 1: 1 vs 2 tie -> 1; row 2: 2 first


def test_missing_responses_column(tmp_path):
    records = [{k: v for k, v in r.items() if k != "responses"} for r in verl_records()]
    schema = pa.schema([f for f in VERL_SCHEMA if f.name != "responses"])
    with pytest.raises(ScoreError, match="'responses'"):
        score_file(write_parquet(tmp_path / "m.parquet", records, schema))
    with pytest.raises(ScoreError, match="'responses'"):
        score_file(write_jsonl(tmp_path / "m.jsonl", records))


def test_missing_ground_truth_and_bad_inputs(tmp_path):
    records = verl_records()
    records[1]["reward_model"] = {"style": "rule"}
    with pytest.raises(ScoreError, match="row 1.*ground_truth"):
        score_file(write_jsonl(tmp_path / "m.jsonl", records))
    with pytest.raises(ScoreError, match="not found"):
        score_file(tmp_path / "absent.parquet")
    with pytest.raises(ScoreError, match="unsupported format"):
        score_file(tmp_path / "data.csv")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"responses": []\n')
    with pytest.raises(ScoreError, match="bad.jsonl:1"):
        score_file(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ScoreError, match="no rows"):
        score_file(empty)


def test_unknown_data_source_in_file(tmp_path):
    rows = [(GSM, "1", ["#### 1"], None), ("acme/riddles", "1", ["1"], None)]
    out = tmp_path / "scored.parquet"
    with pytest.raises(ScoreError, match="acme/riddles"):
        score_file(write_parquet(tmp_path / "m.parquet", verl_records(rows)), per_sample_output=out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.parquet"]  # no output, no temp file left


# ---------------------------------------------------------------------------------------- custom scorer

CUSTOM = """
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    return 1.0 if solution_str.strip() == ground_truth else 0.0

def as_bool(data_source, solution_str, ground_truth, extra_info=None):
    return solution_str.strip() == ground_truth

def as_dict(data_source, solution_str, ground_truth, extra_info=None):
    pred = solution_str.strip() or None
    return {"score": 1.0 if pred == ground_truth else -1.0, "acc": pred == ground_truth, "pred": pred}

def uses_extra_info(data_source, solution_str, ground_truth, extra_info=None):
    return float(extra_info["index"] == 0)

def returns_text(data_source, solution_str, ground_truth, extra_info=None):
    return "yes"

def explodes(data_source, solution_str, ground_truth, extra_info=None):
    raise KeyError("boom")

NOT_A_FUNCTION = 3
"""

CUSTOM_ROWS = [
    ("acme/riddles", "x", ["x", "y", "x"], None),  # c=2, votes x,y,x
    ("acme/riddles", "z", ["y", "", "z"], None),  # c=1, votes y,-,z (tie at k=3 -> y)
]


@pytest.fixture
def custom_file(tmp_path):
    path = tmp_path / "my_reward.py"
    path.write_text(CUSTOM)
    return path


@pytest.fixture
def custom_data(tmp_path):
    return write_parquet(tmp_path / "riddles.parquet", verl_records(CUSTOM_ROWS))


@pytest.mark.parametrize("name", ["compute_score", "as_bool"])
def test_custom_scorer_float_and_bool(custom_file, custom_data, name):
    report = score_file(custom_data, custom_path=custom_file, custom_name=name)
    overall = report["overall"]
    assert overall["mean"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert overall["pass@1"] == pytest.approx(0.5)
    assert overall["pass@2"] == pytest.approx((1 + (1 - 1 / 3)) / 2)
    assert overall["pass@3"] == pytest.approx(1.0)
    assert not any(k.startswith("maj@") for k in overall)  # no extraction exposed: maj@k omitted
    assert list(report["by_data_source"]) == ["acme/riddles"]


def test_custom_scorer_dict_with_pred_votes(custom_file, custom_data, tmp_path):
    out = tmp_path / "scored.jsonl"
    report = score_file(custom_data, custom_path=custom_file, custom_name="as_dict", per_sample_output=out)
    overall = report["overall"]
    assert overall["mean"] == pytest.approx(((1 - 1 + 1) / 3 + (-1 - 1 + 1) / 3) / 2)  # raw scores
    assert overall["pass@1"] == pytest.approx(0.5)  # correct = score > 0.5
    # row 1 votes x | x,y tie -> x | x: 1,1,1; row 2 votes y | y | y,z tie -> y: 0,0,0
    assert [overall[f"maj@{k}"] for k in (1, 2, 3)] == [0.5, 0.5, 0.5]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[1]["extracted"] == ["y", None, "z"]
    assert lines[1]["scores"] == [-1.0, -1.0, 1.0]


def test_custom_scorer_gets_extra_info(custom_file, custom_data):
    report = score_file(custom_data, custom_path=custom_file, custom_name="uses_extra_info")
    assert report["overall"]["mean"] == pytest.approx(0.5)


def test_custom_scorer_errors(custom_file, custom_data, tmp_path):
    with pytest.raises(ScoreError, match="not found"):
        score_file(custom_data, custom_path=tmp_path / "nope.py")
    with pytest.raises(ScoreError, match="no function 'missing'"):
        score_file(custom_data, custom_path=custom_file, custom_name="missing")
    with pytest.raises(ScoreError, match="not a function"):
        score_file(custom_data, custom_path=custom_file, custom_name="NOT_A_FUNCTION")
    with pytest.raises(ScoreError, match="returned str"):
        score_file(custom_data, custom_path=custom_file, custom_name="returns_text")
    with pytest.raises(ScoreError, match="row 0.*KeyError"):
        score_file(custom_data, custom_path=custom_file, custom_name="explodes")
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_module_anywhere\n")
    with pytest.raises(ScoreError, match="failed to import.*ModuleNotFoundError") as info:
        score_file(custom_data, custom_path=broken)
    assert "\n" not in str(info.value)


def test_custom_scorer_handles_any_data_source(custom_file, tmp_path):
    # A custom scorer replaces the built-ins for every row (verl's custom_reward_function).
    src = write_jsonl(tmp_path / "m.jsonl", verl_records([(GSM, "#### 1", ["#### 1"], None)]))
    report = score_file(src, custom_path=custom_file)
    assert report["overall"]["mean"] == 1.0


# -------------------------------------------------------------------------------------------- report


def test_format_table_and_write_report(tmp_path):
    report = score_file(write_parquet(tmp_path / "m.parquet", verl_records()))
    text = format_table(report)
    lines = text.splitlines()
    for ds in (GSM, MATH, "overall"):
        assert any(ds in line for line in lines), ds
    header = next(line for line in lines if "pass@1" in line)
    for col in ("rows", "errors", "mean", "pass@4", "maj@4"):
        assert col in header
    overall_line = next(line for line in lines if "overall" in line)
    assert "0.3750" in overall_line and "0.7500" in overall_line
    assert "\x1b[" not in text  # plain text, no ANSI codes

    dest = tmp_path / "report.json"
    write_report(report, dest)
    assert json.loads(dest.read_text()) == report
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_format_table_wide_n_shows_first_and_last(tmp_path):
    rows = [(GSM, "1", ["#### 1"] * 8, None)]
    report = score_file(write_jsonl(tmp_path / "m.jsonl", verl_records(rows)))
    header = next(line for line in format_table(report).splitlines() if "pass@1" in line)
    assert "pass@8" in header and "maj@8" in header and "pass@4" not in header
