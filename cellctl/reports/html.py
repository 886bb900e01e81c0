"""The batch record as ONE self-contained HTML file: `cellctl report --format html` and the web
view's /history/{batch}/report.

No external URL, no script: inline CSS and an inline SVG Gantt of the steps (holds shaded and
hatched, trips marked with a line and a label). Faults and operator actions carry a word and
a symbol besides their colour, so the page reads printed in black and white. Every text from
the journal goes through `html.escape` (a tag value may hold "<script>").
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from pathlib import Path

from cellctl.control.journal.location import journal_option
from cellctl.control.journal.record import (
    CONFIRMED,
    FAILED,
    UNKNOWN,
    BatchRecord,
    parse_at,
    value_text,
)
from cellctl.reports.text import span, when

#: The Gantt's geometry, in SVG user units (the SVG scales to the page's width).
LABEL_W = 200
CHART_W = 700
ROW_H = 22
TOP = 34
MIN_W = 3.0  # a step that took no measurable time still shows as a sliver

_CSS = """
:root { --fault: #b00020; --op: #0b57d0; --hold: #f3c969; --ink: #1b1b1b; --muted: #555; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--ink); margin: 0 auto; padding: 1rem; max-width: 70rem; }
h1 { font-size: 1.5rem; margin: 0 0 .5rem; }
h2 { font-size: 1.15rem; margin: 1.6rem 0 .5rem; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; width: 100%; margin: .3rem 0; }
th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid #ddd;
  vertical-align: top; overflow-wrap: break-word; }
