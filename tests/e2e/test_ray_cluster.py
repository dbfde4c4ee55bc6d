"""run.executor=ray on a real two-node Ray cluster on loopback, through the real CLI.

The head has 2 CPUs and resource edgekiln/a, the extra worker 1 CPU and edgekiln/b (the
"device" of target dev). A multirun of two recipes that share export and optimize runs each
shared stage once, validates dev on the worker with edgekiln/b, and reports a target whose
resource no worker has as not validated. Then a node placed on the extra worker is killed with
it (the worker's whole process group) and re-runs on the head, with the same result as a local
reference build.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.fixtures import ray_cluster
from tests.fixtures.cli import _PROBE, ROOT, run_cli, run_record, statuses
from tests.fixtures.s3_server import aws_env
from tests.fixtures.team import install_kind, team_dir

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.fixtures.s3_server import S3Bucket, S3Server

pytestmark = pytest.mark.slow

HEAD, WORKER = 0, 1
# the extra worker's processes see this (its `ray start` environment): the pause kind then
# leaves a marker and waits to be killed there
MARKERS = "EDGEKILN_TEST_PAUSE_MARKERS"
RECIPE = """\
# @package _global_
defaults:
  - /model: digits_torch
  - /dataset: digits
  - /target@targets.cpu: x86_cpu
  - /target@targets.{target}: {profile}
  - override /pipeline: fp32
  - _self_
name: {name}
validate: {{samples: 64}}
"""
# a team's kind that passes its model through; on the extra worker it stops until killed
PAUSE = f"""
import os, shutil, time
from pathlib import Path
from pipeline.registry import stage


@stage("pause", inputs=("model",), reads=("target",), per_target=True)
def pause(ctx):
    markers = os.environ.get("{MARKERS}")
    if markers:
        Path(markers, ctx.target).write_text(str(os.getpid()))
        time.sleep(120)
    time.sleep(3)  # long enough for the three pause nodes to fill every CPU at once
    shutil.copytree(ctx.inputs["model"], ctx.out, dirs_exist_ok=True)
    return {{"paused": ctx.target}}
"""
PAUSED = """\
# @package _global_
defaults:
  - team_linear
  - /target@targets.t1: x86_cpu
  - /target@targets.t2: x86_cpu
  - override /pipeline: fp32
  - _self_
name: paused
stages:
  pause: {kind: pause, inputs: {model: optimize}}
  validate: {inputs: {candidate: pause, reference: optimize}}
  package: {inputs: {model: pause, report: validate}}
"""
PAUSED_TARGETS = ("cpu", "t1", "t2")  # team_linear brings cpu


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A team folder: recipes (two sharing export/optimize, one with pause nodes), its kind."""
    root = tmp_path_factory.mktemp("ray_team")
    recipes = team_dir(root)
    x86 = yaml.safe_load((ROOT / "recipes" / "target" / "x86_cpu.yaml").read_text())
    for name, resource in (("ray_dev", "edgekiln/b"), ("ray_far", "edgekiln/nowhere")):
        profile = {**x86, "runtime": {**x86["runtime"], "ray_resources": {resource: 1}}}
        (recipes / "target").mkdir(exist_ok=True)
        (recipes / "target" / f"{name}.yaml").write_text(yaml.safe_dump(profile))
    for name, target, profile in (("ray_a", "dev", "ray_dev"), ("ray_b", "far", "ray_far")):
        (recipes / "recipe" / f"{name}.yaml").write_text(
            RECIPE.format(name=name, target=target, profile=profile))
    (recipes / "recipe" / "paused.yaml").write_text(PAUSED)
    site = root / "site"
    install_kind(site, "team_pause", "pause = team_pause", {"__init__.py": PAUSE})
    markers = root / "markers"
    markers.mkdir()
    return {"root": root, "recipes": recipes, "site": site, "markers": markers}


@pytest.fixture(scope="module")
def cluster(team: dict[str, Path], s3_server: S3Server) -> Iterator[ray_cluster.Cluster]:
    # every machine reaches the shared cache with credentials of its own environment
    aws = aws_env(s3_server.endpoint, team["root"])
    running = ray_cluster.start([
        ray_cluster.Node(2, {"edgekiln/a": 1}, env=aws),
        ray_cluster.Node(1, {"edgekiln/b": 1}, env={**aws, MARKERS: str(team["markers"])})])
    try:
        yield running
    finally:
        running.stop()


def _on_ray(cluster: ray_cluster.Cluster, artifacts: Path) -> list[str]:
    return ["run.executor=ray", f"run.ray.address={cluster.address}", "run.progress=false",
            f"run.artifacts_dir={artifacts}"]


def test_a_multirun_shares_stages_and_validates_on_the_target_s_worker(
        team: dict[str, Path], cluster: ray_cluster.Cluster) -> None:
    artifacts = team["root"] / "shared"
    started = time.monotonic()
    result = run_cli("-m", "recipe=ray_a,ray_b", *_on_ray(cluster, artifacts),
                     "--config-dir", str(team["recipes"]), timeout=240, env=cluster.env)
    assert result.code == 0, result.stderr[-4000:]
    records = {r: run_record(artifacts, r) for r in ("ray_a", "ray_b")}
    ran = collections.Counter(s["key"] for r in records.values() for s in r["stages"]
                              if s["status"] == "ran")
    assert set(ran.values()) == {1}, ran  # each stage ran exactly once across both recipes
    a, b = (statuses(records[r]) for r in ("ray_a", "ray_b"))
    assert set(a.values()) == {"ran"}, a
    shared = ("export", "optimize", "validate@cpu", "package@cpu")
    assert [b[name] for name in shared] == ["cached"] * 4, b
    where = {f"{s['stage']}@{s['target']}": s.get("where") for s in records["ray_a"]["stages"]}
    assert where["validate@dev"]["node_id"] == cluster.node_ids[WORKER]
    # exclusive: validate@cpu asked for every CPU of the largest worker, the head
    assert where["validate@cpu"]["node_id"] == cluster.node_ids[HEAD]
    far = {s["stage"]: s for s in records["ray_b"]["stages"] if s["target"] == "far"}
    assert far["validate"]["status"] == far["package"]["status"] == "skipped"
    assert far["validate"]["note"] == ("not validated on target: no worker with resource "
                                       "edgekiln/nowhere")
    assert not (artifacts / "ray_b" / "far").exists()
    verdicts = {row["bundle"]: row["verdict"] for row in records["ray_b"]["bundles_summary"]}
    assert "no worker with resource edgekiln/nowhere" in verdicts["far"]
    assert time.monotonic() - started < 200


