"""The query entries of the metadata stage: WordNet lemmas, frequent words, user files.

Sources, in the order given, concatenated with duplicates removed (first one wins):
`wordnet` (Debian's wordnet-base data files), `wordfreq` (the top-N words of the `wordfreq`
package), or a file path: a JSON array of strings (MetaCLIP's metadata.json) or one entry
per line.
"""
from __future__ import annotations

import json
import os

from pipeline.core import storage
from pipeline.errors import UserError

WORDNET_DIRS = ["/usr/share/wordnet", "/usr/local/share/wordnet", "/usr/share/wordnet-base"]
WORDNET_INDEXES = ["index.noun", "index.verb", "index.adj", "index.adv"]


def load_entries(sources: list[str], wordfreq_top: int = 1_000_000, wordfreq_lang: str = "en") -> list[str]:
    entries: dict[str, None] = {}
    for source in sources:
        for entry in entries_from(source, wordfreq_top, wordfreq_lang):
            entry = entry.strip()
            if entry:
                entries.setdefault(entry, None)
    if not entries:
        raise UserError(f"metadata.entries: the sources {sources} gave no entries")
    return list(entries)


def entries_from(source: str, wordfreq_top: int, wordfreq_lang: str) -> list[str]:
    name, _, arg = source.partition(":")
    if name == "wordnet" and not arg:
        return wordnet_lemmas()
    if name == "wordfreq":
        return frequent_words(int(arg) if arg.isdigit() else wordfreq_top, wordfreq_lang)
    return entries_file(source)


def wordnet_lemmas() -> list[str]:
    """Every lemma of WordNet 3.0 (nouns, verbs, adjectives, adverbs), underscores as spaces."""
    folder = os.environ.get("WNHOME_DICT") or next(
        (d for d in WORDNET_DIRS if os.path.exists(os.path.join(d, "index.noun"))), None)
    if folder is None:
        raise UserError("metadata.entries: 'wordnet' needs WordNet's data files "
                        "(Debian: apt-get install wordnet-base; or set WNHOME_DICT)")
    lemmas = []
    for index in WORDNET_INDEXES:
        with open(os.path.join(folder, index), encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line and not line.startswith(" "):
                    lemmas.append(line.split(" ", 1)[0].replace("_", " "))
    return lemmas


def frequent_words(top: int, lang: str) -> list[str]:
    from wordfreq import top_n_list

    try:
        return top_n_list(lang, top, wordlist="large")
    except LookupError:
        return top_n_list(lang, top)


def entries_file(path: str) -> list[str]:
    try:
        text = storage.read_bytes(path).decode("utf-8", errors="replace")
    except (FileNotFoundError, IsADirectoryError):
        raise UserError(f"{path}: metadata entries file not found (or use wordnet, wordfreq)") from None
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not all(isinstance(x, str) for x in data):
            raise UserError(f"{path}: expected a JSON array of strings")
        return data
    return text.splitlines()
