import pytest

from pipeline.crawl.html_extract import extract_page, normalize_http_url, x_robots_tag_directives

PAGE = "http://example.org/dir/page.html"


def page(body: str, head: str = "") -> bytes:
    return f"<html><head>{head}</head><body>{body}</body></html>".encode()


def urls(body: str, head: str = "", page_url: str = PAGE) -> list[str]:
    return [pair["url"] for pair in extract_page(page(body, head), page_url).pairs]


def test_relative_and_absolute_image_urls_are_resolved():
    body = ('<img src="a.jpg"><img src="../b.jpg"><img src="/c.jpg"><img src="./d/e.jpg">'
            '<img src="//cdn.example.com/f.jpg"><img src="https://other.org/g.jpg#frag">'
            '<img src="  h i.jpg  ">')
    assert urls(body) == [
        "http://example.org/dir/a.jpg", "http://example.org/b.jpg", "http://example.org/c.jpg",
        "http://example.org/dir/d/e.jpg", "http://cdn.example.com/f.jpg",
        "https://other.org/g.jpg", "http://example.org/dir/h%20i.jpg"]


def test_base_href_is_honoured_and_itself_resolved_against_the_page():
    img = '<img src="a.jpg">'
    assert urls(img, '<base href="/assets/">') == ["http://example.org/assets/a.jpg"]
    assert urls(img, '<base href="https://cdn.org/x/">') == ["https://cdn.org/x/a.jpg"]
    links = extract_page(page('<a href="p.html">x</a>', '<base href="/b/">'), PAGE).links
    assert links == ["http://example.org/b/p.html"]


def test_unusable_sources_are_skipped_and_fallbacks_used():
    body = ('<img alt="no src"><img src="data:image/png;base64,AA" alt="inline">'
            '<img src="data:image/gif;base64,AA" data-src="lazy.jpg">'
            '<img srcset=" s1.jpg 1x, s2.jpg 2x"><img src="javascript:x()">'
            '<img src="ftp://h/x.jpg">')
    assert urls(body) == ["http://example.org/dir/lazy.jpg", "http://example.org/dir/s1.jpg"]


def test_alt_absent_is_null_empty_is_empty_and_text_is_stripped():
    pairs = extract_page(page('<img src="a.jpg"><img src="b.jpg" alt=""><img src="c.jpg" alt>'
                              '<img src="d.jpg" alt="  a red  car \n">'), PAGE).pairs
    assert [p["text"] for p in pairs] == [None, "", "", "a red  car"]
    assert all(p["page_url"] == PAGE for p in pairs)


def test_title_and_figcaption_are_kept_apart_from_alt():
    body = ('<figure><div><img src="a.jpg" alt="alt a" title=" title a "></div>'
            '<figcaption> The <em>caption</em>\n of a </figcaption></figure>'
            '<img src="b.jpg" title="title b"><figure><img src="c.jpg"></figure>')
    pairs = extract_page(page(body), PAGE).pairs
    assert [(p["text"], p["title"], p["figcaption"]) for p in pairs] == [
        ("alt a", "title a", "The caption of a"), (None, "title b", None), (None, None, None)]


@pytest.mark.parametrize("content", ["noindex", "NoIndex, follow", "noimageindex", "noai",
                                     "noimageai", "none", "max-image-preview:large, noai"])
def test_meta_robots_that_forbid_image_use_drop_all_pairs(content):
    result = extract_page(page('<img src="a.jpg" alt="x"><a href="b.html">b</a>',
                               f'<meta name="robots" content="{content}">'), PAGE)
    assert result.pairs == []
    assert result.links == ([] if content == "none" else ["http://example.org/dir/b.html"])


def test_meta_robots_nofollow_drops_links_but_keeps_pairs():
    result = extract_page(page('<img src="a.jpg" alt="x"><a href="b.html">b</a>',
                               '<meta name="ROBOTS" content="nofollow">'), PAGE)
    assert [p["url"] for p in result.pairs] == ["http://example.org/dir/a.jpg"]
    assert result.links == []


def test_meta_for_our_agent_applies_and_meta_for_another_agent_does_not():
    html = page('<img src="a.jpg">', '<meta name="curatebot" content="noindex">'
                                     '<meta name="googlebot" content="nofollow">')
    assert extract_page(html, PAGE, user_agent="CurateBot/0.1").pairs == []
    other = extract_page(html, PAGE, user_agent="OtherBot/1.0")
    assert len(other.pairs) == 1 and other.directives == frozenset()


def test_x_robots_tag_directives():
    assert x_robots_tag_directives(["noai", "NoImageIndex, nofollow"]) == \
        {"noai", "noimageindex", "nofollow"}
    assert x_robots_tag_directives(["otherbot: noindex"], "CurateBot/0.1") == set()
    assert x_robots_tag_directives(["curatebot: noindex"], "CurateBot/0.1") == {"noindex"}
    assert "noindex" not in x_robots_tag_directives(["unavailable_after: 2030-01-01"])
    result = extract_page(page('<img src="a.jpg">'), PAGE, extra_directives={"noindex"})
    assert result.pairs == []


def test_links_are_absolute_unique_http_without_fragments():
    body = ('<a href="b.html#x">1</a><a href="b.html">2</a><a href="#top">3</a>'
            '<a href="mailto:a@b.org">4</a><a href="javascript:void(0)">5</a>'
            '<a href="HTTPS://Other.ORG:443/x?q=1">6</a>'
            '<a href="skip.html" rel="nofollow ugc">7</a>'
            '<map><area href="/area.html"></map><a>no href</a>')
    assert extract_page(page(body), PAGE).links == [
        "http://example.org/dir/b.html", "https://other.org/x?q=1", "http://example.org/area.html"]


def test_declared_charsets_are_used():
    latin1 = '<meta charset="iso-8859-1"><img src="a.jpg" alt="café">'.encode("latin-1")
    assert extract_page(latin1, PAGE).pairs[0]["text"] == "café"
    no_meta = '<img src="a.jpg" alt="café">'.encode("latin-1")
    assert extract_page(no_meta, PAGE, charset="latin-1").pairs[0]["text"] == "café"


def test_normalize_http_url():
    assert normalize_http_url("HTTP://Example.ORG:80") == "http://example.org/"
    assert normalize_http_url("https://h.org:8443/a?b=c#d") == "https://h.org:8443/a?b=c"
    assert normalize_http_url("http://bücher.de/ü") == "http://xn--bcher-kva.de/%C3%BC"
    assert normalize_http_url("http://[::1]:8080/x") == "http://[::1]:8080/x"
    for bad in ("ftp://example.org/", "file:///etc/passwd", "http://user:pw@example.org/",
                "http://example.org:99999/", "not a url", "http:///path"):
        assert normalize_http_url(bad) is None
