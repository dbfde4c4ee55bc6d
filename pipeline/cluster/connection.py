"""Join the Ray cluster a run names, once per process (a multirun's recipes share it).

``run.ray.address`` (or RAY_ADDRESS) names a running cluster, ``local`` starts a private one on
this machine. A named cluster that does not answer is the machine's problem (exit 5), found by
a plain TCP connect first: ray.init itself retries an unreachable address for minutes.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import EnvironmentProblem, RecipeError

if TYPE_CHECKING:
    from types import ModuleType

CONNECT_TIMEOUT_S = 5.0
RAY_CLIENT_PREFIX = "ray://"
AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def connect(ray_cfg: dict[str, Any]) -> ModuleType:
    """The ``ray`` module, joined to the run's cluster (already joined: as it is)."""
    try:
        import ray
    except ImportError:
        raise RecipeError("run.executor=ray needs Ray on this machine: "
                          "pip install 'edgekiln[cluster]'.") from None
    if ray.is_initialized():
        return ray
    address = ray_cfg.get("address") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise RecipeError(
            "run.ray.address: run.executor=ray needs the cluster's address (host:port as "
            "`ray start --head` prints it), or RAY_ADDRESS in the environment, or "
            "run.ray.address=local for a private cluster on this machine.")
    if address == "local":
        _private_token()
    elif address != "auto":
        _check_reachable(address)
    # ray.init makes SIGTERM exit on the spot; the run's own handler discards staged builds
    on_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(address=address, runtime_env={"env_vars": worker_environment()},
                 logging_level=logging.WARNING, include_dashboard=False)
    except ConnectionError as exc:
        hint = (" The cluster uses token authentication: set RAY_AUTH_MODE=token and "
                "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) as its nodes have them."
                if "Authentication" in repr(exc.__cause__) else "")
        raise EnvironmentProblem(f"run.ray.address={address}: cannot join the Ray cluster "
                                 f"there: {exc}.{hint}") from exc
    finally:
        if threading.current_thread() is threading.main_thread() and on_sigterm is not None:
            signal.signal(signal.SIGTERM, on_sigterm)
    return ray


def _private_token() -> None:
    """A token of this run's own for its private cluster, unless the user set one up.

    Ray turns token authentication on for a cluster that ray.init starts and would write a
    token to ~/.ray/auth_token; a private cluster lives only as long as the run, so its token
    lives in the environment of the run and its workers instead.
    """
    if not any(name in os.environ for name in AUTH_VARIABLES):
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


def _check_reachable(address: str) -> None:
    host, _, port = address.removeprefix(RAY_CLIENT_PREFIX).rpartition(":")
    if not host or not port.isdigit():
        raise RecipeError(f"run.ray.address: expected host:port (or ray://host:port, local), "
                          f"got '{address}'.")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise EnvironmentProblem(
            f"run.ray.address={address}: no Ray cluster answers there ({exc.strerror or exc}); "
            "start one with `ray start --head` (README, 'Running on a Ray cluster') or fix "
            "the address.") from None


def worker_environment() -> dict[str, str]:
    """PYTHONPATH for the workers: this edgekiln, the working directory, then the driver's own.

    Workers then import the code the driver runs, a team's kinds and factories included, as
    long as the checkout sits at the same path on every machine.
    """
    import pipeline

    root = str(Path(pipeline.__file__).resolve().parent.parent)
    paths = [root, os.getcwd(), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


def driver_path() -> list[str]:
    """The driver's import path, for a worker to put in front of its own."""
    return [os.getcwd(), *(p for p in sys.path if p)]
