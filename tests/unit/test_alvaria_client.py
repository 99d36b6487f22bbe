"""The Alvaria client against respx: paging (v2, v3), token refresh, URL renewal, sizes
(learnt by the reader from ranged GETs of the source's target)."""
from __future__ import annotations

import datetime as dt
import os
import time

import httpx
import pytest
import respx

from recfs.config import Secret
from recfs.content.cache import Cache
from recfs.content.reader import WHOLE_PROBE, Reader
from recfs.http import Http, RetryPolicy, signed_url_lifetime, signed_url_time_left
from recfs.sources import alvaria
from recfs.sources.alvaria import AlvariaSource, Options, parse_size
from recfs.sources.base import Entry, Kind

API = "https://org1.via.example/via/{v}/organizations/org1"
TOKEN_URL = "https://id.example/tokenservice/oauth2/access_token"


def make_source(version="v3", **extra) -> AlvariaSource:
    http = Http(retry=RetryPolicy(attempts=3, base_delay=0.001))
    opts = {"api_url": API.format(v=version), "token_url": TOKEN_URL,
            "client_id": Secret("cid", "test"), "client_secret": Secret("csecret", "test"),
            "api_key": Secret("the-api-key", "test"), "root": "", "page_size": 2,
            "size_concurrency": 4, "listing_ttl": None}
    opts.update(extra)
    return alvaria.Source("alv", Options(name="alv", kind="alvaria", **opts), http)


@pytest.fixture
def cache(tmp_path):
    c = Cache(tmp_path / "cache", max_size=1 << 30)
    yield c
    c.close()


def reader_of(src: AlvariaSource, cache: Cache, nursery) -> Reader:
    return Reader(cache, nursery, src.http)


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
    entry = Entry("k", Kind.FILE, ref="r/k", size=len(data), id="r/k")
    await src.http.get_range(src.target(entry), 100, 600, lambda off, b: got.extend(b), total=entry.size)
    assert bytes(got) == data[100:600]
    assert urls.call_count == 2
    assert [c.request.url.params["key"] for c in urls.calls] == ["r/k", "r/k"]
    # the renewed lease is reused
    got.clear()
    await src.http.get_range(src.target(entry), 0, 10, lambda off, b: got.extend(b), total=entry.size)
    assert urls.call_count == 2 and bytes(got) == data[:10]
    assert src.leases.asked == 2


async def test_sizes_are_learnt_with_one_byte_ranged_gets(token_route, cache, nursery):
    mock, _ = token_route
    mock.get(API.format(v="v3") + "/mediaStorage/data/objectKeys").mock(side_effect=lambda r: httpx.Response(
        200, json={"signedDownloadUrl": f"https://s3.example/{r.url.params['key']}?X-Amz-Expires=60"}))
    sizes = {"r/a": 12345, "r/b": 1}
    probes = mock.get(url__startswith="https://s3.example/").mock(side_effect=lambda r: httpx.Response(
        206, content=b"x", headers={"Content-Range": f"bytes 0-0/{sizes[r.url.path.lstrip('/')]}"}))
    entries = [Entry(k.split("/")[1], Kind.FILE, ref=k, size=None, id=k) for k in sizes]
    src = make_source()
    await reader_of(src, cache, nursery).learn_sizes(src, entries, whole=False)
    assert {e.ref: e.size for e in entries} == sizes
    assert probes.call_count == len(sizes)
    assert all(c.request.headers["range"] == "bytes=0-0" for c in probes.calls)
    assert list(cache.staging_dir.iterdir()) == []


def copy_routes(mock, content: dict[str, bytes], fail_whole: set[str] = frozenset()):
    """Signed URLs per key, and an S3 serving `content` by ranges; a key in `fail_whole`
    answers 503 to any range longer than one byte."""
    mock.get(API.format(v="v3") + "/mediaStorage/data/objectKeys").mock(side_effect=lambda r: httpx.Response(
        200, json={"signedDownloadUrl": f"https://s3.example/{r.url.params['key']}?X-Amz-Expires=60"}))

    def s3(request):
        key = request.url.path.lstrip("/")
        first, last = (int(x) for x in request.headers["range"][6:].split("-"))
        if key in fail_whole and last > 0:
            return httpx.Response(503)
        body = content[key][first:last + 1]
        return httpx.Response(206, content=body, headers={
            "Content-Range": f"bytes {first}-{first + len(body) - 1}/{len(content[key])}"})
    return mock.get(url__startswith="https://s3.example/").mock(side_effect=s3)


