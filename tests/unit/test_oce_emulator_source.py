"""The oce source driven directly (no mount) against the real OCE emulator."""
from __future__ import annotations

import errno
import random
from pathlib import Path

import pytest
import trio

from recfs.config import parse_config
from recfs.content.bulk import BulkEngine
from recfs.content.cache import Cache
from recfs.emulators.base import PatternBlob
from recfs.emulators.oce import OceEmulator, source_table
from recfs.http import Http, HttpError, RetryPolicy, SizeChangedError
from recfs.sources import oce
from recfs.sources.base import SourceError


def make_cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "cache", max_size=1 << 30)


def cached_bytes(cache: Cache, key: str, size: int) -> bytes | None:
    if not cache.has_whole(key, size):
        return None
    return cache.entry(key, size).read(0, size)


# ------------------------------------------------------------------ fixtures

def populate(emu: OceEmulator) -> dict:
    ids = {}
    rec = ids["Recordings"] = emu.add_folder("self", "Recordings")
    ids["README.txt"] = emu.add_file("self", "README.txt", b"hello\n", mime="text/plain")
    day = ids["day"] = emu.add_folder(rec, "2024-05-01")
    for k, size in enumerate((1, 1000, 65536, 300_001, 2_500_000, 0)):
        ids[f"call{k}"] = emu.add_file(day, f"call-{k}.wav", PatternBlob(100 + k, size),
                                       modified=1714550400 + 60 * k)
    esc = ids["esc"] = emu.add_folder(day, "Escalations")
    # a namesake of a file in the parent folder, with other content and size
    emu.add_file(esc, "call-1.wav", PatternBlob(7, 1234))
    emu.add_file(esc, "esc-2.wav", PatternBlob(8, 4321))
    big = ids["big"] = emu.add_folder(rec, "big folder")
    for k in range(350):
        emu.add_file(big, f"r{k:04d}.wav", PatternBlob(1000 + k, 100 + 37 * k))
    uni = emu.add_folder(rec, "Ünïcode été")
    ids["unicode_file"] = emu.add_file(uni, "appel à 10h — ñ.wav", PatternBlob(9, 5000))
    return ids


@pytest.fixture
def emu():
    e = OceEmulator(job_polls=3, token_lifetime=3600)
    e.ids = populate(e)
    with e:
        yield e


def build_source(emu: OceEmulator, **extra) -> oce.OceSource:
    table = source_table(emu, "oce", page_size=100, job_poll_interval=0.01, **extra)
    cfg = parse_config({"cache": {"dir": "/tmp/unused"}, "sources": [table]})
    http = Http(retry=RetryPolicy(base_delay=0.01, max_delay=0.05, budget=10))
    return oce.Source("oce", cfg.sources[0].options, http)


@pytest.fixture
async def source(emu):
    src = build_source(emu)
    yield src
    await src.aclose()
    await src.http.aclose()


@pytest.fixture
def cache(tmp_path):
    c = make_cache(tmp_path)
    yield c
    c.close()


@pytest.fixture
async def engine(source, cache):
    """The one bulk engine, driven by the source's bulk capability (as the reader does)."""
    e = BulkEngine(source, source.http, cache)
    yield e
    await e.aclose()


async def walk(src, ref=None, prefix=""):
    """path -> Entry for the whole tree."""
    out = {}
    listing = await src.list_dir(src.root_ref() if ref is None else ref)
    for e in listing.entries:
        path = f"{prefix}{e.name}"
        out[path] = e
        if e.is_dir:
            out.update(await walk(src, e.ref, path + "/"))
    return out


async def read_range(src, entry, start: int, end: int, sink) -> None:
    """Bytes [start, end) of `entry` per object, as the reader gets them: through the
    source's target, a failed GET reported as the source describes it."""
    try:
        await src.http.get_range(src.target(entry), start, end, sink, total=entry.size)
    except HttpError as exc:
        raise src.content_error(entry, exc) from None


async def read_all(src, entry) -> bytes:
    buf = bytearray(entry.size)

    def sink(pos, data):
        buf[pos:pos + len(data)] = data
    await read_range(src, entry, 0, entry.size, sink)
    return bytes(buf)


# ------------------------------------------------------------------ listing

async def test_tree_sizes_mtimes_and_pages(emu, source):
    await source.start()
    tree = await walk(source)
    expected = {emu.path_of(n.id): n for n in emu.nodes.values() if n.id != "self"}
    assert set(tree) == set(expected)
    for path, node in expected.items():
        e = tree[path]
        assert e.id == node.id
        assert e.is_dir == (node.type == "folder")
        assert e.mtime == int(node.modified)
        if not e.is_dir:
            assert e.size == node.blob.size
            assert e.xattrs["oce.id"] == node.id
            assert e.xattrs["oce.version"] == "1"
            assert e.xattrs["oce.mimeType"] == "audio/wav" or path == "README.txt"
    # 350 items at 100 a page: 4 requests for the big folder, 1 for each of the 5 others
    assert emu.count("items") == 4 + 5


