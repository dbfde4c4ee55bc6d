"""Run models on a target's execution providers and say what really ran: placement, outputs, time.

One implementation serves both ways the validate stage measures a target. With the host's own
onnxruntime it imports this module and calls ``run_request``. For a target whose onnxruntime
distribution differs (onnxruntime-openvino), ``call`` runs this file as a script with the
Python of an isolated environment::

    <env>/bin/python -I validate_worker.py <workdir>

so the module imports only numpy, onnxruntime and the standard library. ``<workdir>`` holds
``request.json`` and ``feeds.npz`` (key ``<sample>:<input>``); the worker writes
``result.json`` and ``outputs.npz`` (``<role>|first`` stacks every sample's first output, or
``<role>|first|<sample>`` holds each when their shapes differ; ``<role>|<sample>|<output>``
keeps all outputs of the first samples). Every sample runs alone, so samples of different
lengths need no padding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

CPU = "CPUExecutionProvider"
FEEDS, REQUEST, RESULT, OUTPUTS = "feeds.npz", "request.json", "result.json", "outputs.npz"
# ONNX Runtime type strings of inputs whose dtype can differ from the recipe's (fp16 models)
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
              "tensor(double)": np.float64}
Feed = dict[str, np.ndarray]
DISABLE_CPU_FALLBACK = "session.disable_cpu_ep_fallback"
MAX_RUNS = 20000  # of a microsecond model within latency_seconds
LEVELS = {"disable_all": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
          "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
          "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


def run_request(request: dict[str, Any], feeds: list[Feed]) -> tuple[dict[str, Any],
                                                                    dict[str, np.ndarray]]:
    """Run every job of ``request``; returns a JSON-able result and the arrays it produced."""
    result: dict[str, Any] = {"onnxruntime": ort.__version__,
                              "available_providers": ort.get_available_providers(), "jobs": {}}
    arrays: dict[str, np.ndarray] = {}
    for job in request["jobs"]:
        info, outputs = _run_job(job, request, feeds)
        result["jobs"][job["role"]] = info
        arrays |= {f"{job['role']}|{key}": value for key, value in outputs.items()}
    return result, arrays


def _run_job(job: dict[str, Any], request: dict[str, Any],
             feeds: list[Feed]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    no_cpu = _no_cpu(request)
    providers = _usable(request["providers"], no_cpu)
    info: dict[str, Any] = {"providers": providers, "cpu_fallback_disabled": no_cpu}
    method = _method(job.get("placement"))
    start = time.perf_counter()
    try:
        session = _session(job["path"], providers, no_cpu, method, request.get("session"))
    except Exception as exc:
        if not no_cpu:
            raise
        # the session refused to put nodes on CPU: build it again, allowing CPU, to say which
        info["refused"] = str(exc)
        session = _session(job["path"], _usable(request["providers"], False), False, method,
                           request.get("session"))
        info |= {"ran_on": session.get_providers(),
                 "placement": _placement(session, method, feeds[0])}
        return info, {}
    info |= {"ran_on": session.get_providers(),
             "session_seconds": round(time.perf_counter() - start, 4),
             "placement": _placement(session, method, feeds[0])}
    outputs = _outputs(session, feeds, job.get("outputs", "none"), job.get("keep", 0))
    if job.get("latency"):
        info["latency"] = _latency(session, feeds[0], request)
    return info, outputs


def _no_cpu(request: dict[str, Any]) -> bool:
    """Disable CPU fallback only where it means something: the first EP exists and is not CPU."""
    first = request["providers"][0]["name"]
    return bool(request.get("disable_cpu_fallback")) and first != CPU and \
        first in ort.get_available_providers()


def _usable(providers: list[dict[str, Any]], no_cpu: bool) -> list[dict[str, Any]]:
    """The requested providers this onnxruntime has, in order, with CPU last unless forbidden.

    onnxruntime refuses a session that lists the CPU EP while CPU fallback is disabled.
    """
    available = ort.get_available_providers()
    chosen = [p for p in providers if p["name"] in available and not (no_cpu and p["name"] == CPU)]
    if not no_cpu and CPU not in [p["name"] for p in chosen]:
        chosen.append({"name": CPU, "options": {}})
    return chosen


def _session(path: str, providers: list[dict[str, Any]], no_cpu: bool, method: str | None,
             settings: dict[str, Any] | None) -> Any:
    """A session set up as the target's device would set it up (its ``session`` settings)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only; an EP that fails to load still says why
    settings = settings or {}
    if settings.get("graph_optimization_level"):
        options.graph_optimization_level = LEVELS[settings["graph_optimization_level"]]
    if settings.get("intra_op_num_threads"):
        options.intra_op_num_threads = int(settings["intra_op_num_threads"])
    for key, value in (settings.get("config") or {}).items():
        if key != DISABLE_CPU_FALLBACK:  # decided by _no_cpu, where it can apply
            options.add_session_config_entry(key, str(value))
    options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    if no_cpu:
        options.add_session_config_entry(DISABLE_CPU_FALLBACK, "1")
    if method == "profiling":
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "placement")
    return ort.InferenceSession(path, options, providers=[p["name"] for p in providers],
                                provider_options=[_strings(p["options"]) for p in providers])


def _strings(options: dict[str, Any]) -> dict[str, str]:
    # provider options are strings to onnxruntime; YAML booleans would arrive as "True"
    return {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in options.items()}


def _method(placement: str | None) -> str | None:
    """How to find node placement: onnxruntime >= 1.24 records it; older ones are profiled."""
    if not placement:
        return None
    has_api = hasattr(ort.InferenceSession, "get_provider_graph_assignment_info")
    return "graph_assignment" if placement == "auto" and has_api else "profiling"


