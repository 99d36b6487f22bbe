"""B11: one caller's recordings in a year of Kazoo and 8x8 history (issue 24).

The server (`_serve`, a process of its own, driven over a pipe) holds a Kazoo emulator
with a generated account history (`KazooScale`) and an 8x8 emulator with a generated
region `ap` (`ScaleRegion`, call recordings only), each 1,000 recordings a day for the
365 days up to today (31 with --quick). Both generate the parties from each
recording's index: one caller in 2,000, the same numbers on both services
(+1555200xxxx), so the chosen caller has a recording about every other day on each
(about 182 a year each); the server-side filters (Kazoo `filter_caller_id_number`,
8x8 FIQL on `callerId`) are answered from that arithmetic, exactly as filtering every
generated document would (tests/unit/test_kazoo_scale.py, test_scale_emulators.py).

- Plain script (`python -m bench.search plain INFO NUMBER`, its own process): the
  filtered API requests a script that knows both APIs would make (Kazoo: the account's
  listing window by window at crossbar's maximum_range, the number in both its forms
  as a JSON list; 8x8: one FIQL search of the region, 100 a page): its seconds and
  requests are the limit column.
- Cold: `recfs search MOUNT caller=NUMBER` (the real CLI, a process of its own) on a
  new mount with an empty cache: seconds, requests counted by the emulators (tokens
  included), and the paths found compared with the generators' (exactly the caller's
  recordings, at their home paths).
- Repeat: the same command again on the same mount, within the listing TTL.

Targets (issue 24): cold <= 5 s and <= 100 requests; repeat <= 0.5 s with 0 requests.
rclone has no Kazoo or 8x8 backend, and no search: its column says so.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time

import httpx

from recfs.emulators.eightbyeight import ScaleRegion
from recfs.emulators.kazoo import MAX_RANGE, KazooScale, to_gregorian

from .mounts import REPO, RecfsMount, Trash
from .scale import PipeServer, answer

ACCOUNT = "5ca1e" + "b11" + "0" * 24
REGION = "ap"
PER_DAY = 1000
CALLERS = 2000
PARTY_PREFIX = "+1555200"      # both services' callers: +1555200xxxx
TTL = 3600.0
SEARCH_TIMEOUT = 600
LISTING = {"kazoo": ("list",), "8x8": ("objects",)}


def generators(days: int) -> tuple[KazooScale, ScaleRegion]:
    """What the server generates, for the `days` days up to yesterday (UTC); the driver
    builds the same to know what must be found."""
    start = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=days)
    return (KazooScale(account=ACCOUNT, start=start, days=days, per_day=PER_DAY, callers=CALLERS),
            ScaleRegion(region=REGION, types=(("callrecording", PER_DAY),), start=start, days=days,
                        callers=CALLERS, caller_prefix=PARTY_PREFIX))


def expected(kz: KazooScale, region: ScaleRegion, number: str) -> dict[str, set[str]]:
    """Per source, the paths below the mount of `number`'s recordings."""
    out: dict[str, set[str]] = {"kazoo": set(), "8x8": set()}
    for j in kz.caller_recordings(number):
        rec = kz.recording(j)
        day = dt.datetime.fromtimestamp(kz.started(j), dt.timezone.utc)
        out["kazoo"].add(f"kazoo/{ACCOUNT}/{day:%Y/%m/%d}/{rec.public['name']}")
    for i in region.caller_positions(number):
        obj = region.object(0, i)
        day = dt.datetime.fromtimestamp(obj.created, dt.timezone.utc)
        out["8x8"].add(f"8x8/{REGION}/callrecording/{day:%Y/%m/%d}/{obj.objectName}")
    return out


# --------------------------------------------------------------------------- server

def _serve(conn, days: int) -> None:
    """The two emulators, in a process of their own, driven over a pipe."""
    from recfs.emulators.eightbyeight import EightByEight, source_table as e8_table
    from recfs.emulators.kazoo import KazooEmulator
    kz, region = generators(days)
    kazoo = KazooEmulator(scale=kz).start()     # crossbar's default token bucket
    kazoo.demo_key = kazoo.add_api_key(ACCOUNT)
    e8 = EightByEight(regions=(), scale=region).start()
    kz_t = {"name": "kazoo", "kind": "kazoo", "api_url": kazoo.url + "/v2", "api_key": kazoo.demo_key,
            "since": kz.start.isoformat(), "listing_ttl": TTL}
    e8_t = dict(e8_table(e8, "8x8"), regions=[REGION], listing_ttl=TTL)
    conn.send({"kazoo": {"table": kz_t, "api": kazoo.url + "/v2", "key": kazoo.demo_key,
                         "account": ACCOUNT, "since": kz.start.isoformat()},
               "8x8": {"table": e8_t, "api": f"{e8.api_url}/{REGION}/v3", "token_url": e8.token_url,
                       "client_id": e8.client_id, "client_secret": e8.client_secret}})

    def refill() -> None:
        # crossbar's bucket full again, as after 10 s without a request: each phase
        # starts as a user's first search of the day would, not behind the last phase
        with kazoo.bucket._lock:
            kazoo.bucket.tokens = kazoo.bucket.capacity
    answer(conn, {"kazoo": kazoo, "8x8": e8}, on_reset=refill)


