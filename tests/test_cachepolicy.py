"""The response cache's HTTP rules (workers/cachepolicy.py): one test per rule, named after the
RFC section it follows, and property tests of the parsers (Cache-Control, HTTP-date) and of the
rules on arbitrary field values.

GREENFORK_FUZZ_EXAMPLES sets the examples per property test (1,000 by default here).
"""

from __future__ import annotations

import email.utils
import os
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenfork.master.respcache import Entry
from greenfork.workers import cachepolicy as cp

EXAMPLES = int(os.environ.get("GREENFORK_FUZZ_EXAMPLES", "1000"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = 1_800_000_000.0  # a fixed wall clock: the rules take time as an argument


def http_date(t: float) -> str:
    return email.utils.formatdate(t, usegmt=True)


def req(method: str = "GET", **fields: str) -> cp.RequestRule:
    return cp.request_rule(method, {k.replace("_", "-"): v for k, v in fields.items()})


def resp(status: int = 200, authorized: bool = False, request_time: float = NOW,
         **fields: str) -> cp.Storable:
    return cp.response_rule(status, {k.replace("_", "-"): v for k, v in fields.items()},
                            authorized=authorized, request_time=request_time, response_time=NOW)


def entry(**kw: object) -> Entry:
    headers = (("Content-Type", "text/html"), ("Content-Length", "5"),
               ("Cache-Control", "public, max-age=60"), ("ETag", '"v1"'), ("Vary", "Accept-Encoding"),
               ("Content-Location", "/page"), ("Expires", http_date(NOW + 60)),
               ("Last-Modified", http_date(NOW - 3600)))
    base: dict[str, object] = dict(status="200 OK", headers=headers, body=b"hello", stored_at=NOW,
                                   lifetime=60.0, initial_age=0.0, etag='"v1"',
                                   last_modified=http_date(NOW - 3600))
    base.update(kw)
    return Entry(**base)  # type: ignore[arg-type]


# -- the request: may the cache answer it? --------------------------------------------------------

@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "get"])
def test_rfc9111_3_only_get_and_head_use_the_cache(method: str) -> None:
    """RFC 9111 3: the request method must be understood and cacheable; here GET and HEAD."""
    rule = req(method)
    assert (rule.lookup, rule.store, rule.reason) == (False, False, "method")
    assert req("GET").lookup and req("GET").store


def test_rfc9111_3_head_is_answered_from_the_cache_but_its_response_is_not_stored() -> None:
    """RFC 9110 9.3.2: HEAD is answered from a stored GET; its own response has no body to store."""
    rule = req("HEAD")
    assert rule.lookup and not rule.store


@pytest.mark.parametrize("fields", [{"content_length": "5"}, {"transfer_encoding": "chunked"}])
def test_rfc9110_9_3_1_a_get_with_content_goes_to_the_app(fields: dict[str, str]) -> None:
    """RFC 9110 9.3.1: content in a GET has no generally defined semantics, so the app decides."""
    rule = req("GET", **fields)
    assert not rule.lookup and not rule.store
    assert req("GET", content_length="0").lookup


def test_rfc9111_3_5_a_request_with_authorization_always_reaches_the_app() -> None:
    """RFC 9111 3.5 (and HTTP.sys): the authenticated requester is never answered from the cache;
    as HTTP.sys, its response is not stored either, even a public one (stricter than 3.5)."""
    for method in ("GET", "HEAD"):
        rule = req(method, authorization="Bearer x", cache_control="max-age=60")
        assert not rule.lookup and not rule.store and rule.reason == "authorization"
    assert not req(authorization="").store  # present, even empty


def test_rfc9111_5_2_1_4_request_no_cache_reaches_the_app_and_refreshes_the_entry() -> None:
    """RFC 9111 5.2.1.4: no stored response without validation; the new response may be stored."""
    rule = req(cache_control="No-Cache")
    assert not rule.lookup and rule.store


def test_rfc9111_5_4_pragma_no_cache_counts_only_without_cache_control() -> None:
    """RFC 9111 5.4: Pragma: no-cache is no-cache when the request has no Cache-Control."""
    assert not req(pragma="no-cache").lookup
    assert req(pragma="no-cache", cache_control="max-age=60").lookup


