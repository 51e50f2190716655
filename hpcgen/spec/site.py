"""The site file: what every job on one cluster shares (partition, account, QOS, setup lines, container,
environment), kept out of job files so that job files travel between clusters.

Where: ``$HPCGEN_SITE`` if set (``none`` or empty: no site file), else ``$XDG_CONFIG_HOME/hpcgen/site.yaml``
(``~/.config/hpcgen/site.yaml``); a missing default file means no site file, a missing ``$HPCGEN_SITE`` is an
error. What: only ``slurm.*`` (every key, ``slurm.container`` included) and ``env.*``. Keys that change what
is generated (``rollout``, ``data``, ``model``, ``seed``, ...) belong to the job, never to the site. Merged
under the job file: presets < site file < job file < command line (``spec.loader.load_job_traced``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from hpcgen.errors import ConfigError
from hpcgen.spec.loader import SiteFile, _read_yaml, check_keys, validation_message
from hpcgen.spec.schema import JobSpec, SlurmConfig, _Section, check_env

SECTIONS = ("slurm", "env")


class _Site(_Section):
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, v: Any) -> Any:
        return check_env(v) if isinstance(v, dict) else v


def default_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "hpcgen" / "site.yaml"


def site_path() -> tuple[Path | None, str]:
    """The site file to use, and how it was chosen (for the dry run)."""
    chosen = os.environ.get("HPCGEN_SITE")
    if chosen is not None:
        if chosen.strip() in ("", "none"):
            return None, "none (HPCGEN_SITE=none)"
        return Path(chosen).expanduser().absolute(), "$HPCGEN_SITE"
    path = default_path()
    return (path, "default location") if path.is_file() else (None, f"none ({path} does not exist)")


def load_site(path: Path | None = None) -> SiteFile | None:
    """Read and check the site file (``path``, else the one ``site_path`` finds); None when there is none."""
    if path is None:
        path, _ = site_path()
        if path is None:
            return None
    where = f"site file {path}: "
    data = _read_yaml(path, "site file")
    for key in data:
        if key not in SECTIONS:
            known = key in JobSpec.model_fields
            raise ConfigError(where + (f"key '{key}' is not allowed in a site file (only slurm.* and env.*; "
                                       f"'{key}' belongs in the job file)" if known else f"unknown key '{key}' "
                                       "(a site file holds only slurm.* and env.*)"))
        if not isinstance(data[key], dict):
            raise ConfigError(where + f"key '{key}' must be a mapping")
    check_keys(data, JobSpec, where=where)
    try:
        _Site.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(where + validation_message(exc)) from None
    return SiteFile(path, data)
