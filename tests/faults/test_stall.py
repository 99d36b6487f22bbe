"""Stalls: a server that stops sending without closing. With `[tuning] read_timeout`
short, a stalled transfer is cut, retried and resumed; a server that stalls every
time gives EIO after the configured tries, with a log line."""
from __future__ import annotations

import errno
import os
import subprocess

import pytest

from recfs.emulators.alvaria import AlvariaEmulator
from recfs.emulators.base import Fault, PatternBlob
from tests.faults import SOURCE, Mount, config_for, current_versions, read_or_errno, verify_cache

pytestmark = pytest.mark.e2e

TUNING = "\n[tuning]\nread_timeout = 1.0\nretry_attempts = 3\n"


@pytest.fixture(scope="module")
def emu():
    emu = AlvariaEmulator()
    for i in range(4):
        emu.put(f"stall/s{i}.wav", PatternBlob(60 + i, 500_000 + i))
    with emu:
        yield emu


@pytest.fixture(scope="module")
def mount(emu, tmp_path_factory):
    work = tmp_path_factory.mktemp("stall")
    m = Mount(config_for(emu, work / "cache", extra_text=TUNING), work, "mnt")
    m.start()
    subprocess.run(["ls", "-lR", str(m.path / SOURCE)], check=True, capture_output=True)
    yield m
    emu.faults.clear()
    m.unmount()


def test_a_stall_mid_body_is_cut_by_the_read_timeout_and_resumed(emu, mount):
    key = "stall/s0.wav"
    mark = mount.log_mark()
    fired = emu.faults.fired["stall"]
    emu.faults.add(Fault("stall", route="s3", times=1, after_bytes=100_000, seconds=60))
    assert read_or_errno(mount.path / SOURCE / key) == emu.objects[key].blob.all_bytes()
    assert emu.faults.fired["stall"] - fired == 1
    assert f"{key}: connection broken mid-body; retrying" in mount.log_since(mark)
    verify_cache(mount.config.parent / "cache", current_versions(emu))


def test_a_stalled_listing_is_retried(emu, mount):
    emu.put("stall/later/new.wav", b"new\n")
    os.setxattr(mount.path, "user.recfs.refresh", f"{SOURCE}/stall".encode())
    mark = mount.log_mark()
    fired = emu.faults.fired["stall"]
    emu.faults.add(Fault("stall", route="objectKeys", times=1, after_bytes=0, seconds=60))
    assert [p.name for p in (mount.path / SOURCE / "stall" / "later").iterdir()] == ["new.wav"]
    assert emu.faults.fired["stall"] - fired == 1
    assert "ReadTimeout; retrying" in mount.log_since(mark)


def test_a_server_that_always_stalls_gives_eio_after_the_configured_tries(emu, mount):
    key = "stall/s1.wav"
    mark = mount.log_mark()
    before = emu.count("s3")
    fired = emu.faults.fired["stall"]
    emu.faults.add(Fault("stall", route="s3", times=-1, after_bytes=10_000, seconds=60))
    try:
        assert read_or_errno(mount.path / SOURCE / key) == errno.EIO
    finally:
        emu.faults.clear()
    assert 3 <= emu.count("s3") - before <= 9          # 3 tries a fetch; the kernel may ask twice
    assert emu.faults.fired["stall"] - fired >= 3      # the fetch's 3 tries all stalled
    assert any(" ERROR " in line and key in line and "giving up" in line
               for line in mount.log_since(mark).splitlines())
    assert read_or_errno(mount.path / SOURCE / key) == emu.objects[key].blob.all_bytes()
