"""R1 (reader.py) and I6 (cache.py) without a mount: the real Alvaria source against
its emulator, whose objects can be overwritten (a new ETag, S3's If-Match honoured).
What one handle hands out is all of one version of the object."""
from __future__ import annotations

import errno

import pytest

from recfs.config import parse_config, source_module
from recfs.content.cache import Cache
from recfs.content.reader import Reader, ReadError
from recfs.emulators.alvaria import AlvariaEmulator, source_table
from recfs.emulators.base import PatternBlob
from recfs.http import Http, RetryPolicy

MiB = 1 << 20
SIZE = 6 * MiB + 7
KEY = "calls/long.wav"


@pytest.fixture
def emu():
    with AlvariaEmulator() as e:
        e.put(KEY, PatternBlob(1, SIZE))
        yield e


@pytest.fixture
async def rig(emu, tmp_path, nursery):
    http = Http(retry=RetryPolicy(attempts=3, base_delay=0.01), threaded_content=True)
    cfg = parse_config({"sources": [source_table(emu, "alv")]}).sources[0]
    source = source_module("alvaria").Source("alv", cfg.options, http)
    reader = Reader(Cache(tmp_path / "cache", max_size=1 << 30), nursery, http, small_file=1 << 20)
    entry = next(e for e in (await source.list_dir("calls/")).entries if e.name == "long.wav")
    entry.size = SIZE
    yield source, reader, entry
    await http.aclose()


async def test_a_handle_that_handed_out_old_bytes_fails_rather_than_mixing(emu, rig):
    source, reader, entry = rig
    changed = []
    reader.on_changed = changed.append
    h = reader.open(source, entry, owner="the file")
    assert await reader.read(h, 0, MiB) == emu.objects[KEY].blob.read(0, MiB)
    emu.put(KEY, PatternBlob(2, SIZE))                   # same size, a new version
    with pytest.raises(ReadError) as failure:
        await reader.read(h, 5 * MiB, MiB)
    assert failure.value.errno == errno.EIO and failure.value.changed
    assert changed == ["the file"]                      # the front-end is told
    with pytest.raises(ReadError):                      # and the handle keeps failing
        await reader.read(h, 0, MiB)
    reader.release(h)
    h2 = reader.open(source, entry)                     # a new open reads the new version
    assert await reader.read(h2, 0, SIZE) == emu.objects[KEY].blob.all_bytes()
    reader.release(h2)


async def test_a_handle_that_handed_out_nothing_starts_over_on_the_new_version(emu, rig):
    source, reader, entry = rig
    h = reader.open(source, entry)
    assert await reader.read(h, 0, MiB) == emu.objects[KEY].blob.read(0, MiB)
    reader.release(h)
    emu.put(KEY, PatternBlob(3, SIZE))
    h2 = reader.open(source, entry)                     # cached: the old first MiB
    got = await reader.read(h2, 4 * MiB, MiB)           # meets the new version first
    assert got == emu.objects[KEY].blob.read(4 * MiB, MiB)
    assert await reader.read(h2, 0, MiB) == emu.objects[KEY].blob.read(0, MiB)   # not the old
    reader.release(h2)


async def test_a_handle_whose_front_end_kept_old_pages_does_not_start_over(emu, rig):
    """The kernel may hand out pages it kept from an earlier open: such a handle has
    handed out old bytes whatever it counted itself, so it fails instead."""
    source, reader, entry = rig
    h = reader.open(source, entry)
    await reader.read(h, 0, MiB)
    reader.release(h)
    emu.put(KEY, PatternBlob(4, SIZE))
    h2 = reader.open(source, entry)
    h2.pages_kept = True
    with pytest.raises(ReadError) as failure:
        await reader.read(h2, 4 * MiB, MiB)
    assert failure.value.changed
    reader.release(h2)


async def test_the_version_is_kept_with_the_cached_bytes_across_a_reopen_of_the_cache(emu, rig, tmp_path, nursery):
    source, reader, entry = rig
    h = reader.open(source, entry)
    await reader.read(h, 0, MiB)
    reader.release(h)
    reader.cache.flush()
    token = reader.cache.entry(source.cache_key(entry), SIZE).validator.token
    assert token.startswith('E"')
    reader.cache.close()
    again = Cache(tmp_path / "cache", max_size=1 << 30)
    assert again.entry(source.cache_key(entry), SIZE).validator.token == token
    again.close()
