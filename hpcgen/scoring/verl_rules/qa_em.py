"""verl's search-R1 QA rule (``verl/utils/reward_score/search_r1_like_qa_em.py``, ``compute_score``).

The answer is the LAST ``<answer>...</answer>`` (across lines), stripped. It is normalised (lower case,
ASCII punctuation removed, the words a/an/the removed, whitespace collapsed) and compared with each
normalised target; a match scores 1, or 0.25 when the response holds more than 10 ``<answer>`` or
``</answer>`` tags; no match or no answer scores 0.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from functools import lru_cache

from hpcgen.scoring.samples import Sample

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NO_PUNCT = str.maketrans("", "", string.punctuation)
MAX_TAGS = 10


@lru_cache(maxsize=65536)
def normalize(text: str) -> str:
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_NO_PUNCT)).split())


def extract(text: str) -> str | None:
    last = None
    for m in _ANSWER.finditer(text):
        last = m
    return None if last is None else last.group(1).strip()


def grade(responses: Sequence[str], targets: Sequence[str]) -> list[Sample]:
    gold = {normalize(t) for t in targets}
    out = []
    for text in responses:
        ans = extract(text)
        if ans is None:
            out.append(Sample(0.0))
            continue
        norm = normalize(ans)
        if norm in gold:
            many = text.count("<answer>") > MAX_TAGS or text.count("</answer>") > MAX_TAGS
            score = 0.25 if many else 1.0
        else:
            score = 0.0
        out.append(Sample(score, ans, norm))
    return out
