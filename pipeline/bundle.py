"""Publish one deployment bundle per target from the cached package output.

``artifacts/<recipe>/<target>/`` receives the packaged files plus ``manifest.json`` (the
equivalent of ``dvc.lock``: which stage keys produced it, and a checksum of every file), and
``<target>.tar.gz`` beside it with its ``.sha256``. The new bundle is assembled aside and swapped
in with renames, so a reader sees the old bundle or the new one, never a mix; a build that
failed never reaches this step.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tarfile
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from pipeline.hashing import DigestState, list_files, sha256_file
from pipeline.keys import tool_version
from pipeline.plan import Plan, node_name

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline.executor import NodeResult

MANIFEST = "manifest.json"


def publish(plan: Plan, results: dict[str, NodeResult], recipe_dir: Path,
            state: DigestState) -> dict[str, Path]:
    """Write the bundle of every target whose whole chain of stages succeeded."""
    recipe_dir.mkdir(parents=True, exist_ok=True)
    published = {}
    with FileLock(recipe_dir / ".publish.lock"):
        _recover(recipe_dir)
        for target in plan.targets:
            chain = [name for name, node in plan.nodes.items() if node.target in (None, target)]
            if all(results[name].status in ("ran", "cached") for name in chain):
                manifest = _manifest(plan, results, target, chain)
                package = results[node_name("package", target)]
                published[target] = _write_bundle(recipe_dir, target, package, manifest, state)
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


def _manifest(plan: Plan, results: dict[str, NodeResult], target: str,
              chain: list[str]) -> dict[str, Any]:
    package = results[node_name("package", target)]
    validate = results[node_name("validate", target)]
    export_meta = results["export"].entry.meta  # type: ignore[union-attr]
    return {
        "format": 1,
        "recipe": plan.recipe,
        "target": target,
        "target_config": plan.resolved["targets"][target],
        "execution_providers": plan.resolved["targets"][target]["execution_providers"],
        "signature": {k: package.entry.meta["summary"][k]  # type: ignore[union-attr]
                      for k in ("inputs", "outputs", "opset", "ir_version")},
        "onnxruntime_version": tool_version("onnxruntime"),
        "source_model_digest": export_meta["payload"]["sources"],
        "stages": {name: {"key": results[name].key,
                          "digest": results[name].entry.digest}  # type: ignore[union-attr]
                   for name in chain},
        "validation": validate.entry.meta["summary"],  # type: ignore[union-attr]
        "recipe_resolved": plan.resolved,
        "built_with": {"python": platform.python_version(), "machine": platform.machine(),
                       "edgekiln": tool_version("edgekiln")},
    }


def _write_bundle(recipe_dir: Path, target: str, package: NodeResult,
                  manifest: dict[str, Any], state: DigestState) -> Path:
    final = recipe_dir / target
    source = package.entry.out  # type: ignore[union-attr]
    manifest["files"] = package.entry.meta["files"]  # type: ignore[union-attr]
    if _unchanged(final, manifest, state):
        return final
    staging = recipe_dir / f".{target}.staging.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging, copy_function=shutil.copyfile)
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    _archive(staging, recipe_dir, target)
    _swap(staging, final)
    return final


def _unchanged(final: Path, manifest: dict[str, Any], state: DigestState) -> bool:
    """True when the bundle on disk is exactly what we would write (checked via the stat memo)."""
    try:
        existing = json.loads((final / MANIFEST).read_text())
        on_disk = {p.relative_to(final).as_posix(): state.file(p) for p in list_files(final)}
    except (OSError, ValueError):
        return False
    on_disk.pop(MANIFEST, None)
    archive = final.with_name(f"{final.name}.tar.gz")
    return (existing == json.loads(json.dumps(manifest)) and on_disk == manifest["files"]
            and archive.exists())


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
