"""Real digits_torch bundles for the bundle, loader and signing tests, built once per session.

The bundles come from the CLI (a subprocess, like a user's run); every build shares one stage
cache, so only the first pays for export. Tests copy a bundle before changing it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from typing import TYPE_CHECKING

from tests.cli import run_cli

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

RECIPE = "digits_torch"
_built: dict[str, Path] = {}


def build(factory: pytest.TempPathFactory, name: str, *overrides: str) -> Path:
    """The artifacts folder of the digits_torch build called ``name`` (built on first use)."""
    if name not in _built:
        artifacts = factory.mktemp(name)
        cache = factory.getbasetemp() / "bundle-cache"
        result = run_cli(f"recipe={RECIPE}", f"run.artifacts_dir={artifacts}",
                         f"run.cache_dir={cache}", "run.progress=false", *overrides)
        assert result.code == 0, result.stderr
        _built[name] = artifacts
    return _built[name]


def bundle_of(artifacts: Path) -> Path:
    return artifacts / RECIPE / "cpu"


def copy_bundle(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def relist(bundle: Path, *names: str) -> None:
    """Record the current checksums of ``names`` in manifest.json, as a forger would."""
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for name in names:
        manifest["files"][name] = sha256(bundle / name)
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
