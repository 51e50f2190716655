"""One exception hierarchy for hpcgen. ``hpcgen.cli`` is the only place that maps these to exit codes.

Every message is one line meant for a person: it names the key, file or row at fault.
"""

from __future__ import annotations


class HpcgenError(Exception):
    """Base class. ``exit_code`` is what the CLI returns for it."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        # Keep messages to one line: the CLI prints exactly str(error).
        super().__init__(" ".join(str(message).split("\n")).strip())


class UserError(HpcgenError):
    """Something the user can fix: the job file, an override, the dataset, a path."""

    exit_code = 2


class ConfigError(UserError):
    """A job file, preset or KEY=VALUE override is invalid."""


class DatasetError(UserError):
    """The dataset cannot be read, or lacks what the job needs."""


class ModelError(UserError):
    """The model directory is incomplete (config, tokenizer)."""


class RunDirError(UserError):
    """The run directory is missing, belongs to another run, or is inconsistent."""


class IncompleteRunError(HpcgenError):
    """Merge asked for a run whose shards are not all done."""

    exit_code = 3


class LockedError(HpcgenError):
    """Another hpcgen process holds the run's lock (merge/resume at once)."""

    exit_code = 4


class SchedulerError(HpcgenError):
    """sbatch/sacct/scancel failed or SLURM is unreachable."""

    exit_code = 5


class ShardFailedError(HpcgenError):
    """``--wait`` ended with at least one failed shard."""

    exit_code = 6


class SiteCheckError(HpcgenError):
    """``hpcgen doctor`` found at least one failing check (each printed with its fix)."""

    exit_code = 7


class ScoreError(UserError):
    """Scoring input is unusable (missing columns, bad custom scorer)."""
