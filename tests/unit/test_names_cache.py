"""Safe names, and the cache's invariants (driven without a mount)."""
from __future__ import annotations

import os
import unicodedata

from recfs.content.cache import CHUNK, Cache
from recfs.names import clean, unique_names


def test_hostile_names_become_safe_distinct_and_stable():
    items = [("a/b", "1"), ("a\x00b", "2"), (".", "3"), ("..", "4"), ("", "5"),
             ("x" * 300 + ".wav", "6"), ("dup.wav", "7"), ("dup.wav", "8"), ("Case.wav", "9"),
             ("case.wav", "10"), (unicodedata.normalize("NFC", "é.wav"), "11"),
             (unicodedata.normalize("NFD", "é.wav"), "12")]
    names = unique_names(items)
    assert len(set(names)) == len(names)
    for n in names:
        assert "/" not in n and "\x00" not in n and n not in ("", ".", "..")
        assert len(n.encode()) <= 255
    assert names[0] == "a\u2215b" and names[2] == "_." and names[3] == "_.." and names[4] == "_"
    assert names[5].endswith(".wav")
    assert names[6] != names[7] and names[6].endswith(".wav") and names[6].startswith("dup ~")
    assert names[8] == "Case.wav" and names[9] == "case.wav"
    # stable: same result in another order
    again = unique_names(list(reversed(items)))
    assert list(reversed(again)) == names
    assert clean("ok.wav") == "ok.wav"


def test_cache_marks_only_written_chunks_and_survives_reopen(tmp_path):
    c = Cache(tmp_path, max_size=1 << 30)
    e = c.entry("k@1", 3 * CHUNK + 10)
    e.write(0, b"a" * CHUNK)
    e.mark(0, 0)
    e.write(CHUNK, b"b" * 100)            # written but not marked: not present
    assert e.has(0, CHUNK) and not e.has(0, CHUNK + 1)
    c.close()
    c = Cache(tmp_path, max_size=1 << 30)
    e = c.entry("k@1", 3 * CHUNK + 10)
    assert e.has(0, CHUNK) and not e.has_chunk(1)
    assert e.read(0, 4) == b"aaaa"
    assert c.total == CHUNK


def test_unflushed_marks_are_lost_not_invented(tmp_path):
    c = Cache(tmp_path, max_size=1 << 30)
    e = c.entry("k@1", CHUNK * 2)
    e.write(0, b"z" * CHUNK)
    e.mark(0, 0)
    # no flush: a crash now must not leave the chunk marked in the index
    c2 = Cache(tmp_path, max_size=1 << 30)
    assert not c2.entry("k@1", CHUNK * 2).has_chunk(0)


def test_a_damaged_data_file_resets_the_entry(tmp_path):
    c = Cache(tmp_path, max_size=1 << 30)
    e = c.entry("k@1", CHUNK * 2)
    e.write(0, b"q" * CHUNK * 2)
    e.mark(0, 1)
    c.close()
    os.truncate(c.data_path("k@1"), 10)
    c = Cache(tmp_path, max_size=1 << 30)
    assert not c.entry("k@1", CHUNK * 2).has_chunk(0)


def test_lru_eviction_spares_pinned_entries(tmp_path):
    c = Cache(tmp_path, max_size=3 * CHUNK)
    a = c.pin("a", CHUNK)
    a.write(0, b"a" * CHUNK); a.mark(0, 0)
    b = c.entry("b", CHUNK)
    b.write(0, b"b" * CHUNK); b.mark(0, 0)
    d = c.entry("d", CHUNK)
    d.write(0, b"d" * CHUNK); d.mark(0, 0)
    c.reserve(2 * CHUNK)                  # must evict b and d, never the pinned a
    assert c.entry("a", CHUNK).complete
    assert c.total <= CHUNK
    assert c.evictions == 2
    assert stat_mode(tmp_path) == 0o700


def test_store_file_adopts_a_verified_file(tmp_path):
    c = Cache(tmp_path, max_size=1 << 30)
    staged = c.staging_dir / "x"
    staged.write_bytes(b"hello" * 1000)
    c.store_file("f@1", 5000, staged)
    assert not staged.exists()
    assert c.has_whole("f@1", 5000)
    assert c.entry("f@1", 5000).read(0, 5) == b"hello"
    assert oct(os.stat(c.data_path("f@1")).st_mode & 0o777) == oct(0o600)


