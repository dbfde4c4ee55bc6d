"""SIGINT and SIGTERM end a run the same way: an exception in the main thread, normal cleanup.

Python turns SIGINT into ``KeyboardInterrupt`` in the main thread; SIGTERM (``kill``, a CI
runner's timeout, ``docker stop``) would end the process on the spot and leave staging
directories in the cache. ``Interrupted`` is a ``KeyboardInterrupt``, so both take the path of
Ctrl-C: the executor discards what it was building, the CLI prints one line and exits 128+N.
"""

from __future__ import annotations

import signal
import threading
from typing import Any


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal (``signum``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def install() -> None:
    """Make SIGTERM raise ``Interrupted`` in the main thread, as SIGINT raises KeyboardInterrupt."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise)


def signal_number(exc: KeyboardInterrupt) -> int:
    return exc.signum if isinstance(exc, Interrupted) else signal.SIGINT


def _raise(signum: int, _frame: Any) -> None:
    raise Interrupted(signum)