def test_rfc9111_5_2_1_5_request_no_store_may_be_answered_but_is_never_stored() -> None:
    """RFC 9111 5.2.1.5: nothing of this request or its response is stored; a stored response may
    answer it."""
    rule = req(cache_control="no-store")
    assert rule.lookup and not rule.store


def test_rfc9111_5_2_1_1_request_max_age_limits_the_age_of_the_answer() -> None:
    """RFC 9111 5.2.1.1: max-age=N accepts a response no older than N; max-age=0 (a browser's
    reload) always reaches the app."""
    e = entry(stored_at=NOW - 10)
    assert cp.usable(e, req(cache_control="max-age=30"), NOW)
    assert not cp.usable(e, req(cache_control="max-age=5"), NOW)
    rule = req(cache_control="max-age=0")
    assert rule.lookup and rule.store and not cp.usable(entry(stored_at=NOW - 0.2), rule, NOW)


def test_rfc9111_5_2_1_3_request_min_fresh() -> None:
    """RFC 9111 5.2.1.3: the response must stay fresh for at least min-fresh more seconds."""
    e = entry(stored_at=NOW - 40)  # 20 s of freshness left
    assert cp.usable(e, req(cache_control="min-fresh=20"), NOW)
    assert not cp.usable(e, req(cache_control="min-fresh=21"), NOW)


def test_rfc9111_5_2_1_invalid_request_directive_arguments_go_to_the_app() -> None:
    """RFC 9111 5.2.1: max-age and min-fresh take delta-seconds; anything else bypasses the cache."""
    assert not req(cache_control="max-age=soon").lookup
    assert not req(cache_control="min-fresh").lookup


def test_rfc9111_5_2_1_7_only_if_cached_miss_is_a_504() -> None:
    """RFC 9111 5.2.1.7: only-if-cached without a stored response answers 504."""
    assert req(cache_control="only-if-cached").only_if_cached
    status, headers, body = cp.ONLY_IF_CACHED_MISS
    assert status.startswith("504 ") and dict(headers)["Content-Length"] == str(len(body))


@pytest.mark.parametrize("name", ["if-match", "if-unmodified-since", "range", "if-range"])
def test_rfc9111_4_3_2_conditions_for_the_origin_and_ranges_go_to_the_app(name: str) -> None:
    """RFC 9111 4.3.2: If-Match and If-Unmodified-Since are not applicable to a cache; ranges are
    the app's (whole responses only, as HTTP.sys). The 200 they may bring is still storable."""
    rule = cp.request_rule("GET", {name: '"x"'})
    assert not rule.lookup and rule.store and rule.reason == name


# -- the response: may it be stored, for how long? ------------------------------------------------

@pytest.mark.parametrize(("status", "ok"), [(200, True), (301, True), (404, True), (201, False), (203, False),
                                            (204, False), (206, False), (302, False), (304, False),
                                            (410, False), (500, False), (503, False)])
def test_rfc9110_15_1_only_200_301_and_404_are_stored(status: int, ok: bool) -> None:
    """RFC 9110 15.1: of the heuristically cacheable statuses, a page, a permanent redirect and a
    not-found; explicit freshness is required for all of them."""
    assert resp(status, cache_control="public, max-age=60").store is ok


def test_rfc9111_7_3_set_cookie_is_never_stored() -> None:
    """RFC 9111 7.3 (sensitive information) and HTTP.sys: one user's cookie never reaches another."""
    r = resp(cache_control="public, max-age=60", set_cookie="sid=1")
    assert (r.store, r.reason) == (False, "set-cookie")


def test_rfc9111_5_2_2_5_no_store_is_never_stored() -> None:
    """RFC 9111 5.2.2.5, in any case and position."""
    assert resp(cache_control="public, max-age=60, No-Store").reason == "no-store"


