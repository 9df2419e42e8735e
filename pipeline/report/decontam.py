"""The report's decontamination section: per evaluation set its images and the pool rows
removed, and example pairs (the pool image beside the evaluation image it copies; the
pool image from the download step's parts, the evaluation thumbnail from the step record)."""
from __future__ import annotations

from html import escape

import pyarrow.compute as pc

from pipeline.report.data import phase_files, read_columns, step_records
from pipeline.report.samples import thumbnail_uri


def decontaminate_section(run_dir: str) -> str:
    records = [record.get("decontaminate") for _, record in step_records(run_dir, "decontaminate")]
    records = [r for r in records if r]
    if not records:
        return ""
    record = records[-1]
    rows = "".join(f"<tr><td>{escape(s['name'])}</td><td>{s['images']:,}</td><td>{s['removed']:,}</td>"
                   f"<td>{'cache' if s.get('cached') else 'computed'}</td></tr>" for s in record["sets"])
    how = f"perceptual hash within {record['phash_distance']} bits of the image or a 5-10% crop"
    if record.get("embedding_threshold") is not None:
        how += f", or {escape(str(record['model']))} image embedding cosine &ge; {record['embedding_threshold']}"
    table = ("<table><thead><tr><th>evaluation set</th><th>images</th><th>pool rows removed</th>"
             f"<th>index</th></tr></thead><tbody>{rows}</tbody></table>")
    return (f'<section id="decontaminate"><h2>Evaluation-set decontamination</h2>'
            f'<p class="note">Dropped as <code>eval_duplicate</code>: {how}.</p>{table}'
            f"{example_pairs(run_dir, record.get('examples') or [])}</section>")


def example_pairs(run_dir: str, examples: list[dict]) -> str:
    if not examples:
        return ""
    uids = sorted({e["uid"] for e in examples})
    found = read_columns(phase_files(run_dir, "download", "data"), ["uid", "text", "jpg"],
                         filter=pc.field("uid").isin(uids))
    pool = {row["uid"]: row for row in found.to_pylist()} if found is not None and "jpg" in found.column_names else {}
    pairs = []
    for e in examples:
        row = pool.get(e["uid"])
        image = thumbnail_uri(row["jpg"]) if row else None
        if image is None or not e.get("eval_image"):
            continue
        score = f"{e['method']} {'bits' if e['method'] == 'phash' else 'cosine'} {e['score']:g}"
        pairs.append(f'<div class="pair"><figure><img src="{image}" alt="pool image"><figcaption>'
                     f'{escape(row.get("text") or "")}<span class="why">pool: removed ({escape(score)})</span>'
                     f'</figcaption></figure><figure><img src="{e["eval_image"]}" alt="evaluation image">'
                     f'<figcaption>{escape(e.get("key", ""))}<span class="why">{escape(e["set"])}</span>'
                     f"</figcaption></figure></div>")
    return f'<div class="pairs">{"".join(pairs)}</div>' if pairs else ""
