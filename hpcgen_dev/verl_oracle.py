"""verl's own reward functions as an oracle, for the fidelity test and the scoring benchmark only.

Downloads the verl 0.9.1 wheel from the package index once (``pip download verl==0.9.1 --no-deps``, no
install), checks its sha256, and loads ``verl/utils/reward_score/{gsm8k,math_reward,math_dapo,
search_r1_like_qa_em}.py`` straight out of it as plain modules. The ``verl`` package itself is never
imported (it pulls Ray and torch). Those four files import only the standard library (``re``, ``typing``,
``random``, ``string``), which ``stdlib_only`` checks; the others verl grades with (``prime_math``:
sympy, pylatexenc and ``verl.utils.py_functional``; ``geo3k``: mathruler) are not loaded.
"""

from __future__ import annotations

import ast
import hashlib
import os
import subprocess
import sys
import types
import zipfile
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

VERL_VERSION = "0.9.1"
WHEEL_NAME = f"verl-{VERL_VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "db6e6f2a8d9d5808d9ec32d357a42319fdc6967df688ff9d9810050f49bfdd14"
REWARD_FILES = ("gsm8k", "math_reward", "math_dapo", "search_r1_like_qa_em")
INSIDE = "verl/utils/reward_score/{}.py"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_wheel(cache: Path) -> Path:
    """The verl wheel under ``cache/verl-wheel/``, downloaded on first use and checked against its hash."""
    where = cache / "verl-wheel"
    wheel = where / WHEEL_NAME
    if wheel.is_file() and _sha256(wheel) == WHEEL_SHA256:
        return wheel
    where.mkdir(parents=True, exist_ok=True)
    tmp = where / f".download-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    res = subprocess.run([sys.executable, "-m", "pip", "download", f"verl=={VERL_VERSION}", "--no-deps",
                          "--only-binary=:all:", "--disable-pip-version-check", "-q", "-d", str(tmp)],
                         capture_output=True, text=True, timeout=600)
    got = tmp / WHEEL_NAME
    if res.returncode != 0 or not got.is_file():
        raise RuntimeError(f"pip download verl=={VERL_VERSION} failed: {res.stderr.strip()[-2000:]}")
    digest = _sha256(got)
    if digest != WHEEL_SHA256:
        raise RuntimeError(f"{WHEEL_NAME}: sha256 {digest}, expected {WHEEL_SHA256}")
    os.replace(got, wheel)
    for p in tmp.iterdir():
        p.unlink()
    tmp.rmdir()
    return wheel


def sources(wheel: Path) -> dict[str, str]:
    with zipfile.ZipFile(wheel) as zf:
        return {name: zf.read(INSIDE.format(name)).decode() for name in REWARD_FILES}


def imported_modules(source: str) -> set[str]:
    """Top-level names of every module a source file imports (at any depth)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.add("." if node.level else (node.module or "").split(".")[0])
    return found


def stdlib_only(source: str) -> set[str]:
    """The imports of ``source`` that are NOT in the standard library (empty: loadable as it is)."""
    return {m for m in imported_modules(source) if m not in sys.stdlib_module_names}


class Oracle:
    """verl's four stdlib-only reward modules, and ``default_compute_score``'s dispatch over them."""

    def __init__(self, wheel: Path) -> None:
        self.wheel = wheel
        self.sources = sources(wheel)
        self.modules: dict[str, types.ModuleType] = {}
        for name, src in self.sources.items():
            extra = stdlib_only(src)
            if extra:
                raise RuntimeError(f"verl's {name}.py imports {sorted(extra)} beyond the standard library")
            mod = types.ModuleType(f"verl_oracle_{name}")
            mod.__file__ = f"{wheel}!/{INSIDE.format(name)}"
            exec(compile(src, mod.__file__, "exec"), mod.__dict__)  # noqa: S102 - the oracle's own code
            self.modules[name] = mod

    def default_compute_score(self, data_source: str, solution_str: str, ground_truth: Any) -> Any:
        """verl 0.9.1's ``default_compute_score`` for the families these four files grade."""
        m = self.modules
        if data_source == "openai/gsm8k":
            res = m["gsm8k"].compute_score(solution_str, ground_truth)
        elif data_source in ["lighteval/MATH", "DigitalLearningGmbH/MATH-lighteval", "HuggingFaceH4/MATH-500"]:
            res = m["math_reward"].compute_score(solution_str, ground_truth)
        elif data_source in ["math_dapo", "math", "math_dapo_reasoning"] or data_source.startswith("aime"):
            res = m["math_dapo"].compute_score(solution_str, ground_truth)
        elif data_source.startswith("searchR1_"):
            res = m["search_r1_like_qa_em"].compute_score(solution_str, ground_truth)
        else:
            raise NotImplementedError(f"Reward function is not implemented for {data_source=}")
        if isinstance(res, dict):
            return res
        if isinstance(res, int | float | bool):
            return float(res)
        return float(res[0])

    def score(self, data_source: str, solution_str: str, ground_truth: Any) -> tuple[float, float]:
        """(the number mean@n averages, verl's reward): for DAPO (acc as 1/0, score), else (score, score)."""
        res = self.default_compute_score(data_source, solution_str, ground_truth)
        if isinstance(res, dict):
            return (1.0 if res["acc"] else 0.0), float(res["score"])
        return res, res


def main_eval_means(oracle: Oracle, rows: Iterable[tuple[str, list[str], Any]]) -> dict[str, tuple[float, float]]:
    """verl's main_eval arithmetic: per row the mean of its responses' scores, then per data_source the
    mean over rows; returned as {data_source: (mean of the mean@n number, mean of the reward)}."""
    import contextlib
    import io

    acc: dict[str, list[tuple[float, float]]] = defaultdict(list)
    with contextlib.redirect_stdout(io.StringIO()):
        for ds, responses, truth in rows:
            scored = [oracle.score(ds, r, truth) for r in responses]
            acc[ds].append((sum(s for s, _ in scored) / len(scored), sum(r for _, r in scored) / len(scored)))
    return {ds: (sum(a for a, _ in v) / len(v), sum(b for _, b in v) / len(v)) for ds, v in acc.items()}
