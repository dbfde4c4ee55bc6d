"""Run the real CLI in a subprocess, from the repository root, like a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# Runs the CLI, then reports which heavy frameworks the process imported.
_PROBE = """
import runpy, sys
sys.argv = ["pipeline", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("pipeline", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code or 0
heavy = sorted(m for m in ("torch", "tensorflow", "onnxruntime") if m in sys.modules)
print("IMPORTED=" + ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def imported(self) -> list[str]:
        line = next(x for x in self.stderr.splitlines() if x.startswith("IMPORTED="))
        return [m for m in line.removeprefix("IMPORTED=").split(",") if m]


def run_cli(*args: str, cwd: Path = ROOT, timeout: float = 600) -> Result:
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, check=False)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def run_record(artifacts: Path, recipe: str) -> dict[str, Any]:
    return json.loads((artifacts / recipe / "run.json").read_text())


def statuses(record: dict[str, Any]) -> dict[str, str]:
    return {f"{s['stage']}@{s['target']}" if s["target"] else s["stage"]: s["status"]
            for s in record["stages"]}
