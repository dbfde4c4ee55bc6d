"""The no-op fast path: taken only when nothing changed, and then indistinguishable from the
full path's no-op. Each change a user can make must send the next run down the full path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import TYPE_CHECKING

import onnx
import pytest
from onnx import numpy_helper

from tests.fixtures.cli import ROOT, run_cli, run_record, statuses
from tests.fixtures.team import team_dir

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.slow
FAST = "nothing changed since the last build"
RECIPE = "team_linear"


class Team:
    """A team's folder with its own recipe, built once; each run goes through the real CLI."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.recipes = team_dir(tmp)
        self.cwd = self.recipes.parent
        self.model = tmp / "linear.onnx"
        # an install folder of the kind site-packages is, which the test may install into
        self.site = tmp / "lib" / "site-packages"
        self.site.mkdir(parents=True)
        self.env = {"PYTHONPATH": str(self.site)}

    def run(self, *args: str, env: dict[str, str] | None = None) -> tuple[bool, dict]:
        result = run_cli(f"recipe={RECIPE}", *args, cwd=self.cwd, env={**self.env, **(env or {})})
        assert result.code == 0, result.stderr[-3000:]
        fast = FAST in result.stderr
        if fast:
            assert result.imported == []  # not even onnxruntime: nothing was planned
        return fast, run_record(self.cwd / "artifacts", RECIPE)

    def bundle(self) -> dict[str, str]:
        folder = (self.cwd / "artifacts" / RECIPE / "cpu").resolve()
        return {p.relative_to(folder).as_posix(): p.read_bytes().hex()[:64] + str(p.stat().st_size)
                for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Team:
    team = Team(tmp_path_factory.mktemp("noop"))
    fast, record = team.run()
    assert not fast
    assert record["ok"]
    return team


def _same_run(fast: dict, full: dict) -> None:
    strip = [{k: v for k, v in s.items() if k != "seconds"} for s in fast["stages"]]
    assert strip == [{k: v for k, v in s.items() if k != "seconds"} for s in full["stages"]]
    assert fast["bundles"] == full["bundles"]
    assert fast["bundles_summary"] == full["bundles_summary"]


def test_an_unchanged_rebuild_takes_the_fast_path_with_the_same_result(team: Team) -> None:
    fast, fast_record = team.run()
    assert fast
    assert fast_record.get("noop") is True
    assert set(statuses(fast_record).values()) == {"cached"}
    bundle = team.bundle()
    full, full_record = team.run(env={"EDGEKILN_NO_FAST_PATH": "1"})
    assert not full
    _same_run(fast_record, full_record)
    assert team.bundle() == bundle


def _edit_recipe(team: Team) -> None:
    path = team.recipes / "recipe" / f"{RECIPE}.yaml"
    path.write_text(path.read_text() + "# a comment changes no setting, but the file\n")


def _add_group_file(team: Team) -> None:
    (team.recipes / "target").mkdir(exist_ok=True)
    shutil.copy(ROOT / "recipes" / "target" / "x86_cpu.yaml", team.recipes / "target" / "x.yaml")


def _install_a_distribution(team: Team) -> None:
    (team.site / "sometool-1.0.dist-info").mkdir()


def _upgrade_it(team: Team) -> None:
    os.rename(team.site / "sometool-1.0.dist-info", team.site / "sometool-1.1.dist-info")


def _remove_a_cache_entry(team: Team) -> None:
    key = next(s["key"] for s in run_record(team.cwd / "artifacts", RECIPE)["stages"]
               if s["stage"] == "optimize")
    entry = team.cwd / "artifacts" / ".cache" / "objects" / key[:2] / key[2:]
    for path in entry.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.rmtree(entry)


def _tamper_with_the_bundle(team: Team) -> None:
    manifest = (team.cwd / "artifacts" / RECIPE / "cpu" / "manifest.json").resolve()
    manifest.chmod(0o644)
    manifest.write_text(manifest.read_text().replace("{", "{ ", 1))


CHANGES = {
    "recipe file": _edit_recipe,
    "new group file": _add_group_file,
    "installed distribution": _install_a_distribution,
    "upgraded distribution": _upgrade_it,
    "cache entry removed": _remove_a_cache_entry,
    "published bundle edited": _tamper_with_the_bundle,
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_every_change_takes_the_full_path_once(team: Team, change: str) -> None:
    assert team.run()[0], "the previous run must have left a record"
    CHANGES[change](team)
    fast, record = team.run()
    assert not fast, f"after a change of the {change}, the fast path was taken"
    assert record["ok"]
    assert "noop" not in record
    assert team.run()[0], "the full path's success records the new state"


def test_a_touched_source_with_the_same_bytes_stays_fast(team: Team) -> None:
    assert team.run()[0]
    os.utime(team.model, ns=(1, 1))  # the stamp moves, the content does not: re-hashed, equal
    assert team.run()[0]


def test_new_source_content_rebuilds(team: Team) -> None:
    assert team.run()[0]
    model = onnx.load(team.model)
    weights = numpy_helper.to_array(model.graph.initializer[0]) * 2
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weights, "w"))
    onnx.save(model, team.model)
    fast, record = team.run()
    assert not fast
    assert statuses(record)["export"] == "ran"


def test_the_command_line_and_environment_select_their_own_record(team: Team) -> None:
    assert team.run()[0]
    assert not team.run("validate.samples=64")[0]  # the same value, spelled out: another record
    assert not team.run(env={"OMP_NUM_THREADS": "1"})[0]
    assert team.run()[0]  # the first command line's record is still there


def test_a_failed_build_drops_the_record(team: Team) -> None:
    assert team.run()[0]
    path = team.recipes / "recipe" / f"{RECIPE}.yaml"
    good = path.read_text()
    path.write_text(good.replace("samples: 64", "samples: -1"))
    assert run_cli(f"recipe={RECIPE}", cwd=team.cwd, env=team.env).code == 2
    path.write_text(good)  # back as it was: content equal, but the failed run dropped the record
    assert not team.run()[0]


def test_the_check_imports_only_the_standard_library(team: Team) -> None:
    code = ("import sys, runpy; sys.argv = ['edgekiln', 'recipe=team_linear']\n"
            "try:\n    runpy.run_module('pipeline', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", "import json\n" + code], cwd=team.cwd,
                          env={**os.environ, "PYTHONPATH": f"{team.site}{os.pathsep}{ROOT}"},
                          capture_output=True, text=True, check=True, timeout=60)
    assert FAST in proc.stderr
    loaded = set(json.loads(proc.stdout.splitlines()[-1]))
    assert not loaded & {"hydra", "omegaconf", "rich", "filelock", "yaml", "numpy"}
