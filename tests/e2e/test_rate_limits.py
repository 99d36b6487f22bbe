"""Patience under rate limits, through a real mount: a service that throttles with a
token bucket (Kazoo's kz_buckets: 100 tokens, 10 a second; the same set on 8x8 and
Alvaria) slows a copy down, but every byte arrives right and no read fails. recfs
learns the rate from the 429s and makes requests wait their turn (http.RateLimiter)."""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import threading

import pytest

from recfs.emulators.base import PatternBlob
from tests.conftest import toml_config

DAYS, PER_DAY = 3, 10
MONTH = (dt.datetime.now(dt.timezone.utc).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
         - dt.timedelta(days=40)).replace(day=1)


def blob(i: int) -> PatternBlob:
    return PatternBlob(100 + i, 20_000 + 997 * i)


def kazoo():
    from recfs.emulators.kazoo import KazooEmulator, source_table
    emu = KazooEmulator(bucket_tokens=100, fill_rate=10).start()
    account = emu.add_account("Throttled")
    emu.demo_key = emu.add_api_key(account)
    emu.demo_since = (MONTH - dt.timedelta(days=1)).date().isoformat()
    expected = {}
    for d in range(DAYS):
        for k in range(PER_DAY):
            i = d * PER_DAY + k
            start = (MONTH + dt.timedelta(days=d, hours=9, minutes=k)).timestamp()
            emu.add_recording(account, start, name=f"r{i:03d}.mp3", blob=blob(i), duration_ms=60_000)
            expected[f"{d + 1:02d}/r{i:03d}.mp3"] = blob(i)
    return emu, source_table(emu, "src"), [account, f"{MONTH:%Y}", f"{MONTH:%m}"], expected


def eightbyeight():
    from recfs.emulators.eightbyeight import EightByEight, source_table
    emu = EightByEight(regions=("us-east",)).start()
    emu.rate_limit(100, 10)
    expected = {}
    for d in range(DAYS):
        for k in range(PER_DAY):
            i = d * PER_DAY + k
            emu.add_object("us-east", "callrecording", f"r{i:03d}.mp3", blob(i),
                           MONTH + dt.timedelta(days=d, hours=9, minutes=k))
            expected[f"{d + 1:02d}/r{i:03d}.mp3"] = blob(i)
    table = dict(source_table(emu, "src"), bulk="never")
    return emu, table, ["us-east", "callrecording", f"{MONTH:%Y}", f"{MONTH:%m}"], expected


def alvaria():
    from recfs.emulators.alvaria import AlvariaEmulator, source_table
    emu = AlvariaEmulator(urls_in_listing=False).start()
    emu.rate_limit(100, 10)
    expected = {}
    for d in range(DAYS):
        for k in range(PER_DAY):
            i = d * PER_DAY + k
            emu.put(f"exports/month/{d + 1:02d}/r{i:03d}.mp3", blob(i))
            expected[f"{d + 1:02d}/r{i:03d}.mp3"] = blob(i)
    return emu, source_table(emu, "src"), ["exports", "month"], expected


@pytest.mark.parametrize("make", [kazoo, eightbyeight, alvaria], ids=["kazoo", "8x8", "alvaria"])
def test_a_copy_and_listings_under_a_token_bucket_finish_whole(make, recfs_mount, tmp_path):
    emu, table, folder, expected = make()
    try:
        mnt = recfs_mount(toml_config([table]))
        month = mnt.joinpath("src", *folder)
        days = sorted(os.listdir(month))
        assert days == [f"{d + 1:02d}" for d in range(DAYS)]
        listed: dict[str, subprocess.CompletedProcess] = {}

        def ls(day: str) -> None:
            listed[day] = subprocess.run(["ls", "-l", str(month / day)], capture_output=True, text=True)

        emu.bucket.drain()                  # a busy service: the bucket starts empty
        listers = [threading.Thread(target=ls, args=(d,)) for d in days]
        for t in listers:
            t.start()
        copied = subprocess.run(["cp", "-r", str(month), str(tmp_path / "copy")], capture_output=True,
                                text=True, timeout=300)
        for t in listers:
            t.join(timeout=300)
        assert copied.returncode == 0, copied.stderr
        assert all(p.returncode == 0 for p in listed.values()), {d: p.stderr for d, p in listed.items()}
        for rel, b in expected.items():
            assert (tmp_path / "copy" / rel).read_bytes() == b.all_bytes(), rel
        assert emu.bucket.throttled > 0                     # the limit was met, and outwaited
        status = json.loads(subprocess.run([os.sys.executable, "-m", "recfs", "status", str(mnt)],
                                           capture_output=True, text=True, check=True).stdout)
        assert any(limit["throttled"] for limit in status["rate_limits"].values())
    finally:
        emu.stop()