async def test_server_returning_less_than_the_limit_is_followed(emu, source):
    emu.max_limit = 30
    listing = await source.list_dir(emu.ids["big"])
    assert [e.name for e in listing.entries] == [f"r{k:04d}.wav" for k in range(350)]
    assert emu.count("items") == 12          # ceil(350 / 30)


async def test_version_changes_with_a_new_file_version(emu, source):
    before = {e.id: e.version for e in (await source.list_dir(emu.ids["day"])).entries}
    emu.new_version(emu.ids["call1"], b"new content")
    after = {e.id: e for e in (await source.list_dir(emu.ids["day"])).entries}
    assert after[emu.ids["call1"]].version != before[emu.ids["call1"]]
    assert after[emu.ids["call1"]].size == len(b"new content")
    assert await read_all(source, after[emu.ids["call1"]]) == b"new content"


# ------------------------------------------------------------------ content

async def test_every_file_reads_byte_exact(emu, source):
    tree = await walk(source)
    for path, e in tree.items():
        if not e.is_dir:
            assert await read_all(source, e) == emu.nodes[e.id].blob.all_bytes(), path
    assert emu.count("download_create") == 0


async def test_random_offset_ranges(emu, source):
    listing = await source.list_dir(emu.ids["day"])
    big = next(e for e in listing.entries if e.name == "call-4.wav")
    blob = emu.nodes[big.id].blob
    rng = random.Random(4)
    for _ in range(25):
        start = rng.randrange(big.size)
        end = min(big.size, start + rng.randrange(1, 200_000))
        got = bytearray()
        await read_range(source, big, start, end, lambda pos, data: got.extend(data))
        assert bytes(got) == blob.read(start, end - start)


async def test_old_version_stays_readable_after_an_update(emu, source):
    entry = next(e for e in (await source.list_dir(emu.ids["day"])).entries if e.name == "call-2.wav")
    old = emu.nodes[entry.id].blob.all_bytes()
    emu.new_version(entry.id, b"x" * 10)
    # the read is pinned to the listed version, so the bytes match the cache key
    assert await read_all(source, entry) == old


async def test_range_past_the_end_is_a_size_change(emu, source):
    entry = next(e for e in (await source.list_dir(emu.ids["day"])).entries if e.name == "call-1.wav")
    entry.size = 5000                        # the listing claims more than the server has
    with pytest.raises(SizeChangedError):
        await read_range(source, entry, 2000, 3000, lambda pos, data: None)
    assert emu.log[-1][2] == 416


# ------------------------------------------------------------------ auth

async def test_token_refreshed_after_expiry_on_401(emu, source):
    await source.list_dir("self")
    assert emu.tokens_issued == 1
    emu.advance(4000)                        # the server now rejects the cached token
    listing = await source.list_dir(emu.ids["day"])
    assert emu.tokens_issued == 2
    entry = next(e for e in listing.entries if e.name == "call-2.wav")
    emu.advance(4000)                        # and again, this time under a ranged read
    assert await read_all(source, entry) == emu.nodes[entry.id].blob.all_bytes()
    assert emu.tokens_issued == 3


async def test_basic_auth(emu):
    src = build_source(emu, basic=True)
    try:
        await src.start()
        listing = await src.list_dir("self")
        assert {e.name for e in listing.entries} == {"Recordings", "README.txt"}
        assert emu.tokens_issued == 0
        emu.basic_enabled = False            # like a cloud instance: Basic is refused
        with pytest.raises(SourceError) as info:
            await src.list_dir("self")
        assert info.value.errno == errno.EACCES
    finally:
        await src.http.aclose()


async def test_wrong_scope_is_a_clear_error(emu):
    table_scope = "https://other:443/urn:opc:cec:all"
    src = build_source(emu, scope=table_scope)
    try:
        with pytest.raises(SourceError) as info:
            await src.start()
        assert info.value.errno == errno.EACCES
        assert "invalid_scope" in str(info.value) or "scope" in str(info.value)
        assert emu.client_secret not in str(info.value)
    finally:
        await src.http.aclose()


# ------------------------------------------------------------------ errors

