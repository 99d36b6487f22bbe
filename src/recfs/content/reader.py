"""The read path: serve bytes from the cache, fetching what is missing.

The request size sent to the server is independent of the kernel's 128 KiB READs:
- a small file (<= `small_file`) is fetched whole by its first read;
- sequential reads ramp a window (first `first_window`, doubling up to `max_window`)
  and keep fetching ahead of the reader, in requests of at most `max_request` so that
  several ranges of one file are in flight at once. Request size trades CPU for
  parallelism: on a fast link big requests win (few writers per cache file, few
  thread hops: B1 loopback 0.71 GB/s with 2 MiB, 0.95 with 16 MiB), while a link that
  is slow per connection needs many requests in flight (B1 WAN). So a file whose
  requests arrive slower than SLOW_LINK per connection switches to requests of
  `max_request / 8`;
- a random read (a seek, as ffprobe and sox do) fetches only the chunks it touches;
- opening a large file prefetches its head and tail chunks (container headers, ID3).
All fetches run under one global limit of connections; bytes go straight from the
socket into the cache file, so memory use does not grow with file or window size.

Single flight: a chunk being fetched has one `_Fetch`; every reader that needs it
waits on that fetch instead of starting another.
"""
from __future__ import annotations

import errno
import logging
from dataclasses import dataclass, field

import trio

from ..http import HttpError, SizeChangedError
from ..sources.base import Entry, Source, SourceError
from .cache import CHUNK, Cache, CacheEntry

log = logging.getLogger("recfs.read")

SEEK_TOLERANCE = 512 * 1024
SLOW_LINK = 100e6           # bytes/s per connection below which requests get smaller


class ReadError(Exception):
    def __init__(self, message: str, errno_: int = errno.EIO, stale: bool = False):
        super().__init__(message)
        self.errno = errno_
        self.stale = stale          # the object changed on the server: list its folder again


@dataclass
class _Fetch:
    first: int
    last: int
    done: trio.Event = field(default_factory=trio.Event)
    error: Exception | None = None


class _FileState:
    """Shared by all open handles of one object@version."""

    def __init__(self, source: Source, entry: Entry, ce: CacheEntry, siblings: list[Entry]):
        self.source = source
        self.entry = entry
        self.ce = ce
        self.siblings = siblings
        self.inflight: dict[int, _Fetch] = {}
        self.handles = 0
        self.whole_lock = trio.Lock()
        self.whole_tried = False
        self.whole_error: ReadError | None = None
        self.slow_link = False      # requests of this file arrive slowly: make them smaller


class Handle:
    def __init__(self, state: _FileState, first_window: int):
        self.state = state
        self.last_end = 0
        self.window = first_window // 2
        self.ahead = 0              # how far ahead of the reader fetches have been started


@dataclass
class ReadStats:
    fetches: int = 0
    fetched_bytes: int = 0
    cache_hits: int = 0
    failures: int = 0
    prefetched_files: int = 0


