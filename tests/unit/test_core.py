"""The core (core.py) without a mount, over an in-memory source: the namespace, reads,
stale reads, and writes in an upload folder (EROFS everywhere else)."""
from __future__ import annotations

import errno

import pytest

from recfs.content.cache import Cache
from recfs.content.reader import ReadError
from recfs.core import Core, CoreError, Writing
from recfs.http import Http, HttpError
from recfs.sources.base import SourceError
from recfs.tree import Local
from tests.memory_source import MemorySource

A = b"a" * 5000
B = bytes(range(256)) * 40


@pytest.fixture
def mem():
    mem = MemorySource(upload_dirs=("imports/",))
    mem.add("calls/a.wav", A, mtime=1_700_000_100.0, xattrs={"mem.note": "first"})
    mem.add("calls/b.wav", B, sized=False)
    mem.mkdir("calls/sub")
    mem.add("imports/old.wav", b"old")
    return mem


@pytest.fixture
async def core(mem, tmp_path, nursery):
    http = Http()
    core = Core([mem], Cache(tmp_path / "cache", max_size=1 << 30), http, nursery,
                uploads_dir=tmp_path / "uploads")
    core.changed = []
    core.on_changed = core.changed.append
    yield core
    await core.aclose()
    await http.aclose()


async def read_file(core: Core, node, length: int = 1 << 20) -> bytes:
    handle = await core.open(node)
    try:
        return await core.read(node, handle, 0, length)
    finally:
        core.release(handle)


# ------------------------------------------------------------------ the namespace and reads

async def test_lookup_children_stat_open_read_release(core, mem):
    root = core.tree.root
    assert [n.name for n in await core.children(root)] == ["mem"]
    calls = await core.lookup(await core.lookup(root, "mem"), "calls")
    assert [n.name for n in await core.children(calls)] == ["a.wav", "b.wav", "sub"]
    assert await core.lookup(calls, "nope.wav") is None
    a, b = calls.children["a.wav"], calls.children["b.wav"]
    assert a.entry.mtime == 1_700_000_100.0 and core.xattrs(a) == {"mem.note": "first"}
    assert a.size_known and not b.size_known
    mem.reset_counts()
    assert (await core.stat(b)).size == len(B)          # learnt from the content
    assert mem.reads == [("calls/b.wav", 0, 1)]
    assert await read_file(core, a) == A
    assert await read_file(core, b) == B
    assert core.reader.states == {}                     # released
    mem.reset_counts()
    assert await read_file(core, b) == B                # from the cache
    assert mem.counts["read"] == 0 and mem.counts["list"] == 0


async def test_resolve_walks_paths_from_the_root(core):
    b = await core.resolve("/mem/calls/b.wav")
    assert b is not None and b.path() == "/mem/calls/b.wav"
    assert await core.resolve("mem/calls/b.wav/") is b
    assert await core.resolve("/") is core.tree.root
    assert await core.resolve("/mem/nope") is None
    assert await core.resolve("/mem/calls/b.wav/deeper") is None
    assert await core.resolve("/other") is None


async def test_what_does_not_apply_is_refused_with_its_errno(core):
    calls = await core.resolve("/mem/calls")
    a = await core.resolve("/mem/calls/a.wav")
    for call in (core.lookup(a, "x"), core.children(a)):
        with pytest.raises(CoreError) as err:
            await call
        assert err.value.errno == errno.ENOTDIR
    with pytest.raises(CoreError) as err:
        await core.open(calls)
    assert err.value.errno == errno.EISDIR


async def test_a_stale_read_lists_the_folder_again_and_tells_the_front_end(core, mem):
    b = await core.resolve("/mem/calls/b.wav")
    handle = await core.open(b)
    mem.change("calls/b.wav", b"a new, shorter recording")
    listings = mem.counts["list"]
    with pytest.raises(ReadError) as err:
        await core.read(b, handle, 0, 4096)
    core.release(handle)
    assert err.value.stale and core.changed == [b]
    assert mem.counts["list"] == listings               # listed again on the next access, not now
    again = await core.resolve("/mem/calls/b.wav")
    assert mem.counts["list"] == listings + 1
    assert again is b and b.entry.version == "2"        # the same node, the new version
    assert await read_file(core, b) == b"a new, shorter recording"


