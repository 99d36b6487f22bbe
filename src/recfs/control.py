"""The control interface: extended attributes on the mount root.

`getfattr -n user.recfs.status MNT` returns the daemon's state as JSON;
`setfattr -n user.recfs.refresh -v SUBPATH MNT` drops listing snapshots under SUBPATH;
`setfattr -n user.recfs.prefetch -v SUBPATH MNT` warms the cache for a subtree.
Nothing of this appears as a file, so `rsync -a MNT` copies recordings only.
"""
from __future__ import annotations

import json
import logging
import time

import trio

from .sources.base import Kind

log = logging.getLogger("recfs.control")


class Control:
    def __init__(self, tree, reader, cache, http, sources, nursery=None, uploads=None):
        self.nursery = nursery
        self.uploads = uploads
        self.ops = None             # the Operations, set once they exist
        self.tree = tree
        self.reader = reader
        self.cache = cache
        self.http = http
        self.sources = sources
        self.started = time.time()
        self.prefetches: dict[str, dict] = {}
        self.fuse_wait = None       # fusewait.FastWait, when installed

    async def get(self, name: str) -> bytes | None:
        if name == "status":
            return json.dumps(self.status(), indent=1).encode()
        if name.startswith("prefetch:"):
            job = self.prefetches.get(name[len("prefetch:"):])
            return json.dumps(job).encode() if job else None
        return None

    def status(self) -> dict:
        r = self.reader.stats
        return {
            "uptime_s": round(time.time() - self.started, 1),
            "sources": [{"name": s.name, "kind": s.kind} for s in self.sources],
            "cache": {"dir": str(self.cache.dir), "bytes": self.cache.total,
                      "max_size": self.cache.max_size, "evictions": self.cache.evictions,
                      # downloaded files whose newest chunks wait for the flusher (I2): a
                      # crash now would refetch them
                      "unsynced_files": len(self.cache.dirty), "sync_after_s": self.cache.sync_after},
            "http": {"requests": self.http.requests, "retries": self.http.retries,
                     "errors": self.http.errors, "bytes_received": self.http.bytes_received,
                     "batched_requests": self.http.batched_requests},
            "reads": {"fetches": r.fetches, "fetched_bytes": r.fetched_bytes,
                      "cache_hits": r.cache_hits, "failures": r.failures,
                      "prefetched_files": r.prefetched_files},
            "open_files": len(self.reader.states),
            "fuse_requests": dict(self.ops.op_counts) if self.ops else {},
            # how often the next FUSE request was already waiting (fusewait, F3)
            "fuse_waits": {"immediate": self.fuse_wait.immediate, "slept": self.fuse_wait.slept}
            if self.fuse_wait else None,
            "listings": self.tree.listings,
            "prefetches": self.prefetches,
            "uploads": {"pending": self.uploads.status() if self.uploads else [],
                        "uploaded": self.uploads.uploaded if self.uploads else 0,
                        "failed": self.uploads.failed if self.uploads else 0},
        }

    async def resolve(self, path: str):
        node = self.tree.root
        for part in [p for p in path.strip("/").split("/") if p]:
            if not node.is_dir:
                return None
            node = await self.tree.lookup(node, part) if node.ino != 1 else node.children.get(part)
            if node is None:
                return None
        return node

    async def set(self, name: str, value: bytes) -> bool:
        path = value.decode("utf-8", "replace")
        node = await self.resolve(path)
        if node is None:
            return False
        if name == "refresh":
            n = self.tree.invalidate_under(node)
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
            if self.nursery is None:
                await self.prefetch(key, node)
            else:
                self.nursery.start_soon(self.prefetch, key, node)
            return True
        return False

    @staticmethod
    def _new_job() -> dict:
        return {"files": 0, "bytes": 0, "done_files": 0, "done_bytes": 0, "failed": 0,
                "listed": False, "finished": False, "started": time.time()}

    async def prefetch(self, path: str, node) -> None:
        """Warm the cache for every file under `node`; folders whose provider has a
        bulk job use it, the rest are read with ranged GETs."""
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
        folders = [node] if node.is_dir else []
        files = [] if node.is_dir else [node]
        while folders:
            d = folders.pop()
            if d.ino == 1:
                kids = d.sorted_children()
            else:
                kids = await self.tree.children(d)
            folders.extend(k for k in kids if k.is_dir)
            plain = [k for k in kids if not k.is_dir]
            if plain and d.source is not None:
                try:
                    await d.source.prefetch_dir(d.entry.ref, [k.entry for k in plain])
                except Exception as exc:
                    log.error("prefetch %s: folder job failed: %s", d.path(), exc)
            files.extend(plain)
        job["files"] = len(files)
        limiter = trio.CapacityLimiter(8)

        async def one(f):
            async with limiter:
                try:
                    await self.tree.ensure_size(f)
                    await self.reader.prefetch(f.source, f.entry)
                    job["done_bytes"] += f.size
                except Exception as exc:
                    job["failed"] += 1
                    log.error("prefetch %s: %s", f.path(), exc)
                job["done_files"] += 1

        job["bytes"] = sum(f.size for f in files)
        job["listed"] = True
        async with trio.open_nursery() as n:
            for f in files:
                if f.entry.kind is Kind.FILE:
                    n.start_soon(one, f)