async def test_forbidden_and_missing(emu, source):
    listing = await source.list_dir(emu.ids["day"])
    entry = next(e for e in listing.entries if e.name == "call-1.wav")
    emu.forbidden.add(emu.ids["esc"])
    with pytest.raises(SourceError) as info:
        await source.list_dir(emu.ids["esc"])
    assert info.value.errno == errno.EACCES
    assert "errorCode -20" in str(info.value)
    emu.forbidden.add(entry.id)
    with pytest.raises(SourceError) as info:
        await read_range(source, entry, 0, 10, lambda pos, data: None)
    assert info.value.errno == errno.EACCES
    emu.forbidden.discard(entry.id)
    emu.remove(entry.id)
    with pytest.raises(SourceError) as info:
        await read_range(source, entry, 0, 10, lambda pos, data: None)
    assert info.value.errno == errno.ENOENT
    assert info.value.stale
    assert "errorCode -16" in str(info.value) and "does not exist" in str(info.value)
    with pytest.raises(SourceError) as info:
        await source.list_dir("FNOSUCHFOLDER")
    assert info.value.errno == errno.ENOENT


# ------------------------------------------------------------------ bulk jobs

async def day_entries(source, emu):
    return (await source.list_dir(emu.ids["day"])).entries


@pytest.mark.parametrize("layout", ["flat", "nested"])
async def test_folder_job_for_a_folder_with_subfolders(emu, source, cache, engine, layout):
    emu.zip_layout = layout
    entries = await day_entries(source, emu)
    assert await engine.prefetch(entries) == 0          # every file delivered
    assert emu.count("download_create") == 1
    job = emu.job_history[-1]
    files = [e for e in entries if not e.is_dir]
    # neither the subfolder nor the empty file is asked for
    assert sorted(job.ids) == sorted(e.id for e in files if e.size)
    assert emu.count("download_status") == emu.job_polls
    assert emu.count("download_delete") == 1 and emu.jobs == {}
    assert emu.count("data") == 0
    for e in files:
        assert cached_bytes(cache, source.cache_key(e), e.size) == \
            emu.nodes[e.id].blob.all_bytes(), e.name
    assert list(Path(cache.staging_dir).iterdir()) == []
    # already cached: a second prefetch starts no job
    assert await engine.prefetch(entries) == 0
    assert emu.count("download_create") == 1


async def test_folder_job_over_hundreds_of_files(emu, source, cache, engine):
    entries = (await source.list_dir(emu.ids["big"])).entries
    assert await engine.prefetch(entries) == 0
    assert emu.count("download_create") == 1
    for e in entries:
        assert cached_bytes(cache, source.cache_key(e), e.size) == emu.nodes[e.id].blob.all_bytes()


async def test_unicode_names_in_the_zip(emu, source, cache, engine):
    tree = await walk(source)
    folder = tree["Recordings/Ünïcode été"]
    entries = (await source.list_dir(folder.ref)).entries
    assert await engine.prefetch(entries) == 0
    e = entries[0]
    assert cached_bytes(cache, source.cache_key(e), e.size) == emu.nodes[e.id].blob.all_bytes()


@pytest.mark.parametrize("fate", ["FAILED", "BLOCKED", "ABORTED"])
async def test_a_job_that_does_not_succeed_leaves_the_files_to_direct_reads(
        emu, source, cache, engine, caplog, fate):
    emu.job_fates.append(fate)
    entries = await day_entries(source, emu)
    files = [e for e in entries if not e.is_dir and e.size]
    with caplog.at_level("WARNING", logger="recfs.bulk"):
        assert await engine.prefetch(entries) == len(files)     # none delivered
    assert f"ended {fate}" in caplog.text
    assert emu.count("download_package") == 0
    assert emu.count("download_delete") == 1
    for e in files:
        assert not cache.has_whole(source.cache_key(e), e.size)
    # the files still read directly
    e = next(e for e in entries if e.name == "call-3.wav")
    assert await read_all(source, e) == emu.nodes[e.id].blob.all_bytes()


async def test_a_job_leaving_items_out(emu, source, cache, engine):
    entries = await day_entries(source, emu)
    left_out = next(e for e in entries if e.name == "call-2.wav")
    emu.unavailable.add(left_out.id)
    assert await engine.prefetch(entries) == 1          # the one the job left out
    for e in entries:
        if e.is_dir:
            continue
        held = cache.has_whole(source.cache_key(e), e.size)
        assert held == (e is not left_out), e.name
    assert emu.job_history[-1].missing == [left_out.id]
    emu.unavailable.clear()
    assert await read_all(source, left_out) == emu.nodes[left_out.id].blob.all_bytes()


@pytest.mark.parametrize("drift", ["strings", "native"])
async def test_job_survives_type_drift_a_reset_and_a_401_on_the_package(emu, source, cache, engine, drift):
    emu.drift = drift
    entries = await day_entries(source, emu)
    emu.faults.add(kind="status", route="download_package", status=401)
    emu.faults.add(kind="reset", route="download_package", after_bytes=5000)
    assert await engine.prefetch(entries) == 0
    assert emu.faults.fired["status"] == 1 and emu.faults.fired["reset"] == 1
    assert emu.tokens_issued == 2                        # the 401 fetched a new token
    assert emu.count("download_package") == 3            # 401, reset mid-body, resumed
    for e in entries:
        if not e.is_dir:
            assert cached_bytes(cache, source.cache_key(e), e.size) == \
                emu.nodes[e.id].blob.all_bytes()


