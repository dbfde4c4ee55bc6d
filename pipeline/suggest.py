"""Nearest-name suggestions for Hydra's composition errors, which name the key but not a fix."""

from __future__ import annotations

import dataclasses
import re
import sys
from typing import TYPE_CHECKING

from pipeline import schema, targets
from pipeline.errors import did_you_mean
from pipeline.registry import REGISTRY

if TYPE_CHECKING:
    from pathlib import Path

_UNKNOWN_KEY = re.compile(r"Key '(\w+)' not in '(\w+)'")
_MISSING_OPTION = re.compile(r"Could not find '([\w/]+)/(\w+)'")


def suggestion(message: str, search_path: list[Path]) -> str:
    """' Did you mean ...?' for an unknown key or config option in ``message``, else ''."""
    if match := _UNKNOWN_KEY.search(message):
        key, owner = match.groups()
        cls = _schema_class(owner)
        if cls is not None:
            return did_you_mean(key, [f.name for f in dataclasses.fields(cls)])
    if match := _MISSING_OPTION.search(message):
        group, name = match.groups()
        options = {p.stem for root in search_path for p in (root / group).glob("*.yaml")}
        return did_you_mean(name, options)
    return ""


def _schema_class(name: str) -> type | None:
    """A dataclass of the recipe schema or of an installed kind's params module, by name."""
    modules = [schema, targets, *(sys.modules[spec.params.__module__]
                                  for spec in REGISTRY.values() if spec.params is not None)]
    for module in modules:
        cls = getattr(module, name, None)
        if dataclasses.is_dataclass(cls):
            return cls  # type: ignore[return-value]
    return None


class Tee:
    """A stream that writes through and keeps a copy, to read Hydra's error text."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.text: list[str] = []

    def write(self, data: str) -> int:
        self.text.append(data)
        return self.stream.write(data)

    def close(self) -> None:
        # absl's log handler, made while the Tee is sys.stderr, closes its stream at
        # logging.shutdown(): that must not close the real stderr under whoever runs the CLI
        self.stream.flush()

    def __getattr__(self, name: str):
        return getattr(self.stream, name)
