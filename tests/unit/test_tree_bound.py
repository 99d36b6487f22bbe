"""Memory bounded by configuration (tree.py T7, index.py M1-M4), through the core over
an in-memory source, without a mount: a tree larger than the bound is walked twice and
remounted, RAM never holds more than the bound, revisits and remounts within the
listing's lifetime ask the service nothing, and every inode keeps its number and can
be answered after its folder left RAM."""
from __future__ import annotations

import pytest

from recfs.config import Tuning
from recfs.content.cache import Cache
from recfs.core import Core
from recfs.http import Http
from recfs.index import MetadataIndex
from tests.memory_source import MemorySource

FOLDERS, FILES = 12, 25
BOUND = 100                 # nodes in RAM; the tree has 12 * 25 files and 15 folders
FOLDER_NODES = 2 + 1 + FOLDERS      # root, the source, days/, the day folders


def data(d: int, f: int) -> bytes:
    return bytes([d, f]) * (f + 1)


def populate(mem: MemorySource) -> MemorySource:
    for d in range(FOLDERS):
        for f in range(FILES):
            # every other file without its size in the listing: the core learns it
            mem.add(f"days/d{d:02}/c{f:03}.wav", data(d, f), sized=f % 2 == 0,
                    xattrs={"mem.caller": f"+1555{d:02}{f:03}"})
    return mem


@pytest.fixture
def mem():
    return populate(MemorySource(metadata_sizes=True))


class Mounts:
    """Cores over one cache directory, one after the other (a mount, then a remount)."""

    def __init__(self, tmp_path, nursery):
        self.tmp_path, self.nursery = tmp_path, nursery
        self.open: list[tuple[Core, Http]] = []

    def core(self, source: MemorySource, bound: int = BOUND) -> Core:
        http = Http()
        core = Core([source], Cache(self.tmp_path / "cache", max_size=1 << 30), http, self.nursery,
                    Tuning(entries_in_memory=bound), uploads_dir=self.tmp_path / "uploads")
        self.open.append((core, http))
        return core

    async def unmount(self, core: Core) -> None:
        for i, (c, http) in enumerate(self.open):
            if c is core:
                del self.open[i]
                await core.aclose()
                await http.aclose()
                core.cache.close()
                return


@pytest.fixture
async def mounts(tmp_path, nursery):
    m = Mounts(tmp_path, nursery)
    yield m
    for core, _ in list(m.open):
        await m.unmount(core)


async def walk(core: Core, peak: list[int]) -> dict[str, tuple[int, int, str]]:
    """Every file under the root: path -> (inode, size, caller), as `ls -lR` and
    `getfattr` would see them; `peak` gets the largest number of nodes in RAM."""
    seen = {}
    folders = [core.tree.root]
    while folders:
        folder = folders.pop()
        for node in await core.children(folder):
            peak[0] = max(peak[0], len(core.tree.inodes))
            if node.is_dir:
                folders.append(node)
                continue
            node = await core.stat(node)
            seen[node.path()] = (node.ino, node.entry.size, core.xattrs(node).get("mem.caller"))
        peak[0] = max(peak[0], len(core.tree.inodes))
    return seen


def expected_files() -> dict[str, tuple[int, str]]:
    return {f"/mem/days/d{d:02}/c{f:03}.wav": (len(data(d, f)), f"+1555{d:02}{f:03}")
            for d in range(FOLDERS) for f in range(FILES)}


def assert_right(seen: dict) -> None:
    assert {p: (size, caller) for p, (_, size, caller) in seen.items()} == expected_files()
    inodes = [ino for ino, _, _ in seen.values()]
    assert len(set(inodes)) == len(inodes)


