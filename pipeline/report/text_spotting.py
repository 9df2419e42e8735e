"""The report's text spotting section (text_mask, T-MARS): how much of each image is text,
how much of its CLIP score the text held, and removed pairs beside their masked image
(thumbnails made by the step, in its stats record)."""
from __future__ import annotations

from html import escape

from pipeline.report import svg
from pipeline.report.data import step_records


def text_mask_section(run_dir: str) -> str:
    records = [record.get("text_mask") for _, record in step_records(run_dir, "text_mask")]
    records = [r for r in records if r]
    if not records:
        return ""
    r = records[-1]
    rule = rule_of(r)
    area = svg.histogram(r["area_edges"], [("rows with text", r["area_counts"], "#2e86de")],
                         "text area of images with text", "fraction of the image covered by text boxes")
    drop_line = (r["max_drop"], f"max_drop {r['max_drop']:g}") if r.get("max_drop") is not None else None
    drop = svg.histogram(r["drop_edges"], [("rows with text", r["drop_counts"], "#e67e22")],
                         "score drop when the text is masked", "clip_score - masked_clip_score", vline=drop_line)
    return (f'<section id="text_mask"><h2>Text spotting (T-MARS)</h2>'
            f'<p class="note">{r["with_text"]:,} of {r["rows"]:,} images have text; each text box is filled '
            f"with the mean colour of its border and the image scored again. {rule}</p>"
            f"{area}{drop}{example_pairs(r.get('examples') or [])}</section>")


def rule_of(r: dict) -> str:
    if r.get("filter") == "top_fraction":
        return (f"Kept the top {r['top_fraction']:.0%} of all rows by masked score (threshold "
                f"{r['threshold']:.3f}); the rest dropped as <code>text_spotting</code>.")
    if r.get("filter") == "threshold":
        rule = f"masked_clip_score below {r['threshold']:g}"
        if r.get("max_drop") is not None:
            rule += f" or a drop above {r['max_drop']:g}"
        return f"Rows with text dropped as <code>text_spotting</code> when {rule}."
    return "Scored only (filter: none)."


def example_pairs(examples: list[dict]) -> str:
    pairs = []
    for e in examples:
        if not e.get("image") or not e.get("masked_image"):
            continue
        why = f"clip_score {e['clip_score']:.3f} &rarr; {e['masked_clip_score']:.3f} masked"
        pairs.append(f'<div class="pair"><figure><img src="{e["image"]}" alt="removed image"><figcaption>'
                     f'{escape(e.get("text") or "")}<span class="why">removed: {why}</span></figcaption></figure>'
                     f'<figure><img src="{e["masked_image"]}" alt="masked image"><figcaption>text masked'
                     f'<span class="why">text area {e["text_area"]:.1%}</span></figcaption></figure></div>')
    return f'<h3>Removed pairs, beside their masked image</h3><div class="pairs">{"".join(pairs)}</div>' \
        if pairs else ""
