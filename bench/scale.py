"""B9: recfs over about a million recordings (issue 20), against emulators in scale
mode that generate their objects from their index (nothing stored per object).

The server (`_serve`, a process of its own, driven over a pipe) holds an Alvaria
emulator with a generated tree `exports/scale/{YYYY-MM-DD}/call-{n:06d}.wav`, 1,000
recordings a day, and an 8x8 emulator with a generated region `ap` of 1,000
callrecordings and 40 voicemails a day, both for the same days from 2024-01-01, and a
Kazoo emulator with one account of 1,000 recordings a day owned in turn by 50 users, for
the year before today (Kazoo's folders follow the clock); the number of days follows
from `--b9-entries` (about a million by default, 20,000 with --quick), counting each
Kazoo recording twice (the account's tree and users/). recfs mounts the three sources
(bench/mounts.py), Kazoo with `since` that many days back, with a listing TTL of hours
so that every find below runs within it.

- Kazoo's first `ls` of the account, on a mount of its own with `since` a year back
  and an empty cache: seconds and requests (target <= 40).

- Plain script (`python -m bench.scale plain INFO`, its own process): pages every
  entry of the services at the APIs' largest page sizes (Alvaria `keyType=file`,
  1,000 a page; 8x8 a search of the whole region, 100 a page; Kazoo, which has no
  largest page size, the account's recordings at the source's 200 a page, window by
  window of the server's maximum range), as a script that only wants the list would.
  Its listing requests, counted by the emulators, are the page floor (and must equal
  the floor the generators compute, for Alvaria and 8x8).
- Cold: `find MOUNT/<source> -type f | wc -l` for each source on a new mount with an
  empty cache: seconds, entries, requests (per entry, and listing requests against the
  floor), the daemon's peak RSS (VmHWM) and its growth per entry (VmRSS is sampled
  through the find and kept in results.json).
- Warm: the same finds again on the same mount (0 requests expected), then on a remount
  of the same cache, within the TTL (0 requests expected: issue 20).
- Reads: on a new mount with an empty cache, 50 recordings, 5 from each of 10 Alvaria
  day folders of 1,000 spread over the days, read whole in an order that goes from
  folder to folder, every byte compared with the generated content; the emulator
  counts every request, listings included. The same over 10 of the 8x8 day folders
  (information).

Targets (issue 20): peak RSS <= 300 MB; listing requests <= 1.1x the floor per source
(from a million entries: below, the folders above the day folders weigh more);
cold find <= 2x the plain script's time; warm find <= 10 s; 50 reads <= 200 requests;
the first `ls` of the Kazoo account <= 40 requests.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from recfs.emulators.alvaria import AlvariaScale
from recfs.emulators.eightbyeight import ScaleRegion
from recfs.emulators.kazoo import GREGORIAN_OFFSET, MAX_RANGE, KazooScale
from recfs.emulators.scale import stable_hash

from .mounts import REPO, RecfsMount, Trash, access_token, cpu_seconds

START = dt.date(2024, 1, 1)
ALV_PER_DAY = 1000
E8_REGION = "ap"
E8_TYPES = (("callrecording", 1000), ("voicemail", 40))
ALV_PAGE, E8_PAGE = 1000, 100          # the APIs' largest page sizes
# The listing-requests target holds from this size on (issue 20: about a million).
LISTING_TARGET_ENTRIES = 1_000_000
# Kazoo: one account, 1,000 recordings a day owned in turn by 50 users, for a year
# before today (its folders follow the mount's clock) or `days`, whichever is longer.
# Its API has no largest page size; the source's own, 200, is the floor's.
KZ_ACCOUNT = "5ca1e" + "0" * 27
KZ_OWNERS = tuple(f"{0xb9000 + i:032x}" for i in range(50))
KZ_PER_DAY, KZ_YEAR, KZ_PAGE = 1000, 365, 200
# every source's listing_ttl: the cold find of a million entries, the warm one and the
# remount's must all run within it
TTL = 4 * 3600.0
FOLDERS, PER_FOLDER = 10, 5            # the reads: 5 files from each of 10 day folders
FIND_TIMEOUT = 6 * 3600


def generators(days: int) -> tuple[AlvariaScale, ScaleRegion]:
    """What the server generates; the driver builds the same to know every byte."""
    return (AlvariaScale(root="exports/scale/", start=START, days=days, per_day=ALV_PER_DAY),
            ScaleRegion(region=E8_REGION, types=E8_TYPES, start=START, days=days))


def kazoo_history(days: int, today: dt.date) -> KazooScale:
    """The Kazoo account: a year (or `days`) of history up to yesterday."""
    length = max(KZ_YEAR, days)
    return KazooScale(account=KZ_ACCOUNT, start=today - dt.timedelta(days=length), days=length,
                      per_day=KZ_PER_DAY, owners=KZ_OWNERS)


# entries a day in the finds: Kazoo's recordings appear twice (the account's tree and
# users/, every one having an owner)
PER_DAY = ALV_PER_DAY + sum(c for _, c in E8_TYPES) + 2 * KZ_PER_DAY


def days_for(entries: int) -> int:
    return max(FOLDERS, round(entries / PER_DAY))


# --------------------------------------------------------------------------- server

def _serve(conn, days: int, today: dt.date) -> None:
    """The three emulators, in a process of their own, driven over a pipe."""
    from recfs.emulators.alvaria import AlvariaEmulator, source_table as alvaria_table
    from recfs.emulators.eightbyeight import EightByEight, source_table as e8_table
    from recfs.emulators.kazoo import KazooEmulator, source_table as kazoo_table
    alv_scale, region = generators(days)
    alv = AlvariaEmulator(scale=alv_scale, page_limit=ALV_PAGE).start()
    e8 = EightByEight(regions=(), scale=region).start()
    kz = KazooEmulator(bucket_tokens=None, scale=kazoo_history(days, today)).start()
    kz.demo_key = kz.add_api_key(KZ_ACCOUNT)
    alv_t = dict(alvaria_table(alv, "alv"), listing_ttl=TTL)
    e8_t = dict(e8_table(e8, "8x8"), regions=[E8_REGION], listing_ttl=TTL)
    # the finds show the last `days` days; the first ls, on a mount of its own, the year
    kz_t = dict(kazoo_table(kz, "kz"), since=(today - dt.timedelta(days=days)).isoformat(), listing_ttl=TTL)
    kz_year = dict(kz_t, since=kazoo_history(days, today).start.isoformat())
    emus = {"alv": alv, "8x8": e8, "kz": kz}
    conn.send({"alv": {"table": alv_t, "api": alv.api_url("v3"), "token_url": alv.token_url,
                       "client_id": alv.client_id, "client_secret": alv.client_secret, "api_key": alv.api_key},
               "8x8": {"table": e8_t, "api": f"{e8.api_url}/{E8_REGION}/v3", "token_url": e8.token_url,
                       "client_id": e8.client_id, "client_secret": e8.client_secret},
               "kz": {"table": kz_t, "year_table": kz_year, "api": kz.url + "/v2", "api_key": kz.demo_key,
                      "since": kz_t["since"], "today": today.isoformat()}})
    answer(conn, emus)


def answer(conn, emus: dict, on_reset=None) -> None:
    """A PipeServer's process: its emulators' request counts ("stats"), counts set to
    zero (and `on_reset`, "reset"), and their end ("quit"), as the pipe asks."""
    while True:
        cmd = conn.recv()
        if cmd == "stats":
            conn.send({name: dict(emu.counts) for name, emu in emus.items()})
        elif cmd == "reset":
            for emu in emus.values():
                emu.reset_stats()
            if on_reset is not None:
                on_reset()
            conn.send(True)
        elif cmd == "quit":
            for emu in emus.values():
                emu.stop()
            conn.send(True)
            return


class PipeServer:
    """Emulators served by a process of their own (`serve(conn, *args)` sends their
    info, then answers "stats", "reset" and "quit" on the pipe)."""

    def __init__(self, serve, *args):
        self.conn, child = multiprocessing.Pipe()
        self.proc = multiprocessing.Process(target=serve, args=(child, *args), daemon=True)
        self.proc.start()
        self.info = self.conn.recv()

    def stats(self) -> dict[str, dict[str, int]]:
        self.conn.send("stats")
        return self.conn.recv()

    def reset(self) -> None:
        self.conn.send("reset")
        self.conn.recv()

    def close(self) -> None:
        if self.proc.is_alive():
            self.conn.send("quit")
            self.conn.recv()
        self.proc.join(10)


class ScaleServer(PipeServer):
    def __init__(self, days: int, today: dt.date):
        super().__init__(_serve, days, today)


# --------------------------------------------------------------------------- the plain script

def plain(info: dict) -> dict:
    """Every entry of both services, paged at the largest page sizes; per source the
    entries, pages and seconds. The paths are built as a listing tool would."""
    out = {}
    with httpx.Client(timeout=120, trust_env=False) as client:
        t0 = time.perf_counter()
        a = info["alv"]
        headers = {"Authorization": f"Bearer {access_token(client, a)}", "x-api-key": a["api_key"]}
        params = {"key": "", "keyType": "file", "maxResults": ALV_PAGE}
        paths, pages = [], 0
        while True:
            body = client.get(f"{a['api']}/mediaStorage/data/objectKeys", params=params, headers=headers).json()
            pages += 1
            paths += [item["key"] for item in body["objectKeys"]]
            if not body.get("nextToken"):
                break
            params["nextToken"] = body["nextToken"]
        out["alv"] = {"entries": len(paths), "pages": pages, "seconds": time.perf_counter() - t0}

        t0 = time.perf_counter()
        e = info["8x8"]
        headers = {"Authorization": f"Bearer {access_token(client, e)}"}
        paths, pages, offset = [], 0, 0
        while True:
            body = client.get(f"{e['api']}/objects", headers=headers, params={
                "sortField": "createdTime", "sortDirection": "ASC", "pageKey": offset, "limit": E8_PAGE}).json()
            pages += 1
            for obj in body["content"]:
                day = obj["createdTime"][:10].replace("-", "/")
                paths.append(f"{E8_REGION}/{obj['type']}/{day}/{obj['objectName']}")
            if body["lastPage"] in (True, "true"):
                break
            offset += len(body["content"])
        out["8x8"] = {"entries": len(paths), "pages": pages, "seconds": time.perf_counter() - t0}

        # Kazoo: the account's recordings created since `since`, window by window of the
        # server's largest range, each recording's paths in the account's tree and under
        # its owner
        t0 = time.perf_counter()
        k = info["kz"]
        token = client.put(f"{k['api']}/api_auth", json={"data": {"api_key": k["api_key"]}}).json()["auth_token"]
        headers = {"X-Auth-Token": token}
        since = dt.date.fromisoformat(k["since"])
        frm = int(dt.datetime.combine(since, dt.time(), dt.timezone.utc).timestamp()) + GREGORIAN_OFFSET
        end = int(time.time()) + GREGORIAN_OFFSET
        paths, pages, seen = [], 0, set()
        while frm <= end:
            to = min(end, frm + MAX_RANGE - 1)
            params = {"created_from": frm, "created_to": to, "page_size": KZ_PAGE}
            while True:
                body = client.get(f"{k['api']}/accounts/{KZ_ACCOUNT}/recordings", params=params,
                                  headers=headers).json()
                pages += 1
                for doc in body["data"]:
                    day = dt.datetime.fromtimestamp(doc["start"] - GREGORIAN_OFFSET, dt.timezone.utc).date()
                    if day < since or doc["id"] in seen:
                        continue
                    seen.add(doc["id"])
                    paths.append(f"{KZ_ACCOUNT}/{day:%Y/%m/%d}/{doc['name']}")
                    if doc.get("owner_id"):
                        paths.append(f"{KZ_ACCOUNT}/users/{doc['owner_id']}/{day:%Y/%m/%d}/{doc['name']}")
                if "next_start_key" not in body:
                    break
                params["start_key"] = body["next_start_key"]
            frm = to + 1
        out["kz"] = {"entries": len(paths), "pages": pages, "seconds": time.perf_counter() - t0}
    return out


# --------------------------------------------------------------------------- measuring

def _status(pid: int, field: str) -> int:
    """A /proc/PID/status figure in bytes (VmRSS, VmHWM); 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class RssSampler:
    """VmRSS of a process every `every` seconds, in a thread, while the block runs."""

    def __init__(self, pid: int, every: float = 0.5):
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(self.every):
            self.samples.append((round(time.monotonic() - t0, 1), _status(self.pid, "VmRSS")))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def find_count(path: Path) -> tuple[float, int]:
    """Seconds and output lines of `find PATH -type f | wc -l`."""
    t0 = time.perf_counter()
    done = subprocess.run(["bash", "-c", 'set -o pipefail; find "$1" -type f | wc -l', "find", str(path)],
                          capture_output=True, text=True, timeout=FIND_TIMEOUT)
    secs = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"find {path} failed ({done.returncode}): {done.stderr[-2000:]}")
    return secs, int(done.stdout.strip())


