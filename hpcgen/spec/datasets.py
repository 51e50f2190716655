"""An evaluation's datasets and seeds: ``datasets: {NAME: {path, prompt_key, n_samples, output_path, ...}}`` and
``seeds: [0, 1, 2, 3]``, resolved against ``data.*`` (a dataset's keys not given fall back to ``data.*``;
``data.*`` alone is one dataset). No I/O here: paths are resolved and files read by the plan.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# A dataset's name ends up in file names (merged outputs) and tables: a plain word.
DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
FORMATS = ("auto", "parquet", "jsonl", "arrow", "openai_batch")
Format = Literal["auto", "parquet", "jsonl", "arrow", "openai_batch"]
MAX_SEED = 2**31


class DatasetConfig(BaseModel):
    """One entry of ``datasets``; a key left out takes the value of ``data.<key>``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    path: str | list[str]
    format: Format | None = None
    prompt_key: str | None = None
    n_samples: int | None = Field(None, ge=1)
    output_path: str | None = None
    apply_chat_template_kwargs: dict[str, Any] | None = None


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset of the run with every key resolved (``named``: listed under ``datasets``, not ``data.*``)."""

    name: str
    path: str | list[str]
    format: str
    prompt_key: str
    n_samples: int
    output_path: str | None
    apply_chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    named: bool = False
    n_explicit: bool = True  # n_samples was written (an OpenAI batch file's requests default to n=1 otherwise)

    @property
    def key(self) -> str:
        """Where its settings live, for messages: ``data`` or ``datasets.<name>``."""
        return f"datasets.{self.name}" if self.named else "data"


def datasets_from_list(value: Any) -> Any:
    """``datasets: [{name: gsm8k, path: ...}, ...]`` (a list, as some configs write it) -> the mapping form;
    a name given twice is an error (a YAML mapping's duplicate key is caught by the loader)."""
    if not isinstance(value, list):
        return value
    out: dict[str, Any] = {}
    for i, entry in enumerate(value):
        if not isinstance(entry, dict) or "name" not in entry:
            raise ValueError(f"datasets entry {i} must be a mapping with a 'name' key")
        entry = dict(entry)
        name = str(entry.pop("name"))
        if name in out:
            raise ValueError(f"dataset name '{name}' appears twice")
        out[name] = entry
    return out


def check_names(names: list[str]) -> None:
    for name in names:
        if not DATASET_NAME.match(name):
            raise ValueError(f"dataset name {name!r} must be a word of letters, digits and _.- (at most 64)")


def check_seeds(seeds: list[int] | None) -> list[int] | None:
    if seeds is None:
        return None
    if not seeds:
        raise ValueError("seeds must list at least one seed")
    seen: set[int] = set()
    for s in seeds:
        if not 0 <= s < MAX_SEED:
            raise ValueError(f"seed {s} must be >= 0 and < 2**31")
        if s in seen:
            raise ValueError(f"seed {s} appears twice: repeated seeds would only repeat the same samples")
        seen.add(s)
    return seeds


def default_name(path: str | list[str] | None) -> str:
    """The name of a ``data.*`` dataset: its file's stem, or its folder's name; ``data`` for lists and globs."""
    if not isinstance(path, str) or any(c in path for c in "*?["):
        return "data"
    p = PurePath(path.rstrip("/"))
    stem = p.name.split(".")[0] if "." in p.name else p.name
    return stem if DATASET_NAME.match(stem or "") else "data"


def resolve(data: Any, datasets: dict[str, DatasetConfig]) -> list[DatasetEntry]:
    """The run's datasets in order: ``datasets`` entries as listed, else the one ``data.*`` dataset."""
    chat = dict(data.apply_chat_template_kwargs)
    data_n = "n_samples" in data.model_fields_set
    if not datasets:
        return [DatasetEntry(default_name(data.path), data.path, data.format, data.prompt_key, data.n_samples,
                             data.output_path, chat, named=False, n_explicit=data_n)]
    out = []
    for name, d in datasets.items():
        out.append(DatasetEntry(
            name, d.path, d.format or data.format, d.prompt_key or data.prompt_key,
            d.n_samples or data.n_samples, d.output_path or (data.output_path if len(datasets) == 1 else None),
            dict(d.apply_chat_template_kwargs) if d.apply_chat_template_kwargs is not None else chat, named=True,
            n_explicit=d.n_samples is not None or data_n))
    return out


def check_entries(entries: list[DatasetEntry], data_output: str | None, greedy: bool) -> None:
    """Cross-checks of the resolved datasets (raised as ValueError, shown naming the key)."""
    named = any(e.named for e in entries)
    if named and data_output and len(entries) > 1:
        raise ValueError("data.output_path names one file, but the job lists several datasets: give each its "
                         "own datasets.<name>.output_path (or leave them out: RUN_DIR/merged/<name>.parquet)")
    outputs: dict[str, str] = {}
    for e in entries:
        key = e.key
        if greedy and e.n_samples > 1:
            raise ValueError(f"greedy decoding (temperature 0 / do_sample false) needs {key}.n_samples=1")
        out = e.output_path or (data_output if len(entries) == 1 else None)
        if out:
            same = os.path.abspath(os.path.expanduser(os.path.expandvars(out)))  # one file, however spelled
            if same in outputs:
                raise ValueError(f"datasets {outputs[same]} and {e.name} write the same output_path {out}")
            outputs[same] = e.name