def test_a_second_folder_on_the_cluster_gets_every_stage_from_the_bucket(
        cluster: ray_cluster.Cluster, s3_bucket: S3Bucket, tmp_path: Path) -> None:
    """Workers build and upload; another folder with an empty local cache reads it all back."""
    records = []
    for name in ("first", "second"):
        work = tmp_path / name
        work.mkdir()  # the checkpoint at the same relative path: it is part of export's key
        shutil.copy(ROOT / "recipes" / "zoo" / "digits_cnn.pt", work / "digits_cnn.pt")
        result = run_cli("recipe=digits_torch", "pipeline=fp32", "model.checkpoint=digits_cnn.pt",
                         *_on_ray(cluster, Path("artifacts")), f"run.cache_url={s3_bucket.url()}",
                         cwd=work, env={**s3_bucket.env, **cluster.env}, timeout=240)
        assert result.code == 0, result.stderr[-4000:]
        records.append(run_record(work / "artifacts", "digits_torch"))
    first, second = records
    assert set(statuses(first).values()) == {"ran"}
    assert all(s["where"]["node_id"] in cluster.node_ids for s in first["stages"])
    assert set(statuses(second).values()) == {"cached"}
    assert all(s.get("from") == "remote" for s in second["stages"])
    assert [s["key"] for s in second["stages"]] == [s["key"] for s in first["stages"]]


def _pause_run(team: dict[str, Path], artifacts: Path, *args: str,
               env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, **(env or {}),
           "PYTHONPATH": os.pathsep.join((str(team["site"]), str(ROOT)))}
    return subprocess.Popen(
        [sys.executable, "-c", _PROBE, "recipe=paused", f"run.artifacts_dir={artifacts}",
         "run.progress=false", "--config-dir", str(team["recipes"]), *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_marker(markers: Path, build: subprocess.Popen[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and build.poll() is None:
        found = sorted(markers.iterdir())
        if found:
            return found[0].name
        time.sleep(0.2)
    build.kill()
    raise AssertionError("no pause node started on the extra worker: "
                         + build.communicate(timeout=30)[1][-3000:])


def _bundle(artifacts: Path, target: str) -> dict[str, Any]:
    bundle = artifacts / "paused" / target
    manifest = json.loads((bundle / "manifest.json").read_text())
    # validation's latencies differ from run to run; the model chain must not
    digests = {name: stage["digest"] for name, stage in manifest["stages"].items()
               if not name.startswith(("validate", "package"))}
    return {"digests": digests,
            "model": hashlib.sha256((bundle / "model.onnx").read_bytes()).hexdigest()}


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def test_sigterm_stops_the_run_and_its_tasks(team: dict[str, Path],
                                            cluster: ray_cluster.Cluster) -> None:
    artifacts = team["root"] / "stopped"
    build = _pause_run(team, artifacts, *_on_ray(cluster, artifacts)[:2], env=cluster.env)
    marker = team["markers"] / _wait_for_marker(team["markers"], build, timeout=120)
    task_pid = int(marker.read_text())
    build.send_signal(signal.SIGTERM)
    _out, err = build.communicate(timeout=60)
    marker.unlink()
    assert build.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "edgekiln: interrupted (SIGTERM)" in err
    assert _gone(task_pid, timeout=30)  # the task on the extra worker was stopped
    built = [json.loads(meta.read_text())["node"]
             for meta in (artifacts / ".cache" / "objects").glob("*/*/meta.json")]
    assert f"pause@{marker.name}" not in built


def test_a_killed_worker_s_node_reruns_elsewhere_with_the_same_result(
        team: dict[str, Path], cluster: ray_cluster.Cluster) -> None:
    reference = team["root"] / "reference"
    local = _pause_run(team, reference)  # a plain local build: no marker, no Ray
    assert local.wait(timeout=240) == 0, local.communicate()[1][-3000:]
    artifacts = team["root"] / "killed"
    build = _pause_run(team, artifacts, *_on_ray(cluster, artifacts)[:2], env=cluster.env)
    victim = _wait_for_marker(team["markers"], build, timeout=120)
    cluster.kill(WORKER)
    _out, err = build.communicate(timeout=180)
    assert build.returncode == 0, err[-4000:]
    record = run_record(artifacts, "paused")
    pauses = {s["target"]: s for s in record["stages"] if s["stage"] == "pause"}
    assert pauses[victim]["status"] == "ran"
    assert pauses[victim]["where"]["node_id"] == cluster.node_ids[HEAD]  # ran again there
    local_record = run_record(reference, "paused")
    assert ({s["key"] for s in record["stages"] if s["stage"] == "pause"}
            == {s["key"] for s in local_record["stages"] if s["stage"] == "pause"})
    for target in PAUSED_TARGETS:
        assert _bundle(artifacts, target) == _bundle(reference, target), target
    assert not list((artifacts / ".cache" / "tmp").iterdir())  # the dead build's staging
