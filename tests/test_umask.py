"""Outputs respect the user's umask (mkstemp alone would make every file 0600 and the run directory 0700)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
from helpers import REPO

from hpcgen.rundir import atomic

SCRIPT = """
import os, sys
sys.path.insert(0, "tests")
from pathlib import Path
os.umask(int(sys.argv[2], 8))
from helpers import FakeEngine, make_run
from hpcgen.login.merge import merge_run
from hpcgen.scoring.score import score_file, write_report
from hpcgen.task.worker import run_shards
tmp = Path(sys.argv[1])
run = make_run(tmp, Path(sys.argv[3]), Path(sys.argv[4]))
run_shards(run.root, [0, 1, 2], engine_factory=FakeEngine)
out = merge_run(run.root, output=tmp / "merged.parquet").output
merge_run(run.root, output=tmp / "merged.jsonl")
write_report(score_file(Path(out)), run.scores)
"""


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_outputs_follow_the_umask(tmp_path, small_dataset, fake_model, umask):
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), oct(umask)[2:], str(small_dataset),
                          str(fake_model)], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    run = tmp_path / "run"
    want_file, want_dir = 0o666 & ~umask, 0o777 & ~umask
    assert mode(tmp_path / "merged.parquet") == want_file
    assert mode(tmp_path / "merged.jsonl") == want_file
    assert mode(run / "scores.json") == want_file
    assert mode(run / "manifest.json") == want_file
    assert mode(next((run / "done").iterdir())) == want_file
    assert mode(next((run / "work").glob("*/*.parquet"))) == want_file
    assert mode(next((run / "work").glob("*/c*.lease"))) == want_file
    assert mode(next((run / "work").iterdir())) == want_dir
    assert mode(run) == want_dir


def test_current_umask_does_not_change_it():
    before = os.umask(0o027)
    try:
        assert atomic.current_umask() == 0o027
        assert atomic.current_umask() == 0o027
    finally:
        os.umask(before)

