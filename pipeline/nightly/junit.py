"""junit.xml for CI dashboards: one test case per recipe x bundle.

A regression or a failed gate is a ``<failure>``, a stage that crashed (or a recipe that could
not be built) an ``<error>``; the message is the reason the report gives. The case's time is the
time its stages took tonight.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree as ET  # writes XML, never parses any

if TYPE_CHECKING:
    from pipeline.nightly.judge import Verdict

FAILURES = {"regression": "failure", "gate": "failure", "error": "error"}


def xml(night: dict[str, Any], verdicts: list[Verdict]) -> str:
    """The JUnit XML document of the night."""
    kinds = [FAILURES.get(v.case.status) for v in verdicts]
    seconds = night["finished"] - night["started"]
    suites = ET.Element("testsuites", name="edgekiln nightly")
    suite = ET.SubElement(suites, "testsuite", {
        "name": f"edgekiln nightly {night['night']}", "tests": str(len(verdicts)),
        "failures": str(kinds.count("failure")), "errors": str(kinds.count("error")),
        "skipped": "0", "time": f"{seconds:.3f}", "hostname": night["host"]["platform"]})
    for verdict, kind in zip(verdicts, kinds, strict=True):
        suite.append(_case(verdict, kind))
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def _case(verdict: Verdict, kind: str | None) -> ET.Element:
    case = verdict.case
    stages = case.metrics.get("stages") or {}
    seconds = sum(stage["seconds"] for stage in stages.values())
    element = ET.Element("testcase", {"classname": f"nightly.{case.recipe}",
                                      "name": case.bundle, "time": f"{seconds:.3f}"})
    if kind is not None:
        detail = ET.SubElement(element, kind, {"message": case.reason or case.status,
                                               "type": case.status})
        detail.text = "\n".join(f.reason() for f in verdict.findings if f.regressed) or \
            case.reason or case.status
    out = ET.SubElement(element, "system-out")
    out.text = (f"status {case.status}; live bundle from {verdict.live_night or 'no night'}; "
                f"compared with {verdict.baseline_night or 'nothing (first green night)'}")
    return element
