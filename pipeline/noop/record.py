"""Where a build's no-op record lives, what it watches, and the check that uses it.

The record of a command line is ``<artifacts>/.noop/<digest>.json``, the digest taken over the
arguments, the working directory, the interpreter and the environment variables that can change
a build, so any of those differing is simply another record (a miss). ``<artifacts>`` is what
the command line says (``run.artifacts_dir=``) or the default: a recipe that moves its
artifacts elsewhere gets no record and always takes the full path.

This module runs before anything heavy is imported: the standard library and
``pipeline.hashing`` only.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
from typing import Any

from pipeline.noop import watch

FORMAT = 1  # bump when the record's layout changes: older records then miss
DISABLE = "EDGEKILN_NO_FAST_PATH"  # "1": always compose and plan
# environment variables read by edgekiln or the libraries its stages run
ENV_PREFIXES = ("EDGEKILN_", "PIPELINE_", "HYDRA_", "RAY_", "AWS_", "OMP_", "ORT_", "HF_",
                "TRANSFORMERS_", "TF_", "TORCH", "CUDA", "PYTHON", "MKL_", "OPENBLAS_")
ENV_NAMES = ("PATH", "VIRTUAL_ENV", "CONDA_PREFIX", "LD_LIBRARY_PATH")
# arguments after which the command is not one plain build
NOT_A_BUILD = ("run.dry_run=", "run.force=", "+run.force=", "hydra.", "+hydra.")
KEPT = 16  # records kept per artifacts dir (one per command line)
# the folder that holds pipeline/, stages/ and the bundled recipes/ (cli.BUNDLED_RECIPES)
TREE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))


def eligible(argv: list[str]) -> bool:
    """A single build of one recipe, with nothing forced and no Hydra option but the config
    dir (``--verbose`` changes only how errors print)."""
    if os.environ.get(DISABLE) == "1" or argv[:1] == ["nightly"]:
        return False
    args = _without_config_dirs([a for a in argv if a != "--verbose"])
    if args is None or sum(a.startswith("recipe=") for a in args) != 1:
        return False
    return not any(a.startswith("-") or a.startswith(NOT_A_BUILD) for a in args)


def _without_config_dirs(argv: list[str]) -> list[str] | None:
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--config-dir", "-cd"):
            skip = True
        elif not arg.startswith("--config-dir="):
            args.append(arg)
    return None if skip else args


def config_dirs(argv: list[str]) -> list[str]:
    dirs = [b for a, b in itertools.pairwise(argv) if a in ("--config-dir", "-cd")]
    dirs += [a.split("=", 1)[1] for a in argv if a.startswith("--config-dir=")]
    return [os.path.abspath(d) for d in dirs]


def artifacts_dir(argv: list[str]) -> str:
    values = [a.split("=", 1)[1] for a in argv if a.startswith("run.artifacts_dir=")]
    return os.path.abspath(values[-1] if values else "artifacts")


def context(argv: list[str]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES) or k in ENV_NAMES}
    return {"format": FORMAT, "argv": argv, "cwd": os.getcwd(), "python": sys.executable,
            "version": sys.version, "env": env}


def record_path(argv: list[str]) -> str:
    digest = hashlib.sha256(json.dumps(context(argv), sort_keys=True).encode()).hexdigest()
    return os.path.join(artifacts_dir(argv), ".noop", f"{digest[:32]}.json")


def watched_inputs(argv: list[str]) -> list[str]:
    """What composition and planning read: the recipe search path (in cli's order) and
    edgekiln's own code."""
    local = os.path.join(os.getcwd(), "recipes")
    return [local, *config_dirs(argv), os.path.join(TREE_ROOT, "recipes"),
            os.path.join(TREE_ROOT, "pipeline"), os.path.join(TREE_ROOT, "stages")]


def site_listings() -> dict[str, str]:
    """Each install folder's listing: installing, removing or upgrading a distribution
    changes the names of its ``*.dist-info`` folder (tool versions enter the cache keys)."""
    return {p: watch.listing(p) for p in sys.path
            if p.endswith(("site-packages", "dist-packages"))}


def load(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as handle:
            found = json.load(handle)
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and found.get("format") == FORMAT else None


def unchanged(found: dict[str, Any], restamped: watch.Files) -> bool:
    """Whether everything the recorded build depended on and produced is as recorded; files
    that had to be re-hashed to tell go into ``restamped``."""
    if site_listings() != found["site"]:  # the same install folders, each listing the same
        return False
    return all(watch.first_change(found[part], restamped) is None
               for part in ("inputs", "outputs"))


def write(path: str, data: dict[str, Any]) -> None:
    """Write ``path`` whole or not at all; keep the newest ``KEPT`` records beside it."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    partial = f"{path}.{os.getpid()}.partial"
    try:
        with open(partial, "w") as handle:
            json.dump(data, handle)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    records = sorted((e for e in os.scandir(folder) if e.name.endswith(".json")),
                     key=lambda e: e.stat().st_mtime_ns)
    for stale in records[:-KEPT]:
        os.unlink(stale.path)


def as_noop(run: dict[str, Any], seconds: float) -> dict[str, Any]:
    """run.json as a full rebuild with nothing to do writes it: every stage from the cache."""
    stages = [{k: v for k, v in s.items() if k not in ("note", "from")}
              | {"status": "cached", "seconds": 0.0} for s in run["stages"]]
    return {**run, "stages": stages, "seconds": round(seconds, 3), "noop": True}
