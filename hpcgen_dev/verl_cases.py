"""Varied model responses for comparing hpcgen's ``verl`` grader with verl's own functions: right and wrong
formats, ``$`` and thousands commas, ``18.00`` against ``18``, answers past the last 300 characters,
several ``####``, nested and unclosed boxes, ``\\dfrac``, ``\\text{}``, degrees, percentages, intervals,
tuples, DAPO ``Answer:`` lines, QA aliases and articles, plus token soup that drives verl's normalisers
into their odd corners (exceptions, asserts). Deterministic: a fixed seed per family."""

from __future__ import annotations

import random
from typing import Any

FAMILIES = ("gsm8k", "math", "dapo", "qa")
SOURCES = {
    "gsm8k": ["openai/gsm8k"],
    "math": ["lighteval/MATH", "DigitalLearningGmbH/MATH-lighteval", "HuggingFaceH4/MATH-500"],
    "dapo": ["math_dapo", "math", "math_dapo_reasoning", "aime2024", "aime25"],
    "qa": ["searchR1_nq", "searchR1_triviaqa", "searchR1_popqa", "searchR1_hotpotqa", "searchR1_2wikimultihopqa",
           "searchR1_musique", "searchR1_bamboogle"],
}
FILLER = ("Let me think step by step. First we compute the total, then we subtract what was spent. "
          "Natalia sold 48 clips in April and half as many in May, 24, so 72 altogether; 3 + 4 = 7. ")


