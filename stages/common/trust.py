"""Which code a recipe value may name: ``model.factory`` and ``dataset.factory`` are checked
here before their module is imported, so a recipe or an override cannot run a command.

A factory's module must be a file of the working tree (the current directory, a folder on
PYTHONPATH, edgekiln's own bundled recipes) or of a top-level package the section lists in
``trusted_packages``. The standard library is never trusted: it is where ``os:system``,
``subprocess:Popen`` and ``runpy`` live. The module is located with
``PathFinder.find_spec`` one dotted part at a time, which reads directories and executes
nothing (``importlib.util.find_spec("a.b")`` would import ``a``).
"""

from __future__ import annotations

import os
import sys
from importlib.machinery import PathFinder
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pipeline.errors import InputError, RecipeError

if TYPE_CHECKING:
    from collections.abc import Iterable

# edgekiln's own example factories (recipes.zoo....) sit beside its recipes
BUNDLED_RECIPES = Path(__file__).resolve().parents[2] / "recipes"
# run code or commands, or delete and move files, whatever module re-exports them:
# refused even from the working tree
_CODE_RUNNERS = {
    "os": ("system", "popen", "execl", "execle", "execlp", "execlpe", "execv", "execve",
           "execvp", "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve",
           "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp", "fork", "forkpty", "kill",
           "remove", "unlink", "rmdir", "removedirs", "rename", "replace"),
    "subprocess": ("Popen", "run", "call", "check_call", "check_output", "getoutput",
                   "getstatusoutput"),
    "builtins": ("eval", "exec", "compile", "__import__", "open", "breakpoint"),
    "importlib": ("import_module", "reload", "__import__"),
    "runpy": ("run_module", "run_path"),
    "pty": ("spawn",),
    "shutil": ("rmtree", "move", "copy", "copy2", "copyfile", "copytree", "unpack_archive"),
    "pickle": ("load", "loads"),
}


def check_factory(dotted: str, key: str, trusted: Iterable[str] = ()) -> None:
    """Refuse ``dotted`` (``package.module:callable``) unless its module may be imported.

    Raises:
        RecipeError: it is not of the form ``package.module:callable``, or no such module.
        InputError: the module is in the standard library, outside the working tree and not
            in ``trusted``, or the callable is reached through a private name.
    """
    module_name, attribute = split(dotted, key)
    top = module_name.split(".")[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        raise InputError(f"{key} '{dotted}': '{top}' is part of Python's standard library, "
                         "which a factory may never name (it holds os.system, subprocess and "
                         "other callables that run commands); a factory is a function of your "
                         "own project that returns the model or the samples.")
    private = [part for part in attribute.split(".") if part.startswith("_")]
    if private:
        raise InputError(f"{key} '{dotted}': '{private[0]}' is a private name; a factory is a "
                         "public function or class of its module.")
    files = _module_files(module_name)
    if files is None:
        raise RecipeError(f"{key} '{dotted}' cannot be imported: no module '{module_name}' "
                          f"(modules are found from {Path.cwd()} and PYTHONPATH).")
    if top in set(trusted):
        return
    roots = trusted_roots()
    outside = [f for f in files if not any(f.is_relative_to(root) for root in roots)]
    if outside:
        section = key.rpartition(".")[0]
        raise InputError(
            f"{key} '{dotted}': module '{module_name}' is {outside[-1]}, outside the working "
            f"tree ({', '.join(map(str, roots))}). edgekiln imports factories only from there "
            f"or from packages the recipe trusts: add '{top}' to {section}.trusted_packages "
            "if you mean to run its code.")


def check_callable(target: Any, dotted: str, key: str) -> None:
    """After import: refuse a callable that runs code, whatever module re-exports it."""
    if isinstance(target, ModuleType):
        raise InputError(f"{key} '{dotted}' reaches into module '{target.__name__}'; name a "
                         "function or class defined in the factory's own module.")
    if any(target is runner for runner in _code_runners()) or (
            isinstance(target, type) and issubclass(target, _popen())):
        raise InputError(f"{key} '{dotted}' is {_qualified(target)}, which runs commands, "
                         "code or file operations; a factory may not be one.")


def split(dotted: str, key: str) -> tuple[str, str]:
    module_name, _, attribute = dotted.partition(":")
    if not module_name or not attribute or not all(
            part.isidentifier() for part in (*module_name.split("."), *attribute.split("."))):
        raise RecipeError(f"{key} '{dotted}' must look like 'package.module:callable'.")
    return module_name, attribute


def trusted_roots() -> list[Path]:
    """The working tree: the current directory, PYTHONPATH's folders, the bundled recipes."""
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    roots = [Path.cwd(), *map(Path, extra)]
    return [*dict.fromkeys(root.resolve() for root in roots), BUNDLED_RECIPES]


def _module_files(dotted: str) -> list[Path] | None:
    """The files importing ``dotted`` executes (each package's __init__, then the module),
    found without importing anything; None when there is no such module."""
    search: list[str] | None = None
    files = []
    for part in dotted.split("."):
        spec = PathFinder.find_spec(part, search)
        if spec is None:
            return None
        if spec.origin and spec.has_location:
            files.append(Path(spec.origin).resolve())
        search = list(spec.submodule_search_locations or [])
    return files


def _code_runners() -> list[Any]:
    import importlib

    runners = []
    for module_name, names in _CODE_RUNNERS.items():
        module = importlib.import_module(module_name)
        runners.extend(getattr(module, name) for name in names if hasattr(module, name))
    return runners


def _popen() -> type:
    import subprocess

    return subprocess.Popen


def _qualified(target: Any) -> str:
    module = getattr(target, "__module__", None) or "?"
    return f"{module}.{getattr(target, '__qualname__', type(target).__name__)}"
