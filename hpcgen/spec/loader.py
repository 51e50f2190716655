"""Loading a job: YAML job file + presets (``defaults:``) + verl-style ``KEY=VALUE`` overrides -> JobSpec.

Everything is validated on the login node, before anything is queued. No torch, no vllm.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from hpcgen.errors import ConfigError
from hpcgen.spec.schema import JobSpec


def templates_dirs(job_file: Path | None) -> list[Path]:
    """Where ``defaults: [model/x, cluster/y]`` presets are looked up, in order."""
    dirs = []
    if os.environ.get("HPCGEN_TEMPLATES"):
        dirs.append(Path(os.environ["HPCGEN_TEMPLATES"]))
    if job_file is not None:
        dirs += [job_file.parent / "templates", job_file.parent.parent / "templates"]
    dirs.append(Path(__file__).resolve().parents[2] / "templates")
    return dirs


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{what} {path}{where}: YAML syntax error: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping of keys, not {type(data).__name__}")
    return data


def _preset(entry: Any, job_file: Path | None) -> dict[str, Any]:
    if not isinstance(entry, str) or "/" not in entry:
        raise ConfigError(f"defaults entry {entry!r} must look like 'model/NAME' or 'cluster/NAME'")
    for d in templates_dirs(job_file):
        cand = d / f"{entry}.yaml"
        if cand.is_file():
            _refuse_foreign_writable(cand, entry)
            return _read_yaml(cand, "preset")
    group = entry.split("/", 1)[0]
    known = sorted({p.stem for d in templates_dirs(job_file) for p in (d / group).glob("*.yaml")})
    raise ConfigError(f"preset {entry!r} not found (known {group} presets: {', '.join(known) or 'none'})")


def _refuse_foreign_writable(path: Path, entry: str) -> None:
    """A preset decides what runs in the sbatch script (setup lines, env): refuse one that another user could
    have put there. Unsafe: the file or a folder above it owned by another user (not you, not root), or a
    folder writable by everyone without the sticky bit. Sticky world-writable folders such as /tmp are fine
    for what you own in them; group-writable project folders are trusted (the group shares presets)."""
    me = os.geteuid()
    p = path.resolve()
    for node in (p, *p.parents):
        try:
            st = node.stat()
        except OSError:
            continue
        if st.st_uid not in (me, 0):
            raise ConfigError(f"preset {entry!r}: {path} is not safe to use: {node} belongs to another user "
                              f"(uid {st.st_uid}), who could change what runs in your jobs; copy the preset "
                              "to a folder of yours (search order: see README 'Presets')")
        if node.is_dir() and st.st_mode & 0o002 and not st.st_mode & 0o1000:
            raise ConfigError(f"preset {entry!r}: {path} is not safe to use: {node} is writable by every user "
                              "(and not sticky), so anyone could change what runs in your jobs; copy the preset "
                              "to a folder only you can write (search order: see README 'Presets')")


def _all_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        keys.append(prefix + name)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _all_keys(ann, f"{prefix}{name}.")
    return keys


def _check_keys(data: dict[str, Any], model: type[BaseModel], prefix: str = "") -> None:
    """Unknown keys are errors that suggest the closest valid key."""
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None:
            valid = _all_keys(JobSpec)
            guess = difflib.get_close_matches(prefix + str(key), valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{guess[0]}'?" if guess else ""
            raise ConfigError(f"unknown key '{prefix}{key}'{hint}")
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel) and isinstance(value, dict):
            _check_keys(value, ann, f"{prefix}{key}.")


def _validation_message(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        return f"missing required key '{loc}'"
    got = err.get("input")
    shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
    return f"key '{loc}': {msg}{shown}" if loc else msg


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """verl/Hydra style ``a.b=value`` (a leading '+' is accepted); values are parsed as YAML scalars."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    clean = []
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} must look like KEY=VALUE, e.g. data.n_samples=8")
        clean.append(item.lstrip("+"))
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(clean), resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"override could not be parsed: {str(exc).splitlines()[0]}") from None


def merge_dicts(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = value
    return out


def load_job(job_file: Path | None, overrides: list[str] | None = None, *,
             data: dict[str, Any] | None = None) -> JobSpec:
    """Job file (or an already-resolved dict) + presets + overrides -> validated JobSpec."""
    raw = dict(data) if data is not None else _read_yaml(Path(job_file), "job file")  # type: ignore[arg-type]
    merged: dict[str, Any] = {}
    defaults = raw.pop("defaults", []) or []
    if not isinstance(defaults, list):
        raise ConfigError("key 'defaults' must be a list such as [model/tiny, cluster/dev]")
    for entry in defaults:
        merged = merge_dicts(merged, _preset(entry, job_file))
    merged = merge_dicts(merged, raw)
    merged = merge_dicts(merged, parse_overrides(list(overrides or [])))
    _check_keys(merged, JobSpec)
    try:
        return JobSpec.model_validate(merged)
    except ValidationError as exc:
        where = f"{job_file}: " if job_file else ""
        raise ConfigError(where + _validation_message(exc)) from None


def expand_path(value: str, base: Path | None = None) -> Path:
    """``$HOME``/``~`` expanded; relative paths against ``base`` (the submit directory)."""
    p = Path(os.path.expanduser(os.path.expandvars(value)))
    if not p.is_absolute():
        p = (base or Path.cwd()) / p
    return p.resolve()
