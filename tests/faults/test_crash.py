"""The daemon killed with SIGKILL in the middle of downloads: the next `recfs mount`
clears the dead mount, and the cache it inherits holds only right bytes."""
from __future__ import annotations

import signal
import sqlite3
import threading

import pytest

from recfs.emulators.alvaria import AlvariaEmulator
from recfs.emulators.base import PatternBlob, WanProfile
from tests.faults import (SOURCE, config_for, current_versions, read_or_errno, verify_cache,
                          wait_for)

pytestmark = pytest.mark.e2e

FILES = {f"calls/long-{i}.wav": 8 * 1024 * 1024 + 1000 * i for i in range(6)}


def _persisted_bytes(cache_dir) -> int:
    try:
        db = sqlite3.connect(f"file:{cache_dir / 'index.sqlite'}?mode=ro", uri=True)
        try:
            return db.execute("SELECT COALESCE(SUM(present), 0) FROM entries").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def test_sigkill_during_downloads_then_remount_serves_every_byte_right(recfs_mount, tmp_path):
    emu = AlvariaEmulator()
    for i, (key, size) in enumerate(FILES.items()):
        emu.put(key, PatternBlob(500 + i, size))
    cache_dir = tmp_path / "shared-cache"
    with emu:
        # synced and recorded a second after arriving, so that the kill finds some recorded
        cfg = config_for(emu, cache_dir, cache={"sync_after": 0})
        mnt = recfs_mount(cfg, name="crash") / SOURCE
        first = recfs_mount.mounts[-1]
        for key in FILES:
            (mnt / key).stat()
        emu.wan = WanProfile(latency_s=0.0, bytes_per_s=1e6)    # slow enough to be caught midway
        outcomes: dict[str, object] = {}

        def read(key):
            outcomes[key] = read_or_errno(mnt / key)

        readers = [threading.Thread(target=read, args=(k,), daemon=True) for k in FILES]
        for t in readers:
            t.start()
        # kill once part of the content is durable in the index and the rest is in flight
        assert wait_for(lambda: _persisted_bytes(cache_dir) > 1024 * 1024, timeout=30)
        assert len(outcomes) < len(FILES), "every download finished before the kill"
        first.kill(signal.SIGKILL)
        for t in readers:
            t.join(20)
            assert not t.is_alive(), "a reader hung on the dead mount"
        emu.wan = None

        # what the killed daemon left behind is right, as far as its index says
        verify_cache(cache_dir, current_versions(emu))
        left = _persisted_bytes(cache_dir)
        assert left > 0

        again = recfs_mount(cfg, name="crash") / SOURCE
        assert again == mnt
        assert "stale mount" in recfs_mount.mounts[-1].log_text()
        before = emu.bytes_sent
        for key in FILES:
            assert read_or_errno(again / key) == emu.objects[key].blob.all_bytes(), key
        # what survived was reused (the slack: answers the emulator was still sending
        # to the killed daemon)
        assert emu.bytes_sent - before <= sum(FILES.values()) - left + 1024 * 1024
        recfs_mount.mounts[-1].unmount()
        assert verify_cache(cache_dir, current_versions(emu)) >= sum(FILES.values()) // (256 * 1024)
