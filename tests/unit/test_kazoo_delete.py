"""Kazoo deletes (issue 9): the DELETE request against scripted answers (respx), then
the source against the real emulator: both views forget a deleted recording without
asking the service again, and the emulator follows apis.md §4.6."""
from __future__ import annotations

import base64
import datetime as dt
import errno
import json

import httpx
import pytest
import respx

from recfs.config import parse_config
from recfs.emulators.kazoo import KazooEmulator, source_table
from recfs.http import Http, RetryPolicy
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
    """api_auth issuing t1, t2, …; DELETE answered by `answers` in turn (then 200)."""

    def __init__(self, mock: respx.MockRouter, answers: list[int] = ()):
        self.tokens: list[str] = []
        self.deletes: list[httpx.Request] = []
        self.answers = list(answers)
        mock.put(f"{API}/api_auth").mock(side_effect=self.auth)
        mock.delete(path__regex=r"^/v2/accounts/\w+/recordings/[^/]+$").mock(side_effect=self.delete)

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
    fake = FakeKazoo(respx_mock)
    await scripted_source(http).delete(recording_entry())
    [req] = fake.deletes
    assert req.method == "DELETE"
    assert req.url.path == f"/v2/accounts/{ACCOUNT}/recordings/{RID}"
    assert "should_soft_delete" not in req.url.params      # the API's default: soft
    assert req.headers["x-auth-token"] == fake.tokens[0]
    assert req.content == b""


@respx.mock(assert_all_called=False)
async def test_already_gone_is_success(respx_mock, http):
    fake = FakeKazoo(respx_mock, answers=[404])
    await scripted_source(http).delete(recording_entry())
    assert len(fake.deletes) == 1


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


async def test_a_day_and_an_owner_left_empty_vanish_without_listing_again(emu, ehttp):
    src = emulated_source(emu, ehttp)
    day = await folder_of(src, emu, emu.lonely)
    user_day = await folder_of(src, emu, emu.lonely, owner=True)
    assert day is not None and user_day is not None
    entry = await child(src, day, "lonely.mp3")
    listings = emu.counts["list"]

    await src.delete(entry)

    # the month has ended, so its window is never asked again: the index itself forgot
    assert await folder_of(src, emu, emu.lonely) is None
    users = (await child(src, ("acct", emu.account), "users")).ref
    assert await names_in(src, users) == {emu.other}
    assert emu.counts["list"] == listings


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
