"""The oce client code against mocked HTTP (respx): paging, auth, job status parsing,
zip member matching."""
from __future__ import annotations

import base64
import errno
import io
import json
import zipfile
from pathlib import Path

import httpx
import pytest
import respx

import recfs.http
from recfs.config import ConfigError, parse_config
from recfs.content.bulk import BulkEngine, extract_verified
from recfs.http import Http, RetryPolicy
from recfs.sources import oce
from recfs.sources.base import BulkFile, SourceError

API = "https://oce.test/documents/api/1.2"
TOKEN_URL = "https://idcs.test/oauth2/v1/token"
SCOPE = "https://oce.test:443/urn:opc:cec:all"

OAUTH = {"name": "oce", "kind": "oce", "api_url": API, "token_url": TOKEN_URL,
         "client_id": "cid", "client_secret": "s3cret", "scope": SCOPE}
BASIC = {"name": "oce", "kind": "oce", "api_url": API, "username": "u", "password": "pw"}


def options(table: dict) -> oce.Options:
    return parse_config({"cache": {"dir": "/tmp/unused"}, "sources": [table]}).sources[0].options


class StandInCache:
    def __init__(self, root: Path):
        self.staging_dir = root
        self.files: dict[str, bytes] = {}

    def store_file(self, key, size, path):
        self.files[key] = Path(path).read_bytes()
        Path(path).unlink()

    def has_whole(self, key, size):
        return key in self.files


def make_source(table: dict) -> oce.OceSource:
    http = Http(retry=RetryPolicy(base_delay=0.001, max_delay=0.01, budget=5))
    return oce.Source("oce", options(table), http)


def item(i: int, **kw) -> dict:
    d = {"type": "file", "id": f"D{i:043d}", "parentID": "F1", "name": f"f{i}.wav",
         "size": str(100 + i), "version": "2", "mimeType": "audio/wav",
         "createdTime": "2024-05-01T10:00:00Z", "modifiedTime": "2024-05-01T10:00:0%dZ" % (i % 10)}
    d.update(kw)
    return d


# ------------------------------------------------------------------ config

def test_config_needs_one_auth_method():
    assert options(OAUTH).problem() is None
    assert options(BASIC).problem() is None
    with pytest.raises(ConfigError, match=r"sources\[0\]\.token_url: missing"):
        options({"name": "oce", "kind": "oce", "api_url": API})
    with pytest.raises(ConfigError, match=r"sources\[0\]\.username: use either OAuth"):
        options({**OAUTH, "username": "u"})
    with pytest.raises(ConfigError, match=r"sources\[0\]\.scope: missing"):
        options({k: v for k, v in OAUTH.items() if k != "scope"})
    with pytest.raises(ConfigError, match=r"sources\[0\]\.password: missing"):
        options({k: v for k, v in BASIC.items() if k != "password"})
    with pytest.raises(ConfigError, match=r"api_url: must end in /documents/api/1.2"):
        options({**OAUTH, "api_url": "https://oce.test/documents/api"})
    assert options(OAUTH).root_folder == "self"
    assert "s3cret" not in repr(options(OAUTH))


# ------------------------------------------------------------------ listing

