"""T4: exact sizes are learnt per folder in chunks; an open waits only for its own
chunk. T5: a copy that came from the folder before, near a folder's end, has the
next folder prepared, one folder ahead at most. (The Alvaria source against its emulator, no mount.)"""
from __future__ import annotations

import trio

from recfs.config import Secret
from recfs.content.cache import Cache
from recfs.emulators.alvaria import AlvariaEmulator
from recfs.emulators.base import PatternBlob
from recfs.http import Http, RetryPolicy
from recfs.sources.alvaria import AlvariaSource
from recfs.sources.base import SourceContext
from recfs.tree import LOOK_AHEAD_FILES, MAX_PARKED, SIZE_CHUNK, Tree, _SizeChunk

FILES = 100


async def make_tree(emu, tmp_path, nursery):
    http = Http(retry=RetryPolicy(attempts=4, base_delay=0.01), threaded_content=True)
    cache = Cache(tmp_path / "cache", max_size=1 << 30)
    opts = {"api_url": emu.api_url(), "token_url": emu.token_url,
            "client_id": Secret(emu.client_id, "t"), "client_secret": Secret(emu.client_secret, "t"),
            "api_key": Secret(emu.api_key, "t"), "root": "", "page_size": 1000,
            "size_concurrency": 8, "listing_ttl": None}
    source = AlvariaSource("alv", opts, SourceContext(http=http, cache=cache))
    tree = Tree([source], cache, nursery)
    calls = await tree.lookup(await tree.lookup(tree.root, "alv"), "calls")
    return http, source, tree, calls


async def rig(emu, tmp_path, nursery):
    http, _, tree, calls = await make_tree(emu, tmp_path, nursery)
    files = [await tree.lookup(calls, f"c{i:03d}.wav") for i in range(FILES)]
    return http, tree, files


async def test_the_first_file_waits_for_its_chunk_only_and_the_rest_follow(tmp_path, nursery):
    emu = AlvariaEmulator()
    for i in range(FILES):
        emu.put(f"calls/c{i:03d}.wav", PatternBlob(i, 1000 + i))
    with emu:
        http, tree, files = await rig(emu, tmp_path, nursery)
        emu.reset_stats()
        await tree.ensure_size(files[0])
        assert files[0].entry.size == 1000
        assert emu.count("s3") == SIZE_CHUNK                # one chunk, not the folder
        # a file whose chunk has not started runs it itself, ahead of the queue
        await tree.ensure_size(files[-1])
        assert files[-1].entry.size == 1000 + FILES - 1
        for node in files:
            await tree.ensure_size(node)
        assert [n.entry.size for n in files] == [1000 + i for i in range(FILES)]
        assert emu.count("s3") == FILES                     # each size learnt once
        assert emu.count("signedUrl") == 0                  # the URLs came with the listing
        await http.aclose()


# -- T5: a copy going through folders looks one folder ahead
FOLDERS = ("a", "b", "c", "d")
AHEAD_FILES = 80


def emulator(folders):
    emu = AlvariaEmulator()
    for f in folders:
        for i in range(AHEAD_FILES):
            emu.put(f"calls/{f}/c{i:03d}.wav", PatternBlob(i, 1000 + i))
    return emu


async def tree_in_a(emu, tmp_path, nursery):
    """The tree, with calls/a listed: (http, source, tree, calls, a)."""
    http, source, tree, calls = await make_tree(emu, tmp_path, nursery)
    a = await tree.lookup(calls, "a")
    await tree.children(a)
    return http, source, tree, calls, a


def files_of(folder):
    return sorted((c for c in folder.children.values() if not c.is_dir), key=lambda n: n.name)


async def copy_through(tree, source, nodes):
    """What cp -r makes recfs do as it opens `nodes` in order (the reader sees the copy)."""
    for node in nodes:
        source.copy_seen = trio.current_time()
        await tree.ensure_size(node)
        tree.copy_progress(node)


async def settle(tree, condition):
    with trio.fail_after(20):
        while not condition():
            await trio.sleep(0.01)


