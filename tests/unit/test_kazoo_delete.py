"""Kazoo deletes (issue 9, issue 21): the PATCH soft_delete / DELETE requests against
scripted answers (respx), then the source against the real emulator: both views forget
a deleted recording, a server with seed 003's PATCH keeps it under deleted/ and gives it
back on restore, a recording saved in another month's database is never reported
deleted while it is listed, and the emulator follows apis.md §4.6 and seed 003."""
from __future__ import annotations

import base64
import datetime as dt
import errno
import json
import time

import httpx
import pytest
import respx

from recfs.config import parse_config
from recfs.emulators.kazoo import KazooEmulator, source_table
from recfs.http import Http, HttpError, RetryPolicy
from recfs.sources import kazoo
from recfs.sources.base import Entry, Kind, SourceError
from recfs.sources.kazoo import KazooSource, Options

API = "https://kazoo.test:8000/v2"
ACCOUNT = "a" * 32
KEY = "k" * 64
RID = "202409-" + "b" * 32


@pytest.fixture
async def http():
    client = Http(retry=RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02, budget=5))
    yield client
    await client.aclose()


def jwt(tag: str) -> str:
    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'RS256'})}.{part({'iat': 1000, 'exp': 4600, 'jti': tag})}.sig"


class FakeKazoo:
    """api_auth issuing t1, t2, …; DELETE answered by `answers` in turn (then 200);
    PATCH by `patches` in turn (then 405, as Kazoo 4.3 answers it); listings hold
    `listed` (ids)."""

    def __init__(self, mock: respx.MockRouter, answers: list[int] = (), patches: list[int] = (),
                 listed: list[str] = ()):
        self.tokens: list[str] = []
        self.deletes: list[httpx.Request] = []
        self.patches: list[httpx.Request] = []
        self.listings: list[httpx.Request] = []
        self.answers = list(answers)
        self.patch_answers = list(patches)
        self.listed = list(listed)
        mock.put(f"{API}/api_auth").mock(side_effect=self.auth)
        mock.delete(path__regex=r"^/v2/accounts/\w+/recordings/[^/]+$").mock(side_effect=self.delete)
        mock.patch(path__regex=r"^/v2/accounts/\w+/recordings/[^/]+$").mock(side_effect=self.patch)
        mock.get(path__regex=r"^/v2/accounts/\w+/recordings$").mock(side_effect=self.listing)

    def patch(self, request: httpx.Request) -> httpx.Response:
        self.patches.append(request)
        status = self.patch_answers.pop(0) if self.patch_answers else 405
        if status == 200:
            return httpx.Response(200, json={"status": "success", "data": {"id": RID}})
        message = {405: "invalid_method", 404: "bad_identifier", 403: "forbidden"}.get(status, "error")
        return httpx.Response(status, json={"status": "error", "error": str(status), "message": message})

    def listing(self, request: httpx.Request) -> httpx.Response:
        self.listings.append(request)
        data = [{"id": rid, "start": 63900000000, "name": "x.mp3"} for rid in self.listed]
        return httpx.Response(200, json={"status": "success", "data": data, "page_size": len(data)})

    def auth(self, request: httpx.Request) -> httpx.Response:
        self.tokens.append(jwt(f"t{len(self.tokens) + 1}"))
        return httpx.Response(201, json={"auth_token": self.tokens[-1], "status": "success",
                                         "data": {"account_id": ACCOUNT}})

    def delete(self, request: httpx.Request) -> httpx.Response:
        self.deletes.append(request)
        status = self.answers.pop(0) if self.answers else 200
        if status == 200:
            return httpx.Response(200, json={"status": "success", "data": {"id": RID}})
        if status == 401:
            return httpx.Response(401, json={"status": "error", "error": "401",
                                             "message": "invalid_credentials"})
        if status == 404:
            return httpx.Response(404, json={"status": "error", "error": "404",
                                             "message": "bad_identifier", "data": {"cause": RID}})
        return httpx.Response(status, json={"status": "error", "error": str(status),
                                            "message": "datastore_fault" if status >= 500 else "forbidden"})


