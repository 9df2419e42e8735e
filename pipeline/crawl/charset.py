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

A label is looked up in the Encoding Standard's table only, so one the Standard does not know
(utf-32, cp437, latin-1, ...) is ignored as browsers ignore it, and the Standard's aliases
hold: latin1 / iso-8859-1 / ascii -> windows-1252, gb2312 / x-gbk / chinese -> GBK,
x-sjis / ms932 -> Shift_JIS, euc-kr / ks_c_5601-1987 -> EUC-KR (windows-949), big5 ->
Big5 (with HKSCS), iso-2022-kr / hz-gb-2312 -> replacement (the body becomes one U+FFFD).

Each encoding decodes with the Standard's index, through the Python codec that was measured
against that index pair by pair, with the measured differences patched here: windows-125x
and windows-874 C1 bytes, KOI8-U's two KOI8-RU letters, windows-1255 0xCA; GBK / gb18030 as
gb18030 with 0x80 -> EUR and the GB18030-2022 code points; Big5 as big5hkscs plus the
HKSCS-2008 additions and the Standard's punctuation mappings; Shift_JIS as cp932 (the
Standard's index is Windows-31J's; Python's shift_jis maps the wave dash & co differently);
EUC-KR as cp949; EUC-JP through the same JIS X 0208 index as Shift_JIS. Malformed bytes
become U+FFFD where the Standard puts them: a lead byte takes a non-ASCII trail byte with it.
ISO-2022-JP (rare in HTML) is only approximated: Python's iso2022_jp_ext with Windows' JIS X
0208 mappings (NEC rows come out as U+FFFD; Python also reads JIS X 0212 escapes, which the
Standard rejects).

