"""Answer extraction and per-sample scorers, verl-compatible.

Built-in scorers, chosen by ``data_source`` (case-insensitive):

* **gsm8k** - ``openai/gsm8k`` or any data_source containing ``gsm8k``. The answer is the number after
  the last ``####`` (strict); without one (or with no number after it), the last number in the text
  (flexible fallback). Commas, ``$``, and trailing units/periods/words are dropped and the number is
  compared numerically with the ground truth (``18.00`` == ``18``, ``1,234`` == ``1234``).
* **math** - ``DigitalLearningGmbH/MATH-lighteval``, ``lighteval/MATH`` or any other data_source
  containing ``math`` (e.g. ``HuggingFaceH4/MATH-500``). The answer is the content of the LAST
  ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces handled); no box means no answer (score 0).
  Equivalence with the ground truth is decided by the ``math-verify`` library, imported lazily.

A custom scorer follows verl's ``custom_reward_function`` convention: a Python file and a function
(default ``compute_score``) called as ``compute_score(data_source=..., solution_str=...,
ground_truth=..., extra_info=...)`` returning a float, a bool, or a dict with a ``"score"`` key. It
replaces the built-ins for every row. If the dict also has a ``"pred"`` key (as verl's DAPO scorer
does), that is the extracted answer and is used for majority voting; otherwise maj@k is not reported.

Every scorer returns, per sample, a :class:`Sample`: its score, the extracted answer (for people and
the per-sample output) and a canonical voting key (for maj@k; ``None`` = abstains).
"""

from __future__ import annotations

import importlib.util
import math
import numbers
import re
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Protocol

from hpcgen.errors import ScoreError

# A sample counts as correct (for pass@k and maj@k) when its score is above this. Built-in scorers give
# exactly 0 or 1; for custom scorers this treats e.g. verl's -1/+1 and 0.1-format-credit conventions right.
CORRECT_THRESHOLD = 0.5

# Per-call limits for math-verify's signal.alarm-based timeouts; only usable in the main thread.
MATH_VERIFY_TIMEOUT_S = 5


@dataclass(frozen=True)
class Sample:
    """One scored response."""

    score: float
    extracted: str | None = None  # the answer as found in the text (None: no answer)
    key: str | None = None  # canonical form for majority voting (None: abstains)
    votes: bool = True  # False when the scorer cannot extract answers (custom without "pred")


class RowScorer(Protocol):
    def score_row(
        self, data_source: str, responses: Sequence[str], ground_truth: Any, extra_info: Any
    ) -> list[Sample]: ...


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

GSM8K_NAMES = ("openai/gsm8k",)
MATH_NAMES = ("DigitalLearningGmbH/MATH-lighteval", "lighteval/MATH")


def builtin_kind(data_source: str) -> str | None:
    """Return "gsm8k", "math", or None when no built-in scorer handles this data_source."""
    ds = str(data_source).lower()
    if "gsm8k" in ds:
        return "gsm8k"
    if "math" in ds:
        return "math"
    return None


def unknown_data_source(data_source: str) -> ScoreError:
    return ScoreError(
        f"no built-in scorer for data_source {data_source!r}: built-ins are gsm8k "
        f"({', '.join(GSM8K_NAMES)} or any data_source containing 'gsm8k') and math "
        f"({', '.join(MATH_NAMES)} or any data_source containing 'math'); otherwise pass a custom "
        "scorer file defining compute_score(data_source, solution_str, ground_truth, extra_info=None)"
    )


class BuiltinScorer:
    """The built-in gsm8k/math scorers, dispatched per row by data_source."""

    def score_row(
        self, data_source: str, responses: Sequence[str], ground_truth: Any, extra_info: Any = None
    ) -> list[Sample]:
        kind = builtin_kind(data_source)
        if kind == "gsm8k":
            return _score_gsm8k(responses, ground_truth)
        if kind == "math":
            return _score_math(responses, ground_truth)
        raise unknown_data_source(data_source)


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None) -> float:
    """verl-compatible built-in reward: 1.0 if ``solution_str`` answers correctly, else 0.0."""
    return BuiltinScorer().score_row(data_source, [solution_str], ground_truth, extra_info)[0].score


# -------------------------------------------------------------------------------------------- custom


class CustomScorer:
    """A user's verl-style ``compute_score`` function."""

    def __init__(self, fn: Callable[..., Any], label: str) -> None:
        self.fn = fn
        self.label = label

    def _to_sample(self, result: Any) -> Sample:
        pred: Any = None
        has_pred = False
        if isinstance(result, dict):
            if "score" not in result:
                raise ScoreError(f"custom scorer {self.label} returned a dict without a 'score' key")
            has_pred = "pred" in result
            pred = result.get("pred")
            value = result["score"]
        else:
            value = result
        if not isinstance(value, numbers.Real):
            raise ScoreError(
                f"custom scorer {self.label} returned {type(value).__name__}; expected a float, "
                "a bool, or a dict with a 'score' key"
            )
        score = float(value)
        if math.isnan(score):
            raise ScoreError(f"custom scorer {self.label} returned NaN")
        extracted = None if pred is None else str(pred)
        key = None if extracted is None else "pred:" + extracted.strip()
        return Sample(score, extracted, key, votes=has_pred)

    def score_row(
        self, data_source: str, responses: Sequence[str], ground_truth: Any, extra_info: Any = None
    ) -> list[Sample]:
        out = []
        for text in responses:
            try:
                result = self.fn(
                    data_source=data_source,
                    solution_str=text,
                    ground_truth=ground_truth,
                    extra_info=extra_info,
                )
            except ScoreError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure in user code is reported in one line
                raise ScoreError(
                    f"custom scorer {self.label} raised {type(exc).__name__}: {exc} "
                    f"(data_source {data_source!r})"
                ) from exc
            out.append(self._to_sample(result))
        return out


def load_custom_scorer(path: Path, name: str = "compute_score") -> CustomScorer:
    """Load ``name`` from the Python file ``path`` (verl's custom_reward_function.path/name)."""
    path = Path(path)
    label = f"{path}:{name}"
    if not path.is_file():
        raise ScoreError(f"custom scorer file not found: {path}")
    module_name = f"hpcgen_custom_scorer_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ScoreError(f"custom scorer {path} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    # Let the file import helpers that sit next to it, as when run as a script.
    parent = str(path.resolve().parent)
    added = parent not in sys.path
    if added:
        sys.path.insert(0, parent)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - SystemExit: a script-like file
        sys.modules.pop(module_name, None)
        raise ScoreError(f"custom scorer {path} failed to import: {type(exc).__name__}: {exc}") from exc
    finally:
        if added:
            try:
                sys.path.remove(parent)
            except ValueError:
                pass
    fn = getattr(module, name, None)
    if fn is None:
        raise ScoreError(f"custom scorer {path} has no function {name!r}")
    if not callable(fn):
        raise ScoreError(f"custom scorer {path}: {name!r} is not a function")
    return CustomScorer(fn, label)