def scripted_source(http: Http, **options) -> KazooSource:
    opts = {"api_url": API, "api_key": KEY, "accounts": [ACCOUNT], "since": dt.date(2024, 1, 1),
            "allow_delete": True}
    opts.update(options)
    return kazoo.Source("kz", Options(name="kz", kind="kazoo", **opts), http)


def recording_entry(rid: str = RID, account: str = ACCOUNT) -> Entry:
    return Entry(name=f"{rid}.mp3", kind=Kind.FILE, ref=("rec", account, rid), size=10, id=rid,
                 version="v1")


# ---------------------------------------------------------------- the request

@respx.mock(assert_all_called=False)
async def test_delete_is_one_soft_delete_request_with_the_token(respx_mock, http):
    """On a 4.3 server the first rm learns that PATCH is not allowed (405) and DELETEs;
    later ones DELETE at once."""
    fake = FakeKazoo(respx_mock)
    src = scripted_source(http)
    await src.delete(recording_entry())
    [patch] = fake.patches
    assert json.loads(patch.content)["data"]["soft_delete"]["deleted_by"]["account_id"] == ACCOUNT
    [req] = fake.deletes
    assert req.method == "DELETE"
    assert req.url.path == f"/v2/accounts/{ACCOUNT}/recordings/{RID}"
    assert "should_soft_delete" not in req.url.params      # the API's default: soft
    assert req.headers["x-auth-token"] == fake.tokens[0]
    assert req.content == b""
    await src.delete(recording_entry("202409-" + "c" * 32))
    assert len(fake.patches) == 1 and len(fake.deletes) == 2


@respx.mock(assert_all_called=False)
async def test_where_patch_soft_delete_exists_rm_marks_the_recording(respx_mock, http):
    fake = FakeKazoo(respx_mock, patches=[200, 200])
    src = scripted_source(http)
    await src.delete(recording_entry())
    await src.delete(recording_entry("202409-" + "c" * 32))
    assert fake.deletes == [] and len(fake.patches) == 2
    mark = json.loads(fake.patches[0].content)["data"]["soft_delete"]
    assert mark["deleted_by"] == {"account_id": ACCOUNT}
    assert abs(mark["deleted_at"] - (time.time() + 62167219200)) < 60     # Gregorian seconds


@respx.mock(assert_all_called=False)
async def test_already_gone_is_success(respx_mock, http):
    fake = FakeKazoo(respx_mock, answers=[404])
    await scripted_source(http).delete(recording_entry())
    assert len(fake.deletes) == 1
    assert len(fake.listings) == 1              # and no listing shows it any more


@respx.mock(assert_all_called=False)
async def test_a_404_for_a_recording_still_listed_is_no_success(respx_mock, http):
    """A call over a month's end: listed, but its id names a month database that does
    not hold it, so DELETE (or PATCH) by id answers 404."""
    rid = "202408-" + "d" * 32
    FakeKazoo(respx_mock, answers=[404], listed=[rid])
    entry = Entry(name="late.mp3", kind=Kind.FILE, ref=kazoo.recording_ref(ACCOUNT, rid, 20 * 60 * 1000),
                  size=10, id=rid, version="v1",
                  mtime=dt.datetime(2024, 8, 31, 23, 50, tzinfo=dt.timezone.utc).timestamp())
    with pytest.raises(SourceError) as info:
        await scripted_source(http).delete(entry)
    assert info.value.errno == errno.EIO
    assert "still listed" in str(info.value) and "2024-08" in str(info.value)
    assert "next month's database" in str(info.value)


@respx.mock(assert_all_called=False)
async def test_an_expired_token_is_renewed_once_and_the_delete_repeated(respx_mock, http):
    fake = FakeKazoo(respx_mock, answers=[401, 200])
    await scripted_source(http).delete(recording_entry())
    assert len(fake.tokens) == 2
    assert [r.headers["x-auth-token"] for r in fake.deletes] == fake.tokens


