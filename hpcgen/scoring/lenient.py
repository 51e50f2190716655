"""The ``math-verify`` grader: hpcgen's lenient grading, better at judging maths than verl's string rules
but NOT verl's numbers (see :mod:`hpcgen.scoring.verl_rules` for those).

Chosen by ``data_source`` (case-insensitive):

* **gsm8k** - any data_source containing ``gsm8k``. The answer is the number after the last ``####``
  anywhere in the text; without one (or with no number after it), the last number in the text (flexible
  fallback). Commas, ``$``, and trailing units/periods/words are dropped and the number is compared
  numerically with the ground truth (``18.00`` == ``18``, ``1,234`` == ``1234``).
* **math** - any other data_source containing ``math``. The answer is the content of the LAST
  ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces handled); no box means no answer (score 0).
  Equivalence with the ground truth is decided by the ``math-verify`` library, imported lazily.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from hpcgen.errors import ScoreError
from hpcgen.scoring.samples import Sample

# Per-call limits for math-verify's signal.alarm-based timeouts; only usable in the main thread.
MATH_VERIFY_TIMEOUT_S = 5

# ---------------------------------------------------------------------------------------------- GSM8K

# A number: optional minus (not right after a word/closing bracket, where "-" means subtraction),
# optional "$", then digits with well-formed thousands commas, or plain digits, and optional decimals.
_NUMBER = re.compile(
    r"(?:(?P<neg>(?<![\w)\]}])-)(?:\s?\$\s?)?|\$\s?(?P<neg2>-)?)?"
    r"(?P<num>(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)"
)


def _canon_number(match: re.Match[str]) -> str | None:
    try:
        value = Decimal(match.group("num").replace(",", ""))
    except InvalidOperation:
        return None
    if match.group("neg") or match.group("neg2"):
        value = -value
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def _last_number(text: str) -> str | None:
    last = None
    for m in _NUMBER.finditer(text):
        last = m
    return _canon_number(last) if last is not None else None


def gsm8k_extract(text: str) -> str | None:
    """The GSM8K answer in canonical form ("1234", "-5", "0.5"), or None.

    Strict: the first number after the last ``####``. Flexible fallback: the last number in the text.
    """
    if not text:
        return None
    pos = text.rfind("####")
    if pos >= 0:
        m = _NUMBER.search(text, pos + 4)
        if m is not None:
            return _canon_number(m)
    return _last_number(text)


def _gsm8k_truth(ground_truth: Any) -> str:
    text = str(ground_truth).strip()
    if "####" in text:  # a full GSM8K solution was given as the ground truth
        return gsm8k_extract(text) or text
    m = _NUMBER.fullmatch(text.replace("$", "").strip().rstrip("."))
    if m is not None:
        canon = _canon_number(m)
        if canon is not None:
            return canon
    # Not a plain number: fall back to the strict/last-number rule, else the text itself.
    return _last_number(text) or text


def _score_gsm8k(responses: Sequence[str], ground_truth: Any) -> list[Sample]:
    truth = _gsm8k_truth(ground_truth)
    out = []
    for text in responses:
        ans = gsm8k_extract(text)
        out.append(Sample(1.0 if ans is not None and ans == truth else 0.0, ans, ans))
    return out


# ----------------------------------------------------------------------------------------------- MATH

_BOX_OPENERS = ("\\boxed", "\\fbox")


def last_boxed(text: str) -> str | None:
    """Content of the LAST ``\\boxed{...}`` or ``\\fbox{...}`` in ``text`` (nested braces handled).

    Also accepts verl's ``\\boxed 5`` form (content up to the next ``$`` or end of line). Escaped
    braces ``\\{``/``\\}`` do not count. None when there is no box or it is never closed.
    """
    if not text:
        return None
    start = max(text.rfind(op) for op in _BOX_OPENERS)
    if start < 0:
        return None
    op = next(o for o in _BOX_OPENERS if text.startswith(o, start))
    i = start + len(op)
    if text.startswith(" ", i) and not text[i:].lstrip(" ").startswith("{"):
        rest = text[i:].lstrip(" ")
        return re.split(r"[$\n]", rest, maxsplit=1)[0].strip() or None
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    j = i
    while j < len(text):
        ch = text[j]
        if ch == "\\" and j + 1 < len(text) and text[j + 1] in "{}":
            j += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
        j += 1
    return None


def math_extract(text: str) -> str | None:
    """The MATH answer: the last boxed content, stripped; None if there is none (or it is empty)."""
    content = last_boxed(text)
    if content is None:
        return None
    content = content.strip()
    return content or None


_MV: tuple[Any, Any, Any] | None = None


def _math_verify() -> tuple[Any, Any, Any]:
    """Import math-verify on first use (keeps CLI start-up fast)."""
    global _MV
    if _MV is None:
        try:
            from math_verify import LatexExtractionConfig, parse, verify
        except ImportError as exc:
            raise ScoreError(f"scoring MATH answers needs the math-verify package ({exc})") from exc
        _MV = (parse, verify, LatexExtractionConfig)
    return _MV


def _mv_timeout() -> int | None:
    # math-verify's timeouts use signal.alarm, which raises ValueError outside the main thread: there,
    # run without its timeout rather than fail.
    return MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _mv_parse(latex_content: str) -> list[Any]:
    parse, _, latex_cfg = _math_verify()
    return parse(
        "\\boxed{" + latex_content + "}",
        extraction_config=[latex_cfg()],
        parsing_timeout=_mv_timeout(),
    )


def _math_key(parsed: list[Any], content: str) -> str:
    """Voting key: the parsed sympy expression's string, else the boxed content without spaces."""
    if parsed and not isinstance(parsed[0], str):
        try:
            return "sympy:" + str(parsed[0])
        except Exception:  # noqa: BLE001 - sympy printing can fail on odd objects; fall back
            pass
    return "text:" + re.sub(r"\s+", "", content)