@respx.mock
async def test_paging_follows_hasmore_with_string_numbers():
    respx.post(TOKEN_URL).mock(return_value=httpx.Response(
        200, json={"access_token": "tok", "token_type": "Bearer", "expires_in": "3600"}))
    pages = {
        "0": {"count": "3", "totalResults": "5", "ownerFolderID": "F1", "hasMore": "1",
              "errorCode": "0", "items": [item(0), item(1),
                                          {"type": "folder", "id": "F2", "parentID": "F1",
                                           "name": "sub", "size": "0", "childItemsCount": "4",
                                           "modifiedTime": "2024-05-02T00:00:00Z"}]},
        "3": {"count": 2, "totalResults": 5, "ownerFolderID": "F1", "hasMore": 0,
              "errorCode": 0, "items": [item(3, size=103, version=2), item(4)]},
    }
    route = respx.get(f"{API}/folders/F1/items").mock(
        side_effect=lambda req: httpx.Response(200, json=pages[req.url.params["offset"]]))
    src = make_source(OAUTH)
    listing = await src.list_dir("F1")
    assert [c.request.url.params["offset"] for c in route.calls] == ["0", "3"]
    assert {c.request.url.params["limit"] for c in route.calls} == {"10000"}
    assert all(c.request.headers["authorization"] == "Bearer tok" for c in route.calls)
    files = [e for e in listing.entries if not e.is_dir]
    assert [(e.name, e.size) for e in files] == [("f0.wav", 100), ("f1.wav", 101),
                                                 ("f3.wav", 103), ("f4.wav", 104)]
    assert all(isinstance(e.size, int) for e in files)
    assert files[1].mtime == 1714557601
    assert files[0].xattrs["oce.version"] == "2" and files[0].xattrs["oce.mimeType"] == "audio/wav"
    assert files[0].ref == oce.FileRef(files[0].id, "F1", "2")
    sub = next(e for e in listing.entries if e.is_dir)
    assert sub.ref == "F2" and sub.mtime == 1714608000


@respx.mock
@pytest.mark.parametrize("last_page", [{"hasMore": "0"}, {"hasMore": False}, {"hasMore": 0},
                                       {"totalResults": "2"}])
async def test_every_form_of_the_end_of_the_listing(last_page):
    respx.post(TOKEN_URL).mock(return_value=httpx.Response(200, json={"access_token": "t"}))
    first = {"hasMore": "1" if "hasMore" in last_page else None, "totalResults": "2",
             "items": [item(0)]}
    if first["hasMore"] is None:
        del first["hasMore"]
    route = respx.get(f"{API}/folders/F1/items").mock(side_effect=[
        httpx.Response(200, json=first),
        httpx.Response(200, json={**last_page, "items": [item(1)]}),
    ])
    listing = await make_source(OAUTH).list_dir("F1")
    assert len(listing.entries) == 2 and route.call_count == 2


@respx.mock
async def test_hasmore_on_an_empty_page_does_not_loop():
    respx.post(TOKEN_URL).mock(return_value=httpx.Response(200, json={"access_token": "t"}))
    route = respx.get(f"{API}/folders/F1/items").mock(
        return_value=httpx.Response(200, json={"hasMore": "1", "items": []}))
    assert (await make_source(OAUTH).list_dir("F1")).entries == []
    assert route.call_count == 1


# ------------------------------------------------------------------ auth

@respx.mock
async def test_oauth_client_credentials_and_refresh_on_401():
    tokens = iter(["first", "second"])
    token_route = respx.post(TOKEN_URL).mock(side_effect=lambda req: httpx.Response(
        200, json={"access_token": next(tokens), "token_type": "Bearer", "expires_in": 3600}))
    seen = []

    def items(req):
        seen.append(req.headers["authorization"])
        if req.headers["authorization"] == "Bearer first" and len(seen) > 1:
            return httpx.Response(401, json={"errorCode": "-1"})
        return httpx.Response(200, json={"hasMore": "0", "items": []})
    respx.get(f"{API}/folders/self/items").mock(side_effect=items)
    src = make_source(OAUTH)
    await src.list_dir("self")
    await src.list_dir("self")
    assert seen == ["Bearer first", "Bearer first", "Bearer second"]
    assert token_route.call_count == 2
    form = dict(x.split("=", 1) for x in token_route.calls[0].request.content.decode().split("&"))
    assert form["grant_type"] == "client_credentials"
    assert httpx.QueryParams(token_route.calls[0].request.content.decode())["scope"] == SCOPE
    assert token_route.calls[0].request.headers["authorization"] == \
        "Basic " + base64.b64encode(b"cid:s3cret").decode()


