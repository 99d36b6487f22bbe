"""The contract between the provider modules and the rest of recfs.

A provider module (`sources/<kind>.py`) holds its API client and its layout: it
turns the service's objects into `Entry` values (directory entries with what `stat`
needs) and fetches bytes for them. The tree (namespace) and the content layer
(cache, reader) only ever talk to a `Source`; only provider modules know an API.

A provider module exports:
- `CONFIG_KEYS`: dict of `recfs.config.Key` for its `[[sources]]` table (the common
  keys `name`, `kind`, `listing_ttl`, `ca_bundle` are handled by config.py);
- `create(name, options, ctx) -> Source`.
"""
from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Hashable

import trio

from ..http import HttpError

if TYPE_CHECKING:
    from pathlib import Path

    from ..content.cache import Cache
    from ..http import Http

# sink(offset, data): where fetched bytes go (the cache's data file)
Sink = Callable[[int, bytes], None]


class Kind(enum.Enum):
    DIR = "dir"
    FILE = "file"


@dataclass
class Entry:
    """One directory entry as a provider sees it.

    `name` is the service's own name; the tree makes it safe (names.py).
    `ref` is opaque to everyone but the provider: for a directory it is what
    `list_dir` needs, for a file what `fetch_range` needs.
    `size` is the exact byte count, or None while unknown (the listing gave only a
    rounded size or none); `size_hint` is the best guess until then.
    `version` changes whenever the content may have changed: it is part of the
    cache key, so a new version never serves old bytes.
    """
    name: str
    kind: Kind
    ref: Hashable
    mtime: float = 0.0                  # seconds since the epoch (UTC)
    size: int | None = 0
    size_hint: int = 0
    id: str = ""
    version: str = ""
    xattrs: dict[str, str] = field(default_factory=dict)

    @property
    def is_dir(self) -> bool:
        return self.kind is Kind.DIR


log = logging.getLogger("recfs.sources")

COPY_MEMORY = 2.0       # seconds a copy seen by the reader counts as under way
WHOLE_PROBE = 4 << 20   # during a copy, a size probe asks for this much: small files come whole


def _ignore(offset: int, data) -> None:
    """The sink of a one-byte size probe: the byte is not kept."""


@dataclass
class Listing:
    entries: list[Entry]
    ttl: float | None = None            # seconds this listing stays fresh; None: source default


@dataclass
class SourceContext:
    """What the mount gives every source: the shared HTTP layer and the cache."""
    http: "Http"
    cache: "Cache"


class SourceError(Exception):
    """A failure a user should read about: it is logged as is and maps to `errno`."""

    def __init__(self, message: str, errno_: int | None = None):
        super().__init__(message)
        import errno as _errno
        self.errno = errno_ if errno_ is not None else _errno.EIO


