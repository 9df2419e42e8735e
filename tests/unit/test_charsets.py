"""Pages are decoded as browsers decode them: BOM, HTTP charset, `<meta charset>` in the first
1024 bytes, then UTF-8-if-valid else windows-1252; WHATWG Encoding Standard labels and indexes."""
import pytest
import webencodings

from pipeline.crawl.archive import iter_warc_pairs
from pipeline.crawl.charset import decode_html, get_encoding, prescan, sniff_encoding
from pipeline.crawl.html_extract import extract_page

PAGE = "http://example.org/dir/page.html"


def html(alt: bytes, head: bytes = b"") -> bytes:
    return (b"<!DOCTYPE html><html><head>" + head + b'</head><body><p>x</p><img src="/x.jpg" alt="'
            + alt + b'"></body></html>')


def alt_text(body: bytes, charset: str | None = None) -> str:
    pairs = extract_page(body, PAGE, charset).pairs
    assert [pair["url"] for pair in pairs] == ["http://example.org/x.jpg"]
    return pairs[0]["text"]


@pytest.mark.parametrize("label", ["gbk", "GBK", "x-gbk", "chinese"])
def test_gbk(label):
    assert alt_text(html("简体中文网页".encode("gbk")), label) == "简体中文网页"


@pytest.mark.parametrize("label", ["gb2312", "GB_2312-80", "csGB2312"])
def test_gb2312_label_decodes_as_gbk(label):
    # 镕 喆 堃 are in GBK, not in GB2312; 0x80 is GBK's euro sign.
    body = html("朱镕基 喆 堃".encode("gbk") + b" \x80")
    assert alt_text(body, label) == "朱镕基 喆 堃 €"


def test_big5():
    assert alt_text(html("繁體中文網頁".encode("big5")), "big5") == "繁體中文網頁"


def test_big5_follows_the_standards_index():
    # A3E1 euro (cp950's), A1E3 wave, A145 hyphenation point; A1FE/A240 are ／＼ everywhere.
    body = html(b"\xa3\xe1\xa1\xe3\xa1\x45 \xa1\xfe\xa2\x40")
    assert alt_text(body, "big5") == "€～‧ ／＼"


def belarusian_koi8_ru(text: str) -> bytes:
    """KOI8-RU (iconv's): KOI8-U plus ў Ў at AE, BE (Python has no koi8_ru codec)."""
    return b"".join({"ў": b"\xae", "Ў": b"\xbe"}.get(char) or char.encode("koi8_u") for char in text)


# Page text as the encoders sites use write it, where the codec webencodings names for the
# label reads it otherwise than browsers: each case is what keeps one patch in charset.py.
REAL_PAGES = {
    "emoji in a GB18030 page labelled gb2312": ("gb2312", "表情😀 𠮷".encode("gb18030"), "表情😀 𠮷"),
    "price in euros from Windows' cp936": ("gbk", "售价 ".encode("gbk") + b"\x8030", "售价 €30"),
    "price in euros from Windows' cp950": ("big5", "售價 €30".encode("cp950"), "售價 €30"),
    "name dot and range tilde in Big5": ("big5", "約翰‧藍儂 週一～週五".encode("cp950"), "約翰‧藍儂 週一～週五"),
    "yen, pound and cent in Big5": ("big5", "¥100 £5 ¢".encode("cp950"), "￥100 ￡5 ￠"),
    "wave dash and NEC circled digit in EUC-JP": (
        "euc-jp", "営業 10時".encode("euc_jp") + b"\xa1\xc1" + "18時 ".encode("euc_jp") + b"\xad\xa1",
        "営業 10時～18時 ①"),
    "Belarusian in KOI8-RU": ("koi8-ru", belarusian_koi8_ru("краіна ў Еўропе, Ўсход"), "краіна ў Еўропе, Ўсход"),
}