@respx.mock
async def test_token_refreshed_before_it_expires(monkeypatch):
    clock = [1000.0]

    class FakeTime:
        @staticmethod
        def monotonic():
            return clock[0]

        time = staticmethod(lambda: 1.7e9 + clock[0])
    monkeypatch.setattr(recfs.http, "time", FakeTime)
    n = iter(range(10))
    token_route = respx.post(TOKEN_URL).mock(side_effect=lambda req: httpx.Response(
        200, json={"access_token": f"t{next(n)}", "expires_in": 600}))
    api = respx.get(f"{API}/folders/self/items").mock(
        return_value=httpx.Response(200, json={"hasMore": "0", "items": []}))
    src = make_source(OAUTH)
    await src.list_dir("self")
    clock[0] += 560                        # 40 s before expiry: inside the refresh margin
    await src.list_dir("self")
    assert token_route.call_count == 2
    assert [c.request.headers["authorization"] for c in api.calls] == ["Bearer t0", "Bearer t1"]


@respx.mock
async def test_refused_client_credentials_name_the_problem_without_the_secret():
    respx.post(TOKEN_URL).mock(return_value=httpx.Response(
        400, json={"error": "invalid_scope", "error_description": "The requested scope is invalid"}))
    with pytest.raises(SourceError) as info:
        await make_source(OAUTH).list_dir("self")
    assert info.value.errno == errno.EACCES
    assert "invalid_scope" in str(info.value) or "scope is invalid" in str(info.value)
    assert "s3cret" not in str(info.value)


@respx.mock
async def test_basic_auth():
    api = respx.get(f"{API}/folders/self/items").mock(
        side_effect=[httpx.Response(200, json={"hasMore": "0", "items": [item(1)]}),
                     httpx.Response(401, json={"errorCode": "-1"}),
                     httpx.Response(401, json={"errorCode": "-1"})])
    src = make_source(BASIC)
    assert len((await src.list_dir("self")).entries) == 1
    assert api.calls[0].request.headers["authorization"] == \
        "Basic " + base64.b64encode(b"u:pw").decode()
    with pytest.raises(SourceError) as info:
        await src.list_dir("self")
    assert info.value.errno == errno.EACCES and "refused" in str(info.value)
    assert "pw" not in str(info.value).replace("permission", "")


@respx.mock
async def test_403_and_404_map_to_errno_with_the_oce_error_fields():
    respx.post(TOKEN_URL).mock(return_value=httpx.Response(200, json={"access_token": "t"}))
    respx.get(f"{API}/folders/F403/items").mock(return_value=httpx.Response(403, json={
        "errorCode": "-20", "errorKey": "!csItemInsufficientPrivileges",
        "errorMessage": "User has insufficient privilege"}))
    respx.get(f"{API}/folders/F404/items").mock(return_value=httpx.Response(404, json={
        "errorCode": "-16", "errorKey": "!csItemNotFound",
        "errorMessage": "Security validation failed. 'F404' does not exist."}))
    src = make_source(OAUTH)
    with pytest.raises(SourceError) as info:
        await src.list_dir("F403")
    assert info.value.errno == errno.EACCES
    assert "errorCode -20, !csItemInsufficientPrivileges: User has insufficient privilege" \
        in str(info.value)
    with pytest.raises(SourceError) as info:
        await src.list_dir("F404")
    assert info.value.errno == errno.ENOENT and info.value.stale
    assert "'F404' does not exist" in str(info.value)


# ------------------------------------------------------------------ job status

def test_job_status_schema_example_with_booleans_and_links_object():
    s = oce.parse_job_status({
        "completed": True, "completedPercentage": 100,
        "details": {"filename": "OCE-20210303.zip", "filesize": 27811}, "errorCode": 0,
        "links": {"href": "OCEHost/documents/api/1.2/folders/FE7D/_download/43C4/package",
                  "rel": "enclosure", "method": "GET", "mediaType": "application/zip"},
        "progress": "SUCCEEDED", "type": "folder"})
    assert isinstance(s, oce.OceJobStatus)
    assert (s.state, s.completed, s.percent, s.filesize, s.error_code) == \
        ("SUCCEEDED", True, 100, 27811, "0")
    assert s.terminal and s.links[0]["rel"] == "enclosure"