def test_rfc9111_5_2_2_3_must_understand_overrides_no_store_for_an_understood_status() -> None:
    """RFC 9111 5.2.2.3: a cache that understands the status may ignore no-store."""
    assert resp(cache_control="public, max-age=60, no-store, must-understand").store
    assert not resp(206, cache_control="public, max-age=60, no-store, must-understand").store


@pytest.mark.parametrize("cc", ["public, max-age=60, private", 'public, max-age=60, private="Set-Cookie"'])
def test_rfc9111_5_2_2_7_private_is_never_stored_by_a_shared_cache(cc: str) -> None:
    """RFC 9111 5.2.2.7: qualified or not (a qualified private is refused whole)."""
    assert resp(cache_control=cc).reason == "private"


@pytest.mark.parametrize("fields", [{"cache_control": "public, max-age=60, no-cache"},
                                    {"cache_control": 'public, max-age=60, no-cache="Set-Cookie"'},
                                    {"cache_control": "public, max-age=60", "pragma": "no-cache"}])
def test_rfc9111_5_2_2_4_no_cache_is_not_stored(fields: dict[str, str]) -> None:
    """RFC 9111 5.2.2.4: usable only after validation, which this cache never does (Pragma:
    no-cache too, as HTTP.sys refuses responses with Pragma)."""
    assert resp(**fields).reason == "no-cache"


@pytest.mark.parametrize("vary", ["*", "Accept-Encoding, *", "Accept-Encoding, bad name", "a/b"])
def test_rfc9111_4_1_vary_star_or_malformed_is_never_stored(vary: str) -> None:
    """RFC 9111 4.1: Vary: * always fails to match; a malformed member might hide one."""
    assert resp(cache_control="public, max-age=60", vary=vary).reason == "vary"


def test_rfc9111_4_1_vary_names_are_kept_lowercase_and_sorted() -> None:
    r = resp(cache_control="public, max-age=60", vary="User-Agent, accept-encoding,, Accept-Encoding")
    assert r.store and r.vary == ("accept-encoding", "user-agent")


@pytest.mark.parametrize(("fields", "ok"), [
    ({"cache_control": "max-age=60"}, False),
    ({"expires": http_date(NOW + 60)}, False),
    ({"cache_control": "public, max-age=60"}, True),
    ({"cache_control": "public", "expires": http_date(NOW + 60)}, True),
    ({"cache_control": "s-maxage=60"}, True),
])
def test_rfc9111_3_public_or_s_maxage_is_required(fields: dict[str, str], ok: bool) -> None:
    """Stricter than RFC 9111 3, as HTTP.sys: max-age or Expires alone are what apps send on per-user
    pages for the browser's own cache; only public or s-maxage (shared caches only) are taken."""
    r = resp(**fields)
    assert r.store is ok and (ok or r.reason == "not-public")


def test_rfc9111_3_5_authorized_request_is_stored_only_if_public_or_s_maxage() -> None:
    """RFC 9111 3.5: public and s-maxage allow storing a response to a request with Authorization
    (must-revalidate alone, the third, is not taken)."""
    assert resp(authorized=True, cache_control="public, max-age=60").store
    assert resp(authorized=True, cache_control="s-maxage=60").store
    r = resp(authorized=True, cache_control="max-age=60, must-revalidate")
    assert (r.store, r.reason) == (False, "authorization")


def test_rfc9111_4_2_2_no_heuristic_freshness() -> None:
    """RFC 9111 4.2.2 allows a heuristic lifetime; this cache stores only explicit freshness."""
    assert resp(cache_control="public").reason == "no-freshness"


def test_rfc9111_4_2_1_s_maxage_wins_over_max_age_and_expires() -> None:
    """RFC 9111 4.2.1 (and 5.2.2.10): for a shared cache s-maxage, then max-age, then Expires."""
    assert resp(cache_control="public, max-age=10, s-maxage=300", expires=http_date(NOW + 5)).lifetime == 300
    assert resp(cache_control="public, max-age=10", expires=http_date(NOW + 5)).lifetime == 10


