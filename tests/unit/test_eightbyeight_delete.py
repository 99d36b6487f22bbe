"""8x8 deletes (issue 9): DELETE /bulk against scripted answers (respx) — request
shape, coalescing of concurrent deletes per region, error mapping — then the source
against the real emulator, and the emulator's own DELETE /bulk."""
from __future__ import annotations

import datetime as dt
import errno
import json

import httpx
import pytest
import respx
import trio

from recfs.config import parse_config
from recfs.emulators.base import BytesBlob
from recfs.emulators.eightbyeight import EightByEight, source_table
from recfs.http import Http, RetryPolicy
from recfs.sources import eightbyeight as e8
from recfs.sources.base import Entry, Kind, SourceError
from recfs.sources.eightbyeight import DirRef, FileRef

API = "https://api.8x8.test/storage"
TOKEN_URL = "https://api.8x8.test/oauth/v2/token"
SECRET = "s3cr3t-value"
UTC = dt.timezone.utc


@pytest.fixture
async def http():
    client = Http(retry=RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.01, budget=5))
    yield client
    await client.aclose()


def scripted_source(http: Http, **extra) -> e8.EightByEightSource:
    table = {"name": "e", "kind": "8x8", "api_url": API, "token_url": TOKEN_URL,
             "client_id": "key-1", "client_secret": SECRET, "regions": ["us-east", "uk"],
             "allow_delete": True}
    table.update(extra)
    opts = parse_config({"sources": [table]}).sources[0].options
    return e8.Source("e", opts, http)


def entry(oid: str, region: str = "us-east") -> Entry:
    folder = DirRef("day", region, "callrecording", 2024, 9, 3)
    return Entry(name=f"{oid}.mp3", kind=Kind.FILE, ref=FileRef(region, oid, f"{oid}.mp3", None, folder),
                 size=10, id=oid, version="v")


class FakeCss:
    """The token endpoint and DELETE /bulk of each region; `answer(ids)` decides the
    status of each DELETE (default 200)."""

    def __init__(self, mock: respx.MockRouter, answer=lambda ids: 200):
        self.answer = answer
        self.tokens = 0
        self.deletes: list[tuple[str, list[str]]] = []
        self.requests: list[httpx.Request] = []
        mock.post(TOKEN_URL).mock(side_effect=self.token)
        mock.delete(url__regex=rf"^{API}/[^/]+/v3/bulk$").mock(side_effect=self.delete)

    def token(self, request):
        self.tokens += 1
        return httpx.Response(200, json={"access_token": f"t{self.tokens}", "expires_in": "1799"})

    def delete(self, request: httpx.Request):
        region = request.url.path.split("/")[2]
        ids = json.loads(request.content)
        self.requests.append(request)
        self.deletes.append((region, ids))
        status = self.answer(ids)
        if status in (200, 204):
            return httpx.Response(status)
        return httpx.Response(status, json={"status": status, "message": "nope"})


async def delete_all(src, entries) -> dict[str, BaseException | None]:
    """Delete `entries` concurrently (as parallel unlinks do); each one's outcome."""
    outcome: dict[str, BaseException | None] = {}

    async def one(e):
        try:
            await src.delete(e)
            outcome[e.id] = None
        except SourceError as exc:
            outcome[e.id] = exc

    async with trio.open_nursery() as nursery:
        for e in entries:
            nursery.start_soon(one, e)
    return outcome


# ---------------------------------------------------------------- the request

@respx.mock(assert_all_called=False)
async def test_one_delete_is_a_bulk_request_of_one_id(respx_mock, http):
    fake = FakeCss(respx_mock)
    await scripted_source(http).delete(entry("id-1"))
    [req] = fake.requests
    assert req.method == "DELETE" and str(req.url) == f"{API}/us-east/v3/bulk"
    assert json.loads(req.content) == ["id-1"]
    assert req.headers["content-type"] == "application/json"
    assert req.headers["authorization"] == "Bearer t1"


