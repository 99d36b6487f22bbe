"""Every byte of a read is of one version of the object (I6 in cache.py, R1 in
reader.py), through a real mount, for every provider: a recording replaced on the
service by other bytes of the same size, while parts of it are cached, reads as the
old bytes, the new bytes or EIO, never a mix; once the listing shows the new version,
it reads as the new bytes."""
from __future__ import annotations

import errno
import os

import pytest

from recfs.emulators.base import PatternBlob
from tests.conformance.providers import FILES, HARNESSES, replace
from tests.conftest import toml_config

MiB = 1 << 20
NAME = "e-long.mp3"


@pytest.fixture(params=sorted(HARNESSES))
def harness(request):
    h = HARNESSES[request.param]()
    yield h
    h.emu.stop()


def read_parts(path, *offsets) -> None:
    with open(path, "rb", buffering=0) as f:
        for offset in offsets:
            f.seek(offset)
            f.read(MiB)


def read_whole(path) -> bytes | int:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        return exc.errno


def refresh(mnt, folder) -> None:
    os.setxattr(mnt, "user.recfs.refresh", str(folder.relative_to(mnt)).encode())


def test_a_recording_replaced_by_other_bytes_of_its_size_never_reads_as_a_mix(harness, recfs_mount):
    mnt = recfs_mount(toml_config([harness.table]))
    folder = mnt.joinpath("src", *harness.folder)
    path = folder / NAME
    old = harness.expected(NAME)
    assert os.path.getsize(path) == len(old)
    read_parts(path, 0, len(old) // 2)                  # parts of the old version cached
    replace(harness, NAME, PatternBlob(999, FILES[NAME]))
    new = harness.expected(NAME)
    assert new != old and len(new) == len(old)
    got = read_whole(path)
    assert got in (old, new, errno.EIO), "a mix of two versions"
    refresh(mnt, folder)                                # the listing shows the new version
    assert read_whole(path) == new
    assert read_whole(path) == new                      # and the kernel keeps no old page


def test_a_file_opened_before_a_replacement_fails_rather_than_mixing(harness, recfs_mount):
    """An open file that handed out bytes of the old version gets EIO for any byte it
    would have to fetch of the new one; a file opened afterwards starts on the new one."""
    if harness.kind == "oce":
        pytest.skip("OCE reads pin the version in the URL: an open file reads its version whole")
    mnt = recfs_mount(toml_config([harness.table]))
    path = mnt.joinpath("src", *harness.folder, NAME)
    old = harness.expected(NAME)
    with open(path, "rb", buffering=0) as f:
        # no kernel readahead, and a small first read: recfs's own read-ahead stays
        # within the first MiB, so the bytes at 4 MiB can only come after the replacement
        # (had they been fetched before, the old version's bytes would be the right answer)
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
        assert f.read(64 << 10) == old[:64 << 10]
        replace(harness, NAME, PatternBlob(998, FILES[NAME]))
        f.seek(4 * MiB)
        with pytest.raises(OSError) as failure:
            f.read(MiB)
        assert failure.value.errno == errno.EIO
    assert read_whole(path) == harness.expected(NAME)
