"""WordNet 3.0 through NLTK's reader, over the plain data files of Debian's `wordnet-base`
(no NLTK download): `first_synset_offset(word)` is DataComp's text_based rule,
`wordnet.synsets(word)[0].offset()`, with NLTK's own lemmatizer (morphy) and synset order.

NLTK reads a corpus only from its data path (no symbolic links out of it), and its WordNet
reader wants a `lexnames` file that Debian leaves out; a cache folder with the data files
(copies, 30 MB once: NLTK refuses links) plus `lexnames` (WordNet's fixed list of 45
lexicographer files) serves both."""
from __future__ import annotations

import functools
import os
import shutil
import warnings

from pipeline.errors import UserError

WORDNET_DIRS = ["/usr/share/wordnet", "/usr/local/share/wordnet", "/usr/share/wordnet-base"]
FILES = ["data.noun", "data.verb", "data.adj", "data.adv", "index.noun", "index.verb", "index.adj", "index.adv",
         "noun.exc", "verb.exc", "adj.exc", "adv.exc"]
LEXNAMES = ["adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
            "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling",
            "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
            "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
            "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition",
            "verb.communication", "verb.competition", "verb.consumption", "verb.contact", "verb.creation",
            "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative",
            "verb.weather", "adj.ppl"]
POS_NUMBER = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}


def data_folder() -> str:
    """Where WordNet's data files are (WNHOME_DICT, else Debian's places); one line if nowhere."""
    folder = os.environ.get("WNHOME_DICT") or next(
        (d for d in WORDNET_DIRS if os.path.exists(os.path.join(d, "index.noun"))), None)
    if folder is None:
        raise UserError("WordNet's data files not found (Debian: apt-get install wordnet-base; or set WNHOME_DICT)")
    return folder


@functools.lru_cache(maxsize=1)
def reader():
    """NLTK's WordNetCorpusReader over the data files (once per process)."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    source = os.path.realpath(data_folder())
    folder = os.path.join(os.path.expanduser(os.environ.get("XDG_CACHE_HOME", "~/.cache")), "curate", "wordnet")
    os.makedirs(folder, exist_ok=True)
    for name in FILES:
        target = os.path.join(folder, name)
        if not os.path.exists(target):
            _placed(target, lambda tmp, name=name: shutil.copyfile(os.path.join(source, name), tmp))
    lexnames = os.path.join(folder, "lexnames")
    if not os.path.exists(lexnames):
        text = "".join(f"{i:02d}\t{name}\t{POS_NUMBER[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))
        _placed(lexnames, lambda tmp: open(tmp, "w").write(text))
    if folder not in nltk.data.path:
        nltk.data.path.append(folder)

    class DebianWordNet(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):
            return None   # these files are WordNet 3.0, NLTK's own `wordnet`: nothing to map

    with warnings.catch_warnings():   # "multilingual functions are not available": none are used
        warnings.simplefilter("ignore", UserWarning)
        return DebianWordNet(folder, None)


def _placed(target: str, make) -> None:
    """Make `target` through a temporary beside it (workers may do it at once)."""
    tmp = f"{target}.{os.getpid()}.tmp"
    make(tmp)
    os.replace(tmp, target)


@functools.lru_cache(maxsize=1 << 18)
def first_synset_offset(word: str) -> int | None:
    """`wordnet.synsets(word)[0].offset()`, or None when the word has no synset."""
    synsets = reader().synsets(word)
    return synsets[0].offset() if synsets else None


def read_entity_ids(path: str) -> frozenset:
    """An ImageNet-21k synset list as DataComp reads it: one id per line (`n02084071`), the
    number after the first character."""
    from pipeline.core import storage

    try:
        lines = storage.read_text(path).splitlines()
    except (FileNotFoundError, IsADirectoryError):
        raise UserError(f"{path}: entity list not found") from None
    ids = set()
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        if len(line) < 2 or not line[1:].isdigit():
            raise UserError(f"{path}: line {number}: expected a WordNet id such as n02084071, got {line[:40]!r}")
        ids.add(int(line[1:]))
    if not ids:
        raise UserError(f"{path}: no WordNet ids")
    return frozenset(ids)
