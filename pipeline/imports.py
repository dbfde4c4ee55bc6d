"""The working-tree modules a factory depends on, found during its build (a ninja depfile).

A cache key holds the digest of the factory's own module (``model.factory``), but the model a
team builds usually lives in several files: the factory imports the team's layers, blocks and
helpers. Those files are discovered while the stage runs, recorded with their digests in the
entry's meta, and checked again on every lookup: an edited helper makes the entry a miss.

Two sources, united, because either alone misses modules:

- the static closure of the factory module: its ``import`` statements (anywhere in the file,
  function bodies included), resolved without importing, followed through working-tree
  modules. This is deterministic: it does not depend on what another stage, running in a
  thread of the same process, imported earlier (a module already in ``sys.modules`` is not
  imported again, so a "new since the stage started" diff would miss it);
- modules new in ``sys.modules`` since the stage started that live in the working tree: this
  adds what the factory imports by name at run time (``importlib.import_module(f"...{x}")``).
  A stage running beside it in another thread may add its own modules here too; that only
  makes an entry depend on more files than it needs (a spurious rebuild, never a stale hit).

The working tree is the current directory, without site-packages, the interpreter's own
directories, and edgekiln's packages (their changes are the stage versions' business).
"""

from __future__ import annotations

import ast
import sys
from importlib.machinery import PathFinder
from pathlib import Path

_EDGEKILN = Path(__file__).resolve().parent.parent
_OWN = (_EDGEKILN / "pipeline", _EDGEKILN / "stages")


def module_file(dotted: str) -> Path | None:
    """The file of module ``dotted``, found on sys.path without importing it or its package."""
    # importing the factory's package here would import torch or tensorflow, which a cached
    # rebuild must not pay for
    search: list[str] | None = None
    spec = None
    for part in dotted.split("."):
        spec = PathFinder.find_spec(part, search)
        if spec is None:
            return None
        search = list(spec.submodule_search_locations or [])
    origin = spec.origin if spec else None
    return Path(origin) if origin and Path(origin).is_file() else None


def in_tree(path: Path, root: Path) -> bool:
    """Whether ``path`` is the team's own code under ``root`` (not a package, not edgekiln)."""
    path = path.resolve()
    if not path.is_relative_to(root) or {"site-packages", "dist-packages"} & set(path.parts):
        return False
    prefixes = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    if any(path.is_relative_to(p) and not root.is_relative_to(p) for p in prefixes):
        return False
    return not any(path.is_relative_to(own) for own in _OWN)


def loaded_modules() -> set[str]:
    return set(sys.modules)


def discover(factories: list[Path], before: set[str], root: Path) -> list[Path]:
    """Working-tree module files the factories import, statically or at run time."""
    found = {f.resolve() for f in factories if in_tree(f, root)}
    queue = list(found)
    while queue:
        for dep in _imported_files(queue.pop()):
            if dep not in found and in_tree(dep, root):
                found.add(dep)
                queue.append(dep)
    for name in loaded_modules() - before:
        file = getattr(sys.modules.get(name), "__file__", None)
        if file and Path(file).is_file() and in_tree(Path(file), root):
            found.add(Path(file).resolve())
    return sorted(found)


def _imported_files(source: Path) -> set[Path]:
    try:
        tree = ast.parse(source.read_bytes(), str(source))
    except (OSError, SyntaxError, ValueError):
        return set()
    package = _package_of(source)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, package)
            if base is not None:
                names.add(base)
                names.update(f"{base}.{alias.name}" for alias in node.names)
    files = set()
    for name in names:
        for prefix in _prefixes(name):  # importing a.b.c runs a, a.b and a.b.c
            file = module_file(prefix)
            if file is not None:
                files.add(file.resolve())
    return files


def _package_of(source: Path) -> list[str]:
    """The dotted package ``source`` belongs to, from the __init__.py files around it."""
    parts: list[str] = []
    folder = source.parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    return parts


def _absolute(module: str | None, level: int, package: list[str]) -> str | None:
    if level == 0:
        return module
    if level - 1 > len(package):
        return None
    base = package[:len(package) - (level - 1)]
    return ".".join([*base, *([module] if module else [])]) or None


def _prefixes(dotted: str) -> list[str]:
    parts = dotted.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
