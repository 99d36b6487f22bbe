"""The Kazoo source driven directly (no mount) against the real Kazoo emulator, and
the emulator's own fidelity to the API rules the source relies on. Sizes are learnt as
the tree has them learnt (`Reader.learn_sizes`), bytes read as the reader reads them
(`Http.get_range` of the source's target)."""
from __future__ import annotations

import collections
import datetime as dt
import errno
import logging

import httpx
import pytest
import trio

from recfs.config import parse_config
from recfs.content.cache import Cache
from recfs.content.reader import WHOLE_PROBE, Reader, ReadError
from recfs.emulators.kazoo import KazooEmulator, demo, from_gregorian, source_table
from recfs.http import Http, HttpError, RetryPolicy
from recfs.sources import kazoo
from recfs.sources.base import Entry, SourceError

SEED = 7


@pytest.fixture
def emu():
    with demo(SEED, bucket_tokens=None) as e:
        yield e


@pytest.fixture
async def http():
    client = Http(retry=RetryPolicy(attempts=15, base_delay=0.05, max_delay=0.4, budget=30))
    yield client
    await client.aclose()


@pytest.fixture
def cache(tmp_path):
    c = Cache(tmp_path / "cache", max_size=1 << 30)
    yield c
    c.close()


def make_source(emu: KazooEmulator, http: Http, **overrides):
    table = source_table(emu, "kz")
    table.update(overrides)
    table = {k: v for k, v in table.items() if v is not None}
    options = parse_config({"sources": [table]}).sources[0].options
    return kazoo.Source("kz", options, http)


def expected_name(rec) -> str:
    ext = ".wav" if rec.attachment_type == "audio/wav" else ".mp3"
    name = rec.public["name"]
    return name if name.endswith(ext) else name + ext


def expected_paths(emu: KazooEmulator) -> tuple[dict[str, object], dict[str, object]]:
    """(account view, user view): path -> emulator Recording, for what must be shown."""
    accounts, users = {}, {}
    for rec in emu.recordings.values():
        if rec.blob is None or rec.deleted:
            continue
        day = dt.datetime.fromtimestamp(from_gregorian(rec.public["start"]), dt.timezone.utc)
        tail = f"{day:%Y/%m/%d}/{expected_name(rec)}"
        accounts[f"{rec.account_id}/{tail}"] = rec
        if rec.public.get("owner_id"):
            users[f"{rec.account_id}/users/{rec.public['owner_id']}/{tail}"] = rec
    return accounts, users


async def walk(src, reader: Reader, ref=None, prefix="") -> dict[str, Entry]:
    """Every file below `ref`, by path; sizes learnt folder by folder as the tree has
    them learnt: a size the cache remembers for the file's key is taken from there
    (tree.py), the others come from `learn_sizes` and are remembered."""
    listing = await src.list_dir(ref if ref is not None else src.root_ref())
    files = [e for e in listing.entries if not e.is_dir]
    for e in files:
        e.size = reader.cache.known_size(src.cache_key(e))
    if files:
        await reader.learn_sizes(src, files, whole=False)
        reader.cache.remember_sizes([(src.cache_key(e), e.size) for e in files if e.size is not None])
    out = {f"{prefix}{e.name}": e for e in files}
    for e in listing.entries:
        if e.is_dir:
            out.update(await walk(src, reader, e.ref, f"{prefix}{e.name}/"))
    return out


async def read_range(src, entry: Entry, start: int, end: int, sink) -> None:
    await src.http.get_range(src.target(entry), start, end, sink, total=entry.size,
                             name=f"{src.name}: {entry.name}")


async def read_all(src, entry: Entry, step: int = 20000) -> bytes:
    buf = bytearray(entry.size)
    for start in range(0, entry.size, step):
        end = min(entry.size, start + step)

        def sink(offset, data):
            buf[offset:offset + len(data)] = data
        await read_range(src, entry, start, end, sink)
    return bytes(buf)


# ---------------------------------------------------------------- the source

