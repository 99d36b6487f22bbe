"""The benchmark's server process: the Alvaria emulator (and an OCE emulator for a
folder whose listing carries exact sizes) serving the benchmark data set, plus the
same bytes as a plain HTTP directory under /plain/ on the Alvaria port.

It runs as its own process so that the driver's and the recfs daemon's GILs never
throttle the server. It is driven over stdin/stdout, one JSON line per command:
  {"cmd": "stats"}            -> counters of both emulators
  {"cmd": "reset"}            -> zero the counters
  {"cmd": "wan", "on": true}  -> switch the WAN profile (20 ms, 20 MB/s per connection)
  {"cmd": "listing_urls", "on": false} -> Alvaria listings without signed URLs (clients
                              then ask for one per file); /plain/ is the same either way
  {"cmd": "quit"}
The first line it prints is {"alvaria": URL, "oce": URL, "plain": URL, ...}.

Content is zero-copy: every file is a window into one random ring buffer (a
64 MiB + 4099 byte buffer, so repeats never line up with 256 KiB cache chunks),
which keeps the server from becoming the bottleneck of a 1.5 GB/s curl.
"""
from __future__ import annotations

import collections
import html
import json
import random
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass

from recfs.emulators.alvaria import AlvariaEmulator, source_table as alvaria_table
from recfs.emulators.base import Blob, FileBlob, Request, Response, WanProfile, range_response
from recfs.emulators.oce import OceEmulator, source_table as oce_table

RING_SIZE = 64 * 1024 * 1024 + 4099
MTIME = 1_760_000_000.0
WAN = WanProfile(latency_s=0.020, bytes_per_s=20e6)


class RingBlob(Blob):
    """`size` bytes read from a shared random ring starting at `shift`."""

    _rings: dict[int, memoryview] = {}

    def __init__(self, seed: int, shift: int, size: int):
        ring = self._rings.get(seed)
        if ring is None:
            ring = self._rings[seed] = memoryview(random.Random(seed).randbytes(RING_SIZE))
        self.ring = ring
        self.shift = shift % RING_SIZE
        self.size = size

    def read(self, offset: int, length: int):
        end = min(self.size, offset + length)
        if offset >= end:
            return b""
        p = (offset + self.shift) % RING_SIZE
        n = end - offset
        if p + n <= RING_SIZE:
            return self.ring[p:p + n]
        return bytes(self.ring[p:]) + bytes(self.ring[:n - (RING_SIZE - p)])


