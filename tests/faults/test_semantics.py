"""The filesystem's promises as a user sees them: which operations work, which are
refused with EROFS, and how fresh listings are (docs/SEMANTICS.md)."""
from __future__ import annotations

import errno
import mmap
import os
import subprocess
import sys
import time

import pytest

from recfs.emulators.alvaria import AlvariaEmulator
from recfs.emulators.base import PatternBlob
from tests.faults import SOURCE, Mount, config_for, read_or_errno

pytestmark = pytest.mark.e2e

FILE = "exports/day/call.wav"


@pytest.fixture(scope="module")
def emu():
    emu = AlvariaEmulator()
    emu.put(FILE, PatternBlob(5, 700_000))
    emu.put("exports/day/other.wav", b"other\n")
    emu.put("exports/empty/zero.wav", b"")
    with emu:
        yield emu


@pytest.fixture(scope="module")
def mount(emu, tmp_path_factory):
    work = tmp_path_factory.mktemp("semantics")
    m = Mount(config_for(emu, work / "cache"), work, "mnt")
    m.start()
    yield m
    m.unmount()


def test_reading_operations_work(emu, mount):
    root = mount.path / SOURCE
    want = emu.objects[FILE].blob.all_bytes()
    assert sorted(os.listdir(root / "exports")) == ["day", "empty"]
    assert (root / FILE).stat().st_size == len(want)
    with open(root / FILE, "rb") as f:
        f.seek(123_456)
        assert f.read(1000) == want[123_456:124_456]
        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
            assert mm[-100:] == want[-100:]
    assert (root / "exports/empty/zero.wav").read_bytes() == b""
    assert os.getxattr(root / FILE, "user.alvaria.key") == FILE.encode()
    assert "user.alvaria.key" in os.listxattr(root / FILE)
    assert os.statvfs(root).f_namemax == 255
    assert subprocess.run(["cmp", "-", str(root / FILE)], input=want).returncode == 0


def test_big_files_read_with_direct_io_refuse_only_a_shared_mmap(emu, tmp_path):
    """Files of at least [tuning] direct_io_min_size bypass the page cache: reads and a
    private mmap work, a shared mmap fails with ENODEV (docs/SEMANTICS.md)."""
    m = Mount(config_for(emu, tmp_path / "cache", extra_text='[tuning]\ndirect_io_min_size = "512KiB"\n'),
              tmp_path, "mnt")
    m.start()
    try:
        want = emu.objects[FILE].blob.all_bytes()
        path = m.path / SOURCE / FILE
        assert path.read_bytes() == want
        with open(path, "rb") as f:     # read first, as below
            with mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ) as mm:
                assert mm[-100:] == want[-100:]
            with pytest.raises(OSError) as err:
                mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
            assert err.value.errno == errno.ENODEV
        small = m.path / SOURCE / "exports/day/other.wav"      # below the threshold
        # read first: a page fault in this process must not wait for the emulator,
        # whose threads need the GIL that the faulting thread holds
        assert small.read_bytes() == b"other\n"
        with open(small, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
            assert mm[:] == b"other\n"
    finally:
        m.unmount()


def _errno_of(fn, *args) -> int | None:
    try:
        fn(*args)
    except OSError as exc:
        return exc.errno
    return None


def test_every_change_outside_an_upload_folder_is_refused_with_erofs(emu, mount):
    root = mount.path / SOURCE
    f, d = root / FILE, root / "exports/day"
    attempts = {
        "create": (os.open, str(d / "new.wav"), os.O_CREAT | os.O_WRONLY, 0o644),
        "open for writing": (os.open, str(f), os.O_WRONLY),
        "open read-write": (os.open, str(f), os.O_RDWR),
        "open to append": (os.open, str(f), os.O_WRONLY | os.O_APPEND),
        "truncate": (os.truncate, str(f), 0),
        "mkdir": (os.mkdir, str(d / "sub")),
        "rmdir": (os.rmdir, str(root / "exports/empty")),
        "unlink": (os.unlink, str(f)),
        "rename": (os.rename, str(f), str(d / "moved.wav")),
        "chmod": (os.chmod, str(f), 0o666),
        "chown": (os.chown, str(f), 1, 1),
        "utime": (os.utime, str(f), (1, 1)),
        "symlink": (os.symlink, "call.wav", str(d / "link.wav")),
        "hard link": (os.link, str(f), str(d / "hard.wav")),
        "mkfifo": (os.mkfifo, str(d / "fifo")),
        "setxattr": (os.setxattr, str(f), "user.note", b"x"),
        "removexattr": (os.removexattr, str(f), "user.alvaria.key"),
    }
    results = {what: _errno_of(fn, *args) for what, (fn, *args) in attempts.items()}
    assert results == {what: errno.EROFS for what in attempts}, \
        {k: errno.errorcode.get(v, v) for k, v in results.items()}
    assert emu.objects[FILE].blob.size == 700_000 and "exports/day/new.wav" not in emu.objects


def test_a_new_object_appears_after_recfs_refresh(emu, mount):
    folder = mount.path / SOURCE / "exports/day"
    os.listdir(folder)
    emu.put("exports/day/late.wav", b"late\n")
    assert "late.wav" not in os.listdir(folder)            # the snapshot is fresh for 60 s
    subprocess.run([sys.executable, "-m", "recfs", "refresh", str(folder)], check=True)
    assert "late.wav" in os.listdir(folder)
    assert (folder / "late.wav").read_bytes() == b"late\n"


def test_after_recfs_refresh_a_name_looked_up_before_is_found(emu, mount):
    folder = mount.path / SOURCE / "exports/day"
    assert _errno_of(os.stat, folder / "expected.wav") == errno.ENOENT
    emu.put("exports/day/expected.wav", b"expected\n")
    subprocess.run([sys.executable, "-m", "recfs", "refresh", str(folder)], check=True)
    assert "expected.wav" in os.listdir(folder)
    assert (folder / "expected.wav").stat().st_size == len(b"expected\n")


def test_a_vanished_object_leaves_the_listing_and_its_read_fails_with_a_log_line(emu, mount):
    folder = mount.path / SOURCE / "exports/day"
    (folder / "other.wav").stat()
    del emu.objects["exports/day/other.wav"]
    mark = mount.log_mark()
    got = read_or_errno(folder / "other.wav")
    assert got in (errno.EIO, errno.ENOENT), got
    assert any(" ERROR " in line and "other.wav" in line for line in mount.log_since(mark).splitlines())
    subprocess.run([sys.executable, "-m", "recfs", "refresh", str(folder)], check=True)
    assert "other.wav" not in os.listdir(folder)


def test_listings_older_than_listing_ttl_are_listed_again(emu, tmp_path):
    m = Mount(config_for(emu, tmp_path / "cache", listing_ttl=1.0), tmp_path, "ttl")
    m.start()
    try:
        folder = m.path / SOURCE / "exports/day"
        os.listdir(folder)
        emu.put("exports/day/ttl.wav", b"ttl\n")
        time.sleep(1.5)
        assert "ttl.wav" in os.listdir(folder)
    finally:
        m.unmount()