def test_job_status_worked_example_with_strings_and_links_array():
    s = oce.parse_job_status({
        "completed": "true", "completedPercentage": "100",
        "details": {"filename": "OCE.zip", "filesize": "774987"}, "errorCode": "0",
        "items": [{"id": "fFileGUID:DB01", "error": "Item not available"}, {"id": "D02"}],
        "links": [{"href": "x/package", "rel": "enclosure"}], "progress": "SUCCEEDED"})
    assert (s.state, s.completed, s.percent, s.filesize) == ("SUCCEEDED", True, 100, 774987)
    assert s.item_errors == {"DB01": "Item not available", "D02": "not copied"}
    assert len(s.links) == 1


@pytest.mark.parametrize("body, state, terminal", [
    ({"completed": "false", "completedPercentage": "0", "progress": "PENDING"}, "PENDING", False),
    ({"completed": False, "completedPercentage": 40, "progress": "PROCESSING"}, "PROCESSING", False),
    ({"completed": "true", "progress": "FAILED", "errorCode": "-1"}, "FAILED", True),
    ({"completed": "true", "progress": "ABORTED"}, "ABORTED", True),
    ({"completed": "false", "progress": "BLOCKED"}, "BLOCKED", True),
    ({"completed": "false", "progress": "processing"}, "PROCESSING", False),
    ({"completed": "true", "links": [{"href": "p"}]}, "SUCCEEDED", True),
    ({"completed": "true"}, "FAILED", True),
    ({"completed": "0"}, "PROCESSING", False),
])
def test_job_states(body, state, terminal):
    s = oce.parse_job_status(body)
    assert (s.state, s.terminal) == (state, terminal)


@pytest.mark.parametrize("location", [
    "OCEHost/documents/api/1.2/folders/FE7D/_download/EF45E5E0A9F169D61CA387968719F5AA1614798736483",
    "[OCEHost]/folders/FE7D/_download/EF45E5E0A9F169D61CA387968719F5AA1614798736483",
    "https://oce.test/documents/api/1.2/folders/FE7D/_download/EF45E5E0A9F169D61CA387968719F5AA1614798736483/",
])
def test_job_id_is_the_last_segment_of_location(location):
    assert oce.job_id_from_location(location) == "EF45E5E0A9F169D61CA387968719F5AA1614798736483"


def test_job_id_refuses_junk():
    for bad in ("", "https://x/folders/F/_download/..%2F..", "a/b/c d"):
        with pytest.raises(ValueError):
            oce.job_id_from_location(bad)


# ------------------------------------------------------------------ a whole job, mocked

def zip_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@respx.mock
async def test_folder_job_end_to_end_with_drifted_bodies(tmp_path):
    respx.post(TOKEN_URL).mock(return_value=httpx.Response(200, json={"access_token": "t"}))
    a, b = item(1, size="5"), item(2, size="3")
    respx.get(f"{API}/folders/F1/items").mock(
        return_value=httpx.Response(200, json={"hasMore": "0", "items": [a, b]}))
    package = zip_of({"F1 name/f1.wav": b"aaaaa", "F1 name/f2.wav": b"bbb"})
    create = respx.post(f"{API}/folders/F1/_download").mock(return_value=httpx.Response(200, json={
        "Location": "[OCEHost]/folders/F1/_download/JOB42", "errorCode": "0"}))
    status = respx.get(f"{API}/folders/F1/_download/JOB42").mock(side_effect=[
        httpx.Response(200, json={"completed": "false", "progress": "PENDING"}),
        httpx.Response(200, json={"completed": False, "completedPercentage": 50,
                                  "progress": "PROCESSING"}),
        httpx.Response(200, json={"completed": "true", "completedPercentage": "100",
                                  "progress": "SUCCEEDED",
                                  "details": {"filesize": str(len(package))},
                                  "links": [{"href": "OCEHost/x/package"}]}),
    ])

    def serve(req):
        first, last = req.headers["range"].removeprefix("bytes=").split("-")
        body = package[int(first):int(last) + 1]
        return httpx.Response(206, content=body, headers={
            "Content-Range": f"bytes {first}-{int(first) + len(body) - 1}/{len(package)}"})
    pkg = respx.get(f"{API}/folders/F1/_download/JOB42/package").mock(side_effect=serve)
    delete = respx.delete(f"{API}/folders/F1/_download/JOB42").mock(
        return_value=httpx.Response(200, json={"errorCode": "0", "type": "folder"}))
    cache = StandInCache(tmp_path)
    src = make_source({**OAUTH, "job_poll_interval": 0.001})
    entries = (await src.list_dir("F1")).entries
    engine = BulkEngine(src, src.http, cache)
    assert await engine.prefetch(entries) == 0             # every file delivered
    await engine.aclose()
    assert json.loads(create.calls[0].request.content) == {"idList": f"{a['id']},{b['id']}"}
    assert status.call_count == 3 and pkg.call_count == 1 and delete.call_count == 1
    assert cache.files == {src.cache_key(entries[0]): b"aaaaa", src.cache_key(entries[1]): b"bbb"}
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ zip members

