"""The device-side loader: it refuses any tampered bundle, checks feeds, and self-tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from pipeline.bundle import device_loader as loader
from tests.fixtures.bundles import build, bundle_of, copy_bundle, relist

if TYPE_CHECKING:
    from collections.abc import Callable


@pytest.fixture(scope="session")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bundle_of(build(tmp_path_factory, "unsigned"))


@pytest.fixture
def bundle(published: Path, tmp_path: Path) -> Path:
    """A private copy of the published bundle."""
    return copy_bundle(published, tmp_path / "device" / "cpu")


def run_loader(bundle: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python load_model.py`` run from inside the bundle, as on a device."""
    return subprocess.run([sys.executable, "load_model.py", *args], cwd=bundle,
                          capture_output=True, text=True, timeout=120, check=False)


def test_loader_verifies_and_self_tests_a_copy_of_the_bundle(bundle: Path) -> None:
    proc = run_loader(bundle, "--self-test")
    assert proc.returncode == 0, proc.stderr
    count = len(json.loads((bundle / "manifest.json").read_text())["files"])
    assert f"{count} files match manifest.json (unsigned)" in proc.stdout
    assert "on CPUExecutionProvider" in proc.stdout
    samples = json.loads((bundle / "manifest.json").read_text())["samples"]
    assert f"self-test on {samples['count']} samples: logits: max abs diff" in proc.stdout
    assert proc.stdout.rstrip().endswith(": PASS")


def test_bundled_loader_is_the_template_verbatim(published: Path) -> None:
    assert (published / "load_model.py").read_bytes() == Path(loader.__file__).read_bytes()


def _flip_a_byte(bundle: Path) -> None:
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / "model.onnx").write_bytes(bytes(data))


def _add_a_file(bundle: Path) -> None:
    (bundle / "extra.py").write_text("print('not published')\n")


def _delete_a_file(bundle: Path) -> None:
    (bundle / "providers.json").unlink()


def _rename_a_file(bundle: Path) -> None:
    (bundle / "signature.json").rename(bundle / "signature.json.bak")


def _symlink_a_file(bundle: Path) -> None:
    # the same bytes, elsewhere: only the link itself is wrong
    outside = bundle.parent / "model-elsewhere.onnx"
    (bundle / "model.onnx").rename(outside)
    (bundle / "model.onnx").symlink_to(outside)


TAMPERING = {
    "flipped byte": (_flip_a_byte, r"\['model.onnx'\] .* changed since publishing"),
    "extra file": (_add_a_file, r"not in the manifest \['extra.py'\]"),
    "missing file": (_delete_a_file, r"missing \['providers.json'\]"),
    "renamed file": (_rename_a_file,
                     r"missing \['signature.json'\].*not in the manifest "
                     r"\['signature.json.bak'\] \(renamed\?\)"),
    "symlink": (_symlink_a_file, r"'model.onnx' .* is a symlink"),
}


@pytest.mark.parametrize("tamper", TAMPERING, ids=list(TAMPERING))
def test_tampered_bundle_is_refused(bundle: Path, tamper: str) -> None:
    change, message = TAMPERING[tamper]
    loader.verify_bundle(bundle)  # intact before
    change(bundle)
    with pytest.raises(loader.BundleError, match=message):
        loader.load(bundle)


def test_refusal_exits_non_zero_with_a_clear_message(bundle: Path) -> None:
    _flip_a_byte(bundle)
    proc = run_loader(bundle)
    assert proc.returncode == 2
    assert "load_model: bundle refused: ['model.onnx']" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_self_test_fails_outside_the_tolerances(bundle: Path) -> None:
    samples = bundle / "samples.npz"
    with np.load(samples) as data:
        arrays = {key: data[key] for key in data.files}
    key = json.loads((bundle / "manifest.json").read_text())["samples"]["outputs"]["logits"]
    arrays[key] = arrays[key] + 0.5  # what a device whose EP computes wrongly would see
    np.savez(samples, **arrays)
    relist(bundle, "samples.npz")
    proc = run_loader(bundle, "--self-test")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "self-test failed" in proc.stderr
    assert "max abs diff 0.5" in proc.stderr


