"""verl's ``openai/gsm8k`` rule (``verl/utils/reward_score/gsm8k.py``, method "strict"), in hpcgen's code.

Only the last 300 characters of a response are looked at. The answer is the LAST match of
``#### (-?[0-9.,]+)`` there, with ``,`` and ``$`` removed; it scores 1 when it equals the ground truth
as a string ("18.00" is not "18", "1,234" is "1234"), else 0. No ``#### `` (with its space): 0.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from hpcgen.scoring.samples import Sample

CLIP_CHARS = 300
_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")


def extract(text: str) -> str | None:
    """The strict answer, as verl's ``extract_solution(method="strict")`` returns it, or None."""
    if len(text) > CLIP_CHARS:
        text = text[-CLIP_CHARS:]
    if "#### " not in text:
        return None
    found = _STRICT.findall(text)
    if not found:
        return None
    return found[-1].replace(",", "").replace("$", "")


def grade(responses: Sequence[str], truth: str) -> list[Sample]:
    out = []
    for text in responses:
        ans = extract(text)
        out.append(Sample(1.0 if ans is not None and ans == truth else 0.0, ans, ans))
    return out
