"""A sweep: one run per combination of swept values (the cartesian product over swept keys).

``--sweep KEY=A,B,C`` (repeatable) sweeps KEY over A, B and C. As in Hydra's multirun, ``-m`` / ``--multirun``
makes every ``KEY=A,B`` override with a comma a sweep too (quote a value whose comma belongs to it:
``slurm.exclude="'n1,n2'"``); without ``-m`` a comma in an override is just part of the value.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from hpcgen.errors import ConfigError

_SLUG = re.compile(r"[^A-Za-z0-9_.=-]+")


@dataclass(frozen=True)
class SweepRun:
    name: str  # the run's folder inside the sweep folder
    label: str  # what tables call it (the swept values)
    values: dict[str, str]  # swept key -> value
    overrides: list[str]  # every KEY=VALUE of this run


def _top_level_split(text: str) -> list[str]:
    """Split at commas outside brackets, braces and quotes (``[0,1],[2,3]`` is two values, as in Hydra)."""
    parts, depth, quote, cur = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    return [*parts, cur]


def _values(item: str) -> tuple[str, list[str]]:
    if "=" not in item or item.startswith("="):
        raise ConfigError(f"sweep {item!r} must look like KEY=A,B,C, e.g. model.path=ckpt-100,ckpt-200")
    key, _, text = item.lstrip("+").partition("=")
    values = [v.strip() for v in _top_level_split(text)]
    if not all(values):
        raise ConfigError(f"sweep {key}: empty value in {text!r}")
    seen = set()
    for v in values:
        if v in seen:
            raise ConfigError(f"sweep {key}: value {v!r} appears twice")
        seen.add(v)
    return key, values


def _quoted(value: str) -> bool:
    v = value.strip()
    return len(v) >= 2 and v[0] == v[-1] and v[0] in "'\""


def split_sweeps(sweeps: list[str], overrides: list[str], multirun: bool) -> tuple[list[tuple[str, list[str]]],
                                                                                   list[str]]:
    """(swept keys with their values, the overrides every run shares)."""
    swept: list[tuple[str, list[str]]] = [_values(s) for s in sweeps]
    fixed = []
    for item in overrides:
        _, _, value = item.partition("=")
        if multirun and len(_top_level_split(value)) > 1 and not _quoted(value):
            swept.append(_values(item))
        else:
            fixed.append(item)
    keys = [k for k, _ in swept]
    for k in keys:
        if keys.count(k) > 1:
            raise ConfigError(f"sweep: key {k} is swept twice")
        if any(f.lstrip("+").partition("=")[0] == k for f in fixed):
            raise ConfigError(f"sweep: key {k} is both swept and set")
    return swept, fixed


def _short(value: str) -> str:
    """A path's last component, else the value."""
    tail = value.rstrip("/").rsplit("/", 1)[-1]
    return tail or value


def sweep_runs(sweeps: list[str], overrides: list[str], multirun: bool) -> list[SweepRun]:
    """Every run of the sweep, in product order (the first swept key varies slowest)."""
    swept, fixed = split_sweeps(sweeps, overrides, multirun)
    if not swept:
        raise ConfigError("--sweep/-m: nothing to sweep (give KEY=A,B,...)")
    runs = []
    for i, combo in enumerate(itertools.product(*[values for _, values in swept])):
        values = {k: v for (k, _), v in zip(swept, combo, strict=True)}
        slug = _SLUG.sub("-", "_".join(_short(v) for v in combo)).strip("-")[:60] or "run"
        label = ", ".join(f"{k}={_short(v)}" for k, v in values.items()) if len(values) > 1 else _short(combo[0])
        runs.append(SweepRun(f"{i:03d}-{slug}", label, values, fixed + [f"{k}={v}" for k, v in values.items()]))
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):  # two paths with the same last component: show them whole
        runs = [SweepRun(r.name, ", ".join(f"{k}={v}" for k, v in r.values.items()), r.values, r.overrides)
                for r in runs]
    return runs