async def test_a_tree_larger_than_the_bound_is_walked_twice_within_it_and_without_a_request(mounts, mem):
    core = mounts.core(mem)
    peak = [0]
    first = await walk(core, peak)
    assert_right(first)
    assert peak[0] <= BOUND
    assert mem.counts["list"] == FOLDERS + 3 - 1     # every folder once (not the mount root)
    assert mem.counts["sizes"] == FOLDERS * (FILES // 2)
    assert core.tree.folders_in_memory() < FOLDERS
    assert core.control.status()["entries"]["in_index"] == FOLDERS * FILES + FOLDERS + 2
    mem.reset_counts()

    peak = [0]
    second = await walk(core, peak)
    assert second == first                           # the same numbers, sizes and metadata
    assert peak[0] <= BOUND
    assert dict(mem.counts) == {}


async def test_metadata_is_not_kept_in_ram_but_read_from_the_index(mounts, mem):
    core = mounts.core(mem, bound=10_000)
    folder = await core.resolve("mem/days/d03")
    node = (await core.children(folder))[4]
    assert not node.entry.xattrs
    assert core.xattrs(node) == {"mem.caller": "+155503004"}
    mem.reset_counts()
    assert core.xattrs(node) == {"mem.caller": "+155503004"}
    assert dict(mem.counts) == {}


async def test_a_remount_within_the_listing_lifetime_asks_nothing_and_keeps_every_number(mounts, mem):
    core = mounts.core(mem)
    first = await walk(core, [0])
    await mounts.unmount(core)
    mem.reset_counts()

    again = mounts.core(mem)
    second = await walk(again, [0])
    assert second == first
    assert dict(mem.counts) == {}


async def test_an_inode_the_kernel_holds_is_answered_after_its_folder_left_ram(mounts, mem):
    core = mounts.core(mem)
    day = await core.resolve("mem/days/d11")        # the walk's first day folder
    held = await core.stat((await core.children(day))[7])
    core.tree.remember(held.ino)           # the kernel keeps it (a dentry, an open file)
    ino, path = held.ino, held.path()
    await walk(core, [0])                # and every other folder: d11 leaves RAM
    assert day.children is None and ino not in core.tree.inodes
    mem.reset_counts()

    node = core.node(ino)                # getattr(ino) from the kernel
    assert node is not None and node.path() == path and node.ino == ino
    assert node.entry.size == len(data(11, 7)) and core.xattrs(node) == {"mem.caller": "+155511007"}
    handle = await core.open(node)
    try:
        assert await core.read(node, handle, 0, 1 << 20) == data(11, 7)
    finally:
        core.release(handle)
    assert mem.counts["list"] == 0 and mem.counts["sizes"] == 0
    assert [n.ino for n in await core.children(day)][7] == ino      # readdir of its folder
    assert await core.lookup(day, "c007.wav") is node
    assert mem.counts["list"] == 0


async def test_a_readdir_of_a_folder_out_of_ram_makes_no_node_of_its_files(mounts, mem):
    """T8: what the kernel's readdir is told of a folder whose snapshot left RAM comes from
    the index's rows (the same numbers, sizes learnt since included), its files without
    nodes; the folder is put back in RAM when one of them is asked for."""
    core = mounts.core(mem)
    first = await walk(core, [0])                    # every size learnt, most folders out
    day = await core.resolve("mem/days/d11")
    assert day.children is None
    mem.reset_counts()
    in_ram = len(core.tree.inodes)
    nodes, rows = await core.for_readdir(day)
    assert nodes is None and len(rows) == FILES
    assert len(core.tree.inodes) == in_ram and day.children is None
    assert [ino for ino, *_ in rows] == sorted(ino for ino, *_ in rows)
    told = {f"/mem/days/d11/{name}": (ino, size) for ino, name, node, size, exact, _ in rows}
    assert all(node is None and exact for _, _, node, _, exact, _ in rows)
    assert told == {p: (ino, size) for p, (ino, size, _) in first.items() if p.startswith("/mem/days/d11/")}
    assert (await core.for_readdir(day))[1] is rows  # the next call of the same readdir
    days = await core.resolve("mem/days")
    if days.children is None:                        # folders get nodes: find goes into them
        _, above = await core.for_readdir(days)
        assert all(node is core.tree.inodes[ino] and node.is_dir for ino, _, node, *_ in above)
    assert dict(mem.counts) == {}
    node = core.node(rows[3][0])                     # the kernel asks for one: read back
    assert node is not None and day.children is not None and node.entry.size == rows[3][3]
    assert (await core.for_readdir(day))[0] == await core.children(day)


async def test_a_folder_that_left_ram_is_listed_again_once_stale_keeping_its_numbers(mounts):
    mem = populate(MemorySource(metadata_sizes=True, listing_ttl=0))    # every listing stale at once
    core = mounts.core(mem)
    first = await walk(core, [0])
    mem.add("days/d05/new.wav", b"new")
    mem.remove("days/d05/c001.wav")
    mem.reset_counts()
    second = await walk(core, [0])
    assert mem.counts["list"] == FOLDERS + 2
    assert mem.counts["sizes"] == 0          # sizes learnt stay (the new file's came listed)
    del first["/mem/days/d05/c001.wav"]
    new = second.pop("/mem/days/d05/new.wav")
    assert second == first
    assert new[0] not in {ino for ino, _, _ in first.values()}


async def test_recfs_refresh_reaches_folders_that_left_ram(mounts, mem):
    core = mounts.core(mem)
    first = await walk(core, [0])
    assert core.tree.invalidate_under(core.tree.root) == FOLDERS + 2
    mem.reset_counts()
    assert await walk(core, [0]) == first
    assert mem.counts["list"] == FOLDERS + 2


async def test_another_configuration_of_a_source_starts_from_an_empty_index(mounts, mem):
    core = mounts.core(mem)
    await walk(core, [0])
    await mounts.unmount(core)
    other = populate(MemorySource(metadata_sizes=True, listing_ttl=3600.0))
    again = mounts.core(other)
    assert_right(await walk(again, [0]))
    assert other.counts["list"] == FOLDERS + 2


def test_a_folder_listing_replaces_its_rows_as_a_whole(tmp_path):
    from recfs.sources.base import Entry, Kind
    index = MetadataIndex(tmp_path)
    index.save(5, 100.0, 60.0, [(6, "a", Entry("a", Kind.FILE, "a", xattrs={"k": "v"})),
                                (7, "b", Entry("b", Kind.DIR, "b/"))])
    index.save(5, 200.0, 60.0, [(7, "b", Entry("b", Kind.DIR, "b/")),
                                (8, "c", Entry("c", Kind.FILE, "c", size=3))])
    assert [(ino, name, e.size) for ino, name, e in sorted(index.load(5))] == [(7, "b", 0), (8, "c", 3)]
    assert index.listed(5) == (200.0, 60.0) and index.xattrs(6) == {}
    assert index.folders_in(5) == [7] and index.next_ino() == 9
    index.close()
