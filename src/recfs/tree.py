"""The namespace: nodes with stable inode numbers, directory snapshots with TTLs,
lookup counts, and batched exact-size resolution. Plain async code: no pyfuse3.

Invariants:
 T1. An inode number is never reused within a mount. A node keeps its number across
     refreshes as long as its safe name, kind and object id stay the same.
 T2. readdir offsets are inode numbers: children are served in inode order, so an
     insertion or deletion during a readdir neither repeats nor skips an entry.
 T3. A node leaves the inode table only when it is gone from its folder's snapshot
     and the kernel has forgotten it (lookup count 0).
 T4. A file is opened only with an exact size: `ensure_size` resolves the unknown
     sizes of all the files of a folder concurrently, in chunks; an open waits only
     for the chunk holding its file.
 T5. A copy looks ahead by one folder at most, and only a copy that came into this
     folder from the one before it (in name order, as cp -r and rsync go), so that a
     copy of a single folder fetches nothing outside it: when such a copy opens one of
     the last LOOK_AHEAD_FILES files of a folder, the next folder is listed and the
     sizes of its first files (SIZE_CHUNK of them, at most LOOK_AHEAD_BYTES by their
     hints) are learnt; its other chunks are registered but wait ("parked") until the
     copy opens a file there or a size there is asked for (then all of them follow in
     the background). A chunk is resolved once, whoever starts it.
"""
from __future__ import annotations

import logging
import time
from typing import Iterable

import trio

from . import names
from .sources.base import Entry, Kind, Source, SourceError

log = logging.getLogger("recfs.tree")

SIZE_CHUNK = 32             # sizes learnt together (a folder of 200 files: 7 chunks)
LOOK_AHEAD_FILES = 32       # a copy this near the end of a folder has the next one prepared (T5)
LOOK_AHEAD_BYTES = 16 << 20  # at most this much (by size hints) is learnt there before the copy arrives
MAX_PARKED = 16             # folders prepared ahead whose copy has not arrived yet


class _SizeChunk:
    def __init__(self, nodes: list["Node"]):
        self.nodes = nodes
        self.started = False
        self.done = trio.Event()

ROOT_INODE = 1


class Node:
    __slots__ = ("ino", "parent", "name", "entry", "source", "children", "listed_at", "ttl",
                 "lookups", "size_failed", "staged", "_sorted", "_files", "__weakref__")

    def __init__(self, ino: int, parent: "Node | None", name: str, entry: Entry, source: Source | None):
        self.ino = ino
        self.parent = parent
        self.name = name
        self.entry = entry
        self.source = source
        self.children: dict[str, Node] | None = None
        self.listed_at = 0.0
        self.ttl = 0.0
        self.lookups = 0
        self.size_failed = False
        # not (yet) on the service: an uploads.Staged being written or waiting to be sent,
        # "uploaded" (sent, not listed yet) or "dir" (made by mkdir); shown until listed
        self.staged = None
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

    def files(self) -> tuple[list[Entry], dict[str, int]]:
        """The folder's files in name order (the order cp -r and rsync read them) and
        each one's position by object id; kept until the folder changes."""
        if self._files is None:
            kids = sorted((c for c in (self.children or {}).values() if not c.is_dir),
                          key=lambda n: n.name)
            entries = [c.entry for c in kids]
            self._files = (entries, {e.id: i for i, e in enumerate(entries)})
        return self._files


