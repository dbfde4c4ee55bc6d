"""Signed bundles: model-signing with a key pair made here; the loader verifies on the device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pipeline.bundle import device_loader as loader
from pipeline.bundle import signing
from pipeline.errors import EnvironmentProblem, InputError, RecipeError
from tests.fixtures.bundles import STATIC_INT8, build, bundle_of, copy_bundle, relist, sha256
from tests.fixtures.cli import run_cli

if TYPE_CHECKING:
    from pathlib import Path


def write_key_pair(folder: Path, name: str, curve: ec.EllipticCurve | None = None,
                   password: bytes | None = None) -> tuple[Path, Path]:
    """A fresh private key (PEM, PKCS#8) and its public key (PEM) in ``folder``."""
    key = ec.generate_private_key(curve or ec.SECP256R1())
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8, encryption))
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    private, public = write_key_pair(folder, "release")
    _, wrong = write_key_pair(folder, "someone-else")
    return {"private": private, "public": public, "wrong": wrong}


@pytest.fixture(scope="session")
def signed(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path]) -> Path:
    """The digits bundle published with the recipe's signing key."""
    artifacts = build(tmp_path_factory, "signed", f"package.signing.private_key={keys['private']}")
    return bundle_of(artifacts)


@pytest.fixture
def bundle(signed: Path, tmp_path: Path) -> Path:
    return copy_bundle(signed, tmp_path / "device" / "cpu")


def test_signature_covers_every_file_including_the_manifest(signed: Path,
                                                             keys: dict[str, Path]) -> None:
    manifest = json.loads((signed / "manifest.json").read_text())
    assert manifest["signing"]["signature_file"] == "model.sig"
    public_pem = keys["public"].read_bytes()
    assert manifest["signing"]["public_key_sha256"] == sha256(keys["public"])
    assert public_pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    statement = _signed_statement(signed / "model.sig")
    signed_files = {r["name"]: r["digest"] for r in statement["predicate"]["resources"]}
    expected = {**manifest["files"], "manifest.json": sha256(signed / "manifest.json")}
    assert signed_files == expected


def _signed_statement(path: Path) -> dict:
    import base64

    envelope = json.loads(path.read_text())["dsseEnvelope"]
    return json.loads(base64.b64decode(envelope["payload"]))


def test_right_key_verifies_and_wrong_key_fails(bundle: Path, keys: dict[str, Path]) -> None:
    session, _ = loader.load(bundle, public_key=keys["public"])
    assert session.get_providers()[0] == "CPUExecutionProvider"
    with pytest.raises(loader.BundleError, match=r"does not verify with .*someone-else.*Key "
                                                 r"mismatch"):
        loader.load(bundle, public_key=keys["wrong"])


