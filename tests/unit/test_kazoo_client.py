"""The Kazoo client against scripted HTTP answers (respx): windows, Gregorian
seconds, the server's maximum range (learnt from its 400), cursor paging,
re-authentication mid-crawl, bounded probes for the year, month and day levels, the
API key refused, 429 on the media GET that learns a recording's size."""
from __future__ import annotations

import base64
import datetime as dt
import json
import logging

import httpx
import pytest
import respx

from recfs.content.cache import Cache
from recfs.content.reader import Reader
from recfs.http import Http, HttpError, RetryPolicy
from recfs.sources import kazoo
from recfs.sources.base import SourceError
from recfs.sources.kazoo import (GREGORIAN_OFFSET, SERVICE_MAX_RANGE, KazooClient, KazooSource,
                                 Options, file_name, gregorian_to_unix, jwt_lifetime,
                                 media_type_of, period_bounds, unix_to_gregorian)

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


def test_period_bounds_cross_months_and_years():
    assert period_bounds((2024,)) == (utc(2024, 1, 1), utc(2025, 1, 1))
    assert period_bounds((2024, 12)) == (utc(2024, 12, 1), utc(2025, 1, 1))
    assert period_bounds((2024, 2)) == (utc(2024, 2, 1), utc(2024, 3, 1))
    assert period_bounds((2024, 2, 29)) == (utc(2024, 2, 29), utc(2024, 3, 1))


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


class Crossbar(FakeKazoo):
    """Listings as crossbar_view answers them: documents created in the window (each
    doc's `created`, Unix seconds, stands for pvt_created), newest first unless
    ascending, `page_size` of them and a cursor; a window wider than `max_range` is a
    400 date_range with Crossbar's message (or `message`); PATCH is not allowed (4.3);
    the users API lists `users`."""

    def __init__(self, mock: respx.MockRouter, store: list[dict], max_range: int = SERVICE_MAX_RANGE,
                 message: str | None = None, users: list[dict] = ()):
        super().__init__(mock)
        self.store = store
        self.max_range = max_range
        self.message = message
        self.users = list(users)
        mock.patch(path__regex=r"^/v2/accounts/\w+/recordings/[^/]+$").mock(
            return_value=httpx.Response(405, json={"error": "405", "message": "invalid_method"}))
        mock.get(path__regex=r"^/v2/accounts/\w+/users$").mock(side_effect=self.list_users)

    def listing(self, request: httpx.Request) -> httpx.Response:
        q = request.url.params
        frm, to = int(q["created_from"]), int(q["created_to"])
        if to - frm > self.max_range:
            self.listings.append(request)
            message = self.message if self.message is not None else \
                f"created_to {to} is more than {self.max_range} seconds from created_from {frm}"
            return httpx.Response(400, json={"error": "400", "message": "validation error",
                                             "status": "error", "data": {"created_from": {
                                                 "date_range": {"message": message, "cause": to}}}})
        return super().listing(request)

    def page(self, request, frm, to) -> httpx.Response:
        q = request.url.params
        ascending = q.get("ascending") == "true"
        rows = sorted((d for d in self.store if frm <= unix_to_gregorian(d["created"]) <= to),
                      key=lambda d: (d["created"], d["id"]), reverse=not ascending)
        start = int(q.get("start_key", "0"))
        size = int(q["page_size"])
        chunk = rows[start:start + size]
        body = {"data": [{k: v for k, v in d.items() if k != "created"} for d in chunk],
                "page_size": len(chunk), "status": "success"}
        if start + size < len(rows):
            body["next_start_key"] = str(start + size)
        return httpx.Response(200, json=body)

    def list_users(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"data": self.users, "status": "success"})

    def windows(self) -> list[tuple[int, int]]:
        return [(int(r.url.params["created_from"]) - GREGORIAN_OFFSET,
                 int(r.url.params["created_to"]) - GREGORIAN_OFFSET + 1) for r in self.listings]


def stored(rid: str, start: int, after: int = 120, **extra) -> dict:
    """A recording document stored `after` seconds after its call started."""
    return dict(doc(rid, start, **extra), created=start + after)


