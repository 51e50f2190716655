"""Custom scorers: a user's function in verl's ``custom_reward_function`` convention.

A Python file and a function (default ``compute_score``) called as ``compute_score(data_source=...,
solution_str=..., ground_truth=..., extra_info=...)`` returning a float, a bool, or a dict with a ``"score"``
key. It replaces the graders for every row. If the dict also has a ``"pred"`` key (as verl's DAPO scorer
does), that is the extracted answer and is used for majority voting; otherwise maj@k is not reported.
"""

from __future__ import annotations

import importlib.util
import math
import numbers
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hpcgen.errors import ScoreError
from hpcgen.scoring.samples import Sample


class CustomScorer:
    """A user's verl-style ``compute_score`` function."""

    def __init__(self, fn: Callable[..., Any], label: str) -> None:
        self.fn = fn
        self.label = label
        self.name = f"custom {label}"

    def rules(self, data_source: str) -> str:
        return self.name

    def uses_extra_info(self, data_source: str) -> bool:
        return True

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