class Reader:
    def __init__(self, cache: Cache, nursery: trio.Nursery, *, max_connections: int = 24,
                 first_window: int = 1 << 20, max_window: int = 64 << 20,
                 max_request: int = 8 << 20, small_file: int = 4 << 20,
                 sibling_prefetch: int = 8):
        self.cache = cache
        self.nursery = nursery
        self.limiter = trio.CapacityLimiter(max_connections)
        self.first_window = first_window
        self.max_window = max_window
        self.max_request = max_request
        self.small_file = small_file
        self.states: dict[str, _FileState] = {}
        self.stats = ReadStats()
        self.sibling_prefetch = sibling_prefetch
        self.sibling_limiter = trio.CapacityLimiter(max(1, sibling_prefetch))
        self._last_open: dict[int, int] = {}       # folder's file list -> last opened index
        self._prefetching: set[str] = set()

    # -- handles
    def open(self, source: Source, entry: Entry, siblings: list[Entry] | None = None,
             index: int | None = None) -> Handle:
        assert entry.size is not None, "files are opened with an exact size"
        if siblings and index is not None:
            self._follow_copy(source, siblings, index)
        key = source.cache_key(entry)
        state = self.states.get(key)
        if state is None:
            ce = self.cache.pin(key, entry.size)
            state = self.states[key] = _FileState(source, entry, ce, siblings or [])
        state.handles += 1
        h = Handle(state, self.first_window)
        if entry.size > self.small_file and not state.ce.complete:
            self._ensure(state, 0, CHUNK)
            self._ensure(state, entry.size - CHUNK, entry.size)
        return h

    def _follow_copy(self, source: Source, siblings: list[Entry], index: int) -> None:
        """Files of one folder opened one after another in name order are a copy
        (cp -r, rsync): fetch the next few small ones whole, in parallel, so the copy
        finds them in the cache instead of waiting for one request per file. Sources
        with bulk jobs have their own coalescing and are left to it."""
        key = id(siblings)
        previous = self._last_open.get(key)
        self._last_open[key] = index
        if len(self._last_open) > 256:
            self._last_open = {key: index}
        if previous is None or index != previous + 1:
            return
        source.copy_seen = trio.current_time()
        if type(source).fetch_whole is not Source.fetch_whole:
            return
        for entry in siblings[index + 1:index + 1 + self.sibling_prefetch]:
            if entry.size is None or not 0 < entry.size <= self.small_file:
                continue
            key2 = source.cache_key(entry)
            if key2 in self.states or key2 in self._prefetching or self.cache.has_whole(key2, entry.size):
                continue
            self._prefetching.add(key2)
            self.nursery.start_soon(self._prefetch_sibling, source, entry, key2)

    async def _prefetch_sibling(self, source: Source, entry: Entry, key: str) -> None:
        try:
            async with self.sibling_limiter:
                await self.prefetch(source, entry)
                self.stats.prefetched_files += 1
        except Exception as exc:     # a prefetch is a guess: its reader will try again
            log.debug("%s: prefetching %s: %s", source.name, entry.name, describe(exc))
        finally:
            self._prefetching.discard(key)

    def release(self, h: Handle) -> None:
        state = h.state
        state.handles -= 1
        if state.handles == 0:
            key = state.source.cache_key(state.entry)
            if self.states.get(key) is state:
                del self.states[key]
            self.cache.unpin(state.ce)

    # -- reads
    async def read(self, h: Handle, offset: int, length: int) -> bytes:
        state = h.state
        ce = state.ce
        size = ce.size
        end = min(offset + length, size)
        if offset >= end:
            return b""
        # the kernel's readahead sends several READs at once, so they may arrive a
        # little out of order: tolerate that, but not a forward jump (a seek)
        sequential = h.last_end - (1 << 20) <= offset <= h.last_end + SEEK_TOLERANCE
        h.last_end = end
        if ce.has(offset, end):
            self.stats.cache_hits += 1
            if sequential and not ce.complete:
                self._read_ahead(h, end)
            return ce.read(offset, end - offset)
        if not state.whole_tried or state.whole_error is not None:
            await self._try_whole(state)
            if ce.has(offset, end):
                return ce.read(offset, end - offset)
        if size <= self.small_file:
            self._ensure(state, 0, size)
        elif sequential:
            self._read_ahead(h, offset)
        else:
            h.window = self.first_window // 2
            h.ahead = 0
            self._ensure(state, offset, end)
        await self._wait(state, offset, end)
        return ce.read(offset, end - offset)

    async def _try_whole(self, state: _FileState) -> None:
        async with state.whole_lock:
            if state.whole_error is not None:
                # the kernel retries a failed read page by page: keep failing until the
                # file is opened again, rather than switching to another path half-way
                raise state.whole_error
            if state.whole_tried:
                return
            state.whole_tried = True
            try:
                await state.source.fetch_whole(state.entry, state.siblings)
            except Exception as exc:
                self.stats.failures += 1
                msg = describe(exc)
                log.error("%s: %s: %s", state.source.name, state.entry.name, msg)
                state.whole_error = ReadError(msg, getattr(exc, "errno", errno.EIO), is_stale(exc))
                raise state.whole_error from None
            if state.ce.complete:
                return
            # a bulk path may have stored the file under the same key: pick it up
            key = state.source.cache_key(state.entry)
            fresh = self.cache.entry(key, state.entry.size)
            if fresh is not state.ce and fresh.complete:
                fresh.pins += 1
                self.cache.unpin(state.ce)
                state.ce = fresh

    def _read_ahead(self, h: Handle, pos: int) -> None:
        """Keep fetches running up to `window` bytes ahead of a sequential reader.

        Topped up only when less than half the window is left ahead, so requests go
        out in big pieces (up to `max_request`), not one small GET per kernel READ;
        the window doubles with each top-up."""
        if h.ahead > pos and h.ahead - pos > h.window // 2:
            return
        h.window = min(self.max_window, max(h.window * 2, self.first_window))
        target = min(h.state.ce.size, pos + h.window)
        start = max(pos, h.ahead)
        if target > start:
            self._ensure(h.state, start, target)
            h.ahead = target

    def _ensure(self, state: _FileState, start: int, end: int) -> None:
        """Start fetches for the absent, not yet requested chunks of [start, end)."""
        ce = state.ce
        start = max(0, start)
        end = min(end, ce.size)
        if end <= start:
            return
        run: list[int] = []
        piece = self.max_request // 8 if state.slow_link else self.max_request
        max_chunks = max(1, piece // CHUNK)
        for i in range(start // CHUNK, (end - 1) // CHUNK + 1):
            if ce.has_chunk(i) or i in state.inflight:
                if run:
                    self._start(state, run[0], run[-1])
                    run = []
                continue
            run.append(i)
            if len(run) >= max_chunks:
                self._start(state, run[0], run[-1])
                run = []
        if run:
            self._start(state, run[0], run[-1])

    def _start(self, state: _FileState, first: int, last: int) -> None:
        fetch = _Fetch(first, last)
        for i in range(first, last + 1):
            state.inflight[i] = fetch
        self.nursery.start_soon(self._fetch, state, fetch)

    async def _fetch(self, state: _FileState, fetch: _Fetch) -> None:
        ce = state.ce
        start = fetch.first * CHUNK
        end = min(ce.size, (fetch.last + 1) * CHUNK)
        generation = ce.generation
        written = start

        def sink(pos: int, data) -> None:
            # may run in a worker thread: it only writes, and the chunks are marked
            # on the trio thread below (I1: after their bytes were written)
            nonlocal written
            ce.write(pos, data)
            written = pos + len(data)

        ce.pins += 1        # the data file stays open until the fetch is over
        try:
            ce.fd           # opened here, not by racing threads
            async with self.limiter:
                self.cache.reserve(end - start)
                self.stats.fetches += 1
                began = trio.current_time()
                try:
                    await state.source.fetch_range(state.entry, start, end, sink)
                finally:
                    self._mark_written(ce, fetch, start, written, end, generation)
                if end - start >= 1 << 20:
                    elapsed = trio.current_time() - began
                    state.slow_link = elapsed > 0 and (end - start) / elapsed < SLOW_LINK
                self.stats.fetched_bytes += end - start
            if not ce.has_chunk(fetch.last):
                raise HttpError(f"the body ended at byte {written} of {start}-{end - 1}")
        except Exception as exc:
            fetch.error = exc
            self.stats.failures += 1
            log.error("%s: %s: bytes %d-%d: %s", state.source.name, state.entry.name,
                      start, end - 1, describe(exc))
        finally:
            for i in range(fetch.first, fetch.last + 1):
                if state.inflight.get(i) is fetch:
                    del state.inflight[i]
            self.cache.unpin(ce)
            fetch.done.set()

    @staticmethod
    def _mark_written(ce: CacheEntry, fetch: _Fetch, start: int, written: int, end: int,
                      generation: int) -> None:
        """Mark the chunks of [start, written) as present: the sink wrote them in order,
        without gaps. Nothing is marked if the entry was reset meanwhile."""
        if ce.generation != generation or written <= start:
            return
        last = fetch.last if written >= end else written // CHUNK - 1
        if last >= fetch.first:
            ce.mark(fetch.first, last)

    async def _wait(self, state: _FileState, start: int, end: int) -> None:
        ce = state.ce
        for i in range(start // CHUNK, (end - 1) // CHUNK + 1):
            while not ce.has_chunk(i):
                fetch = state.inflight.get(i)
                if fetch is None:
                    self._ensure(state, i * CHUNK, (i + 1) * CHUNK)
                    fetch = state.inflight[i]
                await fetch.done.wait()
                if not ce.has_chunk(i) and fetch.error is not None:
                    exc = fetch.error
                    raise ReadError(describe(exc), getattr(exc, "errno", errno.EIO),
                                    is_stale(exc))

    async def prefetch(self, source: Source, entry: Entry) -> None:
        """Fetch a whole file into the cache (for `recfs prefetch`)."""
        h = self.open(source, entry)
        try:
            if not h.state.ce.complete:
                await self._try_whole(h.state)
            self._ensure(h.state, 0, entry.size)
            await self._wait(h.state, 0, entry.size)
        finally:
            self.release(h)


def is_stale(exc: Exception) -> bool:
    """The object changed or vanished on the server: its folder must be listed again."""
    return isinstance(exc, SizeChangedError) or bool(getattr(exc, "stale", False))


def describe(exc: Exception) -> str:
    if isinstance(exc, (SourceError, HttpError, ReadError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