async def test_tree_of_two_accounts_and_the_user_view(emu, http, cache, nursery):
    src = make_source(emu, http)
    await src.start()
    files = await walk(src, Reader(cache, nursery, http))
    want_accounts, want_users = expected_paths(emu)
    assert sorted({p.split("/")[0] for p in files}) == sorted(emu.demo_accounts)
    assert {p for p in files if "/users/" not in p} == set(want_accounts)
    assert {p for p in files if "/users/" in p} == set(want_users)
    for path, entry in files.items():
        rec = (want_accounts | want_users)[path]
        assert entry.size == rec.blob.size
        assert entry.mtime == from_gregorian(rec.public["start"])
        assert entry.xattrs["kazoo.call_id"] == rec.public["call_id"]
        assert entry.xattrs["kazoo.duration_ms"] == str(rec.public["duration_ms"])
        assert entry.xattrs["kazoo.direction"] == rec.public["direction"]
        assert entry.xattrs["kazoo.caller_id_number"] == rec.public["caller_id_number"]
        assert entry.xattrs.get("kazoo.owner_id") == rec.public.get("owner_id")
    # the quirks: a WAV is named .wav, an extension-less name gets one, the call that
    # began before midnight sits in its start day, media-less and deleted docs are hidden
    names = {p.rsplit("/", 1)[1] for p in files}
    assert "Sales call with Zoë.mp3" in names
    assert any(n.startswith("voicemail ") and n.endswith(".wav") for n in names)
    hidden = [r for r in emu.recordings.values() if r.blob is None or r.deleted]
    assert len(hidden) == 4 and not any(r.id in {e.id for e in files.values()} for r in hidden)
    # no pass over the history: a window wider than a day folder's (a day and the
    # hours around it) is never walked past its first page (a probe's one document, or
    # a month's survey page)
    for q in emu.listings:
        span = int(q["created_to"]) - int(q["created_from"])
        assert span <= 86400 + 3600 + 6 * 3600 or "start_key" not in q, q
    # users/ lists the users API's users (none of these is departed) without asking
    # each user's own listing: their days come from the account's day listings
    assert emu.count("users") == 2
    # every file's size was probed once, however many views show it: both views give a
    # recording the same cache key, under which its size is remembered
    assert emu.count("media") == len({e.id for e in files.values()})
    keys: dict[str, set[str]] = {}
    for entry in files.values():
        keys.setdefault(entry.id, set()).add(src.cache_key(entry))
    assert all(len(k) == 1 for k in keys.values())
    assert any("/users/" in p for p in files)


async def test_bytes_and_exact_sizes(emu, http, cache, nursery):
    src = make_source(emu, http)
    files = await walk(src, Reader(cache, nursery, http))
    for path, entry in files.items():
        rec = emu.recordings[entry.id]
        assert await read_all(src, entry) == rec.blob.all_bytes(), path
    entry = next(iter(files.values()))
    got = bytearray()
    await read_range(src, entry, 100, 150, lambda off, data: got.extend(data))
    assert bytes(got) == emu.recordings[entry.id].blob.read(100, 50)


async def test_token_expiry_mid_crawl_resumes_with_the_same_cursor(emu, http):
    src = make_source(emu, http, page_size=2)
    await src.start()
    emu.listings.clear()
    expired = []

    def expire_after_second_page(count):
        if count == 2 and not expired:
            expired.append(count)
            emu.advance(emu.token_lifetime + 1)
    emu.on_listing = expire_after_second_page
    account = emu.demo_accounts[0]
    busiest = collections.Counter(
        dt.datetime.fromtimestamp(from_gregorian(r.public["start"]), dt.timezone.utc).date()
        for r in emu.recordings.values() if r.account_id == account and not r.deleted)
    day, count = busiest.most_common(1)[0]
    assert count >= 5                        # three pages at least
    ref = ("day", account, None, day.year, day.month, day.day)
    first_pass = await src.list_dir(ref)
    refused = [i for i, q in enumerate(emu.listings) if q["status"] == 401]
    assert len(refused) == 1 and emu.count("api_auth") == 2
    before, again = emu.listings[refused[0]], emu.listings[refused[0] + 1]
    assert again["status"] == 200
    assert {k: v for k, v in before.items() if k != "status"} == \
        {k: v for k, v in again.items() if k != "status"}
    assert again.get("start_key")            # page 2 of a window, resumed at the same key
    # the result is that of a crawl that never expired
    fresh = make_source(emu, http, page_size=2)
    assert [e.name for e in first_pass.entries] == \
        [e.name for e in (await fresh.list_dir(ref)).entries]


async def test_token_expiry_mid_read_reauthenticates(emu, http, cache, nursery):
    src = make_source(emu, http)
    files = await walk(src, Reader(cache, nursery, http))
    entry = max(files.values(), key=lambda e: e.size)
    blob = emu.recordings[entry.id].blob
    got = bytearray(entry.size)

    def sink(offset, data):
        got[offset:offset + len(data)] = data
    await read_range(src, entry, 0, 1000, sink)
    auths = emu.count("api_auth")
    emu.advance(emu.token_lifetime + 1)
    await read_range(src, entry, 1000, entry.size, sink)
    assert bytes(got) == blob.all_bytes()
    assert emu.count("unauthorized") == 1 and emu.count("api_auth") == auths + 1


