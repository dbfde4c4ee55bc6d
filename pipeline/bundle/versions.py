"""Bundle versions side by side, and the one atomic switch that makes a version live.

Layout under ``artifacts/<recipe>/`` for the bundle ``<name>`` (a target's name)::

    .versions/<name>/000007/<name>/             a complete bundle folder
    .versions/<name>/000007/<name>.tar.gz       its archive, and the archive's checksum
    .versions/<name>/000007/<name>.tar.gz.sha256
    .versions/<name>/current -> 000007          the live version: all a publish switches
    <name>               -> .versions/<name>/current/<name>     the paths users read,
    <name>.tar.gz        -> .versions/<name>/current/<name>.tar.gz        set once, never
    <name>.tar.gz.sha256 -> .versions/<name>/current/<name>.tar.gz.sha256  switched

A version is staged in ``.versions/<name>/.staging.<pid>/`` and renamed into place complete.
``current`` is replaced by renaming a new symlink over it (atomic on POSIX), so folder,
archive and checksum change in one step: a path opened through them is of the old version or
the new one, never a mix. (A reader of several files resolves the folder once, as
load_model.py does; the versions kept for rollback keep an old version readable meanwhile.)
Rolling back is pointing ``current`` at an older version, e.g. ``rollback(recipe_dir, name)``.
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING

from pipeline import faults
from pipeline.bundle import archive

if TYPE_CHECKING:
    from pathlib import Path

VERSIONS = ".versions"
CURRENT = "current"
MANIFEST = "manifest.json"


def root(recipe_dir: Path, name: str) -> Path:
    return recipe_dir / VERSIONS / name


def members(name: str) -> tuple[str, ...]:
    """What a version holds, each also a stable path under the recipe's folder."""
    return (name, *archive.names(name))


def staging(recipe_dir: Path, name: str) -> Path:
    """An empty private folder to write the next version of ``name`` in."""
    path = root(recipe_dir, name) / f".staging.{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def numbered(recipe_dir: Path, name: str) -> list[str]:
    """The complete versions of ``name``, oldest first."""
    folder = root(recipe_dir, name)
    if not folder.is_dir():
        return []
    return sorted((p.name for p in folder.iterdir() if p.name.isdigit()), key=int)


def commit(recipe_dir: Path, name: str, staged: Path) -> str:
    """Rename a complete staged version into place as the next number; returns that number."""
    versions = numbered(recipe_dir, name)
    version = f"{int(versions[-1]) + 1 if versions else 1:06d}"
    faults.point("publish.version")
    os.replace(staged, root(recipe_dir, name) / version)
    return version


def live(recipe_dir: Path, name: str) -> str | None:
    """The version ``current`` points at, or None when no version of ``name`` is live."""
    try:
        version = os.readlink(root(recipe_dir, name) / CURRENT)
    except OSError:
        return None
    return version if (root(recipe_dir, name) / version).is_dir() else None


def switch(recipe_dir: Path, name: str, version: str | None) -> None:
    """Make ``version`` live in one rename; None leaves no version live."""
    current = root(recipe_dir, name) / CURRENT
    if version is None:
        faults.point("publish.switch")
        current.unlink(missing_ok=True)
        return
    temporary = current.with_name(f".{CURRENT}.{os.getpid()}")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(version)
    faults.point("publish.switch")
    os.replace(temporary, current)


def rollback(recipe_dir: Path, name: str, to: str | None = None) -> str | None:
    """Make ``to`` (default: the newest version older than the live one) live; returns it."""
    now = live(recipe_dir, name)
    older = [v for v in numbered(recipe_dir, name) if now is None or int(v) < int(now)]
    target = to if to is not None else (older[-1] if older else None)
    if target is not None and target not in numbered(recipe_dir, name):
        raise ValueError(f"{name} has no version {target}")
    switch(recipe_dir, name, target)
    return target


def link(recipe_dir: Path, name: str) -> None:
    """Point the stable paths through ``current``; a real folder or file there (the layout
    before versions) is replaced, the folder by being renamed aside first."""
    for member in members(name):
        path = recipe_dir / member
        target = f"{VERSIONS}/{name}/{CURRENT}/{member}"
        if path.is_symlink() and os.readlink(path) == target:
            continue
        temporary = recipe_dir / f".{member}.link.{os.getpid()}"
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(target)
        retired = None
        if path.is_dir() and not path.is_symlink():  # os.replace cannot overwrite a folder
            retired = recipe_dir / f".{member}.retired.{os.getpid()}"
            faults.point("publish.retire")
            os.replace(path, retired)
        faults.point("publish.link")
        os.replace(temporary, path)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)


def discard(recipe_dir: Path, name: str, version: str) -> None:
    """Remove a version that is not live: renamed out of the numbered ones first, so a kill
    mid-removal leaves no half-deleted version anyone could roll back to."""
    folder = root(recipe_dir, name)
    doomed = folder / f".discard.{version}"
    shutil.rmtree(doomed, ignore_errors=True)  # os.replace cannot overwrite a folder
    os.replace(folder / version, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def prune(recipe_dir: Path, name: str, keep: int) -> list[str]:
    """Discard all but the ``keep`` newest versions, never the live one; returns the discarded."""
    versions = numbered(recipe_dir, name)
    kept = set(versions[-keep:]) | {live(recipe_dir, name)}
    doomed = [v for v in versions if v not in kept]
    for version in doomed:
        faults.point("publish.prune")
        discard(recipe_dir, name, version)
    return doomed


def recover(recipe_dir: Path) -> None:
    """Undo what runs killed mid-publish left, and move bundles of the old layout (a real
    folder and archive) into versions. Call under the recipe's publish lock."""
    _recover_old_layout(recipe_dir)
    for old in sorted(recipe_dir.iterdir()):
        if not old.name.startswith((".", "_")) and not old.is_symlink() \
                and (old / MANIFEST).is_file():
            migrate(recipe_dir, old.name)
    versions = recipe_dir / VERSIONS
    for folder in sorted(versions.iterdir() if versions.is_dir() else []):
        for leftover in [*folder.glob(".staging.*"), *folder.glob(".discard.*")]:
            shutil.rmtree(leftover, ignore_errors=True)
        for temporary in folder.glob(f".{CURRENT}.*"):
            temporary.unlink(missing_ok=True)
        link(recipe_dir, folder.name)


def _recover_old_layout(recipe_dir: Path) -> None:
    for staging_dir in recipe_dir.glob(".*.staging.*"):
        shutil.rmtree(staging_dir, ignore_errors=True)
    for temporary in [*recipe_dir.glob(".*.partial"), *recipe_dir.glob(".*.link.*")]:
        temporary.unlink(missing_ok=True)
    for retired in recipe_dir.glob(".*.retired.*"):
        final = recipe_dir / retired.name[1:].rsplit(".retired.", 1)[0]
        if os.path.lexists(final):
            shutil.rmtree(retired, ignore_errors=True)
        else:  # killed between moving the last good folder aside and putting its successor
            os.replace(retired, final)


def migrate(recipe_dir: Path, name: str) -> str:
    """Make the old layout's real folder ``name`` a version (archived anew from the folder,
    whatever archive lay beside it), live, behind the stable paths; returns the version."""
    staged = staging(recipe_dir, name)
    shutil.copytree(recipe_dir / name, staged / name, copy_function=shutil.copyfile)
    archive.write(staged / name, staged)
    version = commit(recipe_dir, name, staged)
    switch(recipe_dir, name, version)
    link(recipe_dir, name)
    return version