LISTING = {"alv": ("objectKeys",), "8x8": ("objects",), "kz": ("list", "list_user")}
SOURCES = ("alv", "8x8", "kz")


def _finds(m: RecfsMount, server: ScaleServer, say, label: str) -> dict:
    """Every source's find on the mount `m`: seconds, entries and requests per source."""
    out = {}
    server.reset()
    cpu0 = cpu_seconds(m.proc.pid)
    for src in SOURCES:
        secs, n = find_count(m.path / src)
        # the daemon's peak RSS so far: the sources' finds one after the other
        out[src] = {"seconds": secs, "entries": n, "rss_peak": _status(m.proc.pid, "VmHWM")}
        say(f"B9 {label}: find {src}: {n} entries in {secs:.1f} s")
    stats = server.stats()
    for src in SOURCES:
        counts = stats[src]
        out[src].update(requests=sum(counts.values()), counts=counts,
                        listing=sum(counts.get(r, 0) for r in LISTING[src]))
    out["daemon_cpu_s"] = cpu_seconds(m.proc.pid) - cpu0
    return out


def _read_samples(alv: AlvariaScale, region: ScaleRegion, days: int) -> dict[str, list[tuple[str, object]]]:
    """Per source, (path in the mount, blob) of the reads, in reading order: the first
    file of every folder, then the second of every folder, and so on."""
    folders = [int((j + 0.5) * days / FOLDERS) for j in range(FOLDERS)]
    picks = {d: list(dict.fromkeys(stable_hash("read", d, j) % ALV_PER_DAY for j in range(3 * PER_FOLDER)))
             for d in folders}
    out: dict[str, list] = {"alv": [], "8x8": []}
    count = dict(E8_TYPES)["callrecording"]
    for j in range(PER_FOLDER):
        for d in folders:
            n = picks[d][j]
            out["alv"].append((f"alv/{alv.key(d, n)}", alv.blob(d, n)))
            obj = region.object(0, d * count + n)
            day = dt.datetime.fromtimestamp(obj.created, dt.timezone.utc)
            out["8x8"].append((f"8x8/{E8_REGION}/callrecording/{day:%Y/%m/%d}/{obj.objectName}", obj.blob))
    return out