class SearchServer(PipeServer):
    def __init__(self, days: int):
        super().__init__(_serve, days)


# --------------------------------------------------------------------------- the plain script

def plain(info: dict, number: str) -> dict:
    """The caller's recordings through both APIs' own filters, as a script would ask:
    per source the recordings found, requests and seconds."""
    forms = json.dumps([number, number.lstrip("+")])
    out = {}
    with httpx.Client(timeout=120, trust_env=False) as client:
        t0 = time.perf_counter()
        k = info["kazoo"]
        requests, found = 0, 0
        while True:
            resp = client.put(f"{k['api']}/api_auth", json={"data": {"api_key": k["key"]}})
            requests += 1
            if resp.status_code != 429:
                break
            time.sleep(4)                          # 35 tokens at crossbar's 10 a second
        resp.raise_for_status()
        headers = {"X-Auth-Token": resp.json()["auth_token"]}
        since = dt.datetime.fromisoformat(k["since"]).replace(tzinfo=dt.timezone.utc).timestamp()
        frm, end = to_gregorian(since), to_gregorian(time.time())
        while frm <= end:
            to = min(frm + MAX_RANGE, end)
            params: dict = {"created_from": frm, "created_to": to, "page_size": 100,
                            "filter_caller_id_number": forms}
            while True:
                resp = client.get(f"{k['api']}/accounts/{k['account']}/recordings", params=params,
                                  headers=headers)
                requests += 1
                if resp.status_code == 429:         # crossbar's token bucket: wait as a client would
                    time.sleep(1)
                    continue
                resp.raise_for_status()
                body = resp.json()
                found += len(body["data"])
                if "next_start_key" not in body:
                    break
                params["start_key"] = body["next_start_key"]
            frm = to + 1
        out["kazoo"] = {"found": found, "requests": requests, "seconds": time.perf_counter() - t0}

        t0 = time.perf_counter()
        e = info["8x8"]
        tok = client.post(e["token_url"], data={"grant_type": "client_credentials"},
                          auth=(e["client_id"], e["client_secret"])).json()["access_token"]
        headers = {"Authorization": f"Bearer {tok}"}
        fiql = f"(callerId=={number},callerId=={number.lstrip('+')})"
        requests, found, offset = 1, 0, 0
        while True:
            resp = client.get(f"{e['api']}/objects", headers=headers, params={
                "filter": fiql, "sortField": "createdTime", "sortDirection": "ASC",
                "pageKey": offset, "limit": 100})
            requests += 1
            resp.raise_for_status()
            body = resp.json()
            found += len(body["content"])
            if body["lastPage"] in (True, "true") or not body["content"]:
                break
            offset += len(body["content"])
        out["8x8"] = {"found": found, "requests": requests, "seconds": time.perf_counter() - t0}
    return out


# --------------------------------------------------------------------------- measuring

def recfs_search(mnt, number: str) -> tuple[float, list[str]]:
    """Seconds and output paths of `recfs search MNT caller=NUMBER`, as a user runs it."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "recfs", "search", str(mnt), f"caller={number}"],
                          capture_output=True, text=True, timeout=SEARCH_TIMEOUT, cwd=REPO,
                          stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=f"{REPO / 'src'}:{REPO}"))
    secs = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"recfs search failed ({done.returncode}): {done.stderr[-2000:]}")
    return secs, done.stdout.splitlines()


def _measure(m: RecfsMount, server: SearchServer, number: str, want: dict[str, set[str]]) -> dict:
    server.reset()
    secs, paths = recfs_search(m.path, number)
    stats = server.stats()
    found = {os.path.relpath(p, m.path) for p in paths}
    every = set().union(*want.values())
    return {"seconds": secs, "found": len(paths), "exact": found == every and len(paths) == len(every),
            "missing": sorted(every - found)[:5], "extra": sorted(found - every)[:5],
            "requests": {src: sum(c.values()) for src, c in stats.items()},
            "listing": {src: sum(stats[src].get(r, 0) for r in LISTING[src]) for src in stats},
            "counts": stats}


def cli_start() -> float:
    """Seconds of `recfs search --help`: the CLI's own start, the floor of any search."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "recfs", "search", "--help"], capture_output=True, check=True,
                   cwd=REPO, env=dict(os.environ, PYTHONPATH=f"{REPO / 'src'}:{REPO}"))
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- B11