def test_adopt_takes_a_probed_file_unsynced_and_never_replaces_what_is_known(tmp_path):
    c = Cache(tmp_path, max_size=1 << 30)
    data = os.urandom(CHUNK + 1000)
    probed = c.staging_path("probe-")
    probed.write_bytes(data)
    assert c.adopt("f@1", len(data), probed)
    assert not probed.exists() and c.has_whole("f@1", len(data))
    assert c.entry("f@1", len(data)).read(0, len(data)) == data
    # I2: nothing reaches the index before the flusher synced the file
    assert not Cache(tmp_path, max_size=1 << 30).has_whole("f@1", len(data))
    c.flush()
    assert Cache(tmp_path, max_size=1 << 30).has_whole("f@1", len(data))
    # a key the cache knows keeps its bytes; the probed file is dropped
    other = c.staging_path("probe-")
    other.write_bytes(b"x" * len(data))
    assert not c.adopt("f@1", len(data), other)
    assert not other.exists()
    assert c.entry("f@1", len(data)).read(0, 10) == data[:10]


def test_adopt_takes_the_whole_chunks_of_a_file_holding_only_the_start(tmp_path):
    c = Cache(tmp_path, max_size=1 << 30)
    size = 3 * CHUNK + 10
    data = os.urandom(size)
    probed = c.staging_path("probe-")
    probed.write_bytes(data[:CHUNK + 1000])             # a probe brought the first bytes only
    assert c.adopt("f@1", size, probed, CHUNK + 1000)
    assert not probed.exists()
    e = c.entry("f@1", size)
    assert e.has(0, CHUNK) and not e.has_chunk(1)       # the part of chunk 1 does not count
    assert e.present == CHUNK == c.total and not e.complete
    assert e.read(0, CHUNK) == data[:CHUNK]
    # I2: its bits reach the index only after the flusher synced the file
    assert not Cache(tmp_path, max_size=1 << 30).entry("f@1", size).has_chunk(0)
    c.flush()
    c2 = Cache(tmp_path, max_size=1 << 30)
    assert c2.entry("f@1", size).has(0, CHUNK) and not c2.entry("f@1", size).has_chunk(1)
    # the rest arrives the usual way, and completes the entry
    e.write(CHUNK, data[CHUNK:])
    e.mark(1, 3)
    assert e.complete and e.read(0, size) == data


def test_adopt_drops_a_start_without_a_whole_chunk(tmp_path):
    c = Cache(tmp_path, max_size=1 << 30)
    probed = c.staging_path("probe-")
    probed.write_bytes(b"x" * (CHUNK - 1))
    assert not c.adopt("f@1", 2 * CHUNK, probed, CHUNK - 1)
    assert not probed.exists() and "f@1" not in c.entries and c.total == 0
    # a small file is one chunk: all of it counts
    small = c.staging_path("probe-")
    small.write_bytes(b"y" * 100)
    assert c.adopt("s@1", 100, small, 100) and c.has_whole("s@1", 100)
    # a length past the size counts as the whole file
    whole = c.staging_path("probe-")
    whole.write_bytes(b"z" * (CHUNK + 5))
    assert c.adopt("w@1", CHUNK + 5, whole, 4 << 20) and c.has_whole("w@1", CHUNK + 5)


def stat_mode(p):
    return os.stat(p).st_mode & 0o777


def test_a_full_disk_evicts_and_retries_once(tmp_path, monkeypatch):
    import errno as errno_
    c = Cache(tmp_path, max_size=1 << 30)
    old = c.entry("old", CHUNK)
    old.write(0, b"o" * CHUNK); old.mark(0, 0)
    new = c.pin("new", CHUNK)
    real_pwrite = os.pwrite
    calls = {"n": 0}

    def full_once(fd, data, offset):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno_.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full_once)
    new.write(0, b"n" * CHUNK)
    assert c.evictions == 1 and not c.entry("old", CHUNK).has_chunk(0)
    monkeypatch.setattr(os, "pwrite", lambda *a: (_ for _ in ()).throw(OSError(errno_.ENOSPC, "full")))
    import pytest
    with pytest.raises(OSError):
        new.write(0, b"n" * 10)