@respx.mock(assert_all_called=False)
async def test_concurrent_deletes_of_a_region_share_one_request(respx_mock, http):
    fake = FakeCss(respx_mock)
    src = scripted_source(http)
    entries = [entry(f"id-{i}") for i in range(30)] + [entry(f"uk-{i}", "uk") for i in range(5)]
    outcome = await delete_all(src, entries)
    assert all(v is None for v in outcome.values()) and len(outcome) == 35
    by_region = {region: sorted(ids) for region, ids in fake.deletes}
    assert len(fake.deletes) == 2
    assert by_region == {"us-east": sorted(f"id-{i}" for i in range(30)),
                         "uk": sorted(f"uk-{i}" for i in range(5))}
    assert fake.tokens == 1


@respx.mock(assert_all_called=False)
async def test_a_batch_holds_at_most_100_ids(respx_mock, http):
    fake = FakeCss(respx_mock)
    outcome = await delete_all(scripted_source(http), [entry(f"id-{i}") for i in range(250)])
    assert all(v is None for v in outcome.values())
    assert sorted(len(ids) for _, ids in fake.deletes) == [50, 100, 100]
    assert sorted(i for _, ids in fake.deletes for i in ids) == sorted(f"id-{i}" for i in range(250))


@respx.mock(assert_all_called=False)
async def test_deletes_one_after_another_are_one_request_each(respx_mock, http):
    fake = FakeCss(respx_mock)
    src = scripted_source(http)
    for i in range(3):
        await src.delete(entry(f"id-{i}"))
    assert fake.deletes == [("us-east", ["id-0"]), ("us-east", ["id-1"]), ("us-east", ["id-2"])]


@respx.mock(assert_all_called=False)
async def test_204_is_success(respx_mock, http):
    fake = FakeCss(respx_mock, answer=lambda ids: 204)
    assert await delete_all(scripted_source(http), [entry("a"), entry("b")]) == {"a": None, "b": None}
    assert len(fake.deletes) == 1


@pytest.mark.parametrize("status, code", [(400, errno.EIO), (403, errno.EACCES), (500, errno.EIO)])
@respx.mock(assert_all_called=False)
async def test_a_failed_request_fails_every_id_it_carried(respx_mock, http, status, code):
    fake = FakeCss(respx_mock, answer=lambda ids: status)
    outcome = await delete_all(scripted_source(http), [entry(f"id-{i}") for i in range(4)])
    assert set(outcome) == {f"id-{i}" for i in range(4)}
    for exc in outcome.values():
        assert isinstance(exc, SourceError) and exc.errno == code
        assert f"HTTP {status}" in str(exc) and SECRET not in str(exc) and "t1" not in str(exc)
    # one batch; a 500 is retried by the HTTP layer's policy (three tries), the rest are not
    assert len(fake.deletes) == (3 if status == 500 else 1)
    assert {tuple(sorted(ids)) for _, ids in fake.deletes} == {tuple(f"id-{i}" for i in range(4))}


@respx.mock(assert_all_called=False)
async def test_a_404_for_one_id_is_already_gone(respx_mock, http):
    fake = FakeCss(respx_mock, answer=lambda ids: 404)
    await scripted_source(http).delete(entry("gone"))
    assert fake.deletes == [("us-east", ["gone"])]


@respx.mock(assert_all_called=False)
async def test_a_404_for_a_batch_is_retried_id_by_id_and_each_caller_gets_its_own_answer(
        respx_mock, http):
    def answer(ids):
        if len(ids) > 1:
            return 404              # one of them is unknown: the API does not say which
        return {"gone": 404, "bad": 400}.get(ids[0], 200)
    fake = FakeCss(respx_mock, answer=answer)
    outcome = await delete_all(scripted_source(http),
                               [entry("a"), entry("gone"), entry("bad"), entry("b")])
    assert outcome["a"] is None and outcome["b"] is None and outcome["gone"] is None
    assert isinstance(outcome["bad"], SourceError) and outcome["bad"].errno == errno.EIO
    singles = sorted(ids[0] for _, ids in fake.deletes if len(ids) == 1)
    assert len(fake.deletes) == 5 and singles == ["a", "b", "bad", "gone"]


