"""The Kazoo emulator's scale mode (issue 20): a generated history answers listings
(windows, both orders, cursors, owner filters, the users endpoint) and reads as the same
recordings stored would, and the source lists a year of 1,000 calls a day with the
request counts of docs/providers/kazoo.md."""
from __future__ import annotations

import datetime as dt
import json

import httpx
import pytest

from recfs.config import parse_config
from recfs.emulators.kazoo import KazooEmulator, KazooScale, to_gregorian
from recfs.http import Http, RetryPolicy
from recfs.sources import kazoo

ACCOUNT = "5ca1e" + "0" * 27
OWNERS = ("a" * 32, "b" * 32, "c" * 32)
CLIENT = httpx.Client()


@pytest.fixture
async def http():
    client = Http(retry=RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05, budget=10))
    yield client
    await client.aclose()


def small() -> KazooScale:
    return KazooScale(account=ACCOUNT, start=dt.date(2024, 1, 20), days=40, per_day=30,
                      owners=OWNERS, ownerless=True, seed=3)


def crawl(emu: KazooEmulator, url: str, params: dict) -> list[str]:
    """Every id of a listing, page by page."""
    token = httpx.put(f"{emu.url}/v2/api_auth", json={"data": {"api_key": emu.demo_key}}).json()["auth_token"]
    ids: list[str] = []
    while True:
        body = CLIENT.get(url, params=params, headers={"X-Auth-Token": token}).json()
        assert body["status"] == "success", body
        ids += [d["id"] for d in body["data"]]
        if "next_start_key" not in body:
            return ids
        params = dict(params, start_key=body["next_start_key"])


def test_generated_listings_page_as_stored_ones_would():
    scale = small()
    every = [scale.recording(j) for j in range(scale.total)]
    with KazooEmulator(bucket_tokens=None, scale=scale) as emu:
        emu.demo_key = emu.add_api_key(ACCOUNT)
        url = f"{emu.url}/v2/accounts/{ACCOUNT}/recordings"
        frm = to_gregorian(dt.datetime(2024, 2, 3, 13, tzinfo=dt.timezone.utc).timestamp())
        to = frm + 9 * 86400
        inside = [r for r in every if frm <= to_gregorian(r.created) <= to]
        newest_first = [r.id for r in sorted(inside, key=lambda r: r.view_key, reverse=True)]
        window = {"created_from": frm, "created_to": to, "page_size": 17}
        assert crawl(emu, url, window) == newest_first
        assert crawl(emu, url, {**window, "ascending": "true"}) == newest_first[::-1]
        mine = [r.id for r in sorted(inside, key=lambda r: r.view_key, reverse=True)
                if r.public.get("owner_id") == OWNERS[1]]
        assert crawl(emu, url, {**window, "filter_owner_id": OWNERS[1]}) == mine
        assert crawl(emu, f"{emu.url}/v2/accounts/{ACCOUNT}/users/{OWNERS[1]}/recordings", window) == mine
        assert any("owner_id" not in r.public for r in inside)
        # the users of the owners exist; a generated recording reads, and is read-only
        token = httpx.put(f"{emu.url}/v2/api_auth", json={"data": {"api_key": emu.demo_key}}).json()["auth_token"]
        h = {"X-Auth-Token": token}
        users = httpx.get(f"{emu.url}/v2/accounts/{ACCOUNT}/users", headers=h).json()["data"]
        assert sorted(u["id"] for u in users) == sorted(OWNERS)
        rec = next(r for r in inside if r.modb == r.id[:6])
        media = httpx.get(f"{url}/{rec.id}", headers={**h, "Accept": "audio/mpeg", "Range": "bytes=100-199"})
        assert media.status_code == 206 and media.content == rec.blob.read(100, 100)
        assert httpx.delete(f"{url}/{rec.id}", headers=h).status_code == 403
        assert rec.id in crawl(emu, url, window)


