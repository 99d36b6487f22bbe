"""The control operations of a mount: status, refresh, prefetch.

The FUSE front-end offers them as extended attributes on the mount root:
`getfattr -n user.recfs.status MNT` returns the daemon's state as JSON;
`setfattr -n user.recfs.refresh -v SUBPATH MNT` drops listing snapshots under SUBPATH;
`setfattr -n user.recfs.prefetch -v SUBPATH MNT` warms the cache for a subtree.
`setfattr -n user.recfs.search -v '{"id": ID, "terms": [...], "yes": false}' MNT`
starts a search (finder.py) in the background; `user.recfs.search:ID` is its state
and progress, `user.recfs.search:ID:OFFSET` a page of its results from OFFSET on
(each value well under the 64 KiB an extended attribute may hold).
Nothing of this appears as a file, so `rsync -a MNT` copies recordings only.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import TYPE_CHECKING, Callable

import trio

from .finder import NeedsConfirmation, Progress
from .search import QueryError, parse

if TYPE_CHECKING:
    from .core import Core

log = logging.getLogger("recfs.control")

SEARCH_JOBS = 16                # finished searches kept for their pages
PAGE_BYTES = 48 * 1024          # results per page: below the 64 KiB of an xattr value


def _rss() -> int | None:
    """The daemon's resident memory."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class Control:
    def __init__(self, core: "Core"):
        self.core = core
        self.started = time.time()
        self.prefetches: dict[str, dict] = {}
        self.searches: dict[str, dict] = {}     # job id -> state, progress, results
        self.extra: dict[str, Callable[[], object]] = {}    # front-end figures (FUSE requests, waits)

    async def get(self, name: str) -> bytes | None:
        if name == "status":
            return json.dumps(self.status(), indent=1).encode()
        if name.startswith("prefetch:"):
            job = self.prefetches.get(name[len("prefetch:"):])
            return json.dumps(job).encode() if job else None
        if name.startswith("search:"):
            return self.search_answer(name[len("search:"):])
        return None

    def status(self) -> dict:
        core = self.core
        cache, http, r = core.cache, core.http, core.reader.stats
        uploads = core.uploads
        return {
            "uptime_s": round(time.time() - self.started, 1),
            "sources": [{"name": s.name, "kind": s.kind} for s in core.sources],
            "cache": {"dir": str(cache.dir), "bytes": cache.total,
                      "max_size": cache.max_size, "evictions": cache.evictions,
                      # downloaded files whose newest chunks wait for the flusher (I2): a
                      # crash now would refetch them
                      "unsynced_files": len(cache.dirty), "sync_after_s": cache.sync_after},
            "http": {"requests": http.requests, "retries": http.retries,
                     "errors": http.errors, "bytes_received": http.bytes_received,
                     "batched_requests": http.batched_requests},
            # each service's request rate, as learnt from its 429s, and requests waiting
            "rate_limits": http.limits(),
            "reads": {"fetches": r.fetches, "fetched_bytes": r.fetched_bytes,
                      "cache_hits": r.cache_hits, "failures": r.failures,
                      "prefetched_files": r.prefetched_files},
            "bulk": {name: {"jobs": e.batcher.jobs_started} for name, e in core.reader.engines().items()},
            "open_files": len(core.reader.states),
            "listings": core.tree.listings,
            # listings in RAM (bounded by [tuning] entries_in_memory) and on disk (T7)
            "entries": {"in_memory": len(core.tree.inodes), "max_in_memory": core.tree.max_entries,
                        "folders_in_memory": core.tree.folders_in_memory(),
                        "in_index": core.index.count()},
            "rss_bytes": _rss(),
            "prefetches": self.prefetches,
            "uploads": {"pending": uploads.status(), "uploaded": uploads.uploaded,
                        "failed": uploads.failed},
            **{name: figure() for name, figure in self.extra.items()},
        }

    async def set(self, name: str, value: bytes) -> bool:
        if name == "search":
            return self.start_search(value)
        path = value.decode("utf-8", "replace")
        node = await self.core.resolve(path)
        if node is None:
            return False
        if name == "refresh":
            n = self.core.tree.invalidate_under(node)
            self.core.finder.forget(node.source)     # the root (no source): every source's
            log.info("refresh %s: %d folder snapshots dropped", path or "/", n)
            return True
        if name == "prefetch":
            # the job runs in the background; `recfs prefetch` polls prefetch:PATH for
            # progress, so no FUSE request waits for the length of a download
            key = path or "/"
            running = self.prefetches.get(key)
            if running and not running["finished"]:
                return True
            self.prefetches[key] = self._new_job()
            self.core.nursery.start_soon(self.prefetch, key, node)
            return True
        return False

    @staticmethod
    def _new_job() -> dict:
        return {"files": 0, "bytes": 0, "done_files": 0, "done_bytes": 0, "failed": 0,
                "listed": False, "finished": False, "started": time.time()}

    async def prefetch(self, path: str, node) -> None:
        """Warm the cache for every file under `node`; the files of sources with bulk
        jobs go by jobs first, the rest (and what the jobs left) by ranged GETs."""
        job = self.prefetches.setdefault(path or "/", self._new_job())
        try:
            await self._prefetch(job, node)
        except Exception as exc:     # a background job must never take the mount down
            log.error("prefetch %s: %s", path, exc)
            job["error"] = str(exc)
            job["failed"] += 1
        finally:
            job["finished"] = True

    async def _prefetch(self, job: dict, node) -> None:
        core = self.core
        folders = [node] if node.is_dir else []
        files = [] if node.is_dir else [node]
        while folders:
            d = folders.pop()
            kids = await core.children(d)
            folders.extend(k for k in kids if k.is_dir)
            files.extend(k for k in kids if not k.is_dir)
        job["files"] = len(files)
        by_source: dict[str, list] = {}
        for f in files:
            by_source.setdefault(f.source.name, []).append(f)
        for nodes in by_source.values():
            engine = core.reader.engine(nodes[0].source)
            if engine is not None:
                left = await engine.prefetch([n.entry for n in nodes])
                if left:
                    log.info("prefetch: %d files not delivered by bulk jobs; reading them directly", left)
        limiter = trio.CapacityLimiter(8)

        async def one(f):
            async with limiter:
                try:
                    await core.tree.ensure_size(f)
                    await core.reader.prefetch(f.source, f.entry)
                    job["done_bytes"] += f.size
                except Exception as exc:
                    job["failed"] += 1
                    log.error("prefetch %s: %s", f.path(), exc)
                job["done_files"] += 1

        job["bytes"] = sum(f.size for f in files)
        job["listed"] = True
        async with trio.open_nursery() as n:
            for f in files:
                n.start_soon(one, f)

    # -- searches: started by a setxattr, read back by getxattr, page by page
    def start_search(self, value: bytes) -> bool:
        try:
            asked = json.loads(value)
            job_id, terms, yes = str(asked["id"]), asked["terms"], bool(asked.get("yes"))
            if not (0 < len(job_id) <= 64 and job_id.isalnum()) or not isinstance(terms, list):
                raise ValueError("bad id or terms")
        except (ValueError, KeyError, TypeError):
            return False
        if job_id in self.searches:
            return True
        while len(self.searches) >= SEARCH_JOBS:
            del self.searches[next(iter(self.searches))]
        progress = Progress()
        job = self.searches[job_id] = {"state": "running", "progress": progress, "results": [],
                                       "started": time.time()}
        self.core.nursery.start_soon(self._search, job, [str(t) for t in terms], yes)
        return True

    async def _search(self, job: dict, terms: list[str], yes: bool) -> None:
        try:
            query = parse(terms)
            log.info("search %s", query.text)
            found = await self.core.search(query, yes=yes, progress=job["progress"])
            job["results"] = [f.as_json() for f in found]
            job["state"] = "done"
        except QueryError as exc:
            job.update(state="failed", error=f"query: {exc}")
        except NeedsConfirmation as exc:
            job.update(state="confirm", error=str(exc), folders=exc.folders)
        except Exception as exc:     # a background job must never take the mount down
            log.error("search %s: %s", " ".join(terms), exc)
            job.update(state="failed", error=str(exc))
        job["seconds"] = round(time.time() - job["started"], 3)

    def search_answer(self, key: str) -> bytes | None:
        job_id, _, offset = key.partition(":")
        job = self.searches.get(job_id)
        if job is None:
            return None
        if not offset:
            p = job["progress"]
            return json.dumps({k: v for k, v in job.items() if k not in ("results", "progress")}
                              | {"progress": vars(p), "count": len(job["results"])}).encode()
        try:
            start = int(offset)
        except ValueError:
            return None
        page, size, results = [], 2, job["results"]
        for item in results[start:]:
            text = json.dumps(item)
            if page and size + len(text) + 1 > PAGE_BYTES:
                break
            page.append(text)
            size += len(text) + 1
        nxt = start + len(page)
        return ('{"results": [' + ",".join(page) + '], "next": '
                + (str(nxt) if nxt < len(results) else "null") + "}").encode()
