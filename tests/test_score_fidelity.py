"""hpcgen's ``verl`` grader against verl's own reward code (the verl 0.9.1 wheel from the package index).

The wheel is downloaded once into the test cache (``pip download verl==0.9.1 --no-deps``, sha256-checked;
never installed) and ``verl/utils/reward_score/{gsm8k,math_reward,math_dapo,search_r1_like_qa_em}.py`` are
loaded from it as plain modules (the ``verl`` package, which pulls Ray and torch, is never imported). verl's
code is the oracle here only; hpcgen's graders are hpcgen's own code. In CI a failed download fails.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import CACHE

from hpcgen.scoring.verl_rules import VerlGrader, dapo, gsm8k, math_reward, qa_em
from hpcgen_dev import verl_cases
from hpcgen_dev.verl_oracle import Oracle, fetch_wheel, imported_modules, main_eval_means, stdlib_only

CASES_PER_FAMILY = 800


@pytest.fixture(scope="module")
def oracle() -> Oracle:
    return Oracle(fetch_wheel(CACHE))


def test_the_four_reward_files_need_only_the_standard_library(oracle):
    # What the oracle loads imports nothing beyond the standard library, so it runs without verl's
    # dependencies. (verl's prime_math, for numina_*, imports sympy, pylatexenc and verl.utils: hpcgen
    # leaves those sources to an installed verl, see test_score_verl.py.)
    assert {name: imported_modules(src) for name, src in oracle.sources.items()} == {
        "gsm8k": {"re"}, "math_reward": set(), "math_dapo": {"re", "typing"},
        "search_r1_like_qa_em": {"random", "re", "string"}}
    assert all(not stdlib_only(src) for src in oracle.sources.values())


def _verl(oracle: Oracle, ds: str, text: str, truth):
    with contextlib.redirect_stdout(io.StringIO()):  # verl's QA scorer prints 1 call in 64
        return oracle.default_compute_score(ds, text, truth)


@pytest.mark.parametrize("family", verl_cases.FAMILIES)
def test_same_grade_as_verl_sample_by_sample(oracle, family):
    grader = VerlGrader()
    cases = verl_cases.cases(family, CASES_PER_FAMILY)
    outcomes: Counter = Counter()
    disagreements = []
    for ds, text, truth in cases:
        want = _verl(oracle, ds, text, truth)
        got = grader.score_row(ds, [text], truth)[0]
        if isinstance(want, dict):  # DAPO: score (+1/-1), acc, pred
            same = (got.reward, got.score == 1.0, got.extracted) == (want["score"], want["acc"], want["pred"])
            outcomes[want["acc"]] += 1
        else:
            same = got.score == want and got.reward is None
            outcomes[want] += 1
        if not same:
            disagreements.append((ds, text[-200:], truth, want, got))
    print(f"{family}: {len(cases)} samples, outcomes {dict(outcomes)}, {len(disagreements)} disagreements")
    assert disagreements == []
    assert len(cases) == CASES_PER_FAMILY
    assert len(outcomes) >= 2 and min(outcomes.values()) >= 50  # right and wrong answers both well covered
    assert {ds for ds, _, _ in cases} == set(verl_cases.SOURCES[family])


def test_same_answers_extracted_as_verl(oracle):
    m = oracle.modules
    for _, text, _ in verl_cases.cases("gsm8k", CASES_PER_FAMILY):
        assert gsm8k.extract(text) == m["gsm8k"].extract_solution(text)
    for _, text, _ in verl_cases.cases("math", CASES_PER_FAMILY):
        boxed = m["math_reward"].last_boxed_only_string(text)
        assert math_reward.last_boxed_only_string(text) == boxed
        try:
            want = None if boxed is None else m["math_reward"].remove_boxed(boxed)
        except AssertionError:
            want = None
        assert math_reward.extract(text) == want
        for s in (text, text[-40:]):
            try:
                want_strip = m["math_reward"].strip_string(s)
            except Exception:  # noqa: BLE001 - verl's normaliser raising is what we mirror with None
                want_strip = None
            assert math_reward.strip_string(s) == want_strip
    for _, text, truth in verl_cases.cases("dapo", CASES_PER_FAMILY):
        assert dapo.normalize_final_answer(text[-60:]) == m["math_dapo"].normalize_final_answer(text[-60:])
        assert dapo.normalize_final_answer(truth) == m["math_dapo"].normalize_final_answer(truth)
    for _, text, _ in verl_cases.cases("qa", CASES_PER_FAMILY):
        assert qa_em.extract(text) == m["search_r1_like_qa_em"].extract_solution(text)
        assert qa_em.normalize(text) == m["search_r1_like_qa_em"].normalize_answer(text)


def _write(path, rows, truth_type):
    schema = pa.schema([("data_source", pa.string()), ("responses", pa.list_(pa.string())),
                        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", truth_type)]))])
    records = [{"data_source": ds, "responses": responses, "reward_model": {"style": "rule", "ground_truth": truth}}
               for ds, responses, truth in rows]
    pq.write_table(pa.Table.from_pylist(records, schema=schema), path, row_group_size=50)
    return path


@pytest.mark.parametrize("workers", ["1", "2"])
def test_merged_file_means_equal_verl_main_eval(oracle, tmp_path, workers):
    """``hpcgen score FILE`` gives verl's main_eval numbers (mean over a row's responses, then over rows) per
    data_source, to 1e-9; for the DAPO sources ``mean`` is verl's ``acc`` and ``mean_reward`` its score."""
    text_rows = [r for fam in ("gsm8k", "math", "dapo") for r in verl_cases.rows(fam, 150, 4)]
    qa_rows = [(ds, responses, {"target": t["target"] if isinstance(t["target"], list) else [t["target"]]})
               for ds, responses, t in verl_cases.rows("qa", 150, 4)]
    files = [(_write(tmp_path / "text.parquet", text_rows, pa.string()), text_rows),
             (_write(tmp_path / "qa.parquet", qa_rows, pa.struct([("target", pa.list_(pa.string()))])), qa_rows)]
    for path, rows in files:
        res = subprocess.run([sys.executable, "-m", "hpcgen", "score", str(path), "--json", "--workers", workers],
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        report = json.loads(res.stdout)
        assert report["grader"] == "verl"
        want = main_eval_means(oracle, rows)
        assert set(report["by_data_source"]) == set(want)
        for ds, (mean, reward) in want.items():
            got = report["by_data_source"][ds]
            assert got["mean"] == pytest.approx(mean, abs=1e-9), ds
            if ds in verl_cases.SOURCES["dapo"]:
                assert got["mean_reward"] == pytest.approx(reward, abs=1e-9), ds
            else:
                assert "mean_reward" not in got
        assert 0 < report["overall"]["mean"] < 1
