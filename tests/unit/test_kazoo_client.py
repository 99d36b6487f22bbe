"""The Kazoo client against scripted HTTP answers (respx): windows, Gregorian
seconds, the 31-day limit, cursor paging, re-authentication mid-crawl, 429 on the
media GET that learns a recording's size."""
from __future__ import annotations

import base64
import datetime as dt
import json

import httpx
import pytest
import respx

from recfs.content.cache import Cache
from recfs.content.reader import Reader
from recfs.http import Http, HttpError, RetryPolicy
from recfs.sources import kazoo
from recfs.sources.kazoo import (GREGORIAN_OFFSET, MAX_WINDOW, SERVICE_MAX_RANGE, KazooClient,
                                 KazooSource, Options, file_name, gregorian_to_unix, jwt_lifetime,
                                 media_type_of, month_windows, unix_to_gregorian)

API = "https://kazoo.test:8000/v2"
ACCOUNT = "a" * 32
KEY = "k" * 64


def utc(*parts: int) -> int:
    return int(dt.datetime(*parts, tzinfo=dt.timezone.utc).timestamp())


def jwt(iat: int, exp: int, tag: str = "") -> str:
    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'RS256'})}.{part({'iat': iat, 'exp': exp, 'jti': tag})}.sig"


def doc(rid: str, start: int, **extra) -> dict:
    d = {"id": rid, "start": unix_to_gregorian(start), "name": f"{rid}.mp3",
         "content_type": "audio/mpeg", "media_type": "mp3", "duration_ms": 1000,
         "_read_only": {"content_types": ["audio/mpeg"]}}
    d.update(extra)
    return d


class FakeKazoo:
    """Scripted Crossbar: auth tokens t1, t2, …; listings answered by `pages`."""

    def __init__(self, mock: respx.MockRouter):
        self.auths = 0
        self.valid: set[str] = set()
        self.listings: list[httpx.Request] = []
        self.docs_by_window: list[dict] = []
        mock.put(f"{API}/api_auth").mock(side_effect=self.auth)
        mock.get(path__regex=r"^/v2/accounts/\w+/recordings$").mock(side_effect=self.listing)

    def auth(self, request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content) == {"data": {"api_key": KEY}}
        self.auths += 1
        token = jwt(1000, 4600, f"t{self.auths}")
        self.valid.add(token)
        return httpx.Response(201, json={"auth_token": token, "status": "success",
                                         "data": {"account_id": ACCOUNT}})

    def listing(self, request: httpx.Request) -> httpx.Response:
        self.listings.append(request)
        if request.headers.get("x-auth-token") not in self.valid:
            return httpx.Response(401, json={"error": "401", "message": "invalid_credentials",
                                             "status": "error", "data": {}})
        q = request.url.params
        frm, to = int(q["created_from"]), int(q["created_to"])
        if to - frm > SERVICE_MAX_RANGE or to < frm:
            return httpx.Response(400, json={"error": "400", "message": "validation error",
                                             "status": "error",
                                             "data": {"created_from": {"date_range": {}}}})
        return self.page(request, frm, to)

    def page(self, request, frm, to) -> httpx.Response:
        return httpx.Response(200, json={"data": [], "page_size": 0, "status": "success"})


def options(**extra) -> Options:
    opts = {"api_url": API, "api_key": KEY, "page_size": 50, "created_lag_hours": 6.0,
            "size_concurrency": 4, "user_view": True}
    opts.update(extra)
    return Options(name="kz", kind="kazoo", **opts)


def source(http: Http, now: int, **extra) -> KazooSource:
    return kazoo.Source("kz", options(**extra), http, clock=lambda: now)


@pytest.fixture
async def http():
    client = Http(retry=RetryPolicy(attempts=6, base_delay=0.01, max_delay=0.05, budget=10))
    yield client
    await client.aclose()


# ---------------------------------------------------------------- pure functions

