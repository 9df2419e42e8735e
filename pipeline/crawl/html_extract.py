"""Image-text pairs and outgoing links from one HTML page (selectolax/lexbor).

A pair is one `<img>`: `url` (absolute, `<base href>` honoured), `text` (its `alt`, stripped;
null when the attribute is absent, "" when it is empty), `title` (the img's `title`) and
`figcaption` (the enclosing `<figure>`'s caption) kept in their own fields, and `page_url`.

Bytes are decoded as a browser decodes them (`charset.decode_html`: a BOM, then the HTTP charset
the caller passes, then `<meta charset>` in the first 1024 bytes, then UTF-8 if the bytes are
valid UTF-8 and windows-1252 if not; labels and decoders of the WHATWG Encoding Standard).

`<meta name="robots">` (and `X-Robots-Tag` directives the caller passes in) is honoured:
`noindex`, `noimageindex`, `noai`, `noimageai` and `none` drop every pair; `nofollow` and
`none` drop every link.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import quote, urldefrag, urljoin, urlsplit, urlunsplit

from selectolax.lexbor import LexborHTMLParser

from pipeline.crawl.charset import decode_html

PAIR_FIELDS = ("url", "text", "title", "figcaption", "page_url")
NO_PAIRS_DIRECTIVES = frozenset({"noindex", "noimageindex", "noai", "noimageai", "none"})
NO_LINKS_DIRECTIVES = frozenset({"nofollow", "none"})
_WHITESPACE = re.compile(r"\s+")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_DIRECTIVES_WITH_VALUE = {"unavailable_after", "max-snippet", "max-image-preview",
                          "max-video-preview"}
_URL_SAFE = "/%:@!$&'()*+,;=-._~?"


@dataclass
class PageExtract:
    pairs: list[dict] = field(default_factory=list)   # dicts with PAIR_FIELDS, document order
    links: list[str] = field(default_factory=list)    # absolute http(s), no fragment, unique
    directives: frozenset[str] = frozenset()          # robots directives in force


def normalize_http_url(url: str) -> str | None:
    """Canonical absolute http(s) URL without fragment, or None for any other scheme.

    Lower-cases scheme and host (IDNA-encoded), refuses URLs with credentials, drops a
    default port, gives an empty path "/", percent-encodes spaces and non-ASCII (as browsers do).
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.username:
            return None
        host = parts.hostname.lower().encode("idna").decode("ascii")
    except (ValueError, UnicodeError):
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        host = f"{host}:{port}"
    path = quote(parts.path or "/", safe=_URL_SAFE)
    query = quote(parts.query, safe=_URL_SAFE)
    return urlunsplit((scheme, host, path, query, ""))


def resolve_http_url(ref: str | None, base_url: str) -> str | None:
    """Resolve an href/src against the base; None unless it lands on http(s)."""
    if ref is None:
        return None
    ref = ref.strip()
    if not ref or ref.startswith(("data:", "javascript:", "mailto:", "#")):
        return None
    return normalize_http_url(urldefrag(urljoin(base_url, ref))[0])


def parse_directives(content: str | None) -> set[str]:
    """'NoIndex, nofollow' -> {'noindex', 'nofollow'}."""
    if not content:
        return set()
    return {token.strip() for token in content.lower().split(",") if token.strip()}


def x_robots_tag_directives(values: list[str], user_agent: str | None = None) -> set[str]:
    """Directives of `X-Robots-Tag` header values; 'otherbot: noindex' applies to otherbot only."""
    token = agent_token(user_agent)
    directives: set[str] = set()
    for value in values:
        head, colon, rest = value.partition(":")
        head = head.strip().lower()
        if colon and "," not in head and head not in _DIRECTIVES_WITH_VALUE:
            if head != token:
                continue
            value = rest
        directives |= parse_directives(value)
    return directives


def agent_token(user_agent: str | None) -> str | None:
    """Product token of a user agent: 'CurateBot/0.1 (+url)' -> 'curatebot'."""
    if not user_agent:
        return None
    return re.split(r"[/\s]", user_agent.strip(), maxsplit=1)[0].lower() or None


