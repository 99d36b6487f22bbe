"""The read path without a mount: the real cache and reader over an in-memory source
(tests/memory_source.py), counting what reaches the "service"; and, for the two
content transports (Http.threaded_content), the real Alvaria source against its
emulator."""
from __future__ import annotations

import errno
import random

import pytest
import trio
import trio.testing

from recfs.config import parse_config
from recfs.content.cache import CHUNK, Cache
from recfs.content.reader import WHOLE_PROBE, Folder, Reader, ReadError
from recfs.emulators.alvaria import AlvariaEmulator, source_table
from recfs.emulators.base import Fault, PatternBlob
from recfs.http import Http, HttpError, RetryPolicy
from recfs.sources.alvaria import AlvariaSource
from recfs.sources.base import SourceError
from tests.memory_source import MemorySource

MiB = 1 << 20
BIG = 24 * MiB + 777
SMALL = 300_000


def pattern(seed: int, size: int) -> bytes:
    return PatternBlob(seed, size).all_bytes()


@pytest.fixture
async def http():
    http = Http(retry=RetryPolicy(attempts=4, base_delay=0.01))
    yield http
    await http.aclose()


@pytest.fixture
def mem():
    src = MemorySource()
    src.add("big.wav", pattern(1, BIG))
    src.add("small.wav", pattern(2, SMALL))
    return src


def new_reader(tmp_path, nursery, http, **tuning) -> Reader:
    return Reader(Cache(tmp_path / "cache", max_size=1 << 34), nursery, http, **tuning)


async def entries(source, folder: str = "") -> dict:
    return {e.name: e for e in (await source.list_dir(folder)).entries}


