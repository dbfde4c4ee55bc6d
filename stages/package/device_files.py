"""The files a bundle carries from its validation: samples for the self-test, and the pins of
the onnxruntime the device must install (``requirements.txt``)."""

from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING, Any

from pipeline.keys import tool_version

if TYPE_CHECKING:
    from pathlib import Path

SAMPLES = "samples.npz"
REQUIREMENTS = "requirements.txt"


def from_report(report_dir: Path | None, out: Path, target: str | None,
                target_config: dict[str, Any]) -> dict[str, Any]:
    """Copy validate's samples into ``out``, write requirements.txt; returns manifest fields."""
    validation: dict[str, Any] = {}
    if report_dir is not None:
        validation = json.loads((report_dir / "report.json").read_text())
    pins = runtime(target_config, validation)
    (out / REQUIREMENTS).write_text(requirements(target, pins))
    fields: dict[str, Any] = {"runtime": pins, "samples": None}
    if report_dir is not None and (report_dir / SAMPLES).is_file():
        shutil.copyfile(report_dir / SAMPLES, out / SAMPLES)
        fields["samples"] = samples_entry(validation)
    return fields


def runtime(target_config: dict[str, Any], validation: dict[str, Any]) -> dict[str, Any]:
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


def requirements(target: str | None, runtime: dict[str, Any]) -> str:
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
    # whether the bundle is signed is the publisher's business; verifying needs this either way
    lines.append("# to verify a signature (load_model.py --public-key): model-signing>=1.1")
    return "\n".join(lines) + "\n"


def samples_entry(validation: dict[str, Any]) -> dict[str, Any]:
    """Where the self-test finds its samples and the tolerances validate set for them."""
    info = validation.get("samples")
    info = info if isinstance(info, dict) else {}
    return {"file": SAMPLES, **info}
