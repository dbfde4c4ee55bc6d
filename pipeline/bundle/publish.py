"""Publish one deployment bundle per publishing node (the ``package`` stage of each target).

``artifacts/<recipe>/<target>/`` receives the publishing stage's output folder as it is cached
(model, providers.json, signature.json, samples, requirements.txt, load_model.py) and
``manifest.json`` (the equivalent of ``dvc.lock``: every stage the bundle depends on with its
cache key, digest and summary, the environment that built it, and the sha256 of every other
file). With a signing key configured
(see ``pipeline.bundle.signing``) ``model.sig`` signs all of it, manifest included.
``<target>.tar.gz`` and its ``.sha256`` go beside the folder.

Each new bundle is written complete, with its archive and checksum, as a new version, and one
atomic switch makes it live (``pipeline.bundle.versions``): a reader sees the old bundle or the
new one, never a mix, and ``run.keep_bundles`` versions stay for rollback. Right after the
switch the live bundle is re-read and checked against its manifest and checksum
(``pipeline.bundle.verify``); a mismatch is a stage error and the previous version goes live
again. A build that failed never reaches this step. An unchanged bundle is left alone (not
even re-signed: ECDSA signatures differ on every run, and the archive would with them).
"""

from __future__ import annotations

import json
import platform
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from pipeline import faults
from pipeline.bundle import archive, signing, verify, versions
from pipeline.errors import RecipeError, StageError
from pipeline.hashing import DigestState, file_digests, list_files
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
    keep = _keep_bundles(plan)
    with FileLock(recipe_dir / ".publish.lock"):
        versions.recover(recipe_dir)
        for node in ready:
            key = signing.signing_key(node.publish)
            bundle = _assemble(plan, results, node, names[node.name], key)
            published[names[node.name]] = _write_bundle(recipe_dir, bundle, state, key)
            versions.prune(recipe_dir, names[node.name], keep)
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
    """Open every signing key the bundles need, and check ``run.keep_bundles``: a missing key
    or a bad value fails before any stage runs."""
    _keep_bundles(plan)
    for node in publishing(plan):
        signing.signing_key(node.publish)


def _keep_bundles(plan: Plan) -> int:
    keep = plan.resolved["run"].get("keep_bundles", 3)
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise RecipeError(f"run.keep_bundles is {keep!r}; expected a whole number of bundle "
                          "versions to keep for rollback, at least 1 (the live one)")
    return keep


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
    staged = versions.staging(recipe_dir, bundle.name)
    # under its final name: model-signing records the folder name in the signature
    folder = staged / bundle.name
    shutil.copytree(bundle.package, folder, copy_function=shutil.copyfile)
    _check_staged(folder, bundle.manifest["files"])
    (folder / MANIFEST).write_text(json.dumps(bundle.manifest, indent=2, sort_keys=True))
    if key is not None:
        signing.sign(folder, key)
    archive.write(folder, staged)
    previous = versions.live(recipe_dir, bundle.name)
    version = versions.commit(recipe_dir, bundle.name, staged)
    versions.link(recipe_dir, bundle.name)
    versions.switch(recipe_dir, bundle.name, version)
    _verify_live(recipe_dir, bundle.name, version, previous)
    return final


def _verify_live(recipe_dir: Path, name: str, version: str, previous: str | None) -> None:
    """Re-read what went live; on a mismatch put the previous version back and fail."""
    faults.point("publish.verify")
    try:
        verify.bundle(recipe_dir, name)
    except verify.Mismatch as exc:
        versions.switch(recipe_dir, name, previous)
        versions.discard(recipe_dir, name, version)
        restored = f"version {previous} is live again" if previous else "no bundle is live"
        raise StageError(f"publishing '{name}': right after the switch to version {version}, "
                         f"{exc}; the bundle was written wrong (disk or filesystem fault?), "
                         f"so it was removed and {restored}. Re-run to publish it again."
                         ) from None


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
    return (existing == json.loads(json.dumps(manifest)) and on_disk == manifest["files"]
            and has_signature == signed
            and all(final.with_name(n).is_file() for n in archive.names(final.name)))
