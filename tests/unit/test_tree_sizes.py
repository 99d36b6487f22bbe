"""T4: a size asked for is learnt alone; files stat'ed or opened one after another have
their folder's sizes learnt a chunk ahead (first AHEAD_FIRST, then SIZE_CHUNK); a size
asked for waits only for its own chunk; each size is learnt once.
T5: a copy that came from the folder before, near a folder's end, has the next folder
prepared, one folder ahead at most; nothing outside a single-folder copy.

The core (tree, reader, access policy) over an in-memory source whose listings withhold
the sizes, so every size is learnt from the content; the source counts each request."""
from __future__ import annotations

import collections

import pytest
import trio
from trio.testing import wait_all_tasks_blocked as settle

from recfs.content.cache import Cache
from recfs.content.policy import COPY_MEMORY
from recfs.content.reader import WHOLE_PROBE
from recfs.core import Core
from recfs.http import Http
from recfs.tree import AHEAD_CHUNKS, AHEAD_FIRST, LOOK_AHEAD_FILES, SIZE_CHUNK
from tests.memory_source import MemorySource

FILES = 100


class Clock:
    """The access policy's clock, moved by the test."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def http():
    http = Http()
    yield http
    await http.aclose()


def new_core(mem, tmp_path, nursery, http) -> Core:
    core = Core([mem], Cache(tmp_path / "cache", max_size=1 << 30), http, nursery)
    core.policy.clock = Clock()
    return core


def probed(mem: MemorySource) -> collections.Counter:
    """How many times each file was asked for."""
    return collections.Counter(p for p, _, _ in mem.reads)


async def folder_files(core: Core, path: str):
    folder = await core.resolve(path)
    await core.children(folder)
    return folder, folder.files()[0]


@pytest.fixture
def one_folder():
    mem = MemorySource()
    for i in range(FILES):
        mem.add(f"calls/c{i:03d}.wav", bytes([i]) * (1000 + i), sized=False)
    return mem


async def test_a_lone_stat_learns_that_size_alone(one_folder, tmp_path, nursery, http):
    mem = one_folder
    core = new_core(mem, tmp_path, nursery, http)
    _, files = await folder_files(core, "/mem/calls")
    mem.reset_counts()
    await core.stat(files[40])
    assert files[40].entry.size == 1040
    await settle()
    assert mem.reads == [("calls/c040.wav", 0, 1)]
    await core.stat(files[10])                  # not the next one: still alone
    await settle()
    assert mem.reads == [("calls/c040.wav", 0, 1), ("calls/c010.wav", 0, 1)]


async def test_sequential_stats_learn_ahead_a_small_chunk_then_full_chunks(one_folder, tmp_path, nursery, http):
    mem = one_folder
    core = new_core(mem, tmp_path, nursery, http)
    _, files = await folder_files(core, "/mem/calls")
    mem.reset_counts()

    async def stat(i: int) -> int:
        await core.stat(files[i])
        await settle()
        return len(mem.reads)

    assert await stat(0) == 1                           # one stat: one size
    assert await stat(1) == 1 + AHEAD_FIRST             # a pattern: the next AHEAD_FIRST
    assert await stat(2) == 1 + AHEAD_FIRST + SIZE_CHUNK        # then a chunk at each stat,
    assert await stat(3) == 1 + AHEAD_FIRST + 2 * SIZE_CHUNK    # up to AHEAD_CHUNKS ahead
    learnt = 1 + AHEAD_FIRST + 2 * SIZE_CHUNK
    assert learnt - 4 >= AHEAD_CHUNKS * SIZE_CHUNK
    # the next chunk starts once the stats are fewer than AHEAD_CHUNKS chunks behind
    for i in range(4, learnt - AHEAD_CHUNKS * SIZE_CHUNK + 1):
        assert await stat(i) == learnt
    assert await stat(learnt - AHEAD_CHUNKS * SIZE_CHUNK + 1) == min(FILES, learnt + SIZE_CHUNK)
    for i in range(learnt - AHEAD_CHUNKS * SIZE_CHUNK + 2, FILES):
        await stat(i)
    assert [n.entry.size for n in files] == [1000 + i for i in range(FILES)]
    assert set(probed(mem).values()) == {1} and len(probed(mem)) == FILES     # each size once
    assert all((s, e) == (0, 1) for _, s, e in mem.reads)      # no copy: one byte each
    for n in files:                                     # ls -l again: all known
        await core.stat(n)
    await settle()
    assert len(mem.reads) == FILES


async def test_a_size_asked_for_waits_only_for_its_own_chunk(one_folder, tmp_path, nursery, http):
    mem = one_folder
    core = new_core(mem, tmp_path, nursery, http)
    _, files = await folder_files(core, "/mem/calls")
    second = range(1 + AHEAD_FIRST, 1 + AHEAD_FIRST + SIZE_CHUNK)
    # a few of the second chunk's files answer only when the test lets them (fewer than
    # the source's probes at once, so the others' probes go on)
    held = [second[0], 20, second[-1]]
    assert len(held) < mem.size_probes
    gate = mem.hold(*(f"calls/c{i:03d}.wav" for i in held))
    for i in range(3):
        await core.stat(files[i])                       # the second chunk starts, and waits
    await settle()
    assert not files[20].size_known
    await core.stat(files[5])                           # in the first chunk: known already
    await core.stat(files[80])                          # in no chunk: learnt alone
    assert files[80].entry.size == 1080
    asked = trio.Event()

    async def stat_in_held_chunk():
        await core.stat(files[20])                      # its own chunk: it waits for that
        asked.set()

    await core.stat(files[10])                          # of the held chunk, but learnt already
    nursery.start_soon(stat_in_held_chunk)
    await settle()
    assert not asked.is_set() and not files[20].size_known
    gate.set()
    await asked.wait()
    await settle()
    assert all(n.size_known for n in files[:1 + AHEAD_FIRST + SIZE_CHUNK])
    assert set(probed(mem).values()) == {1}


async def test_a_size_asked_for_does_not_queue_behind_a_chunk_learnt_ahead(one_folder, tmp_path, nursery, http):
    mem = one_folder
    core = new_core(mem, tmp_path, nursery, http)
    _, files = await folder_files(core, "/mem/calls")
    second = range(1 + AHEAD_FIRST, 1 + AHEAD_FIRST + SIZE_CHUNK)
    gate = mem.hold(*(f"calls/c{i:03d}.wav" for i in second))   # a slow answer for each
    for i in range(3):
        await core.stat(files[i])
    await settle()
    asked = trio.Event()

    async def lone_stat():
        await core.stat(files[80])                      # in no chunk: learnt alone
        asked.set()

    nursery.start_soon(lone_stat)
    await settle()
    try:
        assert asked.is_set() and files[80].entry.size == 1080
    finally:
        gate.set()


async def test_a_copy_learns_ahead_and_brings_small_files_whole_with_their_sizes(
        one_folder, tmp_path, nursery, http):
    mem = one_folder
    core = new_core(mem, tmp_path, nursery, http)
    _, files = await folder_files(core, "/mem/calls")
    mem.reset_counts()
    for i, node in enumerate(files):
        h = await core.open(node)
        assert await core.read(node, h, 0, node.size) == bytes([i]) * (1000 + i)
        core.release(h)
    await settle()
    # the first open is no copy yet: a one-byte probe, then the file; from the second
    # on, each file came whole with its size and was read from the cache
    asked = probed(mem)
    assert asked["calls/c000.wav"] == 2 and sum(asked.values()) == FILES + 1
    assert all((s, e) == (0, WHOLE_PROBE) for p, s, e in mem.reads if p != "calls/c000.wav")
    assert mem.bytes_read == 1 + sum(1000 + i for i in range(FILES))


async def test_sizes_learnt_are_remembered_by_the_cache(one_folder, tmp_path, nursery, http):
    mem = one_folder
    core = new_core(mem, tmp_path, nursery, http)
    _, files = await folder_files(core, "/mem/calls")
    for node in files[:10]:
        await core.stat(node)
    await settle()
    core.cache.close()
    mem.reset_counts()
    again = new_core(mem, tmp_path, nursery, http)
    _, files = await folder_files(again, "/mem/calls")
    assert [n.entry.size for n in files[:10]] == [1000 + i for i in range(10)]
    for node in files[:10]:
        await again.stat(node)
    await settle()
    assert mem.counts["read"] == 0


# -- T5: a copy going through folders looks one folder ahead

FOLDERS = ("a", "b", "c", "d")
AHEAD_FILES = 80


@pytest.fixture
def folders():
    mem = MemorySource()
    for f in FOLDERS:
        for i in range(AHEAD_FILES):
            mem.add(f"calls/{f}/c{i:03d}.wav", bytes([i]) * (1000 + i), sized=False)
    return mem


async def copy_through(core: Core, nodes) -> None:
    """What cp -r makes the core do as it opens `nodes` in order."""
    for node in nodes:
        core.release(await core.open(node))


def under(mem: MemorySource, folder: str) -> collections.Counter:
    return collections.Counter(p for p in probed(mem).elements() if p.startswith(f"calls/{folder}/"))


async def test_a_copy_of_one_folder_looks_nowhere_else(folders, tmp_path, nursery, http):
    mem = folders
    core = new_core(mem, tmp_path, nursery, http)
    calls = await core.resolve("/mem/calls")
    await core.children(calls)
    _, b_files = await folder_files(core, "/mem/calls/b")
    listings = core.tree.listings
    mem.reset_counts()
    await copy_through(core, b_files)
    await settle()
    assert calls.children["c"].children is None and calls.children["a"].children is None
    assert core.tree.listings == listings
    assert sum(under(mem, "b").values()) == mem.counts["read"]


async def test_a_copy_that_came_from_the_folder_before_prepares_the_next_folder_only(
        folders, tmp_path, nursery, http):
    mem = folders
    core = new_core(mem, tmp_path, nursery, http)
    calls = await core.resolve("/mem/calls")
    await core.children(calls)
    _, a_files = await folder_files(core, "/mem/calls/a")
    await copy_through(core, a_files)
    c, d = calls.children["c"], calls.children["d"]
    _, b_files = await folder_files(core, "/mem/calls/b")     # cp -r goes on into b
    listings = core.tree.listings
    near_end = AHEAD_FILES - LOOK_AHEAD_FILES
    await copy_through(core, b_files[:near_end])
    await settle()
    assert c.children is None                           # not near the end yet
    await copy_through(core, [b_files[near_end]])
    await settle()
    assert core.tree.listings == listings + 1 and d.children is None   # c, not d
    c_files = c.files()[0]
    assert all(n.size_known for n in c_files[:SIZE_CHUNK])
    assert not any(n.size_known for n in c_files[SIZE_CHUNK:])
    # learnt as for a copy: the small files came whole, into the cache
    assert under(mem, "c") == {f"calls/c/c{i:03d}.wav": 1 for i in range(SIZE_CHUNK)}
    assert all(core.cache.has_whole(mem.cache_key(n.entry), n.size) for n in c_files[:SIZE_CHUNK])
    # the copy goes on through b and c: the rest of c is learnt as it goes, each size once
    await copy_through(core, b_files[near_end + 1:] + c_files)
    await settle()
    assert [n.entry.size for n in c_files] == [1000 + i for i in range(AHEAD_FILES)]
    assert set(under(mem, "c").values()) == {1} and len(under(mem, "c")) == AHEAD_FILES


async def test_a_copy_from_a_folder_copied_long_ago_does_not_look_ahead(folders, tmp_path, nursery, http):
    mem = folders
    core = new_core(mem, tmp_path, nursery, http)
    calls = await core.resolve("/mem/calls")
    await core.children(calls)
    _, a_files = await folder_files(core, "/mem/calls/a")
    await copy_through(core, a_files)
    core.policy.clock.now += COPY_MEMORY                 # the copy of a is over
    _, b_files = await folder_files(core, "/mem/calls/b")
    listings = core.tree.listings
    await copy_through(core, b_files)
    await settle()
    assert calls.children["c"].children is None and core.tree.listings == listings


async def test_no_copy_no_look_ahead(folders, tmp_path, nursery, http):
    mem = folders
    core = new_core(mem, tmp_path, nursery, http)
    calls = await core.resolve("/mem/calls")
    await core.children(calls)
    _, a_files = await folder_files(core, "/mem/calls/a")
    _, b_files = await folder_files(core, "/mem/calls/b")
    for node in a_files + b_files:                      # ls -l a b
        await core.stat(node)
    for node in reversed(b_files):                      # opens, but in no copy's order
        core.release(await core.open(node))
    await settle()
    assert calls.children["c"].children is None
    assert not under(mem, "c") and not under(mem, "d")


async def test_an_ls_of_a_prepared_folder_learns_the_rest_each_size_once(folders, tmp_path, nursery, http):
    mem = folders
    core = new_core(mem, tmp_path, nursery, http)
    calls = await core.resolve("/mem/calls")
    await core.children(calls)
    _, a_files = await folder_files(core, "/mem/calls/a")
    await copy_through(core, a_files)
    _, b_files = await folder_files(core, "/mem/calls/b")
    await copy_through(core, b_files)
    await settle()
    c = calls.children["c"]
    assert c.children is not None and sum(under(mem, "c").values()) == SIZE_CHUNK
    core.policy.clock.now += COPY_MEMORY                 # the copy ended; ls -l c
    for node in c.files()[0]:
        await core.stat(node)
    await settle()
    assert [n.entry.size for n in c.files()[0]] == [1000 + i for i in range(AHEAD_FILES)]
    assert set(under(mem, "c").values()) == {1} and len(under(mem, "c")) == AHEAD_FILES
    # learnt after the copy: one byte each
    assert all((s, e) == (0, 1) for p, s, e in mem.reads
               if p.startswith("calls/c/") and int(p[-7:-4]) >= SIZE_CHUNK)
