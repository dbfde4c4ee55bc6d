"""Verify this bundle, then open its model with ONNX Runtime on the device.

    python load_model.py [BUNDLE_DIR] [--self-test] [--public-key PEM] [--target NAME]

or from Python: ``session, signature = load(bundle_dir)``. Needs only Python 3.10+, onnxruntime
and numpy, so this one file can be copied onto a device (and model-signing, but only when a
public key is configured). Nothing is loaded from a bundle whose files differ from its
manifest.json in any way: a changed byte, an extra, missing or renamed file, or a symlink. With
a public key (``--public-key`` or $EDGEKILN_PUBLIC_KEY) the bundle's signature, which covers
manifest.json too, must verify: without one, the checksums catch damage but not a forger who
also rewrote the manifest. ``--self-test`` runs the samples validation recorded and compares the
outputs within validation's tolerances. Exit codes: 0 ok (or self-test skipped: no samples),
1 self-test mismatch, 2 bundle refused, 3 something this device lacks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
MANIFEST = "manifest.json"
SIGNATURE_FILE = "model.sig"
FORMATS = (2, 3)  # manifest formats this loader reads
PUBLIC_KEY_ENV = "EDGEKILN_PUBLIC_KEY"
CPU = "CPUExecutionProvider"
LEVELS = {"disable_all": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
          "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


class BundleError(Exception):
    """The bundle is not what was published (or not for this device): nothing was loaded."""
    exit_code, label = 2, "bundle refused"


class SelfTestError(Exception):
    """The model's outputs on the bundled samples are outside validation's tolerances."""
    exit_code, label = 1, "self-test failed"


class DeviceError(Exception):
    """This device lacks what the bundle needs: an execution provider, model-signing, a key."""
    exit_code, label = 3, "device"


class CheckedSession:
    """An InferenceSession whose ``run`` first checks the feed against the bundle's signature."""

    def __init__(self, session: ort.InferenceSession, signature: dict[str, Any]) -> None:
        self.session, self.signature = session, signature

    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray],
            run_options: Any = None) -> list[Any]:
        check_feed(feed, self.signature)
        return self.session.run(output_names, feed, run_options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


def load(bundle_dir: str | Path = HERE, public_key: str | Path | None = None, *,
         target: str | None = None) -> tuple[CheckedSession, dict[str, Any]]:
    """Verify the bundle (checksums, manifest, signature; the key defaults to
    $EDGEKILN_PUBLIC_KEY), then open its model. Raises BundleError, DeviceError."""
    session, signature, _ = _open(Path(bundle_dir), public_key, target)
    return session, signature


def _open(folder: Path, public_key: str | Path | None,
          target: str | None) -> tuple[CheckedSession, dict[str, Any], dict[str, Any]]:
    # a published bundle's path is a symlink to its live version: resolved once, the files
    # checked are the files loaded even if a newer version goes live meanwhile
    folder = folder.resolve()
    manifest = verify_bundle(folder, public_key, target)
    signature = _read_json(folder / "signature.json")
    return CheckedSession(create_session(folder, manifest), signature), signature, manifest


def verify_bundle(folder: Path, public_key: str | Path | None = None,
                  target: str | None = None) -> dict[str, Any]:
    """Check every file against manifest.json, and the signature; returns the manifest."""
    files, dirs = _scan(folder)
    manifest = _read_manifest(folder, target)
    _check_listing(folder, files, dirs, manifest)
    _check_digests(folder, manifest["files"])
    _check_signature(folder, manifest, _public_key(public_key))
    return manifest


def _public_key(given: str | Path | None) -> Path | None:
    key = given or os.environ.get(PUBLIC_KEY_ENV) or None
    return Path(key) if key else None


def _scan(folder: Path) -> tuple[set[str], set[str]]:
    """Relative paths of the bundle's files and folders; refuses symlinks and special files."""
    if not folder.is_dir():
        raise BundleError(f"'{folder}' is not a folder")
    files, dirs, pending = set(), set(), [""]
    while pending:
        rel = pending.pop()
        with os.scandir(folder / rel) as entries:
            for entry in entries:
                name = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_symlink():
                    raise BundleError(f"'{name}' in {folder} is a symlink; a bundle holds "
                                      "only regular files (a link can point anywhere)")
                if entry.is_dir(follow_symlinks=False):
                    dirs.add(name)
                    pending.append(name)
                elif entry.is_file(follow_symlinks=False):
                    files.add(name)
                else:
                    raise BundleError(f"'{name}' in {folder} is not a regular file")
    return files, dirs


def _read_manifest(folder: Path, target: str | None) -> dict[str, Any]:
    manifest = _read_json(folder / MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("format") not in FORMATS:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise BundleError(f"{folder / MANIFEST} has format {found!r}; this loader reads "
                          f"format {FORMATS}: use the load_model.py shipped in that bundle")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise BundleError(f"{folder / MANIFEST} has no valid 'files' checksum table")
    if target is not None and manifest.get("target") != target:
        raise BundleError(f"the bundle in {folder} was built for target "
                          f"'{manifest.get('target')}', not '{target}'")
    return manifest


def _check_listing(folder: Path, files: set[str], dirs: set[str],
                   manifest: dict[str, Any]) -> None:
    expected = set(manifest["files"]) | {MANIFEST}
    if manifest.get("signing"):
        expected.add(SIGNATURE_FILE)
    parents = {"/".join(name.split("/")[:i]) for name in expected
               for i in range(1, name.count("/") + 1)}
    missing = sorted(expected - files)
    extra = sorted(files - expected) + sorted(f"{d}/" for d in dirs - parents)
    if not missing and not extra:
        return
    problems = []
    if missing:
        problems.append(f"missing {missing}")
    if extra:
        problems.append(f"not in the manifest {extra}")
    hint = " (renamed?)" if missing and extra else ""
    if any(name.startswith("__pycache__") for name in extra):
        hint += ("; __pycache__ appears when load_model is imported from inside the bundle: "
                 "delete it and import with python -B")
    raise BundleError(f"the files of {folder} differ from its manifest: "
                      f"{'; '.join(problems)}{hint}")


def _check_digests(folder: Path, expected: dict[str, str]) -> None:
    changed = [name for name, digest in sorted(expected.items())
               if _sha256(folder / name) != digest]
    if changed:
        raise BundleError(f"{changed} in {folder} changed since publishing (sha256 differs "
                          "from manifest.json)")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:  # hashlib.file_digest needs Python 3.11; devices may not
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_signature(folder: Path, manifest: dict[str, Any], public_key: Path | None) -> None:
    info = manifest.get("signing")
    if public_key is None:
        if info:
            warnings.warn(f"the bundle is signed (key sha256 {info.get('public_key_sha256')}) "
                          f"but no public key is configured (--public-key or ${PUBLIC_KEY_ENV})"
                          ": signature NOT verified", stacklevel=3)
        return
    if not info:
        raise BundleError(f"a public key is configured ({public_key}) but the bundle in "
                          f"{folder} is not signed")
    if not public_key.is_file():
        raise DeviceError(f"public key '{public_key}' does not exist")
    try:
        import model_signing
    except ImportError as exc:
        raise DeviceError(f"verifying the signature needs model-signing ({exc}): "
                          "pip install 'model-signing>=1.1' pyopenssl") from None
    hashing = model_signing.hashing.Config().set_ignored_paths(
        paths=[SIGNATURE_FILE], ignore_git_paths=False)
    try:
        (model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public_key)
         .set_hashing_config(hashing).verify(folder, folder / SIGNATURE_FILE))
    except Exception as exc:  # the library raises ValueError, InvalidSignature, ...
        # the library lists the files in a repr()'d list, hence the optional backslashes
        changed = re.findall(r"Hash mismatch for \\?'([^'\\]+)\\?'", str(exc))
        why = f"{changed} differ from what was signed" if changed else f"{exc!r}"
        raise BundleError(f"the signature of {folder} does not verify with {public_key}: "
                          f"{why}") from None


def create_session(folder: Path, manifest: dict[str, Any]) -> ort.InferenceSession:
    """Open the model on the bundle's providers this device has, in their priority order."""
    config = _read_json(folder / "providers.json")
    if config.get("target") != manifest.get("target"):
        raise BundleError(f"providers.json is for target '{config.get('target')}', the manifest "
                          f"for '{manifest.get('target')}'")
    _check_runtime(manifest)
    available = ort.get_available_providers()
    chosen = [(p["name"], _strings(p.get("options") or {})) for p in config["providers"]
              if p["name"] in available]
    missing = [p["name"] for p in config["providers"] if p["name"] not in available]
    if missing:
        warnings.warn(f"providers not available here, skipped: {missing}", stacklevel=3)
    options = _session_options(config.get("session") or {})
    # the policy is what validation measured: CPU as last resort, or the target EP only
    if config.get("cpu_fallback", True):
        if CPU not in [name for name, _ in chosen]:
            chosen.append((CPU, {}))
    elif CPU not in [p["name"] for p in config["providers"]]:
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    if not chosen:
        raise DeviceError(f"none of the bundle's providers {missing} is available here "
                          f"({available}) and its policy forbids falling back to CPU")
    model = folder / _model_name(folder, config, manifest)
    return ort.InferenceSession(str(model), sess_options=options,
                                providers=[n for n, _ in chosen],
                                provider_options=[o for _, o in chosen])


def _session_options(spec: dict[str, Any]) -> ort.SessionOptions:
    """The SessionOptions the target's EP documentation asks for (providers.json "session")."""
    options = ort.SessionOptions()
    level = spec.get("graph_optimization_level")
    if level:
        if level not in LEVELS:
            raise BundleError(f"providers.json: unknown graph_optimization_level '{level}'")
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    if spec.get("intra_op_num_threads"):
        options.intra_op_num_threads = int(spec["intra_op_num_threads"])
    for key, value in (spec.get("config") or {}).items():
        options.add_session_config_entry(str(key), str(value))
    return options


def _strings(options: dict[str, Any]) -> dict[str, str]:
    # onnxruntime takes provider options as strings, and a YAML true would become "True"
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in options.items()}


