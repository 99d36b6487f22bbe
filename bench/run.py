"""recfs benchmarks (issue 6): one command runs them all and prints a table.

    scripts/bench            # medians of 3 runs, full sizes
    scripts/bench --quick    # 1 run, small sizes: a smoke test

Every figure is measured against the same server process in the same run: the
Alvaria emulator (recfs's source; its listings carry signed URLs, except for the
*nourl benchmarks) which also serves the same bytes as a plain HTTP directory
(curl, one httpx stream and rclone's http backend read that).
See docs/BENCHMARKS.md for what each benchmark does and the figures measured.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import fcntl
import hashlib
import json
import mmap
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx

from . import fsspec_bench, scale, search
from .mounts import RcloneMount, RecfsMount, Server, Trash, access_token, cpu_seconds
from .servers import DataSet, RingBlob

MiB = 1024 * 1024
GB = 1e9
NO_URLS = ", no URLs in listings"      # the rows measured with Server.listing_urls(False)
# every benchmark --only can name, in the order they run (B8 last, after B7)
BENCHMARKS = ("B1", "B3", "B4", "B4nourl", "B5", "B5nourl", "B1wan", "B4wan", "B4wannourl",
              "B5wan", "B5wannourl", "B10", "B11", "B9", "B8")


# --------------------------------------------------------------------------- helpers

def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def drop_caches() -> bool:
    """Write back and drop the page cache (root only): cold reads really go to the source."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def ratio_text(ratio: float, target: float = 1.2) -> str:
    """`ratio` to two places, or three where two would round a miss up to the target."""
    return f"{ratio:.3f}" if ratio < target <= round(ratio, 2) else f"{ratio:.2f}"


