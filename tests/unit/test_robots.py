import pytest

from pipeline.crawl.robots import RobotsCache, parse_robots, rules_for_response

UA = "CurateBot/0.1 (+https://example.org/bot)"

ROBOTS = """
# comment
User-agent: *
Disallow: /private/
Allow: /private/open.html
Disallow: /*.pdf$
Crawl-delay: 2

User-agent: otherbot
Disallow: /

User-agent: CurateBot
User-agent: fooBot
Disallow: /no-curate/
Allow: /no-curate/yes
Disallow: /*?session=
"""


def test_star_group_applies_when_no_group_names_us():
    rules = parse_robots(ROBOTS, "SomeBot/1.0")
    assert not rules.allowed("/private/x.html")
    assert rules.allowed("/private/open.html")  # longer Allow wins
    assert not rules.allowed("/docs/a.pdf") and rules.allowed("/docs/a.pdf.html")
    assert rules.allowed("/public.html") and rules.allowed("/robots.txt")
    assert rules.crawl_delay == 2.0


def test_our_own_group_replaces_the_star_group():
    rules = parse_robots(ROBOTS, UA)
    assert rules.allowed("/private/x.html")  # the * group no longer applies
    assert not rules.allowed("/no-curate/a") and rules.allowed("/no-curate/yes/a")
    assert not rules.allowed("/page?session=1") and rules.allowed("/page?x=1")
    assert rules.crawl_delay is None
    assert not parse_robots(ROBOTS, "OtherBot").allowed("/anything")


def test_tie_goes_to_allow_and_empty_disallow_allows_everything():
    assert parse_robots("User-agent: *\nDisallow: /a\nAllow: /a\n", UA).allowed("/a")
    assert parse_robots("User-agent: *\nDisallow:\n", UA).allowed("/x")
    assert parse_robots("", UA).allowed("/x")


@pytest.mark.parametrize("status,allowed", [(200, False), (404, True), (403, True), (410, True),
                                            (429, False), (500, False), (503, False)])
def test_fetch_status_decides(status, allowed):
    rules = rules_for_response(status, b"User-agent: *\nDisallow: /\n", UA)
    assert rules.allowed("/page.html") is allowed


def test_cache_fetches_each_origin_once_and_network_errors_disallow():
    calls = []

    def fetch(url):
        calls.append(url)
        if "down" in url:
            raise ConnectionRefusedError(url)
        return 200, {}, b"User-agent: *\nDisallow: /x\n"

    cache = RobotsCache(fetch, UA)
    assert cache.allowed("http://a.org/y") and not cache.allowed("http://a.org/x/1")
    assert cache.allowed("https://a.org/y")  # another origin: its own robots.txt
    assert not cache.allowed("http://down.org/y")
    assert calls == ["http://a.org/robots.txt", "https://a.org/robots.txt",
                     "http://down.org/robots.txt"]
    assert cache.cached_rules("http://b.org/") is None