def test_self_test_without_samples_is_skipped_cleanly(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["files"]["samples.npz"]
    manifest["samples"] = None
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    (bundle / "samples.npz").unlink()
    proc = run_loader(bundle, "--self-test")
    assert proc.returncode == 0, proc.stderr
    assert "self-test skipped: this bundle has no samples" in proc.stdout


def _edit_manifest(bundle: Path, edit: Callable[[dict], None]) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    edit(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_manifest_format_and_target_are_checked(bundle: Path) -> None:
    with pytest.raises(loader.BundleError, match="built for target 'cpu', not 'jetson_orin'"):
        loader.load(bundle, target="jetson_orin")
    _edit_manifest(bundle, lambda m: m.update(format=1))
    with pytest.raises(loader.BundleError, match="has format 1; this loader reads format"):
        loader.load(bundle)


def test_providers_for_another_target_are_refused(bundle: Path) -> None:
    _edit_manifest(bundle, lambda m: m.update(target="jetson_orin"))
    with pytest.raises(loader.BundleError, match=r"providers\.json is for target 'cpu'"):
        loader.load(bundle)


def test_session_checks_feeds_against_the_signature(bundle: Path) -> None:
    session, signature = loader.load(bundle)
    good = np.zeros((3, 1, 8, 8), np.float32)  # any batch size: the batch dim is dynamic
    assert session.run(None, {"pixels": good})[0].shape == (3, 10)
    bad_feeds = {
        "must be float32, got float64": {"pixels": good.astype(np.float64)},
        r"must have shape \['batch', 1, 8, 8\], got \[3, 1, 8, 7\]": {"pixels": good[..., :7]},
        r"feed has inputs \['image'\], the model takes \['pixels'\]": {"image": good},
    }
    for message, feed in bad_feeds.items():
        with pytest.raises(ValueError, match=message):
            session.run(None, feed)
    assert signature["inputs"][0]["name"] == "pixels"


def test_missing_provider_warns_and_falls_back_to_cpu(bundle: Path) -> None:
    config = json.loads((bundle / "providers.json").read_text())
    config["providers"].insert(0, {"name": "TensorrtExecutionProvider",
                                   "options": {"trt_fp16_enable": True}})
    (bundle / "providers.json").write_text(json.dumps(config))
    relist(bundle, "providers.json")
    with pytest.warns(UserWarning, match=r"not available here, skipped: \['Tensorrt"):
        session, _ = loader.load(bundle)
    assert session.get_providers() == ["CPUExecutionProvider"]


def test_unsigned_bundle_is_refused_when_the_environment_sets_a_key(bundle: Path,
                                                                   tmp_path: Path) -> None:
    key = tmp_path / "key.pub"
    key.write_text("not used: the unsigned bundle is refused first\n")
    proc = subprocess.run([sys.executable, "load_model.py"], cwd=bundle, capture_output=True,
                          text=True, timeout=120, check=False,
                          env={**os.environ, loader.PUBLIC_KEY_ENV: str(key)})
    assert proc.returncode == 2
    assert "a public key is configured" in proc.stderr
    assert "is not signed" in proc.stderr


def test_session_settings_of_the_target_are_applied(bundle: Path) -> None:
    import onnxruntime as ort

    config = json.loads((bundle / "providers.json").read_text())
    config["session"] = {"graph_optimization_level": "disable_all", "intra_op_num_threads": 1,
                         "config": {"session.intra_op.allow_spinning": "0"}}
    (bundle / "providers.json").write_text(json.dumps(config))
    relist(bundle, "providers.json")
    session, _ = loader.load(bundle)
    options = session.get_session_options()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
