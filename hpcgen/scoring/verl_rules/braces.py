"""The one brace matcher verl's box extractors share (math_reward's and DAPO's ``last_boxed_only_string``)."""

from __future__ import annotations

import re

_BRACES = re.compile(r"[{}]")


def closing_brace(text: str, start: int) -> int | None:
    """Index of the ``}`` that closes the first ``{`` at or after ``start``; None when it is never closed."""
    depth = 0
    for m in _BRACES.finditer(text, start):
        if m.group() == "{":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return m.start()
    return None