def wanted(key: str, name: str, size: int) -> BulkFile:
    """A file asked of a job as OCE asks for it: by its name, without a checksum."""
    return BulkFile(key=key, size=size, member_name=name, md5=None, ref=key)


def test_member_paths_are_never_used_as_paths(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    zpath = tmp_path / "p.zip"
    zpath.write_bytes(zip_of({
        "../../escape/a.wav": b"AAAA",            # a traversal: matched by its last part only
        "/abs/b.wav": b"BB",
        "C:\\win\\c.wav": b"CCC",
        "top/sub/d.wav": b"wrong size",          # a namesake in a subfolder, other size
        "top/d.wav": b"DDDDD",
        "top/e.wav": b"EEEEEEEE",                # e is 3 bytes in the listing: refused
    }))
    files = [wanted("a", "a.wav", 4), wanted("b", "b.wav", 2), wanted("c", "c.wav", 3),
             wanted("d", "d.wav", 5), wanted("e", "e.wav", 3), wanted("f", "f.wav", 1)]
    results = extract_verified(zpath, files, out, "not in the package")
    done = {k: p for k, (p, r) in results.items() if r.ok}
    problems = {k: r for k, (p, r) in results.items() if not r.ok}
    assert {k: p.read_bytes() for k, p in done.items()} == \
        {"a": b"AAAA", "b": b"BB", "c": b"CCC", "d": b"DDDDD"}
    # each member went to a file of our naming in `out`, nowhere else
    assert all(p.parent == out and not p.name.endswith(".wav") for p in done.values())
    assert set(problems) == {"e", "f"}
    assert all(results[k][0] is None for k in problems)
    # a member of the wrong size is a failure; a file the zip lacks is read directly
    assert "expected 3" in problems["e"].message and not problems["e"].fallback
    assert "not in the package" in problems["f"].message and problems["f"].fallback
    assert sorted(out.iterdir()) == sorted(done.values())
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["out", "p.zip"] + [p.name for p in done.values()])


def test_namesakes_are_told_apart_by_size_and_depth(tmp_path):
    zpath = tmp_path / "p.zip"
    zpath.write_bytes(zip_of({"F/sub/x.wav": b"123", "F/x.wav": b"456"}))
    results = extract_verified(zpath, [wanted("x", "x.wav", 3)], tmp_path)
    path, result = results["x"]
    assert result.ok and path.read_bytes() == b"456"


def test_describe_oce_error():
    body = ('{"errorCode":"-96","errorKey":"!csBulkdownloadUnableToInitJob",'
            '"errorMessage":"One or more of the Ids are not located in the parent folder."}')
    assert oce.describe_oce_error(body) == ("errorCode -96, !csBulkdownloadUnableToInitJob: "
                                            "One or more of the Ids are not located in the parent folder.")
    assert oce.describe_oce_error("<html>") == ""
