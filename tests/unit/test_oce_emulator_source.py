"""The oce source driven directly (no mount) against the real OCE emulator."""
from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest
import trio

from recfs.config import parse_config
from recfs.emulators.base import PatternBlob
from recfs.emulators.oce import OceEmulator, source_table
from recfs.http import Http, RetryPolicy, SizeChangedError
from recfs.sources import oce
from recfs.sources.base import SourceContext, SourceError

try:
    from recfs.content.cache import Cache
except ImportError:         # the cache is not there yet: a stand-in with the same three calls
    Cache = None


class StandInCache:
    def __init__(self, root: Path):
        self.root = root
        self.staging_dir = root / "staging"
        self.staging_dir.mkdir(parents=True)
        self.files: dict[str, Path] = {}

    def store_file(self, key: str, size: int, path: Path) -> None:
        assert os.path.getsize(path) == size
        dest = self.root / f"stored-{len(self.files)}"
        os.replace(path, dest)
        self.files[key] = dest

    def has_whole(self, key: str, size: int) -> bool:
        if size == 0:
            return True
        return key in self.files and os.path.getsize(self.files[key]) == size


def make_cache(tmp_path: Path):
    if Cache is not None:
        return Cache(tmp_path / "cache", max_size=1 << 30)
    return StandInCache(tmp_path / "cache")


def cached_bytes(cache, key: str, size: int) -> bytes | None:
    if not cache.has_whole(key, size):
        return None
    if isinstance(cache, StandInCache):
        return cache.files[key].read_bytes()
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


def build_source(emu: OceEmulator, cache=None, **extra) -> oce.OceSource:
    table = source_table(emu, "oce", page_size=100, job_poll_interval=0.01, **extra)
    cfg = parse_config({"cache": {"dir": "/tmp/unused"}, "sources": [table]})
    http = Http(retry=RetryPolicy(base_delay=0.01, max_delay=0.05, budget=10))
    src = oce.create("oce", cfg.sources[0].options, SourceContext(http=http, cache=cache))
    return src


@pytest.fixture
async def source(emu, tmp_path):
    src = build_source(emu, make_cache(tmp_path))
    yield src
    await src.aclose()
    await src.ctx.http.aclose()


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


async def read_all(src, entry) -> bytes:
    buf = bytearray(entry.size)

    def sink(pos, data):
        buf[pos:pos + len(data)] = data
    await src.fetch_range(entry, 0, entry.size, sink)
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
        await source.fetch_range(big, start, end, lambda pos, data: got.extend(data))
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
        await source.fetch_range(entry, 2000, 3000, lambda pos, data: None)
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


async def test_basic_auth(emu, tmp_path):
    src = build_source(emu, make_cache(tmp_path), basic=True)
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
        await src.ctx.http.aclose()


async def test_wrong_scope_is_a_clear_error(emu, tmp_path):
    table_scope = "https://other:443/urn:opc:cec:all"
    src = build_source(emu, None, scope=table_scope)
    try:
        with pytest.raises(SourceError) as info:
            await src.start()
        assert info.value.errno == errno.EACCES
        assert "invalid_scope" in str(info.value) or "scope" in str(info.value)
        assert emu.client_secret not in str(info.value)
    finally:
        await src.ctx.http.aclose()


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
        await source.fetch_range(entry, 0, 10, lambda pos, data: None)
    assert info.value.errno == errno.EACCES
    emu.forbidden.discard(entry.id)
    emu.remove(entry.id)
    with pytest.raises(SourceError) as info:
        await source.fetch_range(entry, 0, 10, lambda pos, data: None)
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
async def test_folder_job_for_a_folder_with_subfolders(emu, source, layout):
    emu.zip_layout = layout
    entries = await day_entries(source, emu)
    assert await source.prefetch_dir(emu.ids["day"], entries)
    assert emu.count("download_create") == 1
    job = emu.job_history[-1]
    files = [e for e in entries if not e.is_dir]
    # neither the subfolder nor the empty file is asked for
    assert sorted(job.ids) == sorted(e.id for e in files if e.size)
    assert emu.count("download_status") == emu.job_polls
    assert emu.count("download_delete") == 1 and emu.jobs == {}
    assert emu.count("data") == 0
    cache = source.ctx.cache
    for e in files:
        assert cached_bytes(cache, source.cache_key(e), e.size) == \
            emu.nodes[e.id].blob.all_bytes(), e.name
    assert list(Path(cache.staging_dir).iterdir()) == []
    # already cached: a second prefetch starts no job
    assert await source.prefetch_dir(emu.ids["day"], entries)
    assert emu.count("download_create") == 1


