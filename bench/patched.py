"""`python -m bench.patched FIXES recfs-args...`: recfs with candidate read-path fixes
applied by monkeypatching, so their effect can be measured before anyone changes
src/ (`scripts/bench --patched keepalive,readahead,...`). Not a place for product code.

FIXES is a comma-separated list of:
  keepalive   Http._drain reads a ranged body to its end instead of `break`ing at the
              last wanted byte: the connection then goes back to the pool (today every
              ranged GET closes its connection and the next one opens a new one).
  readahead   set the mount's read_ahead_kb after the kernel processed FUSE INIT (today
              it is set before, and INIT's max_readahead of 128 KiB overrides it), so
              the kernel sends 1 MiB READs instead of 128 KiB.
  flush       Cache.flush's fdatasync calls run in a worker thread, not on the trio
              loop (today every FUSE request and download stalls while the data files
              of the last second are synced to disk).
  batch       sequential read-ahead tops up only when less than half the window is
              ahead of the reader, in requests of max_request bytes (today every 128 KiB
              READ starts one 256 KiB GET once the window has ramped up).
"""
from __future__ import annotations

import os
import sys
import threading


def apply(fixes: set[str]) -> None:
    if "keepalive" in fixes:
        from recfs import http as H

        async def _drain(self, resp, stream_pos, pos, end, sink):
            try:
                async for chunk in resp.aiter_raw():
                    self.bytes_received += len(chunk)
                    cstart, cend = stream_pos, stream_pos + len(chunk)
                    stream_pos = cend
                    if cend <= pos:
                        continue
                    lo = pos - cstart
                    hi = min(len(chunk), end - cstart)
                    if hi > lo:
                        sink(pos, chunk[lo:hi] if (lo or hi < len(chunk)) else chunk)
                        pos += hi - lo
                    if pos >= end and resp.status_code != 206:
                        break          # a 200 ignoring Range: the rest is not wanted
            except H.TRANSPORT_ERRORS:
                if pos >= end:
                    return pos
                raise H._Resumable(pos)
            return pos
        H.Http._drain = _drain

    if "readahead" in fixes:
        from recfs import mount as M
        original = M.raise_read_ahead

        def later(mountpoint, kib):
            # INIT is answered once pyfuse3.main runs; its reply caps read_ahead_kb
            threading.Timer(0.5, original, (mountpoint, kib)).start()
        M.raise_read_ahead = later

    if "flush" in fixes:
        import trio
        from recfs.content import cache as C

        def flush(self):
            if not self.dirty:
                return
            batch = list(self.dirty)
            fds = []
            for e in batch:
                try:
                    if e._fd is not None:
                        fds.append(os.dup(e._fd))
                    elif e.path.exists():
                        fds.append(os.open(e.path, os.O_RDONLY))
                except OSError:
                    pass
            snapshot = [(e, bytes(e.bitmap), e.present) for e in batch]
            for e in batch:
                e.dirty = False
                self.dirty.discard(e)
            return fds, snapshot

        def sync(fds):
            for fd in fds:
                try:
                    os.fdatasync(fd)
                finally:
                    os.close(fd)

        def commit(self, snapshot):
            self.db.execute("BEGIN")
            for e, bitmap, present in snapshot:
                self.db.execute("INSERT OR REPLACE INTO entries(key, size, bitmap, present, last_used) "
                                "VALUES (?, ?, ?, ?, ?)", (e.key, e.size, bitmap, present, e.last_used))
            self.db.execute("COMMIT")
            for e, _, _ in snapshot:
                if e.pins <= 0:
                    e.close_fd()

        async def run_flusher(self, interval: float = 1.0):
            while True:
                await trio.sleep(interval)
                job = flush(self)
                if job:
                    fds, snapshot = job
                    await trio.to_thread.run_sync(sync, fds)
                    commit(self, snapshot)
        C.Cache.run_flusher = run_flusher

    if "batch" in fixes:
        from recfs.content import reader as R

        def _read_ahead(self, h, pos):
            size = h.state.ce.size
            if h.ahead - pos > h.window // 2 and h.ahead > pos:
                return
            h.window = min(self.max_window, max(h.window * 2, self.first_window))
            target = min(size, pos + h.window)
            start = max(pos, h.ahead)
            if target > start:
                self._ensure(h.state, start, target)
                h.ahead = target
        R.Reader._read_ahead = _read_ahead

    unknown = fixes - {"keepalive", "readahead", "flush", "batch"}
    if unknown:
        raise SystemExit(f"bench.patched: unknown fixes {sorted(unknown)}")


def main() -> int:
    fixes = {f for f in sys.argv[1].split(",") if f}
    apply(fixes)
    from recfs.cli import main as recfs_main
    return recfs_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
