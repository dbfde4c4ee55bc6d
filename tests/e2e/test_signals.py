"""Ctrl-C and SIGTERM during a real build: exit 130/143, one line, no staging left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from tests.fixtures.cli import ROOT, run_cli, run_record

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.slow


def _interrupt_during_export(artifacts: Path, signum: int) -> subprocess.CompletedProcess[str]:
    """Start digits_torch, wait until its first stage (export) is staging, send ``signum``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "recipe=digits_torch",
                             f"run.artifacts_dir={artifacts}", "run.progress=false"],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    staging = artifacts / ".cache" / "tmp"
    deadline = time.monotonic() + 120
    while not (staging.is_dir() and any(staging.iterdir())):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "export never started"
        time.sleep(0.02)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_the_run_cleanly_and_a_rerun_builds(tmp_path: Path, signum: int,
                                                          code: int) -> None:
    stopped = _interrupt_during_export(tmp_path, signum)
    assert stopped.returncode == code, stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert f"edgekiln: interrupted ({signal.Signals(signum).name})" in stopped.stderr
    cache = tmp_path / ".cache"
    assert list((cache / "tmp").iterdir()) == []  # the export's staging dir was removed
    assert not list(cache.glob("objects/*/*"))  # and nothing half-built was committed
    rerun = run_cli("recipe=digits_torch", f"run.artifacts_dir={tmp_path}",
                    "run.progress=false")
    assert rerun.code == 0, rerun.stderr
    assert run_record(tmp_path, "digits_torch")["ok"] is True
