"""Storage: cache keys, Vary variants, the byte-bounded LRU and body collection."""

from cache_helpers import T0, Clock, H

from proxy.cache import CacheConfig, HttpCache, normalize_url
from proxy.cache.directives import format_http_date

FRESH = ("Cache-Control", "max-age=600")


def put(cache, url, body=b"x", response=(FRESH,), request=()):
    fields = H(("Date", format_http_date(T0)), *response)
    writer = cache.begin_store("GET", url, H(*request), 200, "OK", fields, T0, T0)
    assert writer is not None
    writer.write(body)
    return writer.finish()


def test_url_normalisation():
    """RFC 9111 §2, RFC 9110 §4.2.3: scheme/host case, default port and empty path."""
    assert normalize_url("HTTP://Example.COM:80") == "http://example.com/"
    assert normalize_url("https://example.com:443/a?b=1#frag") == "https://example.com/a?b=1"
    assert normalize_url("http://example.com:8080/A") == "http://example.com:8080/A"
    assert normalize_url("http://[::1]:80/") == "http://[::1]/"


def test_vary_variants_are_kept_apart():
    """RFC 9111 §4.1: Vary: Accept-Encoding selects gzip and identity variants separately."""
    cache = HttpCache(clock=Clock())
    vary = (FRESH, ("Vary", "Accept-Encoding"))
    url = "http://example.com/v"
    put(cache, url, b"zipped", vary, [("Accept-Encoding", "gzip")])
    put(cache, url, b"plain", vary, [("Accept-Encoding", "identity")])
    assert len(cache) == 2
    gzip = cache.lookup("GET", url, H(("Accept-Encoding", "gzip")))
    plain = cache.lookup("GET", url, H(("Accept-Encoding", "identity")))
    assert (gzip.entry.body, plain.entry.body) == (b"zipped", b"plain")
    other = cache.lookup("GET", url, H(("Accept-Encoding", "br")))
    assert (other.kind, other.detail) == ("miss", "vary-miss")
    absent = cache.lookup("GET", url, H())
    assert absent.detail == "vary-miss"


def test_vary_values_are_normalised():
    """RFC 9111 §4.1: selecting values may be normalised (whitespace, combined lines)."""
    cache = HttpCache(clock=Clock())
    url = "http://example.com/v"
    put(cache, url, b"z", (FRESH, ("vary", "accept-encoding")), [("Accept-Encoding", "gzip, br")])
    request = H(("Accept-Encoding", " gzip"), ("Accept-Encoding", "br "))
    assert cache.lookup("GET", url, request).kind == "fresh"


def test_vary_star_never_matches():
    """RFC 9111 §4.1: a Vary of * always fails to match (and is not stored)."""
    cache = HttpCache(clock=Clock())
    fields = H(FRESH, ("Vary", "*"))
    assert cache.begin_store("GET", "http://e.com/", H(), 200, "OK", fields, T0, T0) is None
    assert cache.lookup("GET", "http://e.com/", H()).kind == "miss"


def test_same_vary_key_replaces_older_variant():
    """RFC 9111 §3, §4.1: a newer response replaces the stored one it would select against."""
    cache = HttpCache(clock=Clock())
    url = "http://example.com/r"
    put(cache, url, b"old")
    put(cache, url, b"new")
    assert len(cache) == 1
    assert cache.lookup("GET", url, H()).entry.body == b"new"


def test_hop_by_hop_fields_are_not_stored():
    """RFC 9111 §3.1, RFC 9110 §7.6.1: Connection and the fields it lists are not stored."""
    cache = HttpCache(clock=Clock())
    entry = put(
        cache,
        "http://example.com/h",
        b"abc",
        (FRESH, ("Connection", "X-Hop"), ("X-Hop", "1"), ("Transfer-Encoding", "chunked")),
    )
    assert "X-Hop" not in entry.headers
    assert "Transfer-Encoding" not in entry.headers
    assert entry.headers.get("Content-Length") == "3"


def test_lru_eviction_keeps_size_within_max_bytes():
    """The store evicts least recently used entries until size <= max_bytes."""
    probe = HttpCache(clock=Clock())
    one = put(probe, "http://example.com/0", b"x" * 100).size
    cache = HttpCache(CacheConfig(max_bytes=3 * one + 10), clock=Clock())
    for i in range(3):
        put(cache, f"http://example.com/{i}", b"x" * 100)
    assert len(cache) == 3
    cache.lookup("GET", "http://example.com/0", H())  # 0 is now the most recently used
    put(cache, "http://example.com/3", b"x" * 100)
    assert len(cache) == 3
    assert cache.size <= cache.config.max_bytes
    assert cache.lookup("GET", "http://example.com/1", H()).kind == "miss"  # evicted
    assert cache.lookup("GET", "http://example.com/0", H()).kind == "fresh"


def test_writer_abandons_body_over_max_object():
    """A body growing past max_object is dropped while it streams, and never stored."""
    cache = HttpCache(CacheConfig(max_object=10), clock=Clock())
    writer = cache.begin_store("GET", "http://e.com/", H(), 200, "OK", H(FRESH), T0, T0)
    writer.write(b"123456")
    assert not writer.abandoned
    writer.write(b"78901")
    assert writer.abandoned
    writer.write(b"more")
    assert writer.finish() is None
    assert len(cache) == 0


def test_abort_never_stores():
    """RFC 9111 §3.3: a partial or aborted response is not stored."""
    cache = HttpCache(clock=Clock())
    writer = cache.begin_store("GET", "http://e.com/", H(), 200, "OK", H(FRESH), T0, T0)
    writer.write(b"partial")
    writer.abort()
    assert writer.finish() is None
    assert len(cache) == 0


def test_body_shorter_than_content_length_is_not_stored():
    """RFC 9111 §3.3: an incomplete response (fewer bytes than Content-Length) is not reused."""
    cache = HttpCache(clock=Clock())
    fields = H(FRESH, ("Content-Length", "10"))
    writer = cache.begin_store("GET", "http://e.com/", H(), 200, "OK", fields, T0, T0)
    writer.write(b"12345")
    assert writer.finish() is None
    assert len(cache) == 0


def test_clear_and_size():
    """The store reports its variant count and bytes held, and can be emptied."""
    cache = HttpCache(clock=Clock())
    entry = put(cache, "http://example.com/c", b"x" * 50)
    assert (len(cache), cache.size) == (1, entry.size)
    assert entry.size > 50
    cache.clear()
    assert (len(cache), cache.size) == (0, 0)
