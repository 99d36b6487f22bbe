"""Memory stays bounded: the daemon's peak RSS while one 1 GiB file is read, and while
8 files are read in parallel (bytes go from the socket to the cache file, never into
a buffer the size of a file or a window)."""
from __future__ import annotations

import hashlib
import threading

import pytest

from recfs.emulators.alvaria import AlvariaEmulator, source_table
from recfs.emulators.base import PatternBlob
from tests.conftest import toml_config

pytestmark = pytest.mark.e2e

GiB = 1 << 30
LIMIT = 200 * 1000 * 1000


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def md5_of(path, chunk=1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while data := f.read(chunk):
            h.update(data)
    return h.hexdigest()


@pytest.fixture
def emu():
    emu = AlvariaEmulator()
    emu.put("exports/big/one-gib.wav", PatternBlob(11, GiB))
    for i in range(8):
        emu.put(f"exports/par/p{i}.wav", PatternBlob(100 + i, 96 * 1024 * 1024 + i))
    with emu:
        yield emu


def test_peak_rss_stays_under_200_mb_for_a_1_gib_read_and_8_parallel_reads(emu, recfs_mount):
    mnt = recfs_mount(toml_config([source_table(emu, "alv")])) / "alv"
    pid = recfs_mount.mounts[-1].proc.pid
    assert md5_of(mnt / "exports/big/one-gib.wav") == emu.objects["exports/big/one-gib.wav"].blob.md5()
    after_one = peak_rss(pid)
    results = {}

    def read(i):
        results[i] = md5_of(mnt / f"exports/par/p{i}.wav")

    threads = [threading.Thread(target=read, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for i in range(8):
        assert results.get(i) == emu.objects[f"exports/par/p{i}.wav"].blob.md5()
    after_eight = peak_rss(pid)
    print(f"peak RSS: {after_one / 1e6:.0f} MB after 1 GiB, {after_eight / 1e6:.0f} MB after 8 parallel")
    assert after_one < LIMIT, after_one
    assert after_eight < LIMIT, after_eight
