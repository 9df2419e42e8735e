"""Bytes of an HTML page -> text, decoded as a browser decodes it.

`decode_html(body, http_charset)` follows the HTML Standard's encoding sniffing
(https://html.spec.whatwg.org/multipage/parsing.html#determining-the-character-encoding) and
the WHATWG Encoding Standard (https://encoding.spec.whatwg.org/):

1. a byte-order mark: UTF-8 (EF BB BF), UTF-16BE (FE FF) or UTF-16LE (FF FE) wins over
   everything and is dropped; no other BOM is one (FF FE 00 00 is UTF-16LE, as in browsers);
2. the HTTP charset, a bare label or a whole Content-Type value (quotes stripped);
3. the spec's prescan of the first 1024 bytes: `<meta charset>`, or `<meta content="..;
   charset=..">` with `http-equiv="content-type"`; comments and other tags' attribute values
   are skipped; a UTF-16 label there means UTF-8, x-user-defined means windows-1252; failing
   those, a leading `<?xml ... encoding="..">`;
4. otherwise UTF-8 when the whole body is valid UTF-8 (a cut-off last character allowed),
   else windows-1252, the browsers' default.

Labels and encoding names are the Standard's, from `webencodings` (its `LABELS`): a label the
Standard does not know (utf-32, cp437, latin-1, ...) is ignored as browsers ignore it, and its
aliases hold (latin1 / ascii -> windows-1252, gb2312 -> gbk, x-sjis -> shift_jis, ...).

An encoding decodes with the Python codec `webencodings` names for it (shift_jis as cp932,
big5 as big5hkscs, euc-kr as cp949, ...), errors as U+FFFD, patched where that codec reads
the text of real pages otherwise than the Standard (tests/unit/test_charsets.py shows each):

- gbk as gb18030 (pages labelled gb2312 or gbk that hold GB18030 text), and the byte 0x80 as
  the euro sign (Windows' cp936 writes it so);
- big5: A3E1 as the euro sign (Windows' cp950), and the Standard's ‧ ～ ￥ ￡ ￠ where
  big5hkscs reads • ∼ ¥ £ ¢;
- euc-jp through the Standard's JIS X 0208 index, which is Windows': ～ (not 〜), NEC's ① ...;
- koi8-u: AE and BE as KOI8-RU's ў Ў (Belarusian), not box drawings.
"""
from __future__ import annotations

import codecs
import re
from functools import lru_cache

import webencodings

PRESCAN_BYTES = 1024
_FFFD = "\ufffd"
_WHITESPACE = b"\t\n\x0c\r "

_BOMS = ((codecs.BOM_UTF8, "utf-8"), (b"\xfe\xff", "utf-16be"), (b"\xff\xfe", "utf-16le"))


def get_encoding(label: str | bytes | None) -> str | None:
    """The Standard's "get an encoding": ' ISO-8859-1' -> 'windows-1252'; None for no label."""
    if label is None:
        return None
    if isinstance(label, bytes):
        label = label.decode("latin-1")
    return webencodings.LABELS.get(webencodings.ascii_lower(label.strip(" \t\n\x0c\r")))


# --- HTTP ---------------------------------------------------------------------------------

_HTTP_WHITESPACE = " \t\n\r"


def _quoted_string(value: str, pos: int) -> tuple[str, int]:
    """Fetch's "collect an HTTP quoted string" from the '"' at `pos`: (its content, end)."""
    out = []
    pos += 1
    while pos < len(value):
        char = value[pos]
        pos += 1
        if char == '"':
            break
        if char == "\\" and pos < len(value):
            char = value[pos]
            pos += 1
        out.append(char)
    return "".join(out), pos