def test_rfc9111_4_2_1_expires_minus_date() -> None:
    """RFC 9111 4.2.1: Expires minus Date; the response time stands in for a missing Date."""
    r = resp(cache_control="public", expires=http_date(NOW + 100), date=http_date(NOW - 20))
    assert r.lifetime == 120 and r.initial_age == 20
    assert resp(cache_control="public", expires=http_date(NOW + 100)).lifetime == 100


@pytest.mark.parametrize("expires", ["0", "tomorrow",
                                     "Sun, 06 Nov 1994 08:49:37 GMT, Mon, 07 Nov 1994 08:49:37 GMT"])
def test_rfc9111_4_2_1_invalid_expires_means_already_expired(expires: str) -> None:
    """RFC 9111 4.2.1 / 5.3: an invalid Expires, "0" above all, is a time in the past (two values
    are invalid too)."""
    assert resp(cache_control="public", expires=expires).reason == "stale"


@pytest.mark.parametrize("cc", ["public, max-age=ten", "public, max-age", "public, max-age=60, max-age=120",
                                'public, s-maxage="1e3"', "public, max-age=-1"])
def test_rfc9111_4_2_1_invalid_or_conflicting_freshness_is_stale(cc: str) -> None:
    """RFC 9111 4.2.1: invalid freshness information is best taken as stale, as are conflicting
    duplicates; an identical duplicate is harmless."""
    assert resp(cache_control=cc).reason == "stale"
    assert resp(cache_control="public, max-age=60, max-age=60").lifetime == 60


def test_rfc9111_1_2_2_delta_seconds_overflow_is_two_to_the_31() -> None:
    """RFC 9111 1.2.2: a delta-seconds too large to represent is taken as 2^31."""
    assert resp(cache_control="public, max-age=99999999999999999999999").lifetime == 2 ** 31
    assert cp.parse_cache_control('max-age="60"').seconds("max-age") == 60  # quoted form accepted (5.2)


def test_rfc9111_4_2_3_age_calculation() -> None:
    """RFC 9111 4.2.3: corrected_initial_age = max(apparent_age, age_value + response_delay)."""
    assert cp.initial_age({"age": "30"}, NOW - 2, NOW) == 32
    assert cp.initial_age({"date": http_date(NOW - 50), "age": "30"}, NOW, NOW) == 50
    assert cp.initial_age({"date": http_date(NOW + 50)}, NOW, NOW) == 0  # a Date in the future


@pytest.mark.parametrize(("age", "expected"), [("7, 9", 7), ("soon", 0), ("-3", 0), ("", 0)])
def test_rfc9111_5_1_age_first_member_and_invalid_ignored(age: str, expected: float) -> None:
    """RFC 9111 5.1: a list-valued Age uses its first member; an invalid one is ignored."""
    assert cp.initial_age({"age": age}, NOW, NOW) == expected


def test_rfc9111_4_2_a_response_already_stale_is_not_stored() -> None:
    """RFC 9111 4.2: fresh while freshness_lifetime > current_age; one that arrives stale is not kept."""
    assert resp(cache_control="public, max-age=60", age="60").reason == "stale"
    assert resp(cache_control="public, max-age=60", age="59").store


def test_rfc9111_4_2_entry_freshness_and_age() -> None:
    e = entry(stored_at=NOW, lifetime=60.0, initial_age=5.0)
    assert e.age(NOW + 10) == 15 and e.fresh(NOW + 54.9) and not e.fresh(NOW + 55)
    assert e.age(NOW - 100) == 5  # a clock stepped back never makes an entry younger than stored


# -- keys -----------------------------------------------------------------------------------------

def test_rfc9111_2_primary_key_is_the_target_uri() -> None:
    """RFC 9111 2: keyed by the target URI: scheme, host (case-insensitive, default port equal to
    none, RFC 9110 4.2.3), path and query exactly; not by method (HEAD uses the stored GET)."""
    k = cp.primary_key("http", b"Example.COM:80", b"/a", b"x=1")
    assert k == cp.primary_key("http", b"example.com", b"/a", b"x=1")
    assert k != cp.primary_key("https", b"example.com", b"/a", b"x=1")
    assert cp.primary_key("https", b"example.com:443", b"/a", b"") == cp.primary_key("https", b"example.com",
                                                                                     b"/a", b"")
    assert len({k, cp.primary_key("http", b"example.com:8080", b"/a", b"x=1"),
                cp.primary_key("http", b"example.com", b"/A", b"x=1"),
                cp.primary_key("http", b"example.com", b"/a", b"x=2"),
                cp.primary_key("http", b"example.com", b"/a?x=1", b"")}) == 5
    assert cp.primary_key("http", None, b"/", b"") is None and cp.primary_key("http", b"", b"/", b"") is None
    assert cp.primary_key("http", b"h", b"/\0", b"") is None


