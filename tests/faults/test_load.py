"""Load with faults: 16 parallel readers over 200 files while the storage throws
errors and breaks connections at random. Every byte right, no reader hangs, and the
daemon leaks neither file descriptors nor connections."""
from __future__ import annotations

import collections
import os
import queue
import random
import subprocess
import threading
import time

import pytest

from recfs.config import TUNING_KEYS
from recfs.emulators.alvaria import AlvariaEmulator
from recfs.emulators.base import Fault, PatternBlob
from tests.faults import (SOURCE, Mount, config_for, current_versions, errno_name, established_to,
                          fd_targets, forget_pages, verify_cache, wait_for)

pytestmark = pytest.mark.e2e

READERS = 16
POOL = TUNING_KEYS["max_connections"].default    # pooled keep-alive connections are fine


def _files() -> dict[str, int]:
    rng = random.Random(7)
    files = {}
    for i in range(200):
        size = rng.choice([rng.randint(0, 4096), rng.randint(10_000, 600_000),
                           rng.randint(10_000, 600_000)])
        if i % 20 == 0:
            size = 4 * 1024 * 1024 + rng.randint(1, 1024 * 1024)   # ranged reads with windows
        files[f"load/day{i % 10}/call-{i:03d}.wav"] = size
    return files


def _non_socket_fds(pid: int) -> list[str]:
    return sorted(t for t in fd_targets(pid) if not t.startswith(("socket:", "anon_inode:", "pipe:")))


def test_sixteen_readers_over_two_hundred_files_with_faults(tmp_path):
    emu = AlvariaEmulator(fault_seed=11)
    files = _files()
    for i, (key, size) in enumerate(files.items()):
        emu.put(key, PatternBlob(7000 + i, size))
    with emu:
        m = Mount(config_for(emu, tmp_path / "cache"), tmp_path, "mnt")
        m.start()
        try:
            root = m.path / SOURCE
            subprocess.run(["ls", "-lR", str(root)], check=True, capture_output=True)
            time.sleep(1.5)                            # let the index flusher settle
            fds_before = _non_socket_fds(m.pid)
            # about one storage request in twelve fails; six in a row (EIO) is ~1e-7
            for f in (Fault("status", route="s3", status=503, times=-1, probability=0.025),
                      Fault("status", route="s3", status=429, times=-1, probability=0.02),
                      Fault("reset", route="s3", times=-1, after_bytes=40_000, probability=0.02),
                      Fault("truncate", route="s3", times=-1, after_bytes=5_000, probability=0.02)):
                emu.faults.add(f)

            work: queue.Queue = queue.Queue()
            for key in files:
                work.put(key)
            for key in list(files)[::5]:               # a second pass over some, from the cache
                work.put(key)
            errors: list[str] = []
            peak_connections = [0]

            def reader(index):
                rng = random.Random(index)
                while True:
                    try:
                        key = work.get_nowait()
                    except queue.Empty:
                        return
                    path = root / key
                    want = emu.objects[key].blob
                    try:
                        with open(path, "rb", buffering=0) as f:
                            if index % 4 == 0 and want.size > 0:     # a random reader
                                for _ in range(5):
                                    off = rng.randrange(want.size)
                                    got = os.pread(f.fileno(), 65536, off)
                                    if got != want.read(off, 65536):
                                        errors.append(f"{key} @{off}: wrong bytes")
                            elif f.read() != want.all_bytes():
                                errors.append(f"{key}: wrong bytes")
                        forget_pages(path)                  # a re-read must reach the daemon
                    except OSError as exc:
                        errors.append(f"{key}: {errno_name(exc.errno)}")
                    peak_connections[0] = max(peak_connections[0], established_to(m.pid, emu.port))

            threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(READERS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(150)
            assert not [t for t in threads if t.is_alive()], "hung readers"
            assert not errors, errors[:10]
            assert sum(emu.faults.fired.values()) > 10        # the faults did happen
            # each of the four did (the two status faults told apart by their answers)
            assert emu.faults.fired["reset"] >= 1 and emu.faults.fired["truncate"] >= 1, emu.faults.fired
            answered = collections.Counter(status for _, p, status in list(emu.log) if p.startswith("/s3/"))
            assert answered[503] >= 1 and answered[429] >= 1, answered
            emu.faults.clear()

            assert peak_connections[0] <= POOL
            # open cache files are closed once their readers are gone and the index is flushed
            assert wait_for(lambda: _non_socket_fds(m.pid) == fds_before, timeout=5), \
                (fds_before, _non_socket_fds(m.pid))
            assert established_to(m.pid, emu.port) <= POOL
            sockets = sum(t.startswith("socket:") for t in fd_targets(m.pid))
            assert sockets <= POOL + 4
        finally:
            m.unmount()
        assert verify_cache(tmp_path / "cache", current_versions(emu)) > 0
