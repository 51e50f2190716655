"""submitit's local executor with log folders named by the real job id.

submitit's local controller creates its folder argument as given, so a ``logs/%j`` folder left a literal
``logs/%j/`` directory behind (the logs themselves went to ``logs/<pid>/``). This executor starts the same
controller through ``python -m hpcgen.login.local_controller``, which fills in its job id first. Everything
else (environment, signals, requeue, timeouts) is submitit's own code.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import submitit
from submitit.local import local as _sl


def _start_controller(folder: Path, command: str, tasks_per_node: int = 1, cuda_devices: str = "",
                      timeout_min: float = 5.0, signal_delay_s: int = 30, stderr_to_stdout: bool = False,
                      setup: Any = ()) -> subprocess.Popen[bytes]:
    """submitit.local.local.start_controller (1.5.x), with this module as the controller."""
    import shlex

    env = dict(os.environ)
    env.update(
        SUBMITIT_LOCAL_NTASKS=str(tasks_per_node), SUBMITIT_LOCAL_COMMAND=command,
        SUBMITIT_LOCAL_TIMEOUT_S=str(int(60 * timeout_min)), SUBMITIT_LOCAL_SIGNAL_DELAY_S=str(int(signal_delay_s)),
        SUBMITIT_LOCAL_NODEID="0", SUBMITIT_LOCAL_JOB_NUM_NODES="1",
        SUBMITIT_STDERR_TO_STDOUT="1" if stderr_to_stdout else "", SUBMITIT_EXECUTOR="local",
        CUDA_VISIBLE_DEVICES=cuda_devices, SUBMITIT_LOCAL_WITH_SHELL="1" if setup else "",
    )
    cmd: Any = [sys.executable, "-m", "hpcgen.login.local_controller", str(folder)]
    if setup:
        cmd = " && ".join([*setup, shlex.join(cmd)])
    return subprocess.Popen(cmd, shell=bool(setup), env=env)


class LocalExecutor(submitit.LocalExecutor):
    def _submit_command(self, command: str) -> Any:
        real = _sl.start_controller
        _sl.start_controller = _start_controller  # type: ignore[assignment]
        try:
            return super()._submit_command(command)
        finally:
            _sl.start_controller = real


def main(folder: str) -> None:
    controller = _sl.Controller(Path(folder))
    controller.folder = Path(str(controller.folder).replace("%j", controller.pid))
    controller.run()


if __name__ == "__main__":
    main(sys.argv[1])
