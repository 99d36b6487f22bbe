"""The namespace: nodes with stable inode numbers, directory snapshots with TTLs,
lookup counts, and batched exact-size resolution. Plain async code: no pyfuse3.

Invariants:
 T1. An inode number is never reused within a mount. A node keeps its number across
     refreshes as long as its safe name, kind and object id stay the same. New nodes
     of a listing get their numbers in name order, so readdir order is name order
     where nothing was added since.
 T2. readdir offsets are inode numbers: children are served in inode order, so an
     insertion or deletion during a readdir neither repeats nor skips an entry.
 T3. A node leaves the inode table only when it is gone from its folder's snapshot
     and the kernel has forgotten it (lookup count 0).
 T4. A file is opened only with an exact size. A size asked for learns that file's
     size alone (`ensure_size`), unless the access pattern asks for the folder's
     (`learn_ahead`: files stat'ed or opened one after another, as ls -l and cp -r
     do): then the unknown sizes of the folder are learnt in chunks (of SIZE_CHUNK)
     in readdir order, in the background, up to AHEAD_CHUNKS ahead of the files
     asked for; a
     size asked for meanwhile waits only for the chunk holding its file. A size is
     learnt once, whoever asks.
 T5. A copy looks ahead by one folder at most, and only a copy that came into this
     folder from the one before it (in name order, as cp -r and rsync go; the access
     policy decides both), so that a copy of a single folder fetches nothing outside
     it: when such a copy opens one of the last LOOK_AHEAD_FILES files of a folder,
     the next folder is listed and the sizes of its first files (SIZE_CHUNK of them,
     at most LOOK_AHEAD_BYTES by their hints) are learnt as for a copy; the others
     when the copy gets there (T4).
 T6. A node made here (a file written into an upload folder, a folder made by mkdir)
     stays in its folder's snapshot, whatever the service lists, until a listing
     shows it; then it becomes the listed node, keeping its inode.
 T7. RAM holds folder snapshots in use, at most about `max_entries` nodes: each
     listing is written to the metadata index (index.py), and the snapshots used
     least recently leave RAM, their files' nodes with them (folders' own nodes stay).
     A folder whose snapshot left RAM is read back from the index, without a request
     while its listing is fresh, with the same inode numbers (T1); an inode the kernel
     still holds is answered by reading its folder back. Snapshots being listed or
     sized, or holding nodes made here (T6), stay. What RAM keeps beyond the bound is
     the kernel's lookup count of every inode it holds, 8 bytes an inode (`find` over
     a million entries has the kernel hold them all until memory pressure makes it
     forget them), and the heap's free memory is given back to the system after every
     EVICTED_PER_TRIM nodes that left RAM (allocator.py), so that the daemon's RSS
     stops growing once the bound is reached.
 T8. The kernel's readdir of a folder whose snapshot is out of RAM, while the index
     holds a fresh listing of it, is answered from the index's rows without putting the
     snapshot back: its folders get nodes (as every folder's node stays), its files none
     (`for_readdir`); the kernel then holds their inodes, answered as in T7 when it asks
     for one. The rows of the last TOLD_FOLDERS folders told stay between the calls of
     one readdir (a folder of a thousand files takes several), and leave when the
     folder is listed, read back, invalidated or changed here.
"""
from __future__ import annotations

import array
import enum
import hashlib
import logging
import time
from collections import OrderedDict
from operator import itemgetter
from typing import Awaitable, Callable, Iterable

import trio

from . import names
from .allocator import release_freed_memory
from .content.policy import AccessPolicy
from .http import background
from .index import DIR_CODE, NO_XATTRS, MetadataIndex, entry_of
from .sources.base import Entry, Kind, Source, SourceError

log = logging.getLogger("recfs.tree")

