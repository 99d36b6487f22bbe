"""The 8x8 client against scripted HTTP answers (respx): paging, FIQL per folder
level, token refresh mid-crawl, response shapes, every bulk status."""
from __future__ import annotations

import base64
import datetime as dt
import io
import json
import zipfile

import httpx
import pytest
import respx

from recfs.config import parse_config
from recfs.content.bulk import BulkEngine
from recfs.content.cache import Cache
from recfs.http import Http, RetryPolicy
from recfs.sources import eightbyeight as e8
from recfs.sources.base import Kind, SourceError
from recfs.sources.eightbyeight import DirRef

API = "https://api.8x8.test/storage"
TOKEN_URL = "https://api.8x8.test/oauth/v2/token"
OBJECTS = f"{API}/us-east/v3/objects"
SECRET = "s3cr3t-value"


def ms(*args) -> int:
    return int(dt.datetime(*args, tzinfo=dt.timezone.utc).timestamp() * 1000)


def record(i: int, *, created="2024-09-03T10:00:00", type_="callrecording", name=None,
           size=None, data: bytes | None = None) -> dict:
    import hashlib
    body = data if data is not None else b""
    return {"id": f"id-{i:04d}", "type": type_, "mimeType": "audio/mpeg",
            "objectName": name or f"rec-{i:04d}.mp3", "checksumType": "MD5",
            "checksum": hashlib.md5(body).hexdigest() if data is not None else "27b75a2f-1",
            "customerId": "c", "userId": "u", "storedBytes": size if size is not None else len(body),
            "createdTime": created, "updatedTime": created, "objectState": "AVAILABLE",
            "bucketId": "b", "tags": [{"key": "callId", "value": f"call-{i}"}], "shared": False}


def make_source(tmp_path, **extra):
    table = {"name": "e", "kind": "8x8", "api_url": API, "token_url": TOKEN_URL,
             "client_id": "key-1", "client_secret": SECRET, "regions": ["us-east"],
             "poll_interval": 0.001, "poll_max_interval": 0.002, "batch_window": 0.0}
    table.update(extra)
    table = {k: v for k, v in table.items() if v is not None}
    opts = parse_config({"sources": [table]}).sources[0].options
    http = Http(retry=RetryPolicy(base_delay=0.001))
    cache = Cache(tmp_path / "cache", max_size=1 << 30)
    return e8.Source("e", opts, http), http, cache


class TokenService:
    """Issues t1, t2, ...; numbers as strings, as the documented example."""

    def __init__(self):
        self.issued: list[str] = []
        self.forms: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Basic " + base64.b64encode(
            f"key-1:{SECRET}".encode()).decode()
        self.forms.append(request.content.decode())
        self.issued.append(f"t{len(self.issued) + 1}")
        return httpx.Response(200, json={"access_token": self.issued[-1], "token_type": "BearerToken",
                                         "expires_in": "1799", "issued_at": "1683045181383",
                                         "refresh_count": "0", "status": "approved"})


class Pages:
    """Answers /objects from a list of records with the guide's paging rules."""

    def __init__(self, records: list[dict], as_array: bool = False):
        self.records = records
        self.as_array = as_array
        self.calls: list[dict[str, str]] = []
        self.fail_once: set[str] = set()      # pageKeys answered once with 401

    def __call__(self, request: httpx.Request) -> httpx.Response:
        q = dict(request.url.params)
        self.calls.append(q)
        if q["pageKey"] in self.fail_once:
            self.fail_once.discard(q["pageKey"])
            return httpx.Response(401, json={"fault": {"faultstring": "Access Token expired"}})
        offset, limit = int(q["pageKey"]), int(q["limit"])
        page = self.records[offset:offset + limit]
        body = {"lastPage": offset + limit >= len(self.records), "pageKey": offset + limit,
                "pageSize": len(page), "content": page}
        return httpx.Response(200, json=[body] if self.as_array else body)


DAY = DirRef("day", "us-east", "callrecording", 2024, 9, 3)


@pytest.fixture
def router():
    with respx.mock(assert_all_called=False) as r:
        yield r


