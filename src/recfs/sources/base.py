"""The contract between the provider modules and the core.

A provider module (`sources/<kind>.py`) holds its API client and its layout, and
nothing of the cache or of access patterns. It answers storage verbs:

- `list_dir(ref)`: a folder's entries (`Entry`: what `stat` needs, and metadata);
- `sizes(entries)`: exact sizes where the API states them apart from the listing
  (metadata only; sizes that only the content can tell, the core learns itself with
  ranged GETs of `target`);
- `target(entry)`: where a file's bytes are: a URL with the headers to send and a
  way to renew them (`http.Target`), or a `Stream` where the provider hands the
  bytes over itself;
- optional capabilities, declared: `bulk` (zip jobs of many files, run by
  `content/bulk.py`), `upload_dir`/`upload` (a folder that takes new files),
  `delete` (behind the `allow_delete` key), `rename` (where the service can move an
  object; by default EROFS), `search` (recordings matching a query, found with the
  API's own filters, where it has them);
- `record(name, xattrs, mtime)`: a listed recording's canonical fields (search.py),
  and `folder_span(ref, name)` / `search_skips(ref)`: which folders a search that
  walks the listings must look into.

The core (tree, reader, cache, access policy) decides what is fetched when; providers
are asked for listings, sizes, targets and jobs.

A provider module exports `Options` (a dataclass of its `[[sources]]` keys, made with
`config.option`) and `Source` (its class, built as `Source(name, options, http)`).
"""
from __future__ import annotations

import enum
import errno
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Hashable

from ..http import HttpError
from ..search import Query, Record, day_bounds, record_from_name

if TYPE_CHECKING:
    from ..http import Http, Target

log = logging.getLogger("recfs.sources")


class Kind(enum.Enum):
    DIR = "dir"
    FILE = "file"


@dataclass(slots=True)
class Entry:
    """One directory entry as a provider sees it.

    `name` is the service's own name; the tree makes it safe (names.py).
    `ref` is opaque to everyone but the provider: for a directory it is what
    `list_dir` needs, for a file what `target` needs.
    `size` is the exact byte count, or None while unknown (the listing gave only a
    rounded size or none); `size_hint` is the best guess until then.
    `version` changes whenever the content may have changed: it is part of the
    cache key, so a new version never serves old bytes.
    `xattrs` is the metadata users read (`user.*` attributes). Once listed, a file's
    metadata lives in the metadata index only (tree.py T7): the entries the core hands
    back to a verb carry none, so what a verb needs (an owner, a duration) goes in `ref`.
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


@dataclass
class Listing:
    entries: list[Entry]
    ttl: float | None = None            # seconds this listing stays fresh; None: source default


class SourceError(Exception):
    """A failure a user should read about: it is logged as is and maps to `errno`.
    `stale`: the object changed or vanished, so its folder must be listed again."""

    def __init__(self, message: str, errno_: int | None = None, *, stale: bool = False):
        super().__init__(message)
        self.errno = errno_ if errno_ is not None else errno.EIO
        self.stale = stale


@dataclass
class Hit:
    """A recording a server-side search found: its folders below the source's root and
    its own name, as the service names them (the core makes them safe as a listing
    would), and its entry, as a listing of its folder would make it (same id, version
    and metadata, so the same cache key)."""
    folders: tuple[str, ...]
    entry: Entry


_DATED = re.compile(r"(?<!\d)(\d{4})-?(\d{2})-?(\d{2})(?!\d)")


class Stream:
    """A target that is no URL: the provider delivers the bytes itself."""

    async def get(self, start: int, end: int, sink) -> int:
        """Deliver bytes [start, min(end, size)) to `sink(offset, data)` in order, without
        gaps; return the file's size. Raise SourceError (or HttpError) on failure."""
        raise NotImplementedError


# -- the bulk capability: zip jobs of many files (content/bulk.py runs them)

class JobState(enum.Enum):
    WAITING = "waiting"         # not finished yet: poll again
    DONE = "done"               # the zip holds every file
    PARTIAL = "partial"         # the zip exists but may lack some files
    FAILED = "failed"           # no usable zip


@dataclass(frozen=True)
class JobStatus:
    state: JobState
    word: str = ""                                  # the service's own status word
    left_out: dict[Hashable, str] = field(default_factory=dict)   # file ref -> why not in the zip


@dataclass(frozen=True)
class BulkFile:
    """One file wanted from a bulk job."""
    key: str                    # the cache key; also what merges duplicate requests
    size: int                   # exact size the member must have
    member_name: str            # the name the service gives it inside the zip
    md5: str | None = None      # lower-case hex, only when the service's checksum is a real MD5
    ref: Hashable = None        # the provider's handle (what `start` sends)


@dataclass
class BulkJobs:
    """What a provider with zip jobs declares: its limits and its API calls. The engine
    (content/bulk.py) decides when to run a job, batches, polls, downloads, verifies
    and stores; a provider only talks to its service.

    Jobs are per `group(entry)` (the files one job may hold together, e.g. a folder).
    `start(group, files) -> (handle, status)`, `poll(group, handle) -> status`,
    `package(group, handle) -> Target` (the zip), `end(group, handle, finished)`:
    cancel or delete the job once nobody waits for it (best effort)."""
    label: str
    group: Any
    start: Any
    poll: Any
    package: Any
    end: Any
    member: Any                         # entry -> (member name, md5 or None, ref)
    mode: str = "auto"                  # auto: for folder copies; always; never
    max_files: int = 50
    max_bytes: int = 2 * 1000**3
    batch_window: float = 0.5           # seconds a batch collects requests before its job starts
    parallel_jobs: int = 4              # jobs started at once for a folder copy
    readahead: bool = True              # start the next job of a copy when one ends
    max_wait: float = 90.0              # seconds a read waits for a job before reading directly
    poll_first: float = 15.0
    poll_max: float = 30.0
    timeout: float = 3600.0