@respx.mock(assert_all_called=False)
async def test_a_window_wider_than_the_servers_range_is_listed_in_pieces(respx_mock, http):
    store = [stored(f"2024{1 + i // 31:02d}-{i:032x}", utc(2024, 1, 1) + i * 86400) for i in range(70)]
    fake = Crossbar(respx_mock, store)
    got = await KazooClient(http, API, KEY).list_window(ACCOUNT, utc(2024, 1, 1), utc(2024, 3, 15))
    assert [d["id"] for d in got] == [d["id"] for d in sorted(store, key=lambda d: -d["created"])]
    assert all(b - a <= SERVICE_MAX_RANGE for a, b in fake.windows())
    assert len(fake.listings) == 3


@respx.mock(assert_all_called=False)
async def test_a_lower_maximum_range_is_learnt_from_the_400_and_told_once(respx_mock, http, caplog):
    """crossbar.maximum_range is an operator setting: a cluster set to 8 days answers a
    wider window 400 date_range, naming its limit; the client lists on in pieces."""
    eight_days = 8 * 86400
    store = [stored(f"202401-{i:032x}", utc(2024, 1, 1) + i * 86400) for i in range(60)]
    fake = Crossbar(respx_mock, store, max_range=eight_days)
    client = KazooClient(http, API, KEY)
    caplog.set_level(logging.WARNING, logger="recfs")
    got = await client.list_window(ACCOUNT, utc(2024, 1, 1), utc(2024, 3, 1))
    assert sorted(d["id"] for d in got) == sorted(d["id"] for d in store)
    refused = [r for r in fake.listings if (int(r.url.params["created_to"]) -
                                            int(r.url.params["created_from"])) > eight_days]
    assert len(refused) == 1 and client.max_range == eight_days
    await client.list_window(ACCOUNT, utc(2024, 1, 1), utc(2024, 2, 1))
    assert len(refused) == 1                         # remembered: never asked too wide again
    told = [r for r in caplog.records if "maximum_range" in r.getMessage()]
    assert len(told) == 1 and str(eight_days) in told[0].getMessage()


@respx.mock(assert_all_called=False)
async def test_a_date_range_400_that_names_no_limit_halves_the_window(respx_mock, http):
    store = [stored(f"202401-{i:032x}", utc(2024, 1, 1) + i * 86400) for i in range(40)]
    fake = Crossbar(respx_mock, store, max_range=5 * 86400, message="date range too wide")
    client = KazooClient(http, API, KEY)
    got = await client.list_window(ACCOUNT, utc(2024, 1, 1), utc(2024, 2, 10))
    assert sorted(d["id"] for d in got) == sorted(d["id"] for d in store)
    assert client.max_range <= 5 * 86400
    assert sum(1 for r in fake.listings if r.url.params.get("start_key") is None) <= 4 + 40 // 3


@respx.mock(assert_all_called=False)
async def test_another_400_is_reported(respx_mock, http):
    respx_mock.put(f"{API}/api_auth").mock(return_value=httpx.Response(
        201, json={"auth_token": "t", "data": {"account_id": ACCOUNT}}))
    respx_mock.get(f"{API}/accounts/{ACCOUNT}/recordings").mock(return_value=httpx.Response(
        400, json={"error": "400", "message": "validation error", "status": "error",
                   "data": {"created_from": {"type": {"message": "Value is not of type integer"}}}}))
    client = KazooClient(http, API, KEY)
    with pytest.raises(HttpError) as err:
        await client.list_window(ACCOUNT, utc(2024, 1, 1), utc(2024, 1, 2))
    assert err.value.status == 400
    assert "validation error" in str(err.value) and KEY not in str(err.value)


