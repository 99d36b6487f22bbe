"""The on-disk content cache: one sparse data file per object@version, a chunk bitmap
per file saying which bytes are present, an LRU byte quota and a free-space floor.

Layout under the cache directory (0700; files 0600):
  index.sqlite         entries(key, size, bitmap, present, last_used) and sizes(key, size)
  data/ab/<sha256>     sparse data files, named after the hash of the key
  staging/             temporary files (bulk zips, members being verified)

Invariants (what makes the cache crash-safe; the tests check each):
 I1. A chunk's bit is set in memory only after all of its bytes were written to the
     data file (pwrite returned). Readers serve a range only when all its bits are set.
 I2. A bit reaches index.sqlite only after the data file was fdatasync'ed following
     those writes. A crash (kill -9, power loss) can lose bits, which only costs a
     refetch; it can never leave a bit set for bytes that are not on disk.
     The flusher syncs an entry once it has been dirty for `sync_after` seconds (30 by
     default, the age at which the kernel writes dirty pages back by itself), so a
     burst of downloads is not forced onto the disk while it runs (a copy that syncs
     as it goes writes the cache to disk during the copy, and runs slower). The price
     is that a crash forgets up to that many seconds of downloads.
 I3. A data file is deleted only after its row is gone from the index, and never
     while a reader holds the entry (pinned).
 I4. Bytes enter the cache only through `CacheEntry.write` followed by `mark` for
     whole chunks, `store_file` for a complete file that its producer verified, or
     `adopt` for the start of a file that a size probe wrote into staging/ (only its
     whole chunks count; its entry starts dirty, so its bits reach the index only
     after the flusher's fdatasync: I2).
 I5. Evicting needs no sync: an entry whose bits never reached the index is deleted
     like any other (row first, if it has an old one: I3). Entries already recorded
     go first, least recently used first; the ones not yet recorded (the newest
     downloads) only when no recorded one can go.
 I6. An entry's bytes are all of one version of its object: the validator of the first
     answer (ETag, else Last-Modified) is kept with the entry, every later GET asks for
     that version and checks the answer's, and an entry that meets another version is
     reset (every byte dropped) before any byte of the other version enters it.
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import logging
import os
import shutil
import sqlite3
import time
from pathlib import Path

import trio

from ..config import SYNC_AFTER  # noqa: F401 (the default of sync_after, I2; re-exported)
from ..http import Validator

log = logging.getLogger("recfs.cache")
SIZES_PER_QUERY = 500       # keys in one `known_sizes` statement (SQLite allows 32,766)

SYNC_FILE_RANGE_WRITE = 2
try:
    _sync_file_range = ctypes.CDLL(None).sync_file_range
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
except (OSError, AttributeError):      # not glibc on Linux: fdatasync alone
    _sync_file_range = None

CHUNK = 256 * 1024
MAX_LOADED = 4096        # cache entries kept in memory beyond those in use


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _on_trio_thread(fn, *args):
    """Call `fn` on the trio thread: writes may come from a worker thread (rangeget),
    while the cache's bookkeeping belongs to the trio thread."""
    if not trio.lowlevel.in_trio_run():
        try:
            return trio.from_thread.run_sync(fn, *args)
        except RuntimeError as exc:
            if "Trio" not in str(exc) and "trio" not in str(exc):
                raise
            # not a thread trio started (a plain synchronous caller): call it here
    return fn(*args)


def _start_writeback(fds: list[int]) -> None:
    """Ask the kernel to start writing every file back at once: the fdatasyncs that
    follow then wait for writes already in flight together, not one file after another
    (at unmount, the last 30 s of downloads: 2,000 files took 2.1 s one by one)."""
    if _sync_file_range is None:
        return
    for fd in fds:
        _sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)     # a failure: fdatasync reports it


