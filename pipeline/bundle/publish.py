"""Publish one deployment bundle per publishing node (the ``package`` stage of each target).

``artifacts/<recipe>/<target>/`` receives the publishing stage's output folder as it is cached
(model, providers.json, signature.json, samples, requirements.txt, load_model.py) and
``manifest.json`` (the equivalent of ``dvc.lock``: every stage the bundle depends on with its
cache key, digest and summary, the environment that built it, and the sha256 of every other
file). With a signing key configured
(see ``pipeline.bundle.signing``) ``model.sig`` signs all of it, manifest included.
``<target>.tar.gz`` and its ``.sha256`` go beside the folder.

The new bundle is assembled aside and swapped in with renames, so a reader sees the old bundle
or the new one, never a mix; a build that failed never reaches this step. An unchanged bundle is
left alone (not even re-signed: ECDSA signatures differ on every run, archives would too).
"""

from __future__ import annotations

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

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline.cache import Entry
    from pipeline.executor import NodeResult
    from pipeline.plan import Node, Plan

MANIFEST = "manifest.json"
FORMAT = 3  # bump when load_model.py must read manifest.json differently
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
    name: str  # folder name under artifacts/<recipe>/
    package: Path  # the publishing stage's output folder: every file but the manifest
    manifest: dict[str, Any]


def publish(plan: Plan, results: dict[str, NodeResult], recipe_dir: Path,
            state: DigestState, only: set[str] | None = None) -> dict[str, Path]:
    """Write the bundle of every publishing node that ran or came from the cache; with
    ``only``, of those among these node names (the nightly holds back what regressed)."""
    recipe_dir.mkdir(parents=True, exist_ok=True)
    published: dict[str, Path] = {}
    ready = [node for node in publishing(plan)
             if results[node.name].status in ("ran", "cached")
             and (only is None or node.name in only)]
    names = bundle_names(plan)
    with FileLock(recipe_dir / ".publish.lock"):
        _recover(recipe_dir)
        for node in ready:
            key = signing.signing_key(node.publish)
            bundle = _assemble(plan, results, node, names[node.name], key)
            published[names[node.name]] = _write_bundle(recipe_dir, bundle, state, key)
    return published


def publishing(plan: Plan) -> list[Node]:
    """The nodes whose output is a bundle (their kind says it publishes)."""
    return [node for node in plan.nodes.values() if node.spec.publishes]


def bundle_names(plan: Plan) -> dict[str, str]:
    """Bundle folder per publishing node: its target's name, ``<target>-<stage>`` when the
    recipe has several publishing stages, the stage's name for a target-agnostic one."""
    nodes = publishing(plan)
    several = len({node.stage for node in nodes}) > 1
    names = {}
    for node in nodes:
        if node.target is None:
            names[node.name] = node.stage
        else:
            names[node.name] = f"{node.target}-{node.stage}" if several else node.target
    return names


def check_signing(plan: Plan) -> None:
    """Open every signing key the bundles need: a missing key fails before any stage runs."""
    for node in publishing(plan):
        signing.signing_key(node.publish)


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


def _assemble(plan: Plan, results: dict[str, NodeResult], node: Node, name: str,
              key: signing.SigningKey | None) -> _Bundle:
    """What the bundle will hold, with its manifest, computed from cache metadata alone."""
    # a lost variant (a candidate that failed to build) is no part of what the bundle holds
    chain = [n for n in plan.chain(node.name) if results[n].status != "lost"]
    package = _entry(results, node.name)
    summary = package.meta["summary"]
    target_config = plan.resolved["targets"][node.target] if node.target else None
    manifest = {
        "format": FORMAT,
        "recipe": plan.recipe,
        "bundle": name,
        "target": node.target,
        "target_config": target_config,
        "execution_providers": (target_config or {}).get("execution_providers"),
        "onnxruntime_version": tool_version("onnxruntime"),
        # what the publishing kind says about its bundle: signature, runtime, samples
        **summary.get("manifest", {}),
        "sources": {k: v for n in chain
                    for k, v in _entry(results, n).meta["payload"]["sources"].items()},
        "stages": {n: {"kind": plan.nodes[n].spec.kind, "key": results[n].key,
                       "digest": _entry(results, n).digest,
                       "summary": _entry(results, n).meta["summary"]} for n in chain},
        "recipe_resolved": plan.resolved,
        "built_with": _environment(),
        "signing": key.manifest_entry() if key else None,
        "files": dict(package.meta["files"]),
    }
    return _Bundle(name, package.out, manifest)


def _entry(results: dict[str, NodeResult], name: str) -> Entry:
    entry = results[name].entry
    if entry is None:  # publish() picks only nodes that ran or came from the cache
        raise StageError(f"publishing: stage {name} has no output")
    return entry


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
    final = recipe_dir / bundle.name
    if _unchanged(final, bundle.manifest, state, signed=key is not None):
        return final
    # staged under its final name: model-signing records the folder name in the signature
    holder = recipe_dir / f".{bundle.name}.staging.{os.getpid()}"
    shutil.rmtree(holder, ignore_errors=True)
    staging = holder / bundle.name
    shutil.copytree(bundle.package, staging, copy_function=shutil.copyfile)
    _check_staged(staging, bundle.manifest["files"])
    (staging / MANIFEST).write_text(json.dumps(bundle.manifest, indent=2, sort_keys=True))
    if key is not None:
        signing.sign(staging, key)
    _archive(staging, recipe_dir, bundle.name)
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