@respx.mock(assert_all_called=False)
async def test_forbidden_maps_to_eacces(respx_mock, http):
    FakeKazoo(respx_mock, answers=[403])
    with pytest.raises(SourceError) as info:
        await scripted_source(http).delete(recording_entry())
    assert info.value.errno == errno.EACCES
    assert RID in str(info.value) and ACCOUNT in str(info.value)


@respx.mock(assert_all_called=False)
async def test_server_errors_are_retried_then_reported_as_eio_without_secrets(respx_mock, http):
    fake = FakeKazoo(respx_mock, answers=[503, 500, 500])
    with pytest.raises(SourceError) as info:
        await scripted_source(http).delete(recording_entry())
    assert info.value.errno == errno.EIO
    assert len(fake.deletes) == 3                      # the policy's three tries
    message = str(info.value)
    assert RID in message and "HTTP 500" in message
    assert KEY not in message and fake.tokens[0] not in message


@respx.mock(assert_all_called=False)
async def test_a_retry_after_a_lost_answer_counts_as_deleted(respx_mock, http):
    # the first DELETE went through but its answer was a 502; the retry finds it gone
    fake = FakeKazoo(respx_mock, answers=[502, 404])
    await scripted_source(http).delete(recording_entry())
    assert len(fake.deletes) == 2


@respx.mock(assert_all_called=False)
async def test_nothing_is_sent_without_allow_delete_or_for_a_folder(respx_mock, http):
    fake = FakeKazoo(respx_mock)
    with pytest.raises(SourceError) as info:
        await scripted_source(http, allow_delete=False).delete(recording_entry())
    assert info.value.errno == errno.EROFS
    folder = Entry(name="05", kind=Kind.DIR, ref=("day", ACCOUNT, None, 2024, 9, 5))
    with pytest.raises(SourceError) as info:
        await scripted_source(http).delete(folder)
    assert info.value.errno == errno.EROFS
    assert fake.deletes == [] and fake.tokens == []


# ---------------------------------------------------------------- against the emulator

def utc(*parts) -> float:
    return dt.datetime(*parts, tzinfo=dt.timezone.utc).timestamp()


@pytest.fixture
def emu():
    """One account, two users. `lonely` is the only recording of its day and the only
    one of user `solo`, in a month that has ended; `busy_day` holds two more."""
    e = KazooEmulator(bucket_tokens=None, seed=3)
    today = dt.datetime.now(dt.timezone.utc).date()
    old = today.replace(day=1) - dt.timedelta(days=40)        # a closed month
    e.account = e.add_account("Deletes")
    e.demo_key = e.add_api_key(e.account)
    e.demo_accounts = [e.account]
    e.demo_since = (old - dt.timedelta(days=5)).isoformat()
    e.solo, e.other = e.new_user_id(), e.new_user_id()
    base = utc(old.year, old.month, old.day)
    e.lonely = e.add_recording(e.account, base + 9 * 3600, owner_id=e.solo, name="lonely.mp3")
    busy = base + 2 * 86400
    e.kept = e.add_recording(e.account, busy + 10 * 3600, owner_id=e.other, name="kept.mp3")
    e.doomed = e.add_recording(e.account, busy + 11 * 3600, owner_id=e.other, name="doomed.mp3")
    with e:
        yield e


@pytest.fixture
async def ehttp():
    client = Http(retry=RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, budget=10))
    yield client
    await client.aclose()


def emulated_source(emu: KazooEmulator, http: Http, **overrides) -> KazooSource:
    table = source_table(emu, "kz")
    table.update({"allow_delete": True, **overrides})
    options = parse_config({"sources": [table]}).sources[0].options
    return kazoo.Source("kz", options, http)


async def child(src, ref, name):
    listing = await src.list_dir(ref)
    by_name = {e.name: e for e in listing.entries}
    return by_name.get(name)


