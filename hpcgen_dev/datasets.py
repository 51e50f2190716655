"""Synthetic verl-format prompt datasets (GSM8K- and MATH-like) with correct, code-computed ground truths.

Schema (pyarrow)::

    data_source : string    "openai/gsm8k" | "DigitalLearningGmbH/MATH-lighteval"
    prompt      : list<struct<role: string, content: string>>
    ability     : string    "math"
    reward_model: struct<style: string, ground_truth: string>      style "rule"
    extra_info  : struct<split: string, index: int64[, question: string, answer: string]>
    [meta       : struct<tags: list<string>, difficulty: struct<level: int64>>]      (variety only)

Row ``i`` depends only on ``(seed, i, style, variety, i in overlong_rows)``, never on ``n_rows``.
The last user message always ends with the verl instruction; its last paragraph (after the final blank
line) is the problem itself followed by the instruction.
CLI: ``python -m hpcgen_dev.datasets OUT --rows N [--style mixed] [--seed 0] [--variety] [--overlong I ...]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import uuid
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

GSM8K_SOURCE = "openai/gsm8k"
MATH_SOURCE = "DigitalLearningGmbH/MATH-lighteval"
GSM8K_INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'
MATH_INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."
STYLES = ("gsm8k", "math", "mixed")
OVERLONG_CHARS = 20_000

NAMES = ["Alice", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jamal"]
NAMES_INTL = ["José", "Zoë", "李雷", "Søren", "Ngọc", "Chloé", "Łukasz", "Ayşe", "Dmitrï", "さくら"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "cookies", "books"]
ITEMS_INTL = ["🍎 apples", "crêpes", "饺子 dumplings", "café cups", "🌟 stars"]
SYSTEM_PROMPTS = [
    "You are a helpful math tutor.",
    "You are a careful assistant. Réponds clairement et montre ton raisonnement. 🧮",
    "你是一个乐于助人的数学老师。Show your work.",
]
DECORATIONS = [" (Bonne chance! 加油 🚀)", " Ünïcödé check: naïve façade, 東京, 🎉.", " — ¿Listo? ✅"]
_FILLER = [
    "Background note: the village market opens early and the traders arrange their stalls in long rows.",
    "Nobody in the story is in a hurry, and every detail here is irrelevant to the question below.",
    "The weather was mild, the river was calm, and the old bridge creaked whenever a cart rolled across.",
    "Several visitors asked about the history of the town hall, but the guide only smiled and walked on.",
]

Problem = tuple[str, str, str]  # (question, ground truth, worked solution)


def latex_number(value: Fraction | int) -> str:
    """A rational as MATH writes it: ``12``, ``-3``, ``\\frac{3}{4}``, ``-\\frac{1}{2}``."""
    f = Fraction(value)
    if f.denominator == 1:
        return str(f.numerator)
    sign = "-" if f < 0 else ""
    return f"{sign}\\frac{{{abs(f.numerator)}}}{{{f.denominator}}}"


# ----------------------------------------------------------------------------------------------- GSM8K
def _gsm(question: str, steps: str, ans: int) -> Problem:
    return question, str(ans), f"{steps}\n#### {ans:,}"


def g_packs(rng: random.Random, names: list[str], items: list[str]) -> Problem:
    name, item = rng.choice(names), rng.choice(items)
    a, b = rng.randint(2, 12), rng.randint(3, 15)
    c = rng.randint(1, a * b - 1)
    q = (
        f"{name} buys {a} packs of {item}. Each pack has {b} {item}. {name} gives away {c} of the {item}. "
        f"How many {item} does {name} have left?"
    )
    return _gsm(q, f"{name} buys {a} * {b} = {a * b} {item}. {a * b} - {c} = {a * b - c}.", a * b - c)


def g_wage(rng: random.Random, names: list[str], items: list[str]) -> Problem:
    name = rng.choice(names)
    a, b, c = rng.randint(8, 45), rng.randint(2, 10), rng.randint(3, 30)
    q = (
        f"{name} earns ${a} per hour and works {b} hours a day for {c} days. "
        f"How many dollars does {name} earn in total?"
    )
    return _gsm(q, f"Per day: {a} * {b} = {a * b}. Total: {a * b} * {c} = {a * b * c}.", a * b * c)


def g_train(rng: random.Random, names: list[str], items: list[str]) -> Problem:
    a, b, c, d = rng.randint(20, 90), rng.randint(1, 6), rng.randint(20, 90), rng.randint(1, 6)
    q = (
        f"A train travels at {a} miles per hour for {b} hours, then at {c} miles per hour for {d} hours. "
        "How many miles does the train travel in total?"
    )
    ans = a * b + c * d
    return _gsm(q, f"{a} * {b} = {a * b}; {c} * {d} = {c * d}; {a * b} + {c * d} = {ans}.", ans)


def g_share(rng: random.Random, names: list[str], items: list[str]) -> Problem:
    name, item = rng.choice(names), rng.choice(items)
    a, b, c = rng.randint(2, 20), rng.randint(2, 9), rng.randint(1, 10)
    q = (
        f"{name} has {a * b} {item} and shares them equally among {b} friends, keeping none. "
        f"Then each friend gets {c} more {item}. How many {item} does each friend have now?"
    )
    return _gsm(q, f"Each friend gets {a * b} / {b} = {a}, then {a} + {c} = {a + c}.", a + c)


def g_discount(rng: random.Random, names: list[str], items: list[str]) -> Problem:
    p, d = 20 * rng.randint(1, 60), rng.choice([5, 10, 15, 20, 25, 30, 40, 50, 75])
    ans = p * (100 - d) // 100  # exact: p is a multiple of 20 and 100 - d a multiple of 5
    q = f"A jacket costs ${p}. It is on sale for {d}% off. How many dollars does the jacket cost after the discount?"
    return _gsm(q, f"The discount is {p} * {d} / 100 = {p - ans}, so {p} - {p - ans} = {ans}.", ans)


def g_ages(rng: random.Random, names: list[str], items: list[str]) -> Problem:
    name, name2 = rng.sample(names, 2)
    a, b, c = rng.randint(4, 20), rng.randint(1, 15), rng.randint(1, 10)
    q = (
        f"{name} is {a} years old. {name2} is {b} years older than twice {name}'s age. "
        f"How old will {name2} be in {c} years?"
    )
    ans = 2 * a + b + c
    return _gsm(q, f"{name2} is 2 * {a} + {b} = {2 * a + b} now, so {2 * a + b} + {c} = {ans}.", ans)


# ------------------------------------------------------------------------------------------------ MATH
def _boxed(gt: str, steps: str) -> str:
    return f"{steps} The answer is $\\boxed{{{gt}}}$."


def m_frac_sum(rng: random.Random, names: list[str], items: list[str]) -> Problem:
    b, d = rng.randint(2, 12), rng.randint(2, 12)
    a, c = rng.randint(1, b - 1), rng.randint(1, d - 1)
    gt = latex_number(Fraction(a, b) + Fraction(c, d))
    q = f"Compute $\\frac{{{a}}}{{{b}}} + \\frac{{{c}}}{{{d}}}$. Express your answer as a common fraction in lowest terms."
    return q, gt, _boxed(gt, "Use a common denominator and reduce.")


def m_sqrt(rng: random.Random, names: list[str], items: list[str]) -> Problem:
    k, m = rng.randint(2, 9), rng.choice([2, 3, 5, 6, 7, 10, 11, 13, 14, 15])
    gt = f"{k}\\sqrt{{{m}}}"
    return f"Simplify $\\sqrt{{{k * k * m}}}$.", gt, _boxed(gt, f"${k * k * m} = {k * k} \\cdot {m}$.")


def m_linear(rng: random.Random, names: list[str], items: list[str]) -> Problem:
    a, x = rng.randint(2, 9), rng.randint(-10, 10)
    b = rng.choice([v for v in range(-20, 21) if v != 0])
    sign = "+" if b > 0 else "-"
    q = f"Solve for $x$: ${a}x {sign} {abs(b)} = {a * x + b}$."
    return q, str(x), _boxed(str(x), f"$x = ({a * x + b} - ({b})) / {a}$.")


def m_lcm(rng: random.Random, names: list[str], items: list[str]) -> Problem:
    a, b = rng.randint(2, 60), rng.randint(2, 60)
    gt = str(a * b // math.gcd(a, b))
    return (
        f"What is the least common multiple of ${a}$ and ${b}$?",
        gt,
        _boxed(gt, "Divide the product by the gcd."),
    )


def m_arith(rng: random.Random, names: list[str], items: list[str]) -> Problem:
    a, d, n = rng.randint(-10, 20), rng.randint(2, 9), rng.randint(5, 40)
    gt = str(a + (n - 1) * d)
    q = (
        f"The first term of an arithmetic sequence is ${a}$ and the common difference is ${d}$. "
        f"What is term number ${n}$ of the sequence?"
    )
    return q, gt, _boxed(gt, f"$a_n = {a} + ({n} - 1) \\cdot {d}$.")


def m_prob(rng: random.Random, names: list[str], items: list[str]) -> Problem:
    r, b = rng.randint(1, 15), rng.randint(1, 15)
    gt = latex_number(Fraction(r, r + b))
    q = (
        f"A bag contains ${r}$ red marbles and ${b}$ blue marbles. One marble is drawn at random. "
        "What is the probability that it is red? Express your answer as a common fraction."
    )
    return q, gt, _boxed(gt, f"There are {r + b} marbles, {r} of them red.")


Template = Callable[[random.Random, list[str], list[str]], Problem]
GSM8K_TEMPLATES: list[Template] = [g_packs, g_wage, g_train, g_share, g_discount, g_ages]
MATH_TEMPLATES: list[Template] = [m_frac_sum, m_sqrt, m_linear, m_lcm, m_arith, m_prob]


# ------------------------------------------------------------------------------------------------ rows
def row_style(style: str, index: int) -> str:
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if style == "mixed":
        return "gsm8k" if index % 2 == 0 else "math"
    return style


def _problem(kind: str, rng: random.Random, variety: bool) -> tuple[str, Problem]:
    names = NAMES + NAMES_INTL if variety else NAMES
    items = ITEMS + ITEMS_INTL if variety else ITEMS
    templates = GSM8K_TEMPLATES if kind == "gsm8k" else MATH_TEMPLATES
    template = rng.choice(templates)
    return template.__name__, template(rng, names, items)


def _filler(rng: random.Random, n_chars: int) -> str:
    parts: list[str] = []
    size = 0
    while size < n_chars:
        parts.append(rng.choice(_FILLER))
        size += len(parts[-1]) + 1
    return " ".join(parts)


def make_row(
    index: int, *, style: str = "mixed", seed: int = 0, variety: bool = False, overlong: bool = False
) -> dict[str, Any]:
    """Row ``index`` of the dataset (a plain dict in the verl schema)."""
    kind = row_style(style, index)
    rng = random.Random(f"hpcgen-dataset:{seed}:{index}")
    template, (question, gt, solution) = _problem(kind, rng, variety)
    instruction = GSM8K_INSTRUCTION if kind == "gsm8k" else MATH_INSTRUCTION
    body = question
    if variety and index % 5 == 2:
        body += rng.choice(DECORATIONS)
    content = f"{body} {instruction}"
    if overlong:
        content = _filler(rng, OVERLONG_CHARS) + "\n\n" + content
    messages: list[dict[str, str]] = []
    tags = [kind, template]
    if variety and index % 4 == 1:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        tags.append("system")
    if variety and index % 6 == 4:
        _, (q0, gt0, _) = _problem(kind, rng, variety)
        messages.append({"role": "user", "content": f"{q0} {instruction}"})
        final = f"#### {gt0}" if kind == "gsm8k" else f"\\boxed{{{gt0}}}"
        messages.append({"role": "assistant", "content": f"The answer is {final}."})
        tags.append("multi_turn")
    messages.append({"role": "user", "content": content})
    row: dict[str, Any] = {
        "data_source": GSM8K_SOURCE if kind == "gsm8k" else MATH_SOURCE,
        "prompt": messages,
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": gt},
        "extra_info": {"split": "test", "index": index},
    }
    if variety:
        row["extra_info"].update(question=question, answer=solution)
        row["meta"] = {"tags": [] if index % 7 == 6 else tags, "difficulty": {"level": rng.randint(1, 5)}}
    return row


def make_rows(
    n_rows: int,
    *,
    style: str = "mixed",
    seed: int = 0,
    variety: bool = False,
    overlong_rows: Sequence[int] = (),
) -> list[dict[str, Any]]:
    if n_rows < 0:
        raise ValueError("n_rows must be >= 0")
    row_style(style, 0)  # validate even when n_rows == 0
    long = set(overlong_rows)
    return [make_row(i, style=style, seed=seed, variety=variety, overlong=i in long) for i in range(n_rows)]


def ground_truth(row: dict[str, Any]) -> str:
    return str(row["reward_model"]["ground_truth"])


def arrow_schema(variety: bool = False) -> Any:
    import pyarrow as pa

    extra = [pa.field("split", pa.string()), pa.field("index", pa.int64())]
    if variety:
        extra += [pa.field("question", pa.string()), pa.field("answer", pa.string())]
    fields = [
        pa.field("data_source", pa.string()),
        pa.field(
            "prompt", pa.list_(pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())]))
        ),
        pa.field("ability", pa.string()),
        pa.field(
            "reward_model", pa.struct([pa.field("style", pa.string()), pa.field("ground_truth", pa.string())])
        ),
        pa.field("extra_info", pa.struct(extra)),
    ]
    if variety:
        level = pa.struct([pa.field("level", pa.int64())])
        fields.append(
            pa.field(
                "meta", pa.struct([pa.field("tags", pa.list_(pa.string())), pa.field("difficulty", level)])
            )
        )
    return pa.schema(fields)


def make_dataset(
    path: Path,
    n_rows: int,
    *,
    style: str = "mixed",
    seed: int = 0,
    variety: bool = False,
    overlong_rows: Sequence[int] = (),
    row_group_size: int | None = None,
) -> Path:
    """Write the dataset to ``path`` atomically: parquet, or JSON lines if the name ends with ``.jsonl``."""
    path = Path(path)
    rows = make_rows(n_rows, style=style, seed=seed, variety=variety, overlong_rows=overlong_rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        if path.name.endswith(".jsonl"):
            with open(tmp, "w", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pylist(rows, schema=arrow_schema(variety))
            pq.write_table(table, tmp, row_group_size=row_group_size)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hpcgen_dev.datasets", description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="output file (.parquet, or .jsonl for JSON lines)")
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--style", choices=STYLES, default="mixed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--variety", action="store_true", help="system prompts, multi-turn, non-ASCII, extra columns"
    )
    ap.add_argument(
        "--overlong", type=int, nargs="*", default=[], metavar="I", help="row indices made ~20k chars"
    )
    ap.add_argument("--row-group-size", type=int, default=None)
    args = ap.parse_args(argv)
    out = make_dataset(
        args.out,
        args.rows,
        style=args.style,
        seed=args.seed,
        variety=args.variety,
        overlong_rows=args.overlong,
        row_group_size=args.row_group_size,
    )
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
