"""Server-side search of the Kazoo and 8x8 sources against their emulators (no mount):
the filters sent, the windows the server takes, and hits that are the entries a
listing of their day folder makes (same path, id, version: the same cache key)."""
from __future__ import annotations

import datetime as dt
import json

import pytest

from recfs.config import parse_config
from recfs.emulators.base import PatternBlob
from recfs.emulators.eightbyeight import EightByEight, source_table as x8_table
from recfs.emulators.kazoo import KazooEmulator, source_table as kazoo_table
from recfs.http import Http, RetryPolicy
from recfs.search import parse
from recfs.sources import eightbyeight as e8, kazoo
from recfs.sources.eightbyeight import DirRef

CALLER = "+15551230001"
TODAY = dt.datetime.now(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)


@pytest.fixture
async def http():
    client = Http(retry=RetryPolicy(attempts=5, base_delay=0.05, max_delay=0.4, budget=30))
    yield client
    await client.aclose()


def options(table: dict):
    return parse_config({"sources": [table]}).sources[0].options


def test_kazoo_filters_one_pass_per_side_for_number():
    src = kazoo.KazooSource.__new__(kazoo.KazooSource)
    assert src.search_filters(parse(["caller=+1 555 123 0001", "agent=u1"])) == [
        {"filter_caller_id_number": json.dumps(["+15551230001", "15551230001"]), "filter_owner_id": "u1"}]
    passes = src.search_filters(parse(["number=15551230001", "direction=inbound"]))
    assert [sorted(p) for p in passes] == [["filter_caller_id_number", "filter_direction"],
                                           ["filter_callee_id_number", "filter_direction"]]
    assert src.search_filters(parse(["name~=x", "since=2025-01-01"])) == []


async def test_kazoo_search_within_a_learnt_maximum_range(http):
    emu = KazooEmulator(bucket_tokens=None, max_range=10 * 86400).start()
    try:
        account = emu.add_account("A")
        emu.demo_key = emu.add_api_key(account)
        mine = []
        for d in range(0, 60, 3):
            start = (TODAY - dt.timedelta(days=d, hours=-9)).timestamp()
            rec = emu.add_recording(account, start, name=f"r{d}", caller_id_number=CALLER if d % 2 else "+1999")
            if d % 2:
                mine.append(rec.id)
        src = kazoo.Source("kz", options(kazoo_table(emu, "kz")), http)
        await src.start()
        emu.reset_stats()
        hits = await src.search(parse([f"caller={CALLER}", f"since={TODAY - dt.timedelta(days=40):%Y-%m-%d}"]))
        assert sorted(h.entry.id for h in hits) == sorted(
            i for i, d in zip(mine, range(3, 60, 6)) if d <= 40)
        # 41 days and two hours in windows of 10 days, after one 400 that taught the range
        assert emu.count("list") == 1 + 5
        hit = hits[0]
        day = dt.datetime.fromtimestamp(hit.entry.mtime, dt.timezone.utc)
        assert hit.folders == (account, f"{day:%Y}", f"{day:%m}", f"{day:%d}")
        listed = (await src.list_dir(("day", account, None, day.year, day.month, day.day))).entries
        same = next(e for e in listed if e.id == hit.entry.id)
        assert (same.name, same.version, same.xattrs) == (hit.entry.name, hit.entry.version, hit.entry.xattrs)
        assert src.cache_key(same) == src.cache_key(hit.entry)
    finally:
        emu.stop()


async def test_8x8_search_is_one_fiql_search_per_region(http):
    emu = EightByEight(regions=("us-east", "uk")).start()
    try:
        when = TODAY - dt.timedelta(days=3, hours=-10)
        a = emu.add_object("us-east", "callrecording", "a.wav", PatternBlob(1, 500), when,
                           tags={"callerId": CALLER, "agentId": "ag1"})
        b = emu.add_object("uk", "callcenterrecording", "b.wav", PatternBlob(2, 500), when,
                           tags={"calleeId": CALLER.lstrip("+"), "agentId": "ag2"})
        emu.add_object("uk", "callcenterrecording", "c.wav", PatternBlob(3, 500), when,
                       tags={"callerId": "+1999"})
        emu.add_object("uk", "callcenterrecording", "d.wav", PatternBlob(4, 500), when,
                       tags={"calleeId": CALLER}, state="REVOKED")
        src = e8.Source("e8", options(x8_table(emu, "e8")), http)
        await src.start()
        emu.reset_stats()
        query = parse([f"number={CALLER}", "since=2020-01-01"])
        fiql = src.search_fiql(query)
        assert fiql.startswith("(callerId==+15551230001,callerId==15551230001,calleeId==+15551230001,")
        assert "createdTime=ge=1577836800000" in fiql and "objectState==AVAILABLE" in fiql
        hits = await src.search(query)
        assert sorted(h.entry.id for h in hits) == sorted([a.id, b.id])
        assert emu.count("objects") == 2 and emu.count("regions") == 0
        hit = next(h for h in hits if h.entry.id == b.id)
        assert hit.folders == ("uk", "callcenterrecording", f"{when:%Y}", f"{when:%m}", f"{when:%d}")
        listed = (await src.list_dir(DirRef("day", "uk", "callcenterrecording", when.year, when.month,
                                            when.day))).entries
        same = next(e for e in listed if e.id == b.id)
        assert src.cache_key(same) == src.cache_key(hit.entry) and same.xattrs == hit.entry.xattrs
        # a value FIQL would have to quote is left to the match; nothing else to filter: no search
        assert src.search_fiql(parse(["agent=Ada Lovelace"])) is None
        assert await src.search(parse(["agent=Ada Lovelace"])) is None
    finally:
        emu.stop()