def _model_name(folder: Path, config: dict[str, Any], manifest: dict[str, Any]) -> str:
    """The model file the target loads: ORT format when its runtime needs it, else ONNX."""
    wants_ort = ((manifest.get("target_config") or {}).get("requires") or {}).get("format")
    name = config.get("model") or ("model.ort" if wants_ort == "ort" else "model.onnx")
    if name not in manifest["files"] or not (folder / name).is_file():
        raise BundleError(f"the model file '{name}' is not among the bundle's files")
    return name


def _check_runtime(manifest: dict[str, Any]) -> None:
    validated = (manifest.get("runtime") or {}).get("validated_with") or {}
    if validated.get("version") not in (None, ort.__version__):
        warnings.warn(f"the bundle was validated with {validated.get('distribution')} "
                      f"{validated['version']}; this device runs onnxruntime {ort.__version__} "
                      "(see requirements.txt)", stacklevel=4)


def check_feed(feed: dict[str, np.ndarray], signature: dict[str, Any]) -> None:
    """Raise ValueError unless ``feed`` has the signature's input names, dtypes and fixed dims."""
    expected = {spec["name"]: spec for spec in signature["inputs"]}
    if set(feed) != set(expected):
        raise ValueError(f"feed has inputs {sorted(feed)}, the model takes {sorted(expected)}")
    for name, spec in expected.items():
        array, dims = np.asarray(feed[name]), spec["shape"]
        if array.dtype != np.dtype(spec["dtype"]):
            raise ValueError(f"input '{name}' must be {spec['dtype']}, got {array.dtype}")
        # string dims are dynamic (batch, sequence) and accept any size; None is unknown rank
        if dims is not None and (array.ndim != len(dims) or any(
                isinstance(d, int) and d != n for d, n in zip(dims, array.shape, strict=True))):
            raise ValueError(f"input '{name}' must have shape {dims}, got {list(array.shape)}")