async def folder_of(src, emu, rec, owner: bool = False):
    """The day folder Entry of `rec` in the account view (or the owner's view)."""
    t = dt.datetime.fromtimestamp(rec.public["start"] - 62167219200, dt.timezone.utc)
    ref = ("acct", emu.account)
    if owner:
        ref = (await child(src, ("acct", emu.account), "users")).ref
        ref = (await child(src, ref, rec.public["owner_id"])).ref
    for part in (f"{t.year:04d}", f"{t.month:02d}", f"{t.day:02d}"):
        entry = await child(src, ref, part)
        if entry is None:
            return None
        ref = entry.ref
    return ref


async def names_in(src, ref) -> set[str]:
    return {e.name for e in (await src.list_dir(ref)).entries}


async def test_delete_hides_the_recording_in_both_views(emu, ehttp):
    src = emulated_source(emu, ehttp)
    day = await folder_of(src, emu, emu.doomed)
    user_day = await folder_of(src, emu, emu.doomed, owner=True)
    assert await names_in(src, day) == await names_in(src, user_day) == {"kept.mp3", "doomed.mp3"}
    entry = await child(src, day, "doomed.mp3")

    await src.delete(entry)

    rec = emu.recordings[emu.doomed.id]
    assert rec.deleted and emu.deletes == [(rec.id, True)]
    assert emu.counts["delete"] == 1
    assert await names_in(src, day) == await names_in(src, user_day) == {"kept.mp3"}
    # the media is gone too: GET answers 404 bad_identifier
    resp = httpx.get(f"{emu.url}/v2/accounts/{emu.account}/recordings/{rec.id}",
                     headers={**await src.auth.headers(), "Accept": "audio/mpeg"})
    assert resp.status_code == 404 and resp.json()["message"] == "bad_identifier"


async def test_a_day_left_empty_vanishes_from_both_views_at_their_next_listing(emu, ehttp):
    src = emulated_source(emu, ehttp)
    day = await folder_of(src, emu, emu.lonely)
    user_day = await folder_of(src, emu, emu.lonely, owner=True)
    assert day is not None and user_day is not None
    entry = await child(src, day, "lonely.mp3")
    listings = emu.counts["list"] + emu.counts["list_user"]

    await src.delete(entry)
    after_delete = emu.counts["list"] + emu.counts["list_user"]
    assert after_delete == listings             # a delete that succeeds lists nothing

    # what was known of that day (and its month and year) is asked again: the day is
    # gone from the account's month and from the owner's; a few probes, no crawl
    assert await folder_of(src, emu, emu.lonely) is None
    assert await folder_of(src, emu, emu.lonely, owner=True) is None
    assert emu.counts["list"] + emu.counts["list_user"] - after_delete <= 8
    # the owner is a user of the account still (the users API lists them): their
    # folder stays, empty of that day
    users = (await child(src, ("acct", emu.account), "users")).ref
    assert await names_in(src, users) == {emu.other, emu.solo}


async def test_a_stale_listing_does_not_bring_a_deleted_recording_back(emu, ehttp):
    src = emulated_source(emu, ehttp)
    day = await folder_of(src, emu, emu.doomed)
    await src.delete(await child(src, day, "doomed.mp3"))
    # CouchDB views are updated lazily: a listing may still carry the document
    emu.recordings[emu.doomed.id].deleted = False
    assert await names_in(src, day) == {"kept.mp3"}
    assert await names_in(src, await folder_of(src, emu, emu.doomed, owner=True)) == {"kept.mp3"}


async def test_deleting_twice_succeeds_and_sends_one_more_request(emu, ehttp):
    src = emulated_source(emu, ehttp)
    day = await folder_of(src, emu, emu.doomed)
    entry = await child(src, day, "doomed.mp3")
    await src.delete(entry)
    await src.delete(entry)
    assert emu.counts["delete"] == 2 and len(emu.deletes) == 1


