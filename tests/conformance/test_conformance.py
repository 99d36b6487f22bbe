"""The conformance suite: every provider, against its emulator over real sockets,
through the core (namespace, reader, cache) without a mount, answers the same
questions the same way: listings, exact sizes, ranged bytes, metadata, errors and
faults. Provider-specific behaviour (layouts, API quirks, bulk jobs, deletes) has
its own tests beside its client."""
from __future__ import annotations

import errno
import random

import pytest
import trio

from recfs.config import parse_config, source_module
from recfs.content.cache import Cache
from recfs.core import Core
from recfs.http import Http, RetryPolicy
from recfs.sources.base import SourceError
from tests.conformance.providers import FILES, HARNESSES, vanish


@pytest.fixture(params=sorted(HARNESSES))
def harness(request):
    h = HARNESSES[request.param]()
    yield h
    h.emu.stop()


def make_source(table: dict, http: Http):
    cfg = parse_config({"sources": [table]}).sources[0]
    return source_module(cfg.kind).Source(cfg.name, cfg.options, http)


@pytest.fixture
async def core(harness, tmp_path, nursery):
    http = Http(retry=RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05),
                threaded_content=True)
    source = make_source(harness.table, http)
    await source.start()
    c = Core([source], Cache(tmp_path / "cache", max_size=1 << 30), http, nursery)
    yield c
    await c.aclose()
    await http.aclose()


async def folder(core, harness):
    node = core.tree.root.children["src"]
    for part in harness.folder:
        node = await core.lookup(node, part)
        assert node is not None and node.is_dir, part
    return node


async def files(core, harness) -> dict:
    return {n.name: n for n in await core.children(await folder(core, harness)) if not n.is_dir}


async def read(core, node, offset: int = 0, length: int | None = None) -> bytes:
    handle = await core.open(node)
    try:
        return await core.read(node, handle, offset, node.size if length is None else length)
    finally:
        core.release(handle)


async def test_the_data_set_is_listed_with_names_kinds_and_times(core, harness):
    from tests.conformance.providers import DAY
    found = await files(core, harness)
    assert set(FILES) <= set(found)
    for name in FILES:
        assert abs(found[name].entry.mtime - DAY.timestamp()) < 86400, name


async def test_every_size_is_exact_and_a_lone_stat_costs_its_own_file_at_most(core, harness):
    found = await files(core, harness)
    harness.emu.reset_stats()
    node = found["d-odd.mp3"]
    await core.stat(node)
    assert node.size == FILES["d-odd.mp3"]
    assert harness.emu.count(harness.content_route) <= 1
    for name, size in FILES.items():
        await core.stat(found[name])
        assert found[name].size_known and found[name].size == size, name


async def test_every_byte_read_equals_the_source(core, harness):
    found = await files(core, harness)
    rng = random.Random(5)
    for name in FILES:
        node = await core.stat(found[name])
        expected = harness.expected(name)
        assert await read(core, node) == expected, name
        for _ in range(3):
            offset = rng.randrange(len(expected))
            length = rng.randrange(1, 400_000)
            assert await read(core, node, offset, length) == expected[offset:offset + length], name


async def test_a_second_read_comes_from_the_cache(core, harness):
    node = await core.stat((await files(core, harness))["e-long.mp3"])
    assert await read(core, node) == harness.expected("e-long.mp3")
    harness.emu.reset_stats()
    assert await read(core, node) == harness.expected("e-long.mp3")
    assert harness.emu.count(harness.content_route) == 0


async def test_every_file_carries_metadata(core, harness):
    for name, node in (await files(core, harness)).items():
        if name in FILES:
            assert core.xattrs(node).get(harness.metadata_key), name


async def test_a_file_gone_from_the_service_fails_its_read_never_with_wrong_bytes(core, harness):
    node = await core.stat((await files(core, harness))["d-odd.mp3"])
    vanish(harness, "d-odd.mp3")
    with pytest.raises(Exception) as failure:
        await read(core, node)
    assert getattr(failure.value, "errno", None) in (errno.EIO, errno.ENOENT), failure.value
    assert not core.cache.has_whole(node.source.cache_key(node.entry), node.size)


async def test_a_reset_and_a_server_error_on_content_are_survived(core, harness):
    node = await core.stat((await files(core, harness))["e-long.mp3"])
    harness.emu.faults.add(kind="reset", route=harness.content_route, after_bytes=100_000, times=1)
    harness.emu.faults.add(kind="status", route=harness.content_route, status=503, times=1)
    assert await read(core, node) == harness.expected("e-long.mp3")
    assert harness.emu.faults.fired["reset"] == 1 and harness.emu.faults.fired["status"] == 1


async def test_credentials_the_service_refuses_stop_the_start_with_a_clear_error(harness):
    table = {**harness.table, **harness.bad_credentials}
    http = Http(retry=RetryPolicy(attempts=2, base_delay=0.01))
    try:
        with pytest.raises(SourceError) as failure:
            await make_source(table, http).start()
    finally:
        await http.aclose()
    message = str(failure.value)
    for secret in harness.bad_credentials.values():
        assert secret not in message
    assert "refused" in message or "credentials" in message or "401" in message or "403" in message, message