def run(bench) -> None:
    from .run import Row, med
    say = bench.say
    days = 31 if bench.args.quick else 365
    kz, region = generators(days)
    number = kz.caller_number(kz.total // 2)            # a caller of mid-history
    want = expected(kz, region, number)
    say(f"B11: {days} days of {PER_DAY:,} recordings a day on Kazoo and 8x8; caller {number} has "
        f"{len(want['kazoo'])} + {len(want['8x8'])} recordings")
    t_start = time.monotonic()
    server = SearchServer(days)
    # what a walk of the date folders would ask at least: each Kazoo day at recfs's 200
    # a page, each 8x8 day at the API's 100 a page
    walk = days * -(-PER_DAY // 200) + region.folder_pages(100)
    raw: dict = {"days": days, "number": number, "want": {s: len(v) for s, v in want.items()},
                 "walk_floor": walk}
    try:
        scripts = []
        for _ in range(bench.runs):
            server.reset()
            done = subprocess.run([sys.executable, "-m", "bench.search", "plain", json.dumps(server.info), number],
                                  capture_output=True, text=True, cwd=REPO, timeout=SEARCH_TIMEOUT,
                                  env=dict(os.environ, PYTHONPATH=f"{REPO / 'src'}:{REPO}"))
            if done.returncode != 0:
                raise RuntimeError(f"the B11 plain script failed:\n{done.stderr[-3000:]}")
            script = json.loads(done.stdout.strip().splitlines()[-1])
            for src in ("kazoo", "8x8"):
                assert script[src]["found"] == len(want[src]), (src, script[src], len(want[src]))
            scripts.append(script)
        raw["script"] = scripts
        say(f"B11 plain script: kazoo {scripts[-1]['kazoo']['seconds']:.2f} s "
            f"({scripts[-1]['kazoo']['requests']} req), 8x8 {scripts[-1]['8x8']['seconds']:.2f} s "
            f"({scripts[-1]['8x8']['requests']} req)")

        cold, warm, started = [], [], []
        for r in range(bench.runs):
            server.reset()
            m = RecfsMount([server.info["kazoo"]["table"], server.info["8x8"]["table"]], bench.work,
                           "b11-mnt", bench.work / "b11-cache")
            with m:
                # what the mount asked before the search (not counted in the search's requests)
                started.append({src: sum(c.values()) for src, c in server.stats().items()})
                cold.append(_measure(m, server, number, want))
                warm.append(_measure(m, server, number, want))
                bench.done_with(m)
            for label, got in (("cold", cold[-1]), ("repeat", warm[-1])):
                say(f"B11 run {r + 1} {label}: {got['seconds']:.2f} s, {got['found']} found "
                    f"({'exact' if got['exact'] else 'NOT the expected set'}), requests {got['requests']}")
        raw.update(cold=cold, warm=warm, mount_requests=started, cli_start=[cli_start() for _ in range(3)])
    finally:
        server.close()
    raw["seconds"] = time.monotonic() - t_start
    bench.raw["B11"] = raw
    bench.rows += rows(raw, Row, med)
    say(f"B11 done in {raw['seconds']:.0f} s")


def rows(raw: dict, Row, med) -> list:
    want = sum(raw["want"].values())
    years = "a year" if raw["days"] == 365 else f"{raw['days']} days"
    t_script = med([s["kazoo"]["seconds"] + s["8x8"]["seconds"] for s in raw["script"]])
    r_script = raw["script"][0]["kazoo"]["requests"] + raw["script"][0]["8x8"]["requests"]
    cold, warm = raw["cold"], raw["warm"]

    def req(run: dict) -> int:
        return sum(run["requests"].values())
    t_cold, t_warm = med([c["seconds"] for c in cold]), med([w["seconds"] for w in warm])
    r_cold, r_warm = max(req(c) for c in cold), max(req(w) for w in warm)
    exact = all(c["exact"] for c in cold + warm)
    per = ", ".join(f"{s} {cold[0]['requests'][s]}" for s in ("kazoo", "8x8"))
    mounted = max(sum(m.values()) for m in raw["mount_requests"])
    wrong = "" if exact else ", NOT the expected set"
    return [
        Row(f"B11 recfs search caller=, {years} of Kazoo + 8x8 (1,000/day each)",
            f"{t_cold:.2f} s, {r_cold} req ({per}; {mounted} more at mount), "
            f"{cold[0]['found']} of {want} found{wrong}",
            f"plain API script {t_script:.2f} s, {r_script} req (tokens included)",
            f"— (no Kazoo/8x8 backend, no search; a walk: ≥ {raw['walk_floor']:,} listings)",
            f"{t_cold / t_script:.1f}× script time",
            "≤ 5 s, ≤ 100 req", t_cold <= 5 and r_cold <= 100 and exact),
        Row("B11 the same search again (same mount, within the TTL)",
            f"{t_warm:.2f} s, {r_warm} req, {warm[0]['found']} found{wrong}",
            f"the CLI's start {med(raw['cli_start']):.2f} s", "—", "",
            "≤ 0.5 s, 0 req", t_warm <= 0.5 and r_warm == 0 and exact),
    ]


if __name__ == "__main__" and sys.argv[1:2] == ["plain"]:
    print(json.dumps(plain(json.loads(sys.argv[2]), sys.argv[3])))