async def test_folder_job_over_hundreds_of_files(emu, source):
    entries = (await source.list_dir(emu.ids["big"])).entries
    assert await source.prefetch_dir(emu.ids["big"], entries)
    assert emu.count("download_create") == 1
    cache = source.ctx.cache
    for e in entries:
        assert cached_bytes(cache, source.cache_key(e), e.size) == emu.nodes[e.id].blob.all_bytes()


async def test_unicode_names_in_the_zip(emu, source):
    tree = await walk(source)
    folder = tree["Recordings/Ünïcode été"]
    entries = (await source.list_dir(folder.ref)).entries
    assert await source.prefetch_dir(folder.ref, entries)
    e = entries[0]
    assert cached_bytes(source.ctx.cache, source.cache_key(e), e.size) == \
        emu.nodes[e.id].blob.all_bytes()


@pytest.mark.parametrize("fate", ["FAILED", "BLOCKED", "ABORTED"])
async def test_a_job_that_does_not_succeed(emu, source, fate):
    emu.job_fates.append(fate)
    entries = await day_entries(source, emu)
    with pytest.raises(SourceError) as info:
        await source.prefetch_dir(emu.ids["day"], entries)
    assert fate in str(info.value)
    assert emu.count("download_package") == 0
    assert emu.count("download_delete") == 1
    for e in entries:
        if not e.is_dir and e.size:
            assert not source.ctx.cache.has_whole(source.cache_key(e), e.size)
    # the files still read directly
    e = next(e for e in entries if e.name == "call-3.wav")
    assert await read_all(source, e) == emu.nodes[e.id].blob.all_bytes()


async def test_a_job_leaving_items_out(emu, source):
    entries = await day_entries(source, emu)
    left_out = next(e for e in entries if e.name == "call-2.wav")
    emu.unavailable.add(left_out.id)
    assert await source.prefetch_dir(emu.ids["day"], entries)
    cache = source.ctx.cache
    for e in entries:
        if e.is_dir:
            continue
        held = cache.has_whole(source.cache_key(e), e.size)
        assert held == (e is not left_out), e.name
    assert emu.job_history[-1].missing == [left_out.id]
    emu.unavailable.clear()
    assert await read_all(source, left_out) == emu.nodes[left_out.id].blob.all_bytes()


@pytest.mark.parametrize("drift", ["strings", "native"])
async def test_job_survives_type_drift_a_reset_and_a_401_on_the_package(emu, source, drift):
    emu.drift = drift
    entries = await day_entries(source, emu)
    emu.faults.add(kind="status", route="download_package", status=401)
    emu.faults.add(kind="reset", route="download_package", after_bytes=5000)
    assert await source.prefetch_dir(emu.ids["day"], entries)
    assert emu.faults.fired["status"] == 1 and emu.faults.fired["reset"] == 1
    assert emu.tokens_issued == 2                        # the 401 fetched a new token
    assert emu.count("download_package") == 3            # 401, reset mid-body, resumed
    for e in entries:
        if not e.is_dir:
            assert cached_bytes(source.ctx.cache, source.cache_key(e), e.size) == \
                emu.nodes[e.id].blob.all_bytes()


