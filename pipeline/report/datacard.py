"""The report's data card section: `datacard.json` (pipeline/datacard.py) as tables."""
from __future__ import annotations

from html import escape

from pipeline.core import storage
from pipeline.report.data import read_json


def datacard_section(run_dir: str) -> str:
    card = read_json(storage.join(run_dir, "datacard.json"))
    if not isinstance(card, dict):
        return ""
    safety, shards = card["safety"], card["shards"]
    faces = safety.get("faces_blurred") or {}
    rows = [("rows in", card["rows"]["input"]), ("rows kept", card["rows"]["kept"]),
            ("input files", len(card["sources"])), ("languages among kept rows", len(card["languages"])),
            ("blocklisted", safety["blocklisted"]), ("dropped by heads", sum(safety["heads"].values())),
            ("images with faces blurred", faces.get("images", 0)), ("taken down", safety["taken_down"]),
            ("in an earlier release", card["exclusions"]["in_earlier_run"]),
            ("tars", shards["count"]), ("samples in tars", shards["samples"])]
    if card.get("metadata"):
        rows.append(("metadata entries matched", card["metadata"]["matched_entries"]))
    body = "".join(f"<tr><td>{escape(name)}</td><td>{value:,}</td></tr>" for name, value in rows)
    notes = []
    if card["exclusions"]["runs"]:
        notes.append("Excludes " + ", ".join(f"<code>{escape(r)}</code>" for r in card["exclusions"]["runs"]) + ".")
    for record in safety["takedowns"]:
        kinds = ", ".join(f"{escape(d['kind'])} ({d['entries']:,})" for d in record["lists"])
        notes.append(f"Takedown {escape(record['stamp'])}: {record['matched']:,} sample(s) by {kinds}; "
                     f"tars rewritten: {escape(' '.join(record['tars_changed']))}.")
    hashes = "".join(f"<tr><td>{escape(name)}</td><td>{tar['samples']:,}</td><td><code>{tar['sha256']}</code></td></tr>"
                     for name, tar in shards["tars"].items())
    details = (f"<details><summary>sha256 of every tar</summary><table><thead><tr><th>tar</th><th>samples</th>"
               f"<th>sha256</th></tr></thead><tbody>{hashes}</tbody></table></details>") if hashes else ""
    return (f'<section id="datacard"><h2>Data card</h2><p class="note"><code>datacard.json</code>: sources, '
            f"rows, drops by stage and reason, languages, safety removals, exclusions, tars.</p>"
            f"<table><tbody>{body}</tbody></table>{''.join(f'<p>{n}</p>' for n in notes)}{details}</section>")