async def test_a_429_storm_is_survived(cache, nursery):
    # a small bucket, emptied before the first request: every burst overdraws it
    with demo(SEED, bucket_tokens=5, fill_rate=100, api_auth_tokens=5) as emu:
        client = Http(retry=RetryPolicy(attempts=12, base_delay=0.05, max_delay=0.5, budget=60))
        try:
            src = make_source(emu, client)
            emu.drain_bucket()
            files = await walk(src, Reader(cache, nursery, client))
            want_accounts, want_users = expected_paths(emu)
            assert set(files) == set(want_accounts) | set(want_users)
            results = {}
            readers = trio.CapacityLimiter(8)      # as the reader bounds requests in flight

            async def read(path, entry):
                async with readers:
                    results[path] = await read_all(src, entry, step=1 << 20)
            async with trio.open_nursery() as nursery:
                for path, entry in files.items():
                    nursery.start_soon(read, path, entry)
            for path, entry in files.items():
                assert results[path] == emu.recordings[entry.id].blob.all_bytes()
            assert emu.count("throttled") > 0
            assert client.retries >= emu.count("throttled")
        finally:
            await client.aclose()


async def test_media_missing_after_listing_is_hidden_and_reads_fail_with_eio(emu, http, cache,
                                                                             nursery, caplog):
    src = make_source(emu, http)
    reader = Reader(cache, nursery, http)
    account = emu.demo_accounts[1]
    want, _ = expected_paths(emu)
    path = next(p for p in sorted(want) if p.startswith(account))
    y, m, d = (int(x) for x in path.split("/")[1:4])
    listing = await src.list_dir(("day", account, None, y, m, d))
    entry = next(e for e in listing.entries if e.id == want[path].id)
    emu.recordings[entry.id].blob = None
    caplog.set_level(logging.INFO, logger="recfs")
    await reader.learn_sizes(src, [entry], whole=False)
    assert entry.size is None
    assert any(entry.id in r.getMessage() and "no media" in r.getMessage() for r in caplog.records)
    # the media GET's 404 is the source's "no media" failure, with EIO
    with pytest.raises(HttpError) as http_err:
        await read_range(src, entry, 0, 10, lambda off, data: None)
    assert http_err.value.status == 404
    failure = src.content_error(entry, http_err.value)
    assert isinstance(failure, SourceError) and failure.errno == errno.EIO
    assert entry.id in str(failure) and "no media" in str(failure)
    # and a read through the reader fails with EIO and a log line naming the recording
    entry.size = 10
    caplog.clear()
    h = reader.open(src, entry)
    try:
        with pytest.raises(ReadError) as err:
            await reader.read(h, 0, 10)
    finally:
        reader.release(h)
    assert err.value.errno == errno.EIO
    assert any(r.levelno == logging.ERROR and entry.id in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("threaded", [False, True])
async def test_during_a_copy_short_recordings_come_whole_with_their_size(emu, cache, nursery,
                                                                         caplog, threaded):
    """During a copy a recording whose size hint (its duration at 128 kbit/s) is at most
    WHOLE_PROBE is asked for whole: its size and bytes come in one GET. Threaded (as
    mounted), the GETs go out together (Http.get_heads); without rangeget, one by one."""
    http = Http(retry=RetryPolicy(attempts=15, base_delay=0.05, max_delay=0.4, budget=30),
                threaded_content=threaded)
    src = make_source(emu, http)
    reader = Reader(cache, nursery, http)
    want, _ = expected_paths(emu)
    days = sorted({tuple(int(x) for x in p.split("/")[1:4]) + (p.split("/")[0],) for p in want})
    # every day folder's recordings, learnt together
    files = []
    for y, m, d, account in days:
        files += [e for e in (await src.list_dir(("day", account, None, y, m, d))).entries if not e.is_dir]
    small = [e for e in files if 0 < e.size_hint <= WHOLE_PROBE]
    assert len(small) >= 2 and len(small) < len(files)     # some too long to be asked whole
    assert all(emu.recordings[e.id].blob.size <= WHOLE_PROBE for e in files)
    gone = small[-1]
    emu.recordings[gone.id].blob = None          # detached after listing: 404 to both GETs
    caplog.set_level(logging.INFO, logger="recfs")
    emu.reset_stats()
    await reader.learn_sizes(src, files, whole=True)
    for entry in files:
        if entry is gone:
            continue
        blob = emu.recordings[entry.id].blob
        assert entry.size == blob.size
        # the short ones came whole; a longer one (by its hint) was probed for one byte,
        # so none of it is cached although it is small
        assert cache.has_whole(src.cache_key(entry), entry.size) == (entry in small)
        if entry in small:
            assert cache.entry(src.cache_key(entry), entry.size).read(0, entry.size) == blob.all_bytes()
    assert gone.size is None and not cache.has_whole(src.cache_key(gone), 1)
    assert any(gone.id in r.getMessage() and "no media" in r.getMessage() for r in caplog.records)
    # one GET per recording, and one more, on its own, for the one that failed (a
    # failure among GETs made together may have been a reset)
    assert emu.count("media") == len(files) + 1
    assert http.batched_requests == (len(files) if threaded else 0)
    assert list(cache.staging_dir.iterdir()) == []
    await http.aclose()


async def test_default_account_is_the_keys_own(emu, http):
    src = make_source(emu, http, accounts=None)
    await src.start()
    root = await src.list_dir(src.root_ref())
    assert [e.name for e in root.entries] == [emu.demo_accounts[0]]


async def test_an_account_the_key_cannot_see_fails_start_clearly(emu, http):
    reseller, sub = emu.demo_accounts
    emu.demo_key = emu.add_api_key(sub)
    src = make_source(emu, http)
    with pytest.raises(SourceError) as err:
        await src.start()
    assert reseller in str(err.value) and "403" in str(err.value)
    assert emu.demo_key not in str(err.value)


# ---------------------------------------------------------------- emulator fidelity

def auth(emu: KazooEmulator) -> dict[str, str]:
    r = httpx.put(f"{emu.url}/v2/api_auth", json={"data": {"api_key": emu.demo_key}})
    assert r.status_code == 201 and r.json()["data"]["account_id"] == emu.demo_accounts[0]
    return {"X-Auth-Token": r.json()["auth_token"]}


def test_emulator_listing_rules(emu):
    h = auth(emu)
    acct = emu.demo_accounts[0]
    url = f"{emu.url}/v2/accounts/{acct}/recordings"
    now = emu.now_gregorian()
    too_wide = httpx.get(url, headers=h, params={"created_from": now - 2_682_001, "created_to": now})
    assert too_wide.status_code == 400
    assert "date_range" in too_wide.json()["data"]["created_from"]
    assert too_wide.json()["error"] == "400" and too_wide.json()["status"] == "error"
    reversed_ = httpx.get(url, headers=h, params={"created_from": now, "created_to": now - 10})
    assert reversed_.status_code == 400
    # no window: only the last 31 days; pages are newest first and the last has no cursor
    params = {"page_size": 3}
    seen = []
    while True:
        body = httpx.get(url, headers=h, params=params).json()
        assert body["status"] == "success" and body["page_size"] == len(body["data"])
        seen += body["data"]
        if "next_start_key" not in body:
            break
        params["start_key"] = body["next_start_key"]
    created_order = [d["start"] for d in seen]
    assert created_order == sorted(created_order, reverse=True)
    assert all(d["start"] >= now - 2_682_000 - 86400 for d in seen)
    assert all("_read_only" in d and not any(k.startswith("pvt_") for k in d) for d in seen)
    junk = httpx.get(url, headers=h, params={"start_key": "not-a-key"}).json()
    assert junk["data"] == []
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"X-Auth-Token": "forged"}).json()["message"] == "invalid_credentials"


