"""The Alvaria client against respx: paging (v2, v3), token refresh, URL renewal, sizes."""
from __future__ import annotations

import datetime as dt
import os
import time

import httpx
import pytest
import respx
import trio

from recfs.config import Secret
from recfs.http import Http, RetryPolicy
from recfs.sources.alvaria import AlvariaSource, parse_size, url_lifetime, url_time_left
from recfs.sources.base import Kind, SourceContext

API = "https://org1.via.example/via/{v}/organizations/org1"
TOKEN_URL = "https://id.example/tokenservice/oauth2/access_token"


def make_source(version="v3", **extra) -> AlvariaSource:
    http = Http(retry=RetryPolicy(attempts=3, base_delay=0.001))
    opts = {"api_url": API.format(v=version), "token_url": TOKEN_URL,
            "client_id": Secret("cid", "test"), "client_secret": Secret("csecret", "test"),
            "api_key": Secret("the-api-key", "test"), "root": "", "page_size": 2,
            "size_concurrency": 4, "listing_ttl": None}
    opts.update(extra)
    return AlvariaSource("alv", opts, SourceContext(http=http, cache=None))


def item(key, kind="file", size="1.0 KB"):
    return {"kind": "objectKey", "key": key, "keyName": key.rstrip("/").split("/")[-1],
            "size": size, "lastModifiedTime": "2024-05-01T10:00:00.250Z", "keyType": kind}


@pytest.fixture
def token_route():
    with respx.mock(assert_all_called=False) as mock:
        route = mock.post(TOKEN_URL).mock(return_value=httpx.Response(
            200, json={"access_token": "tok1", "token_type": "Bearer", "expires_in": 3600}))
        yield mock, route


async def test_v3_paging_follows_next_token_and_sends_both_headers(token_route):
    mock, token = token_route
    url = API.format(v="v3") + "/mediaStorage/data/objectKeys"
    pages = mock.get(url).mock(side_effect=[
        httpx.Response(200, json={"kind": "objectKeys", "nextToken": "T1", "totalItems": "3",
                                  "objectKeys": [item("exports/a/"  , "directory"), item("exports/b.wav")]}),
        httpx.Response(200, json={"kind": "objectKeys", "totalItems": "3",
                                  "objectKeys": [item("exports/c", "directory")]}),
    ])
    src = make_source("v3")
    listing = await src.list_dir("exports/")
    names = [(e.name, e.kind) for e in listing.entries]
    assert names == [("a", Kind.DIR), ("b.wav", Kind.FILE), ("c", Kind.DIR)]
    assert [e.ref for e in listing.entries if e.is_dir] == ["exports/a/", "exports/c/"]
    first, second = pages.calls
    assert first.request.headers["x-api-key"] == "the-api-key"
    assert first.request.headers["authorization"] == "Bearer tok1"
    assert first.request.url.params["keyType"] == "file:directory"
    assert first.request.url.params["key"] == "exports/"
    assert "nextToken" not in first.request.url.params
    assert second.request.url.params["nextToken"] == "T1"
    assert token.call_count == 1


async def test_v2_paging_uses_continuation_token(token_route):
    mock, _ = token_route
    url = API.format(v="v2") + "/mediaStorage/data/objectKeys"
    pages = mock.get(url).mock(side_effect=[
        httpx.Response(200, json={"objectKeys": [item("x/1")], "continuationToken": "C+/="}),
        httpx.Response(200, json={"objectKeys": [item("x/2")], "continuationToken": ""}),
    ])
    listing = await make_source("v2").list_dir("x/")
    assert [e.name for e in listing.entries] == ["1", "2"]
    assert pages.calls[1].request.url.params["continuationToken"] == "C+/="


async def test_sizes_are_unknown_after_listing_and_versions_carry_the_listing_facts(token_route):
    mock, _ = token_route
    mock.get(API.format(v="v3") + "/mediaStorage/data/objectKeys").mock(return_value=httpx.Response(
        200, json={"objectKeys": [item("r/a.wav", size="5370.0 KB")]}))
    (entry,) = (await make_source().list_dir("r/")).entries
    assert entry.size is None and entry.size_hint == 5370 * 1024
    assert "5370.0 KB" in entry.version