def http_charset_label(value: str | None) -> str | None:
    """The charset label of a Content-Type value ('text/html; charset="gbk"' -> 'gbk'), or of a
    bare charset as the crawler or fastwarc hands it over (fastwarc keeps the quotes)."""
    if value is None:
        return None
    if not any(char in value for char in "/;="):
        value = value.strip(_HTTP_WHITESPACE)
        return _quoted_string(value, 0)[0] if value.startswith('"') else value
    # The parameters as WHATWG MIME Sniffing's "parse a MIME type" reads them; first one wins.
    pos = value.find(";")
    while 0 <= pos < len(value):
        pos += 1
        while pos < len(value) and value[pos] in _HTTP_WHITESPACE:
            pos += 1
        end = pos
        while end < len(value) and value[end] not in ";=":
            end += 1
        name, pos = value[pos:end].lower(), end
        if pos >= len(value) or value[pos] == ";":
            continue
        pos += 1
        if value.startswith('"', pos):
            parameter, pos = _quoted_string(value, pos)
            pos = value.find(";", pos)
        else:
            end = value.find(";", pos)
            parameter = value[pos:end if end >= 0 else len(value)].rstrip(_HTTP_WHITESPACE)
            pos = end
        if name == "charset" and parameter:
            return parameter
    return None


# --- the prescan (HTML Standard, "prescan a byte stream to determine its encoding") ----------

def _get_attribute(data: bytes, pos: int) -> tuple[int, bytes | None, bytes]:
    """(position after it, lowercased name or None when there is none, value); IndexError at EOF."""
    while data[pos] in b"\t\n\x0c\r /":
        pos += 1
    if data[pos] == 0x3E:
        return pos, None, b""
    start = pos
    while True:
        byte = data[pos]
        if byte == 0x3D and pos > start:
            name = data[start:pos].lower()
            pos += 1
            break
        if byte in _WHITESPACE:
            name = data[start:pos].lower()
            while data[pos] in _WHITESPACE:
                pos += 1
            if data[pos] != 0x3D:
                return pos, name, b""
            pos += 1
            break
        if byte in b"/>":
            return pos, data[start:pos].lower(), b""
        pos += 1
    while data[pos] in _WHITESPACE:
        pos += 1
    byte = data[pos]
    if byte in b"\"'":
        end = data.index(byte, pos + 1)  # ValueError: out of bytes
        return end + 1, name, data[pos + 1:end].lower()
    if byte == 0x3E:
        return pos, name, b""
    start = pos
    while data[pos] not in b"\t\n\x0c\r >":
        pos += 1
    return pos, name, data[start:pos].lower()


def _charset_from_content(value: bytes) -> str | None:
    """The HTML Standard's "extracting a character encoding from a meta element"."""
    pos = 0
    while True:
        pos = value.find(b"charset", pos)
        if pos < 0:
            return None
        pos += 7
        while pos < len(value) and value[pos] in _WHITESPACE:
            pos += 1
        if pos < len(value) and value[pos] == 0x3D:
            break
    pos += 1
    while pos < len(value) and value[pos] in _WHITESPACE:
        pos += 1
    if pos >= len(value):
        return None
    if value[pos] in b"\"'":
        end = value.find(value[pos:pos + 1], pos + 1)
        return get_encoding(value[pos + 1:end]) if end >= 0 else None
    end = pos
    while end < len(value) and value[end] not in b"\t\n\x0c\r ;":
        end += 1
    return get_encoding(value[pos:end])


def _meta_encoding(data: bytes, pos: int) -> tuple[int, str | None]:
    """The encoding a `<meta` tag whose attributes start at `pos` declares, and where it ends."""
    seen: set[bytes] = set()
    got_pragma = False
    need_pragma: bool | None = None
    charset: str | None = None
    while True:
        pos, name, value = _get_attribute(data, pos)
        if name is None:
            break
        if name in seen:
            continue
        seen.add(name)
        if name == b"http-equiv":
            got_pragma = got_pragma or value == b"content-type"
        elif name == b"content":
            found = _charset_from_content(value)
            if found is not None and need_pragma is None:
                charset, need_pragma = found, True
        elif name == b"charset":
            charset, need_pragma = get_encoding(value), False
    if need_pragma is None or (need_pragma and not got_pragma) or charset is None:
        return pos, None
    if charset in ("utf-16le", "utf-16be"):
        return pos, "utf-8"
    return pos, "windows-1252" if charset == "x-user-defined" else charset


def _is_tag_start(data: bytes, pos: int) -> bool:
    following = data[pos + 1:pos + 3]
    if following[:1] == b"/":
        following = following[1:]
    return following[:1].isalpha()


