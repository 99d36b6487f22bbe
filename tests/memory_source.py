"""An in-memory Source for unit tests of the core (tree, reader, access policy, core).

The tree lives in a dict of paths: folders end in "/" ("" is the root), files do not
("calls/a/c000.wav"). Refs are those paths. `target(entry)` is a `Stream` that serves
the file's current bytes from memory. Everything a service would be asked is counted
(`counts`: "list", "sizes", "read", "upload", "delete"; `bytes_read`; every read's
range in `reads`), so tests can assert what reached the "service".

A file may withhold its size from the listing (`sized=False`: the core must learn it),
change its bytes (a new version), fail its reads (`fail`), or hold them until a test
lets them go (`hold`). Writes: folders under `upload_dirs` take uploads (they land in
the tree, so the next listing shows them); `allow_delete` lets the core delete.
There is no bulk capability here: its `package` hook is an HTTP target, so bulk jobs
are tested against the loopback emulators (tests/unit/test_bulk.py).
"""
from __future__ import annotations

import collections
import errno
from dataclasses import dataclass, field
from pathlib import Path

import trio

from recfs.config import SourceOptions
from recfs.sources.base import Entry, Kind, Listing, Source, SourceError, Stream

PIECE = 64 * 1024           # a read delivers its bytes to the sink in pieces of this size


@dataclass
class MemoryFile:
    data: bytes
    mtime: float = 1_700_000_000.0
    version: int = 1
    xattrs: dict[str, str] = field(default_factory=dict)
    sized: bool = True                      # False: the listing withholds the size
    failure: Exception | None = None        # raised by reads (after `fail_after` bytes)
    fail_after: int = 0
    gate: trio.Event | None = None          # reads wait for it (`hold`)


class MemoryStream(Stream):
    def __init__(self, source: "MemorySource", path: str):
        self.source = source
        self.path = path

    async def get(self, start: int, end: int, sink) -> int:
        src = self.source
        src.counts["read"] += 1
        src.reads.append((self.path, start, end))
        await trio.lowlevel.checkpoint()    # a service answers later, never at once
        f = src.files.get(self.path)
        if f is not None and f.gate is not None:
            await f.gate.wait()
            f = src.files.get(self.path)
        if f is None:
            raise SourceError(f"{src.name}: {self.path} no longer exists", errno.ENOENT, stale=True)
        pos, stop = start, min(end, len(f.data))
        limit = stop if f.failure is None else min(stop, start + f.fail_after)
        while pos < limit:
            piece = f.data[pos:min(limit, pos + PIECE)]
            sink(pos, piece)
            src.bytes_read += len(piece)
            pos += len(piece)
        if f.failure is not None:
            raise f.failure
        return len(f.data)


