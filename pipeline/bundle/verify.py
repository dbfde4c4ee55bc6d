"""Re-read a published bundle as a user would find it and check it against its own records.

Every file of the folder must have the sha256 its ``manifest.json`` lists (no file missing,
extra or a symlink), and the archive the sha256 its ``.sha256`` file states; folder, archive
and checksum are read from one version. Publishing runs this right after the switch.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from pipeline.bundle import archive, versions
from pipeline.bundle.signing import SIGNATURE_FILE
from pipeline.hashing import sha256_file

if TYPE_CHECKING:
    from pathlib import Path

MANIFEST = "manifest.json"


class Mismatch(Exception):
    """The published bundle differs from its records; the message names the file."""


def bundle(recipe_dir: Path, name: str) -> dict[str, str]:
    """Check the live bundle ``name`` of the recipe folder; returns its manifest's file table.
    Raises Mismatch naming the first file that differs.

    The live version is resolved once and read from there (the stable paths are checked to
    lead through ``current``): a version switched in meanwhile does not mix in.
    """
    version = (recipe_dir / name).resolve().parent
    for member in versions.members(name):
        expected = f"{versions.VERSIONS}/{name}/{versions.CURRENT}/{member}"
        if not (recipe_dir / member).is_symlink() or \
                os.readlink(recipe_dir / member) != expected:
            raise Mismatch(f"{member} is not a symlink to {expected}")
    files = _manifest_files(version / name)
    _check_folder(version / name, files)
    archive_name, checksum_name = archive.names(name)
    try:
        checksum, listed = archive.recorded(version / checksum_name)
        actual = sha256_file(version / archive_name)
    except (OSError, ValueError) as exc:
        raise Mismatch(f"{archive_name} or {checksum_name} is unreadable: {exc}") from None
    if listed != archive_name or checksum != actual:
        raise Mismatch(f"{archive_name} has sha256 {actual}, but {checksum_name} states "
                       f"{checksum} for '{listed}'")
    return files


def _manifest_files(folder: Path) -> dict[str, str]:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = dict(manifest["files"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise Mismatch(f"{folder.name}/{MANIFEST} is missing or unreadable: {exc}") from None
    if manifest.get("signing"):
        files[SIGNATURE_FILE] = ""  # present; model.sig covers the rest, itself unlisted
    return files


def _check_folder(folder: Path, files: dict[str, str]) -> None:
    found: dict[str, Path] = {}
    for directory, dirs, names in os.walk(folder):
        for entry in [*dirs, *names]:
            path = folder.joinpath(directory, entry)
            if path.is_symlink():
                raise Mismatch(f"{folder.name}/{path.relative_to(folder)} is a symlink")
        found.update({path.relative_to(folder).as_posix(): path
                      for path in (folder.joinpath(directory, n) for n in names)})
    found.pop(MANIFEST, None)
    for rel in sorted(found.keys() | files.keys()):
        if rel not in files:
            raise Mismatch(f"{folder.name}/{rel} is not in {MANIFEST}")
        if rel not in found:
            raise Mismatch(f"{folder.name}/{rel} is listed in {MANIFEST} but missing")
        if files[rel] and sha256_file(found[rel]) != files[rel]:
            raise Mismatch(f"{folder.name}/{rel} does not have the sha256 {MANIFEST} lists "
                           f"({files[rel][:12]}...)")