def test_a_generated_call_over_a_months_end_answers_404_by_id():
    scale = KazooScale(account=ACCOUNT, start=dt.date(2024, 1, 30), days=3, per_day=1000, seed=1)
    late = [scale.recording(j) for j in range(scale.total)]
    crossing = [r for r in late if r.modb != r.id[:6]]
    assert crossing                                   # the last calls of 31 January
    with KazooEmulator(bucket_tokens=None, scale=scale) as emu:
        emu.demo_key = emu.add_api_key(ACCOUNT)
        token = httpx.put(f"{emu.url}/v2/api_auth", json={"data": {"api_key": emu.demo_key}}).json()["auth_token"]
        url = f"{emu.url}/v2/accounts/{ACCOUNT}/recordings/{crossing[0].id}"
        assert httpx.get(url, headers={"X-Auth-Token": token, "Accept": "audio/mpeg"}).status_code == 404


async def test_a_year_of_a_thousand_calls_a_day(http):
    """The first ls of an account with a year of history at 1,000 calls a day, a year,
    a month, a day and a user's day: the counts docs/providers/kazoo.md gives."""
    today = dt.datetime.now(dt.timezone.utc).date()
    first = today - dt.timedelta(days=365)
    scale = KazooScale(account=ACCOUNT, start=first, days=365, per_day=1000, owners=OWNERS)
    with KazooEmulator(bucket_tokens=None, scale=scale) as emu:
        emu.demo_key = emu.add_api_key(ACCOUNT)
        table = {"name": "kz", "kind": "kazoo", "api_url": emu.url + "/v2", "api_key": emu.demo_key,
                 "since": first.isoformat()}
        src = kazoo.Source("kz", parse_config({"sources": [table]}).sources[0].options, http)
        await src.start()

        def asked() -> int:
            return sum(emu.counts.values())
        emu.reset_stats()
        account = await src.list_dir(("acct", ACCOUNT))
        first_ls = asked()
        assert [e.name for e in account.entries] == [str(first.year), str(today.year), "users"] \
            or [e.name for e in account.entries] == [str(today.year), "users"]
        assert first_ls <= 40
        year = await src.list_dir(account.entries[0].ref)
        assert asked() - first_ls <= 2 * 13
        before = asked()
        month = await src.list_dir(year.entries[-1].ref)
        assert asked() - before <= 2 * 31 + 2
        before = asked()
        day = await src.list_dir(month.entries[1].ref)
        assert len(day.entries) == 1000 and asked() - before <= 1000 * 31 // 24 // 200 + 2
        before = asked()
        user_day = ("day", ACCOUNT, OWNERS[0], *month.entries[1].ref[3:])
        mine = await src.list_dir(user_day)
        assert len(mine.entries) in (333, 334) and asked() == before     # from the account's day
        print(f"first ls: {first_ls} requests")


async def test_a_walk_of_consecutive_days_reads_each_stored_document_about_once(http):
    """A day's window reaches `created_lag_hours` into the next day's (a recording is
    stored after its call): what the account's listing of a closed day saw of the next
    day is carried to it, so a walk of consecutive days (find, rsync) asks each day for
    what was stored after the previous window only; the days list exactly what a
    listing of their whole window shows. `recfs refresh` (forget) asks whole again."""
    first = (dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=70)).replace(day=1)
    scale = KazooScale(account=ACCOUNT, start=first, days=10, per_day=1000, owners=OWNERS)
    with KazooEmulator(bucket_tokens=None, scale=scale) as emu:
        emu.demo_key = emu.add_api_key(ACCOUNT)
        table = {"name": "kz", "kind": "kazoo", "api_url": emu.url + "/v2", "api_key": emu.demo_key,
                 "since": first.isoformat()}
        options = parse_config({"sources": [table]}).sources[0].options
        walker, single = kazoo.Source("kz", options, http), kazoo.Source("kz", options, http)
        await walker.start()
        await single.start()

        def listing_requests() -> int:
            return sum(n for route, n in emu.counts.items() if "list" in route)

        def seen(listing) -> list[tuple]:
            return sorted((e.name, e.id, e.version, e.mtime, e.size_hint) for e in listing.entries)
        days = [("day", ACCOUNT, None, d.year, d.month, d.day)
                for d in (first + dt.timedelta(days=i) for i in range(1, 7))]
        costs = []
        for ref in days:
            before = listing_requests()
            walked = await walker.list_dir(ref)
            costs.append(listing_requests() - before)
            assert len(walked.entries) == 1000 and seen(walked) == seen(await single.list_dir(ref))
        # the first day's window holds 1,250 stored documents (7 pages of 200); each next
        # day's rest about 1,000 (5 pages, 6 where a page ends on the window's edge)
        assert costs[0] == 7 and all(c <= 6 for c in costs[1:]), costs
        walker.forget(("acct", ACCOUNT))
        before = listing_requests()
        await walker.list_dir(("day", ACCOUNT, None, *days[-1][3:-1], days[-1][-1] + 1))
        assert listing_requests() - before == 7


