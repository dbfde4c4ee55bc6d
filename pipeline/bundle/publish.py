"""Publish one deployment bundle per target from the cached package and validate outputs.

``artifacts/<recipe>/<target>/`` receives the packaged files (model, providers.json,
signature.json, load_model.py), validate's ``samples.npz`` (sample inputs and the outputs the
validated model gave for them), a ``requirements.txt`` pinning the device's onnxruntime, and
``manifest.json`` (the equivalent of ``dvc.lock``: which stage keys produced the bundle, the
environment that built it, and the sha256 of every other file). With a signing key configured
(see ``pipeline.bundle.signing``) ``model.sig`` signs all of it, manifest included.
``<target>.tar.gz`` and its ``.sha256`` go beside the folder.

The new bundle is assembled aside and swapped in with renames, so a reader sees the old bundle
or the new one, never a mix; a build that failed never reaches this step. An unchanged bundle is
left alone (not even re-signed: ECDSA signatures differ on every run, archives would too).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tarfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from pipeline.bundle import signing
from pipeline.errors import StageError
from pipeline.hashing import DigestState, file_digests, list_files, sha256_file
from pipeline.keys import tool_version
from pipeline.plan import Plan, node_name

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline.cache import Entry
    from pipeline.executor import NodeResult

MANIFEST = "manifest.json"
FORMAT = 2  # bump when load_model.py must read manifest.json differently
SAMPLES = "samples.npz"
REQUIREMENTS = "requirements.txt"
# library -> the distributions that provide it, in the order to look for them
LIBRARIES = {
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"),
    "torch": ("torch",),
    "tensorflow": ("tensorflow", "tensorflow-cpu"),
    "numpy": ("numpy",),
    "model-signing": ("model-signing",),
}


@dataclass(frozen=True)
class _Bundle:
    target: str
    package: Path  # the package stage's output folder
    samples: Path | None  # validate's samples.npz, when it wrote one
    requirements: str
    manifest: dict[str, Any]


def publish(plan: Plan, results: dict[str, NodeResult], recipe_dir: Path,
            state: DigestState) -> dict[str, Path]:
    """Write the bundle of every target whose whole chain of stages succeeded."""
    recipe_dir.mkdir(parents=True, exist_ok=True)
    published: dict[str, Path] = {}
    with FileLock(recipe_dir / ".publish.lock"):
        _recover(recipe_dir)
        chains = {target: [name for name, node in plan.nodes.items()
                           if node.target in (None, target)] for target in plan.targets}
        ready = [target for target, chain in chains.items()
                 if all(results[name].status in ("ran", "cached") for name in chain)]
        key = signing.signing_key(plan.resolved) if ready else None
        for target in ready:
            bundle = _assemble(plan, results, target, chains[target], key)
            published[target] = _write_bundle(recipe_dir, bundle, state, key)
    return published


def _recover(recipe_dir: Path) -> None:
    """Undo what a run killed mid-publish left: put a retired bundle back if none replaced it."""
    for staging in recipe_dir.glob(".*.staging.*"):
        shutil.rmtree(staging, ignore_errors=True)
    for retired in recipe_dir.glob(".*.retired.*"):
        final = recipe_dir / retired.name[1:].rsplit(".retired.", 1)[0]
        if final.exists():
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(retired, final)


def _assemble(plan: Plan, results: dict[str, NodeResult], target: str, chain: list[str],
              key: signing.SigningKey | None) -> _Bundle:
    """What the bundle will hold, with its manifest, computed from cache metadata alone."""
    package, validate = (_entry(results, kind, target) for kind in ("package", "validate"))
    target_config = plan.resolved["targets"][target]
    runtime = _runtime(target_config, validate.meta["summary"])
    requirements = _requirements(target, runtime, signed=key is not None)
    files = dict(package.meta["files"])
    files[REQUIREMENTS] = hashlib.sha256(requirements.encode()).hexdigest()
    has_samples = SAMPLES in validate.meta["files"]
    if has_samples:
        files[SAMPLES] = validate.meta["files"][SAMPLES]
    manifest = {
        "format": FORMAT,
        "recipe": plan.recipe,
        "target": target,
        "target_config": target_config,
        "execution_providers": target_config["execution_providers"],
        "signature": {k: package.meta["summary"][k]
                      for k in ("inputs", "outputs", "opset", "ir_version")},
        "onnxruntime_version": tool_version("onnxruntime"),
        "runtime": runtime,
        "source_model_digest": results["export"].entry.meta["payload"]["sources"],  # type: ignore[union-attr]
        "stages": {name: {"key": results[name].key,
                          "digest": results[name].entry.digest}  # type: ignore[union-attr]
                   for name in chain},
        # settings, nodes kept float and what they cost, when an accuracy budget was set
        "quantization": _entry(results, "quantize", target).meta["summary"],
        "validation": validate.meta["summary"],
        "samples": _samples_entry(validate.meta["summary"]) if has_samples else None,
        "recipe_resolved": plan.resolved,
        "built_with": _environment(),
        "signing": key.manifest_entry() if key else None,
        "files": files,
    }
    return _Bundle(target, package.out, validate.out / SAMPLES if has_samples else None,
                   requirements, manifest)


def _entry(results: dict[str, NodeResult], kind: str, target: str) -> Entry:
    entry = results[node_name(kind, target)].entry
    if entry is None:  # publish() picks only targets whose stages ran or came from the cache
        raise StageError(f"publishing '{target}': stage {kind}@{target} has no output")
    return entry


def _runtime(target_config: dict[str, Any], validation: dict[str, Any]) -> dict[str, Any]:
    """The onnxruntime the device must install: the target's range, else what validated."""
    spec = target_config.get("runtime") or {}
    distribution = spec.get("distribution") or "onnxruntime"
    ran = validation.get("runtime") or {}
    validated = {"distribution": ran.get("distribution") or "onnxruntime",
                 "version": ran.get("version") or tool_version("onnxruntime")}
    if spec.get("version"):
        requirement = f"{distribution}{spec['version']}"
    elif validated["distribution"] == distribution:
        requirement = f"{distribution}=={validated['version']}"
    else:  # validate fell back to the host's distribution: no version of this one was tried
        requirement = distribution
    return {"distribution": distribution, "requirement": requirement,
            "validated_with": validated}