def _reads(m: RecfsMount, server: ScaleServer, samples: list, src: str) -> dict:
    server.reset()
    bad, total = [], 0
    t0 = time.perf_counter()
    for path, blob in samples:
        try:
            data = (m.path / path).read_bytes()
        except OSError as exc:         # reported in the row, not raised: the rest still count
            bad.append(f"{path}: {exc}")
            continue
        total += len(data)
        if hashlib.md5(data).hexdigest() != blob.md5():
            bad.append(f"{path}: other bytes")
    secs = time.perf_counter() - t0
    counts = server.stats()[src]
    return {"files": len(samples), "bytes": total, "bad": bad, "seconds": secs,
            "requests": sum(counts.values()), "counts": counts,
            "listing": sum(counts.get(r, 0) for r in LISTING[src])}


# --------------------------------------------------------------------------- B9

def run(bench) -> None:
    from .run import Row
    say = bench.say
    entries_wanted = bench.args.b9_entries or (20_000 if bench.args.quick else 1_000_000)
    days = days_for(entries_wanted)
    today = dt.datetime.now(dt.timezone.utc).date()
    alv, region = generators(days)
    want = {"alv": alv.total, "8x8": region.total, "kz": 2 * days * KZ_PER_DAY}
    entries = sum(want.values())
    floor = {"alv": -(-alv.total // ALV_PAGE), "8x8": region.flat_pages(E8_PAGE)}
    say(f"B9: {days} days, {entries} entries (alvaria {want['alv']}, 8x8 {want['8x8']}, "
        f"kazoo {want['kz']} in two views); page floor {floor['alv']} + {floor['8x8']} + Kazoo's, "
        "counted by the plain script")
    t_start = time.monotonic()
    server = ScaleServer(days, today)
    raw: dict = {"days": days, "entries": want, "floor": floor}
    try:
        # the plain script, and the floor counted by the emulators
        server.reset()
        done = subprocess.run([sys.executable, "-m", "bench.scale", "plain", json.dumps(server.info)],
                              capture_output=True, text=True, cwd=REPO, timeout=FIND_TIMEOUT,
                              env=dict(os.environ, PYTHONPATH=f"{REPO / 'src'}:{REPO}"))
        if done.returncode != 0:
            raise RuntimeError(f"the B9 plain script failed:\n{done.stderr[-3000:]}")
        script = json.loads(done.stdout.strip().splitlines()[-1])
        stats = server.stats()
        floor["kz"] = script["kz"]["pages"]         # no largest page size: pages of the source's size
        for src in SOURCES:
            script[src]["listing"] = sum(stats[src].get(r, 0) for r in LISTING[src])
            assert script[src]["entries"] == want[src], (src, script[src], want[src])
            assert script[src]["listing"] == script[src]["pages"] == floor[src], (src, script[src], floor[src])
        raw["script"] = script
        say("B9 plain script: " + ", ".join(f"{s} {script[s]['seconds']:.1f} s" for s in SOURCES))

        raw["kazoo_ls"] = kazoo_ls(bench, server, say)

        # cold, warm and remounted finds on one cache
        m = RecfsMount([server.info[s]["table"] for s in SOURCES], bench.work, "b9-mnt",
                       bench.work / "b9-cache")
        m.start()
        try:
            rss0 = _status(m.proc.pid, "VmRSS")
            with RssSampler(m.proc.pid) as sampler:
                cold = _finds(m, server, say, "cold")
            cold.update(rss_start=rss0, rss_peak=m.rss_peak(), rss_samples=sampler.samples)
            warm = _finds(m, server, say, "warm")
            m.unmount()
            m.start()
            again = _finds(m, server, say, "remounted")
            again["rss_peak"] = _status(m.proc.pid, "VmHWM")
        finally:
            m.unmount()
            Trash.discard(m.cache_dir)
        raw.update(cold=cold, warm=warm, remount=again)

        # reads on a new mount with an empty cache
        samples = _read_samples(alv, region, days)
        with RecfsMount([server.info[s]["table"] for s in SOURCES], bench.work, "b9-mnt",
                        bench.work / "b9-cache-reads") as m:
            reads = {src: _reads(m, server, samples[src], src) for src in ("alv", "8x8")}
        raw["reads"] = reads
    finally:
        server.close()
    raw["seconds"] = time.monotonic() - t_start
    bench.raw["B9"] = raw
    say(f"B9 done in {raw['seconds']:.0f} s")
    bench.rows += rows(raw, Row)


def kazoo_ls(bench, server: ScaleServer, say) -> dict:
    """The first `ls` of the Kazoo account with a year of history, on a mount of its own
    with an empty cache: seconds, entries and requests (the mount's own check before
    it is not counted)."""
    with RecfsMount([server.info["kz"]["year_table"]], bench.work, "b9-kz", bench.work / "b9-cache-kz") as m:
        server.reset()
        t0 = time.perf_counter()
        done = subprocess.run(["ls", str(m.path / "kz" / KZ_ACCOUNT)], capture_output=True, text=True, timeout=600)
        secs = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(f"ls of the Kazoo account failed: {done.stderr[-2000:]}")
        counts = server.stats()["kz"]
    out = {"seconds": secs, "names": done.stdout.split(), "requests": sum(counts.values()), "counts": counts}
    say(f"B9 Kazoo: first ls of the account: {out['names']} in {secs:.2f} s, {out['requests']} requests")
    return out


def rows(raw: dict, Row) -> list:
    want, floor, script = raw["entries"], raw["floor"], raw["script"]
    cold, warm, again, reads = raw["cold"], raw["warm"], raw["remount"], raw["reads"]
    srcs = SOURCES
    entries = sum(want.values())
    found = sum(cold[s]["entries"] for s in srcs)
    t_find = sum(cold[s]["seconds"] for s in srcs)
    t_script = sum(script[s]["seconds"] for s in srcs)
    req = sum(cold[s]["requests"] for s in srcs)
    def per(d: dict, key: str, fmt: str = ".0f") -> str:
        return ", ".join(f"{s} {d[s][key]:{fmt}}" for s in srcs)
    out = [Row(f"B9 cold find -type f, {entries:,} entries", f"{t_find:.1f} s ({per(cold, 'seconds', '.1f')}), "
               f"{found:,} found, {req / max(found, 1):.4f} req/entry",
               f"plain script {t_script:.1f} s ({per(script, 'seconds', '.1f')})", "",
               f"{t_find / t_script:.2f}× script time", "≤ 2× script, every entry",
               t_find <= 2 * t_script and found == entries)]
    ratios = {s: cold[s]["listing"] / floor[s] for s in srcs}
    # a walk lists each folder once whatever it holds, the floor counts full pages of
    # the flat key space: the folders above the day folders (a few listings a source)
    # are 1-4% of the floor at a million entries, up to a third of it at --quick's size
    at_size = entries >= LISTING_TARGET_ENTRIES
    out.append(Row("B9 listing requests of the cold find", f"{per(cold, 'listing')}",
                   f"page floor {per({s: {'f': floor[s]} for s in srcs}, 'f')}", "",
                   ", ".join(f"{s} {ratios[s]:.2f}×" for s in srcs),
                   "≤ 1.1× floor each" if at_size else
                   f"≤ 1.1× floor each from {LISTING_TARGET_ENTRIES:,} entries (info here)",
                   all(r <= 1.1 for r in ratios.values()) if at_size else None))
    kz = cold["kz"]
    out.append(Row("B9 Kazoo requests of the cold find, by route",
                   ", ".join(f"{route} {n}" for route, n in sorted(kz["counts"].items())), "", "", "",
                   "(info)", None))
    peak, rss0 = cold["rss_peak"], cold["rss_start"]
    so_far = ", ".join(f"{s} {cold[s]['rss_peak'] / 1e6:.0f}" for s in srcs if "rss_peak" in cold[s])
    out.append(Row("B9 daemon peak RSS, cold find", f"{peak / 1e6:.0f} MB, "
                   f"{(peak - rss0) / max(found, 1):.0f} B/entry above {rss0 / 1e6:.0f} MB at start"
                   + (f" (peak MB after each find: {so_far})" if so_far else ""),
                   "", "", "", "≤ 300 MB", peak <= 300e6))
    t_warm = sum(warm[s]["seconds"] for s in srcs)
    r_warm = sum(warm[s]["requests"] for s in srcs)
    out.append(Row("B9 warm find (same mount, within the TTL)",
                   f"{t_warm:.1f} s, {r_warm} req, {sum(warm[s]['entries'] for s in srcs):,} found", "", "", "",
                   "≤ 10 s, 0 req", t_warm <= 10 and r_warm == 0))
    t_again = sum(again[s]["seconds"] for s in srcs)
    r_again = sum(again[s]["requests"] for s in srcs)
    out.append(Row("B9 find after a remount (within the TTL)",
                   f"{t_again:.1f} s, {r_again} req ({per(again, 'requests')}), "
                   f"{sum(again[s]['entries'] for s in srcs):,} found", "", "", "", "0 req", r_again == 0))
    a, e = reads["alv"], reads["8x8"]
    out.append(Row(f"B9 {a['files']} reads over {FOLDERS} Alvaria folders of {ALV_PER_DAY:,}",
                   f"{a['requests']} req ({a['listing']} listing), {a['bytes'] / 1e6:.0f} MB checked"
                   + (f", {len(a['bad'])} WRONG" if a["bad"] else ""), "", "", "", "≤ 200 req, bytes equal",
                   a["requests"] <= 200 and not a["bad"]))
    out.append(Row(f"B9 {e['files']} reads over {FOLDERS} 8x8 folders of {dict(E8_TYPES)['callrecording']:,}",
                   f"{e['requests']} req ({e['listing']} listing), {e['bytes'] / 1e6:.0f} MB checked"
                   + (f", {len(e['bad'])} WRONG" if e["bad"] else ""), "", "", "", "(info), bytes equal",
                   False if e["bad"] else None))
    ls = raw["kazoo_ls"]
    out.append(Row(f"B9 Kazoo: first ls of an account with a year of history ({KZ_PER_DAY:,} a day)",
                   f"{ls['seconds']:.2f} s, {ls['requests']} req, {len(ls['names'])} names", "", "", "",
                   "≤ 40 req", ls["requests"] <= 40))
    return out


if __name__ == "__main__" and sys.argv[1:2] == ["plain"]:
    print(json.dumps(plain(json.loads(sys.argv[2]))))