async def test_a_vanished_file_is_a_stale_read_and_goes_with_the_next_listing(core, mem):
    a = await core.resolve("/mem/calls/a.wav")
    handle = await core.open(a)
    mem.remove("calls/a.wav")
    with pytest.raises(ReadError) as err:
        await core.read(a, handle, 0, 10)
    core.release(handle)
    assert err.value.stale and err.value.errno == errno.ENOENT and core.changed == [a]
    assert await core.resolve("/mem/calls/a.wav") is None


async def test_a_failed_read_that_is_not_stale_keeps_the_listing(core, mem):
    a = await core.resolve("/mem/calls/a.wav")
    calls = a.parent
    mem.fail("calls/a.wav", HttpError("HTTP 503 from the service", 503))
    handle = await core.open(a)
    with pytest.raises(ReadError) as err:
        await core.read(a, handle, 0, 10)
    core.release(handle)
    assert not err.value.stale and err.value.errno == errno.EIO
    assert core.changed == [] and core.tree.fresh(calls)


# ------------------------------------------------------------------ writes

async def test_a_file_written_into_an_upload_folder_is_uploaded_when_closed(core, mem):
    imports = await core.resolve("/mem/imports")
    assert core.writable(imports)
    handle = await core.create(imports, "new.wav")
    node = handle.node
    assert isinstance(handle, Writing) and node.local is Local.WRITING
    assert core.write(handle, 0, b"hello ") == 6 and core.write(handle, 6, b"world") == 5
    assert node.entry.size == 11
    assert await core.read(node, handle, 0, 100) == b"hello world"
    assert await core.lookup(imports, "new.wav") is node
    assert mem.uploads == []                            # nothing is sent before close
    await core.close_written(handle)
    core.release(handle)
    assert mem.uploads == [("imports/new.wav", b"hello world")]
    assert node.local is Local.UPLOADED and core.uploads.pending == {}
    ino = node.ino
    listed = await core.lookup(imports, "new.wav")      # the folder is listed again: it has it
    assert listed is node and node.ino == ino and node.local is None
    mem.reset_counts()
    assert await read_file(core, node) == b"hello world"
    assert mem.counts["read"] == 1                      # from the service now


async def test_a_file_being_written_can_be_truncated_and_reopened(core):
    imports = await core.resolve("/mem/imports")
    handle = await core.create(imports, "t.wav")
    core.write(handle, 0, b"0123456789")
    core.truncate(handle.node, 4)
    assert handle.node.entry.size == 4
    again = core.open_written(handle.node, truncate=False)
    assert await core.read(handle.node, again, 0, 100) == b"0123"
    core.release(again)
    core.release(handle)


async def test_a_failed_upload_is_reported_by_close_and_stays_staged(core, mem):
    imports = await core.resolve("/mem/imports")
    handle = await core.create(imports, "new.wav")
    core.write(handle, 0, b"keep me")
    mem.upload_failure = SourceError("the service is full", errno.EDQUOT)
    with pytest.raises(SourceError):
        await core.close_written(handle)
    assert handle.node.local is Local.WRITING and len(core.uploads.pending) == 1
    assert mem.uploads == []
    mem.upload_failure = None
    await core.close_written(handle)                   # the next close sends it
    core.release(handle)
    assert mem.uploads == [("imports/new.wav", b"keep me")] and core.uploads.pending == {}
    assert handle.node.local is Local.UPLOADED


async def test_a_file_whose_upload_a_retry_sent_reads_back(core, mem):
    imports = await core.resolve("/mem/imports")
    handle = await core.create(imports, "new.wav")
    core.write(handle, 0, b"keep me")
    mem.upload_failure = SourceError("the service is busy", errno.EIO)
    with pytest.raises(SourceError):
        await core.close_written(handle)
    core.release(handle)
    mem.upload_failure = None
    await core.uploads.retry_all()                      # U3: the retry sends it
    assert mem.uploads == [("imports/new.wav", b"keep me")]
    assert handle.node.local is Local.UPLOADED          # shown as sent until a listing has it
    node = await core.lookup(imports, "new.wav")
    assert node is handle.node and await read_file(core, node) == b"keep me"


async def test_creating_over_a_file_the_service_has_is_refused(core):
    imports = await core.resolve("/mem/imports")
    for exclusive, code in ((True, errno.EEXIST), (False, errno.EROFS)):
        with pytest.raises(CoreError) as err:
            await core.create(imports, "old.wav", exclusive=exclusive)
        assert err.value.errno == code