def _requirements(target: str, runtime: dict[str, Any], signed: bool) -> str:
    validated = runtime["validated_with"]
    numpy_major = int(tool_version("numpy").split(".")[0])
    lines = [
        f"# what load_model.py needs on the device for target '{target}': "
        "pip install -r requirements.txt",
        f"# validated with {validated['distribution']}=={validated['version']}",
        runtime["requirement"],
        # the numpy major version the bundle was built with: 1.x and 2.x differ in ABI
        f"numpy>={numpy_major},<{numpy_major + 1}",
    ]
    if signed:
        lines.append("# to verify the signature (load_model.py --public-key): model-signing>=1.1")
    return "\n".join(lines) + "\n"


def _samples_entry(validation: dict[str, Any]) -> dict[str, Any]:
    """Where the self-test finds its samples and the tolerances validate set for them."""
    info = validation.get("samples")
    info = info if isinstance(info, dict) else {}
    return {"file": SAMPLES, **info}


def _environment() -> dict[str, Any]:
    """The machine and libraries that built the bundle (versions read without importing)."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "libraries": {name: _first_version(dists) for name, dists in LIBRARIES.items()},
        "edgekiln": tool_version("edgekiln"),
    }


def _first_version(distributions: tuple[str, ...]) -> str:
    for dist in distributions:
        if (version := tool_version(dist)) != "absent":
            return version if dist == distributions[0] else f"{version} ({dist})"
    return "absent"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(("model name", "Hardware", "Processor")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _write_bundle(recipe_dir: Path, bundle: _Bundle, state: DigestState,
                  key: signing.SigningKey | None) -> Path:
    final = recipe_dir / bundle.target
    if _unchanged(final, bundle.manifest, state, signed=key is not None):
        return final
    # staged under its final name: model-signing records the folder name in the signature
    holder = recipe_dir / f".{bundle.target}.staging.{os.getpid()}"
    shutil.rmtree(holder, ignore_errors=True)
    staging = holder / bundle.target
    shutil.copytree(bundle.package, staging, copy_function=shutil.copyfile)
    if bundle.samples is not None:
        shutil.copyfile(bundle.samples, staging / SAMPLES)
    (staging / REQUIREMENTS).write_bytes(bundle.requirements.encode())
    _check_staged(staging, bundle.manifest["files"])
    (staging / MANIFEST).write_text(json.dumps(bundle.manifest, indent=2, sort_keys=True))
    if key is not None:
        signing.sign(staging, key)
    _archive(staging, recipe_dir, bundle.target)
    _swap(staging, final)
    shutil.rmtree(holder, ignore_errors=True)
    return final


def _check_staged(staging: Path, files: dict[str, str]) -> None:
    """The copied bytes are what the manifest lists (a damaged cache entry must not ship)."""
    staged = file_digests(staging)
    if staged != files:
        wrong = sorted(name for name in staged.keys() | files.keys()
                       if staged.get(name) != files.get(name))
        raise StageError(f"publishing '{staging.name}': the files {wrong} do not match the "
                         "cache's record of them; the cache entry is damaged. Re-run with "
                         "run.force=[package] (or run.force=all).")


def _unchanged(final: Path, manifest: dict[str, Any], state: DigestState, signed: bool) -> bool:
    """True when the bundle on disk is exactly what we would write (checked via the stat memo)."""
    try:
        existing = json.loads((final / MANIFEST).read_text())
        paths = list(final.rglob("*"))
        on_disk = {p.relative_to(final).as_posix(): state.file(p) for p in list_files(final)}
    except (OSError, ValueError):
        return False
    if any(p.is_symlink() for p in paths):
        return False
    on_disk.pop(MANIFEST, None)
    has_signature = on_disk.pop(signing.SIGNATURE_FILE, None) is not None
    archive = final.with_name(f"{final.name}.tar.gz")
    return (existing == json.loads(json.dumps(manifest)) and on_disk == manifest["files"]
            and has_signature == signed and archive.exists())


def _archive(staging: Path, recipe_dir: Path, target: str) -> None:
    archive = recipe_dir / f"{target}.tar.gz"
    partial = archive.with_name(f".{archive.name}.{os.getpid()}.partial")
    with tarfile.open(partial, "w:gz", compresslevel=6) as tar:
        for path in sorted(staging.rglob("*")):
            tar.add(path, arcname=f"{target}/{path.relative_to(staging).as_posix()}",
                    recursive=False)
    checksum = sha256_file(partial)
    os.replace(partial, archive)
    sidecar = archive.with_name(f"{archive.name}.sha256")
    partial_sum = sidecar.with_name(f".{sidecar.name}.partial")
    partial_sum.write_text(f"{checksum}  {archive.name}\n")
    os.replace(partial_sum, sidecar)


def _swap(staging: Path, final: Path) -> None:
    retired = final.with_name(f".{final.name}.retired.{os.getpid()}")
    if final.exists():
        os.replace(final, retired)
    os.replace(staging, final)
    shutil.rmtree(retired, ignore_errors=True)