async def test_without_allow_delete_the_emulator_sees_nothing(emu, ehttp):
    src = emulated_source(emu, ehttp, allow_delete=False)
    day = await folder_of(src, emu, emu.doomed)
    with pytest.raises(SourceError) as info:
        await src.delete(await child(src, day, "doomed.mp3"))
    assert info.value.errno == errno.EROFS
    assert emu.counts["delete"] == 0 and not emu.recordings[emu.doomed.id].deleted


async def test_a_key_of_another_account_gets_eacces(emu, ehttp):
    stranger = emu.add_account("Stranger")
    emu.demo_key = emu.add_api_key(stranger)
    src = emulated_source(emu, ehttp)
    with pytest.raises(SourceError) as info:
        await src.delete(Entry(name="doomed.mp3", kind=Kind.FILE,
                               ref=("rec", emu.account, emu.doomed.id), id=emu.doomed.id))
    assert info.value.errno == errno.EACCES
    assert not emu.recordings[emu.doomed.id].deleted


# ---------------------------------------------------------------- emulator fidelity (§4.6)

def token(emu: KazooEmulator) -> str:
    resp = httpx.put(f"{emu.url}/v2/api_auth", json={"data": {"api_key": emu.demo_key}})
    return resp.json()["auth_token"]


def test_emulator_delete_follows_the_reference(emu):
    h = {"X-Auth-Token": token(emu)}
    url = f"{emu.url}/v2/accounts/{emu.account}/recordings"
    rid = emu.doomed.id
    resp = httpx.delete(f"{url}/{rid}", headers=h)
    assert resp.status_code == 200
    assert resp.json()["data"]["id"] == rid and resp.json()["data"]["name"] == "doomed.mp3"
    again = httpx.delete(f"{url}/{rid}", headers=h)
    assert again.status_code == 404 and again.json()["message"] == "bad_identifier"
    assert again.json()["data"] == {"cause": rid}
    doc = httpx.get(f"{url}/{rid}", headers=h)
    assert doc.status_code == 404
    # the views skip deleted documents: no query shows them
    window = {"created_from": str(emu.kept.view_key[0] - 86400),
              "created_to": str(emu.kept.view_key[0] + 86400)}
    for query in ({}, {"include": "soft_delete"}, {"paginate": "false"}):
        ids = {d["id"] for d in httpx.get(url, headers=h, params={**window, **query}).json()["data"]}
        assert rid not in ids and emu.kept.id in ids
    assert rid in emu.recordings                        # soft: the document stays
    hard = httpx.delete(f"{url}/{emu.kept.id}", headers=h, params={"should_soft_delete": "false"})
    assert hard.status_code == 200 and emu.kept.id not in emu.recordings
    assert emu.deletes == [(rid, True), (emu.kept.id, False)]


def test_emulator_has_no_patch_unless_asked(emu):
    h = {"X-Auth-Token": token(emu)}
    url = f"{emu.url}/v2/accounts/{emu.account}/recordings/{emu.doomed.id}"
    body = {"data": {"soft_delete": {"deleted_at": 63755032655}}}
    resp = httpx.patch(url, headers=h, json=body)
    assert resp.status_code == 405 and resp.json()["message"] == "invalid_method"
    assert not emu.recordings[emu.doomed.id].marked

    emu.patch_soft_delete = True
    assert httpx.patch(url, headers=h, json=body).status_code == 200
    listing = f"{emu.url}/v2/accounts/{emu.account}/recordings"
    window = {"created_from": str(emu.doomed.view_key[0] - 86400),
              "created_to": str(emu.doomed.view_key[0] + 86400)}

    def listed(**query) -> set[str]:
        return {d["id"] for d in httpx.get(listing, headers=h, params={**window, **query}).json()["data"]}
    assert emu.doomed.id not in listed()
    assert emu.doomed.id in listed(include="soft_delete")
    assert httpx.patch(url, headers=h, json={"data": {"soft_restore": {}}}).status_code == 200
    assert emu.doomed.id in listed()


# ---------------------------------------------------------------- seed 003: soft delete and restore

