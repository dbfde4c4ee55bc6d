"""Named points where the fault-injection tests SIGKILL a run: ``EDGEKILN_FAULT_AT=<name>:<n>``.

The run kills itself the ``n``-th time (default 1) it reaches ``point(name)``, just before the
step that follows: a rename, a symlink switch, a removal. Unset, ``point`` is one comparison.
tests/e2e/test_fault_kills.py kills a real build at each of them.
"""

from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("EDGEKILN_FAULT_AT")
_reached: dict[str, int] = {}


def point(name: str) -> None:
    if _SPEC is not None:
        _reach(name)


def _reach(name: str) -> None:
    wanted, _, nth = _SPEC.partition(":") if _SPEC else ("", "", "")
    if name != wanted:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