def test_rfc9111_4_1_vary_values_are_normalised() -> None:
    """RFC 9111 4.1: whitespace and line combining do not matter, nor case where the field is
    case-insensitive; an absent field differs from an empty one."""
    names = ("accept-encoding", "accept-language", "x-mode")
    a = cp.vary_values(names, cp.request_fields([(b"Accept-Encoding", b"GZIP,  br"), (b"X-Mode", b"Dark")]))
    b = cp.vary_values(names, cp.request_fields([(b"accept-encoding", b"gzip"), (b"ACCEPT-ENCODING", b"br"),
                                                 (b"x-mode", b"Dark")]))
    assert a == b == (("accept-encoding", "gzip,br"), ("accept-language", None), ("x-mode", "Dark"))
    assert cp.vary_values(["x-mode"], {"x-mode": "dark"}) != a[2:]
    assert cp.variant_key(b"k", [("x", None)]) != cp.variant_key(b"k", [("x", "")])


def test_rfc9111_4_1_variants_are_stored_and_selected_by_their_vary_values() -> None:
    """RFC 9111 4.1: a stub under the primary key names the Vary'd fields; each variant has its own
    key; the one whose values match the request is selected."""
    store: dict[bytes, Entry] = {}
    key = cp.primary_key("http", b"h", b"/p", b"")
    assert key is not None
    headers = [("Vary", "Accept-Encoding"), ("Cache-Control", "public, max-age=60")]
    ok = resp(cache_control="public, max-age=60", vary="Accept-Encoding")
    for enc in ("gzip", "br"):
        for k, e in cp.make_entries(key, {"accept-encoding": enc}, "200 OK", headers, enc.encode(), ok, NOW):
            store[k] = e
    assert store[key].stub and store[key].vary == (("accept-encoding", None),) and len(store) == 3

    def lookup(k: bytes, now: float) -> Entry | None:
        return store.get(k)
    hit = cp.find(lookup, key, {"accept-encoding": "BR"}, NOW)
    assert hit is not None and hit.body == b"br" and hit.vary == (("accept-encoding", "br"),)
    assert cp.find(lookup, key, {}, NOW) is None
    plain = cp.make_entries(key, {}, "200 OK", [("Cache-Control", "public, max-age=60")], b"x",
                            resp(cache_control="public, max-age=60"), NOW)
    assert len(plain) == 1 and plain[0][0] == key and not plain[0][1].stub


def test_rfc9110_7_6_1_hop_by_hop_age_date_and_length_are_not_stored() -> None:
    """RFC 9110 7.6.1: hop-by-hop fields (and those Connection names) are not stored; Age and Date
    are stamped per answer; Content-Length is the stored body's."""
    kept = cp.stored_headers([("Content-Type", "text/plain"), ("Connection", "X-Trace"), ("X-Trace", "1"),
                              ("Keep-Alive", "5"), ("Transfer-Encoding", "chunked"), ("Age", "3"),
                              ("Date", http_date(NOW)), ("content-length", "99"), ("ETag", '"a"')], 5)
    assert kept == (("Content-Type", "text/plain"), ("ETag", '"a"'), ("Content-Length", "5"))


# -- answers --------------------------------------------------------------------------------------

def test_rfc9111_5_1_a_hit_carries_its_age() -> None:
    """RFC 9111 5.1 and 4: a response from the cache carries Age, in whole seconds."""
    a = cp.answer(entry(initial_age=2.0), "GET", {}, NOW + 7.9)
    assert a.status == "200 OK" and a.body == b"hello" and a.headers[-1] == ("Age", "9")
    assert sum(1 for n, _ in a.headers if n.lower() == "age") == 1