class MemorySource(Source):
    kind = "memory"

    def __init__(self, name: str = "mem", *, upload_dirs: tuple[str, ...] = (),
                 allow_delete: bool = False, metadata_sizes: bool = False,
                 listing_ttl: float | None = None):
        super().__init__(name, SourceOptions(name=name, kind=self.kind, allow_delete=allow_delete,
                                             listing_ttl=listing_ttl), http=None)
        self.upload_dirs = upload_dirs
        self.metadata_sizes = metadata_sizes    # True: `sizes()` states what listings withhold
        self.folders: set[str] = {""}
        self.files: dict[str, MemoryFile] = {}
        self.counts: collections.Counter[str] = collections.Counter()
        self.bytes_read = 0
        self.reads: list[tuple[str, int, int]] = []     # (path, start, end) of every read
        self.uploads: list[tuple[str, bytes]] = []      # (path, bytes) of every upload
        self.upload_failure: Exception | None = None

    # -- the test's side
    def add(self, path: str, data: bytes = b"", *, mtime: float = 1_700_000_000.0,
            xattrs: dict[str, str] | None = None, sized: bool = True) -> MemoryFile:
        """A file at `path`; its folders are made as needed."""
        self.mkdir(path.rpartition("/")[0])
        f = self.files[path] = MemoryFile(bytes(data), mtime, xattrs=dict(xattrs or {}), sized=sized)
        return f

    def mkdir(self, path: str) -> None:
        parts = [p for p in path.split("/") if p]
        for i in range(1, len(parts) + 1):
            self.folders.add("/".join(parts[:i]) + "/")

    def change(self, path: str, data: bytes) -> None:
        """New bytes, and so a new version."""
        f = self.files[path]
        f.data = bytes(data)
        f.version += 1

    def fail(self, path: str, exc: Exception | None, after: int = 0) -> None:
        """Reads of `path` deliver `after` bytes, then raise `exc` (None: reads work again)."""
        self.files[path].failure = exc
        self.files[path].fail_after = after

    def hold(self, *paths: str) -> trio.Event:
        """Reads of these files wait until the returned event is set."""
        gate = trio.Event()
        for p in paths:
            self.files[p].gate = gate
        return gate

    def remove(self, path: str) -> None:
        del self.files[path]

    def reads_of(self, path: str) -> list[tuple[int, int]]:
        return [(s, e) for p, s, e in self.reads if p == path]

    def reset_counts(self) -> None:
        self.counts.clear()
        self.bytes_read = 0
        self.reads.clear()

    # -- the storage verbs
    def root_ref(self) -> str:
        return ""

    async def list_dir(self, ref: str) -> Listing:
        self.counts["list"] += 1
        await trio.lowlevel.checkpoint()
        if ref not in self.folders:
            raise SourceError(f"{self.name}: no folder {ref!r}", errno.ENOENT, stale=True)
        entries = [Entry(d[len(ref):-1], Kind.DIR, ref=d, mtime=0.0, id=d)
                   for d in sorted(self.folders) if d != ref and _parent(d) == ref]
        for path, f in sorted(self.files.items()):
            if _parent(path) == ref:
                entries.append(self._entry(path, f))
        return Listing(entries)

    def _entry(self, path: str, f: MemoryFile) -> Entry:
        size = len(f.data)
        return Entry(path.rpartition("/")[2], Kind.FILE, ref=path, mtime=f.mtime,
                     size=size if f.sized else None, size_hint=size, id=path,
                     version=str(f.version), xattrs=dict(f.xattrs))

    async def sizes(self, entries: list[Entry]) -> None:
        if not self.metadata_sizes:
            return
        for entry in entries:
            f = self.files.get(entry.ref)
            if entry.size is None and f is not None:
                self.counts["sizes"] += 1
                entry.size = len(f.data)

    def target(self, entry: Entry) -> Stream:
        return MemoryStream(self, entry.ref)

    # -- writes
    def upload_dir(self, ref) -> bool:
        return isinstance(ref, str) and any(ref.startswith(d) for d in self.upload_dirs)

    def child_ref(self, dir_ref: str, name: str, kind: Kind) -> str:
        return dir_ref + name + ("/" if kind is Kind.DIR else "")

    async def upload(self, dir_ref: str, name: str, path: Path, size: int) -> None:
        self.counts["upload"] += 1
        await trio.lowlevel.checkpoint()
        if self.upload_failure is not None:
            raise self.upload_failure
        data = Path(path).read_bytes()
        assert len(data) == size
        key = self.child_ref(dir_ref, name, Kind.FILE)
        self.uploads.append((key, data))
        old = self.files.get(key)
        self.add(key, data)
        if old is not None:
            self.files[key].version = old.version + 1

    async def delete(self, entry: Entry) -> None:
        self.counts["delete"] += 1
        await trio.lowlevel.checkpoint()
        if self.files.pop(entry.ref, None) is None:
            raise SourceError(f"{self.name}: {entry.ref} does not exist any more", errno.ENOENT)


def _parent(path: str) -> str:
    """The folder ref holding `path` (a folder's path ends in "/")."""
    return path.rstrip("/").rpartition("/")[0] + "/" if "/" in path.rstrip("/") else ""