async def test_a_months_probes_of_its_days_are_the_first_pages_of_their_listings(http):
    """A closed month of 1,000 calls a day: its listing probes each day with the first
    page of the day's body, which the day's listing goes on from, so the month and a
    walk of all its days cost the pages of its documents (a plain client's, +10%) and
    the days list what a listing of their whole window shows. A day folder's mtime is
    its newest start once the day was listed."""
    month = (dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=70)).replace(day=1)
    ends = (month + dt.timedelta(days=32)).replace(day=1)
    scale = KazooScale(account=ACCOUNT, start=month, days=(ends - month).days, per_day=1000,
                       owners=OWNERS)
    with KazooEmulator(bucket_tokens=None, scale=scale) as emu:
        emu.demo_key = emu.add_api_key(ACCOUNT)
        table = {"name": "kz", "kind": "kazoo", "api_url": emu.url + "/v2", "api_key": emu.demo_key,
                 "since": month.isoformat()}
        options = parse_config({"sources": [table]}).sources[0].options
        walker, single = kazoo.Source("kz", options, http), kazoo.Source("kz", options, http)
        await walker.start()
        await single.start()

        def listing_requests() -> int:
            return sum(n for route, n in emu.counts.items() if "list" in route)
        # a plain client: the month's documents (and the hours after it), 200 a page
        frm = to_gregorian(dt.datetime.combine(month, dt.time(), dt.timezone.utc).timestamp())
        to = to_gregorian(dt.datetime.combine(ends, dt.time(6), dt.timezone.utc).timestamp())
        plain = len(pages(emu, f"{emu.url}/v2/accounts/{ACCOUNT}/recordings",
                          {"created_from": frm, "created_to": to, "page_size": 200}))
        before = listing_requests()
        listed = await walker.list_dir(("month", ACCOUNT, None, month.year, month.month))
        assert len(listed.entries) == scale.days
        probes = listing_requests() - before
        walked = [await walker.list_dir(entry.ref) for entry in listed.entries]
        total = listing_requests() - before
        assert probes <= scale.days + 2 and total <= 1.1 * plain, (probes, total, plain)
        for entry, listing in zip(listed.entries, walked):
            assert len(listing.entries) == 1000
            assert sorted((e.name, e.mtime) for e in listing.entries) == \
                sorted((e.name, e.mtime) for e in (await single.list_dir(entry.ref)).entries)
        # the days' mtimes: their newest starts, from their listings
        again = await walker.list_dir(("month", ACCOUNT, None, month.year, month.month))
        newest = {e.name: max(f.mtime for f in (await single.list_dir(e.ref)).entries)
                  for e in again.entries}
        assert {e.name: e.mtime for e in again.entries} == newest


# --------------------------------------------------------------------------- filters (issue 24)

def pages(emu: KazooEmulator, url: str, params: dict) -> list[dict]:
    """Every page of a listing as answered (data ids, page_size, start keys)."""
    token = httpx.put(f"{emu.url}/v2/api_auth", json={"data": {"api_key": emu.demo_key}}).json()["auth_token"]
    out = []
    while True:
        body = CLIENT.get(url, params=params, headers={"X-Auth-Token": token}).json()
        assert body["status"] == "success", body
        out.append({"ids": [d["id"] for d in body["data"]], "page_size": body.get("page_size"),
                    "start_key": body.get("start_key"), "next": body.get("next_start_key")})
        if "next_start_key" not in body:
            return out
        params = dict(params, start_key=body["next_start_key"])