def test_emulator_media_rules(emu):
    h = auth(emu)
    wav = next(r for r in emu.recordings.values()
               if r.attachment_type == "audio/wav" and r.blob and not r.deleted)
    url = f"{emu.url}/v2/accounts/{wav.account_id}/recordings/{wav.id}"
    media = {**h, "Accept": "audio/mpeg"}
    r = httpx.get(url, headers={**media, "Range": "bytes=10-19"})
    assert r.status_code == 206 and r.headers["content-type"] == "audio/wav"
    assert r.headers["content-range"] == f"bytes 10-19/{wav.blob.size}"
    assert r.content == wav.blob.read(10, 10)
    assert r.headers["content-disposition"] == f"attachment; filename={wav.attachment_name}"
    # api_resource:get_range: 206 only for `bytes=S-E` with E < the file's length (or
    # an open `bytes=S-`); a range ending past the end, a suffix range, several ranges:
    # the whole file, as a 200, from byte 0
    size = wav.blob.size
    tail = httpx.get(url, headers={**media, "Range": f"bytes={size - 10}-{size - 1}"})
    assert tail.status_code == 206 and tail.content == wav.blob.read(size - 10, 10)
    open_ended = httpx.get(url, headers={**media, "Range": f"bytes={size - 10}-"})
    assert open_ended.status_code == 206 and open_ended.content == wav.blob.read(size - 10, 10)
    for rng in (f"bytes=0-{size - 1}", f"bytes=100-{size}", f"bytes=100-{size + 5}",
                "bytes=-100", "bytes=0-9,20-29"):
        whole = httpx.get(url, headers={**media, "Range": rng})
        assert whole.status_code == 200 and whole.content == wav.blob.all_bytes(), rng
        assert whole.headers["content-range"] == f"bytes 0-{size - 1}/{size}"
    # an open range starting past the end fails the handler's binary match
    assert httpx.get(url, headers={**media, "Range": f"bytes={size + 5}-"}).status_code == 500
    assert httpx.get(url, params={"accept": "audio/mpeg"}, headers=h).content == wav.blob.all_bytes()
    assert httpx.get(url, headers=h).json()["data"]["id"] == wav.id
    no_media = next(r for r in emu.recordings.values() if r.blob is None)
    r = httpx.get(f"{emu.url}/v2/accounts/{no_media.account_id}/recordings/{no_media.id}", headers=media)
    assert r.status_code == 404 and r.json()["message"] == "bad_identifier"
    deleted = httpx.delete(url, headers=h)
    assert deleted.status_code == 200
    assert httpx.get(url, headers=media).status_code == 404
    assert httpx.delete(url, headers=h).status_code == 404


