"""The night's report: report.json, a static report.html, and the table at the end of the run.

report.html is one file with nothing to fetch: inline CSS, plots as inline base64 PNGs, no
script. It opens offline, from a CI artifact or a mail attachment.
"""

from __future__ import annotations

import html as markup
import time
from typing import TYPE_CHECKING, Any

from rich.table import Table

from pipeline.nightly.plots import history_png

if TYPE_CHECKING:
    from pipeline.nightly.history import Case
    from pipeline.nightly.judge import Verdict
    from pipeline.nightly.regression import Finding

STYLES = {"green": "green", "baseline": "cyan", "regression": "bold red", "gate": "bold red",
          "error": "bold red"}
# report column -> (metric, format of the value, delta as a percentage of the baseline)
COLUMNS = {"top1": ("top1_agreement", "{:.4f}", False),
           "cosine": ("mean_cosine", "{:.5f}", False),
           "acc. drop": ("accuracy_drop", "{:+.4f}", False),
           "max |diff|": ("max_abs_diff", "{:.4g}", True),
           "latency ms": ("latency_ms", "{:.4g}", True),
           "model B": ("model_bytes", "{:,.0f}", True),
           "bundle B": ("bundle_bytes", "{:,.0f}", True)}
# where a column's value comes from when there is no finding (nothing to compare with)
CURRENT = {"latency_ms": "latency_median_ms"}
CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;font-size:13px;margin-bottom:24px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f2f2f2}
.green,.baseline{background:#e8f5e9}.regression,.gate,.error{background:#ffebee}
.delta{color:#666;font-size:11px}.bad{color:#c62828;font-weight:bold}
.reason{max-width:420px;font-size:12px}img{max-width:100%;border:1px solid #eee}
"""


def as_json(night: dict[str, Any], verdicts: list[Verdict]) -> dict[str, Any]:
    """report.json: the night, then one entry per case with its findings vs the last green."""
    return {**night, "cases": [{
        "recipe": v.case.recipe, "bundle": v.case.bundle, "target": v.case.target,
        "status": v.case.status, "reason": v.case.reason, "published": v.case.published,
        "live_night": v.live_night, "baseline_night": v.baseline_night,
        "findings": [{"metric": f.metric, "baseline": f.baseline, "current": f.current,
                      "delta": f.delta, "regressed": f.regressed, "allowed": f.allowed}
                     for f in v.findings],
        "metrics": v.case.metrics} for v in verdicts]}


def html(data: dict[str, Any], series: dict[tuple[str, str], list[Case]]) -> str:
    """The static page: the status table, then the plots over time per recipe x bundle."""
    title = f"edgekiln nightly {data['night']}"
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(data["started"]))
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{_e(title)}"
             f"</title><style>{CSS}</style></head><body><h1>{_e(title)}</h1>",
             f"<p>exit code <b>{data['exit_code']}</b> &middot; started {started} &middot; "
             f"{data['finished'] - data['started']:.1f} s &middot; {len(data['cases'])} cases "
             f"&middot; history {_e(data['history'])}</p><p class=delta>Under each value: "
             "its change since the last green night of that recipe x bundle (red: beyond "
             "tolerance). Latency is the nightly's own timing, the median of its rounds. "
             "<i>live bundle</i>: the night whose bundle is published now.</p>",
             _status_table(data["cases"]),
             "<h2>Over time</h2>"]
    for (recipe, bundle), cases in series.items():
        if any(case.metrics for case in cases):
            png = history_png(cases, f"{recipe} / {bundle}")
            parts.append(f'<h3>{_e(recipe)} / {_e(bundle)}</h3><img alt="history of '
                         f'{_e(recipe)} {_e(bundle)}" src="data:image/png;base64,{png}">')
    return "\n".join([*parts, "</body></html>\n"])


def _status_table(cases: list[dict[str, Any]]) -> str:
    head = ["recipe", "bundle", "status", *COLUMNS, "on target EP", "cache hits", "live bundle",
            "reason"]
    rows = ["<table id=status><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head)
            + "</tr></thead><tbody>"]
    for case in cases:
        findings = {f["metric"]: f for f in case["findings"]}
        cells = [_e(case["recipe"]), _e(case["bundle"]), f"<b>{_e(case['status'])}</b>"]
        cells += [_html_cell(case["metrics"], findings, *spec) for spec in COLUMNS.values()]
        metrics = case["metrics"]
        hits = metrics.get("cache_hit_rate")
        cells += [_e(metrics.get("validated_on_target_ep", "-")),
                  "-" if hits is None else f"{hits:.0%}", _e(case["live_night"] or "none"),
                  f"<span class=reason>{_e(case['reason'] or '')}</span>"]
        rows.append(f"<tr class={case['status']}>" + "".join(f"<td>{c}</td>" for c in cells)
                    + "</tr>")
    return "\n".join([*rows, "</tbody></table>"])


def _html_cell(metrics: dict[str, Any], findings: dict[str, Any], metric: str, form: str,
               relative: bool) -> str:
    value, delta, bad = _value(metrics, findings.get(metric), metric, form, relative)
    if value == "-":
        return value
    flag = " bad" if bad else ""
    return f"{_e(value)}<br><span class='delta{flag}'>{_e(delta)}</span>" if delta else value


def _value(metrics: dict[str, Any], finding: Any, metric: str, form: str,
           relative: bool) -> tuple[str, str, bool]:
    """(tonight's value, its change vs the last green night, regressed) as text."""
    current = finding["current"] if finding else metrics.get(CURRENT.get(metric, metric))
    if not isinstance(current, int | float) or isinstance(current, bool):
        return "-", "", False
    if not finding or not isinstance(finding["delta"], int | float):
        return form.format(current), "", False
    delta, base = finding["delta"], finding["baseline"]
    change = (f"{delta / base:+.1%}" if base else f"{delta:+.3g}") if relative \
        else f"{delta:+.4g}"
    return form.format(current), change, bool(finding["regressed"])


def summary_table(verdicts: list[Verdict], title: str) -> Table:
    """The night at a glance, printed when it ends."""
    table = Table(title=title)
    for column in ("recipe", "bundle", "status", "top1", "latency ms", "bundle B", "live",
                   "reason"):
        table.add_column(column)
    for verdict in verdicts:
        case = verdict.case
        found = {f.metric: _finding_dict(f) for f in verdict.findings}
        cells = [_text(case.metrics, found, column) for column in ("top1", "latency ms",
                                                                   "bundle B")]
        table.add_row(case.recipe, case.bundle, f"[{STYLES[case.status]}]{case.status}[/]",
                      *cells, verdict.live_night or "none", (case.reason or "")[:160])
    return table


def _text(metrics: dict[str, Any], findings: dict[str, Any], column: str) -> str:
    metric, form, relative = COLUMNS[column]
    value, delta, _bad = _value(metrics, findings.get(metric), metric, form, relative)
    return f"{value} ({delta})" if delta else value


def _finding_dict(finding: Finding) -> dict[str, Any]:
    return {"current": finding.current, "baseline": finding.baseline, "delta": finding.delta,
            "regressed": finding.regressed}


def _e(value: Any) -> str:
    return markup.escape(str(value))