class Tree:
    def __init__(self, sources: Iterable[Source], cache=None, nursery: trio.Nursery | None = None):
        self.cache = cache
        self.nursery = nursery          # runs the later size chunks of a folder
        self.inodes: dict[int, Node] = {}
        self._next_ino = ROOT_INODE
        self.root = self._new_node(None, "", Entry("", Kind.DIR, ref=None, mtime=time.time()), None)
        self.root.children = {}
        self.root.listed_at = float("inf")
        self.sources = list(sources)
        for src in self.sources:
            entry = Entry(src.name, Kind.DIR, ref=src.root_ref(), mtime=time.time(), id=src.name)
            self.root.children[src.name] = self._new_node(self.root, src.name, entry, src)
        self.on_changed = lambda node: None       # fs.py: drop the kernel's cache of it
        self._listing: dict[int, trio.Event] = {}
        self._sizing: dict[int, _SizeChunk] = {}      # inode -> the chunk learning its size
        # folders a copy went through -> whether their look-ahead was decided (T5)
        self._copied: dict[int, bool] = {}
        self._parked: dict[int, list[_SizeChunk]] = {}  # folder inode -> chunks waiting for the copy
        self.listings = 0

    def _new_node(self, parent: Node | None, name: str, entry: Entry, source: Source | None) -> Node:
        ino = self._next_ino
        self._next_ino += 1
        node = Node(ino, parent, name, entry, source)
        self.inodes[ino] = node
        return node

    def get(self, ino: int) -> Node | None:
        return self.inodes.get(ino)

    def fresh(self, node: Node) -> bool:
        return node.children is not None and time.monotonic() - node.listed_at < node.ttl

    async def children(self, node: Node) -> list[Node]:
        if not self.fresh(node):
            await self.refresh(node)
        return node.sorted_children()

    async def lookup(self, parent: Node, name: str) -> Node | None:
        if not self.fresh(parent):
            await self.refresh(parent)
        return parent.children.get(name) if parent.children else None

    def invalidate(self, node: Node) -> None:
        """Make the next access to this folder list it again."""
        node.listed_at = 0.0
        node.ttl = 0.0

    def invalidate_under(self, node: Node) -> int:
        """Drop the snapshots of a folder and every folder below it; return how many."""
        count = 0
        stack = [node]
        while stack:
            n = stack.pop()
            if n.children is not None and n.ino != ROOT_INODE:
                self.invalidate(n)
                count += 1
            if n.children:
                stack.extend(c for c in n.children.values() if c.is_dir)
        return count

    async def refresh(self, node: Node) -> None:
        """List a folder (single flight: concurrent callers wait for one listing)."""
        pending = self._listing.get(node.ino)
        if pending is not None:
            await pending.wait()
            if node.children is None:
                raise SourceError(f"listing {node.path()} failed")
            return
        done = self._listing[node.ino] = trio.Event()
        try:
            listing = await node.source.list_dir(node.entry.ref)
            self.listings += 1
            self._apply(node, listing.entries)
            node.ttl = listing.ttl if listing.ttl is not None else node.source.listing_ttl
            node.listed_at = time.monotonic()
        finally:
            del self._listing[node.ino]
            done.set()

    def _apply(self, node: Node, entries: list[Entry]) -> None:
        src = node.source
        old = node.children or {}
        safe = names.unique_names([(e.name, e.id or e.name) for e in entries])
        new: dict[str, Node] = {}
        for name, entry in zip(safe, entries):
            if entry.kind is Kind.FILE and entry.size is None and self.cache is not None:
                entry.size = self.cache.known_size(src.cache_key(entry))
            child = old.get(name)
            if child is not None and child.staged is not None and child.entry.kind is entry.kind:
                # what we uploaded (or the folder we made) is now listed by the service
                if entry.size is None and child.entry.size is not None and child.entry.kind is Kind.FILE \
                        and abs((entry.size_hint or 0) - child.entry.size) <= 1024:
                    entry.size = child.entry.size
                child.entry = entry
                child.staged = None
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
                child = self._new_node(node, name, entry, src)
            new[name] = child
        for name, child in old.items():
            if child.staged is not None and name not in new:
                new[name] = child          # not on the service yet: keep showing it
                continue
            if new.get(name) is not child:
                child.parent = None
                if child.lookups <= 0:
                    self._drop(child)
        node.children = new
        node.children_changed()

    def add_local(self, parent: Node, name: str, entry: Entry, staged) -> Node:
        """A file being written, or a folder made by mkdir, before the service has it."""
        node = self._new_node(parent, name, entry, parent.source)
        node.staged = staged
        if entry.kind is Kind.DIR:
            node.children = {}
            node.listed_at = time.monotonic()
            node.ttl = float("inf")        # nothing to list until a file lands in it
        parent.children[name] = node
        parent.children_changed()
        return node

    def remove(self, node: Node) -> None:
        """Take a node out of its folder (deleted, or a staged file discarded)."""
        parent = node.parent
        if parent is not None and parent.children and parent.children.get(node.name) is node:
            del parent.children[node.name]
            parent.children_changed()
        node.parent = None
        if node.lookups <= 0:
            self._drop(node)

    def _drop(self, node: Node) -> None:
        self.inodes.pop(node.ino, None)
        if node.children:
            for child in node.children.values():
                if child.lookups <= 0:
                    self._drop(child)

    def remember(self, node: Node) -> None:
        node.lookups += 1

    def forget(self, ino: int, count: int) -> None:
        node = self.inodes.get(ino)
        if node is None or ino == ROOT_INODE:
            return
        node.lookups -= count
        if node.lookups <= 0 and node.parent is None:
            self._drop(node)

    # -- exact sizes
    async def ensure_size(self, node: Node) -> None:
        """Resolve the exact size of `node`, and then those of its unresolved
        siblings (T4).

        The siblings are resolved concurrently, in chunks of SIZE_CHUNK in folder
        order, by a background task; a caller waits only for the chunk holding its
        file, and runs that chunk itself if it has not started yet. So `cp -r` copies
        the first files while the sizes of the later ones are still being learnt."""
        if node.size_known or node.is_dir:
            return
        chunk = self._sizing.get(node.ino)
        if chunk is None and not node.size_failed:
            batch = [node] + [c for c in self._unsized(node.parent) if c is not node]
            size = SIZE_CHUNK if self.nursery is not None else len(batch)
            chunks = self._chunked(batch, size)
            await self._resolve_chunk(chunks[0])
            if len(chunks) > 1:
                self.nursery.start_soon(self._resolve_in_order, chunks[1:])
        elif chunk is not None:
            self._resume_parked(node.parent)    # a size of a prepared folder asked for (T5)
            if chunk.started:
                await chunk.done.wait()
            else:
                await self._resolve_chunk(chunk)
        if not node.size_known:
            raise SourceError(f"{node.source.name}: cannot learn the size of {node.path()}")

    # -- a copy going through folders (T5)
    def copy_progress(self, node: Node) -> None:
        """`node` was just opened; if a copy is under way (the reader saw its folder's
        files opened in order), learn the parked sizes of its folder, and near the end
        of a folder the copy came into from the one before, prepare the next folder, so
        the copy waits for neither."""
        folder = node.parent
        if folder is None or self.nursery is None or node.source is None \
                or not node.source.copying():
            return
        self._resume_parked(folder)
        if self._copied.get(folder.ino) or folder.parent is None or folder.parent.ino == ROOT_INODE:
            return
        if len(self._copied) >= 4096:
            self._copied.clear()
        files, position = folder.files()
        index = position.get(node.entry.id)
        self._copied[folder.ino] = near_end = \
            index is not None and index >= len(files) - LOOK_AHEAD_FILES
        if not near_end:
            return
        came_from = self._sibling(folder, before=True)
        if came_from is not None and came_from.ino in self._copied:
            self.nursery.start_soon(self._look_ahead, folder)

    @staticmethod
    def _sibling(folder: Node, before: bool) -> Node | None:
        """The folder just before (or after) `folder` in name order."""
        near = [c for c in folder.parent.children.values()
                if c.is_dir and (c.name < folder.name if before else c.name > folder.name)]
        return (max if before else min)(near, key=lambda n: n.name) if near else None

    async def _look_ahead(self, folder: Node) -> None:
        nxt = self._sibling(folder, before=False)
        if nxt is None:
            return
        try:
            if not self.fresh(nxt):
                await self.refresh(nxt)
        except Exception as exc:        # a guess: the copy lists it itself if it comes
            log.debug("looking ahead into %s: %s", nxt.path(), exc)
            return
        batch = sorted(self._unsized(nxt), key=lambda n: n.name)
        if not batch:
            return
        first, budget = 0, LOOK_AHEAD_BYTES
        while first < min(len(batch), SIZE_CHUNK) and (first == 0 or budget > 0):
            budget -= batch[first].entry.size_hint or 0
            first += 1
        chunks = self._chunked(batch[:first], first) + self._chunked(batch[first:], SIZE_CHUNK)
        if len(chunks) > 1:
            self._park(nxt.ino, chunks[1:])
        await self._resolve_chunk(chunks[0])

    def _resume_parked(self, folder: Node | None) -> None:
        parked = self._parked.pop(folder.ino, None) if folder is not None and self._parked else None
        if parked and self.nursery is not None:
            self.nursery.start_soon(self._resolve_in_order, parked)

    def _park(self, folder_ino: int, chunks: list[_SizeChunk]) -> None:
        while len(self._parked) >= MAX_PARKED:      # a copy that never came: forget its oldest
            for ch in self._parked.pop(next(iter(self._parked))):
                if not ch.started:
                    for c in ch.nodes:
                        if self._sizing.get(c.ino) is ch:
                            del self._sizing[c.ino]
        self._parked[folder_ino] = chunks

    def _unsized(self, folder: Node | None) -> list[Node]:
        """The files of `folder` whose size is neither known nor being learnt."""
        return [c for c in (folder.children.values() if folder is not None and folder.children else [])
                if not c.is_dir and not c.size_known and not c.size_failed and c.ino not in self._sizing]

    def _chunked(self, nodes: list[Node], size: int) -> list[_SizeChunk]:
        """`nodes` in chunks of `size`, each registered as the one learning their sizes."""
        chunks = [_SizeChunk(nodes[i:i + size]) for i in range(0, len(nodes), size)]
        for ch in chunks:
            for c in ch.nodes:
                self._sizing[c.ino] = ch
        return chunks

    async def _resolve_in_order(self, chunks: list[_SizeChunk]) -> None:
        for chunk in chunks:
            if not chunk.started:
                await self._resolve_chunk(chunk)

    async def _resolve_chunk(self, chunk: _SizeChunk) -> None:
        chunk.started = True
        nodes = chunk.nodes
        try:
            await nodes[0].source.resolve_sizes([c.entry for c in nodes])
        except Exception as exc:        # runs in the background too: never end the mount
            log.error("%s: learning sizes in %s: %s", nodes[0].source.name,
                      nodes[0].parent.path() if nodes[0].parent else "/", exc)
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
                self.cache.remember_sizes(learnt)
            chunk.done.set()