@respx.mock(assert_all_called=False)
async def test_the_account_level_of_a_long_history_costs_a_few_probes(respx_mock, http):
    """No pass over the history: the years of an account come from probes of one
    document, the newest window of each year first; months from one probe each; the
    days of a month from one page of it when it fits."""
    store = [stored(f"{(dt.date(2023, 3, 1) + dt.timedelta(days=i)):%Y%m}-{i:032x}",
                    utc(2023, 3, 1, 10) + i * 86400, owner_id=f"u{i // 3 % 3}")
             for i in range(0, 400, 3)]
    fake = Crossbar(respx_mock, store, users=[{"id": "u0", "first_name": "Ana", "last_name": "Lopez"},
                                              {"id": "u1"}])
    now = [utc(2024, 4, 10, 12)]
    src = kazoo.Source("kz", options(since=dt.date(2023, 3, 1), accounts=[ACCOUNT]), http,
                       clock=lambda: now[0])
    acct = await src.list_dir(("acct", ACCOUNT))
    assert [e.name for e in acct.entries] == ["2023", "2024", "users"]
    assert len(fake.listings) == 2                   # one document of each year's newest window
    assert all(r.url.params["page_size"] == "1" for r in fake.listings)
    year = await src.list_dir(acct.entries[0].ref)
    assert [e.name for e in year.entries] == [f"{m:02d}" for m in range(3, 13)]
    assert len(fake.listings) == 2 + 10
    month = await src.list_dir(year.entries[0].ref)            # March 2023
    assert [e.name for e in month.entries] == [f"{d:02d}" for d in range(1, 32, 3)]
    assert len(fake.listings) == 12 + 2                        # one page of it, and the hours after
    day = await src.list_dir(month.entries[0].ref)
    assert [e.name for e in day.entries] == [store[0]["name"]]
    assert len(fake.listings) == 14                            # the page told every day
    # users/: the users API and the owners met; their March from what is known
    users = await src.list_dir(acct.entries[2].ref)
    assert [e.name for e in users.entries] == ["u0", "u1", "u2"]
    assert users.entries[0].xattrs["kazoo.user_name"] == "Ana Lopez"
    assert "kazoo.user_name" not in users.entries[2].xattrs
    u2_march = ("month", ACCOUNT, "u2", 2023, 3)
    assert [e.name for e in (await src.list_dir(u2_march)).entries] == ["07", "16", "25"]
    assert [e.name for e in (await src.list_dir(("day", ACCOUNT, "u2", 2023, 3, 7))).entries] == \
        [store[2]["name"]]
    assert len(fake.listings) == 14
    # a closed period is never asked again; the open month once its answer is old
    await src.list_dir(("acct", ACCOUNT))
    await src.list_dir(year.entries[0].ref)
    assert len(fake.listings) == 14
    now[0] += src.listing_ttl + 1
    await src.list_dir(("acct", ACCOUNT))
    assert len(fake.listings) == 15
    assert fake.windows()[-1][1] > utc(2024, 4, 10)


@respx.mock(assert_all_called=False)
async def test_a_day_is_shown_when_its_only_call_was_stored_after_midnight(respx_mock, http):
    """The probe of a period looks at the hours after it too: a call that started on a
    day and was stored after its end belongs to that day."""
    store = [stored("202403-" + "1" * 32, utc(2024, 3, 9, 23, 50), after=1200),
             stored("202403-" + "2" * 32, utc(2024, 3, 10, 0, 5), after=60)]
    fake = Crossbar(respx_mock, store)
    src = kazoo.Source("kz", options(since=dt.date(2024, 3, 1), accounts=[ACCOUNT]), http,
                       clock=lambda: utc(2024, 5, 1))
    assert await src._newest(ACCOUNT, None, (2024, 3, 9)) == utc(2024, 3, 9, 23, 50)
    assert await src._newest(ACCOUNT, None, (2024, 3, 8)) is None
    assert len(fake.listings) <= 5


@respx.mock(assert_all_called=False)
async def test_the_api_key_refused_is_one_clear_line_and_asked_once(respx_mock, http):
    """cb_api_auth: an unknown 64-character key is 404, another length 400 (the schema);
    both are "the API key was refused", and a refused key is not offered again at once
    (each api_auth costs 35 rate-limit tokens)."""
    for status in (404, 400):
        route = respx_mock.put(f"{API}/api_auth").mock(return_value=httpx.Response(
            status, json={"error": str(status), "status": "error", "data": [KEY]}))
        src = kazoo.Source("kz", options(accounts=[ACCOUNT]), http)
        with pytest.raises(SourceError) as err:
            await src.start()
        assert str(err.value) == f"the API key was refused by {API}/api_auth"
        assert KEY not in str(err.value)
        with pytest.raises(HttpError):
            await src.auth.headers()
        assert route.call_count == 1
        respx_mock.reset()


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
    assert to - frm <= SERVICE_MAX_RANGE
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