def test_a_chunk_whose_sync_failed_is_not_recorded(tmp_path, monkeypatch):
    c = Cache(tmp_path, max_size=1 << 30)
    e = c.entry("k@1", CHUNK)
    e.write(0, b"s" * CHUNK)
    e.mark(0, 0)

    def failing(fd):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(os, "fdatasync", failing)
    c.flush()
    assert e.dirty                                 # kept for the next round
    assert not Cache(tmp_path, max_size=1 << 30).entry("k@1", CHUNK).has_chunk(0)
    monkeypatch.undo()
    c.flush()
    assert Cache(tmp_path, max_size=1 << 30).entry("k@1", CHUNK).has_chunk(0)


def test_a_flush_starts_every_files_writeback_before_it_waits_for_any(tmp_path, monkeypatch):
    from recfs.content import cache as cache_module
    assert cache_module._sync_file_range is not None      # Linux with glibc, as here
    c = Cache(tmp_path, max_size=1 << 30)
    for i in range(3):
        e = c.entry(f"k{i}@1", CHUNK)
        e.write(0, bytes([i]) * CHUNK)
        e.mark(0, 0)
    calls = []
    real_range, real_sync = cache_module._sync_file_range, os.fdatasync
    monkeypatch.setattr(cache_module, "_sync_file_range",
                        lambda fd, *a: (calls.append("start"), real_range(fd, *a))[1])
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append("wait"), real_sync(fd))[1])
    c.flush()
    assert calls == ["start"] * 3 + ["wait"] * 3
    reopened = Cache(tmp_path, max_size=1 << 30)
    assert all(reopened.has_whole(f"k{i}@1", CHUNK) for i in range(3))


def test_the_flusher_records_only_entries_dirty_for_sync_after_seconds(tmp_path):
    c = Cache(tmp_path, max_size=1 << 30, sync_after=30.0)
    young = c.entry("young", CHUNK)
    young.write(0, b"y" * CHUNK); young.mark(0, 0)
    old = c.entry("old", CHUNK)
    old.write(0, b"o" * CHUNK); old.mark(0, 0)
    old.dirty_since -= 31
    c.flush(min_age=c.sync_after)   # the flusher's round
    reopened = Cache(tmp_path, max_size=1 << 30)
    assert reopened.has_whole("old", CHUNK) and not reopened.has_whole("young", CHUNK)
    assert c.dirty == {young}
    c.flush()                   # unmount: everything, whatever its age
    assert Cache(tmp_path, max_size=1 << 30).has_whole("young", CHUNK)


def test_eviction_syncs_nothing_and_takes_recorded_entries_first(tmp_path, monkeypatch):
    c = Cache(tmp_path, max_size=3 * CHUNK)
    a = c.entry("a", CHUNK)
    a.write(0, b"a" * CHUNK); a.mark(0, 0)
    b = c.entry("b", 2 * CHUNK)
    b.write(0, b"b" * CHUNK); b.mark(0, 0)
    c.flush()
    b.read(0, 1)                                # "b" used more recently than "a"
    b.write(CHUNK, b"B" * CHUNK); b.mark(1, 1)  # and grown since it was recorded
    u = c.entry("u", CHUNK)
    u.write(0, b"u" * CHUNK); u.mark(0, 0)      # never recorded
    syncs = []
    real_fdatasync = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (syncs.append(fd), real_fdatasync(fd)))
    assert c.total == 4 * CHUNK
    c.reserve(0)
    assert [c.has_whole(k, n) for k, n in (("a", CHUNK), ("b", 2 * CHUNK), ("u", CHUNK))] == [False, True, True]
    assert c.total == 3 * CHUNK
    c.max_size = CHUNK
    c.reserve(0)                                # "b" goes with all it holds, recorded or not
    assert not c.has_whole("b", 2 * CHUNK) and c.has_whole("u", CHUNK)
    assert c.total == CHUNK
    c.max_size = 0
    c.reserve(0)                                # then the unrecorded entry
    assert c.total == 0 and c.evictions == 3 and syncs == []
    assert not any(p.is_file() for p in (tmp_path / "data").rglob("*"))