def meta_robots_directives(tree: LexborHTMLParser, user_agent: str | None = None) -> set[str]:
    """Directives of `<meta name="robots">` and of a meta named for our own agent token."""
    names = {"robots"}
    token = agent_token(user_agent)
    if token:
        names.add(token)
    directives: set[str] = set()
    for meta in tree.css("meta[name]"):
        if (meta.attributes.get("name") or "").strip().lower() in names:
            directives |= parse_directives(meta.attributes.get("content"))
    return directives


def document_base(tree: LexborHTMLParser, page_url: str) -> str:
    """The URL relative references resolve against: the first `<base href>`, else the page."""
    base = tree.css_first("base[href]")
    if base is not None:
        href = (base.attributes.get("href") or "").strip()
        if href:
            return urljoin(page_url, href)
    return page_url


def first_srcset_url(srcset: str | None) -> str | None:
    """URL of the first srcset candidate ('a.jpg 1x, b.jpg 2x' -> 'a.jpg')."""
    if not srcset:
        return None
    candidates = srcset.strip(" \t\n\r\f,").split()
    return candidates[0].rstrip(",") if candidates else None


def image_source(attributes: dict) -> str | None:
    """The img's src; a missing/`data:` src falls back to data-src, then to srcset."""
    for ref in (attributes.get("src"), attributes.get("data-src")):
        if ref and ref.strip() and not ref.strip().startswith("data:"):
            return ref
    return first_srcset_url(attributes.get("srcset"))


def clean_attribute(attributes: dict, name: str) -> str | None:
    """Stripped attribute value; None when absent, "" for a bare or empty attribute."""
    if name not in attributes:
        return None
    return (attributes[name] or "").strip()


def enclosing_figcaption(node) -> str | None:
    """Whitespace-normalised text of the figcaption of the nearest `<figure>` ancestor."""
    parent = node.parent
    while parent is not None and parent.tag not in ("figure", "body", "html"):
        parent = parent.parent
    if parent is None or parent.tag != "figure":
        return None
    caption = parent.css_first("figcaption")
    if caption is None:
        return None
    return _WHITESPACE.sub(" ", caption.text(deep=True, separator=" ")).strip()


def image_pairs(tree: LexborHTMLParser, base_url: str, page_url: str) -> list[dict]:
    pairs = []
    for img in tree.css("img"):
        attributes = img.attributes
        url = resolve_http_url(image_source(attributes), base_url)
        if url is None:
            continue
        pairs.append({
            "url": url,
            "text": clean_attribute(attributes, "alt"),
            "title": clean_attribute(attributes, "title"),
            "figcaption": enclosing_figcaption(img),
            "page_url": page_url,
        })
    return pairs


def outgoing_links(tree: LexborHTMLParser, base_url: str) -> list[str]:
    """Unique absolute http(s) links of `<a>`/`<area>`, first-seen order; rel=nofollow skipped."""
    links: dict[str, None] = {}
    for anchor in tree.css("a[href], area[href]"):
        rel = (anchor.attributes.get("rel") or "").lower().split()
        if "nofollow" in rel:
            continue
        url = resolve_http_url(anchor.attributes.get("href"), base_url)
        if url is not None:
            links.setdefault(url, None)
    return list(links)


def parse_html(body: bytes | str, charset: str | None = None) -> LexborHTMLParser:
    """Parse a page; bytes are decoded as a browser would, `charset` being the HTTP charset
    label (or the whole Content-Type value), None when the response named none."""
    if isinstance(body, bytes):
        body = decode_html(body, charset)
    return LexborHTMLParser(body)


def extract_page(body: bytes | str, page_url: str, charset: str | None = None,
                 extra_directives: set[str] | frozenset[str] = frozenset(),
                 user_agent: str | None = None) -> PageExtract:
    """Pairs and links of one page, with its robots directives applied."""
    tree = parse_html(body, charset)
    directives = frozenset(meta_robots_directives(tree, user_agent) | set(extra_directives))
    base_url = document_base(tree, page_url)
    pairs = [] if directives & NO_PAIRS_DIRECTIVES else image_pairs(tree, base_url, page_url)
    links = [] if directives & NO_LINKS_DIRECTIVES else outgoing_links(tree, base_url)
    return PageExtract(pairs=pairs, links=links, directives=directives)


def extract_pairs(body: bytes | str, page_url: str, charset: str | None = None) -> list[dict]:
    return extract_page(body, page_url, charset).pairs


def extract_links(body: bytes | str, page_url: str, charset: str | None = None) -> list[str]:
    return extract_page(body, page_url, charset).links
