"""The night's exit code, junit.xml and report.html from verdicts made by hand."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from pipeline.nightly import junit, report
from pipeline.nightly.history import Case
from pipeline.nightly.judge import Verdict
from pipeline.nightly.night import exit_code
from pipeline.nightly.regression import Finding

NIGHT = {"night": "20261201T020000Z", "started": 100.0, "finished": 160.0, "exit_code": 1,
         "history": "artifacts/nightly/history.sqlite", "host": {"platform": "Linux"}}
METRICS = {"top1_agreement": 0.99, "mean_cosine": 0.999, "latency_median_ms": 1.2,
           "latency_spread_ms": 0.01, "model_bytes": 1000, "bundle_bytes": 20_000,
           "stages": {"export": {"status": "cached", "seconds": 0.5, "key": "k"}}}


def _verdict(status: str, reason: str | None = None, recipe: str = "team") -> Verdict:
    findings = [Finding("top1_agreement", 1.0, 0.99, status == "regression", "a drop of 0.01")]
    return Verdict(Case(recipe, "cpu", "cpu", status, reason, METRICS), "package@cpu",
                   "20261130T020000Z", findings, "20261130T020000Z")


@pytest.mark.parametrize(("statuses", "code"), [
    pytest.param(["green", "baseline"], 0, id="green"),
    pytest.param(["green", "regression"], 4, id="regression"),
    pytest.param(["gate", "green"], 4, id="gate"),
    pytest.param(["regression", "error", "gate"], 1, id="a-stage-failure-wins"),
])
def test_exit_code(statuses: list[str], code: int) -> None:
    assert exit_code([_verdict(s).case for s in statuses]) == code


def test_junit_has_a_failure_per_quality_problem_and_an_error_per_crash() -> None:
    verdicts = [_verdict("green"), _verdict("regression", "regressed vs n1: top1", "a"),
                _verdict("gate", "stage 'validate@cpu': gate", "b"),
                _verdict("error", "stage 'export': StageError", "c")]
    document = junit.xml(NIGHT, verdicts)
    suite = ET.fromstring(document).find("testsuite")  # noqa: S314 -- the nightly's own output
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("4", "2", "1")
    cases = {c.get("classname"): c for c in suite.iter("testcase")}
    assert cases["nightly.team"].find("failure") is None
    regression = cases["nightly.a"].find("failure")
    assert regression is not None
    assert regression.text == "top1_agreement 1 -> 0.99 (allowed: a drop of 0.01)"
    error = cases["nightly.c"].find("error")
    assert error is not None
    assert error.get("message") == "stage 'export': StageError"
    assert cases["nightly.team"].get("time") == "0.500"


def test_report_html_escapes_reasons_and_plots_each_case() -> None:
    verdicts = [_verdict("regression", "<script>alert(1)</script>"),
                Verdict(Case("broken", "-", None, "error", "does not compose", {}), None)]
    data = report.as_json(NIGHT, verdicts)
    series = {("team", "cpu"): [Case("team", "cpu", "cpu", "green", None, METRICS,
                                     night="20261130T020000Z"), verdicts[0].case],
              ("broken", "-"): [verdicts[1].case]}
    page = report.html(data, series)
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert page.count('src="data:image/png;base64,') == 1  # nothing to plot for "broken"
    assert "<tr class=regression>" in page
    assert "-0.01</span>" in page  # the change of top1 since the last green night