@pytest.mark.parametrize("label, body, text", REAL_PAGES.values(), ids=list(REAL_PAGES))
def test_patches_over_the_library_codecs_show_on_real_page_text(label, body, text):
    assert alt_text(html(body), label) == text
    plain = webencodings.lookup(label).codec_info.decode(body, "replace")[0]
    assert plain != text   # without the patch: the codec webencodings names for the label


@pytest.mark.parametrize("label", ["shift_jis", "x-sjis", "ms932", "windows-31j", "sjis"])
def test_shift_jis(label):
    # 0x8160 is U+FF5E as in Windows (Python's shift_jis says U+301C); 0x8740 (①) is NEC's.
    body = html("日本語のテキスト".encode("cp932") + b"\x81\x60\x87\x40")
    assert alt_text(body, label) == "日本語のテキスト～①"


def test_euc_jp():
    # A1C1 is U+FF5E and ADA1 NEC's ① in the Standard's JIS X 0208 index (Python's euc_jp
    # gives U+301C and an error); 8E B1 is a half-width katakana.
    body = html("日本語のテキスト".encode("euc_jp") + b"\xa1\xc1\xad\xa1\x8e\xb1")
    assert alt_text(body, "euc-jp") == "日本語のテキスト～①ｱ"


@pytest.mark.parametrize("label", ["euc-kr", "ks_c_5601-1987", "korean", "windows-949"])
def test_euc_kr_is_windows_949(label):
    # 똠 is 0x8C63 in windows-949 (UHC) only; EUC-KR proper has no code for it.
    body = html("한국어 ".encode("euc_kr") + "똠".encode("cp949"))
    assert alt_text(body, label) == "한국어 똠"


def test_windows_1251():
    assert alt_text(html("Привет, мир".encode("cp1251")), "windows-1251") == "Привет, мир"


def test_koi8_r():
    assert alt_text(html("Привет, мир".encode("koi8_r")), "koi8-r") == "Привет, мир"


SMART = b"\x93smart\x94 quotes \x96 \x80 5\x85"


@pytest.mark.parametrize("label", ["iso-8859-1", "ISO-8859-1", "latin1", "ascii", "us-ascii",
                                   "windows-1252"])
def test_latin1_and_ascii_labels_mean_windows_1252(label):
    assert alt_text(html(SMART), label) == "“smart” quotes – € 5…"


def test_unlabelled_non_utf8_falls_back_to_windows_1252():
    assert alt_text(html(SMART)) == "“smart” quotes – € 5…"


def test_unlabelled_valid_utf8_is_utf8_even_when_cut_mid_character():
    assert alt_text(html("Grüße “x” 日本".encode())) == "Grüße “x” 日本"
    body = html("Grüße".encode()) + "日本".encode()[:-1]
    assert sniff_encoding(body) == ("utf-8", 0)


def test_utf8_bom_wins_over_the_http_charset():
    body = b"\xef\xbb\xbf" + html("Grüße “x” 日本".encode())
    assert alt_text(body, "windows-1252") == "Grüße “x” 日本"


