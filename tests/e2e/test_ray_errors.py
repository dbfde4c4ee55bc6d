"""run.executor=ray mistakes through the CLI: one paragraph each, before any stage runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from tests.fixtures.cli import _PROBE, ROOT, run_cli
from tests.fixtures.ray_cluster import free_port

if TYPE_CHECKING:
    from pathlib import Path


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def test_a_typo_in_the_executor_is_a_recipe_error(tmp_path: Path) -> None:
    result = run_cli("recipe=digits_torch", f"run.artifacts_dir={tmp_path}", "run.executor=rey")
    assert result.code == 2, result.stderr
    assert "Invalid value 'rey', expected one of [local, ray]; full_key: run.executor" \
        in result.stderr


def test_no_address_names_the_key(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", _PROBE, "recipe=digits_torch",
                           f"run.artifacts_dir={tmp_path}", "run.executor=ray"], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "edgekiln: recipe error: run.ray.address: run.executor=ray needs the cluster's " \
        "address" in proc.stderr


def test_an_unreachable_cluster_exits_5_at_once(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    result = run_cli("recipe=digits_torch", f"run.artifacts_dir={tmp_path}",
                     "run.executor=ray", f"run.ray.address={address}", timeout=120)
    assert result.code == 5, result.stderr
    assert f"edgekiln: environment: run.ray.address={address}: no Ray cluster answers there" \
        in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 30
    assert not (tmp_path / ".cache" / "objects").exists()


def test_ray_missing_says_which_extra_to_install(tmp_path: Path) -> None:
    # None in sys.modules: `import ray` fails as on a machine without it
    code = "import sys; sys.modules['ray'] = None\n" + _PROBE
    proc = subprocess.run([sys.executable, "-c", code, "recipe=digits_torch",
                           f"run.artifacts_dir={tmp_path}", "run.executor=ray",
                           "run.ray.address=local"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "run.executor=ray needs Ray on this machine: pip install 'edgekiln[cluster]'" \
        in proc.stderr
