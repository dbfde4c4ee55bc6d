"""Factories come from the working tree or a trusted package, never from the standard library,
and nothing is imported before that is known."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pytest

from pipeline.errors import InputError, RecipeError
from stages.common.factories import import_callable
from stages.common.trust import check_factory

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def team(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A team's working tree holding its own factory module, as the cwd of the run."""
    (tmp_path / "teammodels.py").write_text(
        "import os\n"
        "from os import system as build\n"
        "from subprocess import Popen\n"
        "class Runner(Popen):\n    pass\n"
        "def mlp(width=4):\n    return ['mlp', width]\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("PYTHONPATH", raising=False)
    yield tmp_path
    sys.modules.pop("teammodels", None)


@pytest.mark.parametrize("dotted", ["os:system", "subprocess:Popen", "subprocess:run",
                                    "builtins:eval", "importlib:import_module", "pty:spawn",
                                    "runpy:run_path", "ctypes:CDLL", "os.path:join",
                                    "shutil:rmtree"])
def test_the_standard_library_is_refused_by_name(dotted: str) -> None:
    with pytest.raises(InputError, match=r"model\.factory '.*': '\w+' is part of Python's "
                                         "standard library"):
        check_factory(dotted, "model.factory")


def test_a_packages_module_is_located_without_importing_its_parents(team: Path) -> None:
    package = team / "sideeffect"
    package.mkdir()
    (package / "__init__.py").write_text("open('imported', 'w').close()\n")
    (package / "models.py").write_text("def net():\n    return 1\n")
    check_factory("sideeffect.models:net", "model.factory")
    assert not (team / "imported").exists()


def test_a_module_of_the_working_tree_is_imported(team: Path) -> None:
    assert import_callable("teammodels:mlp", "model.factory")(width=3) == ["mlp", 3]


@pytest.mark.parametrize(("dotted", "why"), [
    ("teammodels:build", r"is posix\.system, which runs commands"),
    ("teammodels:Popen", r"is subprocess\.Popen, which runs commands"),
    ("teammodels:Runner", r"is teammodels\.Runner, which runs commands"),
    ("teammodels:os.system", r"reaches into module 'os'"),
    ("teammodels:__builtins__", r"'__builtins__' is a private name"),
])
def test_code_runners_are_refused_when_the_working_tree_re_exports_them(
        team: Path, dotted: str, why: str) -> None:
    with pytest.raises(InputError, match=why):
        import_callable(dotted, "dataset.factory")


def test_an_installed_package_needs_to_be_trusted_by_the_recipe(team: Path) -> None:
    with pytest.raises(InputError, match=r"model\.factory 'numpy:zeros': module 'numpy' is "
                       r".*numpy/__init__\.py, outside the working tree .* add 'numpy' to "
                       r"model\.trusted_packages"):
        import_callable("numpy:zeros", "model.factory")
    zeros = import_callable("numpy:zeros", "model.factory", trusted=["numpy"])
    assert zeros(2).tolist() == [0.0, 0.0]


def test_pythonpath_folders_belong_to_the_working_tree(tmp_path: Path, team: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "farmodels.py").write_text("def net():\n    return 'far'\n")
    monkeypatch.syspath_prepend(str(elsewhere))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # the module is not under the cwd any more
    with pytest.raises(InputError, match="outside the working tree"):
        check_factory("farmodels:net", "model.factory")
    monkeypatch.setenv("PYTHONPATH", str(elsewhere))
    assert import_callable("farmodels:net", "model.factory")() == "far"
    sys.modules.pop("farmodels", None)


@pytest.mark.parametrize(("dotted", "why"), [
    ("teammodels", "must look like 'package.module:callable'"),
    ("teammodels:", "must look like"),
    ("team models:mlp", "must look like"),
    ("no_such_module_here:net", "no module 'no_such_module_here'"),
])
def test_malformed_or_missing_factories_are_recipe_errors(team: Path, dotted: str,
                                                          why: str) -> None:
    with pytest.raises(RecipeError, match=why):
        check_factory(dotted, "model.factory")
