"""The machine's side of a run: directories it must write, and OSErrors that are the machine's.

A read-only or full artifacts or cache directory is an ``EnvironmentProblem`` (exit 5) naming
the path, found before any stage runs where possible, and an ENOSPC/EROFS/EACCES raised later
becomes one too instead of a traceback.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from typing import TYPE_CHECKING

from pipeline.errors import EnvironmentProblem

if TYPE_CHECKING:
    from pathlib import Path

# what a run needs at least to start: an ONNX model of the zoo and its bundle fit in this
MIN_FREE_MB = 64
_MACHINE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}


def writable_problem(directory: Path, what: str) -> EnvironmentProblem | None:
    """Why ``directory`` (created if missing) cannot take a run's files, or None if it can."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".edgekiln-preflight-") as probe:
            probe.write(b"edgekiln checks it can write here\n")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        return EnvironmentProblem(f"{what} {directory} is not writable: "
                                  f"{exc.strerror or exc}; make it writable or point "
                                  f"{_key(what)} at a writable directory")
    return None


def space_problem(directory: Path, what: str, min_free_mb: float) -> EnvironmentProblem | None:
    free_mb = shutil.disk_usage(directory).free / 2**20
    if free_mb >= min_free_mb:
        return None
    return EnvironmentProblem(f"{what} {directory} has {free_mb:.1f} MiB free, a run needs at "
                              f"least {min_free_mb:g} MiB (run.min_free_mb); free some space "
                              f"or point {_key(what)} elsewhere")


def machine_problem(exc: OSError, where: Path | None = None) -> EnvironmentProblem | None:
    """The EnvironmentProblem an OSError stands for (disk full, read-only, denied), else None.

    ``where`` names the directory being written when the error has no file name (a library's
    own write, such as torch's export).
    """
    code, path = exc.errno, exc.filename or where
    if isinstance(exc, shutil.Error) and code is None:  # copytree: (src, dst, why) per file
        code, path = _first_copy_failure(exc)
    if code not in _MACHINE_ERRNOS:
        return None
    path = path if path is not None else "a file under run.artifacts_dir or run.cache_dir"
    name = errno.errorcode.get(code, str(code))
    problem = EnvironmentProblem(f"{path}: {os.strerror(code)} ({name}); a run writes under "
                                 "run.artifacts_dir and run.cache_dir: free space or fix "
                                 "their permissions")
    problem.__cause__ = exc
    return problem


def _first_copy_failure(exc: shutil.Error) -> tuple[int | None, str | None]:
    for failure in exc.args[0] if exc.args and isinstance(exc.args[0], list) else []:
        match = re.search(r"\[Errno (\d+)\]", str(failure[-1]))
        if match and int(match.group(1)) in _MACHINE_ERRNOS:
            return int(match.group(1)), str(failure[1])
    return None, None


def _key(what: str) -> str:
    return "run.cache_dir" if "cache" in what else "run.artifacts_dir"