def test_filtered_listings_equal_a_filter_over_every_generated_document(monkeypatch):
    """crossbar filters on the parties, the direction and the owner (plain values, JSON
    lists, JSON strings, with filter_not_ and has_key beside them) answer as the
    listing that reads every row does, page for page, and hold exactly the documents a
    brute-force filter keeps."""
    from recfs.emulators import kazoo as kz
    scale = KazooScale(account=ACCOUNT, start=dt.date(2024, 1, 20), days=40, per_day=30,
                       owners=OWNERS, ownerless=True, seed=3, callers=37, callees=5)
    every = [scale.recording(j) for j in range(scale.total)]
    caller = scale.caller_number(123)
    mine = [r.id for r in every if r.public["caller_id_number"] == caller]
    assert mine == [scale.rid(j) for j in scale.caller_recordings(caller)] and len(mine) in (32, 33)
    frm = to_gregorian(dt.datetime(2024, 1, 22, tzinfo=dt.timezone.utc).timestamp())
    to = frm + 20 * 86400
    filters = [
        {"filter_caller_id_number": caller},
        {"filter_caller_id_number": json.dumps([caller, caller.lstrip("+")])},
        {"filter_caller_id_number": json.dumps(caller)},
        {"filter_caller_id_number": caller.lstrip("+")},
        {"filter_caller_id_number": "+19999999999"},
        {"filter_callee_id_number": json.dumps([scale.callee_number(7), "x", 5])},
        {"filter_callee_id_number": scale.callee_number(7), "filter_direction": "outbound"},
        {"filter_caller_id_number": json.dumps([scale.caller_number(1), scale.caller_number(2)]),
         "filter_not_direction": "inbound"},
        {"filter_caller_id_number": caller, "has_key": "owner_id"},
        {"filter_direction": "inbound", "filter_owner_id": OWNERS[2]},
        {"filter_owner_id": ""},
        {"filter_caller_id_number": caller, "filter_callee_id_number": scale.callee_number(0)},
    ]
    slow = KazooEmulator(bucket_tokens=None, scale=scale)
    monkeypatch.setattr(slow, "_sparse_listing", lambda *a, **kw: None)
    with KazooEmulator(bucket_tokens=None, scale=scale) as fast, slow:
        for emu in (fast, slow):
            emu.demo_key = emu.add_api_key(ACCOUNT)
        matched = 0
        for flt in filters:
            for extra in ({"page_size": 3}, {"page_size": 3, "ascending": "true"}, {"paginate": "false"},
                          {"page_size": 50}):
                params = {"created_from": frm, "created_to": to, **flt, **extra}
                for route in ("recordings", f"users/{OWNERS[0]}/recordings"):
                    got = pages(fast, f"{fast.url}/v2/accounts/{ACCOUNT}/{route}", params)
                    assert got == pages(slow, f"{slow.url}/v2/accounts/{ACCOUNT}/{route}", params), (flt, extra, route)
                    want = {r.id for r in every if frm <= to_gregorian(r.created) <= to
                            and kz._passes(r.full_doc(), flt)
                            and (route == "recordings" or r.public.get("owner_id") == OWNERS[0])}
                    assert {i for p in got for i in p["ids"]} == want, (flt, extra, route)
                    matched += bool(want)
        assert matched >= 40          # most of the 96 listings find something


def test_a_caller_in_a_year_is_found_without_generating_the_year(monkeypatch):
    """A 31-day window of 31,000 generated recordings filtered on one caller generates
    its handful of candidates, not the window."""
    today = dt.datetime.now(dt.timezone.utc).date()
    scale = KazooScale(account=ACCOUNT, start=today - dt.timedelta(days=365), days=365, per_day=1000)
    made = []
    real = KazooScale.recording
    monkeypatch.setattr(KazooScale, "recording", lambda self, j: made.append(j) or real(self, j))
    caller = scale.caller_number(4242)
    with KazooEmulator(bucket_tokens=None, scale=scale) as emu:
        emu.demo_key = emu.add_api_key(ACCOUNT)
        to = to_gregorian(dt.datetime.combine(today, dt.time(), dt.timezone.utc).timestamp())
        got = pages(emu, f"{emu.url}/v2/accounts/{ACCOUNT}/recordings",
                    {"created_from": to - 31 * 86400, "created_to": to, "page_size": 50,
                     "filter_caller_id_number": json.dumps([caller, caller.lstrip("+")])})
    ids = [i for p in got for i in p["ids"]]
    assert 14 <= len(ids) <= 17 and len(got) == 1
    assert len(made) == len(ids)
    assert len(scale.caller_recordings(caller)) in (182, 183)