class Source:
    """Base class of the providers."""

    kind = "?"
    listing_ttl = 60.0          # seconds a directory listing stays fresh by default
    size_probes = 16            # size probes (ranged GETs) at once, where listings lack sizes
    bulk: BulkJobs | None = None

    def __init__(self, name: str, options: Any, http: "Http"):
        self.name = name
        self.options = options
        self.http = http
        if getattr(options, "listing_ttl", None) is not None:
            self.listing_ttl = float(options.listing_ttl)

    async def start(self) -> None:
        """Check credentials and reachability; raise SourceError with a clear message."""

    async def aclose(self) -> None:
        """Stop background work."""

    def root_ref(self) -> Hashable:
        raise NotImplementedError

    def home(self, ref: Hashable) -> "Source":
        """The source whose objects the files of folder `ref` are: this one, but for a
        view of other sources' objects (saved searches: saved.py), whose files the core
        reads, sizes and caches as at their home."""
        return self

    def forget(self, ref: Hashable) -> None:
        """`recfs refresh` dropped the snapshot of folder `ref`: drop what the source
        keeps of its own for it (saved.py: the last run of a search)."""

    async def list_dir(self, ref: Hashable) -> Listing:
        raise NotImplementedError

    async def sizes(self, entries: list[Entry]) -> None:
        """Set `size` on entries whose size is None where the API states it apart from
        the listing (metadata only). What is still None afterwards the core learns
        from the content (ranged GETs of `target`)."""

    def target(self, entry: Entry) -> "Target | Stream":
        """Where the file's bytes are: `target(renew) -> (url, headers)`, or a Stream."""
        raise NotImplementedError

    def content_error(self, entry: Entry, exc: HttpError) -> Exception:
        """The failure a reader of `entry` should see for a failed content GET."""
        return exc

    def cache_key(self, entry: Entry) -> str:
        return self.cache_key_of(entry.id, entry.version)

    def cache_key_of(self, id_: str, version: str) -> str:
        """The cache key of an object by its id and version (the tree asks for the sizes
        a folder read from the index lacks without making its entries)."""
        return f"{self.kind}:{self.name}:{id_}@{version}"

    # -- writes. A source that takes none leaves the defaults: EROFS.
    @property
    def allow_delete(self) -> bool:
        return bool(getattr(self.options, "allow_delete", False))

    async def delete(self, entry: Entry) -> None:
        """Delete the object on the service (only called when `allow_delete` is set).
        Raise SourceError (errno EROFS when this kind of object cannot be deleted)."""
        raise SourceError(f"{self.name}: this service offers no delete", errno.EROFS)

    async def rename(self, entry: Entry, from_ref: Hashable, to_ref: Hashable, new_name: str) -> None:
        """Move the object `entry`, listed in folder `from_ref`, to folder `to_ref` as
        `new_name`, where the service can (Kazoo: a soft-deleted recording moved out of
        deleted/ is restored). Raise SourceError (errno EROFS where it cannot)."""
        raise SourceError(f"{self.name}: this service cannot move or rename objects", errno.EROFS)

    # declared: a folder exists only as the place of its objects (S3 prefixes, date
    # folders), so once it lists empty it is gone on the service too, and `rmdir` of it
    # (with `allow_delete`) sends nothing. False: folders are objects of their own.
    folders_are_places = False

    def upload_dir(self, ref: Hashable) -> bool:
        """Whether files may be created in the folder `ref` (e.g. Alvaria imports/)."""
        return False

    def child_ref(self, dir_ref: Hashable, name: str, kind: Kind) -> Hashable:
        """The ref a new file or folder `name` in `dir_ref` will have (for uploads)."""
        raise NotImplementedError

    async def upload(self, dir_ref: Hashable, name: str, path: Path, size: int) -> None:
        """Store the local file `path` as `name` in folder `dir_ref`; raise on failure."""
        raise SourceError(f"{self.name}: this service takes no uploads", errno.EROFS)

    # -- search (search.py). A provider maps its metadata to the canonical fields; the
    # core walks its folders (through listings it keeps) where the API filters nothing.
    searches_server_side: tuple[str, ...] = ()     # declared: the query fields `search` filters

    def filters_server_side(self, query: Query) -> bool:
        """Whether `search` answers `query` with the API's own filters (a term of it
        is one the provider declares in `searches_server_side`)."""
        return bool(query.given() & set(self.searches_server_side))

    def record(self, name: str, xattrs: dict[str, str], mtime: float) -> Record:
        """A listed recording's canonical fields from its name, metadata and time."""
        return record_from_name(name, mtime)

    def folder_span(self, ref: Hashable, name: str) -> tuple[float, float] | None:
        """[start, end) epoch seconds of the recordings a folder holds, None when its
        name or ref says nothing of it (a walk looks into it). By default a folder named
        as a day (2025-10-10, 20251010) holds that day."""
        m = _DATED.search(name)
        if m is None:
            return None
        try:
            return day_bounds(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        except ValueError:
            return None

    def search_skips(self, ref: Hashable) -> bool:
        """Whether a walk leaves this folder out: it shows again what another folder
        shows (Kazoo's users/), or nothing a search asks for."""
        return False

    async def search(self, query: Query) -> list[Hit] | None:
        """The recordings matching `query`, found with the API's own filters: every one
        whose metadata may match, at least (the core matches each against the whole
        query). None when the API filters none of the query's terms: the core then
        walks the listings. Never downloads a recording."""
        return None
