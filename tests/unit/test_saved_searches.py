"""Saved searches (saved.py) in the core, over an in-memory source: the folder
searches/{name}/{source}/{home path}, whose files are their home objects (one cache
entry, one size, the same metadata), read-only, run again by a refresh with the same
inode numbers; and the `[[searches]]` tables of the config."""
from __future__ import annotations

import errno

import pytest
import trio

from recfs.config import ConfigError, SavedSearch, Tuning, parse_config
from recfs.content.cache import Cache
from recfs.core import Core, CoreError
from recfs.http import Http
from recfs.sources.base import SourceError
from tests.memory_source import MemorySource
from tests.unit.test_config import ALV

KEEP1 = b"1" * 3000
KEEP2 = bytes(range(256)) * 20


@pytest.fixture
def mem():
    mem = MemorySource(allow_delete=True)
    mem.add("calls/keep-1.wav", KEEP1, xattrs={"mem.note": "first"})
    mem.add("calls/other.wav", b"o" * 100)
    mem.add("calls/sub/keep-2.wav", KEEP2, sized=False)
    return mem


@pytest.fixture
async def make_core(tmp_path, nursery):
    made = []

    async def make(mem, searches=(), tuning=None) -> Core:
        http = Http()
        core = Core([mem], Cache(tmp_path / "cache", max_size=1 << 30), http, nursery, tuning,
                    uploads_dir=tmp_path / "uploads", searches=list(searches))
        made.append((core, http))
        return core

    yield make
    for core, http in made:
        await core.aclose()
        await http.aclose()


HOLD = [SavedSearch(name="hold", query="name~=keep")]


async def test_the_matches_are_at_their_home_paths_and_are_the_home_objects(mem, make_core):
    core = await make_core(mem, HOLD)
    assert [n.name for n in await core.children(core.tree.root)] == ["mem", "searches"]
    hold = await core.resolve("searches/hold")
    assert [n.name for n in await core.children(hold)] == ["mem"]
    one = await core.resolve("searches/hold/mem/calls/keep-1.wav")
    two = await core.resolve("searches/hold/mem/calls/sub/keep-2.wav")
    assert await core.resolve("searches/hold/mem/calls/other.wav") is None
    assert [n.name for n in await core.children(one.parent)] == ["keep-1.wav", "sub"]
    home_one = await core.resolve("mem/calls/keep-1.wav")
    # the home source's object: its cache key, metadata and size
    assert one.source is mem and one.ino != home_one.ino
    assert mem.cache_key(one.entry) == mem.cache_key(home_one.entry)
    assert core.xattrs(one) == core.xattrs(home_one) == {"mem.note": "first"}
    assert (await core.stat(one)).size == len(KEEP1)

    # read at home, then there: no second read of the service
    handle = await core.open(home_one)
    assert await core.read(home_one, handle, 0, 1 << 20) == KEEP1
    core.release(handle)
    reads = mem.counts["read"]
    handle = await core.open(one)
    assert await core.read(one, handle, 0, 1 << 20) == KEEP1
    core.release(handle)
    assert mem.counts["read"] == reads

    # a size learnt there is known at home (one cache entry)
    assert (await core.stat(two)).size == len(KEEP2)
    reads = mem.counts["read"]
    home_two = await core.resolve("mem/calls/sub/keep-2.wav")
    assert (await core.stat(home_two)).size == len(KEEP2)
    assert mem.counts["read"] == reads


async def test_nothing_there_can_be_written_or_deleted(mem, make_core):
    core = await make_core(mem, HOLD)
    calls = await core.resolve("searches/hold/mem/calls")
    for attempt in (core.unlink(calls, "keep-1.wav"), core.rmdir(calls, "sub"),
                    core.create(calls, "new.wav"), core.mkdir(calls, "new"),
                    core.rename(calls, "keep-1.wav", await core.resolve("mem/calls"), "x.wav")):
        with pytest.raises(CoreError) as e:
            await attempt
        assert e.value.errno == errno.EROFS
    assert mem.counts["delete"] == 0
    # at home, deleting is allowed
    await core.unlink(await core.resolve("mem/calls"), "keep-1.wav")
    assert mem.counts["delete"] == 1


async def test_a_refresh_runs_it_again_and_keeps_the_inode_numbers(mem, make_core):
    core = await make_core(mem, HOLD)
    one = await core.resolve("searches/hold/mem/calls/keep-1.wav")
    folder = one.parent
    mem.add("calls/keep-3.wav", b"3" * 10)
    # within the TTL the folder shows the run it was listed from
    assert [n.name for n in await core.children(folder)] == ["keep-1.wav", "sub"]
    listings = mem.counts["list"]
    core.tree.invalidate_under(await core.resolve("mem"))         # the home listing, afresh
    core.tree.invalidate_under(await core.resolve("searches/hold"))
    assert sorted(n.name for n in await core.children(folder)) == ["keep-1.wav", "keep-3.wav", "sub"]
    assert mem.counts["list"] > listings
    assert await core.resolve("searches/hold/mem/calls/keep-1.wav") is one