th { background: #f2f2f2; }
table.identity th { width: 11rem; }
code, .hash { word-break: break-all; font-size: .85em;
  font-family: ui-monospace, Menlo, Consolas, monospace; }
.outcome { display: inline-block; padding: .1rem .6rem; border: 2px solid currentColor;
  border-radius: .3rem; font-weight: 600; }
.outcome.bad { color: var(--fault); }
.banner { border: 3px solid var(--fault); color: var(--fault); padding: .5rem .8rem;
  font-weight: 600; margin: .6rem 0; }
tr.fault td { background: #fdecee; }
tr.fault td:first-child, .mark-fault { color: var(--fault); font-weight: 600; }
tr.operator td { background: #e8f0fe; }
tr.operator td:first-child, .mark-operator { color: var(--op); font-weight: 600; }
tr.unknown td { background: #fff4d6; font-weight: 600; }
.scroll { overflow-x: auto; }
td.nowrap { white-space: nowrap; }
svg.gantt { width: 100%; height: auto; display: block; font-size: 12px; }
svg.gantt .step { stroke: #1b1b1b; stroke-width: .6; }
svg.gantt .done { fill: #6aa84f; }
svg.gantt .skipped { fill: #cccccc; }
svg.gantt .failed { fill: #e06666; }
svg.gantt .interrupted { fill: #f6b26b; }
svg.gantt .open { fill: #9fc5e8; }
svg.gantt .crashed { fill: #b4a7d6; }
svg.gantt .hold { fill: url(#hatch); stroke: #a67c00; stroke-dasharray: 4 2; }
svg.gantt .trip { stroke: var(--fault); stroke-width: 2; }
svg.gantt .trip-label { fill: var(--fault); font-weight: 600; }
svg.gantt .axis { stroke: #999; stroke-width: .5; }
.legend span { margin-right: 1.2rem; white-space: nowrap; }
.sw { display: inline-block; width: 1.1em; height: .8em; border: 1px solid #333;
  vertical-align: middle; margin-right: .3rem; }
@media print {
  body { max-width: none; font-size: 11pt; padding: 0; }
  .scroll { overflow: visible; }
  tr, svg { break-inside: avoid; }
  h2 { break-after: avoid; }
}
"""


def esc(value: object) -> str:
    """Text for HTML and inline SVG: every <, >, &, ' and " escaped."""
    return html.escape(value if isinstance(value, str) else value_text(value), quote=True)


def _rows(cells: Iterable[tuple[str, str]]) -> str:
    return "".join(f"<tr><th scope='row'>{esc(k)}</th><td>{v}</td></tr>" for k, v in cells)


def _identity(record: BatchRecord) -> str:
    """The identity table: recipe, cell, operator, times, outcome, head hash."""
    version = "-" if record.version is None else record.version
    host = f"{esc(record.host or '-')}, pid {esc(record.pid or '-')}"
    if record.os_user:
        host += f", user {esc(record.os_user)}"
    if record.cellctl_version:
        host += f", cellctl {esc(record.cellctl_version)}"
    cells = [
        ("Batch", f"<code>{esc(record.batch)}</code>"),
        ("Recipe", f"{esc(record.recipe or '-')} version {esc(version)}"),
        ("Recipe SHA-256", f"<span class='hash'>{esc(record.recipe_sha256 or '-')}</span>"),
        ("Cell", esc(record.cell or "-")),
        ("Cell file SHA-256", f"<span class='hash'>{esc(record.cell_sha256 or '-')}</span>"),
        ("Operator", esc(record.operator or "-")),
        ("Mode", esc(record.mode or "-") + (" (simulators)" if record.sim else "")),
        ("Host", host),
        ("Start (UTC)", esc(when(record.start))),
        ("End (UTC)", esc("not recorded: unfinished" if record.unfinished else when(record.end))),
        ("Duration", esc(span(record.duration))),
        ("Steps done", esc("-" if record.steps_done is None else record.steps_done)),
        ("Parts made", esc("-" if record.parts_made is None else record.parts_made)),
        ("Exit code", esc("-" if record.exit_code is None else record.exit_code)),
        ("Head hash", f"<span class='hash'>{esc(record.head or '-')}</span> ({record.rows} rows)"),
    ]
    return f"<table class='identity'>{_rows(cells)}</table>"


def _parameters(record: BatchRecord) -> str:
    if not record.parameters:
        return "<p>No parameters.</p>"
    rows = "".join(
        f"<tr><td><code>{esc(name)}</code></td><td>{esc(value)}</td></tr>"
        for name, value in sorted(record.parameters.items())
    )
    return f"<table><thead><tr><th>Parameter</th><th>Value</th></tr></thead>{rows}</table>"


def _step_name(path: str, step_id: str | None, label: str) -> str:
    """A step as the Gantt names it: its id and place, else its label and place."""
    if step_id:
        return f"{step_id} ({path})"
    return f"{label} ({path})" if label else f"step {path}"


def _tick(seconds: float, total: float) -> str:
    """An offset on the time axis, with as many decimals as the span needs."""
    if total >= 60:
        return span(seconds)
    decimals = 1 if total >= 10 else 2 if total >= 1 else 3 if total >= 0.1 else 4
    return f"{seconds:.{decimals}f} s"


def _gantt(record: BatchRecord) -> str:
    """The steps as an inline SVG Gantt: one rect per step run, holds and trips over them."""
    if record.start is None:
        return "<p>No rows.</p>"
    t0 = parse_at(record.start)
    t_end = parse_at(record.end or record.last_row_at or record.start)
    total = max(t_end - t0, 1e-3)
    scale = CHART_W / total

    def x(at: str) -> float:
        return LABEL_W + max(0.0, parse_at(at) - t0) * scale

    n = len(record.steps)
    height = TOP + max(n, 1) * ROW_H + 12
    parts = [
        f"<svg class='gantt' viewBox='0 0 {LABEL_W + CHART_W + 40} {height}' "
        f"role='img' aria-labelledby='gantt-title' xmlns='http://www.w3.org/2000/svg'>",
        "<title id='gantt-title'>Step durations over time, holds shaded, trips marked</title>",
        "<defs><pattern id='hatch' width='6' height='6' patternUnits='userSpaceOnUse' "
        "patternTransform='rotate(45)'><rect width='6' height='6' fill='#fbe7b0'/>"
        "<line x1='0' y1='0' x2='0' y2='6' stroke='#a67c00' stroke-width='2'/></pattern></defs>",
    ]
    # The time axis: five ticks with their offsets.
    for k in range(6):
        tx = LABEL_W + CHART_W * k / 5
        bottom = height - 8
        parts.append(
            f"<line class='axis' x1='{tx:.1f}' y1='{TOP - 6}' x2='{tx:.1f}' y2='{bottom}'/>"
        )
        tick = esc(_tick(total * k / 5, total))
        parts.append(f"<text x='{tx:.1f}' y='{TOP - 10}' text-anchor='middle'>{tick}</text>")
    for hold in record.holds:
        hx = x(hold.start)
        hw = max((x(hold.end) if hold.end else LABEL_W + CHART_W) - hx, MIN_W)
        why = f"Held {when(hold.start)} - {when(hold.end) if hold.end else 'end of record'}"
        why += f": {hold.cause}" if hold.cause else ""
        parts.append(
            f"<rect class='hold' x='{hx:.2f}' y='{TOP}' width='{hw:.2f}' "
            f"height='{max(n, 1) * ROW_H}'><title>{esc(why)}</title></rect>"
        )
        parts.append(f"<text x='{hx + 2:.2f}' y='{height - 2}'>HELD</text>")
    for i, step in enumerate(record.steps):
        y = TOP + i * ROW_H
        sx = x(step.start)
        end = step.end or record.end or record.last_row_at or step.start
        sw = max(x(end) - sx, MIN_W)
        outcome = step.outcome or "open"
        known = ("done", "skipped", "failed", "interrupted", "crashed")
        cls = outcome if outcome in known else "open"
        name = _step_name(step.path, step.step_id, step.label)
        shown = name if len(name) <= 28 else name[:27] + "…"
        took = span(parse_at(end) - parse_at(step.start))
        tip = f"{name} {step.label}: {outcome if step.outcome else 'not ended'}, {took}"
        tip += f" ({step.error})" if step.error else ""
        indent = 4 + 10 * min(step.path.count("."), 6)  # a nested step under its parent
        parts.append(f"<text x='{indent}' y='{y + ROW_H * 0.68:.1f}'>{esc(shown)}</text>")
        parts.append(
            f"<rect class='step {cls}' data-path='{esc(step.path)}' x='{sx:.2f}' y='{y + 3}' "
            f"width='{sw:.2f}' height='{ROW_H - 6}'><title>{esc(tip)}</title></rect>"
        )
        if step.outcome in ("failed", "interrupted", "crashed", None):
            marks = {"failed": "✗ failed", "interrupted": "interrupted", "crashed": "✗ crashed"}
            mark = marks.get(step.outcome or "", "…")
            parts.append(
                f"<text x='{sx + sw + 3:.2f}' y='{y + ROW_H * 0.68:.1f}'>{esc(mark)}</text>"
            )
    for trip in record.trips:
        tx = x(trip.at)
        parts.append(
            f"<line class='trip' x1='{tx:.2f}' y1='{TOP - 4}' x2='{tx:.2f}' y2='{height - 8}'>"
            f"<title>{esc('trip ' + trip.interlock + ': ' + trip.message)}</title></line>"
        )
        parts.append(
            f"<text class='trip-label' x='{tx + 3:.2f}' y='{TOP + 10}'>"
            f"▲ TRIP {esc(trip.interlock)}</text>"
        )
    parts.append("</svg>")
    legend = (
        "<p class='legend'>"
        "<span><i class='sw' style='background:#6aa84f'></i>done</span>"
        "<span><i class='sw' style='background:#cccccc'></i>skipped</span>"
        "<span><i class='sw' style='background:#e06666'></i>failed (also marked ✗)</span>"
        "<span><i class='sw' style='background:#f6b26b'></i>interrupted</span>"
        "<span><i class='sw' style='background:#9fc5e8'></i>not ended (…)</span>"
        "<span><i class='sw' style='background:#b4a7d6'></i>the process stopped in it "
        "(✗ crashed)</span>"
        "<span><i class='sw' style='background:#fbe7b0;border-style:dashed'></i>Held "
        "(hatched, marked HELD)</span>"
        "<span class='mark-fault'>▲ TRIP: an interlock tripped</span></p>"
    )
    return f"<div class='scroll'>{''.join(parts)}</div>{legend}"


_FLAG_WORD = {"fault": "⚠ FAULT", "operator": "▶ OPERATOR"}


def _entries_table(record: BatchRecord, only_flagged: bool) -> str:
    rows = []
    for entry in record.timeline:
        if only_flagged and entry.flag is None:
            continue
        word = _FLAG_WORD.get(entry.flag or "", "")
        cls = f" class='{entry.flag}'" if entry.flag else ""
        at = esc(when(entry.at) if entry.at else "-")
        rows.append(
            f"<tr{cls}><td class='nowrap'>{esc(word)}</td><td class='nowrap'>{at}</td>"
            f"<td class='nowrap'>+{entry.offset:.3f} s</td><td>{esc(entry.text)}</td></tr>"
        )
    if not rows:
        return "<p>None.</p>"
    head = "<thead><tr><th>Kind</th><th>Time (UTC)</th><th>Offset</th><th>What</th></tr></thead>"
    return f"<div class='scroll'><table class='events'>{head}{''.join(rows)}</table></div>"


_OUTCOME_WORD = {CONFIRMED: "confirmed", FAILED: "✗ FAILED", UNKNOWN: "⚠ UNKNOWN OUTCOME"}


def _writes(record: BatchRecord) -> str:
    if not record.writes:
        return "<p>No device write.</p>"
    rows = []
    for w in record.writes:
        cls = {UNKNOWN: " class='unknown'", FAILED: " class='fault'"}.get(w.outcome, "")
        said = _OUTCOME_WORD.get(w.outcome, w.outcome)
        if w.error:
            said += f": {w.error}"
        confirmed = when(w.confirmed_at) if w.confirmed_at else "none"
        intent = when(w.intent_at) if w.intent_at else "no intent (reset or restore)"
        rows.append(
            f"<tr{cls}><td><code>{esc(w.tag)}</code></td><td>{esc(w.value)}</td>"
            f"<td>{esc(w.step_id or w.path or '-')}</td><td>{esc(intent)}</td>"
            f"<td>{esc(confirmed)}</td><td>{esc(said)}</td></tr>"
        )
    head = (
        "<thead><tr><th>Tag</th><th>Value</th><th>Step</th><th>Intent (UTC)</th>"
        "<th>Confirmation (UTC)</th><th>Outcome</th></tr></thead>"
    )
    return f"<div class='scroll'><table class='writes'>{head}{''.join(rows)}</table></div>"


def _section(title: str, body: str, anchor: str) -> str:
    return f"<section id='{anchor}'><h2>{esc(title)}</h2>{body}</section>"


def report_html(record: BatchRecord, journal: Path | None = None) -> str:
    """The whole record as one HTML document (see the module docstring)."""
    bad = record.unfinished or record.outcome != "Complete"
    outcome = f"<span class='outcome{' bad' if bad else ''}'>Outcome: {esc(record.outcome)}</span>"
    banners: Sequence[str] = []
    if record.unfinished:
        banners = [
            "<p class='banner'>⚠ UNFINISHED: this batch has no end row; the process stopped "
            "mid-batch (a crash or a power cut). <code>cellctl resume</code> brings it back "
            "Held.</p>"
        ]
    unknown = len(record.unknown_writes)
    if unknown:
        banners = [
            *banners,
            f"<p class='banner'>⚠ {unknown} device write(s) of UNKNOWN OUTCOME: an intent was "
            "recorded and no confirmation.</p>",
        ]
    title = f"Batch {record.batch}: {record.recipe or 'unknown recipe'}"
    where = "" if journal is None else esc(journal_option(journal))
    cause = f" <span>{esc(record.cause)}</span>" if record.cause else ""
    body = [
        f"<header><h1>{esc(title)}</h1><p>{outcome}{cause}</p>{''.join(banners)}</header>",
        _section("Identity", _identity(record), "identity"),
        _section("Parameters", _parameters(record), "parameters"),
        _section("Timeline", _gantt(record), "timeline"),
        _section("Faults and operator actions", _entries_table(record, True), "flagged"),
        _section("Device writes", _writes(record), "writes"),
        _section("Every event", _entries_table(record, False), "events"),
        f"<footer><p>Check this record: <code>cellctl audit verify {esc(record.batch)} "
        f"--head {esc(record.head or '-')}{where}</code></p></footer>",
    ]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )
