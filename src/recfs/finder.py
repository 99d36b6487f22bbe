"""Searches, run by the core (`Core.search`): every source answers with the API's own
filters where its provider has them (`Source.search`), else by a walk of its folders
through the tree's listings, looking only into the folders whose dates may hold a
match, matching the metadata the listings carry (search.py). Nothing is downloaded.

What a repeat costs: a walk reads the snapshots the tree keeps (in RAM or in the
metadata index) while they are fresh, so a period already listed costs no request;
what a provider's own search found is kept for the source's listing TTL.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from . import names
from .search import Query, matches, overlaps
from .sources.base import Entry, Source

if TYPE_CHECKING:
    from .core import Core
    from .tree import Node

log = logging.getLogger("recfs.search")

WALKS_AT_ONCE = 8           # folders listed at once by a walk
KEPT_SEARCHES = 64          # server-side answers kept (each for its source's listing TTL)


@dataclass
class Found:
    path: str                   # in the mount, from its root ("/kazoo/…")
    source: str
    # its entry as its home folder lists it (same ref, id and version: the same cache
    # key), with its metadata: what a saved search's folder shows (saved.py)
    entry: Entry = field(repr=False)

    @property
    def time(self) -> float:
        """The time the mount files it under (its date folder's)."""
        return self.entry.mtime

    @property
    def metadata(self) -> dict[str, str]:
        return self.entry.xattrs

    def as_json(self) -> dict:
        return {"path": self.path, "source": self.source, "time": self.time, "metadata": self.metadata}


@dataclass
class Progress:
    sources: int = 0
    sources_done: int = 0
    folders: int = 0            # folders looked into by walks
    listed: int = 0             # of them, listed from the service (not from a snapshot)
    server_side: list[str] = field(default_factory=list)   # sources that filtered themselves
    walked: list[str] = field(default_factory=list)
    found: int = 0
    errors: list[str] = field(default_factory=list)


class NeedsConfirmation(Exception):
    """A search that would walk whole accounts: it says what it would cost."""

    def __init__(self, message: str, folders: int):
        super().__init__(message)
        self.folders = folders


class Finder:
    def __init__(self, core: "Core"):
        self.core = core
        self._kept: dict[tuple, tuple[float, list[Found]]] = {}

    async def search(self, query: Query, *, yes: bool = False, again: bool = False,
                     progress: Progress | None = None) -> list[Found]:
        """The recordings matching `query` in every source, newest first. Without a
        `since=` a source the API cannot filter would be walked whole: unless `yes`,
        that raises NeedsConfirmation, with the listings it would take. `again`: ask
        the services that filter afresh, not what they answered within their TTL."""
        progress = progress or Progress()
        # the sources' own folders only (not the saved searches' views of them)
        sources = [self.core.tree.root.children[s.name] for s in self.core.sources]
        progress.sources = len(sources)
        found: list[Found] = []
        filtered = [r for r in sources if r.source.filters_server_side(query)]
        to_walk = [r for r in sources if r not in filtered]
        if to_walk and query.since is None and not yes:
            unlisted = sum([await self._unlisted(root, query) for root in to_walk])
            if unlisted:
                raise NeedsConfirmation(
                    f"this search walks every folder of {', '.join(r.name for r in to_walk)} "
                    f"(their services cannot filter it): at least {unlisted} folder listings "
                    f"(requests), and one for each folder found below them; narrow it with "
                    f"since=DATE (--since DATE), or confirm with --yes", unlisted)
        for root in filtered:
            hits = await self._server_side(root.source, query, again)
            if hits is None:            # it could not after all: walk it
                to_walk.append(root)
                continue
            progress.server_side.append(root.source.name)
            progress.sources_done += 1
            found += hits
            progress.found = len(found)
        for root in to_walk:
            progress.walked.append(root.source.name)
            await self._walk(root, query, found, progress)
            progress.sources_done += 1
        found.sort(key=lambda f: (-f.time, f.path))
        return found

    async def _server_side(self, source: Source, query: Query, again: bool = False) -> list[Found] | None:
        key = (source.name, query.key())
        kept = self._kept.get(key)
        now = time.time()
        if kept is not None and now < kept[0] and not again:
            return kept[1]
        hits = await source.search(query)
        if hits is None:
            return None
        found = []
        for hit in hits:
            entry = hit.entry
            metadata = dict(entry.xattrs)
            if not matches(query, source.record(entry.name, metadata, entry.mtime)):
                continue
            parts = [source.name, *(names.clean(p) for p in hit.folders), names.clean(entry.name, entry.id)]
            found.append(Found("/" + "/".join(parts), source.name, dataclasses.replace(entry, xattrs=metadata)))
        if len(self._kept) >= KEPT_SEARCHES:
            self._kept = {k: v for k, v in self._kept.items() if now < v[0]}
            while len(self._kept) >= KEPT_SEARCHES:
                del self._kept[next(iter(self._kept))]
        self._kept[key] = (now + source.listing_ttl, found)
        return found

    def forget(self, source: Source | None = None) -> None:
        """Drop the kept server-side answers (of one source): a delete through the mount
        or a refresh changed what they would say."""
        self._kept = {k: v for k, v in self._kept.items() if source is not None and k[0] != source.name}

    def _looks_into(self, node: "Node", query: Query) -> bool:
        src = node.source
        ref = node.entry.ref
        return not src.search_skips(ref) and overlaps(src.folder_span(ref, node.entry.name), query)

    def _fresh(self, node: "Node") -> bool:
        """Whether the folder's listing answers without a request (RAM or index, T7)."""
        if self.core.tree.fresh(node):
            return True
        listed = self.core.index.listed(node.ino)
        return listed is not None and time.time() - listed[0] < listed[1]

    async def _unlisted(self, root: "Node", query: Query) -> int:
        """The folders a walk would list from the service, as far as the listings this
        mount holds tell (the folders below them are not known yet)."""
        count = 0
        stack = [root]
        while stack:
            node = stack.pop()
            if not self._fresh(node):
                count += 1
                continue
            for child in await self.core.children(node):
                if child.is_dir and self._looks_into(child, query):
                    stack.append(child)
        return count

    async def _walk(self, root: "Node", query: Query, found: list[Found], progress: Progress) -> None:
        limiter = trio.CapacityLimiter(WALKS_AT_ONCE)
        core = self.core

        async def folder(node: "Node", nursery: trio.Nursery) -> None:
            async with limiter:
                fresh = self._fresh(node)
                try:
                    children = await core.children(node)
                except Exception as exc:
                    log.error("search: listing %s: %s", node.path(), exc)
                    progress.errors.append(f"{node.path()}: {exc}")
                    return
                progress.folders += 1
                progress.listed += not fresh
            src = node.source
            for child in children:
                if child.is_dir:
                    if self._looks_into(child, query):
                        nursery.start_soon(folder, child, nursery)
                    continue
                metadata = dict(core.xattrs(child))
                if matches(query, src.record(child.name, metadata, child.entry.mtime)):
                    found.append(Found(child.path(), src.name, dataclasses.replace(child.entry, xattrs=metadata)))
                    progress.found += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(folder, root, nursery)