async def test_token_refreshed_once_on_401(token_route):
    mock, token = token_route
    token.side_effect = [
        httpx.Response(200, json={"access_token": "old", "expires_in": "3600"}),
        httpx.Response(200, json={"access_token": "new", "expires_in": "3600"}),
    ]
    route = mock.get(API.format(v="v3") + "/mediaStorage/data/objectKeys").mock(side_effect=[
        httpx.Response(401, json={"message": "Unauthorized"}),
        httpx.Response(200, json={"objectKeys": [item("r/a")]}),
    ])
    listing = await make_source().list_dir("r/")
    assert len(listing.entries) == 1
    assert [c.request.headers["authorization"] for c in route.calls] == ["Bearer old", "Bearer new"]


async def test_signed_url_is_a_lease_renewed_on_403_and_the_range_retried(token_route):
    mock, _ = token_route
    api = API.format(v="v3") + "/mediaStorage/data/objectKeys"
    urls = mock.get(api).mock(side_effect=[
        httpx.Response(200, json={"signedDownloadUrl": "https://s3.example/b/k?X-Amz-Expires=3600&sig=1"}),
        httpx.Response(200, json={"signedDownloadUrl": "https://s3.example/b/k?X-Amz-Expires=3600&sig=2"}),
    ])
    data = bytes(range(256)) * 4

    def s3(request):
        if request.url.params["sig"] == "1":
            return httpx.Response(403, text="<Error><Code>AccessDenied</Code></Error>")
        first, last = request.headers["range"][6:].split("-")
        return httpx.Response(206, content=data[int(first):int(last) + 1],
                              headers={"Content-Range": f"bytes {first}-{last}/{len(data)}"})
    mock.get(url__startswith="https://s3.example/").mock(side_effect=s3)
    src = make_source()
    got = bytearray()
    from recfs.sources.base import Entry
    entry = Entry("k", Kind.FILE, ref="r/k", size=len(data), id="r/k")
    await src.fetch_range(entry, 100, 600, lambda off, b: got.extend(b))
    assert bytes(got) == data[100:600]
    assert urls.call_count == 2
    # the renewed lease is reused
    got.clear()
    await src.fetch_range(entry, 0, 10, lambda off, b: got.extend(b))
    assert urls.call_count == 2 and bytes(got) == data[:10]


async def test_resolve_sizes_with_one_byte_ranged_gets(token_route):
    mock, _ = token_route
    mock.get(API.format(v="v3") + "/mediaStorage/data/objectKeys").mock(side_effect=lambda r: httpx.Response(
        200, json={"signedDownloadUrl": f"https://s3.example/{r.url.params['key']}?X-Amz-Expires=60"}))
    sizes = {"r/a": 12345, "r/b": 1}
    probes = mock.get(url__startswith="https://s3.example/").mock(side_effect=lambda r: httpx.Response(
        206, content=b"x", headers={"Content-Range": f"bytes 0-0/{sizes[r.url.path.lstrip('/')]}"}))
    from recfs.sources.base import Entry
    entries = [Entry(k.split("/")[1], Kind.FILE, ref=k, size=None, id=k) for k in sizes]
    await make_source().resolve_sizes(entries)
    assert {e.ref: e.size for e in entries} == sizes
    assert all(c.request.headers["range"] == "bytes=0-0" for c in probes.calls)


