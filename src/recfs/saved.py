"""Saved searches as folders: each `[[searches]]` table of the config is a read-only
folder `searches/{name}/{source}/…` whose files are the search's matches, each below
its source at its home path (`searches/legal-hold/kazoo/{account}/2025/10/10/x.mp3`).

This is a source of the tree like the services' (a folder of the root, listed by
`list_dir`, its listings kept, indexed and refreshed by the tree as any other), whose
folders come from a search (finder.py) instead of a service. Its files are the
recordings' own entries, as their home folders list them (same ref, id, version and
metadata), and the tree gives their nodes the home source (`Source.home`): so a file
read here or at home is one cache entry (one cache key), fetched once, sized once,
read by the same reader with the same verbs. Nothing here knows a service.

Freshness: a search runs when a listing below searches/{name} is asked for and its
last run is older than the search's TTL (`listing_ttl` of the table, else the
shortest of the sources'); every folder of one run expires with it. The services
that filter are asked afresh by each run; walked sources are read through the tree's
listings, which may still be fresh. `recfs refresh MOUNT/searches/x` drops the run
(`forget`), so the next listing runs the search again. A query without `since=` that
walks whole accounts runs anyway: the config is the confirmation. A run that fails in
any source fails the listing (EIO, with a log line): a partial set of matches is
never shown as the whole.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Hashable

import trio

from .config import SEARCHES_FOLDER, SavedSearch
from .finder import Found, Progress
from .search import Query, parse
from .sources.base import Entry, Kind, Listing, Source, SourceError

log = logging.getLogger("recfs.saved")

Search = Callable[[Query, Progress], Awaitable[list[Found]]]


@dataclass
class _Run:
    at: float                                       # epoch seconds it ended
    folders: dict[tuple[str, ...], list[Entry]]     # (source, *folders) -> its entries
    matches: int


class SavedSearches(Source):
    """The `searches` folder. Refs: `()` the folder itself, `(name,)` a saved search,
    `(name, source, *folders)` a folder of its matches; files keep their home refs."""

    kind = "searches"

    def __init__(self, searches: list[SavedSearch], sources: list[Source], search: Search):
        # what its listings depend on (M3 in index.py): the searches, and the sources
        # whose objects they show (a source gone or changed: the index forgets them)
        super().__init__(SEARCHES_FOLDER, (tuple(searches), tuple((s.name, s.kind, repr(s.options))
                                                                   for s in sources)), http=None)
        self.saved = {s.name: s for s in searches}
        self.queries = {s.name: parse(s.query) for s in searches}
        self.homes = {s.name: s for s in sources}
        self.search = search
        default = min((s.listing_ttl for s in sources), default=self.listing_ttl)
        self.ttls = {s.name: s.listing_ttl if s.listing_ttl is not None else default for s in searches}
        self.listing_ttl = min(self.ttls.values(), default=default)
        self.started = time.time()
        self._runs: dict[str, _Run] = {}
        self._running = {s.name: trio.Lock() for s in searches}   # one run of a search at a time

    def status(self) -> dict:
        """Each saved search's last run (`recfs status`)."""
        return {name: {"query": self.queries[name].text, "ttl_s": self.ttls[name],
                       "ran": self._runs[name].at if name in self._runs else None,
                       "matches": self._runs[name].matches if name in self._runs else None}
                for name in self.saved}

    def root_ref(self) -> Hashable:
        return ()

    def home(self, ref: Hashable) -> Source:
        """The files of a folder of matches are their home source's objects."""
        if len(ref) >= 2:
            return self.homes[ref[1]]
        return self

    def forget(self, ref: Hashable) -> None:
        if len(ref) >= 1:
            self._runs.pop(ref[0], None)

    async def list_dir(self, ref: Hashable) -> Listing:
        if not ref:
            return Listing([Entry(name, Kind.DIR, ref=(name,), mtime=self.started, id=name)
                            for name in self.saved], ttl=float("inf"))
        name = ref[0]
        if name not in self.saved:
            raise SourceError(f"searches: no saved search {name!r}")
        async with self._running[name]:     # folders listed together wait for one run
            run = self._runs.get(name)
            if run is None or time.time() - run.at >= self.ttls[name]:
                run = self._runs[name] = await self._run(name)
        # every folder of one run expires with it, so they never show two runs mixed
        ttl = max(0.0, run.at + self.ttls[name] - time.time())
        return Listing(list(run.folders.get(tuple(ref[1:]), ())), ttl=ttl)

    async def _run(self, name: str) -> _Run:
        query = self.queries[name]
        progress = Progress()
        try:
            found = await self.search(query, progress)
        except Exception as exc:
            raise SourceError(f"saved search {name!r} ({query.text}): {exc}") from None
        if progress.errors:
            raise SourceError(f"saved search {name!r} ({query.text}) is incomplete: "
                              f"{'; '.join(progress.errors[:3])}")
        log.info("saved search %s (%s): %d matches (filtered by %s; walked %s: %d folders, %d listed)",
                 name, query.text, len(found), ", ".join(progress.server_side) or "none",
                 ", ".join(progress.walked) or "none", progress.folders, progress.listed)
        folders: dict[tuple[str, ...], dict[str, Entry]] = {(): {}}
        for hit in found:
            parts = tuple(p for p in hit.path.split("/") if p)
            for depth in range(1, len(parts)):
                at_path = parts[:depth]
                parent = folders.setdefault(at_path[:-1], {})
                folder = parent.get(at_path[-1])
                if folder is None:
                    folder = parent[at_path[-1]] = Entry(at_path[-1], Kind.DIR, ref=(name, *at_path),
                                                         mtime=hit.time, id="/".join(at_path))
                    folders.setdefault(at_path, {})
                folder.mtime = max(folder.mtime, hit.time)      # its newest match
            # the home entry, under its home name (the tree makes it safe, as at home)
            folders[parts[:-1]][parts[-1]] = dataclasses.replace(hit.entry)
        # its TTL runs from its end: a run longer than the TTL (a walk of whole accounts)
        # must not have every folder listed after it run the search again
        return _Run(time.time(), {path: list(entries.values()) for path, entries in folders.items()},
                    len(found))