def soft_emu() -> KazooEmulator:
    """A server with PATCH soft_delete: one account, one user, two recordings a day
    apart in a month that has ended."""
    e = KazooEmulator(bucket_tokens=None, seed=4, patch_soft_delete=True)
    old = dt.datetime.now(dt.timezone.utc).date().replace(day=1) - dt.timedelta(days=40)
    e.account = e.add_account("Soft")
    e.demo_key = e.add_api_key(e.account)
    e.demo_accounts = [e.account]
    e.demo_since = (old - dt.timedelta(days=5)).isoformat()
    e.user = e.add_user(e.account, "Ana", "Lopez")
    base = utc(old.year, old.month, old.day)
    e.first = e.add_recording(e.account, base + 9 * 3600, owner_id=e.user, name="first.mp3")
    e.second = e.add_recording(e.account, base + 86400 + 9 * 3600, owner_id=e.user, name="second.mp3")
    return e


async def test_soft_delete_shows_the_recording_under_deleted_and_restore_brings_it_back(ehttp):
    with soft_emu() as emu:
        src = emulated_source(emu, ehttp)
        acct = await src.list_dir(("acct", emu.account))
        assert [e.name for e in acct.entries][-2:] == ["users", "deleted"]
        assert emu.counts["patch"] == 1                 # the detection: a PATCH of no recording
        day = await folder_of(src, emu, emu.first)
        entry = await child(src, day, "first.mp3")

        await src.delete(entry)

        assert emu.deletes == [] and emu.recordings[emu.first.id].marked
        (rid, what, mark), = emu.patches
        assert (rid, what) == (emu.first.id, "soft_delete")
        assert mark["deleted_by"]["account_id"] == emu.account
        assert await names_in(src, day) == set()
        # deleted/{YYYY}/{MM}/{DD} shows it, with who deleted it, and it reads
        deleted = await child(src, ("acct", emu.account), "deleted")
        ref = deleted.ref
        t = dt.datetime.fromtimestamp(emu.first.public["start"] - 62167219200, dt.timezone.utc)
        for part in (f"{t.year:04d}", f"{t.month:02d}", f"{t.day:02d}"):
            ref = (await child(src, ref, part)).ref
        gone = await child(src, ref, "first.mp3")
        assert gone.xattrs["kazoo.deleted_by.account_id"] == emu.account
        assert gone.xattrs["kazoo.deleted_at"].startswith(str(dt.datetime.now(dt.timezone.utc).year))
        media = httpx.get(src.client.media_url(emu.account, gone.id),
                          headers={**await src.auth.headers(), "Accept": "audio/mpeg"})
        assert media.content == emu.first.blob.all_bytes()
        # only its own day folder takes it back, under its name
        for to, name in ((("day", emu.account, None, t.year, t.month, t.day + 1), "first.mp3"),
                         (("day", emu.account, "0" * 32, t.year, t.month, t.day), "first.mp3"),
                         (day, "other.mp3")):
            with pytest.raises(SourceError) as info:
                await src.rename(gone, ref, to, name)
            assert info.value.errno == errno.EROFS
        assert len(emu.patches) == 1

        await src.rename(gone, ref, day, "first.mp3")

        assert not emu.recordings[emu.first.id].marked and emu.patches[-1][1] == "soft_restore"
        assert await names_in(src, day) == {"first.mp3"}
        assert await names_in(src, ref) == set()
        user_day = await folder_of(src, emu, emu.first, owner=True)
        assert await names_in(src, user_day) == {"first.mp3"}