async def test_creating_again_a_file_being_written_starts_it_over(core, mem):
    imports = await core.resolve("/mem/imports")
    first = await core.create(imports, "new.wav")
    core.write(first, 0, b"first try")
    core.release(first)
    second = await core.create(imports, "new.wav")
    assert second.node is not first.node and len(core.uploads.pending) == 1
    core.write(second, 0, b"second")
    await core.close_written(second)
    core.release(second)
    assert mem.uploads == [("imports/new.wav", b"second")]


async def test_unlink(core, mem):
    imports = await core.resolve("/mem/imports")
    calls = await core.resolve("/mem/calls")
    handle = await core.create(imports, "never-sent.wav")
    core.write(handle, 0, b"x")
    core.release(handle)
    await core.unlink(imports, "never-sent.wav")        # never sent: just forgotten
    assert await core.lookup(imports, "never-sent.wav") is None
    assert core.uploads.pending == {} and not any(core.uploads.dir.iterdir())
    with pytest.raises(CoreError) as err:
        await core.unlink(calls, "a.wav")               # allow_delete is off
    assert err.value.errno == errno.EROFS and "calls/a.wav" in mem.files
    for name, code in (("nope.wav", errno.ENOENT), ("sub", errno.EISDIR)):
        with pytest.raises(CoreError) as err:
            await core.unlink(calls, name)
        assert err.value.errno == code
    assert mem.counts["upload"] == mem.counts["delete"] == 0


async def test_unlink_deletes_on_the_service_where_allowed(tmp_path, nursery):
    mem = MemorySource(allow_delete=True)
    mem.add("calls/a.wav", A)
    http = Http()
    core = Core([mem], Cache(tmp_path / "cache", max_size=1 << 30), http, nursery)
    try:
        calls = await core.resolve("/mem/calls")
        await core.unlink(calls, "a.wav")
        assert mem.counts["delete"] == 1 and "calls/a.wav" not in mem.files
        assert await core.lookup(calls, "a.wav") is None
    finally:
        await core.aclose()
        await http.aclose()


async def test_mkdir_and_rmdir_in_an_upload_folder(core, mem):
    imports = await core.resolve("/mem/imports")
    day = await core.mkdir(imports, "day1")
    assert day.local is Local.MADE_DIR and day.is_dir and await core.children(day) == []
    assert core.writable(day) and await core.lookup(imports, "day1") is day
    with pytest.raises(CoreError) as err:
        await core.mkdir(imports, "day1")
    assert err.value.errno == errno.EEXIST
    empty = await core.mkdir(imports, "empty")
    await core.rmdir(imports, "empty")                  # made here and empty: just forgotten
    assert await core.lookup(imports, "empty") is None
    handle = await core.create(day, "x.wav")
    core.write(handle, 0, b"landed")
    with pytest.raises(CoreError) as err:
        await core.rmdir(imports, "day1")               # not empty
    assert err.value.errno == errno.EROFS
    await core.close_written(handle)
    core.release(handle)
    assert mem.uploads == [("imports/day1/x.wav", b"landed")]
    assert day.local is None                            # the service has the folder now
    assert empty.parent is None
    with pytest.raises(CoreError) as err:
        await core.rmdir(imports, "nope")
    assert err.value.errno == errno.ENOENT


async def test_writes_outside_upload_folders_are_erofs(core, mem):
    calls = await core.resolve("/mem/calls")
    a = await core.resolve("/mem/calls/a.wav")
    imports_old = await core.resolve("/mem/imports/old.wav")
    assert not core.writable(calls) and not core.writable(a)
    refused = [core.create(calls, "new.wav"), core.mkdir(calls, "d"), core.rmdir(calls, "sub")]
    for call in refused:
        with pytest.raises(CoreError) as err:
            await call
        assert err.value.errno == errno.EROFS
    handle = await core.open(a)
    for call in (lambda: core.write(handle, 0, b"x"), lambda: core.truncate(a, 0),
                 lambda: core.open_written(a, truncate=True),
                 lambda: core.open_written(imports_old, truncate=False)):
        with pytest.raises(CoreError) as err:
            call()
        assert err.value.errno == errno.EROFS
    await core.close_written(handle)                    # a read handle: nothing to send
    core.release(handle)
    assert mem.counts["upload"] == 0 and await read_file(core, a) == A