@respx.mock(assert_all_called=False)
async def test_an_expired_token_is_renewed_for_the_batch(respx_mock, http):
    calls = []

    def answer(ids):
        calls.append(ids)
        return 401 if len(calls) == 1 else 200
    fake = FakeCss(respx_mock, answer=answer)
    assert await delete_all(scripted_source(http), [entry("a"), entry("b")]) == {"a": None, "b": None}
    assert fake.tokens == 2 and len(fake.deletes) == 2
    assert [r.headers["authorization"] for r in fake.requests] == ["Bearer t1", "Bearer t2"]


@respx.mock(assert_all_called=False)
async def test_nothing_is_sent_without_allow_delete_or_for_a_folder(respx_mock, http):
    fake = FakeCss(respx_mock)
    with pytest.raises(SourceError) as info:
        await scripted_source(http, allow_delete=False).delete(entry("a"))
    assert info.value.errno == errno.EROFS
    folder = Entry("03", Kind.DIR, DirRef("day", "us-east", "callrecording", 2024, 9, 3))
    with pytest.raises(SourceError) as info:
        await scripted_source(http).delete(folder)
    assert info.value.errno == errno.EROFS
    assert fake.deletes == [] and fake.tokens == 0


async def test_a_cancelled_first_caller_still_sends_the_batch_for_the_others():
    sent: list[list[str]] = []

    async def send(group, ids):
        sent.append(list(ids))
        return {i: None for i in ids}

    coalescer = e8.DeleteCoalescer(send, window=0.05)
    finished = []

    async def follower(oid):
        await coalescer.delete("r", oid)
        finished.append(oid)

    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as leader_scope:
            leader_scope.cancel()       # the first caller gives up at once …
            nursery.start_soon(follower, "b")
            await coalescer.delete("r", "a")
    assert sent == [["a", "b"]] and finished == ["b"]   # … yet "b" is not stranded


async def test_deletes_arriving_while_all_slots_are_busy_share_the_next_request():
    import trio.testing
    sent: list[list[str]] = []
    gate = trio.Event()

    async def send(group, ids):
        sent.append(list(ids))
        await gate.wait()
        return {i: None for i in ids}

    coalescer = e8.DeleteCoalescer(send, max_in_flight=4)
    async with trio.open_nursery() as nursery:
        for oid in "abcd":                # one after another: each goes out at once
            nursery.start_soon(coalescer.delete, "r", oid)
            await trio.testing.wait_all_tasks_blocked()
        assert sent == [["a"], ["b"], ["c"], ["d"]]
        for oid in "efghi":               # all four slots busy: these wait together
            nursery.start_soon(coalescer.delete, "r", oid)
        await trio.testing.wait_all_tasks_blocked()
        assert len(sent) == 4
        gate.set()
    assert [sorted(ids) for ids in sent[4:]] == [list("efghi")] and coalescer.batches_sent == 5


# ---------------------------------------------------------------- against the emulator

@pytest.fixture
def emu():
    """Two day folders of one region and one of another region."""
    e = EightByEight(regions=("us-east", "uk"))
    for day in (3, 4):
        for i in range(6):
            e.add_object("us-east", "callrecording", f"d{day}-call-{i}.mp3", BytesBlob(b"x" * (100 + i)),
                         dt.datetime(2024, 9, day, 9 + i, tzinfo=UTC))
    e.add_object("uk", "voicemail", "vm-1.wav", BytesBlob(b"v" * 50), dt.datetime(2024, 9, 3, 9, tzinfo=UTC))
    e.add_object("us-east", "callrecording", "lonely.mp3", BytesBlob(b"l" * 70),
                 dt.datetime(2024, 10, 1, 9, tzinfo=UTC))
    with e:
        yield e


