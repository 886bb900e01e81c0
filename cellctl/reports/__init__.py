"""The journal's reports, for every surface (the command line, the web view): a batch's record
as text (text.py) and as one HTML page (html.py), the history as a table, lines or JSON, and
the journal read for them (reading.py)."""

from cellctl.reports.html import report_html
from cellctl.reports.reading import history_json, read_history, read_record, report_html_of
from cellctl.reports.text import history_lines, history_table, report_lines, span, when

__all__ = [
    "history_json",
    "history_lines",
    "history_table",
    "read_history",
    "read_record",
    "report_html",
    "report_html_of",
    "report_lines",
    "span",
    "when",
]
