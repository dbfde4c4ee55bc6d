"""The cache key of a stage node: a digest of everything that can change its output."""

from __future__ import annotations

import functools
import importlib.metadata
from importlib.machinery import PathFinder
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import RecipeError
from pipeline.hashing import DigestState, digest_json
from pipeline.imports import module_file

if TYPE_CHECKING:
    from pipeline.plan import Node

KEY_SCHEMA = 1  # bump when the layout of the payload below changes
# dataset kinds whose samples ship inside a package: (package, data file inside it)
BUNDLED_DATA = {"digits": ("sklearn", "datasets/data/digits.csv.gz")}


def key_payload(node: Node, input_digests: dict[str, str], state: DigestState) -> dict[str, Any]:
    spec = node.spec
    return {
        "schema": KEY_SCHEMA,
        "kind": spec.kind,
        "version": spec.version,
        "config": node.config,
        "inputs": input_digests,
        "sources": {key: source_digest(key, value, state)
                    for key, value in sorted(node.sources.items())},
        "tools": {dist: tool_version(dist) for dist in spec.tools},
    }


def cache_key(payload: dict[str, Any]) -> str:
    return digest_json(payload)


def source_digest(key: str, value: str, state: DigestState) -> str:
    """Content digest of a source file, directory, factory module or package directory (both
    found without import)."""
    where = source_location(key, value)
    return state.path_digest(where) if isinstance(where, Path) else where


def source_location(key: str, value: str) -> Path | str:
    """The file or directory the source ``key`` reads, or a stand-in when it reads none."""
    if key.endswith("factory"):
        found = module_file(value.split(":", maxsplit=1)[0])
        return found or f"unlocated:{value}"
    if key == "dataset.kind":
        return _bundled_data_file(value)
    if key.endswith("package"):  # a package that ships a model folder: its whole directory
        return _package_dir(value)
    path = Path(value)
    if not path.exists():
        raise RecipeError(f"{key}: '{value}' does not exist (paths are relative to "
                          f"{Path.cwd()}).")
    return path


def _bundled_data_file(kind: str) -> Path | str:
    """The data file a built-in dataset kind reads, or the kind for the others."""
    if kind not in BUNDLED_DATA:
        return kind
    package, relative = BUNDLED_DATA[kind]
    spec = PathFinder.find_spec(package)  # locating sklearn, not importing it (0.5 s)
    for root in (spec.submodule_search_locations or []) if spec else []:
        if (Path(root) / relative).is_file():
            return Path(root) / relative
    return f"unlocated:{package}/{relative}"


def _package_dir(package: str) -> Path | str:
    spec = PathFinder.find_spec(package) if package.isidentifier() else None  # no import
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else f"unlocated:{package}"


@functools.cache
def tool_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"