async def test_during_a_copy_small_files_come_whole_with_their_size(token_route, cache, nursery):
    mock, _ = token_route
    big = WHOLE_PROBE + 1000
    content = {"r/a": os.urandom(300_000), "r/b": os.urandom(5000), "r/big": os.urandom(big)}
    s3_route = copy_routes(mock, content)
    src = make_source()
    entries = [Entry(k.split("/")[1], Kind.FILE, ref=k, size=None, size_hint=len(v), id=k, version="1")
               for k, v in content.items()]
    await reader_of(src, cache, nursery).learn_sizes(src, entries, whole=True)
    assert {e.ref: e.size for e in entries} == {k: len(v) for k, v in content.items()}
    *small, large = entries
    for entry in small:
        assert cache.has_whole(src.cache_key(entry), entry.size)
        assert cache.entry(src.cache_key(entry), entry.size).read(0, entry.size) == content[entry.ref]
    # a file bigger than the whole-file probe is asked for one byte, and nothing is kept
    assert not cache.has_whole(src.cache_key(large), large.size)
    ranges = {str(c.request.url).split("?")[0].rsplit("/", 1)[1]: c.request.headers["range"]
              for c in s3_route.calls}
    assert ranges == {"a": f"bytes=0-{WHOLE_PROBE - 1}", "b": f"bytes=0-{WHOLE_PROBE - 1}",
                      "big": "bytes=0-0"}
    assert s3_route.call_count == len(content)
    assert list(cache.staging_dir.iterdir()) == []


async def test_during_a_copy_a_file_that_fails_whole_is_sized_by_a_one_byte_probe(
        token_route, cache, nursery):
    mock, _ = token_route
    content = {"r/a": os.urandom(300_000), "r/broken": os.urandom(5000)}
    s3_route = copy_routes(mock, content, fail_whole={"r/broken"})
    src = make_source()
    entries = [Entry(k.split("/")[1], Kind.FILE, ref=k, size=None, size_hint=len(v), id=k, version="1")
               for k, v in content.items()]
    await reader_of(src, cache, nursery).learn_sizes(src, entries, whole=True)
    a, broken = entries
    assert cache.has_whole(src.cache_key(a), a.size)
    assert not cache.has_whole(src.cache_key(broken), len(content["r/broken"]))
    assert list(cache.staging_dir.iterdir()) == []
    assert [c.request.headers["range"] for c in s3_route.calls if "broken" in str(c.request.url)][-1] \
        == "bytes=0-0"
    assert {e.ref: e.size for e in entries} == {k: len(v) for k, v in content.items()}


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

    def left(url):
        return signed_url_time_left(url, now, 3600)
    assert left(f"https://x/y?X-Amz-Date={amz_date(now - 600)}&X-Amz-Expires=3600") == 3000
    assert left(f"https://x/y?X-Goog-Date={amz_date(now)}&X-Goog-Expires=60") == 60
    assert left("https://x/y?X-Amz-Date=garbage&X-Amz-Expires=60") == 60
    assert left("https://x/y") == 3600


async def test_urls_from_the_listing_are_leases_unless_blank_or_expired(token_route, cache, nursery):
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
    await reader_of(src, cache, nursery).learn_sizes(src, entries, whole=False)
    assert [e.size for e in entries] == [7, 7, 7]
    asked = sorted(c.request.url.params["key"] for c in api_route.calls[1:])
    assert asked == ["r/b", "r/c"]
    assert sorted(str(c.request.url) for c in s3.calls) == sorted(
        [fresh, "https://s3.example/r/b?asked=1", "https://s3.example/r/c?asked=1"])
    assert src.leases.asked == 2


def test_url_lifetime():
    assert signed_url_lifetime("https://x/y?X-Amz-Expires=518399", 3600) == 518399
    assert signed_url_lifetime("https://x/y?X-Goog-Expires=21599", 3600) == 21599
    assert signed_url_lifetime("https://x/y", 3600) == 3600
    # Alvaria's URLs without X-Amz-Expires are taken to live an hour
    assert alvaria.URL_LIFETIME == 3600
    assert make_source().leases.default_lifetime == alvaria.URL_LIFETIME