SIZE_CHUNK = 32             # sizes learnt together (a folder of 200 files: 7 chunks)
AHEAD_FIRST = 8             # the first chunk learnt ahead (T4)
AHEAD_CHUNKS = 2            # chunks learnt ahead at most (T4)
MAX_ENTRIES = 100_000       # nodes kept in RAM by default (T7)
LOOK_AHEAD_FILES = 32       # a copy this near the end of a folder has the next one prepared (T5)
LOOK_AHEAD_BYTES = 16 << 20  # at most this much (by size hints) is learnt there before the copy arrives
EVICTED_PER_TRIM = 20_000   # nodes that left RAM between two returns of freed memory (T7)
TOLD_FOLDERS = 4            # folders whose rows a readdir is answered from stay this many (T8)


class _SizeChunk:
    def __init__(self, nodes: list["Node"], for_copy: bool = False):
        self.nodes = nodes
        self.for_copy = for_copy        # learnt ahead of a copy (T5): small files come whole
        self.started = False
        self.done = trio.Event()


async def metadata_sizes(source: Source, entries: list[Entry], *, whole: bool, asked: bool) -> None:
    """Sizes from the provider's metadata only (a tree without a reader)."""
    await source.sizes(entries)

ROOT_INODE = 1


class Local(enum.Enum):
    """A node the service does not list (yet): shown until a listing has it (T6)."""
    WRITING = "writing"         # a file being written or waiting to be sent (`upload` holds it)
    UPLOADED = "uploaded"       # sent, not listed yet
    MADE_DIR = "made_dir"       # made by mkdir; no file has landed in it yet


class Node:
    __slots__ = ("ino", "parent", "name", "entry", "source", "children", "listed_at", "ttl",
                 "size_failed", "local", "upload", "recheck", "_sorted", "_files", "__weakref__")

    def __init__(self, ino: int, parent: "Node | None", name: str, entry: Entry, source: Source | None):
        self.ino = ino
        self.parent = parent
        self.name = name
        self.entry = entry
        self.source = source
        self.children: dict[str, Node] | None = None
        self.listed_at = 0.0                # epoch seconds of the snapshot in `children`
        self.ttl = 0.0
        self.size_failed = False
        self.local: Local | None = None     # not (yet) listed by the service
        self.upload = None                  # the uploads.Staged of a Local.WRITING file
        self.recheck = False                # refreshed: ask whether the cached bytes are current
        self._sorted: list[Node] | None = None    # children in inode order, until they change
        self._files: tuple[list[Entry], dict[str, int]] | None = None   # files in listing order

    @property
    def is_dir(self) -> bool:
        return self.entry.kind is Kind.DIR

    @property
    def size_known(self) -> bool:
        return self.entry.size is not None

    @property
    def size(self) -> int:
        e = self.entry
        return e.size if e.size is not None else e.size_hint

    def path(self) -> str:
        parts = []
        node: Node | None = self
        while node is not None and node.ino != ROOT_INODE:
            parts.append(node.name)
            node = node.parent
        return "/" + "/".join(reversed(parts))

    def sorted_children(self) -> list["Node"]:
        if self._sorted is None:
            self._sorted = sorted(self.children.values(), key=lambda n: n.ino) if self.children else []
        return self._sorted

    def children_changed(self) -> None:
        self._sorted = None
        self._files = None

    def files(self) -> tuple[list["Node"], list[Entry], dict[int, int]]:
        """The folder's files in readdir order (inode order: the order ls, cp -r, find
        and tar go in, and on a fresh listing name order too, as rsync goes), their
        entries, and each one's position by inode; kept until the folder changes."""
        if self._files is None:
            nodes = [c for c in self.sorted_children() if not c.is_dir]
            self._files = (nodes, [n.entry for n in nodes], {n.ino: i for i, n in enumerate(nodes)})
        return self._files


SizeLearner = Callable[..., Awaitable[None]]     # (source, entries, *, whole, asked) -> None