def _scan(data: bytes) -> str | None:
    pos = 0
    while pos < len(data):
        if data.startswith(b"<!--", pos):
            pos = data.index(b"-->", pos + 2) + 2
        elif data[pos:pos + 5].lower() == b"<meta" and data[pos + 5] in b"\t\n\x0c\r /":
            pos, encoding = _meta_encoding(data, pos + 5)
            if encoding is not None:
                return encoding
        elif data[pos] == 0x3C and _is_tag_start(data, pos):
            pos += 1
            while data[pos] not in b"\t\n\x0c\r >":
                pos += 1
            name: bytes | None = b""
            while name is not None:
                pos, name, _ = _get_attribute(data, pos)
        elif data.startswith((b"<!", b"</", b"<?"), pos):
            pos = data.index(b">", pos + 1)
        pos += 1
    return None


def _xml_declared_encoding(data: bytes) -> str | None:
    """The HTML Standard's "get an XML encoding": `<?xml version="1.0" encoding="...">`."""
    end = data.find(b">")
    if not data.startswith(b"<?xml") or end < 0:
        return None
    declaration = data[:end]
    pos = declaration.find(b"encoding")
    if pos < 0:
        return None
    pos += 8
    while pos < end and declaration[pos] <= 0x20:
        pos += 1
    if pos >= end or declaration[pos] != 0x3D:
        return None
    pos += 1
    while pos < end and declaration[pos] <= 0x20:
        pos += 1
    if pos >= end or declaration[pos] not in b"\"'":
        return None
    close = declaration.find(declaration[pos:pos + 1], pos + 1)
    if close < 0 or any(byte <= 0x20 for byte in declaration[pos + 1:close]):
        return None
    label = declaration[pos + 1:close]
    encoding = get_encoding(label)
    return "utf-8" if encoding in ("utf-16le", "utf-16be") else encoding


def prescan(data: bytes) -> str | None:
    """The encoding the HTML Standard's prescan finds in `data` (give it the first 1024 bytes):
    a `<meta>` declaration, else a leading XML declaration; None when there is neither."""
    if data.startswith(b"<\x00?\x00x\x00"):
        return "utf-16le"
    if data.startswith(b"\x00<\x00?\x00x"):
        return "utf-16be"
    try:
        encoding = _scan(data)
    except (IndexError, ValueError):  # out of bytes
        encoding = None
    return encoding if encoding is not None else _xml_declared_encoding(data)


# --- decoders ---------------------------------------------------------------------------------

def _euro_errors(euro: bytes):
    """Error handler: `euro` (a code the codec lacks) is the euro sign, anything else U+FFFD."""
    def handler(error: UnicodeDecodeError) -> tuple[str, int]:
        if error.object.startswith(euro, error.start):
            return "\u20ac", error.start + len(euro)
        return _FFFD, error.end
    return handler


codecs.register_error("curate-gbk-euro", _euro_errors(b"\x80"))
codecs.register_error("curate-big5-euro", _euro_errors(b"\xa3\xe1"))


def _replacer(mapping: dict[int, int]):
    """text -> text with these characters changed (one pass; quick when there are none)."""
    table = {chr(old): chr(new) for old, new in mapping.items()}
    pattern = re.compile("[" + "".join(re.escape(char) for char in table) + "]")
    return lambda text: pattern.sub(lambda match: table[match.group()], text)


# Where big5hkscs reads a Big5 code otherwise than the Standard's index.
_BIG5_INDEX = _replacer({0x2022: 0x2027, 0x223C: 0xFF5E, 0xA5: 0xFFE5, 0xA3: 0xFFE1, 0xA2: 0xFFE0})
# KOI8-U's AE and BE, which Python's koi8_u reads as box drawings.
_KOI8_RU = {0x255D: "\u045e", 0x256C: "\u040e"}


def _decode_big5(data: bytes) -> str:
    return _BIG5_INDEX(data.decode("big5hkscs", "curate-big5-euro"))