async def test_during_a_copy_sizes_come_with_the_whole_file_or_else_from_a_probe(token_route, tmp_path):
    from recfs.content.cache import Cache
    from recfs.sources.base import Entry
    mock, _ = token_route
    mock.get(API.format(v="v3") + "/mediaStorage/data/objectKeys").mock(side_effect=lambda r: httpx.Response(
        200, json={"signedDownloadUrl": f"https://s3.example/{r.url.params['key']}?X-Amz-Expires=60"}))
    content = {"r/a": os.urandom(300_000), "r/broken": os.urandom(5000)}

    def s3(request):
        key = request.url.path.lstrip("/")
        first, last = (int(x) for x in request.headers["range"][6:].split("-"))
        if key == "r/broken" and last > 0:
            return httpx.Response(503)            # the whole-file GET fails: probe instead
        body = content[key][first:last + 1]
        return httpx.Response(206, content=body, headers={
            "Content-Range": f"bytes {first}-{first + len(body) - 1}/{len(content[key])}"})
    s3_route = mock.get(url__startswith="https://s3.example/").mock(side_effect=s3)
    src = make_source()
    src.ctx.cache = cache = Cache(tmp_path, max_size=1 << 30)
    src.copy_seen = trio.current_time()
    entries = [Entry(k.split("/")[1], Kind.FILE, ref=k, size=None, size_hint=len(v), id=k, version="1")
               for k, v in content.items()]
    await src.resolve_sizes(entries)
    assert {e.ref: e.size for e in entries} == {k: len(v) for k, v in content.items()}
    a, broken = entries
    assert cache.has_whole(src.cache_key(a), a.size)
    assert cache.entry(src.cache_key(a), a.size).read(0, a.size) == content["r/a"]
    assert not cache.has_whole(src.cache_key(broken), broken.size)
    assert [c.request.headers["range"] for c in s3_route.calls if "broken" in str(c.request.url)][-1] == "bytes=0-0"
    assert list(cache.staging_dir.iterdir()) == []


@pytest.mark.parametrize("text,expected", [
    ("5370.0 KB", 5370 * 1024), ("4.3 kb", int(4.3 * 1024)), ("0.0 KB", 0), ("", 0),
    ("12 bytes", 12), ("1.5 MB", int(1.5 * 1024**2)), ("garbage", 0), (None, 0), (42, 42),
])
def test_size_parsing(text, expected):
    assert parse_size(text) == expected


def amz_date(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def test_url_time_left_counts_from_the_signing_date():
    now = 1_700_000_000.0
    assert url_time_left(f"https://x/y?X-Amz-Date={amz_date(now - 600)}&X-Amz-Expires=3600", now) == 3000
    assert url_time_left(f"https://x/y?X-Goog-Date={amz_date(now)}&X-Goog-Expires=60", now) == 60
    assert url_time_left("https://x/y?X-Amz-Date=garbage&X-Amz-Expires=60", now) == 60
    assert url_time_left("https://x/y", now) == 3600


async def test_urls_from_the_listing_are_leases_unless_blank_or_expired(token_route):
    """The seed's example listings carry each file's signedDownloadUrl: a fresh one
    saves the per-file request; a blank or stale one is asked for again."""
    mock, _ = token_route
    api = API.format(v="v3") + "/mediaStorage/data/objectKeys"
    fresh = f"https://s3.example/r/a?X-Amz-Date={amz_date(time.time() - 60)}&X-Amz-Expires=3600"
    stale = f"https://s3.example/r/b?X-Amz-Date={amz_date(time.time() - 7200)}&X-Amz-Expires=3600"

    def answer(request):
        if request.url.params["keyType"] == "signedDownloadUrl":
            return httpx.Response(200, json={"signedDownloadUrl":
                                             f"https://s3.example/{request.url.params['key']}?asked=1"})
        return httpx.Response(200, json={"objectKeys": [
            {**item("r/a"), "signedDownloadUrl": fresh, "signedUploadUrl": " "},
            {**item("r/b"), "signedDownloadUrl": stale},
            {**item("r/c"), "signedDownloadUrl": " "}]})
    api_route = mock.get(api).mock(side_effect=answer)
    s3 = mock.get(url__startswith="https://s3.example/").mock(side_effect=lambda r: httpx.Response(
        206, content=b"x", headers={"Content-Range": "bytes 0-0/7"}))
    src = make_source(page_size=10)
    entries = (await src.list_dir("r/")).entries
    await src.resolve_sizes(entries)
    assert [e.size for e in entries] == [7, 7, 7]
    asked = sorted(c.request.url.params["key"] for c in api_route.calls[1:])
    assert asked == ["r/b", "r/c"]
    assert sorted(str(c.request.url) for c in s3.calls) == sorted(
        [fresh, "https://s3.example/r/b?asked=1", "https://s3.example/r/c?asked=1"])


def test_url_lifetime():
    assert url_lifetime("https://x/y?X-Amz-Expires=518399") == 518399
    assert url_lifetime("https://x/y?X-Goog-Expires=21599") == 21599
    assert url_lifetime("https://x/y") == 3600
