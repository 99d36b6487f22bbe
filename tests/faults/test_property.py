"""Property: whatever the fault schedule (within the retry bound), concurrent random
reads through the mount return exactly the source's bytes, and the cache holds
only right bytes."""
from __future__ import annotations

import collections
import itertools
import os
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recfs.content.cache import CHUNK
from recfs.emulators.alvaria import AlvariaEmulator
from recfs.emulators.base import Fault, PatternBlob
from tests.faults import SOURCE, Mount, config_for, current_versions, errno_name, verify_cache

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def emu():
    emu = AlvariaEmulator()
    emu.put("prop/seed.wav", b"x")
    with emu:
        yield emu


@pytest.fixture(scope="module")
def mount(emu, tmp_path_factory):
    work = tmp_path_factory.mktemp("property")
    m = Mount(config_for(emu, work / "cache"), work, "mnt")
    m.start()
    os.listdir(m.path / SOURCE / "prop")
    yield m
    m.unmount()


sizes = st.one_of(st.sampled_from([0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 4 * MiB, 4 * MiB + 1]),
                  st.integers(0, 5 * MiB))

fault = st.one_of(
    st.builds(lambda status, times: Fault("status", route="s3", status=status, times=times),
              st.sampled_from([429, 500, 502, 503]), st.integers(1, 2)),
    st.builds(lambda kind, times, after: Fault(kind, route="s3", times=times, after_bytes=after),
              st.sampled_from(["reset", "truncate"]), st.integers(1, 2), st.integers(0, 300_000)),
    st.builds(lambda times: Fault("ignore_range", route="s3", times=times), st.integers(1, 3)),
    st.builds(lambda: Fault("delay", route="s3", times=1, seconds=0.3)),
)

# no request can meet more failures than the retry policy allows (6 tries)
schedules = st.lists(fault, max_size=4).filter(
    lambda fs: sum(f.times for f in fs if f.kind not in ("ignore_range", "delay")) <= 4)

reads = st.lists(st.tuples(st.integers(0, 2), st.floats(0, 1), st.integers(1, 2 * MiB)),
                 min_size=1, max_size=10)

_examples = itertools.count()


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(file_sizes=st.lists(sizes, min_size=1, max_size=3), schedule=schedules, reads=reads,
       threads=st.integers(1, 4), expire_midway=st.booleans())
def test_random_reads_under_random_faults_return_the_source_bytes(
        emu, mount, file_sizes, schedule, reads, threads, expire_midway):
    n = next(_examples)
    folder = f"prop/e{n}"
    keys = [f"{folder}/f{i}.wav" for i in range(len(file_sizes))]
    for i, (key, size) in enumerate(zip(keys, file_sizes)):
        emu.put(key, PatternBlob(n * 10 + i, size))
    os.setxattr(mount.path, "user.recfs.refresh", f"{SOURCE}/prop".encode())
    for key in keys:                              # sizes learnt before the faults are armed
        assert (mount.path / SOURCE / key).stat().st_size == emu.objects[key].blob.size
    fired = collections.Counter(emu.faults.fired)
    for f in schedule:
        emu.faults.add(f)
    if expire_midway:
        emu.advance(2 * 3600)                     # signed URLs and tokens all expire

    plan = [(keys[i % len(keys)], frac, length) for i, frac, length in reads]
    failures: list[str] = []

    def worker(part):
        for key, frac, length in part:
            blob = emu.objects[key].blob
            offset = int(frac * blob.size)
            try:
                fd = os.open(mount.path / SOURCE / key, os.O_RDONLY)
                try:
                    got = os.pread(fd, length, offset)
                finally:
                    os.close(fd)
            except OSError as exc:
                failures.append(f"{key} @{offset}+{length}: {errno_name(exc.errno)}")
                continue
            if got != blob.read(offset, length):
                failures.append(f"{key} @{offset}+{length}: wrong bytes")

    workers = [threading.Thread(target=worker, args=(plan[i::threads],), daemon=True)
               for i in range(threads)]
    try:
        for t in workers:
            t.start()
        for t in workers:
            t.join(60)
        assert not any(t.is_alive() for t in workers), "a reader hung"
        assert not failures, failures
        # the first read that needs the service meets the first fault armed (a file of
        # one byte came whole with its size probe, so reading it asks nothing)
        fetches = any(emu.objects[key].blob.size > 1 and int(frac * emu.objects[key].blob.size)
                      < emu.objects[key].blob.size for key, frac, _ in plan)
        if schedule and fetches:
            kind = schedule[0].kind
            assert emu.faults.fired[kind] > fired[kind], (schedule, emu.faults.fired, fired)
    finally:
        emu.faults.clear()
    verify_cache(mount.config.parent / "cache", current_versions(emu), only=folder + "/")


def test_zz_after_the_property_run_the_whole_cache_is_right(emu, mount):
    mount.unmount()
    verify_cache(mount.config.parent / "cache", current_versions(emu))
