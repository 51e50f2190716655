"""verl's MATH rule (``verl/utils/reward_score/math_reward.py``, from EleutherAI's hendrycks_math), in
hpcgen's code, for ``lighteval/MATH``, ``DigitalLearningGmbH/MATH-lighteval`` and ``HuggingFaceH4/MATH-500``.

The answer is the last ``\\boxed{...}`` (braces counted; an unclosed box is no answer); if the text
contains ``\\boxed `` (with a space) anywhere, the text after the last ``\\boxed `` up to the next ``$``
instead. ``\\fbox{...}`` is found but then rejected (verl's ``remove_boxed`` asserts ``\\boxed{``), so it
scores 0. Answer and ground truth are compared after verl's ``strip_string`` normalisation (``\\dfrac`` ->
``\\frac``, ``\\left``/``\\right``, degrees, ``\\$``, ``\\%`` and a trailing ``\\text{ unit}`` removed,
``0.5`` -> ``\\frac{1}{2}``, ``a/b`` -> ``\\frac{a}{b}``, ``x = `` prefixes of up to 2 characters dropped,
spaces removed); where that normalisation fails on either side, the raw strings are compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from hpcgen.scoring.samples import Sample
from hpcgen.scoring.verl_rules.braces import closing_brace


def last_boxed_only_string(text: str) -> str | None:
    """verl's ``last_boxed_only_string``: the last box with its ``\\boxed``, or None."""
    idx = text.rfind("\\boxed")
    if "\\boxed " in text:
        return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
    if idx < 0:
        idx = text.rfind("\\fbox")
        if idx < 0:
            return None
    end = closing_brace(text, idx)
    return None if end is None else text[idx : end + 1]


def remove_boxed(s: str) -> str | None:
    """verl's ``remove_boxed``; None where verl's assertions fail (verl then scores the sample 0)."""
    if "\\boxed " in s:
        return s[7:] if s.startswith("\\boxed ") else None
    if s.startswith("\\boxed{") and s.endswith("}"):
        return s[7:-1]
    return None


def extract(text: str) -> str | None:
    boxed = last_boxed_only_string(text)
    return None if boxed is None else remove_boxed(boxed)


class _Fails(Exception):
    """verl's normalisation raised: compare the raw strings."""


def _fix_fracs(string: str) -> str:
    substrs = string.split("\\frac")
    new_str = substrs[0]
    for substr in substrs[1:]:
        new_str += "\\frac"
        if not substr:
            raise _Fails  # verl: substr[0] -> IndexError
        if substr[0] == "{":
            new_str += substr
        else:
            if len(substr) < 2:
                return string
            a, b = substr[0], substr[1]
            if b != "{":
                new_str += "{" + a + "}{" + b + "}" + substr[2:]
            else:
                new_str += "{" + a + "}" + b + substr[2:]
    return new_str


def _fix_a_slash_b(string: str) -> str:
    parts = string.split("/")
    if len(parts) != 2:
        return string
    try:
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        return string
    if string != f"{a}/{b}":
        return string
    return "\\frac{" + str(a) + "}{" + str(b) + "}"


def _remove_right_units(string: str) -> str:
    if "\\text{ " in string:
        splits = string.split("\\text{ ")
        if len(splits) != 2:
            raise _Fails  # verl: assert len(splits) == 2
        return splits[0]
    return string


def _fix_sqrt(string: str) -> str:
    if "\\sqrt" not in string:
        return string
    splits = string.split("\\sqrt")
    new_string = splits[0]
    for split in splits[1:]:
        if not split:
            raise _Fails  # verl: split[0] -> IndexError
        if split[0] != "{":
            new_string += "\\sqrt{" + split[0] + "}" + split[1:]
        else:
            new_string += "\\sqrt" + split
    return new_string


@lru_cache(maxsize=65536)
def strip_string(string: str) -> str | None:
    """verl's ``strip_string``; None where verl's raises."""
    try:
        return _strip(string)
    except _Fails:
        return None


def _strip(string: str) -> str:
    string = string.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    string = string.replace("tfrac", "frac").replace("dfrac", "frac")
    string = string.replace("\\left", "").replace("\\right", "")
    string = string.replace("^{\\circ}", "").replace("^\\circ", "")
    string = string.replace("\\$", "")
    string = _remove_right_units(string)
    string = string.replace("\\\\%", "").replace("\\%", "")
    string = string.replace(" .", " 0.").replace("{.", "{0.")
    if not string:
        return string
    if string[0] == ".":
        string = "0" + string
    halves = string.split("=")
    if len(halves) == 2 and len(halves[0]) <= 2:
        string = halves[1]
    string = _fix_sqrt(string)
    string = string.replace(" ", "")
    string = _fix_fracs(string)
    if string == "0.5":
        string = "\\frac{1}{2}"
    return _fix_a_slash_b(string)


def grade(responses: Sequence[str], truth: str) -> list[Sample]:
    gold = strip_string(truth)
    out = []
    for text in responses:
        ans = extract(text)
        if ans is None:
            out.append(Sample(0.0))
            continue
        norm = strip_string(ans)
        ok = (ans == truth) if norm is None or gold is None else (norm == gold)
        out.append(Sample(1.0 if ok else 0.0, ans, ans if norm is None else norm))
    return out