def test_loader_cli_verifies_with_the_key_from_the_environment(bundle: Path,
                                                              keys: dict[str, Path]) -> None:
    env = {**os.environ, loader.PUBLIC_KEY_ENV: str(keys["public"])}
    proc = subprocess.run([sys.executable, "load_model.py", "--self-test"], cwd=bundle,
                          capture_output=True, text=True, timeout=120, check=False, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "(signature verified)" in proc.stdout
    assert proc.stdout.rstrip().endswith(": PASS")


def test_tampering_behind_a_rewritten_manifest_breaks_the_signature(
        bundle: Path, keys: dict[str, Path]) -> None:
    config = json.loads((bundle / "providers.json").read_text())
    config["providers"][0]["options"] = {"intra_op_num_threads": "64"}
    (bundle / "providers.json").write_text(json.dumps(config))
    relist(bundle, "providers.json")  # the checksums alone now agree with the change
    with pytest.warns(UserWarning, match="signature NOT verified"):
        loader.verify_bundle(bundle)
    with pytest.raises(loader.BundleError,
                       match=r"does not verify .*: \['manifest.json', 'providers.json'\] "
                             r"differ from what was signed"):
        loader.load(bundle, public_key=keys["public"])


def test_a_stripped_signature_is_refused_when_a_key_is_configured(
        bundle: Path, keys: dict[str, Path]) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["signing"] = None
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    (bundle / "model.sig").unlink()
    with pytest.raises(loader.BundleError, match=r"a public key is configured .* is not signed"):
        loader.load(bundle, public_key=keys["public"])


# Runs the loader with model_signing made unimportable, as on a device without it.
_NO_MODEL_SIGNING = """
import runpy, sys
sys.modules["model_signing"] = None
sys.argv = ["load_model.py", *sys.argv[1:]]
runpy.run_path("load_model.py", run_name="__main__")
"""


def test_device_without_model_signing(bundle: Path, keys: dict[str, Path]) -> None:
    env = {k: v for k, v in os.environ.items() if k != loader.PUBLIC_KEY_ENV}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", _NO_MODEL_SIGNING, *args], cwd=bundle,
                              capture_output=True, text=True, timeout=120, check=False, env=env)

    unverified = run()
    assert unverified.returncode == 0, unverified.stderr
    assert "signature NOT verified" in unverified.stderr
    verified = run("--public-key", str(keys["public"]))
    assert verified.returncode == 3
    assert "verifying the signature needs model-signing" in verified.stderr


def test_unchanged_rebuild_keeps_the_signature(tmp_path_factory: pytest.TempPathFactory,
                                               signed: Path, keys: dict[str, Path]) -> None:
    """ECDSA signatures differ on every signing, so equal bytes prove nothing was re-signed."""
    before = (signed / "model.sig").read_bytes(), (signed / "model.sig").stat().st_mtime_ns
    result = run_cli("recipe=digits_torch", f"run.artifacts_dir={signed.parent.parent}",
                     f"run.cache_dir={tmp_path_factory.getbasetemp() / 'bundle-cache'}",
                     "run.progress=false", f"package.signing.private_key={keys['private']}",
                     *STATIC_INT8)
    assert result.code == 0, result.stderr
    after = (signed / "model.sig").read_bytes(), (signed / "model.sig").stat().st_mtime_ns
    assert after == before


def test_key_from_the_environment_with_its_password(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    private, public = write_key_pair(tmp_path, "ci", password=b"s3cret")
    monkeypatch.setenv(signing.KEY_ENV, str(private))
    monkeypatch.delenv(signing.PASSWORD_ENV, raising=False)
    with pytest.raises(InputError, match=r"\$EDGEKILN_SIGNING_KEY: .* cannot be opened"):
        signing.signing_key({})
    monkeypatch.setenv("CI_KEY_PASSWORD", "s3cret")
    key = signing.signing_key({"signing": {"password_env": "CI_KEY_PASSWORD"}})
    assert key is not None
    assert key.source == "$EDGEKILN_SIGNING_KEY"
    assert key.public_key_sha256 == sha256(public)
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"weights")
    signing.sign(folder, key)
    assert _signed_statement(folder / "model.sig")["predicate"]["resources"][0]["name"] == \
        "model.onnx"


def test_bad_signing_configuration_is_reported(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(signing.KEY_ENV, raising=False)
    assert signing.signing_key({"signing": {"private_key": None}}) is None
    missing = {"signing": {"private_key": str(tmp_path / "nope.pem")}}
    with pytest.raises(RecipeError, match=r"package\.signing\.private_key names the signing key"):
        signing.signing_key(missing)
    koblitz, _ = write_key_pair(tmp_path, "k1", curve=ec.SECP256K1())
    with pytest.raises(InputError, match="is a secp256k1 key; model-signing signs with"):
        signing.signing_key({"signing": {"private_key": str(koblitz)}})
    unset = {"signing": {"private_key": str(koblitz), "password_env": "NOPE_PW"}}
    monkeypatch.delenv("NOPE_PW", raising=False)
    with pytest.raises(EnvironmentProblem, match=r"'NOPE_PW' .* it is not set"):
        signing.signing_key(unset)
