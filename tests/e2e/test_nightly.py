"""Three nights of ``edgekiln nightly`` over two team recipes, through the real CLI.

Night 1 sets the baseline; night 2 changes nothing (all cached, green, the same bundle bytes);
night 3 brings a recipe change that wrecks fidelity (percentile calibration keeping 5% of each
activation range): it exits 4, the previous bundle stays live, and junit.xml says why. Night 4
adds a gate no bundle meets: a gate failure exits 4 too, publishes nothing and is no baseline.
Night 5 adds a recipe that does not compose and one whose build process segfaults: both fail
alone (exit 1) and the others are still judged. The two recipes share their export and
optimize stages. Then the report of night 3 opens in headless Chromium.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
import sqlite3
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.fixtures.cli import run_cli, run_record, statuses
from tests.fixtures.team import install_kind, team_dir

pytestmark = pytest.mark.slow

HEADER = "# @package _global_\ndefaults:\n  - team_linear\n  - _self_\n"
# pre_process off: onnxruntime's pre-processing pass costs seconds and this model needs none
RECIPES = {"night_a": "quantize: {pre_process: false}\n",
           "night_b": "quantize: {pre_process: false, per_channel: false}\n"}
BROKEN = "quantize: {pre_process: false, calibration: {method: percentile, percentile: 5.0}}\n"
TOLERANCES = "recipes:\n  night_b:\n    targets:\n      cpu: {size_growth: 0.1}\n"
CHROMIUM = "/usr/bin/chromium"
NO_PRESET = "# @package _global_\ndefaults:\n  - team_linear\n  - /quantize: int9\n  - _self_\n"
CRASHING = HEADER + "name: night_d\nstages:\n  crash: {kind: crash, inputs: {model: optimize}}\n"
# a team's stage kind that takes its process down, as a crash in a native library would
CRASH = """
import os, signal
from pipeline.registry import stage


@stage("crash", inputs=("model",))
def crash(ctx):
    os.kill(os.getpid(), signal.SIGSEGV)