def _score_math(responses: Sequence[str], ground_truth: Any) -> list[Sample]:
    _, verify, _ = _math_verify()
    truth = str(ground_truth).strip()
    if any(op in truth for op in _BOX_OPENERS):
        truth = math_extract(truth) or truth
    gold = _mv_parse(truth)
    cache: dict[str, tuple[float, str]] = {}
    out = []
    for text in responses:
        content = math_extract(text)
        if content is None:
            out.append(Sample(0.0))
            continue
        if content not in cache:
            parsed = _mv_parse(content)
            ok = bool(gold) and bool(parsed) and verify(gold, parsed, timeout_seconds=_mv_timeout())
            cache[content] = (1.0 if ok else 0.0, _math_key(parsed, content))
        score, key = cache[content]
        out.append(Sample(score, content, key))
    return out


# ------------------------------------------------------------------------------------------ dispatch

RULES = {"gsm8k": "math-verify gsm8k (last ####, else last number; numeric)",
         "math": "math-verify math (last box; math-verify equivalence)"}


def builtin_kind(data_source: str) -> str | None:
    """Return "gsm8k", "math", or None when this grader does not handle this data_source."""
    ds = str(data_source).lower()
    if "gsm8k" in ds:
        return "gsm8k"
    if "math" in ds:
        return "math"
    return None


def unknown_data_source(data_source: str) -> ScoreError:
    return ScoreError(
        f"the math-verify grader does not know data_source {data_source!r}: it grades data_sources "
        "containing 'gsm8k' or 'math'; use --grader verl (verl's default_compute_score sources) or pass a "
        "custom scorer with --custom FILE.py[:FUNCTION]"
    )


def _check_truth(ground_truth: Any) -> None:
    if isinstance(ground_truth, bool) or not isinstance(ground_truth, str | int | float):
        raise ScoreError(
            f"reward_model.ground_truth must be a string or a number, got {type(ground_truth).__name__}")


class MathVerifyGrader:
    """The lenient gsm8k/math grading, dispatched per row by data_source."""

    name = "math-verify"

    def rules(self, data_source: str) -> str:
        kind = builtin_kind(data_source)
        if kind is None:
            raise unknown_data_source(data_source)
        return RULES[kind]

    def uses_extra_info(self, data_source: str) -> bool:
        return False

    def score_row(
        self, data_source: str, responses: Sequence[str], ground_truth: Any, extra_info: Any = None
    ) -> list[Sample]:
        kind = builtin_kind(data_source)
        if kind is None:
            raise unknown_data_source(data_source)
        _check_truth(ground_truth)
        if kind == "gsm8k":
            return _score_gsm8k(responses, ground_truth)
        return _score_math(responses, ground_truth)


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None) -> float:
    """The lenient grade of one response: 1.0 if ``solution_str`` answers correctly, else 0.0."""
    return MathVerifyGrader().score_row(data_source, [solution_str], ground_truth, extra_info)[0].score