async def test_a_copy_of_one_folder_looks_nowhere_else(tmp_path, nursery):
    with emulator(FOLDERS[:2]) as emu:
        http, source, tree, calls, a = await tree_in_a(emu, tmp_path, nursery)
        listings = tree.listings
        await copy_through(tree, source, files_of(a))
        await trio.sleep(0.1)
        assert calls.children["b"].children is None
        assert tree.listings == listings and emu.count("s3") == AHEAD_FILES
        await http.aclose()


async def test_a_copy_that_came_from_the_folder_before_prepares_the_next_folder_only(
        tmp_path, nursery):
    with emulator(FOLDERS) as emu:
        http, source, tree, calls, a = await tree_in_a(emu, tmp_path, nursery)
        b, c, d = (calls.children[f] for f in "bcd")
        await copy_through(tree, source, files_of(a))
        await tree.children(b)                          # cp -r goes on into b
        listings = tree.listings
        await copy_through(tree, source, files_of(b)[:AHEAD_FILES - LOOK_AHEAD_FILES])
        await trio.sleep(0.1)
        assert c.children is None                       # not near the end yet
        await copy_through(tree, source, [files_of(b)[AHEAD_FILES - LOOK_AHEAD_FILES]])
        await settle(tree, lambda: c.children is not None
                     and all(n.size_known for n in files_of(c)[:SIZE_CHUNK]))
        assert tree.listings == listings + 1            # c, not d
        assert d.children is None
        assert not any(n.size_known for n in files_of(c)[SIZE_CHUNK:])   # parked
        assert emu.count("s3") == 2 * AHEAD_FILES + SIZE_CHUNK
        # the copy reaches c (a stat of one of c's later files would do the same): the
        # rest of c is learnt in the background, not chunk by chunk as files are asked for
        tree.copy_progress(files_of(c)[0])
        await settle(tree, lambda: all(n.size_known for n in files_of(c)))
        assert emu.count("s3") == 3 * AHEAD_FILES             # each size learnt once
        assert [n.entry.size for n in files_of(c)] == [1000 + i for i in range(AHEAD_FILES)]
        await http.aclose()


async def test_no_copy_no_look_ahead(tmp_path, nursery):
    with emulator(FOLDERS[:3]) as emu:
        http, source, tree, calls, a = await tree_in_a(emu, tmp_path, nursery)
        await tree.children(calls.children["b"])
        for node in files_of(a) + files_of(calls.children["b"]):
            await tree.ensure_size(node)
            tree.copy_progress(node)                   # copy_seen never set: ls -l, stat
        await trio.sleep(0.1)
        assert calls.children["c"].children is None
        await http.aclose()


def test_parked_folders_are_bounded_and_forgotten_oldest_first():
    tree = Tree([], None, None)

    class FakeNode:
        def __init__(self, ino):
            self.ino = ino
    for folder in range(MAX_PARKED + 1):
        ch = _SizeChunk([FakeNode(1000 + folder)])
        tree._sizing[1000 + folder] = ch
        tree._park(folder, [ch])
    assert len(tree._parked) == MAX_PARKED and 0 not in tree._parked
    assert 1000 not in tree._sizing                     # its file can be sized anew
    assert all(1000 + f in tree._sizing for f in range(1, MAX_PARKED + 1))


async def test_asking_for_a_size_in_a_prepared_folder_brings_the_rest_too(tmp_path, nursery):
    with emulator(FOLDERS[:3]) as emu:
        http, source, tree, calls, a = await tree_in_a(emu, tmp_path, nursery)
        b, c = calls.children["b"], calls.children["c"]
        await copy_through(tree, source, files_of(a))
        await tree.children(b)
        await copy_through(tree, source, files_of(b))
        await settle(tree, lambda: c.children is not None
                     and all(n.size_known for n in files_of(c)[:SIZE_CHUNK]))
        source.copy_seen = float("-inf")              # the copy ended; ls -l c
        await tree.ensure_size(files_of(c)[SIZE_CHUNK])
        await settle(tree, lambda: all(n.size_known for n in files_of(c)))
        await http.aclose()