@dataclass
class DataSet:
    """What the benchmark serves; the driver builds the same one to know the bytes."""
    big_size: int
    many_files: int
    many_dirs: int
    wide_files: int
    mp3_path: str | None
    wan_wide_files: int = 0
    seed: int = 1

    BIG = "bench/big/recording.wav"
    MP3 = "bench/mp3/long-call.mp3"

    def files(self) -> dict[str, Blob]:
        rng = random.Random(self.seed)
        out: dict[str, Blob] = {self.BIG: RingBlob(self.seed, 12345, self.big_size)}
        if self.mp3_path:
            out[self.MP3] = FileBlob(self.mp3_path)
        per_dir = max(1, self.many_files // self.many_dirs)
        for i in range(self.many_files):
            size = rng.randint(64 * 1024, 1024 * 1024)
            out[f"bench/many/d{i // per_dir:02d}/call-{i:05d}.wav"] = \
                RingBlob(self.seed, rng.randrange(RING_SIZE), size)
        for i in range(self.wide_files):
            out[f"bench/wide/r{i:05d}.wav"] = RingBlob(self.seed, rng.randrange(RING_SIZE),
                                                       rng.randint(1000, 60_000))
        for i in range(self.wan_wide_files):    # listed by B4 in the WAN profile (Alvaria only)
            out[f"bench/wide-wan/r{i:05d}.wav"] = RingBlob(self.seed, rng.randrange(RING_SIZE),
                                                           rng.randint(1000, 60_000))
        return out

    def many_bytes(self) -> int:
        return sum(b.size for k, b in self.files().items() if k.startswith("bench/many/"))


class BenchAlvaria(AlvariaEmulator):
    """The Alvaria emulator plus /plain/: the same objects as a plain HTTP directory
    (HTML indexes with links, GET and HEAD with Range), as rclone's http backend,
    curl and httpx read it."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.content_bytes: collections.Counter[str] = collections.Counter()
        self.dirs: dict[str, list[str]] = {}
        self.route("GET", r"/plain/(?P<path>.*)", "plain", self._plain)

    def index(self) -> None:
        dirs: dict[str, set[str]] = collections.defaultdict(set)
        for key in self.objects:
            parts = key.split("/")
            for depth in range(len(parts)):
                parent = "/".join(parts[:depth])
                child = parts[depth] + ("/" if depth < len(parts) - 1 else "")
                dirs[parent].add(child)
        self.dirs = {k: sorted(v) for k, v in dirs.items()}

    def _count_content(self, route: str, req: Request, resp: Response) -> Response:
        if req.method == "GET" and resp.status in (200, 206) and isinstance(resp.body, Blob):
            with self._stats_lock:
                self.content_bytes[route] += resp.length
        return resp

    def _s3_get(self, req: Request) -> Response:
        return self._count_content("s3", req, super()._s3_get(req))

    def _plain(self, req: Request) -> Response:
        req.route = "plain_head" if req.method == "HEAD" else "plain_get"
        path = req.match.group("path")
        if path == "" or path.endswith("/"):
            names = self.dirs.get(path.rstrip("/"))
            if names is None:
                return Response(404, {"Content-Type": "text/plain"}, b"not found\n")
            req.route = "plain_index"
            links = "\n".join(f'<a href="{urllib.parse.quote(n)}">{html.escape(n)}</a>' for n in names)
            body = f"<html><body><pre>\n{links}\n</pre></body></html>\n".encode()
            return Response(200, {"Content-Type": "text/html; charset=utf-8"}, body)
        obj = self.objects.get(path)
        if obj is None:
            if path in self.dirs:
                return Response(301, {"Location": f"/plain/{urllib.parse.quote(path)}/"}, b"")
            return Response(404, {"Content-Type": "text/plain"}, b"not found\n")
        lm = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(obj.mtime))
        return self._count_content("plain", req, range_response(req, obj.blob, {"Last-Modified": lm}))


class BenchOce(OceEmulator):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.content_bytes: collections.Counter[str] = collections.Counter()

    def _data(self, req: Request) -> Response:
        resp = super()._data(req)
        if req.method == "GET" and resp.status in (200, 206) and isinstance(resp.body, Blob):
            with self._stats_lock:
                self.content_bytes["data"] += resp.length
        return resp


def emulator_stats(emu) -> dict:
    with emu._stats_lock:
        return {"counts": dict(emu.counts), "bytes_sent": emu.bytes_sent,
                "content_bytes": dict(emu.content_bytes),
                "requests": sum(emu.counts.values())}


def reset(emu) -> None:
    emu.reset_stats()
    with emu._stats_lock:
        emu.content_bytes.clear()


def main() -> None:
    spec = json.loads(sys.argv[1])
    data = DataSet(**spec)
    files = data.files()
    alv = BenchAlvaria(page_limit=1000)
    for key, blob in files.items():
        alv.put(key, blob, MTIME)
    alv.index()
    oce = BenchOce(drift="native")
    bench_id = oce.add_folder("self", "bench", modified=MTIME)
    wide_id = oce.add_folder(bench_id, "wide", modified=MTIME)
    for key, blob in files.items():
        if key.startswith("bench/wide/"):
            oce.add_file(wide_id, key.rsplit("/", 1)[1], blob, modified=MTIME)
    alv.start()
    oce.start()
    print(json.dumps({"alvaria": alv.url, "oce": oce.url, "plain": f"{alv.url}/plain/",
                      "alvaria_table": alvaria_table(alv, "alv"),
                      "oce_table": oce_table(oce, "oce")}), flush=True)
    lock = threading.Lock()
    for line in sys.stdin:
        try:
            cmd = json.loads(line)
        except ValueError:
            continue
        with lock:
            what = cmd.get("cmd")
            if what == "stats":
                answer = {"alvaria": emulator_stats(alv), "oce": emulator_stats(oce)}
            elif what == "reset":
                reset(alv)
                reset(oce)
                answer = {"ok": True}
            elif what == "wan":
                alv.wan = oce.wan = WAN if cmd.get("on") else None
                answer = {"ok": True}
            elif what == "listing_urls":
                alv.urls_in_listing = bool(cmd.get("on"))
                answer = {"ok": True}
            elif what == "quit":
                break
            else:
                answer = {"error": f"unknown command {what!r}"}
        print(json.dumps(answer), flush=True)
    alv.stop()
    oce.stop()


if __name__ == "__main__":
    main()
