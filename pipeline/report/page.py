"""`write_report(run_dir)`: RUN_DIR/report.html, one self-contained page (inline CSS, inline
SVG plots, images as data: URIs); each section appears only when the run has its data."""
from __future__ import annotations

import json
from html import escape
from pathlib import Path

from pipeline.core import storage
from pipeline.errors import UserError
from pipeline.report import data, datacard, decontam, languages, samples, svg, text_spotting

KEPT, DROPPED, OTHER = "#2e86de", "#e67e22", "#8e44ad"
CSS = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1000px;color:#222;padding:0 16px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4}
td.text,th:first-child{text-align:left}.note{color:#666;font-size:13px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:10px}
.pairs{display:grid;grid-template-columns:repeat(auto-fill,minmax(350px,1fr));gap:10px}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:4px}
figure{margin:0;border:1px solid #ddd;padding:5px;font-size:12px;background:#fafafa}
figure img{display:block;margin:0 auto 4px;max-width:160px;max-height:160px}
.partial{background:#fff4e5;border:1px solid #e67e22;padding:8px}
ul.warnings{color:#b34700}figcaption .why{color:#b34700;display:block}
pre{font-size:12px;background:#f6f6f6;padding:8px;overflow:auto}
"""
# Sets data-* attributes on <html> once loaded: how many images decoded and plots have a box
# (the report test reads them from Chromium's --dump-dom).
CHECK_SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var plots = Array.prototype.slice.call(document.querySelectorAll("svg.plot"));
  var root = document.documentElement;
  root.setAttribute("data-images", images.length);
  root.setAttribute("data-images-decoded", images.filter(function (i) {
    return i.complete && i.naturalWidth > 0; }).length);
  root.setAttribute("data-plots", plots.length);
  root.setAttribute("data-plots-drawn", plots.filter(function (p) {
    var box = p.getBoundingClientRect(); return box.width > 0 && box.height > 0; }).length);
});
"""
CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'")


def write_report(run_dir: str | Path) -> str:
    """(Re)write RUN_DIR/report.html from what the run folder holds; returns its path. An
    unfinished run (running or stopped) gets a partial report: the steps done so far, the
    unfinished step's funnel from its finished parts, and a notice saying so."""
    run_dir = storage.absolute(run_dir)
    summary = data.read_json(storage.join(run_dir, "summary.json"))
    status = None
    if not isinstance(summary, dict) or not summary.get("stages"):
        summary, status = partial_summary(run_dir)
    html = render(run_dir, summary, status)
    path = storage.join(run_dir, "report.html")
    storage.write_text(path, html)
    return path


def partial_summary(run_dir: str) -> tuple[dict, dict]:
    """A summary of an unfinished run (its steps so far, the unfinished one from its finished
    parts, marked `partial`), and the run's status (`curate status`)."""
    from pipeline.status import run_status

    try:
        status = run_status(run_dir)
    except UserError:
        raise UserError(f"{run_dir}: not a run folder (no summary.json, config.json or steps/)") from None
    stages = [{"name": s["name"], "rows_in": s["rows_in"], "rows_out": s["rows_out"], "dropped": s["dropped"],
               "seconds": s["seconds"] or 0.0, "partial": s["state"] != "done"}
              for s in status["steps"] if s["state"] in ("done", "running", "stopped")]
    if not stages:
        raise UserError(f"{run_dir}: no step has begun yet; nothing to report")
    summary = {"input_rows": stages[0]["rows_in"], "kept_rows": stages[-1]["rows_out"], "stages": stages,
               "sources": [], "warnings": []}
    return summary, status


def partial_section(status: dict | None) -> str:
    """The notice on a report of an unfinished run."""
    if status is None:
        return ""
    total = status["steps_total"] if status["steps_total"] is not None else "?"
    text = f"the run is {status['state']}, {status['steps_done']} of {total} steps done"
    current = next((s for s in status["steps"] if s["index"] == status["current"]), None)
    if current is not None and current["phase"] is not None:
        phase = next(p for p in current["phases"] if p["name"] == current["phase"])
        text += (f"; step {current['name']} ({current['phase']}): {phase['parts_done']:,} of "
                 f"{phase['parts_total']:,} parts done, its row counts are those of the finished parts")
    return (f'<section id="partial"><p class="partial"><b>Partial report</b>: {escape(text)}. Sections that '
            f"need a finished run are left out; run <code>curate report</code> again for newer numbers.</p>"
            "</section>")


def render(run_dir: str, summary: dict, status: dict | None = None) -> str:
    stages = summary["stages"]
    names = [s["name"] for s in stages]
    sections = [partial_section(status), warnings_section(summary), funnel_section(summary),
                sources_section(summary),
                throughput_section(stages), download_section(stages),
                language_section(run_dir), clip_section(run_dir, stages), text_spotting.text_mask_section(run_dir),
                entries_section(run_dir),
                languages.languages_section(run_dir),
                grid_section("kept", "Sample of kept pairs", samples.kept_samples(run_dir)),
                grid_section("dropped", "Sample of dropped pairs (with images)",
                             samples.dropped_samples(run_dir, names)),
                pairs_section("semantic", "Semantic duplicates removed, beside the pair kept",
                              samples.duplicate_pairs(run_dir)),
                decontam.decontaminate_section(run_dir), datacard.datacard_section(run_dir),
                train_section(summary), ablation_section(run_dir), captions_section(run_dir),
                config_section(run_dir)]
    kept, total = summary.get("kept_rows", 0), summary.get("input_rows", 0)
    share = f" ({kept / total:.1%})" if total else ""
    outcome = f"kept{share}" if status is None else f"so far, after {escape(stages[-1]['name'])} (partial)"
    title = "curate run report" if status is None else "curate run report (partial)"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f"<title>curate report: {escape(storage.name(run_dir))}</title><style>{CSS}</style></head><body>"
            f"<h1>{title}: {escape(storage.name(run_dir))}</h1>"
            f'<p>{total:,} input rows &rarr; <b>{kept:,}</b> {outcome}. '
            f'<span class="note">{escape(run_dir)}</span></p>'
            f"{''.join(s for s in sections if s)}<script>{CHECK_SCRIPT}</script></body></html>")


def section(key: str, title: str, *content: str) -> str:
    return f'<section id="{key}"><h2>{escape(title)}</h2>{"".join(content)}</section>'


def table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def cell(value) -> str:
    """A table cell: numbers right-aligned (the default), text left-aligned."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f'<td class="text">{escape(str(value))}</td>'
    shown = f"{value:,}" if isinstance(value, int) else svg.fmt_number(value)
    return f"<td>{shown}</td>"


def reasons_text(dropped: dict) -> str:
    return ", ".join(f"{reason} {count:,}" for reason, count in dropped.items()) or "-"


def throughput(stage: dict) -> float | None:
    seconds = 0 if stage.get("partial") else stage.get("seconds") or 0
    return stage["rows_in"] / seconds if seconds > 0 else None


def warnings_section(summary: dict) -> str:
    warnings = summary.get("warnings") or []
    if not warnings:
        return ""
    items = "".join(f"<li>{escape(w)}</li>" for w in warnings)
    return section("warnings", "Warnings", f'<ul class="warnings">{items}</ul>')


def sources_section(summary: dict) -> str:
    """One row per input file: rows read, and for archives what the reader counted."""
    sources = summary.get("sources") or []
    if not sources:
        return ""
    keys = sorted({k for s in sources for k in s} - {"path", "format", "rows"})
    body = [[s["path"], s["format"], s["rows"], *[s.get(k, "-") for k in keys]] for s in sources[:MAX_SOURCE_ROWS]]
    more = (f'<p class="note">{len(sources) - MAX_SOURCE_ROWS:,} more input files in summary.json</p>'
            if len(sources) > MAX_SOURCE_ROWS else "")
    headers = ["input file", "format", "rows", *[k.replace("_", " ") for k in keys]]
    return section("sources", "Input files", table(headers, body), more)


MAX_SOURCE_ROWS = 200


def funnel_section(summary: dict) -> str:
    stages = summary["stages"]
    labels = [f"{s['name']} (partial)" if s.get("partial") else s["name"] for s in stages]
    rows = [(label, [s["rows_out"], s["rows_in"] - s["rows_out"]]) for label, s in zip(labels, stages)]
    chart = svg.hbar_chart(rows, [KEPT, DROPPED], "rows per stage", names=["rows out", "dropped"],
                           value_text=lambda i: f"{stages[i]['rows_out']:,} / {stages[i]['rows_in']:,}")
    body = [[label, s["rows_in"], s["rows_out"], reasons_text(s["dropped"]),
             f"{s['rows_out'] / s['rows_in']:.1%}" if s["rows_in"] else "-",
             "-" if s.get("partial") else float(s.get("seconds", 0))]
            for label, s in zip(labels, stages)]
    return section("funnel", "Funnel: rows per stage", chart,
                   table(["stage", "rows in", "rows out", "dropped (reason count)", "kept", "seconds"], body))


def throughput_section(stages: list[dict]) -> str:
    rates = [(s["name"], throughput(s)) for s in stages]
    rates = [(name, rate) for name, rate in rates if rate is not None]
    if not rates:
        return ""
    chart = svg.hbar_chart([(name, [rate]) for name, rate in rates], [KEPT], "rows per second per stage",
                           value_text=lambda i: f"{rates[i][1]:,.0f} rows/s")
    return section("throughput", "Throughput per stage (rows in / seconds)", chart)


def download_section(stages: list[dict]) -> str:
    stage = next((s for s in stages if s["name"] == "download"), None)
    if stage is None:
        return ""
    errors = sorted(stage["dropped"].items(), key=lambda rc: (-rc[1], rc[0]))
    rows_in = stage["rows_in"] or 1
    note = (f'<p class="note">{stage["rows_out"]:,} of {stage["rows_in"]:,} downloads succeeded '
            f'({stage["rows_out"] / rows_in:.1%}).</p>')
    if not errors:
        return section("download", "Download errors", note)
    chart = svg.hbar_chart([(reason, [n]) for reason, n in errors], [DROPPED], "download errors by reason")
    rows = [[reason, n, f"{n / rows_in:.1%}"] for reason, n in errors]
    return section("download", "Download errors", note, chart, table(["reason", "rows", "of downloads"], rows))


def language_section(run_dir: str) -> str:
    counts = data.language_counts(run_dir)
    if not counts:
        return ""
    chart = svg.hbar_chart([(lang, [n]) for lang, n in counts], [KEPT], "kept rows per language")
    return section("languages", "Languages of kept rows", chart)


def clip_section(run_dir: str, stages: list[dict]) -> str:
    scores = data.clip_scores(run_dir)
    if scores is None or len(scores.kept) + len(scores.dropped) == 0:
        return ""
    marks = [scores.threshold] if scores.threshold is not None else []
    edges = data.bin_edges([scores.kept, scores.dropped], marks)
    series = [("kept", data.histogram_counts(scores.kept, edges), KEPT)]
    if len(scores.dropped):
        series.append(("scored, not kept", data.histogram_counts(scores.dropped, edges), DROPPED))
    vline = (scores.threshold, f"threshold {scores.threshold:.3f}") if marks else None
    chart = svg.histogram(edges, series, "CLIP score histogram", "CLIP score (cosine similarity)", vline)
    stage = next((s for s in stages if s["name"] == "clip_score"), {"dropped": {}})
    unseen = sum(stage["dropped"].values()) - len(scores.dropped)
    note = (f'<p class="note">filter: {escape(scores.filter)}. The scores of {unseen:,} rows dropped by '
            f"clip_score are not stored in the run folder and are not shown.</p>" if unseen > 0 else "")
    return section("clip", "CLIP scores", chart, note)


def entries_section(run_dir: str) -> str:
    series = data.entry_counts(run_dir)
    if not series:
        return ""
    chart = svg.loglog_lines([("before balancing", series["before"], DROPPED),
                              ("after balancing", series["after"], KEPT)],
                             "metadata entry counts, rank vs count", "entry rank", "matched rows")
    return section("entries", "Metadata entry counts before and after balancing", chart)


def figure(sample: samples.Sample) -> str:
    return (f'<figure><img src="{sample.image}" alt="{escape(sample.caption)}"><figcaption>'
            f'{escape(sample.caption)}<span class="why">{escape(sample.note)}</span></figcaption></figure>')


def grid_section(key: str, title: str, items: list[samples.Sample]) -> str:
    if not items:
        return ""
    return section(key, title, f'<div class="grid">{"".join(figure(s) for s in items)}</div>')


def pairs_section(key: str, title: str, pairs: list[tuple[samples.Sample, samples.Sample]]) -> str:
    if not pairs:
        return ""
    rows = "".join(f'<div class="pair">{figure(removed)}{figure(kept)}</div>' for removed, kept in pairs)
    return section(key, title, f'<div class="pairs">{rows}</div>')


def train_section(summary: dict) -> str:
    train = summary.get("train")
    if not isinstance(train, dict) or not train:
        return ""
    return section("train", "Training", table(["key", "value"], [[k, v] for k, v in sorted(train.items())]))


def ablation_section(run_dir: str) -> str:
    """`ablation.json` (`curate demo --ablate`): each filter removed in turn, trained for the
    same steps, against the full pipeline."""
    ablation = data.read_json(storage.join(run_dir, "ablation.json"))
    if not isinstance(ablation, dict) or not ablation.get("rows"):
        return ""
    full = ablation["rows"][0]["top1"]
    body = [[r["variant"], int(r["kept_rows"]), float(r["top1"]), f"{r['top1'] - full:+.3f}"]
            for r in ablation["rows"]]
    note = (f'<p class="note">Zero-shot top-1 on the same held-out set after {ablation["steps"]} '
            "training steps each; a drop below the full pipeline is what the filter buys.</p>")
    return section("ablation", "Ablation: each filter removed in turn", note,
                   table(["variant", "kept pairs", "zero-shot top-1", "vs full"], body))


def captions_section(run_dir: str) -> str:
    """`captions.json` (`curate demo`): the same shards trained for the same steps with the
    original captions, the synthetic ones (recaption) and their mix."""
    captions = data.read_json(storage.join(run_dir, "captions.json"))
    if not isinstance(captions, dict) or "mix" not in captions:
        return ""
    realized = {name: (captions.get(f"{name}_realized") or {}).get("synthetic", 0.0) for name in ("synthetic", "mix")}
    body = [[name, float(captions[name]), f"{realized.get(name, 0.0):.0%}"]
            for name in ("original", "synthetic", "mix")]
    note = (f'<p class="note">Zero-shot top-1 on the same held-out set after {captions["steps"]} training '
            "steps each, on the same kept pairs; the mix samples a caption per sample per epoch.</p>")
    return section("captions", "Original, synthetic and mixed captions", note,
                   table(["captions", "zero-shot top-1", "synthetic captions drawn"], body))


def config_section(run_dir: str) -> str:
    config = data.read_json(storage.join(run_dir, "config.json"))
    if not config:
        return ""
    text = escape(json.dumps(config, indent=1, sort_keys=True))
    return section("config", "Config", f"<details><summary>config.json</summary><pre>{text}</pre></details>")