async def test_a_read_waits_only_for_a_running_job(emu, source, cache, engine):
    emu.job_polls = 6
    entries = await day_entries(source, emu)
    files = [e for e in entries if not e.is_dir and e.size]
    other = next(e for e in (await source.list_dir(emu.ids["esc"])).entries)
    results = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.prefetch, entries)
        while emu.count("download_create") == 0:
            await trio.sleep(0.005)
        before = sum(emu.counts.values())
        # a lone read (no copy under way) of a file in no job: read directly, no request
        assert await engine.fetch(other, [], False) is False
        assert sum(emu.counts.values()) == before

        async def whole(e):
            results[e.name] = await engine.fetch(e, files, False)
        for e in files:
            nursery.start_soon(whole, e)
    assert results == {e.name: True for e in files}
    assert emu.count("download_create") == 1
    # the job is over: its files come from the cache, and a lone read starts no job
    assert await engine.fetch(files[0], files, False) is True
    assert await engine.fetch(other, [], False) is False
    assert emu.count("download_create") == 1


async def test_a_job_outlives_a_cancelled_waiter_and_is_deleted_when_the_engine_closes(
        emu, source, engine):
    emu.job_polls = 10_000
    entries = await day_entries(source, emu)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.prefetch, entries)
        while emu.count("download_status") < 2:
            await trio.sleep(0.005)
        nursery.cancel_scope.cancel()        # the one waiting for the job goes away
    # the job goes on (it still fills the cache for the next reader) ...
    polls = emu.count("download_status")
    while emu.count("download_status") == polls:
        await trio.sleep(0.005)
    assert emu.count("download_create") == 1 and emu.count("download_delete") == 0
    # ... until the engine stops, which deletes it on the service
    await engine.aclose()
    assert emu.count("download_delete") == 1
    assert emu.job_history[-1].progress == "ABORTED"


async def test_aclose_deletes_running_jobs(emu, source, engine):
    emu.job_polls = 10_000
    entries = await day_entries(source, emu)
    files = [e for e in entries if not e.is_dir and e.size]
    left = []

    async def prefetch():
        left.append(await engine.prefetch(entries))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(prefetch)
        while emu.count("download_status") < 2:
            await trio.sleep(0.005)
        await engine.aclose()
    assert emu.count("download_delete") == 1
    assert emu.job_history[-1].progress == "ABORTED"
    assert left == [len(files)]              # nothing delivered: the files are read directly


async def test_ids_outside_the_folder_are_refused_by_the_emulator(emu, source, engine):
    entries = await day_entries(source, emu)
    other = (await source.list_dir(emu.ids["esc"])).entries[0]
    # the source never sends a file of another folder in a folder's job: each folder
    # gets its own
    assert await engine.prefetch(entries + [other]) == 0
    assert sorted(job.folder_id for job in emu.job_history) == sorted([emu.ids["day"], emu.ids["esc"]])
    for job in emu.job_history:
        assert (other.id in job.ids) == (job.folder_id == emu.ids["esc"])
    # and the emulator answers such a request as the service does
    resp = await source.http.request(
        "POST", f"{source.api}/folders/{emu.ids['day']}/_download", auth=source.auth,
        json={"idList": f"{entries[0].id},{other.id}"}, expect=None, idempotent=False)
    assert resp.status_code == 400
    assert resp.json()["errorCode"] == "-96"


async def test_prefetch_through_the_control_layer_then_reads_cost_nothing(emu, tmp_path):
    """`recfs prefetch` as the mount runs it (Control -> the bulk engine, then the
    reader for what is left), with the real cache, minus the kernel."""
    from recfs.core import Core
    cache = make_cache(tmp_path)
    src = build_source(emu)
    try:
        async with trio.open_nursery() as nursery:
            core = Core([src], cache, src.http, nursery)
            control = core.control
            node = await core.resolve("oce/Recordings/2024-05-01")
            await control.prefetch("oce/Recordings/2024-05-01", node)
            job = control.prefetches["oce/Recordings/2024-05-01"]
            assert job["failed"] == 0 and job["done_files"] == 8
            # one job for the folder, one for its subfolder; no ranged GETs
            assert emu.count("download_create") == 2 and emu.count("data") == 0
            for child in await core.children(node):
                if child.is_dir:
                    continue
                h = await core.open(child)
                try:
                    data = await core.read(child, h, 0, child.entry.size)
                finally:
                    core.release(h)
                assert data == emu.nodes[child.entry.id].blob.all_bytes()
            assert emu.count("data") == 0
            await core.aclose()
            nursery.cancel_scope.cancel()
    finally:
        await src.http.aclose()
        cache.close()