def pages_written() -> int:
    """Bytes the kernel has written back to disk since boot (/proc/vmstat nr_written)."""
    with open("/proc/vmstat") as f:
        for line in f:
            if line.startswith("nr_written "):
                return int(line.split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return 0


def read_through(path: Path, bufsize: int = MiB, digest: bool = False) -> tuple[int, float, str]:
    """Read a file to its end; return (bytes, seconds, md5 if asked)."""
    # page-aligned, as cat, cp and dd allocate theirs: with an unaligned buffer a
    # direct-I/O read of 1 MiB spans 257 pages and the kernel splits it in two
    buf = mmap.mmap(-1, bufsize)
    view = memoryview(buf)
    h = hashlib.md5() if digest else None
    total = 0
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            total += n
            if h:
                h.update(view[:n])
    return total, time.perf_counter() - t0, h.hexdigest() if h else ""


def timed(argv: list[str], timeout: float = 600, **kw) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    cp = subprocess.run(argv, timeout=timeout, **kw)
    return time.perf_counter() - t0, cp


def curl_download(url: str) -> float:
    """Seconds for curl to fetch `url` to /dev/null."""
    secs, cp = timed(["curl", "-sS", "-f", "-o", "/dev/null", url])
    cp.check_returncode()
    return secs


def httpx_download(url: str) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = 0
    with httpx.Client(trust_env=False, timeout=120) as client:
        with client.stream("GET", url) as resp:
            resp.raise_for_status()
            for chunk in resp.iter_raw():
                n += len(chunk)
    return n, time.perf_counter() - t0


def url_and_probe_by_curl(table: dict, keys: list[str], work: Path, parallel: int = 64) -> float:
    """Seconds for curl --parallel to make B4nourl's requests: each key's signed URL,
    then a one-byte ranged GET of it. A client that costs next to nothing: what is left
    is the emulator's own time, which bounds any client's on loopback."""
    with httpx.Client(trust_env=False) as client:
        token = access_token(client, table)
    out = work / "nourl-floor"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    # headers in the config file (curl applies them to every URL), not in argv
    urls = out / "urls.cfg"
    urls.write_text(f'header = "Authorization: Bearer {token}"\nheader = "x-api-key: {table["api_key"]}"\n'
                    + "".join(f'url = "{table["api_url"]}/mediaStorage/data/signedDownloadUrl?'
                              f'{httpx.QueryParams(key=key)}"\noutput = "{out}/{i}"\n'
                              for i, key in enumerate(keys)))
    argv = ["curl", "-sS", "-f", "--no-progress-meter", "--parallel", "--parallel-max", str(parallel)]
    t0 = time.perf_counter()
    subprocess.run([*argv, "-K", str(urls)], check=True)
    secs = time.perf_counter() - t0
    gets = out / "gets.cfg"
    gets.write_text('header = "Range: bytes=0-0"\n' + "".join(
        f'url = "{json.loads((out / str(i)).read_text())["signedDownloadUrl"]}"\noutput = "/dev/null"\n'
        for i in range(len(keys))))
    t0 = time.perf_counter()
    subprocess.run([*argv, "-K", str(gets)], check=True)
    secs += time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return secs


def med(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def tree_bytes(root: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _, names in os.walk(root):
        for n in names:
            files += 1
            size += os.lstat(os.path.join(dirpath, n)).st_size
    return files, size


# --------------------------------------------------------------------------- the bench

@dataclass
class Row:
    bench: str
    recfs: str
    limit: str = ""
    rclone: str = ""
    ratio: str = ""
    target: str = ""
    ok: bool | None = None
    note: str = ""


@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    data: DataSet
    server: Server
    rows: list[Row] = field(default_factory=list)
    raw: dict = field(default_factory=dict)
    peaks: list[int] = field(default_factory=list)
    mounts: int = 0
    written_back: int = 0       # by the kernel during the last _timed_copy

    @property
    def runs(self) -> int:
        return self.args.runs

    @property
    def rclone(self) -> bool:
        return have("rclone") and not self.args.no_rclone

    def say(self, msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def plain(self, key: str) -> str:
        return self.server.info["plain"] + key

    def recfs(self, *tables: str) -> RecfsMount:
        self.mounts += 1
        infos = {"alv": self.server.info["alvaria_table"], "oce": self.server.info["oce_table"]}
        return RecfsMount([infos[t] for t in tables], self.work, "mnt",
                          self.work / f"cache-{self.mounts}")

    def rclone_mount(self) -> RcloneMount:
        return RcloneMount(self.server.info["plain"], self.work / "rclone-mnt", self.work / "rclone.log")

    def done_with(self, m: RecfsMount) -> None:
        self.peaks.append(m.rss_peak())

    @contextlib.contextmanager
    def served(self, wan: bool = False, listing_urls: bool = True):
        """The server in the WAN profile, or with Alvaria listings that carry no signed
        URLs, for the block; on loopback with URLs in listings again after it."""
        self.server.wan(wan)
        self.server.listing_urls(listing_urls)
        try:
            yield
        finally:
            self.server.wan(False)
            self.server.listing_urls(True)

    # -- B1 and B2
    def b1_b2(self, wan: bool) -> None:
        key = DataSet.BIG
        size = self.data.big_size
        label = "WAN" if wan else "loopback"
        runs = self.runs
        limit_runs = 1 if wan and not self.args.wan_all_runs else runs
        curl_t, httpx_t, recfs_t, rclone_t, first_t, warm_t, disk_t = [], [], [], [], [], [], []
        with self.served(wan=wan):
            for run in range(runs):
                if run < limit_runs:
                    drop_caches()
                    curl_t.append(curl_download(self.plain(key)))
                    drop_caches()
                    n, secs = httpx_download(self.plain(key))
                    assert n == size, (n, size)
                    httpx_t.append(secs)
                drop_caches()
                with self.recfs("alv") as m:
                    path = m.path / "alv" / key
                    assert path.stat().st_size == size      # listing and size probe: not timed
                    n, secs, _ = read_through(path)
                    assert n == size, (n, size)
                    recfs_t.append(secs)
                    self.say(f"B1 {label} run {run + 1}: recfs {size / secs / 1e6:.0f} MB/s")
                    if not wan:
                        self._warm(m, path, size, first_t, warm_t, disk_t, verify=run == 0)
                    self.done_with(m)
                if self.rclone and (run < limit_runs):
                    drop_caches()
                    with self.rclone_mount() as r:
                        path = r.path / key
                        assert path.stat().st_size == size
                        n, secs, _ = read_through(path)
                        assert n == size
                        rclone_t.append(secs)
        rate = lambda ts: size / med(ts) if ts else None          # noqa: E731
        self.raw[f"B1 {label}"] = {"size": size, "curl_s": curl_t, "httpx_s": httpx_t,
                                   "recfs_s": recfs_t, "rclone_s": rclone_t}
        r, c, h, rc = rate(recfs_t), rate(curl_t), rate(httpx_t), rate(rclone_t)
        unit = (lambda v: f"{v / GB:.2f} GB/s") if not wan else (lambda v: f"{v / 1e6:.0f} MB/s")
        limit = f"curl {unit(c)}, httpx {unit(h)}"
        name = f"B1 cold read {size // MiB} MiB, {label}"
        if wan:
            single = max(c, h)
            ratio = r / single
            self.rows.append(Row(name, unit(r), limit, unit(rc) if rc else "n/a",
                                 f"{ratio:.1f}× single stream", "≥ 3× single stream", ratio >= 3))
        else:
            ratio = r / rc if rc else None
            self.rows.append(Row(name, unit(r), limit, unit(rc) if rc else "n/a",
                                 f"{ratio_text(ratio)}× rclone" if ratio else f"{r / c:.2f}× curl",
                                 "≥ 1.2× rclone", ratio >= 1.2 if ratio else None))
        if not wan and warm_t:
            w, d = rate(warm_t), rate(disk_t)
            self.raw["B2 warm"] = {"size": size, "recfs_s": warm_t, "cache_file_s": disk_t,
                                   "recfs_first_s": first_t}
            self.rows.append(Row(f"B2 warm re-read {size // MiB} MiB", unit(w),
                                 f"cache file read directly {unit(d)}", "", f"{w / d:.2f}× disk",
                                 "≥ 1 GB/s", w >= 1e9))
            self.rows.append(Row("B2 first re-read after the download", unit(rate(first_t)),
                                 "(the disk's first read of new data)", "", "", "(info)", None))

    def _warm(self, m: RecfsMount, path: Path, size: int, first_t: list, warm_t: list,
              disk_t: list, verify: bool) -> None:
        """B2: the page cache dropped, so the bytes come from recfs's cache file.

        Read twice through recfs, then directly: on this VM the first read of freshly
        written data is slow whoever makes it (docs/BENCHMARKS.md, sixth round). The
        second read through recfs is B2, on the same footing as the direct read; the
        first is shown for information."""
        data_files = [p for p in (m.cache_dir / "data").rglob("*") if p.is_file()]
        biggest = max(data_files, key=lambda p: p.stat().st_size)
        for times in (first_t, warm_t):
            drop_caches()
            n, secs, _ = read_through(path)
            assert n == size
            times.append(secs)
        drop_caches()
        _, dsecs, _ = read_through(biggest)
        disk_t.append(dsecs)
        self.say(f"B2 warm: recfs {size / warm_t[-1] / 1e6:.0f} MB/s (first re-read "
                 f"{size / first_t[-1] / 1e6:.0f} MB/s), cache file {size / dsecs / 1e6:.0f} MB/s")
        if verify:
            _, _, got = read_through(path, digest=True)
            want = hashlib.md5()
            blob = RingBlob(self.data.seed, 12345, size)
            for piece in blob.iter_range(0, size, 8 * MiB):
                want.update(piece)
            if got != want.hexdigest():
                raise AssertionError("B1: the bytes read through recfs differ from the source")

    # -- B3
    def b3(self) -> None:
        if not have("ffprobe") or not self.data.mp3_path:
            self.rows.append(Row("B3 ffprobe of an MP3", "skipped", note="ffprobe/ffmpeg not installed"))
            return
        key = DataSet.MP3
        size = os.path.getsize(self.data.mp3_path)
        fetched, received, served, rclone_served, secs = [], [], [], [], []
        probe = ["ffprobe", "-v", "error", "-show_format", "-show_streams"]
        for run in range(self.runs):
            drop_caches()
            with self.recfs("alv") as m:
                path = m.path / "alv" / key
                path.stat()
                self.server.reset()
                before = m.status()
                t, cp = timed(probe + [str(path)], capture_output=True, text=True)
                cp.check_returncode()
                assert "duration=" in cp.stdout
                time.sleep(1.0)          # read-ahead started by ffprobe's reads still counts
                after = m.status()
                stats = self.server.stats()["alvaria"]
                fetched.append(after["reads"]["fetched_bytes"] - before["reads"]["fetched_bytes"])
                received.append(after["http"]["bytes_received"] - before["http"]["bytes_received"])
                served.append(stats["content_bytes"].get("s3", 0))
                secs.append(t)
                self.done_with(m)
            self.say(f"B3 run {run + 1}: emulator served {served[-1]} content bytes "
                     f"(recfs fetched_bytes {fetched[-1]}) in {t:.2f}s")
            if self.rclone:
                drop_caches()
                with self.rclone_mount() as r:
                    path = r.path / key
                    path.stat()
                    self.server.reset()
                    _, cp = timed(probe + [str(path)], capture_output=True)
                    cp.check_returncode()
                    time.sleep(1.0)
                    rclone_served.append(self.server.stats()["alvaria"]["content_bytes"].get("plain", 0))
        self.raw["B3"] = {"file_size": size, "served": served, "recfs_fetched": fetched,
                          "recfs_http_received": received, "rclone_served": rclone_served, "ffprobe_s": secs}
        s = med(served)
        rs = med(rclone_served)
        self.rows.append(Row(f"B3 ffprobe {size / 1e6:.0f} MB MP3, empty cache",
                             f"{s / 1e6:.2f} MB fetched", f"file {size / 1e6:.0f} MB",
                             f"{rs / 1e6:.2f} MB" if rs is not None else "n/a",
                             f"{s / size * 100:.1f}% of file", "≤ 2 MB", s <= 2e6))

    # -- B4
    @staticmethod
    def _timed_ls(folder: Path, n: int) -> float:
        """`ls -l` of `folder`, timed; its `n` entries are checked."""
        t, cp = timed(["ls", "-l", str(folder)], capture_output=True, text=True)
        cp.check_returncode()
        lines = cp.stdout.count("\n")
        assert lines == n + 1, f"ls -l {folder}: {lines} lines, expected {n + 1}"
        return t

    def _cold_ls(self, folder: Path, n: int) -> tuple[float, float]:
        """`_timed_ls` of a cold folder, and the emulator's CPU seconds meanwhile."""
        cpu0 = cpu_seconds(self.server.proc.pid)
        secs = self._timed_ls(folder, n)
        return secs, cpu_seconds(self.server.proc.pid) - cpu0

    def b4(self, listing_urls: bool = True) -> None:
        """`ls -l` of a wide folder, cold and warm: OCE (exact sizes in its listing) and
        Alvaria (a size probe per file), beside rclone. With `listing_urls` False
        (B4nourl) the Alvaria listing carries no signed URLs, so each file costs a URL
        request and a probe: only Alvaria and rclone are measured, and the cold row has
        a target (at most twice rclone's time: twice its requests)."""
        n = self.data.wide_files
        tag = "" if listing_urls else NO_URLS
        out: dict = {}

        def recfs_case(table: str, emu: str) -> dict:
            cold, warm, cold_req, warm_req, cold_cpu = [], [], [], [], []
            for run in range(self.runs):
                drop_caches()
                with self.recfs(table) as m:
                    os.listdir(m.path / table / "bench")     # the folder's parents: not timed
                    self.server.reset()
                    secs, cpu = self._cold_ls(m.path / table / "bench" / "wide", n)
                    cold.append(secs)
                    cold_cpu.append(cpu)
                    cold_req.append(self.server.stats()[emu]["counts"])
                    self.server.reset()
                    warm.append(self._timed_ls(m.path / table / "bench" / "wide", n))
                    warm_req.append(self.server.stats()[emu]["counts"])
                    self.done_with(m)
                self.say(f"B4 {table}{tag} run {run + 1}: cold {cold[-1]:.2f}s {cold_req[-1]}, "
                         f"warm {warm[-1]:.3f}s {warm_req[-1]}")
            return {"cold_s": cold, "warm_s": warm, "cold_requests": cold_req, "warm_requests": warm_req,
                    "cold_server_cpu_s": cold_cpu}

        with self.served(listing_urls=listing_urls):
            if listing_urls:
                out["oce"] = recfs_case("oce", "oce")
            out["alvaria"] = recfs_case("alv", "alvaria")
            if not listing_urls:
                keys = [k for k in self.data.files() if k.startswith("bench/wide/")]
                out["curl_floor_s"] = [url_and_probe_by_curl(self.server.info["alvaria_table"], keys, self.work)
                                       for _ in range(self.runs)]
                self.say(f"B4 floor{tag}: curl makes the same requests in "
                         f"{', '.join(f'{t:.2f}' for t in out['curl_floor_s'])} s")
        rc = None
        if self.rclone:
            cold, warm, cold_req, warm_req, cold_cpu = [], [], [], [], []
            for run in range(self.runs):
                drop_caches()
                with self.rclone_mount() as r:
                    os.listdir(r.path / "bench")
                    self.server.reset()
                    secs, cpu = self._cold_ls(r.path / "bench" / "wide", n)
                    cold.append(secs)
                    cold_cpu.append(cpu)
                    cold_req.append(self.server.stats()["alvaria"]["counts"])
                    self.server.reset()
                    warm.append(self._timed_ls(r.path / "bench" / "wide", n))
                    warm_req.append(self.server.stats()["alvaria"]["counts"])
            rc = out["rclone"] = {"cold_s": cold, "warm_s": warm, "cold_requests": cold_req,
                                  "warm_requests": warm_req, "cold_server_cpu_s": cold_cpu}
        self.raw["B4" if listing_urls else "B4nourl"] = out

        def reqs(counts: list[dict]) -> int:
            return int(med([sum(c.values()) for c in counts]))

        rc_cold = f"{med(rc['cold_s']):.2f} s, {reqs(rc['cold_requests'])} req" if rc else "n/a"
        rc_warm = f"{med(rc['warm_s']):.3f} s, {reqs(rc['warm_requests'])} req" if rc else "n/a"
        a = out["alvaria"]
        ac, aw = med(a["cold_s"]), med(a["warm_s"])
        if not listing_urls:
            speed = med(rc["cold_s"]) / ac if rc else None
            # the emulator's CPU per run: on loopback it, not the client, sets the pace
            cpu = lambda case: f", emulator {med(case['cold_server_cpu_s']):.1f} CPU-s"  # noqa: E731
            self.rows.append(Row(f"B4 ls -l {n} entries, Alvaria{tag}, cold",
                                 f"{ac:.2f} s, {reqs(a['cold_requests'])} req{cpu(a)}",
                                 f"{med(out['curl_floor_s']):.2f} s (curl, same req)",
                                 rc_cold + (cpu(rc) if rc else ""),
                                 f"{ratio_text(speed, 0.5)}× rclone speed" if rc else "",
                                 "≥ 0.5× rclone speed (≤ 2× its time)", speed >= 0.5 if rc else None))
            return
        o = out["oce"]
        oc, ow = med(o["cold_s"]), med(o["warm_s"])
        per_entry = reqs(o["cold_requests"]) >= n
        self.rows.append(Row(f"B4 ls -l {n} entries, exact sizes (OCE), cold",
                             f"{oc:.2f} s, {reqs(o['cold_requests'])} req", "", rc_cold,
                             f"{med(rc['cold_s']) / oc:.1f}× rclone speed" if rc else "",
                             "≤ 1 s, no per-entry req", oc <= 1.0 and not per_entry))
        self.rows.append(Row(f"B4 ls -l {n} entries, exact sizes (OCE), warm",
                             f"{ow:.3f} s, {reqs(o['warm_requests'])} req", "", rc_warm,
                             f"{med(rc['warm_s']) / ow:.1f}× rclone speed" if rc else "", "≤ 0.3 s",
                             ow <= 0.3))
        self.rows.append(Row(f"B4 ls -l {n} entries, Alvaria (sizes probed), cold",
                             f"{ac:.2f} s, {reqs(a['cold_requests'])} req", "", rc_cold,
                             f"{med(rc['cold_s']) / ac:.1f}× rclone speed" if rc else "",
                             "(no exact sizes: info)", None))
        self.rows.append(Row(f"B4 ls -l {n} entries, Alvaria, warm",
                             f"{aw:.3f} s, {reqs(a['warm_requests'])} req", "", rc_warm,
                             f"{med(rc['warm_s']) / aw:.1f}× rclone speed" if rc else "", "≤ 0.3 s",
                             aw <= 0.3))

    # -- B5 and B6
    def b5_b6(self, listing_urls: bool = True) -> None:
        """`cp -r` of the many-file folder, recfs and rclone in alternating pairs, then
        B6 (a second `rsync -a` that must fetch nothing). With `listing_urls` False
        (B5nourl) the Alvaria listings carry no signed URLs and only the copies are
        timed (no B6)."""
        total = self.data.many_bytes()
        count = self.data.many_files
        dest = self.work / "copy"
        tag = "" if listing_urls else NO_URLS
        res: dict = {"bytes": total, "files": count}

        def copy_and_rsync(src: Path, figures: dict, content_bytes, fetched_key: str) -> None:
            """The timed copy, then (B6) two `rsync -a`, the second timed and its
            content bytes counted under `fetched_key`."""
            figures["cp_s"].append(self._timed_copy(src, dest))
            figures["cp_written_back"].append(self.written_back)
            if listing_urls:
                t_rs1, cp = timed(["rsync", "-a", f"{src}/", str(dest / "rsync")])
                cp.check_returncode()
                self.server.reset()
                before = content_bytes()
                t_rs2, cp = timed(["rsync", "-a", "--stats", f"{src}/", str(dest / "rsync")],
                                  capture_output=True, text=True)
                cp.check_returncode()
                assert "Number of regular files transferred: 0" in cp.stdout, cp.stdout
                figures[fetched_key].append(content_bytes() - before)
                figures["rsync1_s"].append(t_rs1)
                figures["rsync2_s"].append(t_rs2)
            Trash.discard(dest)

        def say(label: str, who: str, figures: dict) -> None:
            msg = (f"B5{tag} {label}: {who} cp -r {total / figures['cp_s'][-1] / 1e6:.0f} MB/s "
                   f"({figures['cp_written_back'][-1] / 1e6:.0f} MB written back meanwhile)")
            if listing_urls:
                msg += (f"; B6 second rsync {figures['rsync2_s'][-1]:.3f}s, "
                        f"{figures['rsync2_served'][-1]} bytes served")
            self.say(msg)

        rec: dict[str, list] = collections.defaultdict(list)
        rcl: dict[str, list] | None = collections.defaultdict(list) if self.rclone else None
        # recfs and rclone take turns, the first of a pair alternating: a drift in this
        # VM's speed (rclone alone has ranged 157-246 MB/s in one day) then falls on both
        # alike, and each pair gives a ratio
        def recfs_run(label: str, figures: dict) -> None:
            with self.recfs("alv") as m:
                copy_and_rsync(m.path / "alv" / "bench" / "many", figures,
                               lambda: m.status()["reads"]["fetched_bytes"], "rsync2_fetched")
                if listing_urls:
                    figures["rsync2_served"].append(
                        self.server.stats()["alvaria"]["content_bytes"].get("s3", 0))
                self.done_with(m)
            say(label, "recfs", figures)

        def rclone_run(label: str, figures: dict) -> None:
            with self.rclone_mount() as r:
                copy_and_rsync(r.path / "bench" / "many", figures,
                               lambda: self.server.stats()["alvaria"]["content_bytes"].get("plain", 0),
                               "rsync2_served")
            say(label, "rclone", figures)

        order = [(recfs_run, rec)] + ([(rclone_run, rcl)] if rcl is not None else [])
        # the first copy after B4 ran slow whoever made it (BENCHMARKS, eighth round):
        # one pair first, not counted
        with self.served(listing_urls=listing_urls):       # rclone reads /plain/: the same either way
            for step, _ in order:
                step("warm-up (not counted)", collections.defaultdict(list))
            for run in range(self.runs):
                for step, figures in (order if run % 2 == 0 else order[::-1]):
                    step(f"run {run + 1}", figures)
                if rcl is not None:
                    self.say(f"B5{tag} pair {run + 1}: recfs {rcl['cp_s'][-1] / rec['cp_s'][-1]:.2f}× rclone")
        res["recfs"] = rec
        if rcl is not None:
            res["rclone"] = rcl
            res["pair_ratios"] = [c / r for r, c in zip(rec["cp_s"], rcl["cp_s"])]
        self.raw["B5/B6" if listing_urls else "B5nourl"] = res
        r_rate = total / med(rec["cp_s"])
        c_rate = total / med(rcl["cp_s"]) if rcl else None
        self.rows.append(Row(f"B5 cp -r {count} files ({total / 1e6:.0f} MB){tag}", f"{r_rate / 1e6:.0f} MB/s",
                             "", f"{c_rate / 1e6:.0f} MB/s" if c_rate else "n/a",
                             f"{ratio_text(r_rate / c_rate)}× rclone (pairs {min(res['pair_ratios']):.2f}–"
                             f"{max(res['pair_ratios']):.2f})" if c_rate else "", "≥ 1.2× rclone",
                             r_rate / c_rate >= 1.2 if c_rate else None))
        if not listing_urls:
            return
        t2 = med(rec["rsync2_s"])
        f2 = max(rec["rsync2_fetched"] + rec["rsync2_served"])
        self.rows.append(Row(f"B6 second rsync -a of {count} files", f"{t2:.3f} s, {f2} B fetched", "",
                             f"{med(rcl['rsync2_s']):.3f} s, {max(rcl['rsync2_served'])} B" if rcl else "n/a",
                             f"{med(rcl['rsync2_s']) / t2:.1f}× rclone speed" if rcl else "",
                             "≤ 0.5 s, 0 B", t2 <= 0.5 and f2 == 0))

    def b4_wan(self, listing_urls: bool = True) -> None:
        """B4's cold `ls -l` of an Alvaria folder in the WAN profile: with 20 ms a
        response, the size probes' concurrency (32 for recfs, rclone's 8 HEAD checkers)
        counts, not the CPU they cost on loopback. Information with URLs in the
        listings; without them (B4wannourl) each file's signed URL is a round trip too,
        and the target is at most half rclone's time."""
        n = self.data.wan_wide_files
        tag = "" if listing_urls else NO_URLS
        folder = Path("bench") / "wide-wan"
        rec = {"cold_s": [], "cold_requests": []}
        rcl = {"cold_s": [], "cold_requests": []}
        with self.served(wan=True, listing_urls=listing_urls):
            for run in range(self.runs):
                with self.recfs("alv") as m:
                    os.listdir(m.path / "alv" / "bench")     # the folder's parents: not timed
                    self.server.reset()
                    rec["cold_s"].append(self._timed_ls(m.path / "alv" / folder, n))
                    rec["cold_requests"].append(sum(self.server.stats()["alvaria"]["counts"].values()))
                    self.done_with(m)
                if self.rclone and (run == 0 or self.args.wan_all_runs):
                    with self.rclone_mount() as r:
                        os.listdir(r.path / "bench")
                        self.server.reset()
                        rcl["cold_s"].append(self._timed_ls(r.path / folder, n))
                        rcl["cold_requests"].append(sum(self.server.stats()["alvaria"]["counts"].values()))
                self.say(f"B4 WAN{tag} run {run + 1}: recfs {rec['cold_s'][-1]:.2f}s"
                         + (f", rclone {rcl['cold_s'][-1]:.2f}s" if len(rcl["cold_s"]) > run else ""))
        self.raw["B4wan" if listing_urls else "B4wannourl"] = {"entries": n, "recfs": rec, "rclone": rcl}
        t = med(rec["cold_s"])
        rt = med(rcl["cold_s"])
        speed = rt / t if rt else None
        if listing_urls:
            name, target, ok = f"B4 ls -l {n} entries, Alvaria (sizes probed), WAN, cold", "(info)", None
        else:
            name, target = f"B4 ls -l {n} entries, Alvaria{tag}, WAN, cold", "≥ 2× rclone speed (≤ ½ its time)"
            ok = speed >= 2 if speed else None
        self.rows.append(Row(name, f"{t:.2f} s, {int(med(rec['cold_requests']))} req", "",
                             f"{rt:.2f} s, {int(med(rcl['cold_requests']))} req" if rt else "n/a",
                             f"{ratio_text(speed, 2) if ok is not None else f'{speed:.1f}'}× rclone speed"
                             if speed else "", target, ok))

    def _timed_copy(self, src: Path, dest: Path) -> float:
        """B5's `cp -r` of `src` into an emptied `dest`, the page cache dropped first;
        the copy's files and bytes are checked."""
        Trash.discard(dest)
        dest.mkdir(parents=True)
        drop_caches()
        before = pages_written()
        t_cp, cp = timed(["cp", "-r", str(src), str(dest / "cp")])
        # on this VM a copy runs 20-30% slower once its dirty pages (recfs: its cache
        # and cp's copy) pass the background writeback threshold (BENCHMARKS, eighth round)
        self.written_back = pages_written() - before
        cp.check_returncode()
        got, want = tree_bytes(dest / "cp"), (self.data.many_files, self.data.many_bytes())
        assert got == want, (got, want)
        return t_cp

    def b5_wan(self, listing_urls: bool = True) -> None:
        """B5's copy in the WAN profile, recfs only (rclone reads one file at a time,
        two round trips each: about 50 ms a file there), against one connection's
        speed. Information with URLs in the listings; without them (B5wannourl) the
        target is at least 5× one connection."""
        total = self.data.many_bytes()
        count = self.data.many_files
        tag = "" if listing_urls else NO_URLS
        dest = self.work / "copy"
        times = []
        with self.served(wan=True, listing_urls=listing_urls):
            for run in range(self.runs):
                with self.recfs("alv") as m:
                    t_cp = self._timed_copy(m.path / "alv" / "bench" / "many", dest)
                    times.append(t_cp)
                    self.done_with(m)
                Trash.discard(dest)
                self.say(f"B5 WAN{tag} run {run + 1}: recfs cp -r {total / t_cp / 1e6:.0f} MB/s "
                         f"({self.written_back / 1e6:.0f} MB written back meanwhile)")
        self.raw["B5wan" if listing_urls else "B5wannourl"] = {"bytes": total, "files": count, "cp_s": times}
        rate = total / med(times)
        ratio = rate / 20e6
        self.rows.append(Row(f"B5 cp -r {count} files{tag}, WAN", f"{rate / 1e6:.0f} MB/s",
                             "one connection: 20 MB/s, 20 ms per response", "",
                             f"{ratio:.1f}× one connection" if listing_urls else
                             f"{ratio_text(ratio, 5)}× one connection",
                             "(info)" if listing_urls else "≥ 5× one connection",
                             None if listing_urls else ratio >= 5))

    def b7(self) -> None:
        peak = max(self.peaks) if self.peaks else 0
        self.raw["B7"] = {"peaks": self.peaks}
        self.rows.append(Row("B7 peak RSS of any recfs daemon above", f"{peak / 1e6:.0f} MB", "", "",
                             "", "≤ 200 MB", peak <= 200e6 if peak else None))


# --------------------------------------------------------------------------- set-up and output

def make_mp3(work: Path, size: int) -> str | None:
    """A CBR 128 kbit/s MP3 of about `size` bytes (noise plus a tone), made once."""
    if not have("ffmpeg"):
        return None
    path = work / f"long-call-{size // 1_000_000}MB.mp3"
    if path.exists() and path.stat().st_size > size * 0.9:
        return str(path)
    seconds = size * 8 / 128_000
    tmp = path.with_suffix(".tmp.mp3")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"anoisesrc=d={seconds:.0f}:c=pink:r=22050:a=0.2", "-f", "lavfi", "-i",
                    f"sine=f=440:r=22050:d={seconds:.0f}", "-filter_complex", "amix=inputs=2",
                    "-ac", "1", "-c:a", "libmp3lame", "-b:a", "128k",
                    "-metadata", "title=recfs bench call", str(tmp)], check=True, timeout=900)
    tmp.rename(path)
    return str(path)


def table(rows: list[Row]) -> str:
    head = ["benchmark", "recfs", "limit (same run)", "rclone", "ratio", "target", "pass"]
    body = [[r.bench, r.recfs, r.limit, r.rclone, r.ratio, r.target,
             "PASS" if r.ok else ("FAIL" if r.ok is False else "–")] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep] + [line(b) for b in body])


def machine() -> str:
    cpu = "?"
    try:
        for l in open("/proc/cpuinfo"):
            if l.startswith("model name"):
                cpu = l.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} CPUs ({cpu}), {mem:.0f} GiB RAM, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 run, small sizes (smoke test)")
    p.add_argument("--runs", type=int, help="runs per figure (default 3, 1 with --quick)")
    p.add_argument("--workdir", default=os.environ.get("RECFS_BENCH_DIR", "/var/tmp/recfs-bench"),
                   help="work directory on a real disk (caches, copies, the generated MP3)")
    p.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)} (B2 runs with B1, "
                                  "B6 with B5, B7 always; the *nourl ones against Alvaria listings "
                                  "without signed URLs)")
    p.add_argument("--no-rclone", action="store_true", help="leave rclone out")
    p.add_argument("--wan-all-runs", action="store_true",
                   help="measure the WAN single-stream limits and rclone every run (27 s each; "
                        "B4 WAN's rclone 6 s each)")
    p.add_argument("--b9-entries", type=int, help="B9: about how many generated recordings to find "
                                                   "(default 1,000,000; 20,000 with --quick)")
    p.add_argument("--json", help="also write the raw figures to this file")
    args = p.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    only = set(args.only.split(",")) if args.only else set(BENCHMARKS)
    if only - set(BENCHMARKS):
        p.error(f"--only: unknown {', '.join(sorted(only - set(BENCHMARKS)))} (known: {', '.join(BENCHMARKS)})")

    if not (os.path.exists("/dev/fuse") and have("fusermount3")):
        print("scripts/bench: needs /dev/fuse and fusermount3", file=sys.stderr)
        return 2
    for tool in ("curl", "rsync"):
        if not have(tool):
            print(f"scripts/bench: needs {tool}", file=sys.stderr)
            return 2
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    # two benchmarks at once would measure each other (and the second would not wait
    # for the first's deletions): held until this process exits
    lock = open(work / "bench.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"scripts/bench: another benchmark is running in {work}", file=sys.stderr)
        return 2
    Trash.dir = work / "trash"
    Trash.wait_for_aged_inodes(lambda m: print(f"scripts/bench: {m}", file=sys.stderr))
    if args.quick:
        spec = dict(big_size=64 * MiB, many_files=200, many_dirs=2, wide_files=2000, wan_wide_files=500)
        mp3_size = 10_000_000
    else:
        spec = dict(big_size=512 * MiB, many_files=2000, many_dirs=10, wide_files=10_000,
                    wan_wide_files=2000)
        mp3_size = 100_000_000
    missing = [t for t in ("rclone", "ffmpeg", "ffprobe") if not have(t)]
    if missing:
        print(f"scripts/bench: {', '.join(missing)} not installed: those columns are skipped",
              file=sys.stderr)
    spec["mp3_path"] = make_mp3(work, mp3_size) if "B3" in only else None
    data = DataSet(**spec)
    t0 = time.monotonic()
    server = Server(spec, work / "server.log")
    bench = Bench(args, work, data, server)
    can_drop = drop_caches()
    try:
        bench.say(f"server at {server.info['alvaria']}; {args.runs} run(s); "
                  f"page cache {'dropped between cold runs' if can_drop else 'NOT dropped (not root)'}")
        steps = {"B1": partial(bench.b1_b2, wan=False), "B3": bench.b3, "B4": bench.b4,
                 "B4nourl": partial(bench.b4, listing_urls=False), "B5": bench.b5_b6,
                 "B5nourl": partial(bench.b5_b6, listing_urls=False),
                 "B1wan": partial(bench.b1_b2, wan=True), "B4wan": bench.b4_wan,
                 "B4wannourl": partial(bench.b4_wan, listing_urls=False), "B5wan": bench.b5_wan,
                 "B5wannourl": partial(bench.b5_wan, listing_urls=False), "B10": partial(fsspec_bench.run, bench),
                 "B11": partial(search.run, bench), "B9": partial(scale.run, bench)}
        for name in BENCHMARKS:
            if name in only and name in steps:
                steps[name]()
        bench.b7()
        if "B8" in only:
            from .eightbyeight import run as b8
            rows, raw = b8(work, args.runs, args.quick)
            bench.rows += rows
            bench.raw["B8"] = raw
    finally:
        server.close()
        Trash.empty()
    out = table(bench.rows)
    print(f"\nrecfs benchmarks, {f'quick ({args.runs} run(s), small sizes)' if args.quick else f'medians of {args.runs} runs'}; "
          f"{machine()}; {time.monotonic() - t0:.0f} s\n")
    print(out)
    result = {"machine": machine(), "args": vars(args), "rows": [r.__dict__ for r in bench.rows],
              "raw": bench.raw, "table": out}
    (work / "results.json").write_text(json.dumps(result, indent=1, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
