"""Credentials that expire in the middle of a read, and objects that change on the
server under a mounted tree."""
from __future__ import annotations

import errno
import os
import subprocess

import pytest

from recfs.emulators.alvaria import AlvariaEmulator
from recfs.emulators.base import PatternBlob
from tests.faults import (SOURCE, Mount, config_for, current_versions, errno_name, read_or_errno,
                          verify_cache, version_key)

pytestmark = pytest.mark.e2e

BIG = 6 * 1024 * 1024 + 11
SMALL = 200_000


@pytest.fixture(scope="module")
def emu():
    # tokens outlive signed URLs here, so that each can be expired on its own
    emu = AlvariaEmulator(token_ttl=10**7, url_ttl=3600)
    for i in range(4):
        emu.put(f"expiry/big{i}.wav", PatternBlob(300 + i, BIG + i))
    for i in range(4):
        emu.put(f"change/c{i}.wav", PatternBlob(400 + i, SMALL + i))
    with emu:
        yield emu


@pytest.fixture(scope="module")
def mount(emu, tmp_path_factory):
    work = tmp_path_factory.mktemp("expiry")
    m = Mount(config_for(emu, work / "cache"), work, "mnt")
    m.start()
    subprocess.run(["ls", "-lR", str(m.path / SOURCE)], check=True, capture_output=True)
    yield m
    m.unmount()


def _read_across_expiry(emu, path, expire) -> None:
    want = emu.objects[str(path).split(f"/{SOURCE}/", 1)[1]].blob.all_bytes()
    with open(path, "rb", buffering=0) as f:
        head = f.read(256 * 1024)
        expire()
        f.seek(5 * 1024 * 1024)                  # a region nobody fetched yet
        middle = f.read(512 * 1024)
    assert head == want[:256 * 1024]
    assert middle == want[5 * 1024 * 1024:5 * 1024 * 1024 + 512 * 1024]
    assert read_or_errno(path) == want


def test_a_signed_url_expiring_mid_read_is_renewed_transparently(emu, mount):
    path = mount.path / SOURCE / "expiry/big0.wav"
    tokens, urls = emu.count("token"), emu.count("signedUrl")
    _read_across_expiry(emu, path, lambda: emu.advance(2 * 3600))
    assert emu.count("signedUrl") > urls         # a new URL was resolved
    assert emu.count("token") == tokens          # the token was still good


def test_a_token_expiring_mid_read_is_refreshed_transparently(emu, mount):
    path = mount.path / SOURCE / "expiry/big1.wav"
    tokens = emu.count("token")

    def expire_everything():
        emu.tokens.clear()                       # every bearer token is now refused (401)
        emu.advance(2 * 3600)                    # and every signed URL (403)
    _read_across_expiry(emu, path, expire_everything)
    assert emu.count("token") == tokens + 1      # one refresh, shared by all waiting requests


def test_an_object_whose_size_changed_gives_eio_never_wrong_bytes(emu, mount):
    key = "change/c0.wav"
    path = mount.path / SOURCE / key
    old = emu.objects[key]
    assert path.stat().st_size == old.blob.size
    emu.put(key, PatternBlob(999, old.blob.size + 5000), old.mtime + 60)
    mark = mount.log_mark()
    got = read_or_errno(path)
    assert got == errno.EIO, errno_name(got)
    assert any(" ERROR " in line and key in line and f"now {old.blob.size + 5000} bytes" in line
               for line in mount.log_since(mark).splitlines()), mount.log_since(mark)
    versions = current_versions(emu)
    versions[version_key(key, old.blob, old.mtime)] = old.blob
    verify_cache(mount.config.parent / "cache", versions)


def test_after_a_size_change_a_later_stat_shows_the_new_size_and_reads_the_new_bytes(emu, mount):
    key = "change/c1.wav"
    path = mount.path / SOURCE / key
    old = emu.objects[key]
    assert path.stat().st_size == old.blob.size
    new = PatternBlob(998, old.blob.size + 7000)
    emu.put(key, new, old.mtime + 60)
    assert read_or_errno(path) == errno.EIO
    assert path.stat().st_size == new.size
    assert read_or_errno(path) == new.all_bytes()


def test_after_a_size_change_listing_the_folder_shows_the_new_size_and_bytes(emu, mount):
    key = "change/c3.wav"
    path = mount.path / SOURCE / key
    old = emu.objects[key]
    assert path.stat().st_size == old.blob.size
    new = PatternBlob(996, old.blob.size - 9000)
    emu.put(key, new, old.mtime + 60)
    assert read_or_errno(path) == errno.EIO
    os.listdir(path.parent)                      # the folder snapshot was dropped: listed again
    assert path.stat().st_size == new.size
    assert read_or_errno(path) == new.all_bytes()


def test_an_object_replaced_after_a_partial_read_is_never_served_as_a_mix(emu, mount):
    key = "change/c2.wav"
    path = mount.path / SOURCE / key
    old = emu.objects[key]
    with open(path, "rb") as f:
        assert f.read(4096) == old.blob.read(0, 4096)
    new = PatternBlob(997, old.blob.size + 3000)
    emu.put(key, new, old.mtime + 120)
    os.setxattr(mount.path, "user.recfs.refresh", f"{SOURCE}/change".encode())
    os.listdir(path.parent)
    got = read_or_errno(path)
    assert got in (new.all_bytes(), errno.EIO), \
        f"neither the new content nor EIO: {errno_name(got)}, old head: {got[:4096] == old.blob.read(0, 4096)}"