def test_utf16_boms_win():
    text = '<p>x</p><img src="/x.jpg" alt="日本語">'
    for bom, codec in ((b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be")):
        assert alt_text(bom + text.encode(codec), "utf-8") == "日本語"


def test_meta_charset_in_the_first_1024_bytes_is_used_without_http_charset():
    head = b"<!-- " + b"x" * 900 + b' --><meta charset="koi8-r">'
    assert len(html(b"", head).split(b"</head>")[0]) < 1024
    assert alt_text(html("Привет".encode("koi8_r"), head)) == "Привет"
    pragma = b'<meta http-equiv="Content-Type" content="text/html; charset=windows-1251">'
    assert alt_text(html("Привет".encode("cp1251"), pragma)) == "Привет"


def test_meta_charset_after_1024_bytes_is_not_seen():
    head = b"<!-- " + b"x" * 1100 + b' --><meta charset="koi8-r">'
    assert alt_text(html("Привет".encode("koi8_r"), head)) == "ðÒÉ×ÅÔ"  # windows-1252


def test_http_charset_wins_over_a_disagreeing_meta():
    body = html("Привет".encode("koi8_r"), b'<meta charset="windows-1251">')
    assert alt_text(body, "koi8-r") == "Привет"
    assert alt_text(body, "text/html; charset=KOI8-R") == "Привет"


def test_http_label_outside_the_standard_is_ignored():
    # "latin-1" and "utf8mb4" are Python / MySQL names, not WHATWG labels: the meta decides.
    body = html("Привет".encode("koi8_r"), b'<meta charset="koi8-r">')
    assert alt_text(body, "latin-1") == "Привет"
    assert alt_text(body, "utf8mb4") == "Привет"


def test_quoted_and_content_type_charsets():
    body = html("朱镕基".encode("gbk"))
    for charset in ('"gb2312"', "text/html; charset=\"gb2312\"", "text/html;charset=GBK; q=1"):
        assert alt_text(body, charset) == "朱镕基"


def test_replacement_labels_decode_to_replacement_characters_only():
    # iso-2022-kr, hz-gb-2312 ... can smuggle markup through ASCII bytes: browsers show U+FFFD.
    assert extract_page(html(b"x"), PAGE, "iso-2022-kr").pairs == []
    assert set(decode_html(b"<p>x</p>", "hz-gb-2312")) == {"\ufffd"}   # no markup left


def test_utf16_label_means_little_endian():
    assert decode_html("<p>日本".encode("utf-16-le"), "utf-16") == "<p>日本"


def test_labels():
    assert get_encoding(" Latin1\n") == "windows-1252"
    assert get_encoding("x-sjis") == "shift_jis"
    assert get_encoding("utf-32") is None
    assert get_encoding("cp437") is None


def test_prescan():
    assert prescan(b"<!-- <meta charset=koi8-r> --><p>") is None
    assert prescan(b'<div title="<meta charset=koi8-r>">') is None
    assert prescan(b'<meta charset="utf-16">') == "utf-8"
    assert prescan(b'<meta charset="x-user-defined">') == "windows-1252"
    assert prescan(b'<meta content="text/html; charset=koi8-r">') is None    # no http-equiv
    assert prescan(b"<body><META CHARSET=Big5>") == "big5"
    assert prescan(b'<?xml version="1.0" encoding="euc-jp"?><p>') == "euc-jp"


def warc_response(uri: str, content_type: str, body: bytes, n: int) -> bytes:
    http = (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    head = (f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: {uri}\r\n"
            f"WARC-Date: 2024-05-18T01:58:10Z\r\n"
            f"WARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-{n:012d}>\r\n"
            f"Content-Type: application/http; msgtype=response\r\n"
            f"Content-Length: {len(http)}\r\n\r\n").encode()
    return head + http + b"\r\n\r\n"


def test_archive_pages_are_decoded_the_same_way(tmp_path):
    path = tmp_path / "pages.warc"
    path.write_bytes(
        warc_response("http://site.org/gbk.html", 'text/html; charset="gb2312"',
                      html("朱镕基".encode("gbk")), 1)
        + warc_response("http://site.org/sjis.html", "text/html",
                        html("日本語".encode("cp932") + b"\x81\x60", b"<meta charset=x-sjis>"), 2)
        + warc_response("http://site.org/1252.html", "text/html; charset=iso-8859-1",
                        html(SMART), 3))
    rows = [row for batch in iter_warc_pairs(path) for row in batch.to_pylist()]
    assert [(row["page_url"], row["text"]) for row in rows] == [
        ("http://site.org/gbk.html", "朱镕基"),
        ("http://site.org/sjis.html", "日本語～"),
        ("http://site.org/1252.html", "“smart” quotes – € 5…"),
    ]
