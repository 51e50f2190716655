"""The ``verl`` grader: verl 0.9.1's ``default_compute_score`` (``verl/utils/reward_score/__init__.py``), per
data_source, with the same dispatch. The four rule families verl ships without extra dependencies are
hpcgen's own code (one module each); the rest (sympy-based ``numina_*``, code sandboxes, ``geo3k``) are
graded by calling the installed ``verl`` package's own ``default_compute_score``, and are an error naming
the ways out when verl is not installed.

Ground truths: a string, compared as verl compares it; a JSON number is compared as its text (``str(x)``;
verl itself would compare text with a number and never match). The search-R1 sources need
``{"target": str | [str, ...]}`` as verl's data preparation writes it.
"""

from __future__ import annotations

import importlib
import importlib.util
import numbers
from collections.abc import Callable, Sequence
from typing import Any

from hpcgen.errors import ScoreError
from hpcgen.scoring.samples import CORRECT_THRESHOLD, Sample
from hpcgen.scoring.verl_rules import dapo, gsm8k, math_reward, qa_em

GSM8K_SOURCES = ("openai/gsm8k",)
MATH_SOURCES = ("lighteval/MATH", "DigitalLearningGmbH/MATH-lighteval", "HuggingFaceH4/MATH-500")
DAPO_SOURCES = ("math_dapo", "math", "math_dapo_reasoning")  # and every data_source starting with "aime"
QA_SOURCES = tuple(f"searchR1_{x}" for x in ("nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa",
                                             "musique", "bamboogle"))
EXTERNAL_SOURCES = {
    **{f"numina_{x}": "prime_math (sympy)" for x in ("aops_forum", "synthetic_math", "amc_aime",
                                                    "synthetic_amc", "cn_k12", "olympiads")},
    **{x: "code run in a sandbox (prime_code / sandbox_fusion)" for x in ("codecontests", "apps",
                                                                          "codeforces", "taco")},
    "hiyouga/geometry3k": "geo3k (mathruler)",
}
RULES = {"gsm8k": "verl gsm8k (strict ####)", "math": "verl math_reward (boxed + strip_string)",
         "dapo": "verl math_dapo (Answer: + Minerva; acc, reward +1/-1)",
         "qa": "verl search_r1_like_qa_em (exact match)",
         "external": "the installed verl package's default_compute_score"}


def family(data_source: str) -> str | None:
    """Which of verl's rules grades ``data_source`` (verl's own order of tests), or None."""
    if data_source in GSM8K_SOURCES:
        return "gsm8k"
    if data_source in MATH_SOURCES:
        return "math"
    if data_source in DAPO_SOURCES or data_source.startswith("aime"):
        return "dapo"
    if data_source in EXTERNAL_SOURCES:
        return "external"
    if data_source in QA_SOURCES:
        return "qa"
    return None


def unknown_data_source(data_source: str) -> ScoreError:
    return ScoreError(
        f"the verl grader does not know data_source {data_source!r} (verl's default_compute_score grades "
        f"{', '.join((*GSM8K_SOURCES, *MATH_SOURCES, *DAPO_SOURCES))}, aime*, {', '.join(QA_SOURCES)} and "
        f"{', '.join(EXTERNAL_SOURCES)}); use --grader math-verify (gsm8k/math by name) or pass a custom "
        "scorer with --custom FILE.py[:FUNCTION]"
    )


def _text_truth(ground_truth: Any) -> str:
    if isinstance(ground_truth, str):
        return ground_truth
    if isinstance(ground_truth, numbers.Real) and not isinstance(ground_truth, bool):
        return str(ground_truth)
    raise ScoreError(f"reward_model.ground_truth must be a string or a number, got {type(ground_truth).__name__}")


def _qa_targets(ground_truth: Any) -> list[str]:
    target = ground_truth.get("target") if isinstance(ground_truth, dict) else None
    if isinstance(target, str):
        return [target]
    if isinstance(target, list | tuple) and all(isinstance(t, str) for t in target):
        return list(target)
    raise ScoreError("reward_model.ground_truth must be {'target': [strings]} for the search-R1 sources "
                     f"(got {type(ground_truth).__name__})")


_VERL_FN: Callable[..., Any] | None = None


def _verl_default_compute_score(data_source: str) -> Callable[..., Any]:
    global _VERL_FN
    if _VERL_FN is None:
        if importlib.util.find_spec("verl") is None:
            raise ScoreError(
                f"data_source {data_source!r} is graded by verl's {EXTERNAL_SOURCES[data_source]} rules, "
                "which hpcgen does not reimplement: install verl (pip install verl) to have hpcgen call its "
                "default_compute_score, or pass a custom scorer with --custom FILE.py[:FUNCTION]"
            )
        try:
            module = importlib.import_module("verl.utils.reward_score")
        except Exception as exc:  # noqa: BLE001 - any import failure of a third-party package: one line
            raise ScoreError(f"data_source {data_source!r} needs verl's default_compute_score, but "
                             f"importing verl.utils.reward_score failed: {type(exc).__name__}: {exc}") from exc
        _VERL_FN = module.default_compute_score
    return _VERL_FN


def _external(data_source: str, responses: Sequence[str], ground_truth: Any, extra_info: Any) -> list[Sample]:
    fn = _verl_default_compute_score(data_source)
    out = []
    for text in responses:
        try:
            res = fn(data_source, text, ground_truth, extra_info)
        except Exception as exc:  # noqa: BLE001 - verl's own failure, reported in one line
            raise ScoreError(f"verl's default_compute_score raised {type(exc).__name__}: {exc} "
                             f"(data_source {data_source!r})") from exc
        if isinstance(res, dict):
            reward = float(res["score"])
            pred = res.get("pred")
            acc = res.get("acc")
            score = (1.0 if acc else 0.0) if acc is not None else reward
            extracted = None if pred is None else str(pred)
            out.append(Sample(score, extracted, extracted, True, reward if acc is not None else None))
        else:
            out.append(Sample(float(res), None, None, False))
    return out


class VerlGrader:
    """hpcgen's ``verl`` grader (the default)."""

    name = "verl"

    def rules(self, data_source: str) -> str:
        fam = family(data_source)
        if fam is None:
            raise unknown_data_source(data_source)
        if fam == "external":
            _verl_default_compute_score(data_source)
        return RULES[fam]

    def uses_extra_info(self, data_source: str) -> bool:
        return family(data_source) == "external"

    def score_row(
        self, data_source: str, responses: Sequence[str], ground_truth: Any, extra_info: Any = None
    ) -> list[Sample]:
        fam = family(data_source)
        if fam == "gsm8k":
            return gsm8k.grade(responses, _text_truth(ground_truth))
        if fam == "math":
            return math_reward.grade(responses, _text_truth(ground_truth))
        if fam == "dapo":
            return dapo.grade(responses, _text_truth(ground_truth))
        if fam == "qa":
            return qa_em.grade(responses, _qa_targets(ground_truth))
        if fam == "external":
            return _external(data_source, responses, ground_truth, extra_info)
        raise unknown_data_source(data_source)


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None) -> float:
    """One response graded by hpcgen's verl rules: the score mean@n averages (DAPO: ``acc`` as 1/0)."""
    return VerlGrader().score_row(data_source, [solution_str], ground_truth, extra_info)[0].score


__all__ = ["CORRECT_THRESHOLD", "VerlGrader", "compute_score", "family", "unknown_data_source"]