def _sync_all(fds: list[int]) -> list[bool]:
    _start_writeback(fds)
    synced = []
    for fd in fds:
        try:
            os.fdatasync(fd)
            synced.append(True)
        except OSError as exc:
            log.warning("cache: fdatasync failed: %s", exc.strerror)
            synced.append(False)
        finally:
            os.close(fd)
    return synced


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _bitmap_bytes(size: int) -> int:
    return ((size + CHUNK - 1) // CHUNK + 7) // 8


def _pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        offset += n
        view = view[n:]


def _in_data_dir(path: Path, make):
    """`make()` creates `path` in data/ab/; that folder is made on first need only (one
    mkdir per 256th file would cost every file a syscall)."""
    try:
        return make()
    except FileNotFoundError:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        return make()


class StagedFile:
    """A file written into staging/ (by one worker thread at a time, as a fetch's
    sink), then moved into the cache by `Cache.adopt` or dropped by `discard`."""

    def __init__(self, path: Path):
        self.path = path
        self._fd = -1

    def write(self, offset: int, data) -> None:
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        _pwrite_all(self._fd, data, offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def discard(self) -> None:
        self.close()
        _unlink(self.path)


class CacheEntry:
    """The cached state of one object@version. `validator` says which version of the
    object its bytes are of (I6); `changes` counts the times another version was met."""

    def __init__(self, cache: "Cache", key: str, size: int, bitmap: bytearray, present: int,
                 last_used: float, validator: str = ""):
        self.cache = cache
        self.key = key
        self.size = size
        self.nchunks = (size + CHUNK - 1) // CHUNK
        self.bitmap = bitmap
        self.present = present          # bytes present (whole chunks, the last one exact)
        self.last_used = last_used
        self.pins = 0
        self.dirty = False              # bits set since the last flush
        self.dirty_since = 0.0          # monotonic time it became dirty
        self.generation = 0             # bumped by reset(): older snapshots are void
        self.evicted = False
        self.validator = Validator(validator)
        self.changes = 0
        self.path = cache.data_path(key)
        self._fd: int | None = None

    # -- chunk arithmetic
    def chunk_len(self, index: int) -> int:
        return min(CHUNK, self.size - index * CHUNK)

    def has_chunk(self, index: int) -> bool:
        return bool(self.bitmap[index >> 3] & (1 << (index & 7)))

    def has(self, start: int, end: int) -> bool:
        """True when bytes [start, end) are all present."""
        if end <= start:
            return True
        for i in range(start // CHUNK, (end - 1) // CHUNK + 1):
            if not self.bitmap[i >> 3] & (1 << (i & 7)):
                return False
        return True

    @property
    def complete(self) -> bool:
        return self.present >= self.size

    def missing(self, first: int, last: int) -> list[int]:
        """Indices of absent chunks in [first, last]."""
        return [i for i in range(first, min(last, self.nchunks - 1) + 1) if not self.has_chunk(i)]

    # -- I/O
    @property
    def fd(self) -> int:
        if self._fd is None:
            self._fd = _in_data_dir(self.path, lambda: os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        return self._fd

    def close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def read(self, offset: int, length: int) -> bytes:
        if not self.dirty:
            self.cache.touched.add(self)
        return os.pread(self.fd, length, offset)

    def write(self, offset: int, data: bytes) -> None:
        """Write fetched bytes; they count as present only once `mark`ed (I1).
        Safe to call from a worker thread while the entry is pinned.

        A full disk evicts least recently used entries and tries once more; then the
        error propagates and the fetch fails (EIO for its readers, with a log line)."""
        try:
            _pwrite_all(self.fd, data, offset)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            freed = _on_trio_thread(self.cache.evict_bytes, max(len(data), 64 << 20))
            log.warning("cache: disk full; evicted %d bytes and trying again", freed)
            _pwrite_all(self.fd, data, offset)

    def mark(self, first: int, last: int) -> None:
        """Chunks first..last (inclusive) are fully written."""
        for i in range(first, last + 1):
            byte, bit = i >> 3, 1 << (i & 7)
            if not self.bitmap[byte] & bit:
                self.bitmap[byte] |= bit
                n = self.chunk_len(i)
                self.present += n
                self.cache.total += n
                self.make_dirty()

    def make_dirty(self) -> None:
        if not self.dirty:
            self.dirty = True
            self.dirty_since = time.monotonic()
        self.cache.dirty.add(self)

    def reset(self) -> None:
        """Forget every byte (the data did not verify, or the object changed) and the
        version they were of."""
        self.cache.total -= self.present
        self.present = 0
        self.bitmap = bytearray(len(self.bitmap))
        self.generation += 1
        self.validator = Validator()
        self.make_dirty()
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass


class Cache:
    def __init__(self, directory: Path, max_size: int, min_free: int = 0, sync_after: float = SYNC_AFTER):
        self.dir = Path(directory)
        self.max_size = max_size
        self.min_free = min_free
        self.sync_after = sync_after
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self.staging_dir = self.dir / "staging"
        shutil.rmtree(self.staging_dir, ignore_errors=True)   # leftovers of a crash
        self.staging_dir.mkdir(mode=0o700, exist_ok=True)
        (self.dir / "data").mkdir(mode=0o700, exist_ok=True)
        index = self.dir / "index.sqlite"
        self.db = sqlite3.connect(index, isolation_level=None, check_same_thread=False)
        os.chmod(index, 0o600)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, size INTEGER, "
                        "bitmap BLOB, present INTEGER, last_used REAL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS sizes (key TEXT PRIMARY KEY, size INTEGER)")
        if "validator" not in {row[1] for row in self.db.execute("PRAGMA table_info(entries)")}:
            self.db.execute("ALTER TABLE entries ADD COLUMN validator TEXT NOT NULL DEFAULT ''")
        self.total = self.db.execute("SELECT COALESCE(SUM(present), 0) FROM entries").fetchone()[0]
        self.entries: dict[str, CacheEntry] = {}
        self.dirty: set[CacheEntry] = set()
        self.touched: set[CacheEntry] = set()     # read since the last flush (LRU order)
        self.evictions = 0
        self._staged = 0

    def data_path(self, key: str) -> Path:
        h = key_hash(key)
        return self.dir / "data" / h[:2] / h

    # -- entries
    def entry(self, key: str, size: int) -> CacheEntry:
        e = self.entries.get(key)
        if e is not None and e.size == size:
            return e
        if e is not None:      # same key, other size: the object changed; start over
            e.reset()
            self._forget(e)
        row = self.db.execute("SELECT size, bitmap, present, last_used, validator FROM entries "
                              "WHERE key=?", (key,)).fetchone()
        if row and row[0] == size and len(row[1]) == _bitmap_bytes(size) and self._data_intact(key, size, row):
            e = self.entries[key] = CacheEntry(self, key, size, bytearray(row[1]), row[2], row[3],
                                               row[4])
            return e
        if row:
            self.total -= row[2]
            self.db.execute("DELETE FROM entries WHERE key=?", (key,))
        return self._new_entry(key, size)

    def _new_entry(self, key: str, size: int) -> CacheEntry:
        e = self.entries[key] = CacheEntry(self, key, size, bytearray(_bitmap_bytes(size)), 0, time.time())
        return e

    def _data_intact(self, key: str, size: int, row) -> bool:
        """A data file shorter than its last marked chunk (or gone) was damaged outside us."""
        if row[2] == 0:
            return True
        try:
            st = os.stat(self.data_path(key))
        except FileNotFoundError:
            return False
        bitmap = row[1]
        last = max((i for i in range(len(bitmap) * 8) if bitmap[i >> 3] & (1 << (i & 7))), default=-1)
        return st.st_size >= min(size, (last + 1) * CHUNK)

    def pin(self, key: str, size: int) -> CacheEntry:
        e = self.entry(key, size)
        e.pins += 1
        e.last_used = time.time()
        return e

    def unpin(self, e: CacheEntry) -> None:
        e.pins -= 1
        if e.pins <= 0:
            e.close_fd()        # a dirty entry waits unsynced for a while: keep no fd for it

    def has_any(self, key: str) -> bool:
        """Whether the cache holds any byte of `key`; creates nothing."""
        e = self.entries.get(key)
        if e is not None:
            return e.present > 0
        row = self.db.execute("SELECT present FROM entries WHERE key=?", (key,)).fetchone()
        return bool(row) and row[0] > 0

    def has_whole(self, key: str, size: int) -> bool:
        """Whether the cache holds all of `key`; creates nothing (cheap for look-ahead)."""
        if size == 0:
            return True
        e = self.entries.get(key)
        if e is not None and e.size == size:
            return e.complete
        row = self.db.execute("SELECT size, present FROM entries WHERE key=?", (key,)).fetchone()
        return bool(row) and row[0] == size and row[1] >= size

    def store_file(self, key: str, size: int, path: Path) -> None:
        """Adopt a complete, verified file (moved in) as the content of `key` (I4)."""
        if os.path.getsize(path) != size:
            raise ValueError(f"store_file: {path} is not {size} bytes")
        self.reserve(size)
        e = self.entry(key, size)
        with open(path, "rb+") as f:
            os.fdatasync(f.fileno())
        e.close_fd()
        os.chmod(path, 0o600)
        _in_data_dir(e.path, lambda: os.replace(path, e.path))
        e.cache.total -= e.present
        e.present = 0
        e.bitmap = bytearray(len(e.bitmap))
        e.mark(0, e.nchunks - 1) if e.nchunks else None
        self._persist(e)

    def staging_path(self, prefix: str) -> Path:
        """A fresh name in staging/ (emptied at start) for a file being written."""
        self._staged += 1
        return self.staging_dir / f"{prefix}{self._staged}"

    def staged(self, prefix: str) -> StagedFile:
        return StagedFile(self.staging_path(prefix))

    def adopt(self, key: str, size: int, path: Path, length: int | None = None,
              validator: str = "") -> bool:
        """Move a file holding the first `length` bytes (default: all `size`) of `key`,
        written but not yet synced, in as its content: the whole chunks it holds count
        as present. Unless the cache already knows `key`, or the file holds no whole
        chunk: then it is dropped, and what the cache holds stays as it is."""
        length = size if length is None else min(length, size)
        last = (size + CHUNK - 1) // CHUNK - 1 if length >= size else length // CHUNK - 1
        if (last < 0 and size > 0) or key in self.entries or \
                self.db.execute("SELECT 1 FROM entries WHERE key=?", (key,)).fetchone():
            _unlink(path)
            return False
        dest = self.data_path(key)
        _in_data_dir(dest, lambda: os.replace(path, dest))
        e = self._new_entry(key, size)      # no row, no entry: checked above
        e.validator = Validator(validator)
        if last >= 0:
            e.mark(0, last)
        return True

    # -- exact sizes learnt by ranged probes (Alvaria, Kazoo), remembered across mounts
    def known_size(self, key: str) -> int | None:
        row = self.db.execute("SELECT size FROM sizes WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def known_sizes(self, keys: list[str]) -> dict[str, int]:
        """The sizes learnt of any of `keys`: a folder's in a few statements, not one a
        file (a warm `find` reads every folder back from the index, T7 in tree.py)."""
        found: dict[str, int] = {}
        for i in range(0, len(keys), SIZES_PER_QUERY):
            part = keys[i:i + SIZES_PER_QUERY]
            found.update(self.db.execute(
                f"SELECT key, size FROM sizes WHERE key IN ({','.join('?' * len(part))})", part))
        return found

    def remember_sizes(self, pairs: list[tuple[str, int]]) -> None:
        if pairs:
            self.db.execute("BEGIN")        # one transaction, not one per row (autocommit)
            self.db.executemany("INSERT OR REPLACE INTO sizes(key, size) VALUES (?, ?)", pairs)
            self.db.execute("COMMIT")

    # -- quota
    def free_space(self) -> int:
        st = os.statvfs(self.dir)
        return st.f_bavail * st.f_frsize

    def reserve(self, nbytes: int) -> None:
        """Make room for `nbytes` more, evicting least recently used unpinned entries."""
        while self.total + nbytes > self.max_size or self.free_space() - nbytes < self.min_free:
            if not self._evict_one():
                log.warning("cache: cannot make room for %d bytes (%d cached, every entry in use)",
                            nbytes, self.total)
                return

    def evict_bytes(self, nbytes: int) -> int:
        """Evict unpinned entries, least recently used first, until `nbytes` are freed."""
        start = self.total
        while start - self.total < nbytes and self._evict_one():
            pass
        return start - self.total

    def _evict_one(self) -> bool:
        """Evict one unpinned entry (I5): the least recently used recorded one, else the
        oldest not yet recorded."""
        self._record_touched()
        pinned = [k for k, e in self.entries.items() if e.pins > 0]
        q = "SELECT key, present FROM entries WHERE present > 0"
        if pinned:
            q += " AND key NOT IN (%s)" % ",".join("?" * len(pinned))
        row = self.db.execute(q + " ORDER BY last_used LIMIT 1", pinned).fetchone()
        if row is not None:
            key, present = row
        else:
            unrecorded = [e for e in self.dirty if e.pins <= 0 and e.present > 0]
            if not unrecorded:
                return False
            key = min(unrecorded, key=lambda e: e.dirty_since).key
        self.db.execute("DELETE FROM entries WHERE key=?", (key,))      # I3: row first
        e = self.entries.pop(key, None)
        if e is not None:
            present = e.present         # the bytes counted in `total`, recorded or not
            e.evicted = True
            e.close_fd()
            self.dirty.discard(e)
            self.touched.discard(e)
        _unlink(self.data_path(key))
        self.total -= present
        self.evictions += 1
        return True

    def _forget(self, e: CacheEntry) -> None:
        self.entries.pop(e.key, None)
        self.dirty.discard(e)
        self.touched.discard(e)

    # -- persistence
    def _persist(self, e: CacheEntry) -> None:
        e.last_used = time.time()
        self.db.execute("INSERT OR REPLACE INTO entries(key, size, bitmap, present, last_used, "
                        "validator) VALUES (?, ?, ?, ?, ?, ?)",
                        (e.key, e.size, bytes(e.bitmap), e.present, e.last_used, e.validator.token))
        e.dirty = False
        self.dirty.discard(e)

    def _record_touched(self) -> None:
        if self.touched:
            now = time.time()
            self.db.execute("BEGIN")
            self.db.executemany("UPDATE entries SET last_used=? WHERE key=?",
                                [(now, e.key) for e in self.touched])
            self.db.execute("COMMIT")
            for e in self.touched:
                e.last_used = now
            self.touched.clear()

    def _begin_flush(self, min_age: float = 0.0) -> tuple[list[int], list[tuple]]:
        """Copy the bitmaps of the entries dirty for at least `min_age` seconds and open
        a descriptor to sync for each. The copies are taken before the sync starts, so
        only bits whose bytes were written before it get recorded (I2); bits set
        meanwhile wait for a later round."""
        self._record_touched()
        fds, snapshot = [], []
        now = time.monotonic()
        for e in list(self.dirty):
            if now - e.dirty_since < min_age:
                continue
            try:
                fds.append(os.dup(e._fd) if e._fd is not None else os.open(e.path, os.O_RDONLY))
            except FileNotFoundError:
                self.dirty.discard(e)   # the data file is gone: there is nothing to record
                continue
            except OSError as exc:
                log.warning("cache: cannot sync %s: %s", e.path.name, exc.strerror)
                continue
            snapshot.append((e, bytes(e.bitmap), e.present, e.generation, e.validator.token))
            e.dirty = False
            self.dirty.discard(e)
        return fds, snapshot

    def _end_flush(self, snapshot: list[tuple], synced: list[bool]) -> None:
        """Record the bitmaps whose data files were synced; retry the others later."""
        self.db.execute("BEGIN")
        for (e, bitmap, present, generation, validator), ok in zip(snapshot, synced):
            if not ok:
                e.make_dirty()          # not durable: nothing recorded; tried again later
                continue
            if e.evicted or e.generation != generation:
                continue                # evicted or reset while syncing: nothing to record
            e.last_used = time.time()
            self.db.execute("INSERT OR REPLACE INTO entries(key, size, bitmap, present, "
                            "last_used, validator) VALUES (?, ?, ?, ?, ?, ?)",
                            (e.key, e.size, bitmap, present, e.last_used, validator))
        self.db.execute("COMMIT")
        for e, *_ in snapshot:
            if e.pins <= 0 and not e.dirty:
                e.close_fd()
        if len(self.entries) > MAX_LOADED:
            # unpinned, clean entries reload from the index when needed again
            for key in [k for k, e in self.entries.items() if e.pins <= 0 and not e.dirty]:
                self.entries[key].close_fd()
                del self.entries[key]

    def flush(self, min_age: float = 0.0) -> None:
        """Make the chunks of entries dirty for at least `min_age` seconds durable, then
        record them (I2), on this thread (at unmount: every one)."""
        fds, snapshot = self._begin_flush(min_age)
        if snapshot:
            self._end_flush(snapshot, _sync_all(fds))

    async def run_flusher(self, interval: float = 1.0) -> None:
        """Every `interval` seconds, sync and record the entries dirty for `sync_after`
        seconds (I2), with the syncs in a worker thread: they must not stall every
        FUSE reply."""
        while True:
            await trio.sleep(interval)
            fds, snapshot = self._begin_flush(self.sync_after)
            if snapshot:
                self._end_flush(snapshot, await trio.to_thread.run_sync(_sync_all, fds))

    def close(self) -> None:
        self.flush()
        for e in self.entries.values():
            e.close_fd()
        self.db.close()
