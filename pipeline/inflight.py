"""The staging directories of builds in progress, so an interrupted run can discard them.

Worker threads cannot be interrupted: on Ctrl-C or SIGTERM the main thread calls ``stop()``,
which keeps any build from committing from then on and returns the staging directories to
remove. A commit already under way (digest and rename, short) is waited for, so a directory is
never removed while it is being moved into the cache.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


class Stopped(KeyboardInterrupt):
    """Raised in a worker whose run was interrupted: its build must not be committed."""


class InFlight:
    def __init__(self) -> None:
        self._guard = threading.Condition()
        self._staged: dict[str, Path] = {}
        self._committing = 0
        self.stopped = False

    def started(self, name: str, staged: Path) -> None:
        with self._guard:
            self._staged[name] = staged

    def finished(self, name: str) -> None:
        with self._guard:
            self._staged.pop(name, None)

    def check(self) -> None:
        """Raise ``Stopped`` if the run was interrupted (a stage's progress report calls it)."""
        if self.stopped:
            raise Stopped("the run was interrupted")

    @contextlib.contextmanager
    def committing(self, name: str) -> Iterator[None]:
        """Hand ``name``'s staging directory over to the cache's commit, unless stopped."""
        with self._guard:
            self.check()
            self._staged.pop(name, None)
            self._committing += 1
        try:
            yield
        finally:
            with self._guard:
                self._committing -= 1
                self._guard.notify_all()

    def stop(self) -> list[Path]:
        """Stop every build; returns the staging directories to discard."""
        with self._guard:
            self.stopped = True
            self._guard.wait_for(lambda: self._committing == 0, timeout=30)
            staged, self._staged = list(self._staged.values()), {}
        return staged