# EUC-JP: half-width katakana, JIS X 0212, JIS X 0208, then malformed sequences (a lead byte
# takes a non-ASCII byte that cannot follow it along into its U+FFFD), over latin-1 text.
_EUC_JP_TOKEN = re.compile("\x8e[\xa1-\xdf]|\x8f[\xa1-\xfe][\xa1-\xfe]|[\xa1-\xfe][\xa1-\xfe]"
                           "|\x8f[\xa1-\xfe][\x80-\xa0\xff]?|[\x8e\x8f\xa1-\xfe][\x80-\xff]?"
                           "|[\x80-\xff]")
# What Python's euc_jp reads otherwise than the Standard's JIS X 0208 index (JIS mappings
# where the index has Windows'), or cannot read (NEC row 13, the IBM rows: U+FFFD). In a text
# without any of these, Python's output is the Standard's.
_EUC_JP_SUSPECT = re.compile("[\u301c\u2016\u2212\xa2\xa3\xac\ufffd]")


@lru_cache(maxsize=None)
def _euc_jp_char(token: str) -> str:
    raw = token.encode("latin-1")
    if len(raw) == 2 and raw[0] == 0x8E and 0xA1 <= raw[1] <= 0xDF:
        return chr(0xFF61 - 0xA1 + raw[1])
    try:
        if len(raw) == 3 and raw[0] == 0x8F and 0xA1 <= min(raw[1:]) and max(raw[1:]) <= 0xFE:
            return raw.decode("euc_jp")
        if len(raw) == 2 and 0xA1 <= min(raw) and max(raw) <= 0xFE:
            # The Standard's JIS X 0208 index is Shift_JIS's: read the code as cp932 does.
            lead, trail = divmod((raw[0] - 0xA1) * 94 + raw[1] - 0xA1, 188)
            return bytes((lead + (0x81 if lead < 0x1F else 0xC1),
                          trail + (0x40 if trail < 0x3F else 0x41))).decode("cp932")
    except UnicodeDecodeError:
        pass
    return _FFFD


def _decode_euc_jp(data: bytes) -> str:
    text = data.decode("euc_jp", "replace")
    if not _EUC_JP_SUSPECT.search(text):
        return text
    return _EUC_JP_TOKEN.sub(lambda match: _euc_jp_char(match.group()), data.decode("latin-1"))


_PATCHED = {
    "gbk": lambda data: data.decode("gb18030", "curate-gbk-euro"),
    "big5": _decode_big5,
    "euc-jp": _decode_euc_jp,
    "koi8-u": lambda data: data.decode("koi8_u", "replace").translate(_KOI8_RU),
}


def decode(data: bytes, encoding: str) -> str:
    """`data` in `encoding` (an Encoding Standard name, as `get_encoding` gives) as text, each
    error a U+FFFD; a BOM is not looked at."""
    if encoding in _PATCHED:
        return _PATCHED[encoding](data)
    found = webencodings.lookup(encoding)
    if found is None:
        raise LookupError(f"not an Encoding Standard encoding: {encoding!r}")
    return found.codec_info.decode(data, "replace")[0]


# --- sniffing ---------------------------------------------------------------------------------

def _is_utf8(data: bytes) -> bool:
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data, final=False)  # may end mid-character
    except UnicodeDecodeError:
        return False
    return True


def sniff_encoding(body: bytes, http_charset: str | None = None) -> tuple[str, int]:
    """(encoding, length of its BOM) a browser reads `body` in; see the module docstring."""
    for bom, encoding in _BOMS:
        if body.startswith(bom):
            return encoding, len(bom)
    encoding = get_encoding(http_charset_label(http_charset)) or prescan(body[:PRESCAN_BYTES])
    if encoding is None:
        encoding = "utf-8" if _is_utf8(body) else "windows-1252"
    return encoding, 0


def decode_html(body: bytes, http_charset: str | None = None) -> str:
    """`body` as text, decoded as a browser decodes it. `http_charset`: the HTTP charset label
    ('gbk', '"gbk"') or the whole Content-Type value ('text/html; charset=gbk'), or None."""
    encoding, bom_length = sniff_encoding(body, http_charset)
    return decode(body[bom_length:], encoding)