def random_feed(signature: dict[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    """One sample per input (dynamic dims set to 1), drawn within the input's value range."""
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in signature["inputs"]:
        shape = [d if isinstance(d, int) else 1 for d in spec["shape"]]
        low, high = spec.get("low", 0.0), spec.get("high", 1.0)
        feed[spec["name"]] = rng.uniform(low, high, size=shape).astype(spec["dtype"])
    return feed


def self_test(session: CheckedSession, folder: Path, manifest: dict[str, Any]) -> str:
    """Run the bundled samples and compare with the outputs validation recorded for them."""
    info = manifest.get("samples")
    if not info:
        return "self-test skipped: this bundle has no samples (nothing to compare with)"
    with np.load(folder / info["file"], allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    try:  # each sample is one run's feed and its outputs
        count = int(info["count"])
        inputs = {name: _per_sample(arrays, key, count) for name, key in info["inputs"].items()}
        expected = {name: _per_sample(arrays, key, count)
                    for name, key in info["outputs"].items()}
        runs = [session.run(list(expected), {n: v[i] for n, v in inputs.items()})
                for i in range(count)]
    except (KeyError, IndexError, ValueError) as exc:
        raise BundleError(f"{info['file']} does not hold the samples manifest.json lists, or "
                          f"they do not fit the model's signature: {exc!r}") from None
    lines, failed = [], []
    for j, (name, wants) in enumerate(expected.items()):
        line, bad = _compare([run[j] for run in runs], wants, info)
        lines.append(f"{name}: {line}")
        failed += [name] if bad else []
    report = f"self-test on {len(runs)} samples: " + "; ".join(lines)
    if failed:
        raise SelfTestError(report)
    return report + ": PASS"


def _per_sample(arrays: dict[str, np.ndarray], key: str | list[str],
                count: int) -> list[np.ndarray]:
    """One array per sample: axis 0 of the array ``key`` names, or the arrays of a key list
    (values whose shape varies between samples, such as sequences of different lengths)."""
    if isinstance(key, list):
        return [arrays[k] for k in key]
    stacked = arrays[key]
    if len(stacked) < count:
        raise IndexError(f"'{key}' holds {len(stacked)} samples, not {count}")
    return [stacked[i] for i in range(count)]


def _compare(got: list[np.ndarray], want: list[np.ndarray],
             info: dict[str, Any]) -> tuple[str, int]:
    """(summary line, values outside the tolerances) of one output over every sample."""
    exact = not np.issubdtype(want[0].dtype, np.floating)  # labels, indices: no tolerance
    atol, rtol = (0.0, 0.0) if exact else (float(info["atol"]), float(info["rtol"]))
    worst, bad, total = 0.0, 0, 0
    for actual, expected in zip(got, want, strict=True):
        diff = (np.abs(actual.astype(np.float64) - expected) if actual.shape == expected.shape
                else np.array([np.inf]))
        worst = float(np.max([worst, diff.max()]))  # np.max, unlike max(), keeps a NaN
        # written as "passes when" so that a NaN output fails
        bad += int(np.count_nonzero(~(diff <= atol + rtol * np.abs(expected.astype(np.float64)))))
        total += expected.size
    line = (f"max abs diff {worst:.3g}, {bad} of {total} values outside atol {atol:.3g} + "
            f"rtol {rtol:g}")
    return line, bad


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path} is missing or unreadable: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("bundle", nargs="?", default=str(HERE), help="bundle folder")
    parser.add_argument("--self-test", action="store_true", help="run the bundled samples")
    parser.add_argument("--public-key", help=f"PEM public key (default ${PUBLIC_KEY_ENV})")
    parser.add_argument("--target", help="refuse a bundle built for another target")
    args = parser.parse_args(argv)
    warnings.formatwarning = lambda message, *_, **__: f"load_model: warning: {message}\n"
    folder = Path(args.bundle)
    try:
        session, signature, manifest = _open(folder, args.public_key, args.target)
        signed = ("signature verified" if _public_key(args.public_key)
                  else "signature NOT checked" if manifest.get("signing") else "unsigned")
        print(f"{folder}: {len(manifest['files'])} files match manifest.json ({signed}); "
              f"target '{manifest['target']}' on {session.get_providers()[0]}")
        if args.self_test:
            print(self_test(session, folder, manifest))
        else:
            outputs = session.run(None, random_feed(signature))
            shapes = [list(value.shape) for value in outputs]
            print(f"smoke run on random inputs: output shapes {shapes}")
    except (BundleError, SelfTestError, DeviceError) as exc:
        print(f"load_model: {exc.label}: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
