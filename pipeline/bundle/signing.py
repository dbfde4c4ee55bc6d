"""Sign published bundles with the OpenSSF model-signing library and an elliptic-curve key.

The private key comes from the recipe (``package.signing.private_key``) or, when the recipe
names none, from ``$EDGEKILN_SIGNING_KEY``. The signature, ``model.sig`` in the bundle, is a
Sigstore bundle holding a DSSE-signed in-toto statement that lists the sha256 of every file of
the bundle, manifest.json included. ``load_model.py --public-key`` checks it on the device.

model_signing (and sigstore behind it) takes about 0.3 s to import, so it is imported only when
a bundle is actually (re)signed; an unchanged bundle is recognised from the key's fingerprint
in manifest.json, which needs only ``cryptography``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import EnvironmentProblem, InputError, RecipeError, StageError
from pipeline.keys import tool_version

SIGNATURE_FILE = "model.sig"
KEY_ENV = "EDGEKILN_SIGNING_KEY"
PASSWORD_ENV = "EDGEKILN_SIGNING_PASSWORD"  # noqa: S105 -- a variable name
RECIPE_KEY = "package.signing.private_key"
# the curves model-signing accepts (those of Sigstore's protobuf specs)
CURVES = ("secp256r1", "secp384r1", "secp521r1")
INSTALL_HINT = "pip install '.[sign]' (or: pip install 'model-signing>=1.1,<1.2' pyopenssl)"


@dataclass(frozen=True)
class SigningKey:
    """A private key that opened, with where it came from (for messages) and its fingerprint."""

    path: Path
    source: str
    public_key_sha256: str
    password: bytes | None = field(default=None, repr=False)

    def manifest_entry(self) -> dict[str, Any]:
        return {
            "method": "model-signing, elliptic-curve key pair",
            "library": f"model-signing {tool_version('model-signing')}",
            "signature_file": SIGNATURE_FILE,
            # what model-signing records as the key hint: sha256 of the public key's SPKI PEM
            "public_key_sha256": self.public_key_sha256,
        }


def signing_key(settings: dict[str, Any] | None) -> SigningKey | None:
    """The key the publishing stage's ``signing`` params or the environment configure, opened
    and checked; None when unsigned."""
    cfg = (settings or {}).get("signing") or {}
    path, source = cfg.get("private_key"), RECIPE_KEY
    if not path:
        path, source = os.environ.get(KEY_ENV), f"${KEY_ENV}"
    if not path:
        return None
    key_path = Path(path)
    if not key_path.is_file():
        error = RecipeError if source == RECIPE_KEY else EnvironmentProblem
        raise error(f"{source} names the signing key '{path}', but there is no such file "
                    f"(looked in {Path.cwd()}); give the path of a PEM elliptic-curve private "
                    "key, or unset it to publish unsigned bundles.")
    if tool_version("model-signing") == "absent":
        raise EnvironmentProblem(f"{source} asks for signed bundles, but the model-signing "
                                 f"library is not installed: {INSTALL_HINT}.")
    password = _password(cfg.get("password_env"))
    return SigningKey(key_path, source, _fingerprint(key_path, password, source), password)


def _password(variable: str | None) -> bytes | None:
    if variable:
        if variable not in os.environ:
            raise EnvironmentProblem(
                f"package.signing.password_env names the environment variable '{variable}' "
                "for the signing key's password, but it is not set.")
        return os.environ[variable].encode()
    value = os.environ.get(PASSWORD_ENV)
    return value.encode() if value else None


def _fingerprint(path: Path, password: bytes | None, source: str) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password)
    except (ValueError, TypeError) as exc:
        raise InputError(
            f"{source}: '{path}' cannot be opened as a PEM private key ({exc}). An encrypted "
            "key needs its password in the variable package.signing.password_env names (or "
            f"${PASSWORD_ENV}); an unencrypted key must not be given one.") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in CURVES:
        kind = key.curve.name if isinstance(key, ec.EllipticCurvePrivateKey) else type(key).__name__
        raise InputError(f"{source}: '{path}' is a {kind} key; model-signing signs with an "
                         f"elliptic-curve key on one of {', '.join(CURVES)}.")
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def sign(bundle_dir: Path, key: SigningKey) -> Path:
    """Write ``bundle_dir/model.sig`` over every file of ``bundle_dir`` (but itself)."""
    try:
        import model_signing
    except ImportError as exc:
        # model-signing 1.1 imports pyOpenSSL without declaring it
        raise EnvironmentProblem(f"{key.source} asks for signed bundles, but model_signing "
                                 f"does not import ({exc}): {INSTALL_HINT}.") from None
    hashing = model_signing.hashing.Config().set_ignored_paths(
        paths=[SIGNATURE_FILE], ignore_git_paths=False)
    target = bundle_dir / SIGNATURE_FILE
    try:
        (model_signing.signing.Config()
         .use_elliptic_key_signer(private_key=key.path, password=key.password)  # type: ignore[arg-type]
         .set_hashing_config(hashing)
         .sign(bundle_dir, target))
    except Exception as exc:  # the library raises plain ValueError/OSError/TypeError
        raise StageError(f"signing the bundle of '{bundle_dir.name}' with {key.source} "
                         f"('{key.path}') failed: {type(exc).__name__}: {exc}") from exc
    return target