@pytest.mark.parametrize("count,pages", [(245, [0, 100, 200]), (200, [0, 100]), (0, [0]), (7, [0])])
async def test_day_listing_follows_pages_to_last_page(tmp_path, router, count, pages):
    tokens = TokenService()
    router.post(TOKEN_URL).mock(side_effect=tokens)
    svc = Pages([record(i) for i in range(count)])
    router.get(OBJECTS).mock(side_effect=svc)
    src, http, _ = make_source(tmp_path)
    listing = await src.list_dir(DAY)
    await http.aclose()
    assert [int(c["pageKey"]) for c in svc.calls] == pages
    assert {c["limit"] for c in svc.calls} == {"100"}
    assert len(listing.entries) == count
    assert tokens.forms == ["grant_type=client_credentials"]


async def test_one_element_array_pages_are_accepted(tmp_path, router):
    router.post(TOKEN_URL).mock(side_effect=TokenService())
    svc = Pages([record(i) for i in range(150)], as_array=True)
    router.get(OBJECTS).mock(side_effect=svc)
    src, http, _ = make_source(tmp_path)
    listing = await src.list_dir(DAY)
    await http.aclose()
    assert len(listing.entries) == 150 and len(svc.calls) == 2


async def test_token_expiry_mid_crawl_resumes_at_the_same_page(tmp_path, router):
    tokens = TokenService()
    router.post(TOKEN_URL).mock(side_effect=tokens)
    svc = Pages([record(i) for i in range(245)])
    svc.fail_once = {"100"}
    router.get(OBJECTS).mock(side_effect=svc)
    src, http, _ = make_source(tmp_path)
    listing = await src.list_dir(DAY)
    await http.aclose()
    assert [c["pageKey"] for c in svc.calls] == ["0", "100", "100", "200"]
    assert tokens.issued == ["t1", "t2"]
    assert len({e.id for e in listing.entries}) == 245


async def test_entries_have_exact_sizes_xattrs_and_utc_mtime(tmp_path, router):
    router.post(TOKEN_URL).mock(side_effect=TokenService())
    recs = [record(1, size=3644352, name="ipbx:acme:callrecording:users:117209:x-+16695555518_E.mp3"),
            record(2, size="96768", created="2024-09-03T23:59:59"),
            dict(record(3, size=10), objectState="REVOKED")]
    recs[0]["checksum"] = "922CE8066731381F4A843E0BCF013826"
    router.get(OBJECTS).mock(side_effect=Pages(recs))
    src, http, _ = make_source(tmp_path)
    entries = {e.id: e for e in (await src.list_dir(DAY)).entries}
    await http.aclose()
    assert set(entries) == {"id-0001", "id-0002"}          # only AVAILABLE
    a, b = entries["id-0001"], entries["id-0002"]
    assert (a.kind, a.size, b.size) == (Kind.FILE, 3644352, 96768)
    assert a.name == "ipbx:acme:callrecording:users:117209:x-+16695555518_E.mp3"
    assert b.mtime == ms(2024, 9, 3, 23, 59, 59) / 1000
    assert a.xattrs["8x8.callId"] == "call-1" and a.xattrs["8x8.id"] == "id-0001"
    assert a.xattrs["8x8.type"] == "callrecording" and a.xattrs["8x8.mimeType"] == "audio/mpeg"
    assert a.ref.md5 == "922ce8066731381f4a843e0bcf013826"
    assert b.ref.md5 is None                                 # "27b75a2f-1" is no MD5
    assert a.version != "" and a.version != b.version


