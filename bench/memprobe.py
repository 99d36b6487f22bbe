"""Where the daemon's memory goes over a B9-like tree, without FUSE: the core walks the
generated tree as `find` makes the kernel do (every folder listed, every entry looked
up and held), and the process's RSS after a collection, the tree's counts and the
largest allocation sites (tracemalloc) are printed along the way.

    python -m bench.memprobe ENTRIES [--days N] [--sources alv,8x8,kz] [--bound N]
        [--tracemalloc] [--no-hold] [--no-collect] [--trim] [--twice]

(--no-collect: as the daemon, whose full collections are rare; --twice: a warm walk
after a pause of 3 s, for a profiler to attach to: the process id is written to
/tmp/memprobe.warm first.)
"""
from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import gc
import json
import os
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

from recfs.allocator import keep_large_blocks_mapped
from recfs.config import parse_config
from recfs.runtime import CoreThread

from .scale import ScaleServer, days_for


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("entries", type=int)
    p.add_argument("--tracemalloc", action="store_true")
    p.add_argument("--no-hold", action="store_true", help="the kernel forgets every entry at once")
    p.add_argument("--bound", type=int, default=100_000)
    p.add_argument("--no-collect", action="store_true", help="no gc.collect() before an RSS figure")
    p.add_argument("--twice", action="store_true", help="walk again (warm) after a pause")
    p.add_argument("--days", type=int, help="days of every source (default: from ENTRIES)")
    p.add_argument("--sources", default="alv,8x8")
    p.add_argument("--trim", action="store_true", help="malloc_trim(0) before each RSS figure")
    args = p.parse_args()
    gc.set_threshold(50_000, 20, 100)         # as the daemon (mount.py)
    keep_large_blocks_mapped()
    server = ScaleServer(args.days or days_for(args.entries), dt.datetime.now(dt.timezone.utc).date())
    tmp = Path(tempfile.mkdtemp(prefix="memprobe-"))
    tables = [server.info[s]["table"] for s in args.sources.split(",")]
    cfg = parse_config({"sources": tables, "cache": {"dir": str(tmp), "max_size": "40GiB", "min_free": "1GiB"},
                        "tuning": {"entries_in_memory": args.bound}})
    ct = CoreThread(cfg, tmp)
    if args.tracemalloc:
        tracemalloc.start(1)
    seen = [0]
    last: list = []
    t0 = time.monotonic()

    def report(label: str) -> None:
        if not args.no_collect:
            gc.collect()
        before = rss()
        if args.trim:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        tree = ct.core.tree
        print(json.dumps({"t": round(time.monotonic() - t0, 1), "at": label, "entries": seen[0],
                          "rss_mb": round(before / 1e6, 1), "trimmed_mb": round(rss() / 1e6, 1), "inodes": len(tree.inodes),
                          "lookups": sum(1 for c in tree._lookups if c), "hot": len(tree._hot), "gc": gc.get_count()}), flush=True)
        if args.tracemalloc:
            snap = tracemalloc.take_snapshot()
            if last:
                for stat in snap.compare_to(last[0], "lineno")[:6]:
                    print(f"   {stat.size_diff / 1e6:+7.1f} MB {stat.count_diff:+8d}  {stat.traceback[0]}")
            last[:] = [snap]

    async def walk(core) -> None:
        """Depth first in readdir order, as find goes."""
        tree = core.tree
        next_report = [50_000]

        async def visit(folder) -> None:
            subs = []
            nodes, rows = await core.for_readdir(folder)     # as fs.py's readdir
            told = [(c.ino, c) for c in nodes] if rows is None else [(r[0], r[2]) for r in rows]
            for ino, child in told:
                tree.remember(ino)              # readdirplus: the kernel holds the entry
                if args.no_hold:
                    tree.forget(ino, 1)
                if child is not None and child.is_dir:
                    subs.append(child)
                else:
                    seen[0] += 1
            if seen[0] >= next_report[0]:
                next_report[0] += 50_000
                report("walk")
            for sub in subs:
                await visit(sub)

        await visit(tree.root)

    ct.run(walk)
    report("end")
    if args.twice:
        Path("/tmp/memprobe.warm").write_text(str(os.getpid()))
        time.sleep(3)               # a profiler may attach
        t1 = time.monotonic()
        seen[0] = 0
        ct.run(walk)
        print(f"warm walk: {time.monotonic() - t1:.1f} s")
        report("warm")
    if args.tracemalloc:
        snap = tracemalloc.take_snapshot()
        total = sum(s.size for s in snap.statistics("filename"))
        print(f"tracemalloc: {total / 1e6:.1f} MB traced")
        for stat in snap.statistics("lineno")[:25]:
            print(f"{stat.size / 1e6:8.1f} MB {stat.count:9d}  {stat.traceback[0]}")
    ct.close()
    server.close()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
