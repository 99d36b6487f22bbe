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


# --------------------------------------------------------------------------- OCE

def _oce_archive(**kw):
    """An OCE emulator whose Recordings folder holds three days of two calls each (one of
    CALLER's), a file of CALLER's in another folder of the home, and one in a folder the
    user may not read."""
    from recfs.emulators.oce import OceEmulator
    emu = OceEmulator(**kw).start()
    top = emu.add_folder("self", "Recordings")
    mine = []
    for d in range(3):
        day = TODAY - dt.timedelta(days=d)
        folder = emu.add_folder(top, f"{day:%Y-%m-%d}", modified=day.timestamp())
        mine.append(emu.add_file(folder, f"call-{CALLER}-{d}.wav", PatternBlob(d, 300 + d),
                                 modified=day.timestamp() + 3600))
        emu.add_file(folder, f"call-+15559990002-{d}.wav", PatternBlob(9, 400), modified=day.timestamp())
    elsewhere = emu.add_folder("self", "Elsewhere")
    emu.add_file(elsewhere, f"call-{CALLER}-x.wav", PatternBlob(7, 100))
    hidden = emu.add_folder(top, "Hidden")
    emu.add_file(hidden, f"call-{CALLER}-h.wav", PatternBlob(8, 100))
    emu.forbidden.add(hidden)
    return emu, top, mine


async def test_oce_number_search_is_one_request_and_hits_are_listing_entries(http):
    from recfs.emulators.oce import source_table as oce_table
    from recfs.sources import oce
    emu, top, mine = _oce_archive()
    try:
        src = oce.Source("oce", options(oce_table(emu, "oce", root_folder=top)), http)
        await src.start()
        emu.reset_stats()
        hits = await src.search(parse([f"number={CALLER}"]))
        # only the root's tree, nothing the user may not read; the digits were asked for
        assert sorted(h.entry.id for h in hits) == sorted(mine)
        hits_first = hits
        assert emu.search_log[-1]["fulltext"] == CALLER.lstrip("+")
        # one search; each day folder no listing told of read once, to place its hits
        assert emu.count("search") == 1 and emu.count("folder") == 3
        assert emu.count("items") == 0 and emu.count("file") == 0

        # the hit is what a listing of its folder makes: same path, entry, cache key
        listed = (await src.list_dir(top)).entries
        days = {e.name: e for e in listed if e.is_dir}
        for hit in hits:
            assert len(hit.folders) == 1 and hit.folders[0] in days
            same = next(e for e in (await src.list_dir(days[hit.folders[0]].ref)).entries
                        if e.id == hit.entry.id)
            assert (same.name, same.size, same.mtime, same.version, same.xattrs, same.ref) == \
                (hit.entry.name, hit.entry.size, hit.entry.mtime, hit.entry.version,
                 hit.entry.xattrs, hit.entry.ref)
            assert src.cache_key(same) == src.cache_key(hit.entry)

        # the folders are known from the listings now: a search is one request
        emu.reset_stats()
        hits = await src.search(parse(["name~=-0.wav"]))
        assert {h.entry.name for h in hits} == {f"call-{CALLER}-0.wav", "call-+15559990002-0.wav"}
        assert sum(emu.counts.values()) == 1
        # a search answer without sizes and versions: each hit is completed from its file
        emu.search_omits = {"size", "version"}
        emu.reset_stats()
        again = await src.search(parse([f"number={CALLER}"]))
        assert emu.count("search") == 1 and emu.count("file") == len(mine) == len(again)
        for hit in again:
            same = next(h for h in hits_first if h.entry.id == hit.entry.id)
            assert (hit.folders, hit.entry.size, hit.entry.version, hit.entry.ref) == \
                (same.folders, same.entry.size, same.entry.version, same.entry.ref)
        # a query without a number or a name is not the service's: the core walks
        assert await src.search(parse(["since=2020-01-01"])) is None
    finally:
        emu.stop()


async def test_oce_search_pages_and_gives_way_at_the_services_cap(http):
    from recfs.emulators.oce import source_table as oce_table
    from recfs.sources import oce
    emu, top, mine = _oce_archive(search_cap=4, drift="mixed")
    try:
        src = oce.Source("oce", options(oce_table(emu, "oce", page_size=1)), http)   # the home
        await src.start()
        emu.reset_stats()
        # the service cannot filter by time: the match does, before any hit is placed, so
        # only today's folder and the folders above the hits are read
        hits = await src.search(parse([f"caller={CALLER}", f"since={TODAY:%Y-%m-%d}"]))
        assert {h.folders for h in hits} == {("Recordings", f"{TODAY:%Y-%m-%d}"), ("Elsewhere",)}
        assert emu.count("folder") == 3 and emu.count("search") == 4
        emu.reset_stats()
        hits = await src.search(parse([f"caller={CALLER}"]))
        # below the home: Recordings' days and Elsewhere (not Hidden), one item a page
        assert sorted(h.entry.name for h in hits) == sorted(
            [f"call-{CALLER}-{d}.wav" for d in range(3)] + [f"call-{CALLER}-x.wav"])
        assert {h.folders for h in hits} == {("Recordings", f"{TODAY - dt.timedelta(days=d):%Y-%m-%d}")
                                             for d in range(3)} | {("Elsewhere",)}
        assert emu.count("search") == 4
        # a search that fills the service's cap may have been cut: walked instead
        emu.search_cap = src.search_cap = 2
        assert await src.search(parse(["name~=call-"])) is None
    finally:
        emu.stop()


def test_oce_emulator_reads_each_plausible_querytext():
    import httpx
    from recfs.emulators.oce import API
    emu, top, mine = _oce_archive()
    try:
        def names(**params):
            resp = httpx.get(f"{emu.url}{API}/folders/{top}/search/items", params=params,
                             auth=(emu.username, emu.password))
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert set(body) == {"count", "totalResults", "totalCount", "hasMore", "errorCode", "items"}
            return sorted(i["name"] for i in body["items"])
        want = sorted(f"call-{CALLER}-{d}.wav" for d in range(3))
        digits = CALLER.lstrip("+")
        assert names(fulltext=digits) == want
        for form in (digits, f"fFileName <substring> `{digits}`", f"fItemName<substring>{digits}",
                     f"name<CONTAINS>'{digits}'", f"fulltext<contains>`{digits}`",
                     f"fItemName<substring>`{digits}`<AND>fItemName<ends>`.wav`"):
            assert names(querytext=form) == want, form
        assert names(querytext=f"fItemName<starts>`call-{CALLER}-1`<OR>fItemName<matches>`call-{CALLER}-2.wav`") \
            == want[1:]
        assert httpx.get(f"{emu.url}{API}/folders/search/items", auth=(emu.username, emu.password)).status_code == 400
    finally:
        emu.stop()