def test_gregorian_conversion():
    assert GREGORIAN_OFFSET == 62167219200
    assert unix_to_gregorian(0) == 62167219200
    assert unix_to_gregorian(utc(2019, 1, 1)) == 63713520000
    assert gregorian_to_unix(63713520000) == utc(2019, 1, 1)


def test_month_windows_cross_months_and_years_within_31_days():
    windows = month_windows(utc(2023, 11, 15, 0), utc(2024, 3, 2, 12))
    assert windows == [(utc(2023, 11, 15), utc(2023, 12, 1)), (utc(2023, 12, 1), utc(2024, 1, 1)),
                       (utc(2024, 1, 1), utc(2024, 2, 1)), (utc(2024, 2, 1), utc(2024, 3, 1)),
                       (utc(2024, 3, 1), utc(2024, 4, 1))]
    assert all(b - a <= MAX_WINDOW < SERVICE_MAX_RANGE for a, b in windows)


def test_names_take_the_extension_of_the_stored_media_type():
    wav = {"content_type": "audio/mpeg", "_read_only": {"content_types": ["audio/wav"]}}
    assert media_type_of(wav) == "audio/wav"
    assert media_type_of({"media_type": ".mp3"}) == "audio/mpeg"
    assert media_type_of({"media_type": "wav"}) == "audio/wav"
    assert media_type_of({"content_type": "audio/wav"}) == "audio/wav"
    assert file_name("abc.mp3", "audio/mpeg") == "abc.mp3"
    assert file_name("abc.MP3", "audio/mpeg") == "abc.MP3"
    assert file_name("abc.mp3", "audio/wav") == "abc.wav"
    assert file_name("Sales call with Zoë", "audio/mpeg") == "Sales call with Zoë.mp3"
    assert file_name("call 2024.01.05", "audio/wav") == "call 2024.01.05.wav"
    assert file_name("odd.mp3", "application/octet-stream") == "odd.mp3"


def test_jwt_lifetime():
    assert jwt_lifetime(jwt(100, 3700)) == 3600
    assert jwt_lifetime("opaque-token") is None


# ---------------------------------------------------------------- listing

@respx.mock(assert_all_called=False)
async def test_cursor_paging_walks_to_the_end(respx_mock, http):
    fake = FakeKazoo(respx_mock)
    docs = [doc(f"202401-{i:032x}", utc(2024, 1, 10) - i) for i in range(7)]

    def page(request, frm, to):
        key = request.url.params.get("start_key")
        start = 0 if key is None else int(key.removeprefix("k"))
        size = int(request.url.params["page_size"])
        chunk = docs[start:start + size]
        body = {"data": chunk, "page_size": len(chunk), "status": "success"}
        if start + size < len(docs):
            body["next_start_key"] = f"k{start + size}"
        return httpx.Response(200, json=body)
    fake.page = page
    client = KazooClient(http, API, KEY, page_size=3)
    got = await client.list_window(ACCOUNT, utc(2024, 1, 1), utc(2024, 2, 1))
    assert [d["id"] for d in got] == [d["id"] for d in docs]
    assert [r.url.params.get("start_key") for r in fake.listings] == [None, "k3", "k6"]
    first = fake.listings[0].url.params
    assert int(first["created_from"]) == utc(2024, 1, 1) + GREGORIAN_OFFSET
    assert int(first["created_to"]) == utc(2024, 2, 1) + GREGORIAN_OFFSET - 1
    assert all(r.url.params["page_size"] == "3" for r in fake.listings)
    assert all(r.headers["x-auth-token"] for r in fake.listings)