def test_emulator_token_buckets_answer_429_without_retry_after():
    with KazooEmulator(bucket_tokens=3, fill_rate=0.001) as emu:
        acct = emu.add_account("A")
        url = f"{emu.url}/v2/accounts/{acct}/recordings"
        codes = [httpx.get(url) for _ in range(5)]
        assert [c.status_code for c in codes] == [401, 401, 401, 429, 429]
        assert codes[-1].json()["message"] == "too_many_requests"
        assert "retry-after" not in codes[-1].headers
        assert emu.count("throttled") == 2


def test_emulator_api_auth_costs_35_tokens_all_or_none():
    """cb_api_auth: each call takes crossbar.api_auth_tokens (35) with
    consume_tokens_until, which empties the bucket when it holds too few."""
    with KazooEmulator(bucket_tokens=100, fill_rate=0.001) as emu:
        acct = emu.add_account("A")
        key = "f" * 64
        auths = [httpx.put(f"{emu.url}/v2/api_auth", json={"data": {"api_key": key}}).status_code
                 for _ in range(3)]
        assert auths == [404, 404, 429]                 # 100 - 35 - 35 = 30 < 35
        # the failed third call emptied the bucket: even a one-token request waits
        assert httpx.get(f"{emu.url}/v2/accounts/{acct}/recordings").status_code == 429


def test_emulator_api_auth_refuses_unknown_keys_and_keys_of_another_length():
    with KazooEmulator(bucket_tokens=None) as emu:
        emu.add_api_key(emu.add_account("A"), "a" * 64)
        url = f"{emu.url}/v2/api_auth"
        unknown = httpx.put(url, json={"data": {"api_key": "b" * 64}})
        assert unknown.status_code == 404 and unknown.json()["message"] == "bad identifier"
        assert unknown.json()["data"] == ["b" * 64]          # Crossbar echoes the key
        for key in ("short", "c" * 65):
            wrong = httpx.put(url, json={"data": {"api_key": key}})
            assert wrong.status_code == 400, key
            assert wrong.json()["message"] == "validation error"
            assert "api_key" in wrong.json()["data"]
        assert httpx.put(url, json={"data": {"api_key": "a" * 64}}).status_code == 201


def test_emulator_token_expiry():
    with KazooEmulator(token_lifetime=60, bucket_tokens=None) as emu:
        acct = emu.add_account("A")
        key = emu.add_api_key(acct)
        token = httpx.put(f"{emu.url}/v2/api_auth", json={"data": {"api_key": key}}).json()["auth_token"]
        url = f"{emu.url}/v2/accounts/{acct}/recordings"
        assert httpx.get(url, headers={"X-Auth-Token": token}).status_code == 200
        emu.advance(61)
        assert httpx.get(url, headers={"X-Auth-Token": token}).status_code == 401
