"""The read path without a mount: the real Alvaria source against its emulator, the
real cache and reader, counting what reaches the server."""
from __future__ import annotations

import random

import pytest
import trio

from recfs.config import Secret
from recfs.content.cache import CHUNK, Cache
from recfs.content.reader import Reader, ReadError
from recfs.emulators.alvaria import AlvariaEmulator
from recfs.emulators.base import Fault, PatternBlob
from recfs.http import Http, RetryPolicy
from recfs.sources.alvaria import AlvariaSource
from recfs.sources.base import SourceContext

MiB = 1 << 20


@pytest.fixture
def emu():
    emu = AlvariaEmulator()
    emu.put("big.wav", PatternBlob(1, 24 * MiB + 777))
    emu.put("small.wav", PatternBlob(2, 300_000))
    with emu:
        yield emu


@pytest.fixture(autouse=True, params=[False, True], ids=["httpx", "threaded"])
def transport(request):
    """Every test here runs over both content transports (Http.threaded_content)."""
    Rig.threaded = request.param


class Rig:
    threaded = False

    def __init__(self, emu, tmp_path, nursery, **reader_kw):
        self.emu = emu
        self.http = Http(retry=RetryPolicy(attempts=4, base_delay=0.01), threaded_content=self.threaded)
        self.cache = Cache(tmp_path / "cache", max_size=1 << 34)
        opts = {"api_url": emu.api_url(), "token_url": emu.token_url,
                "client_id": Secret(emu.client_id, "t"), "client_secret": Secret(emu.client_secret, "t"),
                "api_key": Secret(emu.api_key, "t"), "root": "", "page_size": 1000,
                "size_concurrency": 8, "listing_ttl": None}
        self.source = AlvariaSource("alv", opts, SourceContext(http=self.http, cache=self.cache))
        self.reader = Reader(self.cache, nursery, **reader_kw)

    async def entry(self, name):
        listing = await self.source.list_dir("")
        entry = next(e for e in listing.entries if e.name == name)
        await self.source.resolve_sizes([entry])
        return entry

    def expected(self, name):
        return self.emu.objects[name].blob


async def test_sequential_read_fetches_every_byte_once_in_few_requests(emu, tmp_path, nursery):
    rig = Rig(emu, tmp_path, nursery)
    entry = await rig.entry("big.wav")
    emu.reset_stats()
    h = rig.reader.open(rig.source, entry)
    out = bytearray()
    pos = 0
    while pos < entry.size:
        data = await rig.reader.read(h, pos, 128 * 1024)
        out += data
        pos += len(data)
    rig.reader.release(h)
    assert bytes(out) == rig.expected("big.wav").all_bytes()
    assert emu.bytes_sent == entry.size                 # nothing fetched twice
    assert emu.count("s3") <= 12                        # windows of MiBs, not 128 KiB reads


async def test_concurrent_readers_of_one_range_share_one_fetch(emu, tmp_path, nursery):
    rig = Rig(emu, tmp_path, nursery)
    entry = await rig.entry("big.wav")
    emu.reset_stats()
    handles = [rig.reader.open(rig.source, entry) for _ in range(8)]
    results = {}

    async def read(i, h):
        results[i] = await rig.reader.read(h, 10 * MiB, 64 * 1024)

    async with trio.open_nursery() as n:
        for i, h in enumerate(handles):
            n.start_soon(read, i, h)
    expected = rig.expected("big.wav").read(10 * MiB, 64 * 1024)
    assert all(r == expected for r in results.values())
    # wait for the head and tail prefetches by reading inside them
    await rig.reader.read(handles[0], 0, 10)
    await rig.reader.read(handles[0], entry.size - 10, 10)
    # head + tail prefetched at open (once, shared) + one chunk for the range
    assert emu.count("s3") == 3
    assert emu.bytes_sent == CHUNK + (CHUNK + 777) + CHUNK


async def test_random_reads_fetch_only_the_chunks_they_touch(emu, tmp_path, nursery):
    rig = Rig(emu, tmp_path, nursery)
    entry = await rig.entry("big.wav")
    blob = rig.expected("big.wav")
    emu.reset_stats()
    h = rig.reader.open(rig.source, entry)
    rng = random.Random(7)
    offsets = [rng.randrange(2 * MiB, entry.size - 2 * MiB) for _ in range(5)]
    for off in offsets:
        assert await rig.reader.read(h, off, 4096) == blob.read(off, 4096)
    touched = {off // CHUNK for off in offsets} | {(off + 4095) // CHUNK for off in offsets}
    assert emu.bytes_sent <= (len(touched) + 3) * CHUNK     # + head and two tail chunks


async def test_a_small_file_is_fetched_whole_by_its_first_read(emu, tmp_path, nursery):
    rig = Rig(emu, tmp_path, nursery)
    entry = await rig.entry("small.wav")
    emu.reset_stats()
    h = rig.reader.open(rig.source, entry)
    assert await rig.reader.read(h, 0, 4096) == rig.expected("small.wav").read(0, 4096)
    assert emu.count("s3") == 1 and emu.bytes_sent == entry.size
    assert await rig.reader.read(h, 200_000, 100_000) == rig.expected("small.wav").read(200_000, 100_000)
    assert emu.count("s3") == 1


async def test_cached_ranges_survive_a_restart_with_zero_requests(emu, tmp_path, nursery):
    rig = Rig(emu, tmp_path, nursery)
    entry = await rig.entry("big.wav")
    h = rig.reader.open(rig.source, entry)
    first = await rig.reader.read(h, 5 * MiB, 2 * MiB)
    rig.reader.release(h)
    rig.cache.close()
    rig2 = Rig(emu, tmp_path, nursery)
    emu.reset_stats()
    h = rig2.reader.open(rig2.source, entry)
    assert await rig2.reader.read(h, 5 * MiB, 2 * MiB) == first
    assert emu.count("s3") == 0


async def test_a_failed_fetch_is_eio_and_leaves_nothing_cached(emu, tmp_path, nursery):
    rig = Rig(emu, tmp_path, nursery)
    entry = await rig.entry("small.wav")
    emu.faults.add(Fault("truncate", route="s3", times=-1, after_bytes=1000))
    h = rig.reader.open(rig.source, entry)
    with pytest.raises(ReadError):
        await rig.reader.read(h, 0, 4096)
    assert rig.cache.entry(rig.source.cache_key(entry), entry.size).present == 0
    emu.faults.clear()
    assert await rig.reader.read(h, 0, entry.size) == rig.expected("small.wav").all_bytes()