async def test_fetch_whole_waits_only_for_a_running_job(emu, source):
    emu.job_polls = 6
    entries = await day_entries(source, emu)
    files = [e for e in entries if not e.is_dir and e.size]
    other = next(e for e in (await source.list_dir(emu.ids["esc"])).entries)
    results = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(source.prefetch_dir, emu.ids["day"], entries)
        while emu.count("download_create") == 0:
            await trio.sleep(0.005)
        before = sum(emu.counts.values())
        assert await source.fetch_whole(other, []) is False          # not in any job
        assert sum(emu.counts.values()) == before

        async def whole(e):
            results[e.name] = await source.fetch_whole(e, files)
        for e in files:
            nursery.start_soon(whole, e)
    assert results == {e.name: True for e in files}
    assert emu.count("download_create") == 1
    assert await source.fetch_whole(files[0], files) is False         # the job is over


async def test_cancelled_prefetch_deletes_its_job(emu, source):
    emu.job_polls = 10_000
    entries = await day_entries(source, emu)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(source.prefetch_dir, emu.ids["day"], entries)
        while emu.count("download_status") < 2:
            await trio.sleep(0.005)
        nursery.cancel_scope.cancel()        # the one waiting for the job goes away
    assert emu.count("download_create") == 1
    assert emu.count("download_delete") == 1
    assert emu.job_history[-1].progress == "ABORTED"


async def test_aclose_deletes_running_jobs(emu, source):
    emu.job_polls = 10_000
    entries = await day_entries(source, emu)
    failure = []

    async def prefetch():
        try:
            await source.prefetch_dir(emu.ids["day"], entries)
        except SourceError as exc:
            failure.append(exc)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(prefetch)
        while emu.count("download_status") < 2:
            await trio.sleep(0.005)
        await source.aclose()
    assert emu.count("download_delete") == 1
    assert emu.job_history[-1].progress == "ABORTED"
    assert failure and "stopped" in str(failure[0])


async def test_ids_outside_the_folder_are_refused_by_the_emulator(emu, source):
    entries = await day_entries(source, emu)
    other = (await source.list_dir(emu.ids["esc"])).entries[0]
    # the source never sends a file of another folder in a folder's job
    await source.prefetch_dir(emu.ids["day"], entries + [other])
    assert other.id not in emu.job_history[-1].ids
    # and the emulator answers such a request as the service does
    resp = await source.ctx.http.request(
        "POST", f"{source.api}/folders/{emu.ids['day']}/_download", auth=source.auth,
        json={"idList": f"{entries[0].id},{other.id}"}, expect=None, idempotent=False)
    assert resp.status_code == 400
    assert resp.json()["errorCode"] == "-96"


async def test_prefetch_through_the_control_layer_then_reads_cost_nothing(emu, tmp_path):
    """`recfs prefetch` as the mount runs it (Control -> prefetch_dir -> Reader ->
    fetch_whole), with the real cache, minus the kernel."""
    from recfs.content.reader import Reader
    from recfs.control import Control
    from recfs.tree import Tree
    if Cache is None:
        pytest.skip("needs recfs.content.cache")
    cache = Cache(tmp_path / "cache", max_size=1 << 30)
    src = build_source(emu, cache)
    try:
        async with trio.open_nursery() as nursery:
            reader = Reader(cache, nursery)
            tree = Tree([src], cache)
            control = Control(tree, reader, cache, src.ctx.http, [src])
            node = await control.resolve("oce/Recordings/2024-05-01")
            await control.prefetch("oce/Recordings/2024-05-01", node)
            job = control.prefetches["oce/Recordings/2024-05-01"]
            assert job["failed"] == 0 and job["done_files"] == 8
            # one job for the folder, one for its subfolder; no ranged GETs
            assert emu.count("download_create") == 2 and emu.count("data") == 0
            for child in await tree.children(node):
                if child.is_dir:
                    continue
                h = reader.open(src, child.entry)
                try:
                    data = await reader.read(h, 0, child.entry.size)
                finally:
                    reader.release(h)
                assert data == emu.nodes[child.entry.id].blob.all_bytes()
            assert emu.count("data") == 0
            nursery.cancel_scope.cancel()
    finally:
        await src.aclose()
        await src.ctx.http.aclose()
        cache.close()