def test_rfc9110_9_3_2_head_is_answered_from_the_stored_get_without_its_body() -> None:
    """RFC 9110 9.3.2: the same fields as GET (Content-Length included), no content."""
    a = cp.answer(entry(), "HEAD", {}, NOW)
    assert a.body == b"" and ("Content-Length", "5") in a.headers


@pytest.mark.parametrize(("inm", "hit"), [('"v1"', True), ('W/"v1"', True), ('"x", W/"v1"', True),
                                          ("*", True), ('"v2"', False), ('"V1"', False), ("v1", False),
                                          ('""', False)])
def test_rfc9110_13_1_2_if_none_match_weak_comparison(inm: str, hit: bool) -> None:
    """RFC 9110 13.1.2 and 8.8.3.2: If-None-Match matches by weak comparison (W/ ignored); "*"
    matches any stored representation; a match answers 304."""
    a = cp.answer(entry(), "GET", {"if-none-match": inm}, NOW)
    assert (a.status == "304 Not Modified") is hit
    assert cp.not_modified(entry(etag='W/"v1"'), {"if-none-match": '"v1"'}, NOW)
    assert not cp.not_modified(entry(etag=None), {"if-none-match": '"v1"'}, NOW)
    # an app's malformed (unquoted) ETag matches only its own exact text
    assert cp.not_modified(entry(etag="v1"), {"if-none-match": "v0, v1"}, NOW)
    assert not cp.not_modified(entry(etag="v1"), {"if-none-match": '"v1"'}, NOW)


def test_rfc9110_13_2_2_if_modified_since_is_ignored_with_if_none_match() -> None:
    """RFC 9110 13.2.2 step 3 before 4: If-None-Match decides alone when present."""
    ims = http_date(NOW)
    assert cp.not_modified(entry(), {"if-modified-since": ims}, NOW)
    assert not cp.not_modified(entry(), {"if-modified-since": ims, "if-none-match": '"other"'}, NOW)


def test_rfc9110_13_1_3_if_modified_since() -> None:
    """RFC 9110 13.1.3 and RFC 9111 4.3.2: 304 when Last-Modified (else the time stored) is not
    later than the date; an invalid date is ignored."""
    e = entry()  # Last-Modified: NOW - 3600
    assert cp.not_modified(e, {"if-modified-since": http_date(NOW - 3600)}, NOW)
    assert not cp.not_modified(e, {"if-modified-since": http_date(NOW - 3601)}, NOW)
    assert not cp.not_modified(e, {"if-modified-since": "yesterday"}, NOW)
    no_lm = entry(last_modified=None, stored_at=NOW - 10)
    assert cp.not_modified(no_lm, {"if-modified-since": http_date(NOW - 10)}, NOW)
    assert not cp.not_modified(no_lm, {"if-modified-since": http_date(NOW - 11)}, NOW)


def test_rfc9110_15_4_5_a_304_carries_the_listed_fields_only() -> None:
    """RFC 9110 15.4.5: Cache-Control, Content-Location, ETag, Expires, Vary (Date comes from the
    response path); no other representation metadata, but Last-Modified when there is no ETag."""
    a = cp.answer(entry(), "GET", {"if-none-match": '"v1"'}, NOW + 3)
    assert a.body == b""
    names = [n for n, _ in a.headers]
    assert names == ["Cache-Control", "ETag", "Vary", "Content-Location", "Expires", "Age"]
    no_etag = entry(etag=None, headers=tuple(h for h in entry().headers if h[0] != "ETag"))
    b = cp.answer(no_etag, "GET", {"if-modified-since": http_date(NOW)}, NOW)
    assert b.status.startswith("304") and "Last-Modified" in [n for n, _ in b.headers]


@pytest.mark.parametrize(("method", "status", "inv"), [
    ("POST", 200, True), ("PUT", 204, True), ("DELETE", 302, True), ("PATCH", 404, False),
    ("POST", 500, False), ("GET", 200, False), ("OPTIONS", 200, False), ("PROPPATCH", 201, True)])