def _placement(session: Any, method: str | None, feed: Feed) -> dict[str, Any] | None:
    """Nodes per execution provider, and the nodes left to the CPU EP."""
    if method is None:
        return None
    if method == "profiling":
        return _profiled_placement(session, feed)
    nodes = [(sub.ep_name, node) for sub in session.get_provider_graph_assignment_info()
             for node in sub.get_nodes()]
    return _tally("graph_assignment", "nodes",
                  [(ep, node.name, node.op_type) for ep, node in nodes])


def _profiled_placement(session: Any, feed: Feed) -> dict[str, Any]:
    """Older onnxruntime: one profiled run; a compiled EP shows as one kernel per subgraph."""
    session.run(None, cast_feed(session, feed))
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink(missing_ok=True)
    trace.parent.rmdir()  # the session's own temporary directory
    kernels = [(e["args"]["provider"], e["name"].removesuffix("_kernel_time"),
                e["args"].get("op_name", "")) for e in events
               if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
               and "provider" in e.get("args", {})]
    return _tally("profiling", "kernels", kernels)


def _tally(method: str, unit: str, placed: list[tuple[str, str, str]]) -> dict[str, Any]:
    per_ep: dict[str, int] = {}
    for ep, _, _ in placed:
        per_ep[ep] = per_ep.get(ep, 0) + 1
    return {"method": method, "unit": unit, "total": len(placed), "per_ep": per_ep,
            "cpu_nodes": [{"name": name or f"<unnamed {op}>", "op_type": op}
                          for ep, name, op in placed if ep == CPU]}


def cast_feed(session: Any, feed: Feed) -> Feed:
    """Cast float inputs to the session's own type: an fp16 candidate takes float16 feeds."""
    types = {i.name: ORT_DTYPES.get(i.type) for i in session.get_inputs()}
    return {name: a if types.get(name) is None else a.astype(types[name])
            for name, a in feed.items()}


def _outputs(session: Any, feeds: list[Feed], which: str | int,
             keep: int) -> dict[str, np.ndarray]:
    """``which``: "all" samples' first output, or "none"; ``keep``: samples with every output."""
    names = [o.name for o in session.get_outputs()]
    count = len(feeds) if which == "all" else keep
    runs = [session.run(None, cast_feed(session, feed)) for feed in feeds[:count]]
    arrays = {f"{i}|{name}": value for i, run in enumerate(runs[:keep])
              for name, value in zip(names, run, strict=True)}
    if which == "all":
        firsts = [run[0] for run in runs]
        if len({first.shape for first in firsts}) == 1:
            arrays["first"] = np.stack(firsts)
        else:  # samples of different lengths give outputs that do not stack: one key each
            arrays |= {f"first|{i}": first for i, first in enumerate(firsts)}
    return arrays


def _latency(session: Any, feed: Feed, request: dict[str, Any]) -> dict[str, float]:
    """p50/p90 wall time in ms of one batch-1 run, after warmup (first runs allocate memory).

    At least ``latency_runs`` runs and at least ``latency_seconds`` of them: 30 runs of a
    0.02 ms model last 0.6 ms, and their median swings by 30% with whatever else the machine
    does in that instant (INT8 measured 0.77x and 1.1x FP32 a minute apart).
    """
    feed = cast_feed(session, feed)
    for _ in range(request.get("warmup_runs", 3)):
        session.run(None, feed)
    runs, seconds = max(request.get("latency_runs", 30), 1), request.get("latency_seconds", 0.25)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < runs or (time.perf_counter() < deadline and len(times) < MAX_RUNS):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1000.0)
    return {"p50": float(np.percentile(times, 50)), "p90": float(np.percentile(times, 90)),
            "runs": len(times)}


def call(python: Path, request: dict[str, Any], feeds: list[Feed],
         timeout: float = 3600.0) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
    """Run ``request`` with another Python (an isolated environment's); returns its stderr too."""
    with tempfile.TemporaryDirectory(prefix="edgekiln-validate-") as tmp:
        work = Path(tmp)
        np.savez(work / FEEDS, **{f"{i}:{name}": a for i, feed in enumerate(feeds)
                                  for name, a in feed.items()})
        (work / REQUEST).write_text(json.dumps(request))
        # -I: neither the host's PYTHONPATH nor its user site may leak into the environment;
        # cwd: relative paths in provider options (an EP's cache_dir) land in the work dir
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        proc = subprocess.run([str(python), "-I", __file__, str(work)], capture_output=True,
                              text=True, timeout=timeout, env=env, cwd=work, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"exit {proc.returncode}: {proc.stderr.strip()[-2000:]}")
        result = json.loads((work / RESULT).read_text())
        with np.load(work / OUTPUTS) as stored:
            arrays = {key: stored[key] for key in stored.files}
    return result, arrays, proc.stderr


def _serve(work: Path) -> None:
    request = json.loads((work / REQUEST).read_text())
    with np.load(work / FEEDS) as stored:
        samples: dict[int, Feed] = {}
        for key in stored.files:
            index, name = key.split(":", 1)
            samples.setdefault(int(index), {})[name] = stored[key]
    feeds = [samples[i] for i in sorted(samples)]
    result, arrays = run_request(request, feeds)
    np.savez(work / OUTPUTS, **arrays)
    (work / RESULT).write_text(json.dumps(result))


if __name__ == "__main__":
    _serve(Path(sys.argv[1]))