def _filler(rng: random.Random, n: int) -> str:
    return (FILLER * (n // len(FILLER) + 1))[rng.randrange(len(FILLER)):][:n] if n else ""


def _pad(rng: random.Random, core: str) -> str:
    before = rng.choice([0, 0, 10, 120, 250, 290, 296, 299, 301, 350, 700, 2000])
    after = rng.choice([0, 0, 0, 0, 0, 0, 2, 20, 99, 101, 150, 280, 299, 300, 320, 900])
    return _filler(rng, before) + core + _filler(rng, after)


def _soup(rng: random.Random, tokens: list[str], n: int) -> str:
    return "".join(rng.choice(tokens) for _ in range(rng.randint(1, n)))


# --------------------------------------------------------------------------------------------- gsm8k

GSM_TRUTHS = ["18", "72", "1234", "-5", "0.5", "1000000", "3", "0", "18.00", "1,234", "42"]


def _gsm_answer(rng: random.Random, truth: str) -> str:
    v = truth.lstrip("-")
    neg = truth.startswith("-")
    forms = [truth, f"{truth}.00", f"{truth}.", f"${truth}", f"$ {truth}", f"{truth} dollars", f"**{truth}**",
             f"{int(float(v)):,}" if v.replace(".", "").isdigit() else truth, f"- {v}" if neg else truth,
             str(int(float(v)) + rng.choice([-1, 1, 10])) if v.replace(".", "").isdigit() else "x",
             f"{truth},", f",{truth}", "1.234,5", ".5", "", "forty-two", f"{truth}\\n"]
    return rng.choice(forms)


def _gsm(rng: random.Random, truth: str) -> str:
    marker = rng.choice(["#### ", "#### ", "#### ", "####", "####  ", "### ", "##### ", "#### $", "#### -"])
    core = f"{marker}{_gsm_answer(rng, truth)}"
    r = rng.random()
    if r < 0.15:  # several ####, the right one first or last
        other = f"#### {_gsm_answer(rng, truth)}"
        core = f"{core}\n{_filler(rng, rng.choice([5, 100, 310]))}{other}" if rng.random() < 0.5 else f"{other} {core}"
    elif r < 0.25:
        core = f"The answer is {_gsm_answer(rng, truth)}."
    elif r < 0.32:
        core = _soup(rng, ["#", "#### ", " ", "-", "1", "8", ".", ",", "$", "\n", "0"], 30)
    return _pad(rng, core)


# ---------------------------------------------------------------------------------------------- MATH

MATH_TRUTHS = ["\\frac{1}{2}", "0.5", "3", "\\sqrt{2}", "(0,1]", "[2, 5)", "(1, 2)", "90^\\circ", "50\\%",
               "\\text{(A)}", "10\\text{ cm}", "x^2+1", "\\dfrac{3}{4}", "k = 5", "1,000", "\\$5", "\\infty",
               "-\\frac{\\sqrt{3}}{2}", "3/4", ".5", "\\left( 1, 2 \\right)", "\\{1,2\\}", "\\frac12", "\\sqrt3",
               "2\\sqrt{2}", "\\text{Monday}", "x=3", "\\tfrac{1}{3}", "-7", "18"]
VARIANTS = [
    lambda t: t, lambda t: t.replace("\\frac", "\\dfrac"), lambda t: t.replace("\\dfrac", "\\frac"),
    lambda t: t.replace(" ", ""), lambda t: " ".join(t), lambda t: f"\\left({t}\\right)", lambda t: f"{t}^\\circ",
    lambda t: f"{t}^{{\\circ}}", lambda t: f"{t}\\%", lambda t: t.replace("\\%", ""), lambda t: f"x = {t}",
    lambda t: f"{t}\\text{{ cm}}", lambda t: f"{t} \\text{{ units}} \\text{{ more}}", lambda t: f"\\${t}",
    lambda t: t.replace("{", "").replace("}", ""), lambda t: "1/2" if t == "\\frac{1}{2}" else "2/4",
    lambda t: "\\frac 1 2", lambda t: "\\frac", lambda t: f"{t}\\sqrt", lambda t: f"{t}\\!", lambda t: f"{t}\\\\",
    lambda t: f"{t}.", lambda t: t + "0", lambda t: "18.00", lambda t: "1000", lambda t: f"\\text{{{t}}}",
    lambda t: t.replace("(", "[").replace(")", "]"), lambda t: "(1,2)", lambda t: "(0, 1]", lambda t: "\\frac{3}{4}",
]


def _box(rng: random.Random, ans: str) -> str:
    forms = [f"\\boxed{{{ans}}}", f"$\\boxed{{{ans}}}$", f"\\boxed {ans}$ done", f"\\boxed {ans}", f"\\fbox{{{ans}}}",
             f"\\boxed{{{ans}", f"\\boxed{{\\boxed{{{ans}}}}}", f"\\boxed{{{ans}}} and \\boxed {{{ans}}}",
             f"\\boxed{{1}} then \\boxed{{{ans}}}", f"\\boxed{{{ans}}} or \\boxed{{7}}", f"\\boxed{{{ans}}}}}",
             f"\\boxedx{{{ans}}}", f"\\boxed{{{ans}}}\n\\fbox{{9}}", ans, f"\\boxed{{{{{ans}}}}}"]
    return rng.choice(forms)


def _math(rng: random.Random, truth: str) -> str:
    if rng.random() < 0.2:
        ans = _soup(rng, ["\\frac", "{", "}", "1", "2", " ", "/", "=", "\\sqrt", "\\text{ ", "\\left", "\\right",
                          ".", ",", "^\\circ", "\\%", "\n", "-", "\\$", "\\!", "0.5", "a", "x"], 12)
    else:
        ans = rng.choice(VARIANTS)(truth)
    return _pad(rng, f"So the answer is {_box(rng, ans)}.")


# ---------------------------------------------------------------------------------------------- DAPO

DAPO_TRUTHS = ["5", "18", "204", "\\frac{1}{2}", "1,000", "90", "\\sqrt{3}", "10", "x=3", "-2", "33",
               "\\text{(C)}", "3\\sqrt{2}", "1000"]


def _dapo(rng: random.Random, truth: str) -> str:
    ans = rng.choice(VARIANTS)(truth) if rng.random() < 0.8 else _soup(
        rng, ["a ", "an ", "$", "\\text{", "}", "{", "frac", "sqrt", "12", "=", ",", "degrees", " ", "\\boxed{",
              "mbox", "\\ldots", ".", "\\;", "1", "0"], 12)
    line = rng.choice(["Answer: {}", "answer:{}", "ANSWER : {}", "Answer: ${}$", "Answer: \\boxed{{{}}}",
                       "Final Answer: The final answer is {}. I hope it is correct.", "Answer: {} degrees",
                       "Answer:\n{}", "Answer: {}\nAnswer: 7", "Answer: 7\nAnswer: {}", "The result: {}",
                       "\\boxed{{{}}}", "so $\\boxed{{{}}}$", "Answer: [INVALID]", "Answer: {} dollars",
                       "Answer: x = {}", "Answer: {}.", "Answer: a {}", "{}"]).format(ans)
    if rng.random() < 0.15:  # an Answer: line far from the end, a box near it
        line = f"{line}\n{_filler(rng, rng.choice([50, 120, 310]))} \\boxed{{{ans}}}"
    return _pad(rng, line)


# ------------------------------------------------------------------------------------------------ QA

QA_TARGETS: list[list[str]] = [["The Beatles", "Beatles"], ["Paris"], ["1969"], ["New York City", "NYC"],
                               ["U.S.A.", "United States"], ["a tale of two cities"], ["Marie Curie"], ["42"],
                               ["the"], ["Rock 'n' roll", "rock and roll"], [], ["São Paulo"]]


def _qa_truth(rng: random.Random) -> dict[str, Any]:
    targets = rng.choice(QA_TARGETS)
    return {"target": targets if rng.random() < 0.85 or len(targets) != 1 else targets[0]}


def _qa(rng: random.Random, truth: dict[str, Any]) -> str:
    targets = truth["target"] if isinstance(truth["target"], list) else [truth["target"]]
    base = rng.choice(targets) if targets and rng.random() < 0.75 else rng.choice(["London", "Beatles", "1970"])
    ans = rng.choice([base, base.lower(), base.upper(), f"the {base}", f"a {base}", f"{base}!", f"  {base} ",
                      f"{base}.", base.replace(" ", "  "), f"An {base}", f"{base}\n", base.replace(".", ""),
                      f"{base} (band)", f"The {base}, of course", _soup(rng, ["the", " ", "a", ".", "x"], 6)])
    form = rng.choice(["<answer>{}</answer>", "<answer>{}</answer>", "<think>hmm</think><answer>{}</answer>",
                       "<answer>wrong</answer> then <answer>{}</answer>", "<answer>{}</answer><answer>no</answer>",
                       "<answer>{}", "{}", "<answer>\n{}\n</answer>", "<Answer>{}</Answer>",
                       "<answer>x</answer>" * 11 + "<answer>{}</answer>", "<answer>{}</answer>" + "</answer>" * 10,
                       "<answer>{}</answer>" + "</answer>" * 11])
    return _pad(rng, form.format(ans))


_MAKERS: dict[str, Any] = {"gsm8k": _gsm, "math": _math, "dapo": _dapo, "qa": _qa}
_TRUTHS: dict[str, Any] = {"gsm8k": lambda rng: rng.choice(GSM_TRUTHS), "math": lambda rng: rng.choice(MATH_TRUTHS),
                           "dapo": lambda rng: rng.choice(DAPO_TRUTHS), "qa": _qa_truth}


def rows(family: str, count: int, n: int, seed: int = 0) -> list[tuple[str, list[str], Any]]:
    """``count`` rows (data_source, n responses to one ground truth, ground_truth) of one family."""
    rng = random.Random(f"{family}-rows-{seed}")
    out = []
    for _ in range(count):
        truth = _TRUTHS[family](rng)
        out.append((rng.choice(SOURCES[family]), [_MAKERS[family](rng, truth) for _ in range(n)], truth))
    return out


def cases(family: str, count: int = 600, seed: int = 0) -> list[tuple[str, str, Any]]:
    """``count`` (data_source, response, ground_truth) cases of one family, deterministic."""
    return [(ds, responses[0], truth) for ds, responses, truth in rows(family, count, 1, seed)]