"""


def _nightly(root: Path, *overrides: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    config_dir = root / "team" / "recipes"
    result = run_cli("nightly", "--recipes", "night_*", "--config-dir", str(config_dir),
                     "--tolerance-file", str(root / "nightly.yaml"), "run.progress=false",
                     f"run.artifacts_dir={root / 'artifacts'}", *overrides, cwd=root,
                     timeout=300, env=env)
    nights = sorted((root / "artifacts" / "nightly").glob("2*"))
    report = json.loads((nights[-1] / "report.json").read_text())
    return {"code": result.code, "stderr": result.stderr, "dir": nights[-1], "report": report,
            "cases": {c["recipe"]: c for c in report["cases"]}}


def _bundle_bytes(artifacts: Path, recipe: str) -> dict[str, str]:
    root = artifacts / recipe
    files = [*sorted((root / "cpu").rglob("*")), root / "cpu.tar.gz"]
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files if p.is_file()}


@pytest.fixture(scope="module")
def nights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("nightly")
    recipe_dir = team_dir(root) / "recipe"
    for name, body in RECIPES.items():
        (recipe_dir / f"{name}.yaml").write_text(HEADER + f"name: {name}\n" + body)
    (root / "nightly.yaml").write_text(TOLERANCES)
    artifacts = root / "artifacts"
    first = _nightly(root)
    first["night_b_run"] = statuses(run_record(artifacts, "night_b"))
    first["bytes"] = _bundle_bytes(artifacts, "night_a")
    second = _nightly(root)
    second["bytes"] = _bundle_bytes(artifacts, "night_a")
    second["runs"] = {r: statuses(run_record(artifacts, r)) for r in RECIPES}
    (recipe_dir / "night_a.yaml").write_text(HEADER + "name: night_a\n" + BROKEN)
    third = _nightly(root)
    third["bytes"] = _bundle_bytes(artifacts, "night_a")
    fourth = _nightly(root, "validate.gates.min_cosine=0.99999")
    (recipe_dir / "night_c.yaml").write_text(NO_PRESET + "name: night_c\n")
    (recipe_dir / "night_d.yaml").write_text(CRASHING)
    fifth = _nightly(root, env=_crash_kind(root))
    return {"root": root, "first": first, "second": second, "third": third, "fourth": fourth,
            "fifth": fifth}


def _crash_kind(root: Path) -> dict[str, str]:
    """The crash kind, installed the way pip lays a package out (code + entry point)."""
    return install_kind(root / "site", "team_crash", "crash = team_crash",
                        {"__init__.py": CRASH})


def test_night_1_sets_the_baseline_and_publishes(nights: dict[str, Any]) -> None:
    first = nights["first"]
    assert first["code"] == 0, first["stderr"][-3000:]
    for case in first["cases"].values():
        assert (case["status"], case["published"], case["live_night"]) == (
            "baseline", True, first["dir"].name)
        assert case["metrics"]["top1_agreement"] > 0.9
        assert len(case["metrics"]["latency_rounds_ms"]) == 5
    # the second recipe reuses the first one's export and optimize
    assert (first["night_b_run"]["export"], first["night_b_run"]["optimize"]) == (
        "cached", "cached")
    assert first["bytes"]["cpu/manifest.json"]


def test_night_2_unchanged_is_cached_green_and_keeps_the_bundle(nights: dict[str, Any]) -> None:
    first, second = nights["first"], nights["second"]
    assert second["code"] == 0, second["stderr"][-3000:]
    for recipe, run in second["runs"].items():
        assert set(run.values()) == {"cached"}, recipe
        case = second["cases"][recipe]
        assert (case["status"], case["baseline_night"]) == ("green", first["dir"].name)
        assert case["metrics"]["cache_hit_rate"] == 1.0
        assert case["live_night"] == first["dir"].name  # the same bytes, still night 1's
        assert not [f for f in case["findings"] if f["regressed"]]
    assert second["bytes"] == first["bytes"]


def test_night_3_regression_exits_4_and_keeps_the_previous_bundle(
        nights: dict[str, Any]) -> None:
    first, third = nights["first"], nights["third"]
    assert third["code"] == 4, third["stderr"][-3000:]
    broken, fine = third["cases"]["night_a"], third["cases"]["night_b"]
    assert (broken["status"], broken["published"]) == ("regression", False)
    assert broken["metrics"]["top1_agreement"] < 0.5  # measured tonight, really worse
    assert "top1_agreement 1 -> " in broken["reason"]
    assert broken["live_night"] == first["dir"].name
    assert third["bytes"] == first["bytes"]
    assert fine["status"] == "green"
    assert "exit 4" in third["stderr"]


def _suite(night_dir: Path) -> ET.Element:
    suite = ET.parse(night_dir / "junit.xml").getroot().find("testsuite")  # noqa: S314 -- ours
    assert suite is not None
    return suite


def test_night_3_junit_marks_the_regressed_case_failed(nights: dict[str, Any]) -> None:
    suite = _suite(nights["third"]["dir"])
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "1", "0")
    cases = {c.get("classname"): c for c in suite.iter("testcase")}
    failure = cases["nightly.night_a"].find("failure")
    assert failure is not None
    assert failure.get("type") == "regression"
    assert "top1_agreement" in (failure.get("message") or "")
    assert cases["nightly.night_b"].find("failure") is None


def test_night_4_gate_failure_exits_4_and_publishes_nothing(nights: dict[str, Any]) -> None:
    second, third, fourth = nights["second"], nights["third"], nights["fourth"]
    assert fourth["code"] == 4, fourth["stderr"][-3000:]
    for recipe, case in fourth["cases"].items():
        assert (case["status"], case["published"]) == ("gate", False), recipe
        assert "min_cosine" in case["reason"]
    # night_b's live bundle is still the one night 1 built and nights 2-3 left in place
    assert fourth["cases"]["night_b"]["live_night"] == nights["first"]["dir"].name
    assert fourth["cases"]["night_b"]["baseline_night"] == third["dir"].name
    assert second["dir"].name != third["dir"].name


def test_night_5_a_broken_recipe_and_a_crash_fail_alone(nights: dict[str, Any]) -> None:
    fifth = nights["fifth"]
    assert fifth["code"] == 1, fifth["stderr"][-3000:]
    cases = fifth["cases"]
    assert (cases["night_c"]["status"], cases["night_c"]["bundle"]) == ("error", "-")
    assert "does not compose" in cases["night_c"]["reason"]
    assert "int9" in cases["night_c"]["reason"]
    assert cases["night_d"]["status"] == "error"
    assert "its build process was killed by SIGSEGV" in cases["night_d"]["reason"]
    assert (cases["night_a"]["status"], cases["night_b"]["status"]) == ("regression", "green")
    suite = _suite(fifth["dir"])
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("4", "1", "2")


def test_the_history_holds_every_night(nights: dict[str, Any]) -> None:
    db = sqlite3.connect(nights["root"] / "artifacts" / "nightly" / "history.sqlite")
    rows = db.execute("SELECT n.exit_code, c.recipe, c.status, c.published FROM cases c "
                      "JOIN nights n ON n.id = c.night_id ORDER BY n.id, c.recipe").fetchall()
    db.close()
    assert rows == [(0, "night_a", "baseline", 1), (0, "night_b", "baseline", 1),
                    (0, "night_a", "green", 1), (0, "night_b", "green", 1),
                    (4, "night_a", "regression", 0), (4, "night_b", "green", 1),
                    (4, "night_a", "gate", 0), (4, "night_b", "gate", 0),
                    (1, "night_a", "regression", 0), (1, "night_b", "green", 1),
                    (1, "night_c", "error", 0), (1, "night_d", "error", 0)]


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: the report check needs Debian's chromium package "
                    "(apt-get install -y chromium; .ci/run installs it).")
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
         "--window-size=1200,2000", *args], capture_output=True, text=True, timeout=120,
        check=False)


def _colours(png: bytes) -> int:
    """How many distinct colours the image has (1: a blank page)."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.uint32)
    packed = pixels[..., 0] << 16 | pixels[..., 1] << 8 | pixels[..., 2]
    return len(np.unique(packed))


def test_the_report_renders_in_headless_chromium(nights: dict[str, Any],
                                                 tmp_path: Path) -> None:
    page = (nights["third"]["dir"] / "report.html").as_uri()
    shot = tmp_path / "report.png"
    taken = _chromium(f"--screenshot={shot}", page, profile=tmp_path / "profile-shot")
    assert shot.is_file(), taken.stderr[-2000:]
    assert _colours(shot.read_bytes()) > 50  # a table and plots, not a blank page
    dom = _chromium("--dump-dom", page, profile=tmp_path / "profile-dom")
    for log in (taken.stderr, dom.stderr):
        assert not [line for line in log.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    body = re.search(r"<table id=\"status\">.*?<tbody>(.*?)</tbody>", dom.stdout, re.S)
    assert body is not None, dom.stdout[:2000]
    assert body.group(1).count("<tr") == 2
    assert 'class="regression"' in body.group(1)
    plots = re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', dom.stdout)
    assert len(plots) == 2
    assert all(_colours(base64.b64decode(p)) > 20 for p in plots)
    assert not re.search(r'(src|href)="(https?:)?//', dom.stdout)  # nothing to fetch
    shutil.copy(shot, nights["root"] / "report.png")  # beside the run, for a human to look at
