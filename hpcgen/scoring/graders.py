"""The graders ``score`` can use, by name: ``verl`` (the default: verl's default_compute_score rules),
``math-verify`` (hpcgen's lenient grading), or a custom scorer file."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from hpcgen.errors import ScoreError
from hpcgen.scoring.samples import RowScorer

GRADERS = ("verl", "math-verify")
DEFAULT_GRADER = "verl"


@dataclass(frozen=True)
class GraderSpec:
    """What to grade with (picklable, so worker processes build the same grader)."""

    name: str = DEFAULT_GRADER
    custom_path: str | None = None
    custom_name: str = "compute_score"

    @property
    def label(self) -> str:
        return f"custom {self.custom_path}:{self.custom_name}" if self.custom_path else self.name


def check_grader_name(name: str, where: str = "--grader") -> str:
    if name not in GRADERS:
        raise ScoreError(f"{where}: unknown grader {name!r}; choose one of {', '.join(GRADERS)} "
                         "(or a custom scorer with --custom FILE.py[:FUNCTION])")
    return name


@lru_cache(maxsize=8)
def make_grader(spec: GraderSpec) -> RowScorer:
    if spec.custom_path:
        from hpcgen.scoring.custom import load_custom_scorer

        return load_custom_scorer(Path(spec.custom_path), spec.custom_name)
    check_grader_name(spec.name)
    if spec.name == "verl":
        from hpcgen.scoring.verl_rules import VerlGrader

        return VerlGrader()
    from hpcgen.scoring.lenient import MathVerifyGrader

    return MathVerifyGrader()