class Harness:
    def __init__(self, emu: EightByEight, **opts):
        table = source_table(emu, "e8")
        table.update({"allow_delete": True, **opts})
        options = parse_config({"sources": [table]}).sources[0].options
        self.http = Http(retry=RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.01, budget=5))
        self.src = e8.Source("e8", options, self.http)

    async def ls(self, *path: str) -> dict[str, Entry]:
        ref = self.src.root_ref()
        for part in path:
            ref = {e.name: e for e in (await self.src.list_dir(ref)).entries}[part].ref
        return {e.name: e for e in (await self.src.list_dir(ref)).entries}

    async def close(self):
        await self.src.aclose()
        await self.http.aclose()


@pytest.fixture
async def h(emu):
    harness = Harness(emu)
    yield harness
    await harness.close()


DAY3 = ("us-east", "callrecording", "2024", "09", "03")
DAY4 = ("us-east", "callrecording", "2024", "09", "04")


async def test_deleted_objects_are_revoked_and_leave_the_listing(h, emu):
    files = await h.ls(*DAY3)
    victim = files["d3-call-2.mp3"]
    await h.src.delete(victim)
    assert emu.objects[victim.id].objectState == "REVOKED"
    assert emu.deletes == [("us-east", [victim.id])] and emu.counts["bulk_delete"] == 1
    assert "d3-call-2.mp3" not in await h.ls(*DAY3) and len(await h.ls(*DAY3)) == 5


async def test_a_folder_deleted_concurrently_is_one_request(h, emu):
    day3, day4 = await h.ls(*DAY3), await h.ls(*DAY4)
    uk = await h.ls("uk", "voicemail", "2024", "09", "03")
    outcome = await delete_all(h.src, [*day3.values(), *day4.values(), *uk.values()])
    assert all(v is None for v in outcome.values()) and len(outcome) == 13
    assert emu.counts["bulk_delete"] == 2                # one per region
    assert sorted(len(ids) for _, ids in emu.deletes) == [1, 12]
    # September is empty now: the year shows only October
    assert sorted(await h.ls("us-east", "callrecording", "2024")) == ["10"]


async def test_a_day_left_empty_is_not_found_again_by_a_remembered_probe(h, emu):
    # listing the year remembers that October's first object is lonely.mp3 ...
    assert sorted(await h.ls("us-east", "callrecording", "2024")) == ["09", "10"]
    day = DirRef("day", "us-east", "callrecording", 2024, 10, 1)
    [lonely] = (await h.src.list_dir(day)).entries
    await h.src.delete(lonely)
    # ... which must not make October show a day that is empty now
    month = DirRef("month", "us-east", "callrecording", 2024, 10)
    assert (await h.src.list_dir(month)).entries == []
    assert sorted(await h.ls("us-east", "callrecording", "2024")) == ["09"]


async def test_relisting_a_year_keeps_the_months_before_the_last_probe(h, emu):
    year = DirRef("year", "us-east", "callrecording", 2024)
    first = [e.name for e in (await h.src.list_dir(year)).entries]
    again = [e.name for e in (await h.src.list_dir(year)).entries]
    assert first == again == ["09", "10"]


async def test_a_filter_that_shows_revoked_objects_still_hides_what_was_deleted_here(emu):
    h = Harness(emu, filter="(objectState==AVAILABLE,objectState==REVOKED)")
    try:
        victim = (await h.ls(*DAY3))["d3-call-0.mp3"]
        await h.src.delete(victim)
        assert "d3-call-0.mp3" not in await h.ls(*DAY3)
    finally:
        await h.close()