@respx.mock(assert_all_called=False)
async def test_reauth_mid_crawl_resumes_with_the_same_cursor(respx_mock, http):
    fake = FakeKazoo(respx_mock)
    docs = [doc(f"202401-{i:032x}", utc(2024, 1, 10) - i) for i in range(6)]

    def page(request, frm, to):
        key = request.url.params.get("start_key")
        start = 0 if key is None else int(key)
        if start == 2 and fake.auths == 1:
            fake.valid.clear()                 # the token expires between pages 1 and 2
            return httpx.Response(401, json={"error": "401", "message": "invalid_credentials"})
        chunk = docs[start:start + 2]
        body = {"data": chunk, "page_size": len(chunk)}
        if start + 2 < len(docs):
            body["next_start_key"] = str(start + 2)
        return httpx.Response(200, json=body)
    fake.page = page
    client = KazooClient(http, API, KEY, page_size=2)
    got = await client.list_window(ACCOUNT, utc(2024, 1, 1), utc(2024, 1, 20))
    assert [d["id"] for d in got] == [d["id"] for d in docs]
    assert fake.auths == 2
    assert [r.url.params.get("start_key") for r in fake.listings] == [None, "2", "2", "4"]
    tokens = [r.headers["x-auth-token"] for r in fake.listings]
    assert tokens[0] == tokens[1] != tokens[2] == tokens[3]


@respx.mock(assert_all_called=False)
async def test_a_window_wider_than_31_days_is_never_asked(respx_mock, http):
    fake = FakeKazoo(respx_mock)
    client = KazooClient(http, API, KEY)
    with pytest.raises(ValueError):
        await client.list_window(ACCOUNT, utc(2024, 1, 1), utc(2024, 1, 1) + MAX_WINDOW + 1)
    assert fake.listings == []


@respx.mock(assert_all_called=False)
async def test_date_range_error_is_reported(respx_mock, http):
    respx_mock.put(f"{API}/api_auth").mock(return_value=httpx.Response(
        201, json={"auth_token": "t", "data": {"account_id": ACCOUNT}}))
    respx_mock.get(f"{API}/accounts/{ACCOUNT}/recordings").mock(return_value=httpx.Response(
        400, json={"error": "400", "message": "validation error", "status": "error",
                   "data": {"created_from": {"date_range": {"message": "too wide"}}}}))
    client = KazooClient(http, API, KEY)
    with pytest.raises(HttpError) as err:
        await client.list_window(ACCOUNT, utc(2024, 1, 1), utc(2024, 1, 2))
    assert err.value.status == 400
    assert "validation error" in str(err.value) and KEY not in str(err.value)


@respx.mock(assert_all_called=False)
async def test_history_pass_walks_month_windows_once(respx_mock, http):
    """Year, month and users/ levels come from one pass; only the open month is asked
    again once the listing TTL has passed."""
    fake = FakeKazoo(respx_mock)
    store = [doc("202401-" + "1" * 32, utc(2024, 1, 20, 9), owner_id="u1"),
             doc("202402-" + "2" * 32, utc(2024, 2, 29, 23, 58), owner_id="u2"),
             doc("202403-" + "3" * 32, utc(2024, 3, 31, 12)),
             doc("202404-" + "4" * 32, utc(2024, 4, 9, 8), owner_id="u1"),
             doc("202404-" + "5" * 32, utc(2024, 4, 9, 9), _read_only={"content_types": []})]

    def page(request, frm, to):
        hits = [d for d in store if frm <= d["start"] + 60 <= to]   # stored a minute after start
        return httpx.Response(200, json={"data": hits, "page_size": len(hits)})
    fake.page = page
    now = [utc(2024, 4, 10, 12)]
    src = kazoo.Source("kz", options(since=dt.date(2024, 1, 15)), http, clock=lambda: now[0])
    root = await src.list_dir(src.root_ref())
    assert [e.name for e in root.entries] == [ACCOUNT]
    acct = await src.list_dir(root.entries[0].ref)
    assert [e.name for e in acct.entries] == ["2024", "users"]
    windows = [(int(r.url.params["created_from"]) - GREGORIAN_OFFSET,
                int(r.url.params["created_to"]) - GREGORIAN_OFFSET + 1) for r in fake.listings]
    assert windows == [(utc(2024, 1, 15), utc(2024, 2, 1)), (utc(2024, 2, 1), utc(2024, 3, 1)),
                       (utc(2024, 3, 1), utc(2024, 4, 1)), (utc(2024, 4, 1), utc(2024, 5, 1))]
    year = await src.list_dir(acct.entries[0].ref)
    assert [e.name for e in year.entries] == ["01", "02", "03", "04"]
    days = {}
    for month in year.entries:
        days[month.name] = [e.name for e in (await src.list_dir(month.ref)).entries]
    assert days == {"01": ["20"], "02": ["29"], "03": ["31"], "04": ["09"]}
    users = await src.list_dir(acct.entries[1].ref)
    assert [e.name for e in users.entries] == ["u1", "u2"]
    u1_year = await src.list_dir((await src.list_dir(users.entries[0].ref)).entries[0].ref)
    assert [e.name for e in u1_year.entries] == ["01", "04"]
    assert len(fake.listings) == 4                  # one pass for every level above the days
    now[0] += src.listing_ttl + 1
    await src.list_dir(acct.entries[0].ref)
    assert len(fake.listings) == 5                  # only the open month again
    assert fake.listings[-1].url.params["created_from"] == str(utc(2024, 4, 1) + GREGORIAN_OFFSET)


