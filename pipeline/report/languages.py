"""The report's per-language metadata section (MetaCLIP 2 curation): per metadata language
its rows, matched rows, kept rows, threshold t and tail share, and the entry-count curves of
the largest languages before and after balancing."""
from __future__ import annotations

from html import escape

from pipeline.report import svg
from pipeline.report.data import entry_counts, step_records

CURVES = 4   # languages with a before/after chart, the most rows first
BEFORE, AFTER = "#e67e22", "#2e86de"   # the report's dropped and kept colours


def language_rows(run_dir: str) -> list[tuple[str, dict]]:
    """(code, numbers) of the last metadata step with per-language lists, most rows first."""
    records = [(record.get("summary") or {}).get("languages") for _, record in step_records(run_dir, "metadata")]
    records = [r for r in records if r]
    if not records:
        return []
    return sorted(records[-1].items(), key=lambda item: (-item[1]["rows"], item[0]))


def cell(value) -> str:
    if value is None:
        return "<td>-</td>"
    if isinstance(value, str):
        return f'<td class="text">{escape(value)}</td>'
    return f"<td>{value:,}</td>" if isinstance(value, int) else f"<td>{value:.4f}</td>"


def languages_section(run_dir: str) -> str:
    rows = language_rows(run_dir)
    if not rows:
        return ""
    body = "".join("<tr>" + "".join(cell(v) for v in (code, n["rows"], n["matched_rows"], n["kept_rows"],
                                                      n.get("t"), n.get("tail_share"), n.get("matches", 0),
                                                      n.get("kept_matches", 0))) + "</tr>"
                   for code, n in rows)
    table = ("<table><thead><tr><th>language</th><th>rows</th><th>matched rows</th><th>kept rows</th><th>t</th>"
             "<th>tail share</th><th>matches</th><th>matches kept</th></tr></thead>"
             f"<tbody>{body}</tbody></table>")
    charts = []
    for code, _ in rows[:CURVES]:
        series = entry_counts(run_dir, language=code)
        if series:
            charts.append(svg.loglog_lines([("before balancing", series["before"], BEFORE),
                                            ("after balancing", series["after"], AFTER)],
                                           f"{code}: entry counts, rank vs count", "entry rank", "matched rows"))
    note = ('<p class="note">One metadata list per language; a row is matched against its detected '
            "language's list. English uses t; every other language the t that gives it English's tail "
            "share (MetaCLIP 2). Matches: (row, entry) pairs before and after balancing.</p>")
    return (f'<section id="languages"><h2>Metadata per language</h2>{note}{table}'
            f"{''.join(charts)}</section>")