async def test_a_read_only_key_gets_eacces_and_nothing_changes(emu):
    emu.read_only_key = True
    h = Harness(emu)
    try:
        files = await h.ls(*DAY3)
        outcome = await delete_all(h.src, list(files.values())[:3])
        assert all(isinstance(v, SourceError) and v.errno == errno.EACCES for v in outcome.values())
        assert emu.deletes == [] and emu.counts["bulk_delete"] == 1
        assert len(await h.ls(*DAY3)) == 6
    finally:
        await h.close()


@pytest.mark.parametrize("unknown", ["reject", "partial", "ignore"])
async def test_ids_gone_meanwhile_do_not_fail_the_others(emu, unknown):
    emu.delete_unknown = unknown
    h = Harness(emu)
    try:
        files = list((await h.ls(*DAY3)).values())
        emu.objects[files[0].id].objectState = "REVOKED"       # someone else was faster
        outcome = await delete_all(h.src, files)
        assert all(v is None for v in outcome.values())
        assert emu.deleted_ids == {f.id for f in files[1:]}
        assert all(emu.objects[f.id].objectState == "REVOKED" for f in files)
    finally:
        await h.close()


async def test_a_lost_answer_is_retried_and_counted_as_deleted(h, emu):
    from recfs.emulators.base import Fault
    emu.faults.add(Fault("status", route="bulk_delete", status=502))   # deleted, answer lost
    files = list((await h.ls(*DAY3)).values())[:2]
    outcome = await delete_all(h.src, files)
    assert all(v is None for v in outcome.values())
    assert emu.deleted_ids == {f.id for f in files}


# ---------------------------------------------------------------- emulator fidelity (§1.7)

def bearer(emu: EightByEight) -> dict[str, str]:
    resp = httpx.post(emu.token_url, auth=(emu.client_id, emu.client_secret),
                      data={"grant_type": "client_credentials"})
    return {"Authorization": f"Bearer {resp.json()['access_token']}"}


def test_emulator_bulk_delete(emu):
    h = bearer(emu)
    url = f"{emu.api_url}/us-east/v3/bulk"
    ids = [o.id for o in emu.objects.values() if o.region == "us-east"][:3]
    for bad in (b"{}", b"[]", b"[1, 2]", b"not json"):
        resp = httpx.request("DELETE", url, headers={**h, "Content-Type": "application/json"},
                             content=bad)
        assert resp.status_code == 400
    resp = httpx.request("DELETE", url, headers=h, json=ids)
    assert resp.status_code == 200
    assert {emu.objects[i].objectState for i in ids} == {"REVOKED"}
    listing = httpx.get(f"{emu.api_url}/us-east/v3/objects", headers=h, params={"limit": "100"})
    assert not set(ids) & {o["id"] for o in listing.json()["content"]}
    assert httpx.get(f"{emu.api_url}/us-east/v3/objects/{ids[0]}/content", headers=h).status_code == 404
    # already deleted, or unknown in this region: 404 and nothing else changes
    other = [o.id for o in emu.objects.values() if o.region == "us-east"][3]
    resp = httpx.request("DELETE", url, headers=h, json=[ids[0], other])
    assert resp.status_code == 404 and emu.objects[other].objectState == "AVAILABLE"
    uk_id = next(o.id for o in emu.objects.values() if o.region == "uk")
    assert httpx.request("DELETE", url, headers=h, json=[uk_id]).status_code == 404
    emu.delete_status = 204
    assert httpx.request("DELETE", url, headers=h, json=[other]).status_code == 204
    assert emu.deletes == [("us-east", ids), ("us-east", [other])]
    emu.purge()
    assert {emu.objects[i].objectState for i in [*ids, other]} == {"DELETED"}
    emu.delete_max_ids = 1
    assert httpx.request("DELETE", url, headers=h, json=[uk_id, uk_id + "x"]).status_code == 400
    assert httpx.request("DELETE", url, json=[uk_id]).status_code == 401
