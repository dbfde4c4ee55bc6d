"""A bundle folder as one reproducible ``<name>.tar.gz`` and its ``.sha256``.

The same folder always gives the same bytes (fixed member order, times, owners and modes, no
gzip timestamp or file name), so a bundle republished after a crash has the checksum of the
one an uninterrupted run would have written.
"""

from __future__ import annotations

import gzip
import tarfile
from typing import TYPE_CHECKING

from pipeline.hashing import sha256_file

if TYPE_CHECKING:
    from pathlib import Path

EPOCH = 315532800  # 1980-01-01, the oldest time zip-based tools accept


def names(bundle: str) -> tuple[str, str]:
    """The archive's and its checksum file's names for the bundle folder ``bundle``."""
    return f"{bundle}.tar.gz", f"{bundle}.tar.gz.sha256"


def write(folder: Path, destination: Path) -> str:
    """Write ``folder`` as ``destination/<folder name>.tar.gz`` and its ``.sha256``; returns the
    checksum. ``destination`` is private to the caller (a version being staged)."""
    archive_name, checksum_name = names(folder.name)
    archive = destination / archive_name
    with archive.open("wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=f"{folder.name}/{path.relative_to(folder).as_posix()}",
                    recursive=False, filter=_normalized)
    checksum = sha256_file(archive)
    (destination / checksum_name).write_text(f"{checksum}  {archive_name}\n")
    return checksum


def recorded(checksum_file: Path) -> tuple[str, str]:
    """(checksum, archive name) as the ``.sha256`` file states them (``sha256sum`` format)."""
    fields = checksum_file.read_text().split()
    if len(fields) != 2:
        raise ValueError(f"{checksum_file.name} does not hold '<sha256>  <archive name>'")
    return fields[0], fields[1]


def _normalized(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = EPOCH
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if info.isdir() else 0o644
    return info
