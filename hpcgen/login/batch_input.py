"""OpenAI batch files at plan time (vLLM ``run-batch``'s input, :mod:`hpcgen.spec.batch`): detected from the
first line; every line checked before anything is queued (custom_id present and unique across the dataset's
files, POST to /v1/chat/completions, messages, every body value honoured or refused, ``max_tokens`` within the
engine's room, no ``body.seed`` in a run of several seeds); each request's ``n`` recorded.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcgen.errors import DatasetError

BATCH_COLUMNS = ["custom_id", "method", "url", "body"]


def is_batch_file(path: Path) -> bool:
    """An OpenAI batch input: its first non-blank line is an object with custom_id, url and body."""
    try:
        with open(path, "rb") as fh:
            for line in fh:
                if line.strip():
                    obj = json.loads(line)
                    return isinstance(obj, dict) and {"custom_id", "url", "body"} <= set(obj)
    except (OSError, ValueError):
        return False
    return False


@dataclass
class BatchFile:
    digest: str
    size: int
    offsets: Any  # byte offset of each request's line
    n_per_row: Any  # n of each request


def check_batch(path: Path, rows: Iterator[tuple[int, int, Any, bytes]], ctx: BatchContext) -> BatchFile:
    """Every line of one batch file (``rows``: line number, byte offset, object, bytes of each non-blank line)
    checked; custom_ids unique across the dataset's files (``ctx.ids``)."""
    from hpcgen.spec.batch import BatchLineError, parse_request, sampling_overrides

    h = hashlib.sha256()
    offsets = array("q")
    ns = array("q")
    size = 0
    for lineno, pos, obj, line in rows:
        h.update(line)
        where = f"{ctx.key}.path {path} line {lineno}"
        try:
            cid, body = parse_request(obj)
            over = sampling_overrides(body)
        except BatchLineError as exc:
            got = obj.get("custom_id") if isinstance(obj.get("custom_id"), str) else None
            raise DatasetError(f"{where}{f' (custom_id {got!r})' if got and got not in str(exc) else ''}: {exc}"
                               ) from None
        if cid in ctx.ids:
            raise DatasetError(f"{where}: custom_id {cid!r} appears twice (first at {ctx.ids[cid]}); each request "
                               "needs its own")
        ctx.ids[cid] = f"{Path(path).name} line {lineno}"
        ctx.check(cid, over, where)
        offsets.append(pos)
        ns.append(int(over.get("n", ctx.default_n)))
        size = pos + len(line)
    return BatchFile(h.hexdigest(), max(size, path.stat().st_size), offsets, ns)


@dataclass
class BatchContext:
    """What every line of a batch dataset is checked against: the engine's room for answers, the run's seeds."""

    key: str
    response_length: int
    seeds: list[int]
    default_n: int
    temperature: float = 1.0  # the job's (0 when it decodes greedily)
    ids: dict[str, str] = field(default_factory=dict)

    def check(self, cid: str, over: dict[str, Any], where: str) -> None:
        mt = over.get("max_tokens")
        if mt is not None and mt > self.response_length:
            raise DatasetError(f"{where}: custom_id {cid!r} asks for max_tokens={mt}, over rollout.response_length="
                               f"{self.response_length} (the room the engine is built with); raise "
                               "rollout.response_length")
        n, temperature = over.get("n", self.default_n), over.get("temperature", self.temperature)
        if n > 1 and temperature < 1e-5:  # vLLM: greedy sampling needs n = 1
            raise DatasetError(f"{where}: custom_id {cid!r} asks for n={n} at temperature {temperature} (greedy): "
                               "greedy decoding gives one answer; set body.n to 1 or a temperature above 0")
        mn, room = over.get("min_tokens", 0), mt if mt is not None else self.response_length
        if mn > room:
            raise DatasetError(f"{where}: custom_id {cid!r} asks for min_tokens={mn}, over its max_tokens={room}")
        if "seed" in over and len(self.seeds) > 1:
            raise DatasetError(f"{where}: custom_id {cid!r} sets body.seed, but the run has several seeds "
                               f"{self.seeds}: every seed would repeat its samples; use one seed")
