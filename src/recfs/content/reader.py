"""The read path: serve bytes from the cache, fetching what is missing.

The request size sent to the server is independent of the kernel's 128 KiB READs:
- a small file (<= `small_file`) is fetched whole by its first read;
- sequential reads ramp a window (first `first_window`, doubling up to `max_window`)
  and keep fetching ahead of the reader, in requests of at most `max_request` so that
  several ranges of one file are in flight at once. Request size trades CPU for
  parallelism: on a fast link big requests win (few writers per cache file, few
  thread hops), while a link that is slow per connection needs many requests in
  flight. So a file whose
  requests arrive slower than SLOW_LINK per connection switches to requests of
  `max_request / 8`;
- a random read (a seek, as ffprobe and sox do) fetches only the chunks it touches;
- opening a large file prefetches its head and tail chunks (container headers, ID3).
All fetches run under one global limit of connections; bytes go straight from the
socket into the cache file, so memory use does not grow with file or window size.

Single flight: a chunk being fetched has one `_Fetch`; every reader that needs it
waits on that fetch instead of starting another.

 R1. What one handle hands out is all of one version of the object. Every fetch asks
     for the version of the entry's bytes (I6 in cache.py); when the object turns out
     to be another one, the entry is dropped and `on_changed` is told; a handle that
     had handed out bytes (or whose front-end may hand out pages it kept from an
     earlier open) fails from then on (EIO), one that had not starts over on the new
     version.

Access patterns are the access policy's (policy.py): when it says a folder is being
copied, the first read of a file of a source with bulk jobs goes to the bulk engine,
and otherwise the next few small files of the folder are fetched ahead, whole.

The reader also learns the sizes a listing lacks (`learn_sizes`): from the provider's
metadata where it has them, else from the content: a ranged GET whose answer states
the total. During a copy a small file is asked for whole (WHOLE_PROBE), so its size
and its bytes come in one request; otherwise one byte.
"""
from __future__ import annotations

import errno
import logging
from dataclasses import dataclass, field
from typing import Callable, Hashable

import trio

from ..http import (Http, HttpError, SizeChangedError, Target, Validator, VersionChangedError,
                    background)
from ..sources.base import Entry, Source, SourceError, Stream
from .bulk import BulkEngine
from .cache import CHUNK, Cache, CacheEntry
from .policy import AccessPolicy

log = logging.getLogger("recfs.read")

SEEK_TOLERANCE = 512 * 1024
SLOW_LINK = 100e6           # bytes/s per connection below which requests get smaller
WHOLE_PROBE = 4 << 20       # during a copy a size probe asks for this much: small files come whole


@dataclass(slots=True)
class Folder:
    """An opened file's folder."""
    key: Hashable                   # the folder's identity (its inode), as the policy knows it
    files: list[Entry]              # its files in readdir order
    index: int | None               # the opened file's position among them


def _ignore(offset: int, data) -> None:
    """The sink of a one-byte size probe: the byte is not kept."""


class ReadError(Exception):
    def __init__(self, message: str, errno_: int = errno.EIO, stale: bool = False,
                 changed: bool = False):
        super().__init__(message)
        self.errno = errno_
        self.stale = stale          # the object changed on the server: list its folder again
        self.changed = changed      # it is another version than the bytes read so far


@dataclass
class _Fetch:
    first: int
    last: int
    done: trio.Event = field(default_factory=trio.Event)
    error: Exception | None = None


class _FileState:
    """Shared by all open handles of one object@version."""

    def __init__(self, source: Source, entry: Entry, ce: CacheEntry, folder: Folder | None,
                 label: str, owner: object):
        self.source = source
        self.entry = entry
        self.ce = ce
        self.folder = folder
        self.label = label          # what log lines call the file (its path in the mount)
        self.owner = owner          # the caller's handle on the file, for on_changed
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
        self.returned = 0           # bytes this handle has handed out
        self.version = state.ce.changes     # the object's version those bytes are of (R1)
        self.pages_kept = False     # the front-end may hand out pages it kept from before


