"""What a node asks of a Ray cluster: its target's device, a whole worker, or one CPU."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import yaml

from pipeline import plan
from pipeline.cluster import worker
from pipeline.cluster.placement import Request, Worker, request
from pipeline.errors import GateError, StageError
from pipeline.hashing import DigestState
from pipeline.keys import cache_key, key_payload
from tests.fixtures.cli import ROOT
from tests.fixtures.recipes import compose_recipe, write_recipe

if TYPE_CHECKING:
    from pathlib import Path

PLACED = """\
defaults:
  - /model: digits_torch
  - /dataset: digits
  - /target@targets.cpu: x86_cpu
  - /target@targets.dev: {profile}
  - override /pipeline: fp32
  - _self_
name: placed
"""
HEAD = Worker("head", "h1", {"CPU": 4.0})
DEVICE = Worker("dev", "h2", {"CPU": 2.0, "edgekiln/dev": 1.0})


def _plan(tmp_path: Path, profile: str) -> plan.Plan:
    x86 = yaml.safe_load((ROOT / "recipes" / "target" / "x86_cpu.yaml").read_text())
    routed = {**x86, "runtime": {**x86["runtime"], "ray_resources": {"edgekiln/dev": 1}}}
    (tmp_path / "target").mkdir(parents=True, exist_ok=True)
    (tmp_path / "target" / "routed.yaml").write_text(yaml.safe_dump(routed))
    write_recipe(tmp_path, "placed", PLACED.format(profile=profile))
    return plan.build(compose_recipe("placed", config_dir=tmp_path))


@pytest.fixture
def placed(tmp_path: Path) -> plan.Plan:
    return _plan(tmp_path, "routed")


def test_validate_of_a_routed_target_takes_the_whole_device_worker(placed: plan.Plan) -> None:
    assert request(placed, placed.nodes["validate@dev"], [HEAD, DEVICE]) == Request(
        2.0, {"edgekiln/dev": 1.0})


def test_an_exclusive_stage_takes_every_cpu_of_the_largest_worker(placed: plan.Plan) -> None:
    # validate times models; export traces and checks them on every core
    for name in ("validate@cpu", "export"):
        assert request(placed, placed.nodes[name], [HEAD, DEVICE]) == Request(4.0, {}), name


def test_other_stages_take_one_cpu_anywhere(placed: plan.Plan) -> None:
    # package is per target but measures nothing on it: no device needed
    for name in ("optimize", "package@dev"):
        assert request(placed, placed.nodes[name], [HEAD, DEVICE]) == Request(1, {}), name


def test_a_device_no_live_worker_has_is_reported(placed: plan.Plan) -> None:
    assert request(placed, placed.nodes["validate@dev"], [HEAD]) == (
        "not validated on target: no worker with resource edgekiln/dev")
    assert not Request(2.0, {"edgekiln/dev": 1.0}).fits(HEAD)


def test_where_a_stage_runs_stays_out_of_its_key(placed: plan.Plan, tmp_path: Path) -> None:
    plain = _plan(tmp_path / "plain", "x86_cpu")
    state = DigestState(tmp_path / "state.json")
    digests = {"candidate": "1" * 64, "reference": "1" * 64}
    keys = [cache_key(key_payload(p.nodes["validate@dev"], digests, state))
            for p in (placed, plain)]
    assert keys[0] == keys[1]
    assert "ray_resources" not in placed.nodes["validate@dev"].config["target"]["runtime"]


def test_a_worker_s_error_keeps_its_class_and_traceback() -> None:
    try:
        raise GateError("stage 'validate@dev': top-1 agreement 0.5 < 0.95")
    except GateError as exc:
        record = worker._error(exc)["error"]
    error = worker.error_from(record)
    assert type(error) is GateError  # a failed gate stops only its dependents, as locally
    assert str(error) == "stage 'validate@dev': top-1 agreement 0.5 < 0.95"
    assert "raise GateError" in str(error.__cause__)
    unknown = worker.error_from({**record, "type": "team_kinds.errors:Gone"})
    assert type(unknown) is StageError
