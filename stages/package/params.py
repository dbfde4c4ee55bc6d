"""Settings of the ``package`` kind, and the bundle signing the publisher reads from them."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.bounds import at_least


@dataclass
class SigningParams:
    """Sign published bundles (OpenSSF model-signing, elliptic-curve key pair)."""

    # PEM private key (P-256/384/521); null = $EDGEKILN_SIGNING_KEY when set, else unsigned
    private_key: str | None = None
    # NAME of the environment variable holding the key's password; a password never goes in a
    # recipe (null = $EDGEKILN_SIGNING_PASSWORD when set)
    password_env: str | None = None


@dataclass
class PackageParams:
    signing: SigningParams = field(default_factory=SigningParams)
    # gate: most nodes the target's accelerator EPs leave to the CPU EP (coverage.json); null = off
    max_cpu_fallback_nodes: int | None = at_least(0, None)
