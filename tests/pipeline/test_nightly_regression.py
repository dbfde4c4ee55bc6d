"""The nightly's regression rules, the noise-aware latency rule first, and its tolerance file."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from pipeline.errors import RecipeError
from pipeline.nightly import tolerances
from pipeline.nightly.regression import compare, latency_check
from pipeline.nightly.tolerances import Tolerances

if TYPE_CHECKING:
    from pathlib import Path

DEFAULT = Tolerances()
QUIET = [1.00, 1.01, 0.99, 1.00, 1.02]


def _shifted(rounds: list[float], by: float) -> list[float]:
    return [value + by for value in rounds]


def test_a_steady_slowdown_beyond_the_tolerance_regresses() -> None:
    finding = latency_check(QUIET, _shifted(QUIET, 0.30), DEFAULT)
    assert finding.regressed
    assert finding.delta == pytest.approx(0.30)
    assert "0.15 x baseline" in finding.allowed


def test_the_same_slowdown_on_a_noisy_machine_is_noise() -> None:
    # the same +0.3 ms between medians, but rounds that wander by +-0.2 ms (MAD) around them
    noisy = [1.0, 1.4, 0.7, 1.2, 0.9]
    finding = latency_check(noisy, _shifted(noisy, 0.30), DEFAULT)
    assert not finding.regressed
    assert "3 x noise 0.419" in finding.allowed


def test_noise_widens_the_bound_only_as_far_as_the_spread() -> None:
    noisy = [1.0, 1.4, 0.7, 1.2, 0.9]
    assert latency_check(noisy, _shifted(noisy, 1.5), DEFAULT).regressed


def test_a_slowdown_within_the_relative_tolerance_passes() -> None:
    assert not latency_check(QUIET, _shifted(QUIET, 0.10), DEFAULT).regressed


def test_microsecond_models_get_an_absolute_floor() -> None:
    fast = [0.030, 0.031, 0.030, 0.029, 0.030]
    assert not latency_check(fast, _shifted(fast, 0.03), DEFAULT).regressed  # +100%, 30 us
    assert latency_check(fast, _shifted(fast, 0.08), DEFAULT).regressed


def test_getting_faster_never_regresses() -> None:
    assert not latency_check(QUIET, _shifted(QUIET, -0.5), DEFAULT).regressed


def test_a_single_round_has_no_spread() -> None:
    assert latency_check([1.0], [1.2], DEFAULT).regressed


BASE = {"top1_agreement": 1.0, "mean_cosine": 0.9995, "accuracy_drop": 0.0,
        "max_abs_diff": 0.2, "model_bytes": 1000, "bundle_bytes": 20_000,
        "cpu_fallback_nodes": 0, "validated_on_target_ep": True,
        "latency_rounds_ms": QUIET}


def _regressed(current: dict[str, object], tol: Tolerances = DEFAULT) -> list[str]:
    return [f.metric for f in compare(current, BASE, tol) if f.regressed]


@pytest.mark.parametrize(("change", "metrics"), [
    pytest.param({}, [], id="unchanged"),
    pytest.param({"top1_agreement": 0.98}, ["top1_agreement"], id="agreement"),
    pytest.param({"top1_agreement": 0.995}, [], id="agreement-within"),
    pytest.param({"mean_cosine": 0.99}, ["mean_cosine"], id="cosine"),
    pytest.param({"accuracy_drop": 0.03}, ["accuracy_drop"], id="accuracy"),
    pytest.param({"max_abs_diff": 0.5}, ["max_abs_diff"], id="abs-diff"),
    pytest.param({"model_bytes": 1100}, ["model_bytes"], id="size"),
    pytest.param({"cpu_fallback_nodes": 2}, ["cpu_fallback_nodes"], id="fallback"),
    pytest.param({"validated_on_target_ep": False}, ["validated_on_target_ep"], id="lost-ep"),
    pytest.param({"latency_rounds_ms": _shifted(QUIET, 0.4)}, ["latency_ms"], id="latency"),
])
def test_each_rule_fails_only_its_metric(change: dict[str, object],
                                         metrics: list[str]) -> None:
    assert _regressed(BASE | change) == metrics


def test_metrics_one_night_lacks_are_not_compared() -> None:
    current = {"top1_agreement": 1.0}  # e.g. no labels, no timing tonight
    assert [f.metric for f in compare(current, BASE, DEFAULT)] == ["top1_agreement"]


def test_the_file_overrides_defaults_per_recipe_and_target(tmp_path: Path) -> None:
    path = tmp_path / "nightly.yaml"
    path.write_text("defaults: {latency_slowdown: 0.3}\n"
                    "recipes:\n"
                    "  resnet_*:\n"
                    "    size_growth: 0.1\n"
                    "    targets:\n"
                    "      jetson_orin: {require_target_ep: false}\n")
    policy = tolerances.load(path)
    jetson = policy.for_case("resnet_multi", "jetson_orin", "jetson_orin")
    assert (jetson.latency_slowdown, jetson.size_growth, jetson.require_target_ep) == (
        0.3, 0.1, False)
    cpu = policy.for_case("resnet_multi", "cpu", "cpu")
    assert (cpu.size_growth, cpu.require_target_ep) == (0.1, True)
    assert policy.for_case("digits_torch", "cpu", "cpu").size_growth == DEFAULT.size_growth
    assert not _regressed(BASE | {"validated_on_target_ep": False}, jetson)


def test_a_typo_in_the_file_names_the_key_and_the_nearest(tmp_path: Path) -> None:
    path = tmp_path / "nightly.yaml"
    path.write_text("recipes:\n  digits_*:\n    targets:\n      cpu: {latency_slowdwn: 0.3}\n")
    with pytest.raises(RecipeError, match=r"recipes\.digits_\*\.targets\.cpu: unknown key "
                                          r"'latency_slowdwn'\. Did you mean 'latency_slowdown'"):
        tolerances.load(path)


def test_a_wrong_type_in_the_file_fails(tmp_path: Path) -> None:
    path = tmp_path / "nightly.yaml"
    path.write_text("defaults: {require_target_ep: 'no', size_growth: 0.1}\n")
    with pytest.raises(RecipeError, match=r"defaults\.require_target_ep: expected a bool"):
        tolerances.load(path)
