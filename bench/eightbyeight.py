"""B8: an 8x8 day folder copied through recfs, beside the seed document's own
procedure done by a plain script against the same emulator in the same run.

The script (`python -m bench.eightbyeight script ...`, its own process) does what
the seed describes a user doing by hand: get a token, search the day's objects with
a createdTime FIQL window (paging to lastPage), start bulk jobs of at most 50 ids,
poll their status until DONE, download each zip and unzip it. It starts all its
jobs before polling, which is the fastest way to follow that procedure.

recfs copies the same folder with `cp -r` on an empty cache. Both see jobs that
take `JOB_SECONDS` to finish and poll every `POLL` seconds; the figures are the wall
time, the jobs started and the API requests made.
"""
from __future__ import annotations

import datetime as dt
import io
import multiprocessing
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx

DAY = (2025, 3, 14)
REGION = "us-east"
JOB_SECONDS = 1.0
POLL = 0.25


def _serve(conn, count: int, seed: int) -> None:
    """The emulator, in a process of its own, driven over a pipe."""
    import random

    from recfs.emulators.base import PatternBlob
    from recfs.emulators.eightbyeight import EightByEight, source_table
    emu = EightByEight(regions=(REGION,), bulk_polls=0, bulk_seconds=JOB_SECONDS)
    rng = random.Random(seed)
    start = dt.datetime(*DAY, 8, tzinfo=dt.timezone.utc).timestamp()
    for i in range(count):
        emu.add_object(REGION, "callrecording", f"call-{i:04d}.wav",
                       PatternBlob(seed * 10_000 + i, rng.randint(100_000, 400_000)),
                       start + i * 97)
    emu.start()
    table = source_table(emu, "8x8")
    table.update(regions=[REGION], poll_interval=POLL, poll_max_interval=POLL)
    conn.send({"table": table, "api_url": emu.api_url, "token_url": emu.token_url,
               "client_id": emu.client_id, "client_secret": emu.client_secret,
               "bytes": sum(o.blob.size for o in emu.objects.values())
               if hasattr(emu, "objects") else None})
    while True:
        cmd = conn.recv()
        if cmd == "stats":
            conn.send({"jobs": emu.jobs_started, "requests": sum(emu.counts.values()),
                       "counts": dict(emu.counts)})
        elif cmd == "reset":
            emu.reset_stats()
            conn.send(True)
        elif cmd == "quit":
            emu.stop()
            conn.send(True)
            return


def script(api_url: str, token_url: str, client_id: str, client_secret: str, out: str) -> None:
    """The seed's procedure, as a user would script it."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with httpx.Client(timeout=60) as client:
        tok = client.post(token_url, data={"grant_type": "client_credentials"},
                          auth=(client_id, client_secret)).json()["access_token"]
        h = {"Authorization": f"Bearer {tok}"}
        base = f"{api_url}/{REGION}/v3"
        lo = int(dt.datetime(*DAY, tzinfo=dt.timezone.utc).timestamp() * 1000)
        hi = lo + 86_400_000
        ids, page = [], 0
        while True:
            r = client.get(f"{base}/objects", headers=h, params={
                "filter": f"type==callrecording;createdTime=ge={lo};createdTime=lt={hi}",
                "sortField": "createdTime", "sortDirection": "ASC", "pageKey": page, "limit": 100})
            body = r.json()
            body = body[0] if isinstance(body, list) else body
            ids += [o["id"] for o in body["content"]]
            if body["lastPage"] in (True, "true"):
                break
            page += 100
        zips = []
        for i in range(0, len(ids), 50):
            r = client.post(f"{base}/bulk/download/start", headers=h, json=ids[i:i + 50])
            body = r.json()
            zips.append((body[0] if isinstance(body, list) else body)["zipName"])
        for name in zips:
            while True:
                body = client.get(f"{base}/bulk/download/status/{name}", headers=h).json()
                status = (body[0] if isinstance(body, list) else body)["status"]
                if status == "DONE":
                    break
                time.sleep(POLL)
            data = client.get(f"{base}/bulk/download/{name}", headers=h).content
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                z.extractall(out_dir)


def run(work: Path, runs: int, quick: bool) -> list:
    from .mounts import RecfsMount
    from .run import Row, timed
    count = 60 if quick else 200
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.Process(target=_serve, args=(child, count, 8), daemon=True)
    proc.start()
    info = parent.recv()

    jobs_before = 0

    def stats():
        parent.send("stats")
        s = parent.recv()
        s["jobs"] -= jobs_before
        return s

    def reset():
        nonlocal jobs_before
        parent.send("reset")
        parent.recv()
        parent.send("stats")
        jobs_before = parent.recv()["jobs"]

    day = f"{REGION}/callrecording/{DAY[0]:04d}/{DAY[1]:02d}/{DAY[2]:02d}"
    fig = {"script_s": [], "script_jobs": [], "script_req": [], "recfs_s": [], "recfs_jobs": [],
           "recfs_req": []}
    try:
        for _ in range(runs):
            out = work / "b8-script"
            subprocess.run(["rm", "-rf", str(out)])
            reset()
            t, done = timed([sys.executable, "-m", "bench.eightbyeight", "script", info["api_url"],
                             info["token_url"], info["client_id"], info["client_secret"], str(out)],
                            capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
            assert len(list(out.iterdir())) == count
            s = stats()
            fig["script_s"].append(t)
            fig["script_jobs"].append(s["jobs"])
            fig["script_req"].append(s["requests"])

            dest = work / "b8-recfs"
            subprocess.run(["rm", "-rf", str(dest)])
            m = RecfsMount([info["table"]], work, "b8-mnt", work / "b8-cache")
            m.start()
            try:
                src = m.path / "8x8" / day
                reset()
                t, done = timed(["cp", "-r", str(src), str(dest)], capture_output=True, text=True)
                assert done.returncode == 0, done.stderr
                assert len(list(dest.iterdir())) == count
                s = stats()
            finally:
                m.unmount()
            fig["recfs_s"].append(t)
            fig["recfs_jobs"].append(s["jobs"])
            fig["recfs_req"].append(s["requests"])
    finally:
        parent.send("quit")
        proc.join(10)
    md = statistics.median
    ratio = md(fig["recfs_s"]) / md(fig["script_s"])
    ok = ratio <= 1.3 and md(fig["recfs_jobs"]) <= md(fig["script_jobs"])
    return [Row(f"B8 8x8 cp -r of a {count}-recording day folder",
                f"{md(fig['recfs_s']):.2f} s, {md(fig['recfs_jobs']):.0f} jobs, {md(fig['recfs_req']):.0f} req",
                f"seed script {md(fig['script_s']):.2f} s, {md(fig['script_jobs']):.0f} jobs, "
                f"{md(fig['script_req']):.0f} req", "", f"{ratio:.2f}× script time",
                "≤ 1.3× script, no more jobs", ok)], fig


if __name__ == "__main__" and sys.argv[1:2] == ["script"]:
    script(*sys.argv[2:7])