def chunks_of(ranges) -> list[int]:
    """The cache chunks the ranges (start, end) cover, one per range and chunk."""
    return [i for s, e in ranges for i in range(s // CHUNK, (e - 1) // CHUNK + 1)]


async def read_all(reader: Reader, h, size: int, step: int = 128 * 1024) -> bytes:
    out = bytearray()
    while len(out) < size:
        data = await reader.read(h, len(out), step)
        assert data
        out += data
    return bytes(out)


# ------------------------------------------------------------------ reads

async def test_sequential_read_fetches_every_byte_once_in_windows(mem, tmp_path, nursery, http):
    reader = new_reader(tmp_path, nursery, http)
    entry = (await entries(mem))["big.wav"]
    mem.reset_counts()
    h = reader.open(mem, entry)
    assert await read_all(reader, h, BIG) == mem.files["big.wav"].data
    reader.release(h)
    assert mem.bytes_read == BIG                            # nothing fetched twice
    assert sorted(chunks_of(mem.reads_of("big.wav"))) == list(range((BIG + CHUNK - 1) // CHUNK))
    assert mem.counts["read"] <= 12                         # windows of MiBs, not 128 KiB reads
    # between the head and tail chunks fetched at open, the requests are windows that
    # ramp up to max_request (the two that fill up to the head and the tail may be short)
    windows = [e - s for s, e in sorted(mem.reads_of("big.wav"))[2:-2]]
    assert min(windows) >= MiB and max(windows) == reader.max_request


async def test_concurrent_readers_of_one_range_share_one_fetch(mem, tmp_path, nursery, http):
    reader = new_reader(tmp_path, nursery, http)
    entry = (await entries(mem))["big.wav"]
    mem.reset_counts()
    gate = mem.hold("big.wav")
    handles = [reader.open(mem, entry) for _ in range(8)]
    results = {}

    async def read(i, h):
        results[i] = await reader.read(h, 10 * MiB, 64 * 1024)

    async with trio.open_nursery() as n:
        for i, h in enumerate(handles):
            n.start_soon(read, i, h)
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
    expected = mem.files["big.wav"].data[10 * MiB:10 * MiB + 64 * 1024]
    assert all(r == expected for r in results.values()) and len(results) == 8
    # wait for the head and tail prefetches by reading inside them
    await reader.read(handles[0], 0, 10)
    await reader.read(handles[0], entry.size - 10, 10)
    # head + tail prefetched at open (once, shared by the 8 handles) + one chunk for the range
    assert mem.counts["read"] == 3
    assert mem.bytes_read == CHUNK + (CHUNK + 777) + CHUNK


async def test_random_reads_fetch_only_the_chunks_they_touch(mem, tmp_path, nursery, http):
    reader = new_reader(tmp_path, nursery, http)
    entry = (await entries(mem))["big.wav"]
    data = mem.files["big.wav"].data
    mem.reset_counts()
    h = reader.open(mem, entry)
    rng = random.Random(7)
    offsets = [rng.randrange(2 * MiB, entry.size - 2 * MiB) for _ in range(5)]
    for off in offsets:
        assert await reader.read(h, off, 4096) == data[off:off + 4096]
    touched = {off // CHUNK for off in offsets} | {(off + 4095) // CHUNK for off in offsets}
    last = (BIG - 1) // CHUNK
    fetched = chunks_of(mem.reads_of("big.wav"))
    assert sorted(fetched) == sorted(touched | {0, last - 1, last})    # + head and two tail chunks


async def test_a_small_file_is_fetched_whole_by_its_first_read(mem, tmp_path, nursery, http):
    reader = new_reader(tmp_path, nursery, http)
    entry = (await entries(mem))["small.wav"]
    data = mem.files["small.wav"].data
    mem.reset_counts()
    h = reader.open(mem, entry)
    assert mem.counts["read"] == 0                          # no head or tail prefetch
    assert await reader.read(h, 0, 4096) == data[:4096]
    assert mem.reads == [("small.wav", 0, SMALL)]
    assert await reader.read(h, 200_000, 100_000) == data[200_000:300_000]
    assert mem.counts["read"] == 1


async def test_cached_ranges_survive_a_restart_with_zero_requests(mem, tmp_path, nursery, http):
    reader = new_reader(tmp_path, nursery, http)
    entry = (await entries(mem))["big.wav"]
    h = reader.open(mem, entry)
    first = await reader.read(h, 5 * MiB, 2 * MiB)
    reader.release(h)
    reader.cache.close()
    again = new_reader(tmp_path, nursery, http)
    mem.reset_counts()
    h = again.open(mem, entry)
    assert await again.read(h, 5 * MiB, 2 * MiB) == first
    assert mem.counts["read"] == 0


@pytest.mark.parametrize("failure,code", [(HttpError("HTTP 503 from the service", 503), errno.EIO),
                                          (SourceError("not yours", errno.EACCES), errno.EACCES)])
async def test_a_failed_fetch_reports_its_errno_and_leaves_nothing_cached(
        mem, tmp_path, nursery, http, failure, code):
    reader = new_reader(tmp_path, nursery, http)
    entry = (await entries(mem))["small.wav"]
    mem.fail("small.wav", failure, after=1000)
    h = reader.open(mem, entry)
    with pytest.raises(ReadError) as err:
        await reader.read(h, 0, 4096)
    assert err.value.errno == code and not err.value.stale
    assert reader.cache.entry(mem.cache_key(entry), entry.size).present == 0
    mem.fail("small.wav", None)
    mem.reset_counts()
    assert await reader.read(h, 0, entry.size) == mem.files["small.wav"].data
    assert mem.counts["read"] == 1


async def test_an_object_that_changed_size_is_a_stale_read(mem, tmp_path, nursery, http):
    reader = new_reader(tmp_path, nursery, http)
    entry = (await entries(mem))["small.wav"]
    mem.change("small.wav", b"shorter now")
    h = reader.open(mem, entry)
    with pytest.raises(ReadError) as err:
        await reader.read(h, 0, 4096)
    assert err.value.stale
    assert reader.cache.entry(mem.cache_key(entry), entry.size).present == 0


# ------------------------------------------------------------------ a copy: siblings fetched ahead

def folder_of(names: list[str], files: dict, index: int) -> Folder:
    return Folder("calls", [files[n] for n in names], index)


async def test_a_copy_fetches_the_next_small_files_whole_in_the_background(tmp_path, nursery, http):
    mem = MemorySource()
    names = [f"c{i:02d}.wav" for i in range(20)]
    for i, n in enumerate(names):
        # c03 is too big to be fetched ahead; c05 has no exact size yet
        mem.add(f"calls/{n}", pattern(i, (5 * MiB) if i == 3 else 10_000 + i), sized=i != 5)
    reader = new_reader(tmp_path, nursery, http, sibling_prefetch=8)
    files = await entries(mem, "calls/")
    mem.reset_counts()
    h = reader.open(mem, files["c00.wav"], folder_of(names, files, 0), copy=True)
    await trio.testing.wait_all_tasks_blocked()
    # the next 8 files, less the big one and the unsized one, each whole in one request
    ahead = [n for n in names[1:9] if n not in ("c03.wav", "c05.wav")]
    assert sorted(mem.reads) == sorted((f"calls/{n}", 0, files[n].size) for n in ahead)
    assert reader.stats.prefetched_files == len(ahead)
    reader.release(h)
    mem.reset_counts()
    for n in ahead:                                         # the copy finds them in the cache
        h = reader.open(mem, files[n], folder_of(names, files, names.index(n)))
        assert await reader.read(h, 0, files[n].size) == mem.files[f"calls/{n}"].data
        reader.release(h)
    assert mem.counts["read"] == 0


async def test_an_open_that_is_no_copy_fetches_nothing_ahead(tmp_path, nursery, http):
    mem = MemorySource()
    names = [f"c{i:02d}.wav" for i in range(10)]
    for i, n in enumerate(names):
        mem.add(f"calls/{n}", pattern(i, 10_000 + i))
    reader = new_reader(tmp_path, nursery, http)
    files = await entries(mem, "calls/")
    mem.reset_counts()
    h = reader.open(mem, files["c04.wav"], folder_of(names, files, 4), copy=False)
    await reader.read(h, 0, 10)
    await trio.testing.wait_all_tasks_blocked()
    assert [p for p, _, _ in mem.reads] == ["calls/c04.wav"]


# ------------------------------------------------------------------ sizes a listing lacks

async def test_sizes_are_learnt_by_one_byte_probes_outside_a_copy(tmp_path, nursery, http):
    mem = MemorySource()
    for i in range(6):
        mem.add(f"f{i}.wav", pattern(i, 1000 + i), sized=i % 2 == 0 and i > 0)
    reader = new_reader(tmp_path, nursery, http)
    listed = list((await entries(mem)).values())
    unsized = [e.name for e in listed if e.size is None]
    mem.reset_counts()
    await reader.learn_sizes(mem, listed, whole=False)
    assert [e.size for e in listed] == [1000 + i for i in range(6)]
    assert sorted(mem.reads) == sorted((n, 0, 1) for n in unsized)   # one byte each, sized ones alone
    assert mem.bytes_read == len(unsized)


async def test_metadata_sizes_come_first(tmp_path, nursery, http):
    mem = MemorySource(metadata_sizes=True)
    for i in range(4):
        mem.add(f"f{i}.wav", pattern(i, 1000 + i), sized=False)
    reader = new_reader(tmp_path, nursery, http)
    listed = list((await entries(mem)).values())
    mem.reset_counts()
    await reader.learn_sizes(mem, listed, whole=True)
    assert [e.size for e in listed] == [1000 + i for i in range(4)]
    assert mem.counts["sizes"] == 4 and mem.counts["read"] == 0


async def test_during_a_copy_small_files_come_whole_with_their_size(tmp_path, nursery, http):
    mem = MemorySource()
    mem.add("small.wav", pattern(1, SMALL), sized=False)
    mem.add("big.wav", pattern(2, WHOLE_PROBE + 5000), sized=False)
    reader = new_reader(tmp_path, nursery, http)
    listed = await entries(mem)
    mem.reset_counts()
    await reader.learn_sizes(mem, list(listed.values()), whole=True)
    small, big = listed["small.wav"], listed["big.wav"]
    assert (small.size, big.size) == (SMALL, WHOLE_PROBE + 5000)
    # the small file was asked for whole and is in the cache; the big one gave one byte
    assert sorted(mem.reads) == [("big.wav", 0, 1), ("small.wav", 0, WHOLE_PROBE)]
    assert reader.cache.has_whole(mem.cache_key(small), SMALL)
    assert not reader.cache.has_whole(mem.cache_key(big), big.size)
    mem.reset_counts()
    h = reader.open(mem, small)
    assert await reader.read(h, 0, SMALL) == mem.files["small.wav"].data
    assert mem.counts["read"] == 0


async def test_a_whole_probe_of_a_file_bigger_than_its_hint_keeps_its_whole_chunks(tmp_path, nursery, http):
    mem = MemorySource()
    size = WHOLE_PROBE + CHUNK + 123
    mem.add("liar.wav", pattern(3, size), sized=False)
    reader = new_reader(tmp_path, nursery, http)
    entry = (await entries(mem))["liar.wav"]
    entry.size_hint = 1000                  # the listing's estimate was far too small
    mem.reset_counts()
    await reader.learn_sizes(mem, [entry], whole=True)
    assert entry.size == size and mem.reads == [("liar.wav", 0, WHOLE_PROBE)]
    ce = reader.cache.entry(mem.cache_key(entry), size)
    assert ce.present == WHOLE_PROBE and not ce.complete
    mem.reset_counts()
    h = reader.open(mem, entry)
    assert await reader.read(h, 0, WHOLE_PROBE) == mem.files["liar.wav"].data[:WHOLE_PROBE]
    assert await reader.read(h, WHOLE_PROBE, size) == mem.files["liar.wav"].data[WHOLE_PROBE:]
    # what the probe kept is not fetched again: one request (the tail prefetched at open)
    # for the rest
    assert mem.reads == [("liar.wav", WHOLE_PROBE, size)]


async def test_a_size_that_cannot_be_learnt_stays_unknown(tmp_path, nursery, http):
    mem = MemorySource()
    mem.add("ok.wav", b"x" * 100, sized=False)
    mem.add("bad.wav", b"y" * 100, sized=False)
    mem.fail("bad.wav", HttpError("HTTP 500", 500))
    reader = new_reader(tmp_path, nursery, http)
    listed = await entries(mem)
    await reader.learn_sizes(mem, list(listed.values()), whole=True)
    assert listed["ok.wav"].size == 100 and listed["bad.wav"].size is None
    assert not any(reader.cache.staging_dir.iterdir())     # the failed probe left nothing staged


# ------------------------------------------------------------------ over HTTP, both content transports

@pytest.fixture
def emu():
    emu = AlvariaEmulator()
    emu.put("big.wav", PatternBlob(1, BIG))
    emu.put("small.wav", PatternBlob(2, SMALL))
    for i in range(5):
        emu.put(f"calls/c{i}.wav", PatternBlob(10 + i, 1000 + i))
    with emu:
        yield emu


@pytest.fixture(params=[False, True], ids=["httpx", "threaded"])
async def alvaria(request, emu, tmp_path, nursery):
    """(source, reader) over the Alvaria emulator with either content transport."""
    http = Http(retry=RetryPolicy(attempts=4, base_delay=0.01), threaded_content=request.param)
    options = parse_config({"sources": [source_table(emu, "alv")]}).sources[0].options
    source = AlvariaSource("alv", options, http)
    yield source, new_reader(tmp_path, nursery, http)
    await http.aclose()


async def test_http_sequential_read_fetches_every_byte_once_in_few_requests(emu, alvaria, monkeypatch):
    # a link of any speed counts as fast: on a loaded machine loopback may fall below
    # SLOW_LINK, and a slow link's requests are smaller (more of them) by design
    monkeypatch.setattr("recfs.content.reader.SLOW_LINK", 0)
    source, reader = alvaria
    entry = (await entries(source))["big.wav"]
    await reader.learn_sizes(source, [entry], whole=False)
    assert entry.size == BIG
    emu.reset_stats()
    h = reader.open(source, entry)
    assert await read_all(reader, h, BIG) == emu.objects["big.wav"].blob.all_bytes()
    reader.release(h)
    assert emu.bytes_sent == BIG                            # nothing fetched twice
    assert emu.count("s3") <= 12


async def test_http_size_probes_go_together_and_small_files_come_whole(emu, alvaria):
    source, reader = alvaria
    listed = list((await entries(source, "calls/")).values())
    emu.reset_stats()
    await reader.learn_sizes(source, listed, whole=True)
    assert [e.size for e in listed] == [1000 + i for i in range(5)]
    assert emu.count("s3") == 5 and emu.count("signedDownloadUrl") == 0   # URLs came with the listing
    assert reader.http.batched_requests == (5 if reader.http.ranges is not None else 0)
    emu.reset_stats()
    for e in listed:
        h = reader.open(source, e)
        assert await reader.read(h, 0, e.size) == emu.objects[f"calls/{e.name}"].blob.all_bytes()
        reader.release(h)
    assert emu.count("s3") == 0                             # the probes brought them whole


async def test_http_a_failed_fetch_is_eio_and_leaves_nothing_cached(emu, alvaria):
    source, reader = alvaria
    entry = (await entries(source))["small.wav"]
    await reader.learn_sizes(source, [entry], whole=False)
    emu.faults.add(Fault("truncate", route="s3", times=-1, after_bytes=1000))
    h = reader.open(source, entry)
    with pytest.raises(ReadError) as err:
        await reader.read(h, 0, 4096)
    assert err.value.errno == errno.EIO
    assert reader.cache.entry(source.cache_key(entry), entry.size).present == 0
    emu.faults.clear()
    assert await reader.read(h, 0, entry.size) == emu.objects["small.wav"].blob.all_bytes()