@dataclass
class ReadStats:
    fetches: int = 0
    fetched_bytes: int = 0
    cache_hits: int = 0
    failures: int = 0
    prefetched_files: int = 0


class Reader:
    def __init__(self, cache: Cache, nursery: trio.Nursery, http: Http,
                 policy: AccessPolicy | None = None, *, max_connections: int = 24,
                 first_window: int = 1 << 20, max_window: int = 64 << 20,
                 max_request: int = 8 << 20, small_file: int = 4 << 20,
                 sibling_prefetch: int = 8):
        self.cache = cache
        self.nursery = nursery
        self.http = http
        self.policy = policy or AccessPolicy()
        self.limiter = trio.CapacityLimiter(max_connections)
        self.first_window = first_window
        self.max_window = max_window
        self.max_request = max_request
        self.small_file = small_file
        self.states: dict[str, _FileState] = {}
        self.stats = ReadStats()
        self.sibling_prefetch = sibling_prefetch
        self.sibling_limiter = trio.CapacityLimiter(max(1, sibling_prefetch))
        self._prefetching: set[str] = set()
        self._engines: dict[str, BulkEngine] = {}
        # told (with the open's owner) when an object turned out to be another version
        self.on_changed: Callable[[object], None] = lambda owner: None
        self._probes: dict[tuple[str, bool], trio.CapacityLimiter] = {}   # (source, asked)

    def engine(self, source: Source) -> BulkEngine | None:
        """The bulk engine of a source that declares bulk jobs."""
        if source.bulk is None:
            return None
        engine = self._engines.get(source.name)
        if engine is None:
            engine = self._engines[source.name] = BulkEngine(source, self.http, self.cache)
        return engine

    def engines(self) -> dict[str, BulkEngine]:
        return dict(self._engines)

    async def aclose(self) -> None:
        for engine in self._engines.values():
            await engine.aclose()

    # -- handles
    def open(self, source: Source, entry: Entry, folder: Folder | None = None, *,
             copy: bool = False, label: str | None = None, owner: object = None) -> Handle:
        """`copy`: the access policy saw this open continue a copy of the folder;
        `label`: what log lines call the file; `owner`: what `on_changed` is called with
        when the object turns out to have changed."""
        assert entry.size is not None, "files are opened with an exact size"
        if copy and folder is not None and folder.index is not None and source.bulk is None:
            self._prefetch_following(source, folder)
        key = source.cache_key(entry)
        state = self.states.get(key)
        if state is None:
            ce = self.cache.pin(key, entry.size)
            state = self.states[key] = _FileState(source, entry, ce, folder,
                                                  label or f"{source.name}: {entry.name}", owner)
        state.handles += 1
        h = Handle(state, self.first_window)
        if entry.size > self.small_file and not state.ce.complete:
            self._ensure(state, 0, CHUNK)
            self._ensure(state, entry.size - CHUNK, entry.size)
        return h

    def _prefetch_following(self, source: Source, folder: Folder) -> None:
        """A copy is going through the folder: fetch the next few small files whole, in
        parallel, so the copy finds them in the cache instead of waiting for one
        request per file. (Sources with bulk jobs get jobs instead.)"""
        following = folder.files[folder.index + 1:folder.index + 1 + self.sibling_prefetch]
        for entry in following:
            if entry.size is None or not 0 < entry.size <= self.small_file:
                continue
            key = source.cache_key(entry)
            if key in self.states or key in self._prefetching or self.cache.has_whole(key, entry.size):
                continue
            self._prefetching.add(key)
            self.nursery.start_soon(self._prefetch_sibling, source, entry, key)

    async def _prefetch_sibling(self, source: Source, entry: Entry, key: str) -> None:
        try:
            with background():          # a guess: reads somebody waits for go first
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
        """Bytes of the file, all of one version of the object (R1): a handle that met
        another version before handing out a byte starts over on it; one that had
        handed bytes out fails (EIO) from then on."""
        for attempt in range(2):
            if h.version != h.state.ce.changes:
                if h.returned or h.pages_kept:
                    raise ReadError(f"{h.state.label}: the object changed on the service "
                                    f"since this file was opened", stale=True, changed=True)
                h.version = h.state.ce.changes
            try:
                data = await self._read(h, offset, length)
            except ReadError as exc:
                if exc.changed and not (h.returned or h.pages_kept) and attempt == 0:
                    continue
                raise
            h.returned += len(data)
            return data
        raise AssertionError("unreachable")

    async def _read(self, h: Handle, offset: int, length: int) -> bytes:
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
            engine = self.engine(state.source)
            if engine is None:
                return
            folder = state.folder
            try:
                await engine.fetch(state.entry, folder.files if folder else [],
                                   folder is not None and self.policy.copying(folder.key))
            except Exception as exc:
                self.stats.failures += 1
                msg = describe(exc)
                log.error("%s: %s", state.label, _without(msg, state.label))
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
                    await self._get(state.source, state.entry, start, end, sink, state.label,
                                    ce.validator)
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
            log.error("%s: bytes %d-%d: %s", state.label, start, end - 1,
                      _without(describe(exc), state.label))
            if isinstance(exc, VersionChangedError) and ce.generation == generation:
                self._version_changed(state)
        finally:
            for i in range(fetch.first, fetch.last + 1):
                if state.inflight.get(i) is fetch:
                    del state.inflight[i]
            self.cache.unpin(ce)
            fetch.done.set()

    def _version_changed(self, state: _FileState) -> None:
        """The object is another version than the entry's bytes (I6 in cache.py): drop
        them all, so that what is fetched from now on is of the new one, and tell the
        front-ends, which drop what they cached of the file."""
        ce = state.ce
        ce.reset()
        ce.changes += 1
        self.on_changed(state.owner)

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
                                    is_stale(exc), isinstance(exc, VersionChangedError))

    async def _get(self, source: Source, entry: Entry, start: int, end: int, sink,
                   label: str, validator: Validator | None = None) -> None:
        try:
            await self._get_range(source.target(entry), start, end, sink, entry.size, label,
                                  validator)
        except VersionChangedError:
            raise
        except HttpError as exc:
            raise source.content_error(entry, exc) from None

    async def _get_range(self, target, start: int, end: int, sink, total: int | None,
                         label: str, validator: Validator | None = None) -> int | None:
        if not isinstance(target, Stream):
            return await self.http.get_range(target, start, end, sink, total=total, name=label,
                                             validator=validator)
        size = await target.get(start, end, sink)
        if total is not None and size != total:
            raise SizeChangedError(f"{label}: the object is now {size} bytes, not {total}", size)
        return size

    # -- sizes a listing lacks
    async def learn_sizes(self, source: Source, entries: list[Entry], *, whole: bool,
                          asked: bool = True) -> None:
        """Set `size` on every entry whose size is None: the provider's metadata first,
        then a ranged GET whose answer states the total: one byte, or, with `whole` (a
        copy is under way), the first WHOLE_PROBE bytes of a file whose hint is no
        bigger, which then goes into the cache. The GETs go out together
        (`Http.get_heads`), each in a job of its own that first asks for the file's URL
        where the target has none yet (`Target.pending`); one that failed is made again
        on its own, with retries.
        An entry that cannot be sized keeps None. Sizes somebody waits for (`asked`)
        have probe tokens of their own, so they never queue behind sizes learnt ahead."""
        await source.sizes([e for e in entries if e.size is None])
        todo = [e for e in entries if e.size is None]
        if not todo:
            return
        limiter = self._probes.get((source.name, asked))
        if limiter is None:
            limiter = self._probes[(source.name, asked)] = trio.CapacityLimiter(source.size_probes)
        ends = [WHOLE_PROBE if whole and 0 < e.size_hint <= WHOLE_PROBE else 1 for e in todo]
        wanted = [source.target(e) for e in todo]
        # where each probe goes: a ready URL, or the request for one (made by the same
        # job, right before its probe); else the target is asked here first
        where = [(t.ready() or t.pending()) if isinstance(t, Target) else None for t in wanted]

        async def resolve(i: int) -> None:
            try:
                where[i] = await wanted[i](False)
            except (HttpError, SourceError) as exc:     # its own probe tells
                log.debug("%s: %s: %s", source.name, todo[i].name, exc)

        async with trio.open_nursery() as nursery:
            for i, target in enumerate(where):
                if target is None and not isinstance(wanted[i], Stream):   # streams: one by one
                    nursery.start_soon(resolve, i)
        going = [i for i, w in enumerate(where) if w is not None]
        sinks = [self.cache.staged("probe-") if ends[i] > 1 else None for i in going]
        try:
            self.cache.reserve(sum(min(todo[i].size_hint, ends[i]) for i in going if ends[i] > 1))
            validators = [Validator() for _ in going]
            sizes = await self.http.get_heads(
                [(where[i], sink.write if sink else _ignore, ends[i], v)
                 for i, sink, v in zip(going, sinks, validators)],
                name=f"{source.name}: size probe", limiter=limiter)
        except BaseException:
            for sink in sinks:
                if sink:
                    sink.discard()
            raise
        for i, sink, size, v in zip(going, sinks, sizes, validators):
            if sink:
                self._keep_probed(source, todo[i], sink, size, ends[i], v)
            todo[i].size = size
        async with trio.open_nursery() as nursery:
            for entry, end in zip(todo, ends):
                if entry.size is None:
                    nursery.start_soon(self._probe_one, source, entry, end, limiter)

    def _keep_probed(self, source: Source, entry: Entry, staged, size: int | None, end: int,
                     validator: Validator) -> None:
        """What a whole-file probe brought goes into the cache (its whole chunks), with
        the version it is of."""
        staged.close()
        if not size or not self.cache.adopt(source.cache_key(entry), size, staged.path,
                                            min(size, end), validator.token):
            staged.discard()

    async def _probe_one(self, source: Source, entry: Entry, end: int,
                         limiter: trio.CapacityLimiter) -> None:
        """One size probe with retries: whole (`end` > 1) first if asked, then, unless
        the service said the file is not there, one byte."""
        async with limiter:
            for length in ((end, 1) if end > 1 else (1,)):
                staged = self.cache.staged("probe-") if length > 1 else None
                size = None
                validator = Validator()
                try:
                    size = await self._get_range(source.target(entry), 0, length,
                                                 staged.write if staged else _ignore, None,
                                                 f"{source.name}: size of {entry.name}", validator)
                except (HttpError, SourceError) as exc:
                    failure = source.content_error(entry, exc) if isinstance(exc, HttpError) else exc
                    log.warning("%s: cannot learn the size of %s: %s", source.name, entry.name,
                                describe(failure))
                    if getattr(exc, "status", None) in (401, 403, 404, 410) \
                            or getattr(exc, "errno", None) == errno.ENOENT:
                        return
                finally:
                    if staged:
                        self._keep_probed(source, entry, staged, size, length, validator)
                if size is not None:
                    entry.size = size
                    return

    async def recheck(self, source: Source, entry: Entry) -> None:
        """Whether the cached bytes of `entry` are still the current version (asked after
        `recfs refresh`, where a listing cannot tell): one one-byte GET with the entry's
        validator; another version drops them (I6)."""
        key = source.cache_key(entry)
        if not entry.size or (key not in self.states and not self.cache.has_any(key)):
            return
        ce = self.cache.pin(key, entry.size)
        try:
            if ce.present and ce.validator.token:
                await self._get(source, entry, 0, 1, _ignore, f"{source.name}: {entry.name}",
                                ce.validator)
        except VersionChangedError:
            ce.reset()
            ce.changes += 1
        except (HttpError, SourceError) as exc:     # its reads will tell, if it matters
            log.debug("%s: rechecking %s: %s", source.name, entry.name, exc)
        finally:
            self.cache.unpin(ce)

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
    return isinstance(exc, (SizeChangedError, VersionChangedError)) or bool(getattr(exc, "stale", False))


def _without(message: str, label: str) -> str:
    """A message without the file's name in front (the log line names it already)."""
    return message[len(label) + 2:] if message.startswith(label + ": ") else message


def describe(exc: Exception) -> str:
    if isinstance(exc, (SourceError, HttpError, ReadError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
