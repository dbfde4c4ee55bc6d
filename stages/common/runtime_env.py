"""Isolated Python environments holding a target's onnxruntime distribution, built once each.

The onnxruntime distributions (onnxruntime, onnxruntime-openvino, onnxruntime-gpu...) all
install the same ``onnxruntime`` package, so a target whose distribution is not the host's
runs in a venv of its own::

    <root>/<key>/                      a venv; key = sha256(requirements, Python, platform)[:16]
    <root>/<key>/edgekiln-env.json     written last, after the install imported cleanly
    <root>/<key>.lock                  one builder per key across processes

A directory without its marker was left by a killed or failed build and is rebuilt, never used.
``<root>`` is ``$EDGEKILN_ENV_DIR``, else ``$XDG_CACHE_HOME/edgekiln/envs``, else
``~/.cache/edgekiln/envs``: outside any project's artifacts, because the few hundred MB of an
environment serve every recipe on the machine and nothing in it enters a bundle.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from pipeline.errors import EnvironmentProblem, RecipeError, StageError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import numpy as np

log = logging.getLogger(__name__)
MARKER = "edgekiln-env.json"
ENV_SCHEMA = 1  # bump when the layout of an environment changes
PIP_TIMEOUT = 1800.0
CPU = "CPUExecutionProvider"
# Why an execution provider cannot run on this machine, even in an environment of its own.
# Only the EPs missing here are looked up; CPU and OpenVINO (x86-64) run on this CPU.
CANNOT_RUN = {
    "TensorrtExecutionProvider": "needs an NVIDIA GPU with TensorRT",
    "NvTensorRTRTXExecutionProvider": "needs an NVIDIA RTX GPU",
    "CUDAExecutionProvider": "needs an NVIDIA GPU with CUDA",
    "ROCMExecutionProvider": "needs an AMD GPU with ROCm",
    "MIGraphXExecutionProvider": "needs an AMD GPU with MIGraphX",
    "NnapiExecutionProvider": "runs only on Android devices",
    "CoreMLExecutionProvider": "runs only on Apple devices",
    "QNNExecutionProvider": "needs a Qualcomm Snapdragon SoC with the QNN runtime",
    "DmlExecutionProvider": "runs only on Windows with DirectML",
    "VitisAIExecutionProvider": "needs an AMD Ryzen AI NPU",
    "XnnpackExecutionProvider": "needs an onnxruntime build with XNNPACK: the Android, iOS or "
                                "Arm packages, not the x86-64 wheels",
    "ACLExecutionProvider": "needs an Arm CPU and onnxruntime built with Arm Compute Library",
    "ArmNNExecutionProvider": "needs an Arm CPU and onnxruntime built with Arm NN",
    "WebGpuExecutionProvider": "needs a WebGPU build of onnxruntime",
}
UNKNOWN_EP = "needs a runtime edgekiln cannot install on this machine"
X86 = ("x86_64", "amd64", "x86-64")


@dataclass(frozen=True)
class Env:
    path: Path
    python: Path
    packages: dict[str, str]  # distribution -> version installed
    created: bool  # built by this call
    seconds: float  # time this call spent building it (0.0 when reused)


@dataclass(frozen=True)
class RuntimeChoice:
    """Where a target's checks run: the host's onnxruntime, or an isolated environment."""

    isolated: bool
    requirement: str  # what the target asks for, e.g. "onnxruntime-openvino>=1.20"
    reason: str | None = None  # why the target's own runtime is not used, when it is not


def env_root() -> Path:
    explicit = os.environ.get("EDGEKILN_ENV_DIR")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "edgekiln" / "envs"


def env_key(requirements: Sequence[str]) -> str:
    """Digest of what makes two environments interchangeable."""
    payload = {"schema": ENV_SCHEMA, "requirements": sorted(requirements),
               "python": sys.version, "base": str(Path(sys.base_prefix).resolve()),
               "platform": sys.platform, "machine": platform.machine(),
               "libc": list(platform.libc_ver())}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def ensure_env(requirements: Sequence[str], imports: Sequence[str] = (),
               root: Path | None = None,
               report: Callable[[str], None] | None = None) -> Env:
    """The environment holding ``requirements``, built (once, under a lock) if missing.

    ``imports`` are modules the environment must import before it counts as complete.
    """
    root = root or env_root()
    key = env_key(requirements)
    path = root / key
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EnvironmentProblem(f"cannot create the environment folder {root} ({exc}); set "
                                 "EDGEKILN_ENV_DIR to a writable folder") from exc
    with FileLock(root / f"{key}.lock"):
        marker = _read_marker(path)
        if marker is not None:
            return Env(path, _python(path), marker["packages"], created=False, seconds=0.0)
        if report:
            report(f"creating isolated environment for {' '.join(requirements)} (once)")
        start = time.perf_counter()
        shutil.rmtree(path, ignore_errors=True)  # a half-built one; we hold the lock
        try:
            packages = _build(path, requirements, imports)
        except EnvironmentProblem:
            shutil.rmtree(path, ignore_errors=True)
            raise
        seconds = round(time.perf_counter() - start, 2)
        marker = {"requirements": list(requirements), "packages": packages,
                  "python": sys.version, "seconds": seconds, "created": time.time()}
        partial = path / f".{MARKER}.partial"
        partial.write_text(json.dumps(marker, indent=2))
        os.replace(partial, path / MARKER)
    return Env(path, _python(path), packages, created=True, seconds=seconds)


def _read_marker(path: Path) -> dict | None:
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    # a venv whose interpreter vanished (Python upgraded in place) is as good as missing
    return marker if isinstance(marker, dict) and _python(path).exists() else None


def _python(path: Path) -> Path:
    return path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _build(path: Path, requirements: Sequence[str], imports: Sequence[str]) -> dict[str, str]:
    base = getattr(sys, "_base_executable", sys.executable)
    venv = [base, "-m", "venv", str(path)] + ([] if requirements else ["--without-pip"])
    _run(venv, "create the venv", 300.0)
    python = str(_python(path))
    if requirements:
        _run([python, "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
              *requirements], f"pip install {' '.join(requirements)}", PIP_TIMEOUT)
    names = [_dist_name(r) for r in requirements]
    probe = ("import importlib, importlib.metadata as m, json, sys\n"
             f"for module in {list(imports)!r}: importlib.import_module(module)\n"
             f"print(json.dumps({{d: m.version(d) for d in {names!r}}}))")
    return json.loads(_run([python, "-I", "-c", probe], "import the installed packages", 300.0))


def _run(command: list[str], what: str, timeout: float) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              env=env, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EnvironmentProblem(f"could not {what}: {exc}") from exc
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        raise EnvironmentProblem(f"could not {what} (exit {proc.returncode}): {tail}")
    return proc.stdout


def _dist_name(requirement: str) -> str:
    from packaging.requirements import Requirement

    return Requirement(requirement).name


@functools.cache
def host_runtime() -> tuple[str, str]:
    """The distribution that provides ``onnxruntime`` here, and its version."""
    names = importlib.metadata.packages_distributions().get("onnxruntime") or ["onnxruntime"]
    try:
        return names[0], importlib.metadata.version(names[0])
    except importlib.metadata.PackageNotFoundError:
        return names[0], "absent"


def requirement(distribution: str, version: str, key: str) -> str:
    """``distribution`` + ``version`` as a pip requirement, refusing anything else."""
    from packaging.requirements import InvalidRequirement, Requirement

    text = f"{distribution}{version.strip()}"
    try:
        parsed = Requirement(text)
        plain = parsed.name == distribution and not (parsed.url or parsed.marker or parsed.extras)
    except InvalidRequirement:
        plain = False
    if not plain:
        raise RecipeError(
            f"{key}: '{text}' (distribution '{distribution}', version '{version}') is not a "
            "plain PyPI requirement; expected a distribution name such as "
            "'onnxruntime-openvino' and a PEP 440 range such as '>=1.20,<1.25' (or empty), "
            "without extras, URLs or markers."
        )
    return str(parsed)


def choose_runtime(distribution: str, version: str, first_ep: str, key: str,
                   isolate: bool = True) -> RuntimeChoice:
    """Run on the host when it is the target's runtime, else in an isolated env if it can run."""
    from packaging.specifiers import SpecifierSet

    wanted = requirement(distribution, version, key)
    host, host_version = host_runtime()
    if distribution == host and SpecifierSet(version.strip()).contains(host_version, True):
        return RuntimeChoice(isolated=False, requirement=wanted)
    blocker = ep_blocker(first_ep)
    if blocker:
        return RuntimeChoice(False, wanted, f"{wanted} was not installed: {first_ep} {blocker}")
    if not isolate:
        return RuntimeChoice(False, wanted, f"{wanted} was not installed: "
                                            "validate.isolated_runtime is false")
    return RuntimeChoice(isolated=True, requirement=wanted)