async def test_restore_needs_allow_delete_and_moves_nothing_else(ehttp):
    with soft_emu() as emu:
        emu.recordings[emu.first.id].marked = True
        emu.recordings[emu.first.id].public["soft_delete"] = {"deleted_at": 63900000000}
        src = emulated_source(emu, ehttp, allow_delete=False)
        assert "deleted" in await names_in(src, ("acct", emu.account))
        t = dt.datetime.fromtimestamp(emu.first.public["start"] - 62167219200, dt.timezone.utc)
        ref = ("day", emu.account, ("deleted",), t.year, t.month, t.day)
        gone = await child(src, ref, "first.mp3")
        with pytest.raises(SourceError) as info:
            await src.rename(gone, ref, ("day", emu.account, None, t.year, t.month, t.day), "first.mp3")
        assert info.value.errno == errno.EROFS
        day = await folder_of(src, emu, emu.second)
        with pytest.raises(SourceError) as info:   # a listed recording cannot be moved
            await src.rename(await child(src, day, "second.mp3"), day, ref, "second.mp3")
        assert info.value.errno == errno.EROFS
        assert emu.patches == []


async def test_without_patch_there_is_no_deleted_folder_and_rm_deletes(ehttp):
    with soft_emu() as emu:
        emu.patch_soft_delete = False
        src = emulated_source(emu, ehttp)
        assert "deleted" not in await names_in(src, ("acct", emu.account))
        day = await folder_of(src, emu, emu.first)
        await src.delete(await child(src, day, "first.mp3"))
        assert emu.deletes == [(emu.first.id, True)]
        assert emu.counts["method_not_allowed"] == 1     # asked once, remembered


# ---------------------------------------------------------------- ids across months

async def test_a_recording_saved_in_the_next_months_database(ehttp, caplog):
    """Its id names the month its call started; it is stored, and saved, after the
    month's end: listed, 404 by id. Reads say so; rm does not report success."""
    e = KazooEmulator(bucket_tokens=None, seed=5)
    month_end = dt.datetime.now(dt.timezone.utc).date().replace(day=1) - dt.timedelta(days=31)
    month_end = month_end.replace(day=1) + dt.timedelta(days=31)
    month_end = month_end.replace(day=1)                  # the 1st of a past month
    e.account = e.add_account("Months")
    e.demo_key = e.add_api_key(e.account)
    e.demo_accounts = [e.account]
    e.demo_since = (month_end - dt.timedelta(days=10)).isoformat()
    boundary = utc(month_end.year, month_end.month, 1)
    late = e.add_recording(e.account, boundary - 300, duration_ms=600_000, name="late.mp3")
    assert late.id[:6] != late.modb                      # the id's month is not where it lives
    with e:
        src = emulated_source(e, ehttp)
        day = await folder_of(src, e, late)
        entry = await child(src, day, "late.mp3")
        assert entry is not None                         # listed
        resp = httpx.get(src.client.media_url(e.account, late.id),
                         headers={**await src.auth.headers(), "Accept": "audio/mpeg"})
        assert resp.status_code == 404
        failure = src.content_error(entry, HttpError("media", 404))
        assert failure.errno == errno.EIO
        assert "next month's database" in str(failure) and late.id in str(failure)
        with pytest.raises(SourceError) as info:
            await src.delete(entry)
        assert info.value.errno == errno.EIO and "still listed" in str(info.value)
        assert e.deletes == []
        assert await names_in(src, day) == {"late.mp3"}


def test_emulator_patches_a_collection():
    with soft_emu() as emu:
        h = {"X-Auth-Token": token(emu)}
        url = f"{emu.url}/v2/accounts/{emu.account}/recordings/collection"
        body = {"data": {"recordings": [emu.first.id, emu.second.id, "202001-" + "0" * 32],
                         "soft_delete": {"deleted_by": {"account_id": emu.account},
                                         "deleted_at": "63755032655"}}}
        resp = httpx.patch(url, headers=h, json=body)
        assert resp.status_code == 200
        data = resp.json()["data"]
        assert set(data["success"]) == {emu.first.id, emu.second.id}
        assert data["success"][emu.first.id]["soft_delete"]["deleted_at"] == 63755032655
        assert list(data["error"]) == ["202001-" + "0" * 32]
        assert emu.first.marked and emu.second.marked
        restore = {"data": {"recordings": [emu.first.id], "soft_restore": {}}}
        assert httpx.patch(url, headers=h, json=restore).status_code == 200
        assert not emu.first.marked and emu.second.marked
