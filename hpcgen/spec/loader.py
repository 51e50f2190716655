"""Loading a job: YAML job file + presets (``defaults:``) + verl-style ``KEY=VALUE`` overrides -> JobSpec.

Everything is validated on the login node, before anything is queued. No torch, no vllm.
"""

from __future__ import annotations

import difflib
import importlib.resources
import json
import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from hpcgen.errors import ConfigError
from hpcgen.spec.schema import JobSpec


@dataclass(frozen=True)
class SiteFile:
    """A checked site file (``hpcgen.spec.site.load_site``): merged between the presets and the job file."""

    path: Path
    data: dict[str, Any]


def bundled_presets() -> Path:
    """The presets shipped inside the package (``hpcgen/presets``), found through the package itself, so they
    resolve the same from a checkout and from an installed wheel."""
    return Path(str(importlib.resources.files("hpcgen") / "presets"))


def templates_dirs(job_file: Path | None) -> list[Path]:
    """Where ``defaults: [model/x, cluster/y]`` presets are looked up, in order (first match wins)."""
    dirs = []
    if os.environ.get("HPCGEN_TEMPLATES"):
        dirs.append(Path(os.environ["HPCGEN_TEMPLATES"]))
    if job_file is not None:
        dirs += [job_file.parent / "templates", job_file.parent.parent / "templates"]
    dirs.append(bundled_presets())
    return dirs


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` keeps the last of two equal keys without a word; a job file saying one thing twice
    (two datasets of one name, say) is a mistake worth one line."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' appears twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        kind = "" if "appears twice" in str(problem) else "YAML syntax error: "
        raise ConfigError(f"{what} {path}{where}: {kind}{problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping of keys, not {type(data).__name__}")
    return data


def _preset(entry: Any, job_file: Path | None) -> tuple[Path, dict[str, Any]]:
    if not isinstance(entry, str) or "/" not in entry:
        raise ConfigError(f"defaults entry {entry!r} must look like 'model/NAME' or 'cluster/NAME'")
    for d in templates_dirs(job_file):
        cand = d / f"{entry}.yaml"
        if cand.is_file():
            _refuse_foreign_writable(cand, entry)
            return cand, _read_yaml(cand, "preset")
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


def _section(ann: Any) -> type[BaseModel] | None:
    """The model of a nested section (``X`` or ``X | None``), else None."""
    for cand in (ann, *typing.get_args(ann)):
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand
    return None


def _all_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        sub = _section(field.annotation)
        if sub is not None:
            keys += _all_keys(sub, f"{prefix}{name}.")
    return keys


def check_keys(data: dict[str, Any], model: type[BaseModel] = JobSpec, prefix: str = "", where: str = "") -> None:
    """Unknown keys are errors that suggest the closest valid key (``where`` names the file)."""
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None:
            valid = _all_keys(JobSpec)
            guess = difflib.get_close_matches(prefix + str(key), valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{guess[0]}'?" if guess else ""
            raise ConfigError(f"{where}unknown key '{prefix}{key}'{hint}")
        sub = _section(field.annotation)
        if model is JobSpec and key == "datasets":
            for name, entry in (value.items() if isinstance(value, dict) else []):  # datasets.NAME.KEY
                if isinstance(entry, dict):
                    _check_dataset_keys(entry, f"datasets.{name}.", where)
        elif sub is not None and isinstance(value, dict):
            check_keys(value, sub, f"{prefix}{key}.", where)


def _check_dataset_keys(entry: dict[str, Any], prefix: str, where: str) -> None:
    from hpcgen.spec.datasets import DatasetConfig

    for key in entry:
        if key not in DatasetConfig.model_fields:
            guess = difflib.get_close_matches(str(key), list(DatasetConfig.model_fields), n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{guess[0]}'?" if guess else ""
            raise ConfigError(f"{where}unknown key '{prefix}{key}'{hint}")


def validation_message(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        return f"missing required key '{loc}'"
    got = err.get("input")
    shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
    return f"key '{loc}': {msg}{shown}" if loc else msg


_COMMENT = re.compile(r"(^|\s)#")


def check_override_value(key: str, value: str) -> None:
    """Refuse a value that YAML would not read as written: a line break (the rest would be another line, or
    a comment), a control character, or an unquoted '#' that starts a comment and silently cuts the value."""
    if any(c in value for c in "\n\r") or any(ord(c) < 32 and c != "\t" for c in value):
        raise ConfigError(f"override {key}: the value {value!r} contains a line break or control character; "
                          "write it on one line")
    v = value.strip()
    quoted = len(v) >= 2 and v[0] == v[-1] and v[0] in "'\""
    if not quoted and _COMMENT.search(value):
        raise ConfigError(f"override {key}: the value {value!r} would be cut at '#' (a YAML comment); "
                          f"quote it ({key}=\"'...'\") or leave the '#' out")


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """verl/Hydra style ``a.b=value`` (a leading '+' is accepted); values are parsed as YAML scalars."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    clean = []
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} must look like KEY=VALUE, e.g. data.n_samples=8")
        check_override_value(*item.lstrip("+").split("=", 1))
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
             data: dict[str, Any] | None = None, site: SiteFile | None = None) -> JobSpec:
    """Job file (or an already-resolved dict) + presets + site file + overrides -> validated JobSpec."""
    return load_job_traced(job_file, overrides, data=data, site=site)[0]


Sources = dict[str, tuple[Any, str]]  # key -> (value, where it was set)


def load_job_traced(job_file: Path | None, overrides: list[str] | None = None, *,
                    data: dict[str, Any] | None = None, site: SiteFile | None = None) -> tuple[JobSpec, Sources]:
    """``load_job`` that also says where each key's value came from. Precedence, lowest first: presets
    (``defaults:`` in order) < site file < job file < command line; built-in defaults are not listed."""
    raw = dict(data) if data is not None else _read_yaml(Path(job_file), "job file")  # type: ignore[arg-type]
    defaults = raw.pop("defaults", []) or []
    if not isinstance(defaults, list):
        raise ConfigError("key 'defaults' must be a list such as [model/tiny, cluster/dev]")
    layers: list[tuple[str, dict[str, Any]]] = []
    for entry in defaults:
        path, preset = _preset(entry, job_file)
        layers.append((f"preset {entry}: {path}", preset))
    if site is not None:
        layers.append((f"site file {site.path}", site.data))
    layers.append((f"job file {job_file}" if job_file else "job", raw))
    layers.append(("command line", parse_overrides(list(overrides or []))))
    merged: dict[str, Any] = {}
    sources: Sources = {}
    for label, layer in layers:
        merged = merge_dicts(merged, layer)
        for key, value in _leaves(layer):
            for old in [k for k in sources if k.startswith(key + ".") or key.startswith(k + ".")]:
                del sources[old]  # a section replaced by a value, or a value by a section
            sources[key] = (value, label)
    check_keys(merged, JobSpec)
    try:
        return JobSpec.model_validate(merged), sources
    except ValidationError as exc:
        where = f"{job_file}: " if job_file else ""
        raise ConfigError(where + validation_message(exc)) from None


def _leaves(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out += _leaves(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def describe_sources(sources: Sources) -> list[str]:
    """Comment lines for the dry run: ``# slurm.partition = "gpu"   (site file /etc/hpcgen/site.yaml)``."""
    shown = [(k, json.dumps(v, ensure_ascii=False, default=str)) for k, (v, _) in sorted(sources.items())]
    width = max((len(k) + len(v) for k, v in shown), default=0) + 3
    return [f"# {f'{k} = {v}':<{width}} ({sources[k][1]})" for k, v in shown]


def expand_path(value: str, base: Path | None = None) -> Path:
    """``$HOME``/``~`` expanded; relative paths against ``base`` (the submit directory)."""
    p = Path(os.path.expanduser(os.path.expandvars(value)))
    if not p.is_absolute():
        p = (base or Path.cwd()) / p
    return p.resolve()