def ep_blocker(ep: str) -> str | None:
    """Why ``ep`` cannot run on this machine, or None when an environment can run it."""
    if ep == CPU:
        return None
    if ep == "OpenVINOExecutionProvider":
        machine = platform.machine().lower()
        return None if machine in X86 else f"needs an x86-64 CPU (this is {machine})"
    return CANNOT_RUN.get(ep, UNKNOWN_EP)


class TargetRuntime:
    """The onnxruntime a target's checks run on: this process's, or an isolated env's."""

    def __init__(self, info: dict[str, Any], python: Path | None) -> None:
        self.info, self.python = info, python  # python: None runs in this process

    @classmethod
    def prepare(cls, target: Any, name: str | None, validate: Any,
                report: Callable[[str], None] | None = None) -> TargetRuntime:
        """Choose the target's runtime and build its environment when it needs one.

        A runtime that cannot be installed does not fail the build: the checks run on the
        host's onnxruntime, and ``info["fallback_reason"]`` says why.
        """
        spec = target.get("runtime") or {}
        dist, version = spec.get("distribution", "onnxruntime"), spec.get("version", "")
        choice = choose_runtime(dist, version, target.execution_providers[0].name,
                                f"targets.{name}.runtime", validate.get("isolated_runtime", True))
        info = {"requested": {"distribution": dist, "version": version},
                "requirement": choice.requirement, "isolated": False, "env": None,
                "env_created": False, "env_setup_seconds": 0.0, "fallback_reason": choice.reason}
        env = None
        if choice.isolated:
            try:
                env = ensure_env([choice.requirement, "numpy"], ("numpy", "onnxruntime"),
                                 report=report)
            except EnvironmentProblem as exc:
                info["fallback_reason"] = f"{choice.requirement} could not be installed: {exc}"
                log.warning("target '%s': %s; validating on the host's onnxruntime", name,
                            info["fallback_reason"])
        if env is None:
            host, host_version = host_runtime()
            return cls(info | {"distribution": host, "version": host_version,
                               "pinned": f"{host}=={host_version}"}, None)
        installed = env.packages[dist]
        info |= {"isolated": True, "env": str(env.path), "env_created": env.created,
                 "env_setup_seconds": env.seconds, "distribution": dist, "version": installed,
                 "pinned": f"{dist}=={installed}"}
        return cls(info, env.python)

    def run(self, request: dict[str, Any], feeds: list[Any],
            target: str | None) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
        """The worker's result, arrays and (from a subprocess) stderr for ``request``."""
        from stages.common import ort_worker as validate_worker

        if self.python is None:
            return (*validate_worker.run_request(request, feeds), "")
        try:
            return validate_worker.call(self.python, request, feeds)
        except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
            raise StageError(f"target '{target}': the validation worker failed in the isolated "
                             f"environment {self.info['env']} ({self.info['pinned']}): {exc}"
                             ) from exc
