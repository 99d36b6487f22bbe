"""Inode numbers and readdir offsets through a real mount (src/recfs/tree.py T1, T2),
seen as a program sees them: `st_ino` from os.stat and `d_ino` from os.scandir.

T1: an inode number is never reused for another file within a mount, and the same
file keeps its number across `recfs refresh`, a listing that expired and the
eviction of its cached bytes. T2: a folder read by a program while files come and
go on the service (and the folder is refreshed) gives no entry twice and every
entry that was there from start to end.
"""
from __future__ import annotations

import ctypes
import json
import os
import platform
import struct
import time
from pathlib import Path

import pytest

from recfs.emulators.alvaria import AlvariaEmulator, source_table
from recfs.emulators.base import PatternBlob
from tests.conftest import toml_config
from tests.faults import forget_pages

pytestmark = pytest.mark.e2e

SOURCE = "alv"
DAY = "exports/cxp/recordings/2025-10-10"
NO_PREFETCH = "\n[tuning]\nsibling_prefetch = 0\n"     # reads fetch only what they read


@pytest.fixture
def emu():
    emu = AlvariaEmulator()
    for i in range(6):
        emu.put(f"{DAY}/call-{i:03d}.wav", PatternBlob(10 + i, 20_000 + 1000 * i))
    emu.put("exports/cxp/recordings/2025-10-11/call-100.wav", PatternBlob(30, 5000))
    emu.put("exports/compliance/audit.csv", b"time,user,action\n" * 20)
    with emu:
        yield emu


def config(emu, extra: str = NO_PREFETCH, cache: dict | None = None, cache_dir: Path | None = None,
           **table_extra) -> str:
    table = source_table(emu, SOURCE)
    table.update(table_extra)
    return toml_config([table], cache_dir=cache_dir, cache=cache) + extra


def scan(folder: Path) -> dict[str, int]:
    """name -> d_ino, as readdir gives them (every call reaches the daemon)."""
    with os.scandir(folder) as it:
        return {e.name: e.inode() for e in it}


def stat_inos(folder: Path, names) -> dict[str, int]:
    return {n: os.stat(folder / n).st_ino for n in names}


def refresh(mnt: Path, rel: str) -> None:
    """`recfs refresh` of a folder: its path relative to the mount (docs/SEMANTICS.md)."""
    os.setxattr(mnt, "user.recfs.refresh", rel.encode())