w3lib.encoding (html_to_unicode & co) has the right order but was measured to differ:
labels go through Python's aliases (x-gbk, windows-949, x-euc-jp, koi8, unicode,
x-user-defined, unicode-1-1-utf-8 ... unknown; cp437, utf-32, iso-2022-kr, hz accepted),
utf-16 is read big-endian, UTF-32 BOMs are honoured, the meta scan reads 4096 bytes and stops
at `<body`, finds `<meta` inside attribute values, takes `charset="utf-8;"` and a loose
http-equiv, an `<?xml encoding>` anywhere; the default is UTF-8 with U+FFFD for everything
else; and it decodes with the Python codecs as they are (bar gb18030's 0x80 -> EUR).
"""
from __future__ import annotations

import codecs
import re
from functools import lru_cache

PRESCAN_BYTES = 1024
_FFFD = "\ufffd"
_WHITESPACE = b"\t\n\x0c\r "
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

# The Encoding Standard's encodings and their labels (encodings.json).
_LABELS_BY_ENCODING = {
    "UTF-8": "unicode-1-1-utf-8 unicode11utf8 unicode20utf8 utf-8 utf8 x-unicode20utf8",
    "IBM866": "866 cp866 csibm866 ibm866",
    "ISO-8859-2": ("csisolatin2 iso-8859-2 iso-ir-101 iso8859-2 iso88592 iso_8859-2 "
                   "iso_8859-2:1987 l2 latin2"),
    "ISO-8859-3": ("csisolatin3 iso-8859-3 iso-ir-109 iso8859-3 iso88593 iso_8859-3 "
                   "iso_8859-3:1988 l3 latin3"),
    "ISO-8859-4": ("csisolatin4 iso-8859-4 iso-ir-110 iso8859-4 iso88594 iso_8859-4 "
                   "iso_8859-4:1988 l4 latin4"),
    "ISO-8859-5": ("csisolatincyrillic cyrillic iso-8859-5 iso-ir-144 iso8859-5 iso88595 "
                   "iso_8859-5 iso_8859-5:1988"),
    "ISO-8859-6": ("arabic asmo-708 csiso88596e csiso88596i csisolatinarabic ecma-114 iso-8859-6 "
                   "iso-8859-6-e iso-8859-6-i iso-ir-127 iso8859-6 iso88596 iso_8859-6 "
                   "iso_8859-6:1987"),
    "ISO-8859-7": ("csisolatingreek ecma-118 elot_928 greek greek8 iso-8859-7 iso-ir-126 iso8859-7 "
                   "iso88597 iso_8859-7 iso_8859-7:1987 sun_eu_greek"),
    "ISO-8859-8": ("csiso88598e csisolatinhebrew hebrew iso-8859-8 iso-8859-8-e iso-ir-138 "
                   "iso8859-8 iso88598 iso_8859-8 iso_8859-8:1988 visual"),
    "ISO-8859-8-I": "csiso88598i iso-8859-8-i logical",
    "ISO-8859-10": "csisolatin6 iso-8859-10 iso-ir-157 iso8859-10 iso885910 l6 latin6",
    "ISO-8859-13": "iso-8859-13 iso8859-13 iso885913",
    "ISO-8859-14": "iso-8859-14 iso8859-14 iso885914",
    "ISO-8859-15": "csisolatin9 iso-8859-15 iso8859-15 iso885915 iso_8859-15 l9",
    "ISO-8859-16": "iso-8859-16",
    "KOI8-R": "cskoi8r koi koi8 koi8-r koi8_r",
    "KOI8-U": "koi8-ru koi8-u",
    "macintosh": "csmacintosh mac macintosh x-mac-roman",
    "windows-874": "dos-874 iso-8859-11 iso8859-11 iso885911 tis-620 windows-874",
    "windows-1250": "cp1250 windows-1250 x-cp1250",
    "windows-1251": "cp1251 windows-1251 x-cp1251",
    "windows-1252": ("ansi_x3.4-1968 ascii cp1252 cp819 csisolatin1 ibm819 iso-8859-1 "
                     "iso-ir-100 iso8859-1 iso88591 iso_8859-1 iso_8859-1:1987 l1 latin1 "
                     "us-ascii windows-1252 x-cp1252"),
    "windows-1253": "cp1253 windows-1253 x-cp1253",
    "windows-1254": ("cp1254 csisolatin5 iso-8859-9 iso-ir-148 iso8859-9 iso88599 iso_8859-9 "
                     "iso_8859-9:1989 l5 latin5 windows-1254 x-cp1254"),
    "windows-1255": "cp1255 windows-1255 x-cp1255",
    "windows-1256": "cp1256 windows-1256 x-cp1256",
    "windows-1257": "cp1257 windows-1257 x-cp1257",
    "windows-1258": "cp1258 windows-1258 x-cp1258",
    "x-mac-cyrillic": "x-mac-cyrillic x-mac-ukrainian",
    "GBK": "chinese csgb2312 csiso58gb231280 gb2312 gb_2312 gb_2312-80 gbk iso-ir-58 x-gbk",
    "gb18030": "gb18030",
    "Big5": "big5 big5-hkscs cn-big5 csbig5 x-x-big5",
    "EUC-JP": "cseucpkdfmtjapanese euc-jp x-euc-jp",
    "ISO-2022-JP": "csiso2022jp iso-2022-jp",
    "Shift_JIS": "csshiftjis ms932 ms_kanji shift-jis shift_jis sjis windows-31j x-sjis",
    "EUC-KR": ("cseuckr csksc56011987 euc-kr iso-ir-149 korean ks_c_5601-1987 ks_c_5601-1989 "
               "ksc5601 ksc_5601 windows-949"),
    "replacement": "csiso2022kr hz-gb-2312 iso-2022-cn iso-2022-cn-ext iso-2022-kr replacement",
    "UTF-16BE": "unicodefffe utf-16be",
    "UTF-16LE": "csunicode iso-10646-ucs-2 ucs-2 unicode unicodefeff utf-16 utf-16le",
    "x-user-defined": "x-user-defined",
}
LABELS = {label: name for name, labels in _LABELS_BY_ENCODING.items() for label in labels.split()}

_BOMS = ((codecs.BOM_UTF8, "UTF-8"), (b"\xfe\xff", "UTF-16BE"), (b"\xff\xfe", "UTF-16LE"))


def get_encoding(label: str | bytes | None) -> str | None:
    """The Standard's "get an encoding": ' ISO-8859-1' -> 'windows-1252'; None for no label."""
    if label is None:
        return None
    if isinstance(label, bytes):
        label = label.decode("latin-1")
    return LABELS.get(label.strip(" \t\n\x0c\r").translate(_ASCII_LOWER))


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
    if charset in ("UTF-16LE", "UTF-16BE"):
        return pos, "UTF-8"
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
    return "UTF-8" if encoding in ("UTF-16LE", "UTF-16BE") else encoding


def prescan(data: bytes) -> str | None:
    """The encoding the HTML Standard's prescan finds in `data` (give it the first 1024 bytes):
    a `<meta>` declaration, else a leading XML declaration; None when there is neither."""
    if data.startswith(b"<\x00?\x00x\x00"):
        return "UTF-16LE"
    if data.startswith(b"\x00<\x00?\x00x"):
        return "UTF-16BE"
    try:
        encoding = _scan(data)
    except (IndexError, ValueError):  # out of bytes
        encoding = None
    return encoding if encoding is not None else _xml_declared_encoding(data)


# --- decoders ---------------------------------------------------------------------------------

_SINGLE_BYTE = {
    "IBM866": "cp866", "ISO-8859-2": "iso8859_2", "ISO-8859-3": "iso8859_3",
    "ISO-8859-4": "iso8859_4", "ISO-8859-5": "iso8859_5", "ISO-8859-6": "iso8859_6",
    "ISO-8859-7": "iso8859_7", "ISO-8859-8": "iso8859_8", "ISO-8859-8-I": "iso8859_8",
    "ISO-8859-10": "iso8859_10", "ISO-8859-13": "iso8859_13", "ISO-8859-14": "iso8859_14",
    "ISO-8859-15": "iso8859_15", "ISO-8859-16": "iso8859_16", "KOI8-R": "koi8_r",
    "KOI8-U": "koi8_u", "macintosh": "mac_roman", "windows-874": "cp874",
    "windows-1250": "cp1250", "windows-1251": "cp1251", "windows-1252": "cp1252",
    "windows-1253": "cp1253", "windows-1254": "cp1254", "windows-1255": "cp1255",
    "windows-1256": "cp1256", "windows-1257": "cp1257", "windows-1258": "cp1258",
    "x-mac-cyrillic": "mac_cyrillic", "x-user-defined": None,  # its own table
}
# Where the Standard's index differs from the Python codec (besides the windows-* rule below).
_SINGLE_BYTE_FIXES = {"KOI8-U": {0xAE: "\u045e", 0xBE: "\u040e"},  # KOI8-RU's ў Ў
                      "windows-1255": {0xCA: "\u05ba"}}


@lru_cache(maxsize=None)
def _single_byte_table(encoding: str) -> str:
    if _SINGLE_BYTE[encoding] is None:  # x-user-defined: 0x80-0xFF -> U+F780-U+F7FF
        return "".join(chr(byte if byte < 0x80 else 0xF700 + byte) for byte in range(256))
    chars = [bytes([byte]).decode(_SINGLE_BYTE[encoding], "replace") for byte in range(256)]
    if encoding.startswith("windows-"):
        # The Standard's windows-* indexes give a byte Windows leaves unassigned in 0x80-0x9F
        # the C1 control of that value (windows-1252 0x81, 0x8D, 0x8F, 0x90, 0x9D ...).
        for byte in range(0x80, 0xA0):
            if chars[byte] == _FFFD:
                chars[byte] = chr(byte)
    for byte, char in _SINGLE_BYTE_FIXES.get(encoding, {}).items():
        chars[byte] = char
    return "".join(chars)


def _pair_errors(is_lead, extra: dict[int, int] | None = None):
    """Error handler of a two-byte codec: as the Standard, a lead byte and a non-ASCII trail
    byte make one U+FFFD (Python's codecs re-read the trail byte as a lead)."""
    def handler(error: UnicodeDecodeError) -> tuple[str, int]:
        data, start = error.object, error.start
        if start + 1 < len(data) and is_lead(data[start]):
            if extra is not None and (code := extra.get(data[start] << 8 | data[start + 1])):
                return chr(code), start + 2
            if data[start + 1] >= 0x80:
                return _FFFD, start + 2
        return _FFFD, start + 1
    return handler


def _gb18030_errors(error: UnicodeDecodeError) -> tuple[str, int]:
    data, start = error.object, error.start
    lead = data[start]
    if lead == 0x80:
        return "\u20ac", start + 1
    if not 0x81 <= lead <= 0xFE or start + 1 >= len(data):
        return _FFFD, start + 1
    second = data[start + 1]
    if 0x30 <= second <= 0x39:
        # A four-byte sequence: all of it makes one U+FFFD when it has the shape of one (or is
        # cut off by the end), else only the lead byte does.
        tail = data[start + 2:start + 4]
        third_ok = not tail[:1] or 0x81 <= tail[0] <= 0xFE
        fourth_ok = not tail[1:] or 0x30 <= tail[1] <= 0x39
        if not (third_ok and fourth_ok):
            return _FFFD, start + 1
        return _FFFD, start + 2 + len(tail)
    return _FFFD, start + (2 if second >= 0x80 else 1)


# Big5 codes Python's big5hkscs (HKSCS-2004) lacks: HKSCS-2008 and the Standard's own additions.
_BIG5_EXTRA = {0xA3C0 + i: 0x2400 + i for i in range(32)}  # control pictures
_BIG5_EXTRA.update({
    0x877A: 0x3875, 0x877B: 0x21D53, 0x877C: 0x2369E, 0x877D: 0x26021, 0x877E: 0x3EEC,
    0x87A1: 0x258DE, 0x87A2: 0x3AF5, 0x87A3: 0x7AFC, 0x87A4: 0x9F97, 0x87A5: 0x24161,
    0x87A6: 0x2890D, 0x87A7: 0x231EA, 0x87A8: 0x20A8A, 0x87A9: 0x2325E, 0x87AA: 0x430A,
    0x87AB: 0x8484, 0x87AC: 0x9F96, 0x87AD: 0x942F, 0x87AE: 0x4930, 0x87AF: 0x8613,
    0x87B0: 0x5896, 0x87B1: 0x974A, 0x87B2: 0x9218, 0x87B3: 0x79D0, 0x87B4: 0x7A32,
    0x87B5: 0x6660, 0x87B6: 0x6A29, 0x87B7: 0x889D, 0x87B8: 0x744C, 0x87B9: 0x7BC5,
    0x87BA: 0x6782, 0x87BB: 0x7A2C, 0x87BC: 0x524F, 0x87BD: 0x9046, 0x87BE: 0x34E6,
    0x87BF: 0x73C4, 0x87C0: 0x25DB9, 0x87C1: 0x74C6, 0x87C2: 0x9FC7, 0x87C3: 0x57B3,
    0x87C4: 0x492F, 0x87C5: 0x544C, 0x87C6: 0x4131, 0x87C7: 0x2368E, 0x87C8: 0x5818,
    0x87C9: 0x7A72, 0x87CA: 0x27B65, 0x87CB: 0x8B8F, 0x87CC: 0x46AE, 0x87CD: 0x26E88,
    0x87CE: 0x4181, 0x87CF: 0x25D99, 0x87D0: 0x7BAE, 0x87D1: 0x224BC, 0x87D2: 0x9FC8,
    0x87D3: 0x224C1, 0x87D4: 0x224C9, 0x87D5: 0x224CC, 0x87D6: 0x9FC9, 0x87D7: 0x8504,
    0x87D8: 0x235BB, 0x87D9: 0x40B4, 0x87DA: 0x9FCA, 0x87DB: 0x44E1, 0x87DC: 0x2ADFF,
    0x87DD: 0x62C1, 0x87DE: 0x706E, 0x87DF: 0x9FCB, 0x8E69: 0x7BB8, 0x8E6F: 0x7C06,
    0x8E7E: 0x7CCE, 0x8EAB: 0x7DD2, 0x8EB4: 0x7E1D, 0x8ECD: 0x8005, 0x8ED0: 0x8028,
    0x8F57: 0x83C1, 0x8F69: 0x84A8, 0x8F6E: 0x840F, 0x8FCB: 0x89A6, 0x8FCC: 0x89A9,
    0x8FFE: 0x8D77, 0x906D: 0x90FD, 0x907A: 0x92B9, 0x90DC: 0x975C, 0x90F1: 0x97FF,
    0x91BF: 0x9F16, 0x9244: 0x8503, 0x92AF: 0x5159, 0x92B0: 0x515B, 0x92B1: 0x515D,
    0x92B2: 0x515E, 0x92C8: 0x936E, 0x92D1: 0x7479, 0x9447: 0x6D67, 0x94CA: 0x799B,
    0x95D9: 0x9097, 0x9644: 0x975D, 0x96ED: 0x701E, 0x96FC: 0x5B28, 0x9B76: 0x7201,
    0x9B78: 0x77D7, 0x9B7B: 0x7E87, 0x9BC6: 0x99D6, 0x9BDE: 0x91D4, 0x9BEC: 0x60DE,
    0x9BF6: 0x6FB6, 0x9C42: 0x8F36, 0x9C53: 0x4FBB, 0x9C62: 0x71DF, 0x9C68: 0x9104,
    0x9C6B: 0x9DF0, 0x9C77: 0x83CF, 0x9CBC: 0x5C10, 0x9CBD: 0x79E3, 0x9CD0: 0x5A67,
    0x9D57: 0x8F0B, 0x9D5A: 0x7B51, 0x9DC4: 0x62D0, 0x9EA9: 0x6062, 0x9EEF: 0x75F9,
    0x9EFD: 0x6C4A, 0x9F60: 0x9B2E, 0x9F66: 0x9F17, 0x9FCB: 0x50ED, 0x9FD8: 0x5F0C,
    0xA063: 0x880F, 0xA077: 0x62CE, 0xA0D5: 0x7468, 0xA0DF: 0x7162, 0xA0E4: 0x7250,
    0xA3E0: 0x2421, 0xA3E1: 0x20AC, 0xC6CF: 0x5EF4, 0xC6D3: 0x65E0, 0xC6D5: 0x7676,
    0xC6D7: 0x96B6, 0xC6DE: 0x3003, 0xC6DF: 0x4EDD, 0xFA5F: 0x5029, 0xFA66: 0x507D,
    0xFABD: 0x5305, 0xFAC5: 0x5344, 0xFAD5: 0x537F, 0xFB48: 0x5605, 0xFBB8: 0x5A77,
    0xFBF3: 0x5E75, 0xFBF9: 0x5ED0, 0xFC4F: 0x5F58, 0xFC6C: 0x60A4, 0xFCB9: 0x6490,
    0xFCE2: 0x6674, 0xFCF1: 0x675E, 0xFDB7: 0x6C9C, 0xFDB8: 0x6E1D, 0xFDBB: 0x6E2F,
    0xFDF1: 0x716E, 0xFE52: 0x732A, 0xFE6F: 0x745C, 0xFEAA: 0x74E9, 0xFEDD: 0x7809,
})

codecs.register_error("curate-whatwg-gb18030", _gb18030_errors)
codecs.register_error("curate-whatwg-big5", _pair_errors(lambda b: 0x81 <= b <= 0xFE, _BIG5_EXTRA))
codecs.register_error("curate-whatwg-euc-kr", _pair_errors(lambda b: 0x81 <= b <= 0xFE))
codecs.register_error("curate-whatwg-shift_jis",
                      _pair_errors(lambda b: 0x81 <= b <= 0x9F or 0xE0 <= b <= 0xFC))


def _replacer(mapping: dict[int, int]):
    """text -> text with these characters changed (one pass; quick when there are none)."""
    table = {chr(old): chr(new) for old, new in mapping.items()}
    pattern = re.compile("[" + "".join(re.escape(char) for char in table) + "]")
    return lambda text: pattern.sub(lambda match: table[match.group()], text)


# JIS X 0208 as the Standard's index (Windows) has it, where Python's JIS codecs follow JIS.
_JIS0208_WINDOWS = {0x301C: 0xFF5E, 0x2016: 0x2225, 0x2212: 0xFF0D, 0xA2: 0xFFE0, 0xA3: 0xFFE1,
                    0xAC: 0xFFE2}
# GBK's decoder is gb18030's; the Standard follows GB18030-2022 where Python has 2005.
_GB18030_2022 = _replacer({
    0xE5E5: 0x3000, 0xE78D: 0xFE10, 0xE78E: 0xFE12, 0xE78F: 0xFE11, 0xE790: 0xFE13,
    0xE791: 0xFE14, 0xE792: 0xFE15, 0xE793: 0xFE16, 0xE794: 0xFE17, 0xE795: 0xFE18,
    0xE796: 0xFE19, 0xE81E: 0x9FB4, 0xE826: 0x9FB5, 0xE82B: 0x9FB6, 0xE82C: 0x9FB7,
    0xE832: 0x9FB8, 0xE843: 0x9FB9, 0xE854: 0x9FBA, 0xE864: 0x9FBB,
    0xE7C7: 0x1E3F, 0x1E3F: 0xE7C7})  # A8BC is U+1E3F, 8135F437 U+E7C7
_BIG5_INDEX = _replacer({
    0x2022: 0x2027, 0xFF64: 0xFE51, 0x203E: 0xAF, 0x223C: 0xFF5E, 0x2641: 0x2295,
    0x2609: 0x2299, 0xA5: 0xFFE5, 0xA2: 0xFFE0, 0xA3: 0xFFE1})
# cp932 reads the single bytes A0, FD, FE, FF as private-use characters; the Standard errs.
_CP932_SINGLES = _replacer({0xF8F0: 0xFFFD, 0xF8F1: 0xFFFD, 0xF8F2: 0xFFFD, 0xF8F3: 0xFFFD})
# (Python codec, error handler, what to change in its output) per encoding.
_MULTI_BYTE = {
    "UTF-16LE": ("utf-16-le", "replace", None),
    "UTF-16BE": ("utf-16-be", "replace", None),
    "GBK": ("gb18030", "curate-whatwg-gb18030", _GB18030_2022),
    "gb18030": ("gb18030", "curate-whatwg-gb18030", _GB18030_2022),
    "EUC-KR": ("cp949", "curate-whatwg-euc-kr", None),
    "Shift_JIS": ("cp932", "curate-whatwg-shift_jis", _CP932_SINGLES),
    "ISO-2022-JP": ("iso2022_jp_ext", "replace", _replacer(_JIS0208_WINDOWS)),
}

# EUC-JP: half-width katakana, JIS X 0212, JIS X 0208, then malformed sequences (a lead byte
# takes a non-ASCII byte that cannot follow it along into its U+FFFD), over latin-1 text.
_EUC_JP_TOKEN = re.compile("\x8e[\xa1-\xdf]|\x8f[\xa1-\xfe][\xa1-\xfe]|[\xa1-\xfe][\xa1-\xfe]"
                           "|\x8f[\xa1-\xfe][\x80-\xa0\xff]?|[\x8e\x8f\xa1-\xfe][\x80-\xff]?"
                           "|[\x80-\xff]")


# What Python's euc_jp gets wrong: the JIS mappings above, 8FA2B7 (U+FF5E, not "~"), and
# whatever it cannot read (NEC row 13, the IBM rows, malformed bytes: U+FFFD). Measured
# against the Standard over every two- and three-byte code: in a text without any of these,
# Python's output is the Standard's.
_EUC_JP_SUSPECT = re.compile("[" + "".join(map(chr, _JIS0208_WINDOWS)) + "\ufffd]")


@lru_cache(maxsize=None)
def _euc_jp_char(token: str) -> str:
    raw = token.encode("latin-1")
    if len(raw) == 2 and raw[0] == 0x8E and 0xA1 <= raw[1] <= 0xDF:
        return chr(0xFF61 - 0xA1 + raw[1])
    try:
        if len(raw) == 3 and raw[0] == 0x8F and 0xA1 <= min(raw[1:]) and max(raw[1:]) <= 0xFE:
            return "\uff5e" if raw == b"\x8f\xa2\xb7" else raw.decode("euc_jp")
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
    if b"\x8f\xa2\xb7" not in data and not _EUC_JP_SUSPECT.search(text):
        return text
    return _EUC_JP_TOKEN.sub(lambda match: _euc_jp_char(match.group()), data.decode("latin-1"))


# big5hkscs reads A241 as U+FF0F and A242 as U+FF3C, as it reads A1FE and A240; the Standard
# has U+2215 and U+FE68 there. A lead byte and the byte after it are one unit: this pattern
# runs over whole units to the next A241 / A242 that is a unit of its own.
_BIG5_TO_SHARED = re.compile(b"(?:[\x81-\xa1\xa3-\xfe][\x00-\xff]|\xa2[^\x41\x42]"
                             b"|[\x00-\x80\xff])*(\xa2[\x41\x42])")
_BIG5_SHARED = {b"\xa2\x41": "\u2215", b"\xa2\x42": "\ufe68"}


def _decode_big5(data: bytes) -> str:
    text = _BIG5_INDEX(data.decode("big5hkscs", "curate-whatwg-big5"))
    if "\uff0f" not in text and "\uff3c" not in text:
        return text
    parts, start = [], 0
    while (match := _BIG5_TO_SHARED.match(data, start)) is not None:
        parts += [data[start:match.start(1)], _BIG5_SHARED[match.group(1)]]
        start = match.end()
    if not parts:
        return text
    parts.append(data[start:])
    return "".join(part if isinstance(part, str) else
                   _BIG5_INDEX(part.decode("big5hkscs", "curate-whatwg-big5")) for part in parts)


def decode(data: bytes, encoding: str) -> str:
    """`data` in `encoding` (an Encoding Standard name, as `get_encoding` gives) as text, each
    error a U+FFFD; a BOM is not looked at."""
    if encoding == "UTF-8":
        return data.decode("utf-8", "replace")
    if encoding in _SINGLE_BYTE:
        return codecs.charmap_decode(data, "strict", _single_byte_table(encoding))[0]
    if encoding in _MULTI_BYTE:
        codec, errors, fixes = _MULTI_BYTE[encoding]
        text = data.decode(codec, errors)
        return fixes(text) if fixes else text
    if encoding == "Big5":
        return _decode_big5(data)
    if encoding == "EUC-JP":
        return _decode_euc_jp(data)
    if encoding == "replacement":
        return _FFFD if data else ""
    raise LookupError(f"not an Encoding Standard encoding: {encoding!r}")


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
        encoding = "UTF-8" if _is_utf8(body) else "windows-1252"
    return encoding, 0


def decode_html(body: bytes, http_charset: str | None = None) -> str:
    """`body` as text, decoded as a browser decodes it. `http_charset`: the HTTP charset label
    ('gbk', '"gbk"') or the whole Content-Type value ('text/html; charset=gbk'), or None."""
    encoding, bom_length = sniff_encoding(body, http_charset)
    return decode(body[bom_length:], encoding)