class Source:
    """Base class of the four providers."""

    kind = "?"
    listing_ttl = 60.0          # seconds a directory listing stays fresh by default

    def __init__(self, name: str, options: dict[str, Any], ctx: SourceContext):
        self.name = name
        self.options = options
        self.ctx = ctx
        self.copy_seen = float("-inf")     # trio time the reader last saw a copy (copying())
        if options.get("listing_ttl") is not None:
            self.listing_ttl = float(options["listing_ttl"])

    async def start(self) -> None:
        """Check credentials and reachability; raise SourceError with a clear message."""

    async def aclose(self) -> None:
        """Stop background work (e.g. abort bulk jobs nobody waits for)."""

    def root_ref(self) -> Hashable:
        raise NotImplementedError

    async def list_dir(self, ref: Hashable) -> Listing:
        raise NotImplementedError

    def copying(self) -> bool:
        """Whether the reader saw files of one of this source's folders opened one
        after another lately (cp -r, rsync): learning sizes may then fetch small files
        whole, as their content is about to be read."""
        return trio.current_time() - self.copy_seen < COPY_MEMORY

    async def probe_whole(self, entry: Entry, url_for: Callable, what: str) -> int | None:
        """While `copying()`, learn a file's size by asking for its first WHOLE_PROBE
        bytes (`url_for` as `Http.get_range` takes it): the answer states the size, and
        a file no bigger arrives whole and is moved into the cache, as its content is
        about to be read anyway. For sources that learn sizes with a ranged GET. None
        when no copy is under way, there is no cache, or the GET fails: the caller
        then probes as usual. (Asked at the call, so a copy seen meanwhile counts.)"""
        cache = self.ctx.cache
        if cache is None or not self.copying():
            return None
        staged = cache.staged("probe-")     # written by the fetch's worker thread
        cache.reserve(entry.size_hint)
        size = None
        try:
            size = await self.ctx.http.get_range(url_for, 0, WHOLE_PROBE, staged.write, total=None,
                                                 name=what)
        except Exception as exc:           # a guess that did not work out: probe instead
            log.debug("%s: fetching it whole: %s", what, exc)
        finally:
            staged.close()
        self._keep_whole(entry, staged, size)
        return size

    def _keep_whole(self, entry: Entry, staged, size: int | None) -> bool:
        """After a whole-file probe: move the staged file into the cache if it holds the
        whole file (`size` known and no bigger than what was asked for), else drop it."""
        if size is not None and 0 < size <= WHOLE_PROBE:
            self.ctx.cache.adopt(self.cache_key(entry), size, staged.path)
            return True
        staged.discard()
        return False

    async def probe_many(self, entries: list[Entry], url_for: Callable,
                         limiter: trio.CapacityLimiter, *, whole: bool) -> list[Entry]:
        """Size probes for several files at once: their GETs run together
        (`Http.get_heads`: one worker thread each, no task and no `to_thread` hop),
        each holding one of `limiter`'s tokens. With `whole` (only while
        `copying()`, with a cache) each asks for the first WHOLE_PROBE bytes and a file
        no bigger comes whole into the cache, as in `probe_whole`; else for one byte.
        Sets the size of every file whose answer came clean, and returns the others
        (their size still None), for the caller's usual probe (one by one, with
        retries). `url_for(entry)` gives the URL and headers, as `url_for(False)` does
        for `Http.get_range`."""
        cache = self.ctx.cache
        http = self.ctx.http
        if not entries or whole and (cache is None or not self.copying()):
            return []
        asked: list[Entry] = []
        targets: list[tuple[str, dict[str, str]]] = []
        for entry in entries:
            try:
                targets.append(await url_for(entry))
            except (HttpError, SourceError) as exc:     # the caller's own probe tells
                log.debug("%s: %s: %s", self.name, entry.name, exc)
                continue
            asked.append(entry)
        # written by the GETs' threads
        staged = [cache.staged("probe-") for _ in asked] if whole else []
        try:
            jobs = [(url, headers, staged[i].write if whole else _ignore)
                    for i, (url, headers) in enumerate(targets)]
            if whole:
                cache.reserve(sum(e.size_hint or 0 for e in asked))
            sizes = await http.get_heads(jobs, WHOLE_PROBE if whole else 1,
                                         name=f"{self.name}: size probe", limiter=limiter)
        except BaseException:
            for st in staged:
                st.discard()
            raise
        for i, (entry, size) in enumerate(zip(asked, sizes)):
            if not whole:
                entry.size = size
                continue
            staged[i].close()
            if self._keep_whole(entry, staged[i], size):
                entry.size = size
        return [e for e in entries if e.size is None]

    async def resolve_sizes(self, entries: list[Entry]) -> None:
        """Set `size` on every entry whose size is None, concurrently.

        Called once for all the unresolved files of a directory when the first of
        them is stat'ed or opened. An entry that cannot be resolved keeps None and
        the tree hides it or fails its reads with EIO.
        """

    async def fetch_range(self, entry: Entry, start: int, end: int, sink: Sink) -> None:
        """Deliver bytes [start, end) of the file to `sink`, in order, exactly once
        each; raise SourceError (or an http error) on failure."""
        raise NotImplementedError

    async def fetch_whole(self, entry: Entry, siblings: list[Entry]) -> bool:
        """Optionally put the whole file into the cache by a provider-specific path
        (a bulk zip job). Return True when the cache now holds it; False to let the
        reader use ranged reads. `siblings` are the files of the same folder in
        listing order (for coalescing and prefetch)."""
        return False

    async def prefetch_dir(self, ref: Hashable, entries: list[Entry]) -> bool:
        """Optionally warm the cache for all files of a folder in one provider job.
        Return False when the provider has no such path."""
        return False

    # -- writes (issue 9). A source that cannot do one leaves the default: EROFS.
    @property
    def allow_delete(self) -> bool:
        return bool(self.options.get("allow_delete"))

    async def delete(self, entry: Entry) -> None:
        """Delete the object on the service (only called when `allow_delete` is set).
        Raise SourceError (errno EROFS when this kind of object cannot be deleted)."""
        import errno as _errno
        raise SourceError(f"{self.name}: this service offers no delete", _errno.EROFS)

    def upload_dir(self, ref: Hashable) -> bool:
        """Whether files may be created in the folder `ref` (e.g. Alvaria imports/)."""
        return False

    def child_ref(self, dir_ref: Hashable, name: str, kind: Kind) -> Hashable:
        """The ref a new file or folder `name` in `dir_ref` will have (for uploads)."""
        raise NotImplementedError

    async def upload(self, dir_ref: Hashable, name: str, path: "Path", size: int) -> None:
        """Store the local file `path` as `name` in folder `dir_ref`; raise on failure."""
        import errno as _errno
        raise SourceError(f"{self.name}: this service takes no uploads", _errno.EROFS)

    def cache_key(self, entry: Entry) -> str:
        return f"{self.kind}:{self.name}:{entry.id}@{entry.version}"
