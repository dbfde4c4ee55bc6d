"""The published operator support of execution providers, kept as data files in op_support/.

One JSON file per EP, each naming its ``source`` (URL or document) and ``version``. An op entry
may carry ``since``/``until`` (the op versions the EP implements), ``types`` (element types of
the op's first input it accepts), ``zero_point`` (a value Q/DQ zero points must hold) and a
``caveat`` (a restriction the table states but coverage does not check). A domain may list
bare op names when the source gives no more. ``all_ops`` marks the CPU EP, which takes every op.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TABLES = Path(__file__).parent / "op_support"
DEFAULT_DOMAIN = "ai.onnx"


@dataclass(frozen=True)
class OpTable:
    execution_provider: str
    source: str
    version: str
    file: str
    all_ops: bool
    # domain -> op type -> entry
    ops: dict[str, dict[str, dict[str, Any]]]
    # domain -> [lowest, highest] opset the EP parses
    opset: dict[str, list[int]]

    def entry(self, domain: str, op_type: str) -> dict[str, Any] | None:
        return self.ops.get(domain or DEFAULT_DOMAIN, {}).get(op_type)

    def describe(self) -> dict[str, str]:
        return {"file": f"op_support/{self.file}", "source": self.source,
                "version": self.version}


@functools.cache
def tables() -> dict[str, OpTable]:
    """Every table in op_support/, by the name of its execution provider."""
    found = {}
    for path in sorted(TABLES.glob("*.json")):
        data = json.loads(path.read_text())
        ops = {domain: _entries(listed) for domain, listed in data.get("ops", {}).items()}
        table = OpTable(execution_provider=data["execution_provider"], source=data["source"],
                        version=data["version"], file=path.name,
                        all_ops=bool(data.get("all_ops")), ops=ops,
                        opset=data.get("opset", {}))
        found[table.execution_provider] = table
    return found


def _entries(listed: list[str] | dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: {} for name in listed} if isinstance(listed, list) else dict(listed)


def stage_version(base: int) -> int:
    """``base`` combined with a digest of every table, for a stage whose output they shape.

    A cache key covers a stage's version, not the data files its code reads, so editing a
    table would otherwise leave stale coverage reports in the cache.
    """
    digest = hashlib.sha256()
    for path in sorted(TABLES.glob("*.json")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return base * 10**8 + int(digest.hexdigest()[:7], 16)