def test_rfc9111_4_4_unsafe_methods_invalidate(method: str, status: int, inv: bool) -> None:
    """RFC 9111 4.4: a non-error status to an unsafe (or unknown) method invalidates the target URI."""
    assert cp.invalidates(method, status) is inv


# -- parsers --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "directives", "conflicting"), [
    ("max-age=60, Public", {"max-age": "60", "public": None}, set()),
    ('no-cache="Set-Cookie, X-A", private', {"no-cache": "Set-Cookie, X-A", "private": None}, set()),
    (r'ext="a\"b\\c", x', {"ext": 'a"b\\c', "x": None}, set()),
    ("MAX-AGE=1, max-age=2", {"max-age": "1"}, {"max-age"}),
    ("max-age=1,max-age=1", {"max-age": "1"}, set()),
    (" , ,public,,", {"public": None}, set()),
    ("max-age = 5 , s-maxage\t=\t7", {"max-age": "5", "s-maxage": "7"}, set()),
    ('bad stuff, {}, "quoted, garbage", no-store', {"no-store": None}, set()),
    ('x="unterminated, no-store', {}, set()),
    ("max-age=5 6, public", {"public": None}, set()),
    ("", {}, set()),
])
def test_rfc9111_5_2_cache_control_parsing(value: str, directives: dict[str, str | None],
                                           conflicting: set[str]) -> None:
    """RFC 9111 5.2: case-insensitive names, token or quoted-string arguments (with quoted-pair),
    empty list members allowed (RFC 9110 5.6.1); malformed members are skipped to the next comma
    outside quotes; a directive repeated with another value is flagged."""
    cc = cp.parse_cache_control(value)
    assert cc.directives == directives and cc.conflicting == conflicting


@pytest.mark.parametrize("value", ["Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT",
                                   "Sun Nov  6 08:49:37 1994"])
def test_rfc9110_5_6_7_three_date_formats(value: str) -> None:
    """RFC 9110 5.6.7: IMF-fixdate, and the obsolete RFC 850 and asctime forms, are all accepted."""
    assert cp.parse_http_date(value, NOW) == 784111777.0


@pytest.mark.parametrize("value", ["0", "-1", "Sun, 06 Nov 1994 08:49:37 UTC",
                                   "Sun, 06 nov 1994 08:49:37 GMT", "Sun, 32 Nov 1994 08:49:37 GMT",
                                   "Sun, 06 Nov 1994 24:00:00 GMT", "", "\x00"])
def test_rfc9110_5_6_7_invalid_dates(value: str) -> None:
    assert cp.parse_http_date(value, NOW) is None


def test_rfc9110_5_6_7_two_digit_years_more_than_50_years_ahead_are_past() -> None:
    now = cp.parse_http_date("Sun, 06 Nov 2050 08:49:37 GMT")
    assert now is not None
    assert cp.parse_http_date("Sunday, 06-Nov-99 08:49:37 GMT", now) == cp.parse_http_date(
        "Sat, 06 Nov 2099 08:49:37 GMT")
    assert cp.parse_http_date("Sunday, 06-Nov-01 08:49:37 GMT", NOW) == cp.parse_http_date(
        "Tue, 06 Nov 2001 08:49:37 GMT")


# -- property tests -------------------------------------------------------------------------------

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
tokens = st.text(TCHAR, min_size=1, max_size=12)
qdtext = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
                 max_size=12)
ows = st.sampled_from(["", " ", "\t", "  "])