class Tree:
    def __init__(self, sources: Iterable[Source], cache=None, nursery: trio.Nursery | None = None,
                 learn_sizes: SizeLearner = metadata_sizes, policy: AccessPolicy | None = None,
                 index: MetadataIndex | None = None, max_entries: int = MAX_ENTRIES):
        self.cache = cache
        self.nursery = nursery          # runs the later size chunks of a folder
        self.learn_sizes = learn_sizes  # the reader's: metadata, else ranged GETs
        self.policy = policy or AccessPolicy()
        self.index = index              # T7; None: every snapshot stays in RAM
        self.max_entries = max_entries
        self.inodes: dict[int, Node] = {}
        # the kernel's lookup count (T3) by inode number: numbers are given in sequence,
        # and `find` has the kernel hold every one it met (T7)
        self._lookups = array.array("Q")
        self._evicted = 0                   # nodes that left RAM since memory was last returned
        self._next_ino = ROOT_INODE
        self.root = self._new_node(None, "", Entry("", Kind.DIR, ref=None, mtime=time.time()), None)
        self.root.children = {}
        self.root.listed_at = float("inf")
        self.root.ttl = float("inf")
        if index is not None:
            self._next_ino = max(self._next_ino, index.next_ino())
        self.sources = list(sources)
        for src in self.sources:
            entry = Entry(src.name, Kind.DIR, ref=src.root_ref(), mtime=time.time(), id=src.name)
            ino = index.child_ino(ROOT_INODE, src.name) if index is not None else None
            if index is not None:
                index.keep_source(src.name, _fingerprint(src), ino)
            self.root.children[src.name] = self._new_node(self.root, src.name, entry, src, ino)
        if index is not None:           # the sources' own numbers, for the next mount (M2)
            index.set_sources(ROOT_INODE, [(n.ino, name, n.entry) for name, n in self.root.children.items()])
        self.on_changed = lambda node: None       # fs.py: drop the kernel's cache of it
        self._listing: dict[int, trio.Event] = {}
        self._sizing: dict[int, _SizeChunk] = {}      # inode -> the chunk learning its size
        self._looked_ahead: set[int] = set()      # folders whose next folder was prepared (T5)
        self._ahead: dict[int, int] = {}          # folder inode -> position learnt up to (T4)
        self._hot: OrderedDict[int, Node] = OrderedDict()   # snapshots in RAM, least recent first
        self._recheck: set[int] = set()           # refreshed folders whose snapshot is not in RAM
        # folder inode -> (listed_at, ttl, rows) of the folders last told to the kernel from the index (T8)
        self._told: OrderedDict[int, tuple[float, float, list[tuple]]] = OrderedDict()
        self.listings = 0

    def _new_node(self, parent: Node | None, name: str, entry: Entry, source: Source | None,
                  ino: int | None = None) -> Node:
        if ino is None:
            ino = self._next_ino
            self._next_ino += 1
        node = Node(ino, parent, name, entry, source)
        self.inodes[ino] = node
        return node

    def get(self, ino: int) -> Node | None:
        node = self.inodes.get(ino)
        if node is None and self.index is not None and ino < self._next_ino:
            # a node whose folder snapshot left RAM (T7): read the folder back
            parent = self.inodes.get(self.index.parent_of(ino) or 0)
            if parent is not None and parent.is_dir and parent.children is None:
                self._read_back(parent, fresh_only=False)
                self._bound(parent)
                node = self.inodes.get(ino)
        return node

    def fresh(self, node: Node) -> bool:
        return node.children is not None and time.time() - node.listed_at < node.ttl

    async def children(self, node: Node) -> list[Node]:
        await self._snapshot(node)
        return node.sorted_children()

    async def for_readdir(self, node: Node) -> tuple[list[Node] | None, list[tuple] | None]:
        """What the kernel's readdir of a folder is told, in inode order (T2): its nodes
        while its snapshot is in RAM (nodes, None); else, while the index holds a fresh
        listing of it, (None, rows) read from there, a row being (ino, name, node, size,
        exact, mtime) with a node for a folder and None for a file (T8)."""
        if node.children is None and self.index is not None and node.ino not in self._listing:
            rows = self._rows(node)
            if rows is not None:
                return None, rows
        return await self.children(node), None

    def _rows(self, node: Node) -> list[tuple] | None:
        now = time.time()
        told = self._told.get(node.ino)
        if told is not None and now - told[0] < told[1]:
            self._told.move_to_end(node.ino)
            return told[2]
        snap = self.index.snapshot(node.ino, fresh_at=now)
        if snap is None:
            return None
        listed_at, ttl, stored = snap
        src = node.source
        home = src.home(node.entry.ref)
        known = {}
        if self.cache is not None:      # sizes learnt since the listing (as `_read_back`)
            keys = [home.cache_key_of(r[7], r[8]) for r in stored if r[5] is None and r[2] != DIR_CODE]
            if keys:
                known = self.cache.known_sizes(keys)
        inodes = self.inodes
        rows = []
        for row in stored:
            ino, name, kind, _, mtime, size, hint, id_, version = row
            if kind == DIR_CODE:
                child = inodes.get(ino)
                if child is None:
                    child = self._new_node(node, name, entry_of(row), src, ino)
                child.parent = node
                rows.append((ino, name, child, 0, True, mtime))
                continue
            if size is None and known:
                size = known.get(home.cache_key_of(id_, version))
            rows.append((ino, name, None, hint if size is None else size, size is not None, mtime))
        rows.sort(key=itemgetter(0))
        told = self._told
        told[node.ino] = (listed_at, ttl, rows)
        while len(told) > 1 and (len(told) > TOLD_FOLDERS
                                 or sum(len(t[2]) for t in told.values()) > self.max_entries):
            told.popitem(last=False)
        return rows

    async def lookup(self, parent: Node, name: str) -> Node | None:
        await self._snapshot(parent)
        return parent.children.get(name)

    async def _snapshot(self, node: Node) -> None:
        """The folder's snapshot, fresh, in RAM."""
        if not self.fresh(node):
            await self.refresh(node)
        if node.children is None:       # it left RAM while this caller waited (T7)
            self._read_back(node, fresh_only=False)
            self._bound(node)
        self._used(node)

    def invalidate(self, node: Node) -> None:
        """Make the next access to this folder list it again."""
        node.listed_at = 0.0
        node.ttl = 0.0
        self._told.pop(node.ino, None)
        if self.index is not None:
            self.index.expire(node.ino)

    def invalidate_under(self, node: Node) -> int:
        """Drop the snapshots of a folder and every folder below it (`recfs refresh`), and
        have each file's cached bytes checked against the service when it is next
        opened; return how many snapshots."""
        count = 0
        stack = [node]
        while stack:
            n = stack.pop()
            if n.is_dir and n.ino != ROOT_INODE:
                self.invalidate(n)
                n.source.forget(n.entry.ref)
                count += 1
                if n.children is None:
                    self._recheck.add(n.ino)
            if n.children:
                for c in n.children.values():
                    if c.is_dir:
                        stack.append(c)
                    else:
                        c.recheck = True
            elif n.is_dir and self.index is not None:     # its snapshot left RAM (T7)
                stack.extend(c for c in map(self.inodes.get, self.index.folders_in(n.ino)) if c)
        return count

    async def refresh(self, node: Node) -> None:
        """List a folder (single flight: concurrent callers wait for one listing); a
        snapshot that left RAM is read back from the index while it is fresh (T7)."""
        pending = self._listing.get(node.ino)
        if pending is not None:
            await pending.wait()
            if node.children is None and not self._read_back(node, fresh_only=False):
                raise SourceError(f"listing {node.path()} failed")
            return
        done = self._listing[node.ino] = trio.Event()
        try:
            if not self._read_back(node, fresh_only=True):
                listing = await node.source.list_dir(node.entry.ref)
                self.listings += 1
                if node.children is None:
                    self._read_back(node, fresh_only=False)     # the nodes to keep (T1)
                self._apply(node, listing.entries)
                node.ttl = listing.ttl if listing.ttl is not None else node.source.listing_ttl
                node.listed_at = time.time()
                self._save(node)
        finally:
            del self._listing[node.ino]
            done.set()
        self._used(node)
        self._bound(node)

    def _save(self, node: Node) -> None:
        """Write the folder's listing to the index; its files' metadata then lives there
        only (read back by `xattrs`)."""
        if self.index is None or node.children is None:
            return
        listed = [(c.ino, name, c.entry) for name, c in node.children.items() if c.local is None]
        self.index.save(node.ino, node.listed_at, node.ttl, listed)
        self._told.pop(node.ino, None)
        for _, _, entry in listed:
            if entry.kind is Kind.FILE:
                entry.xattrs = NO_XATTRS    # a source keeps what its verbs need in `ref`

    def _read_back(self, node: Node, *, fresh_only: bool) -> bool:
        """Put the folder's snapshot from the index back into RAM (T7), with the nodes'
        own inode numbers; True when it was there (and fresh, with `fresh_only`)."""
        if self.index is None or node.children is not None:
            return False
        snap = self.index.snapshot(node.ino, fresh_at=time.time() if fresh_only else None)
        if snap is None:
            return False
        listed_at, ttl, rows = snap
        self._told.pop(node.ino, None)
        src = node.source
        home = src.home(node.entry.ref)
        children: dict[str, Node] = {}
        recheck = node.ino in self._recheck
        self._recheck.discard(node.ino)
        inodes = self.inodes
        made = {row[0]: entry_of(row) for row in rows if row[0] not in inodes}
        self._known_sizes(home, list(made.values()))
        for row in rows:
            ino, name = row[0], row[1]
            child = inodes.get(ino)
            if child is None:
                entry = made[ino]
                child = self._new_node(node, name, entry, src if entry.kind is Kind.DIR else home, ino)
                child.recheck = recheck
            child.parent = node
            children[name] = child
        node.children = children
        node.children_changed()
        node.listed_at, node.ttl = listed_at, ttl
        self._used(node)
        return True

    def _used(self, node: Node) -> None:
        if node.ino != ROOT_INODE and node.children is not None:
            self._hot[node.ino] = node
            self._hot.move_to_end(node.ino)

    def _bound(self, keep: Node) -> None:
        """Let the snapshots used least recently leave RAM until it holds at most about
        `max_entries` nodes (T7)."""
        if self.index is None:
            return
        passes = len(self._hot)
        while len(self.inodes) > self.max_entries and self._hot and passes > 0:
            passes -= 1
            ino, folder = next(iter(self._hot.items()))
            if not folder.children or all(c.is_dir for c in folder.children.values()):
                del self._hot[ino]          # only folders: their nodes stay in RAM anyway
                continue
            if folder is keep or self._pinned(folder):
                self._hot.move_to_end(ino)
                continue
            self._evict(folder)

    def _pinned(self, folder: Node) -> bool:
        return folder.ino in self._listing or folder.children is None or any(
            c.local is not None or c.ino in self._sizing for c in folder.children.values())

    def _evict(self, folder: Node) -> None:
        self._hot.pop(folder.ino, None)
        for child in folder.children.values():
            if not child.is_dir:
                self.inodes.pop(child.ino, None)
                self._evicted += 1
                if child.recheck:
                    self._recheck.add(folder.ino)
        folder.children = None
        folder.children_changed()
        self._ahead.pop(folder.ino, None)
        if self._evicted >= EVICTED_PER_TRIM:
            self._evicted = 0
            release_freed_memory()

    def folders_in_memory(self) -> int:
        return len(self._hot)

    def xattrs(self, node: Node) -> dict[str, str]:
        """The entry's metadata: in RAM, or, once its listing is in the index, from there."""
        if node.entry.xattrs or self.index is None or node.local is not None:
            return node.entry.xattrs
        return self.index.xattrs(node.ino)

    def _known_sizes(self, source: Source, entries: list[Entry]) -> None:
        """The exact sizes the cache learnt earlier for files whose listing lacks them."""
        unknown = [e for e in entries if e.kind is Kind.FILE and e.size is None]
        if not unknown or self.cache is None:
            return
        keys = [source.cache_key(e) for e in unknown]
        known = self.cache.known_sizes(keys)
        if known:
            for entry, key in zip(unknown, keys):
                entry.size = known.get(key)

    def _apply(self, node: Node, entries: list[Entry]) -> None:
        src = node.source
        home = src.home(node.entry.ref)     # whose objects its files are (saved.py: another source's)
        old = node.children or {}
        safe = names.unique_names([(e.name, e.id or e.name) for e in entries])
        new: dict[str, Node] = {}
        self._known_sizes(home, entries)
        for name, entry in sorted(zip(safe, entries), key=lambda pair: pair[0]):
            child = old.get(name)
            if child is not None and child.local is not None and child.entry.kind is entry.kind:
                # what we uploaded (or the folder we made) is now listed by the service
                if entry.size is None and child.entry.size is not None and child.entry.kind is Kind.FILE \
                        and abs((entry.size_hint or 0) - child.entry.size) <= 1024:
                    entry.size = child.entry.size
                child.entry = entry
                child.local = child.upload = None
                if child.is_dir:
                    self.invalidate(child)
                new[name] = child
                continue
            if child is not None and child.entry.kind is entry.kind and child.entry.id == entry.id:
                if child.entry.version == entry.version and child.entry.size is not None \
                        and entry.size is None:
                    entry.size = child.entry.size      # keep a size resolved earlier
                changed = child.entry.version != entry.version and entry.kind is Kind.FILE
                child.entry = entry
                if changed:
                    self.on_changed(child)
                child.size_failed = False
            else:
                child = self._new_node(node, name, entry, src if entry.kind is Kind.DIR else home)
            new[name] = child
        for name, child in old.items():
            if child.local is not None and name not in new:
                new[name] = child          # not on the service yet: keep showing it
                continue
            if new.get(name) is not child:
                child.parent = None
                if self.lookups(child.ino) <= 0:
                    self._drop(child)
        node.children = new
        node.children_changed()
        self._ahead.pop(node.ino, None)

    def add_local(self, parent: Node, name: str, entry: Entry, local: Local, upload=None) -> Node:
        """A file being written, or a folder made by mkdir, before the service has it (T6)."""
        node = self._new_node(parent, name, entry, parent.source)
        node.local = local
        node.upload = upload
        if entry.kind is Kind.DIR:
            node.children = {}
            node.listed_at = time.time()
            node.ttl = float("inf")        # nothing to list until a file lands in it
        parent.children[name] = node
        parent.children_changed()
        return node

    def uploaded(self, node: Node, entry: Entry) -> None:
        """The file `node` was written into has reached the service: it shows `entry`
        until a listing has it (T6), and the folders made for it exist there now."""
        node.entry = entry
        node.local, node.upload = Local.UPLOADED, None
        parent = node.parent
        while parent is not None and parent.local is Local.MADE_DIR:
            parent.local = None
            parent = parent.parent
        if node.parent is not None:
            self.invalidate(node.parent)

    def remove(self, node: Node) -> None:
        """Take a node out of its folder (deleted, or a staged file discarded)."""
        parent = node.parent
        if parent is not None and parent.children and parent.children.get(node.name) is node:
            del parent.children[node.name]
            parent.children_changed()
        node.parent = None
        self._told.clear()
        if self.index is not None:
            self.index.remove(node.ino)
        if self.lookups(node.ino) <= 0:
            self._drop(node)

    def _drop(self, node: Node) -> None:
        self.inodes.pop(node.ino, None)
        self._hot.pop(node.ino, None)
        if node.children:
            for child in node.children.values():
                if self.lookups(child.ino) <= 0:
                    self._drop(child)

    # -- the kernel's lookup counts (T3), by inode: kept whether or not the node is in RAM
    def lookups(self, ino: int) -> int:
        counts = self._lookups
        return counts[ino] if ino < len(counts) else 0

    def remember(self, ino: int) -> None:
        counts = self._lookups
        if ino >= len(counts):
            counts.frombytes(bytes(counts.itemsize * max(ino + 1 - len(counts), len(counts) // 2, 1024)))
        counts[ino] += 1

    def forget(self, ino: int, count: int) -> None:
        if ino == ROOT_INODE or self.lookups(ino) <= 0:
            return
        left = self._lookups[ino] - count
        if left > 0:
            self._lookups[ino] = left
            return
        self._lookups[ino] = 0
        node = self.inodes.get(ino)
        if node is not None and node.parent is None:
            self._drop(node)

    # -- exact sizes (T4)
    async def ensure_size(self, node: Node) -> None:
        """Learn the exact size of `node` (alone, unless a chunk holding it is under way
        or planned: then that chunk's)."""
        if node.size_known or node.is_dir:
            return
        chunk = self._sizing.get(node.ino)
        if chunk is None:
            if node.size_failed:
                raise SourceError(f"{node.source.name}: cannot learn the size of {node.path()}")
            chunk = self._chunked([node], 1)[0]
        if chunk.started:
            await chunk.done.wait()
        else:
            await self._resolve_chunk(chunk, asked=True)
        if not node.size_known:
            raise SourceError(f"{node.source.name}: cannot learn the size of {node.path()}")

    def learn_ahead(self, node: Node) -> None:
        """The access pattern asks for the sizes of `node`'s folder (T4): keep the
        unknown ones learnt up to AHEAD_CHUNKS chunks ahead of `node` in readdir order, in the
        background. The first chunk is small (AHEAD_FIRST): whether a chunk's small
        files come whole is decided when it starts, and the pattern may just be
        showing itself (the second stat of a cp -r comes before its second open)."""
        folder = node.parent
        if folder is None or self.nursery is None:
            return
        nodes, _, position = folder.files()
        pos = position.get(node.ino)
        if pos is None:
            return
        planned = max(pos, self._ahead.get(folder.ino, pos))
        if planned - pos >= AHEAD_CHUNKS * SIZE_CHUNK or planned >= len(nodes):
            return
        size = AHEAD_FIRST if planned == pos else SIZE_CHUNK
        batch = [c for c in nodes[planned:planned + size]
                 if not c.size_known and not c.size_failed and c.ino not in self._sizing]
        if len(self._ahead) >= 16384:
            self._ahead.clear()
        self._ahead[folder.ino] = planned + size
        if batch:
            self.nursery.start_soon(self._resolve_in_order, self._chunked(batch, len(batch)))

    # -- a copy going through folders (T5)
    def copy_progress(self, node: Node) -> None:
        """`node` was just opened. Near the end of a folder being copied, by a copy that
        came into it from the folder before, prepare the next folder, so the copy does
        not wait for its listing and first sizes."""
        folder = node.parent
        if folder is None or self.nursery is None or folder.ino in self._looked_ahead \
                or folder.parent is None or folder.parent.ino == ROOT_INODE \
                or not self.policy.came_from_before(folder.ino):
            return
        nodes, _, position = folder.files()
        index = position.get(node.ino)
        if index is not None and index >= len(nodes) - LOOK_AHEAD_FILES:
            if len(self._looked_ahead) >= 4096:
                self._looked_ahead.clear()
            self._looked_ahead.add(folder.ino)
            self.nursery.start_soon(self._look_ahead, folder)

    def folder_before(self, folder: Node) -> int | None:
        """The inode of the folder just before `folder` in name order (for the policy)."""
        if folder.parent is None or folder.parent.ino == ROOT_INODE:
            return None
        before = self._sibling(folder, before=True)
        return before.ino if before is not None else None

    @staticmethod
    def _sibling(folder: Node, before: bool) -> Node | None:
        """The folder just before (or after) `folder` in name order (None while the
        parent's snapshot is out of RAM: a guess not worth reading it back)."""
        if folder.parent is None or folder.parent.children is None:
            return None
        near = [c for c in folder.parent.children.values()
                if c.is_dir and (c.name < folder.name if before else c.name > folder.name)]
        return (max if before else min)(near, key=lambda n: n.name) if near else None

    async def _look_ahead(self, folder: Node) -> None:
        with background():
            await self._prepare_next(folder)

    async def _prepare_next(self, folder: Node) -> None:
        nxt = self._sibling(folder, before=False)
        if nxt is None:
            return
        try:
            if not self.fresh(nxt):
                await self.refresh(nxt)
        except Exception as exc:        # a guess: the copy lists it itself if it comes
            log.debug("looking ahead into %s: %s", nxt.path(), exc)
            return
        batch, budget = [], LOOK_AHEAD_BYTES
        for c in nxt.files()[0]:
            if len(batch) >= SIZE_CHUNK or (batch and budget <= 0):
                break
            if not c.size_known and not c.size_failed and c.ino not in self._sizing:
                batch.append(c)
                budget -= c.entry.size_hint or 0
        if batch:
            chunk = self._chunked(batch, len(batch))[0]
            chunk.for_copy = True
            await self._resolve_chunk(chunk)

    def _chunked(self, nodes: list[Node], size: int) -> list[_SizeChunk]:
        """`nodes` in chunks of `size`, each registered as the one learning their sizes."""
        chunks = [_SizeChunk(nodes[i:i + size]) for i in range(0, len(nodes), size)]
        for ch in chunks:
            for c in ch.nodes:
                self._sizing[c.ino] = ch
        return chunks

    async def _resolve_in_order(self, chunks: list[_SizeChunk]) -> None:
        with background():              # learnt ahead: asked-for sizes go first
            for chunk in chunks:
                if not chunk.started:
                    await self._resolve_chunk(chunk)

    async def _resolve_chunk(self, chunk: _SizeChunk, asked: bool = False) -> None:
        """Learn the chunk's sizes; `asked`: somebody waits for one of them."""
        chunk.started = True
        nodes = chunk.nodes
        folder = nodes[0].parent
        whole = chunk.for_copy or (folder is not None and self.policy.copying(folder.ino))
        # learnt since it was listed, through another path to it (a saved search's)
        self._known_sizes(nodes[0].source, [c.entry for c in nodes])
        try:
            await self.learn_sizes(nodes[0].source, [c.entry for c in nodes], whole=whole, asked=asked)
        except Exception as exc:        # runs in the background too: never end the mount
            log.error("%s: learning sizes in %s: %s", nodes[0].source.name,
                      folder.path() if folder else "/", exc)
        finally:
            learnt = []
            for c in nodes:
                if c.entry.size is None:
                    c.size_failed = True
                else:
                    learnt.append((c.source.cache_key(c.entry), c.entry.size))
                if self._sizing.get(c.ino) is chunk:
                    del self._sizing[c.ino]
            if self.cache is not None and learnt:
                self.cache.remember_sizes(learnt)   # a snapshot read back finds them there (T7)
            chunk.done.set()


def _fingerprint(source: Source) -> str:
    """What a source's listings depend on (M3 in index.py): its kind and configuration."""
    return hashlib.sha256(f"{source.kind}:{source.options!r}".encode()).hexdigest()