async def test_one_run_per_ttl_for_every_folder_of_the_search(mem, make_core):
    core = await make_core(mem, [SavedSearch(name="hold", query="name~=keep", listing_ttl=1.0)])
    saved = (await core.resolve("searches")).source
    runs = []
    search = saved.search

    async def counted(query, progress):
        runs.append(query.text)
        return await search(query, progress)
    saved.search = counted
    for path in ("searches/hold", "searches/hold/mem/calls", "searches/hold/mem/calls/sub"):
        await core.children(await core.resolve(path))
    assert runs == ["name~=keep"]
    status = core.control.status()["saved_searches"]
    assert status["hold"]["matches"] == 2 and status["hold"]["query"] == "name~=keep"
    await trio.sleep(1.1)
    for path in ("searches/hold/mem/calls/sub", "searches/hold/mem/calls", "searches/hold"):
        await core.children(await core.resolve(path))
    assert runs == ["name~=keep"] * 2


async def test_a_failed_run_fails_the_listing(mem, make_core):
    core = await make_core(mem, HOLD)

    async def refuse(ref):
        raise SourceError("mem: refused")
    mem.list_dir = refuse
    with pytest.raises(SourceError, match="saved search 'hold'.*refused"):
        await core.resolve("searches/hold/mem")


async def test_folders_read_back_from_the_index_keep_the_home_source(mem, make_core):
    for i in range(20):
        mem.add(f"calls/day{i:02}/keep-{i}.wav", bytes([i]) * 50)
    core = await make_core(mem, HOLD, Tuning(entries_in_memory=10))
    found = []
    for i in range(20):
        node = await core.resolve(f"searches/hold/mem/calls/day{i:02}/keep-{i}.wav")
        found.append((node.ino, node.parent))
    assert any(folder.children is None for _, folder in found)     # some left RAM (T7)
    for i, (ino, folder) in enumerate(found):
        node = core.node(ino) or await core.lookup(folder, f"keep-{i}.wav")
        assert node.ino == ino and node.source is mem
        handle = await core.open(node)
        assert await core.read(node, handle, 0, 100) == bytes([i]) * 50
        core.release(handle)


async def test_no_searches_folder_without_saved_searches(mem, make_core):
    core = await make_core(mem)
    assert [n.name for n in await core.children(core.tree.root)] == ["mem"]


# ------------------------------------------------------------------ the config

def test_searches_tables_are_read():
    cfg = parse_config({"sources": [ALV], "searches": [
        {"name": "legal-hold", "query": "caller=+15551234567 since=2025-01-01"},
        {"name": "agent 7", "query": "agent=7", "listing_ttl": 600}]})
    assert [(s.name, s.query, s.listing_ttl) for s in cfg.searches] == [
        ("legal-hold", "caller=+15551234567 since=2025-01-01", None), ("agent 7", "agent=7", 600.0)]
    assert parse_config({"sources": [ALV]}).searches == []
    # a source may be called searches when there are none
    assert parse_config({"sources": [dict(ALV, name="searches")]}).sources[0].name == "searches"


@pytest.mark.parametrize("searches,message", [
    ({"name": "x", "query": "caller=1"}, "searches: expected [[searches]] tables"),
    ([{"name": "x", "query": "caller=1", "colour": "red"}], "searches[0].colour: unknown key"),
    ([{"query": "caller=1"}], "searches[0].name: missing required key"),
    ([{"name": "x"}], "searches[0].query: missing required key"),
    ([{"name": "a/b", "query": "caller=1"}], "searches[0].name: 'a/b' is not a usable folder name"),
    ([{"name": "..", "query": "caller=1"}], "searches[0].name: '..' is not a usable folder name"),
    ([{"name": "x", "query": "caller=1"}, {"name": "x", "query": "agent=2"}],
     "searches[1].name: 'x' is used by another saved search"),
    ([{"name": "x", "query": "colour=blue"}], "searches[0].query: 'colour=blue': unknown field 'colour'"),
    ([{"name": "x", "query": ""}], "searches[0].query: an empty query"),
    ([{"name": "x", "query": "since=yesterday"}], "searches[0].query: since=yesterday: expected a date"),
    ([{"name": "x", "query": 5}], "searches[0].query: expected a string"),
    ([{"name": "x", "query": "caller=1", "listing_ttl": 0}], "searches[0].listing_ttl: must be greater than 0"),
])
def test_bad_searches_tables_name_the_key(searches, message):
    with pytest.raises(ConfigError) as e:
        parse_config({"sources": [ALV], "searches": searches})
    assert message in str(e.value)


def test_a_source_named_searches_collides_with_the_saved_searches():
    with pytest.raises(ConfigError, match=r"sources\[1\].name: 'searches' is the folder of the saved searches"):
        parse_config({"sources": [ALV, dict(ALV, name="searches")],
                      "searches": [{"name": "x", "query": "caller=1"}]})