@st.composite
def directive_lists(draw: st.DrawFn) -> tuple[str, dict[str, str | None]]:
    """A valid Cache-Control value, written in any of the allowed ways, and what it means."""
    expected: dict[str, str | None] = {}
    members = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(tokens)
        if name.lower() in expected:
            continue
        form = draw(st.sampled_from(["bare", "token", "quoted"]))
        if form == "bare":
            arg: str | None = None
            text = name
        elif form == "token":
            arg = draw(tokens)
            text = f"{name}={arg}"
        else:
            arg = draw(qdtext)
            # quoted-pair: '"' and '\\' must be escaped, any other character may be
            escaped = "".join("\\" + c if c in '"\\' or (c.isalnum() and draw(st.booleans())) else c
                              for c in arg)
            text = f'{name}="{escaped}"'
        expected[name.lower()] = arg
        members.append(draw(ows) + text + draw(ows))
        if draw(st.booleans()):  # garbage and empty members never disturb the valid ones
            members.append(draw(st.sampled_from(["", " ", "{junk}", 'a b', '"q,uo,ted"', "x=(y)", "=5"])))
    return ",".join(members), expected


@FUZZ
@given(directive_lists())
def test_fuzz_cache_control_valid_lists_parse_exactly(case: tuple[str, dict[str, str | None]]) -> None:
    value, expected = case
    cc = cp.parse_cache_control(value)
    assert cc.directives == expected and not cc.conflicting


@FUZZ
@given(st.text(max_size=80) | st.text(TCHAR + '=", \t\\', max_size=80))
def test_fuzz_cache_control_any_text_is_safe(value: str) -> None:
    """Any input parses without an exception, into lowercase token names only."""
    cc = cp.parse_cache_control(value)
    for name, arg in cc.directives.items():
        assert name and name == name.lower() and all(c in TCHAR for c in name)
        assert arg is None or isinstance(arg, str)
    for name in ("max-age", "s-maxage", "min-fresh"):
        s = cc.seconds(name)
        assert s is None or s == cp.INVALID or 0 <= s <= cp.DELTA_MAX


@FUZZ
@given(st.integers(0, 4_000_000_000), st.sampled_from(["imf", "850", "asctime"]))
def test_fuzz_http_dates_round_trip(t: int, form: str) -> None:
    tm = time.gmtime(t)
    if form == "imf":
        value = email.utils.formatdate(t, usegmt=True)
    elif form == "850":
        value = time.strftime("%A, %d-%b-%y %H:%M:%S GMT", tm)
    else:
        value = time.strftime("%a %b ", tm) + f"{tm.tm_mday:2d}" + time.strftime(" %H:%M:%S %Y", tm)
    assert cp.parse_http_date(value, float(t)) == float(t)


field_values = st.text(st.characters(min_codepoint=0, max_codepoint=0xFF), max_size=40) | st.sampled_from(
    ["public, max-age=60", "*", "0", "W/\"a\"", '"a", "b"', "Sun, 06 Nov 1994 08:49:37 GMT", "no-cache"])
field_names = st.sampled_from(["cache-control", "expires", "date", "age", "vary", "pragma", "set-cookie",
                               "etag", "last-modified", "if-none-match", "if-modified-since",
                               "authorization", "content-length", "accept-encoding", "x-other"])
field_dicts = st.dictionaries(field_names, field_values, max_size=8)


@FUZZ
@given(field_dicts, field_dicts, st.sampled_from([200, 301, 404, 500]),
       st.sampled_from(["GET", "HEAD", "POST"]))
def test_fuzz_rules_never_raise_and_stay_consistent(request_fields: dict[str, str], response: dict[str, str],
                                                    status: int, method: str) -> None:
    """Whatever the fields, the rules answer; a stored entry is fresh when stored and answers
    either itself or a body-less 304."""
    rule = cp.request_rule(method, request_fields)
    ok = cp.response_rule(status, response, authorized="authorization" in request_fields, request_time=NOW,
                          response_time=NOW)
    if not ok.store:
        return
    assert ok.lifetime > ok.initial_age >= 0 and "set-cookie" not in response
    key = cp.primary_key("http", b"h", b"/", b"")
    assert key is not None
    entries = cp.make_entries(key, request_fields, f"{status} X", list(response.items()), b"body", ok, NOW)
    for _k, e in entries:
        assert e.fresh(NOW)
        if not e.stub:
            a = cp.answer(e, method, request_fields, NOW)
            assert a.status == f"{status} X" or (a.status == "304 Not Modified" and a.body == b"")
            cp.usable(e, rule, NOW)