class Probes:
    """Answers searches from a script and records what was asked: a record is a page
    of that one object with more to come (a short page), a tuple a short page of
    several, a list a last page, None (or the end of the script) an empty last page."""

    def __init__(self, answers: list[dict | tuple | list | None]):
        self.answers = list(answers)
        self.calls: list[dict[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        q = dict(request.url.params)
        self.calls.append(q)
        found = self.answers.pop(0) if self.answers else None
        content = list(found) if isinstance(found, (list, tuple)) else [found] if found else []
        last = not isinstance(found, (dict, tuple))
        return httpx.Response(200, json={"lastPage": last, "pageKey": int(q["pageKey"]) + int(q["limit"]),
                                         "pageSize": len(content), "content": content})


async def listing_with(tmp_path, router, ref, answers, **opts):
    router.post(TOKEN_URL).mock(side_effect=TokenService())
    svc = Probes(answers)
    router.get(OBJECTS).mock(side_effect=svc)
    src, http, _ = make_source(tmp_path, **opts)
    listing = await src.list_dir(ref)
    await http.aclose()
    return [e.name for e in listing.entries], svc.calls


A = "objectState==AVAILABLE"


async def test_fiql_for_the_region_level(tmp_path, router):
    names, calls = await listing_with(tmp_path, router, DirRef("region", "us-east"),
                                      [record(1, type_="voicemail"), record(2), None])
    assert names == ["callrecording", "voicemail"]
    assert [(c["filter"], c["sortField"], c["sortDirection"], c["limit"]) for c in calls] == [
        (A, "type", "ASC", "100"),
        (f"type!=voicemail;{A}", "type", "ASC", "100"),
        (f"type!=voicemail;type!=callrecording;{A}", "type", "ASC", "100")]


async def test_fiql_for_the_type_level(tmp_path, router):
    names, calls = await listing_with(tmp_path, router, DirRef("type", "us-east", "callrecording"),
                                      [record(1, created="2023-05-06T01:02:03"),
                                       record(2, created="2024-02-01T00:00:00"), None])
    assert names == ["2023", "2024"]
    assert [(c["filter"], c["sortField"], c["sortDirection"], c["limit"]) for c in calls] == [
        (f"type==callrecording;{A}", "createdTime", "ASC", "100"),
        (f"type==callrecording;createdTime=ge={ms(2024, 1, 1)};{A}", "createdTime", "ASC", "100"),
        (f"type==callrecording;createdTime=ge={ms(2025, 1, 1)};{A}", "createdTime", "ASC", "100")]


async def test_fiql_for_the_year_level(tmp_path, router):
    names, calls = await listing_with(tmp_path, router, DirRef("year", "us-east", "callrecording", 2024),
                                      [record(1, created="2024-02-01T00:00:00"),
                                       record(2, created="2024-09-03T10:00:00"), None])
    assert names == ["02", "09"]
    hi = f"createdTime=lt={ms(2025, 1, 1)}"
    assert [c["filter"] for c in calls] == [
        f"type==callrecording;createdTime=ge={ms(2024, 1, 1)};{hi};{A}",
        f"type==callrecording;createdTime=ge={ms(2024, 3, 1)};{hi};{A}",
        f"type==callrecording;createdTime=ge={ms(2024, 10, 1)};{hi};{A}"]


async def test_fiql_for_the_month_level_stops_at_the_month_end(tmp_path, router):
    names, calls = await listing_with(tmp_path, router, DirRef("month", "us-east", "callrecording", 2024, 9),
                                      [record(1, created="2024-09-03T10:00:00"),
                                       record(2, created="2024-09-30T23:59:59")])
    assert names == ["03", "30"]
    hi = f"createdTime=lt={ms(2024, 10, 1)}"
    assert [c["filter"] for c in calls] == [
        f"type==callrecording;createdTime=ge={ms(2024, 9, 1)};{hi};{A}",
        f"type==callrecording;createdTime=ge={ms(2024, 9, 4)};{hi};{A}"]


async def test_fiql_for_the_day_level_with_a_configured_filter(tmp_path, router):
    _, calls = await listing_with(tmp_path, router, DAY, [],
                                  filter="direction==INBOUND,duration=gt=100000")
    assert [(c["filter"], c["sortField"], c["limit"], c["pageKey"]) for c in calls] == [
        (f"type==callrecording;createdTime=ge={ms(2024, 9, 3)};createdTime=lt={ms(2024, 9, 4)};"
         f"{A};(direction==INBOUND,duration=gt=100000)", "createdTime", "100", "0")]


async def test_a_filter_naming_object_states_replaces_the_default(tmp_path, router):
    _, calls = await listing_with(tmp_path, router, DAY, [],
                                  filter="(objectState==AVAILABLE,objectState==ARCHIVED)")
    assert calls[0]["filter"].endswith(f"createdTime=lt={ms(2024, 9, 4)};"
                                       "(objectState==AVAILABLE,objectState==ARCHIVED)")


async def test_a_parents_page_answers_its_children(tmp_path, router):
    router.post(TOKEN_URL).mock(side_effect=TokenService())
    # the type's only objects, in one last page: years, months and the day need no search
    svc = Probes([[record(1, created="2024-09-03T10:00:00"), record(2, created="2024-09-03T11:00:00")]])
    router.get(OBJECTS).mock(side_effect=svc)
    src, http, _ = make_source(tmp_path)
    t = DirRef("type", "us-east", "callrecording")
    years = (await src.list_dir(t)).entries
    months = (await src.list_dir(years[0].ref)).entries
    days = (await src.list_dir(months[0].ref)).entries
    files = (await src.list_dir(days[0].ref)).entries
    await http.aclose()
    assert [e.name for e in years + months + days] == ["2024", "09", "03"]
    assert sorted(e.id for e in files) == ["id-0001", "id-0002"]
    assert len(svc.calls) == 1


async def test_a_short_page_leaves_the_rest_of_its_last_day_to_the_days_search(tmp_path, router):
    router.post(TOKEN_URL).mock(side_effect=TokenService())
    svc = Probes([record(1, created="2024-09-03T10:00:00"), None,    # type: 2024, then nothing
                  None,                                              # year: nothing after September
                  None,                                              # month: nothing after the 3rd
                  [record(2, created="2024-09-03T11:00:00")]])       # the day, from pageKey 1
    router.get(OBJECTS).mock(side_effect=svc)
    src, http, _ = make_source(tmp_path)
    t = DirRef("type", "us-east", "callrecording")
    years = (await src.list_dir(t)).entries
    months = (await src.list_dir(years[0].ref)).entries
    days = (await src.list_dir(months[0].ref)).entries
    files = (await src.list_dir(days[0].ref)).entries
    await http.aclose()
    assert [e.name for e in years + months + days] == ["2024", "09", "03"]
    assert sorted(e.id for e in files) == ["id-0001", "id-0002"]
    assert len(svc.calls) == 5 and svc.calls[-1]["pageKey"] == "1"
    assert svc.calls[-1]["filter"].startswith(f"type==callrecording;createdTime=ge={ms(2024, 9, 3)};"
                                              f"createdTime=lt={ms(2024, 9, 4)}")


async def test_a_tie_at_the_seam_goes_on_from_the_objects_made_before(tmp_path, router):
    router.post(TOKEN_URL).mock(side_effect=TokenService())
    nine, ten = "2024-09-03T09:00:00", "2024-09-03T10:00:00"
    svc = Probes([(record(1, created=nine), record(2, created=ten)), None,   # type: a short page
                  None, None,                                    # year, month: nothing more
                  record(3, created=ten),                        # the day from pageKey 2: a tie
                  [record(2, created=ten), record(3, created=ten)]])   # so from pageKey 1
    router.get(OBJECTS).mock(side_effect=svc)
    src, http, _ = make_source(tmp_path)
    ref = DirRef("type", "us-east", "callrecording")
    for _ in range(3):
        ref = (await src.list_dir(ref)).entries[0].ref
    files = (await src.list_dir(ref)).entries
    await http.aclose()
    assert [c["pageKey"] for c in svc.calls[-2:]] == ["2", "1"]
    assert sorted(e.id for e in files) == ["id-0001", "id-0002", "id-0003"]


async def test_regions_are_discovered_from_any_region(tmp_path, router):
    router.post(TOKEN_URL).mock(side_effect=TokenService())
    router.get(f"{API}/us-west/v3/regions").mock(return_value=httpx.Response(404, json={}))
    east = router.get(f"{API}/us-east/v3/regions").mock(
        return_value=httpx.Response(200, json=["us-east", "uk"]))
    src, http, _ = make_source(tmp_path, regions=None)
    listing = await src.list_dir(src.root_ref())
    await http.aclose()
    assert [e.name for e in listing.entries] == ["us-east", "uk"] and east.call_count == 1


async def test_start_explains_a_refused_key_without_the_secret(tmp_path, router):
    router.post(TOKEN_URL).mock(return_value=httpx.Response(401, json={"ErrorCode": "invalid_client"}))
    src, http, _ = make_source(tmp_path)
    with pytest.raises(SourceError) as exc:
        await src.start()
    await http.aclose()
    assert "token" in str(exc.value) and SECRET not in str(exc.value)


async def test_start_explains_a_key_without_the_storage_product(tmp_path, router):
    router.post(TOKEN_URL).mock(side_effect=TokenService())
    router.get(f"{API}/us-west/v3/regions").mock(return_value=httpx.Response(403, json={}))
    src, http, _ = make_source(tmp_path, regions=None)
    with pytest.raises(SourceError) as exc:
        await src.start()
    await http.aclose()
    assert "storage" in str(exc.value)


# ------------------------------------------------------------------ content

async def test_fetch_range_uses_the_content_endpoint_with_range(tmp_path, router):
    data = bytes(range(256)) * 40
    router.post(TOKEN_URL).mock(side_effect=TokenService())
    router.get(OBJECTS).mock(side_effect=Pages([record(1, data=data)]))
    seen = []

    def content(request):
        seen.append(request)
        first, last = request.headers["range"][6:].split("-")
        body = data[int(first):int(last) + 1]
        return httpx.Response(206, content=body,
                              headers={"Content-Range": f"bytes {first}-{last}/{len(data)}"})
    router.get(f"{API}/us-east/v3/objects/id-0001/content").mock(side_effect=content)
    src, http, _ = make_source(tmp_path)
    entry = (await src.list_dir(DAY)).entries[0]
    got = bytearray()
    await http.get_range(src.target(entry), 100, 600, lambda off, b: got.extend(b), total=entry.size)
    await http.aclose()
    assert bytes(got) == data[100:600]
    assert seen[0].headers["range"] == "bytes=100-599"
    assert seen[0].headers["authorization"] == "Bearer t1"


@pytest.mark.parametrize("shape", ["text", "json-string", "json-object", "array"])
async def test_presigned_urls_in_every_plausible_shape(tmp_path, router, shape):
    data = b"presigned content " * 10
    router.post(TOKEN_URL).mock(side_effect=TokenService())
    router.get(OBJECTS).mock(side_effect=Pages([record(1, data=data)]))
    url = "https://s3.test/css/id-0001?X-Amz-Expires=1800&X-Amz-Signature=abc"
    body = {"text": url, "json-string": json.dumps(url), "json-object": json.dumps({"url": url}),
            "array": json.dumps([{"presignedUrl": url}])}[shape]
    router.get(f"{API}/us-east/v3/objects/id-0001/content", params={"presignUrl": "true"}).mock(
        return_value=httpx.Response(200, text=body))
    s3 = router.get("https://s3.test/css/id-0001").mock(
        return_value=httpx.Response(200, content=data))
    src, http, _ = make_source(tmp_path, presign=True)
    entry = (await src.list_dir(DAY)).entries[0]
    got = bytearray()
    await http.get_range(src.target(entry), 0, len(data), lambda off, b: got.extend(b),
                         total=entry.size)
    await http.get_range(src.target(entry), 0, 10, lambda off, b: got.extend(b), total=entry.size)
    await http.aclose()
    assert bytes(got) == data + data[:10]
    assert "authorization" not in s3.calls[0].request.headers
    # the URL is kept for its lifetime (X-Amz-Expires): the second read asks for none
    assert src.leases.asked == 1 and s3.call_count == 2


# ------------------------------------------------------------------ bulk statuses

def zip_of(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


A_DATA, B_DATA = b"A" * 5000, b"B" * 7000


@pytest.fixture
def bulk_day(router):
    router.post(TOKEN_URL).mock(side_effect=TokenService())
    router.get(OBJECTS).mock(side_effect=Pages([record(1, data=A_DATA, name="a.mp3"),
                                                record(2, data=B_DATA, name="b.mp3")]))
    return router


def script_bulk(router, first, statuses, members, as_array=False):
    wrap = (lambda b: [b]) if as_array else (lambda b: b)
    start = router.post(f"{API}/us-east/v3/bulk/download/start").mock(
        return_value=httpx.Response(200, json=wrap({"zipName": "z1.zip", "status": first})))
    answers = iter(statuses)
    status = router.get(f"{API}/us-east/v3/bulk/download/status/z1.zip").mock(
        side_effect=lambda req: httpx.Response(200, json=wrap({"zipName": "z1.zip", "status": next(answers)})))
    download = router.get(f"{API}/us-east/v3/bulk/download/z1.zip").mock(
        return_value=httpx.Response(200, content=zip_of(members)))
    return start, status, download


async def fetch_first(src, http, cache, entries, copying=False) -> bool:
    """The first file of `entries` through the bulk engine, as the reader asks for it;
    `copying`: the access policy says the folder is being copied."""
    engine = BulkEngine(src, http, cache)
    try:
        return await engine.fetch(entries[0], entries, copying)
    finally:
        await engine.aclose()


@pytest.mark.parametrize("first,statuses,as_array", [
    ("NOT_STARTED", ["NOT_STARTED", "IN_PROGRESS", "DONE"], False),
    ("NOT_STARTED", ["IN_PROGRESS", "DONE"], True),
    ("DONE", [], False),
])
async def test_bulk_done(tmp_path, bulk_day, first, statuses, as_array):
    start, status, download = script_bulk(bulk_day, first, statuses,
                                          [("a.mp3", A_DATA), ("b.mp3", B_DATA)], as_array)
    src, http, cache = make_source(tmp_path, bulk="always")
    entries = (await src.list_dir(DAY)).entries
    assert await fetch_first(src, http, cache, entries) is True
    await http.aclose()
    assert json.loads(start.calls[0].request.content) == ["id-0001", "id-0002"]
    assert status.call_count == len(statuses) and download.call_count == 1
    assert cache.entry(src.cache_key(entries[0]), 5000).read(0, 5000) == A_DATA
    assert cache.entry(src.cache_key(entries[1]), 7000).read(0, 7000) == B_DATA


@pytest.mark.parametrize("final", ["FAILED", "CANCELLED", "ERROR", ""])
async def test_bulk_failed_states_leave_the_files_to_per_object_reads_without_a_download(
        tmp_path, bulk_day, caplog, final):
    _, status, download = script_bulk(bulk_day, "NOT_STARTED", ["IN_PROGRESS", final],
                                      [("a.mp3", A_DATA)])
    src, http, cache = make_source(tmp_path, bulk="always")
    entries = (await src.list_dir(DAY)).entries
    with caplog.at_level("INFO", logger="recfs.bulk"):
        assert await fetch_first(src, http, cache, entries) is False    # read per object
    await http.aclose()
    assert f"ended {final or '(no status)'}" in caplog.text
    assert status.call_count == 2 and download.call_count == 0
    assert not cache.has_whole(src.cache_key(entries[0]), 5000)


async def test_bulk_partial_done_leaves_only_what_the_zip_lacks_to_per_object_reads(
        tmp_path, bulk_day, caplog):
    script_bulk(bulk_day, "NOT_STARTED", ["PARTIAL_DONE"], [("b.mp3", B_DATA)])
    src, http, cache = make_source(tmp_path, bulk="always")
    entries = (await src.list_dir(DAY)).entries
    with caplog.at_level("INFO", logger="recfs.bulk"):
        assert await fetch_first(src, http, cache, entries) is False
    await http.aclose()
    assert "PARTIAL_DONE without this file" in caplog.text
    assert not cache.has_whole(src.cache_key(entries[0]), 5000)
    assert cache.has_whole(src.cache_key(entries[1]), 7000)


async def test_a_job_that_cannot_start_leaves_the_file_to_per_object_reads(tmp_path, bulk_day):
    start = bulk_day.post(f"{API}/us-east/v3/bulk/download/start").mock(
        return_value=httpx.Response(400, json={"status": 400, "message": "too many ids"}))
    src, http, cache = make_source(tmp_path, bulk="always")
    entries = (await src.list_dir(DAY)).entries
    assert await fetch_first(src, http, cache, entries) is False
    await http.aclose()
    assert start.call_count == 1
    assert not cache.has_whole(src.cache_key(entries[0]), 5000)


async def test_bulk_md5_mismatch_is_not_cached(tmp_path, bulk_day):
    script_bulk(bulk_day, "DONE", [], [("a.mp3", b"X" + A_DATA[1:]), ("b.mp3", B_DATA)])
    src, http, cache = make_source(tmp_path, bulk="always")
    entries = (await src.list_dir(DAY)).entries
    with pytest.raises(SourceError) as exc:
        await fetch_first(src, http, cache, entries)
    await http.aclose()
    assert exc.value.errno == 5 and "checksum mismatch" in str(exc.value)
    assert not cache.has_whole(src.cache_key(entries[0]), 5000)
    assert cache.has_whole(src.cache_key(entries[1]), 7000)


async def test_a_lone_read_never_waits_on_a_job(tmp_path, bulk_day):
    start, _, _ = script_bulk(bulk_day, "DONE", [], [])
    src, http, cache = make_source(tmp_path)          # bulk = "auto"
    entries = (await src.list_dir(DAY)).entries
    assert await fetch_first(src, http, cache, entries, copying=False) is False
    await http.aclose()
    assert start.call_count == 0


async def test_missing_sizes_are_resolved_from_object_metadata(tmp_path, router):
    router.post(TOKEN_URL).mock(side_effect=TokenService())
    router.get(OBJECTS).mock(side_effect=Pages([dict(record(1), storedBytes=None),
                                                dict(record(2), storedBytes="")]))
    meta = router.get(url__regex=rf"{API}/us-east/v3/objects/id-000\d").mock(
        side_effect=lambda req: httpx.Response(200, json=[dict(record(int(req.url.path[-1])),
                                                               storedBytes=str(1000 + int(req.url.path[-1])))]))
    src, http, _ = make_source(tmp_path)
    entries = (await src.list_dir(DAY)).entries
    assert [e.size for e in entries] == [None, None]
    await src.sizes(entries)
    await http.aclose()
    assert sorted(e.size for e in entries) == [1001, 1002] and meta.call_count == 2


def test_unknown_and_known_status_words():
    assert e8.status_of("NOT_STARTED").state is e8.JobState.WAITING
    assert e8.status_of("in_progress").state is e8.JobState.WAITING
    assert e8.status_of("DONE").state is e8.JobState.DONE
    assert e8.status_of("PARTIAL_DONE").state is e8.JobState.PARTIAL
    for word in ("FAILED", "CANCELLED", "ERROR", "", "QUEUED"):
        assert e8.status_of(word).state is e8.JobState.FAILED


def test_config_rejects_bad_values():
    from recfs.config import ConfigError
    base = {"name": "e", "kind": "8x8", "api_url": API, "client_id": "k", "client_secret": "s"}
    for bad, where in [({"bulk": "sometimes"}, "bulk"), ({"filter": "type==a;"}, "filter"),
                       ({"filter": "(type==a"}, "filter"), ({"bulk_max_files": 0}, "bulk_max_files"),
                       ({"poll_interval": 30.0, "poll_max_interval": 15.0}, "poll_max_interval")]:
        with pytest.raises(ConfigError) as exc:
            parse_config({"sources": [dict(base, **bad)]})
        assert where in str(exc.value)
    opts = parse_config({"sources": [base]}).sources[0].options
    assert opts.token_url == "https://api.8x8.com/oauth/v2/token"
    assert opts.bulk_max_files == 50 and opts.bulk_max_bytes == 2 * 1000**3
    assert opts.problem() is None
