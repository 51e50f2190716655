"""verl's DAPO rule (``verl/utils/reward_score/math_dapo.py``, ``compute_score`` with its defaults), in
hpcgen's code, for ``math_dapo``, ``math``, ``math_dapo_reasoning`` and every data_source starting with ``aime``.

Only the last 300 characters are looked at. The answer is the text after the LAST ``Answer:`` (any case,
to the end of its line), normalised the Minerva way (``normalize_final_answer``: text after the last
``=``, units and words such as "degrees" or "dollars" removed, ``\\text{}``/``\\boxed{}`` unwrapped,
``\\fracab`` -> ``\\frac{a}{b}``, thousands commas of integers removed), and compared with the equally
normalised ground truth. Without an ``Answer:`` line, the last ``\\boxed{...}`` in the last 100
characters is compared, unnormalised, with the raw ground truth. Reward +1 when correct, -1 otherwise;
``acc`` is the correctness; ``pred`` the compared answer (``[INVALID]`` when none was found).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from hpcgen.scoring.samples import Sample
from hpcgen.scoring.verl_rules.braces import closing_brace

CLIP_CHARS = 300
BOX_CLIP_CHARS = 100
INVALID = "[INVALID]"
_ANSWER = re.compile(r"(?i)Answer\s*:\s*([^\n]+)")

SUBSTITUTIONS = (
    ("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), (r"\ ", ""), (" ", ""), ("mbox", "text"),
    (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}"),
)
REMOVED_EXPRESSIONS = (
    "square", "ways", "integers", "dollars", "mph", "inches", "hours", "km", "units", "\\ldots", "sue",
    "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds", "meters", "meals",
    "edges", "students", "childrentickets", "multiples", "\\text{s}", "\\text{.}", "\\text{\ns}",
    "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}", r"\mathrm{th}", r"^\circ", r"^{\circ}", r"\;",
    r",\!", "{,}", '"', "\\dots",
)
_REWRITES = tuple((re.compile(p), r) for p, r in (
    (r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$"),
    (r"(\\text\{)(.*?)(\})", "\\2"),
    (r"(\\textbf\{)(.*?)(\})", "\\2"),
    (r"(\\overline\{)(.*?)(\})", "\\2"),
    (r"(\\boxed\{)(.*)(\})", "\\2"),
    (r"(frac)([^{])(.)", "frac{\\2}{\\3}"),
    (r"(sqrt)([^{])", "sqrt{\\2}"),
))


@lru_cache(maxsize=65536)
def normalize_final_answer(final_answer: str) -> str:
    """verl's (Minerva's) ``normalize_final_answer``."""
    final_answer = final_answer.split("=")[-1]
    for before, after in SUBSTITUTIONS:
        final_answer = final_answer.replace(before, after)
    for expr in REMOVED_EXPRESSIONS:
        final_answer = final_answer.replace(expr, "")
    for pattern, repl in _REWRITES:
        final_answer = pattern.sub(repl, final_answer)
    final_answer = final_answer.replace("$", "")
    if final_answer.replace(",", "").isdigit():
        final_answer = final_answer.replace(",", "")
    return final_answer.strip()


def _last_boxed_content(text: str) -> str | None:
    """DAPO's ``remove_boxed(last_boxed_only_string(text))``: only ``\\boxed{`` counts; unclosed -> None."""
    idx = text.rfind("\\boxed{")
    if idx < 0:
        return None
    end = closing_brace(text, idx)
    return None if end is None else text[idx + 7 : end]


def verify(text: str, truth: str, gold: str) -> tuple[bool, str]:
    """(correct, pred) for an already clipped response; ``gold`` is the normalised ground truth."""
    found = _ANSWER.findall(text) if ":" in text else None
    pred = normalize_final_answer(found[-1] if found else INVALID)
    if pred != INVALID:
        return pred == gold, pred
    box = _last_boxed_content(text[-BOX_CLIP_CHARS:])
    if box is not None:
        return box == truth, box
    return pred == gold, pred


def grade(responses: Sequence[str], truth: str) -> list[Sample]:
    gold = normalize_final_answer(truth)
    out = []
    for text in responses:
        ok, pred = verify(text[-CLIP_CHARS:], truth, gold)
        key = None if pred == INVALID else pred
        out.append(Sample(1.0 if ok else 0.0, pred, key, True, 1.0 if ok else -1.0))
    return out