def walk_inos(root: Path) -> dict[str, int]:
    """path relative to the mount -> st_ino of every file and folder below `root`."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = os.stat(p).st_ino
    return out


def assert_one_number_per_file(seen: dict[int, set[str]]) -> None:
    reused = {ino: who for ino, who in seen.items() if len(who) > 1}
    assert not reused, f"inode numbers given to more than one file: {reused}"


def note(seen: dict[int, set[str]], inos: dict[str, int], prefix: str = "") -> None:
    for name, ino in inos.items():
        seen.setdefault(ino, set()).add(prefix + name)


# ---------------------------------------------------------------------- T1


def test_a_file_keeps_its_number_across_recfs_refresh(emu, recfs_mount):
    mnt = recfs_mount(config(emu))
    folder = mnt / SOURCE / DAY
    rel = f"{SOURCE}/{DAY}"
    tree_before = walk_inos(mnt / SOURCE)
    before = scan(folder)
    assert before == stat_inos(folder, before)          # d_ino and st_ino agree
    assert len(set(before.values())) == len(before)
    listings = emu.count("objectKeys")

    # the service changes meanwhile: one file gets new bytes (a new version), one is new
    changed = f"{DAY}/call-002.wav"
    emu.put(changed, PatternBlob(99, 31_000), emu.objects[changed].mtime + 60)
    emu.put(f"{DAY}/call-001a.wav", PatternBlob(98, 4000))
    for _ in range(2):
        refresh(mnt, rel)
        after = scan(folder)
        assert emu.count("objectKeys") > listings        # the folder was listed again
        listings = emu.count("objectKeys")
        assert "call-001a.wav" in after
        assert {n: after[n] for n in before} == before   # every file kept its number
        assert stat_inos(folder, before) == before
        # the new file has a number never seen in this mount
        assert after["call-001a.wav"] not in set(tree_before.values())
    assert (folder / "call-002.wav").stat().st_size == 31_000      # the new version is shown
    refresh(mnt, SOURCE)                                 # the whole source
    tree_after = walk_inos(mnt / SOURCE)
    assert {p: tree_after[p] for p in tree_before} == tree_before   # folders too


def test_a_file_keeps_its_number_when_its_listing_expires(emu, recfs_mount):
    mnt = recfs_mount(config(emu, listing_ttl=0.3))
    folder = mnt / SOURCE / DAY
    before = scan(folder)
    stated = stat_inos(folder, before)
    assert stated == before
    listings = emu.count("objectKeys")
    emu.put(f"{DAY}/call-late.wav", b"late\n")
    deadline = time.monotonic() + 15
    after = scan(folder)
    while "call-late.wav" not in after and time.monotonic() < deadline:
        time.sleep(0.1)                                  # until the snapshot has expired
        after = scan(folder)
    assert "call-late.wav" in after, "the listing never expired"
    assert emu.count("objectKeys") > listings
    assert {n: after[n] for n in before} == before
    assert stat_inos(folder, before) == before
    assert after["call-late.wav"] not in before.values()
    # and a few more expiries, each listing the folder again
    for _ in range(3):
        listings = emu.count("objectKeys")
        deadline = time.monotonic() + 15
        while True:
            time.sleep(0.1)
            again = scan(folder)
            if emu.count("objectKeys") > listings or time.monotonic() > deadline:
                break
        assert emu.count("objectKeys") > listings
        assert again == after
        assert stat_inos(folder, after) == after


def test_a_file_keeps_its_number_when_its_cached_bytes_are_evicted(emu, recfs_mount, tmp_path):
    size = 1024 * 1024 + 5
    folder_rel = "exports/evict"
    for name in ("a", "b", "c"):
        emu.put(f"{folder_rel}/{name}.wav", PatternBlob(ord(name), size))
    cache = {"max_size": "1536KiB", "min_free": 0}       # room for one of the files
    mnt = recfs_mount(config(emu, cache=cache, cache_dir=tmp_path / "evict-cache"))
    folder = mnt / SOURCE / folder_rel
    first = scan(folder)
    assert first == stat_inos(folder, first)
    path_a = folder / "a.wav"
    key_a = f"/s3/aspect-via-data-{emu.org}/{folder_rel}/a.wav"

    def gets_of_a() -> int:
        return sum(1 for method, path, status in list(emu.log) if method == "GET" and path == key_a)

    want = emu.objects[f"{folder_rel}/a.wav"].blob.all_bytes()
    assert path_a.read_bytes() == want
    fetched = gets_of_a()
    for name in ("b", "c"):                              # each needs the room a's bytes take
        assert (folder / f"{name}.wav").read_bytes() == emu.objects[f"{folder_rel}/{name}.wav"].blob.all_bytes()
    status = json.loads(os.getxattr(mnt, "user.recfs.status"))
    assert status["cache"]["evictions"] >= 1, status["cache"]
    forget_pages(path_a)                                 # the next read must reach the daemon
    assert path_a.read_bytes() == want
    assert gets_of_a() > fetched                         # a's bytes had been evicted: fetched again
    assert os.stat(path_a).st_ino == first["a.wav"]
    assert scan(folder) == first


@pytest.mark.parametrize("held", [False, True], ids=["forgotten", "held-open"])
def test_a_file_deleted_and_made_again_under_its_name_gets_a_new_number(emu, recfs_mount, held):
    """A file deleted on the service (and listed without it) and another created under
    the same name are two files: the new one gets a new number, and the old number is
    never given to any other file, whether or not the old file is still open. (Alvaria
    objects are known by their key, so a delete and a re-create that no listing saw
    in between are one file with a new version: that keeps its number, as above.)"""
    mnt = recfs_mount(config(emu))
    folder = mnt / SOURCE / DAY
    rel = f"{SOURCE}/{DAY}"
    key = f"{DAY}/call-003.wav"
    seen: dict[int, set[str]] = {}
    note(seen, walk_inos(mnt / SOURCE), "gen0:")
    old = scan(folder)["call-003.wav"]
    old_bytes = emu.objects[key].blob.all_bytes()
    fd = os.open(folder / "call-003.wav", os.O_RDONLY) if held else None
    try:
        if fd is not None:
            assert os.pread(fd, 4096, 0) == old_bytes[:4096]
        del emu.objects[key]
        refresh(mnt, rel)
        gone = scan(folder)
        assert "call-003.wav" not in gone
        assert old not in gone.values()
        emu.put(key, PatternBlob(77, 12_345), 1_800_000_000.0)
        refresh(mnt, rel)
        now = scan(folder)
        new = now["call-003.wav"]
        assert new != old
        assert os.stat(folder / "call-003.wav").st_ino == new
        assert (folder / "call-003.wav").read_bytes() == emu.objects[key].blob.all_bytes()
        if fd is not None:
            assert os.fstat(fd).st_ino == old                # the open file is still the old one
        # more files come and go; none of them, nor any other file, gets the old number
        for i in range(5):
            emu.put(f"{DAY}/call-003-{i}.wav", PatternBlob(200 + i, 3000))
        emu.put("exports/cxp/recordings/2025-10-12/call-200.wav", PatternBlob(40, 3000))
        refresh(mnt, SOURCE)
        everything = walk_inos(mnt / SOURCE)
        assert old not in everything.values(), [p for p, i in everything.items() if i == old]
        note(seen, {p: i for p, i in everything.items() if p != f"{DAY}/call-003.wav"}, "gen0:")
        note(seen, {f"{DAY}/call-003.wav": new}, "gen1:")
        assert_one_number_per_file(seen)
    finally:
        if fd is not None:
            os.close(fd)


# ---------------------------------------------------------------------- T2

BIG_DIR = "exports/big"
BIG_COUNT = 900


def big_name(i: int) -> str:
    # names near the 255-byte limit: one readdir request carries a few hundred of them
    # even with glibc's buffer (st_blksize, 128 KiB), so a scan of the folder takes
    # several requests, each answered after the changes made before it
    return f"recording-{i:04d}-{'x' * 230}.wav"


def scandir_entries(folder: Path):
    with os.scandir(folder) as it:
        for e in it:
            yield e.name, e.inode()


def getdents_entries(folder: Path, buffer: int = 4096):
    """What a program reading with a small getdents64 buffer (Go's os.ReadDir uses
    8 KiB) sees: one FUSE readdir request every dozen entries."""
    getdents64 = {"x86_64": 217, "aarch64": 61}.get(platform.machine())
    if getdents64 is None:
        pytest.skip(f"getdents64's syscall number on {platform.machine()} is not known here")
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    buf = ctypes.create_string_buffer(buffer)
    try:
        while True:
            n = libc.syscall(getdents64, fd, buf, buffer)
            if n < 0:
                raise OSError(ctypes.get_errno(), "getdents64")
            if n == 0:
                return
            raw, off = buf.raw[:n], 0
            while off < n:
                ino, _, reclen = struct.unpack_from("<QqH", raw, off)
                name = raw[off + 19:off + reclen].split(b"\0", 1)[0].decode()
                off += reclen
                if name not in (".", ".."):
                    yield name, ino
    finally:
        os.close(fd)


@pytest.mark.parametrize("reader", [scandir_entries, getdents_entries], ids=["scandir", "getdents-4KiB"])
def test_readdir_offsets_are_stable_while_the_folder_changes(emu, recfs_mount, reader):
    for i in range(0, 2 * BIG_COUNT, 2):                 # even numbers; odd ones come later
        emu.put(f"{BIG_DIR}/{big_name(i)}", b"r")
    mnt = recfs_mount(config(emu))
    folder = mnt / SOURCE / BIG_DIR
    rel = f"{SOURCE}/{BIG_DIR}"
    start = scan(folder)
    assert len(start) == BIG_COUNT

    returned: list[tuple[str, int]] = []
    deleted: set[str] = set()
    added: set[str] = set()
    changes = 0
    mark = emu.count("objectKeys")

    def change(k: int) -> None:
        # files appear before and after the cursor (odd numbers fall between the names
        # there), files go before and after it, then the folder is refreshed
        for i in range(k * 37 % 160 + 1, 2 * BIG_COUNT, 160):
            name = big_name(i)
            if f"{BIG_DIR}/{name}" not in emu.objects and name not in deleted:
                emu.put(f"{BIG_DIR}/{name}", b"n")
                added.add(name)
        at = 2 * len(returned)                           # about where the cursor is
        for i in (at - 20 - 2 * k, at + 40 + 2 * k, 2 * BIG_COUNT - 2 - 4 * k):
            name = big_name(i - i % 2)
            if emu.objects.pop(f"{BIG_DIR}/{name}", None) is not None:
                deleted.add(name)
        refresh(mnt, rel)

    for name, ino in reader(folder):
        returned.append((name, ino))
        # a change a little way into the scan, then one after each readdir request
        # that answered after the one before (the folder was listed again for it)
        if (changes == 0 and len(returned) == 20) or \
                (0 < changes < 8 and emu.count("objectKeys") > mark):
            mark = emu.count("objectKeys")
            change(changes)
            changes += 1
            time.sleep(0.01)                             # paced: the reader is a program at work

    # the scan went on across changes: each was followed by a readdir request that
    # listed the folder again, the last one at the latest by the end of the scan
    assert changes >= 3, changes
    assert emu.count("objectKeys") > mark
    names = [n for n, _ in returned]
    twice = sorted({n[:16] for n in names if names.count(n) > 1})
    assert not twice, f"entries returned twice: {twice[:10]}"
    inos = [i for _, i in returned]
    assert len(set(inos)) == len(inos)
    stayed = set(start) - deleted
    missing = sorted(n[:16] for n in stayed - set(names))
    assert not missing, f"entries present from start to end were not returned: {missing[:10]}"
    # every entry returned is a file that was there at some point, with its own number
    assert set(names) <= set(start) | added
    assert all(start[n] == i for n, i in returned if n in start)
    assert deleted and added
    final = scan(folder)
    assert set(final) == (set(start) - deleted) | added
    assert all(final[n] == i for n, i in returned if n in final)