@respx.mock(assert_all_called=False)
async def test_day_folder_is_one_window_keeping_calls_started_that_day(respx_mock, http):
    fake = FakeKazoo(respx_mock)
    late = doc("202403-" + "6" * 32, utc(2024, 2, 29, 23, 58), owner_id="u2")
    early_next = doc("202403-" + "7" * 32, utc(2024, 3, 1, 0, 30))

    def page(request, frm, to):
        return httpx.Response(200, json={"data": [early_next, late], "page_size": 2})
    fake.page = page
    src = source(http, utc(2024, 4, 10))
    listing = await src.list_dir(("day", ACCOUNT, None, 2024, 2, 29))
    assert [e.name for e in listing.entries] == [late["name"]]
    (req,) = fake.listings
    frm = int(req.url.params["created_from"]) - GREGORIAN_OFFSET
    to = int(req.url.params["created_to"]) - GREGORIAN_OFFSET
    assert frm <= utc(2024, 2, 29) and to >= utc(2024, 3, 1) + 6 * 3600 - 1
    assert to - frm <= MAX_WINDOW
    entry = listing.entries[0]
    assert entry.size is None and entry.mtime == utc(2024, 2, 29, 23, 58)
    assert entry.xattrs["kazoo.owner_id"] == "u2"


@respx.mock(assert_all_called=False)
async def test_429_without_retry_after_is_retried(respx_mock, http, tmp_path, nursery):
    """A recording's size is learnt from its media URL (a one-byte ranged GET with
    Accept: audio/mpeg); the service's 429s, which carry no Retry-After, are retried."""
    fake = FakeKazoo(respx_mock)
    rid = f"202401-{'8' * 32}"
    media = respx_mock.get(f"{API}/accounts/{ACCOUNT}/recordings/{rid}").mock(
        side_effect=[httpx.Response(429, json={"error": "429", "message": "too_many_requests"})] * 3
        + [httpx.Response(206, headers={"Content-Range": "bytes 0-0/12345"}, content=b"x")])
    fake.page = lambda request, frm, to: httpx.Response(
        200, json={"data": [doc(rid, utc(2024, 1, 10, 9))], "page_size": 1})
    src = source(http, utc(2024, 2, 1))
    (entry,) = (await src.list_dir(("day", ACCOUNT, None, 2024, 1, 10))).entries
    assert entry.size is None
    cache = Cache(tmp_path, max_size=1 << 30)
    try:
        await Reader(cache, nursery, http).learn_sizes(src, [entry], whole=False)
    finally:
        cache.close()
    assert entry.size == 12345
    assert media.call_count == 4
    assert http.retries == 3
    for call in media.calls:
        assert call.request.headers["range"] == "bytes=0-0"
        assert call.request.headers["accept"] == "audio/mpeg"
        assert call.request.headers["x-auth-token"] in fake.valid
