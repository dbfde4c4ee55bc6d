"""Working-tree modules a factory imports, found statically and at run time."""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING

from pipeline import imports

if TYPE_CHECKING:
    from pathlib import Path

    import pytest


def _tree(root: Path) -> None:
    team = root / "team_nets"
    team.mkdir()
    (team / "__init__.py").write_text("")
    (team / "net.py").write_text(
        "import json\n"
        "from . import blocks\n"
        "from .layers import head\n"
        "def build():\n"
        "    from team_nets import lazy  # inside the function: still found\n"
        "    return head(), blocks, lazy, json\n")
    (team / "layers.py").write_text("from team_nets.deep.act import relu\n"
                                    "def head():\n    return relu\n")
    (team / "blocks.py").write_text("X = 1\n")
    (team / "lazy.py").write_text("Y = 2\n")
    (team / "deep").mkdir()
    (team / "deep" / "__init__.py").write_text("")
    (team / "deep" / "act.py").write_text("def relu():\n    return 0\n")
    (team / "unused.py").write_text("Z = 3\n")
    (team / "plugins").mkdir()
    (team / "plugins" / "__init__.py").write_text("")
    (team / "plugins" / "by_name.py").write_text("W = 4\n")


def test_the_static_closure_follows_working_tree_imports_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tree(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    root = tmp_path.resolve()
    found = imports.discover([tmp_path / "team_nets" / "net.py"], imports.loaded_modules(), root)
    names = sorted(p.relative_to(root).as_posix() for p in found)
    assert names == ["team_nets/__init__.py", "team_nets/blocks.py",
                     "team_nets/deep/__init__.py", "team_nets/deep/act.py",
                     "team_nets/layers.py", "team_nets/lazy.py", "team_nets/net.py"]


def test_a_module_imported_by_name_at_run_time_is_found(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tree(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = imports.loaded_modules()
    importlib.import_module("team_nets.plugins." + "by_name")  # a factory choosing by a value
    try:
        found = imports.discover([tmp_path / "team_nets" / "lazy.py"], before, tmp_path.resolve())
    finally:
        for name in [n for n in sys.modules if n.startswith("team_nets")]:
            del sys.modules[name]
    assert tmp_path.resolve() / "team_nets" / "plugins" / "by_name.py" in found


def test_packages_and_edgekiln_itself_are_not_the_teams_tree(tmp_path: Path) -> None:
    from pathlib import Path

    import omegaconf

    repo = Path(imports.__file__).resolve().parents[1]
    assert not imports.in_tree(Path(omegaconf.__file__), Path("/"))
    assert not imports.in_tree(repo / "pipeline" / "cache.py", repo)
    assert imports.in_tree(repo / "recipes" / "zoo" / "digits.py", repo)
    assert not imports.in_tree(tmp_path / "x.py", repo)
