"""Listing cost per folder level (issue 20), counted at the emulators over real sockets.

Every folder costs requests in proportion to that folder: at most the pages a plain
client needs at the API's largest page size (the page floor) to read what the
folder stands for, never an account's history. The 8x8 walks (region, type, year,
month) also cost at most one search per entry plus one; a day folder costs its pages,
less the first ones a walk above it already read. A file costs nothing to stat or to
open; its bytes cost their own GETs. docs/providers/8x8.md and oce.md, "Listing
cost", state the same in tables. Counts only, never times.
"""
from __future__ import annotations

import datetime as dt
import math

import pytest

from recfs.config import parse_config
from recfs.emulators.base import BytesBlob
from recfs.emulators.eightbyeight import EightByEight, source_table as e8_table
from recfs.emulators.oce import OceEmulator, source_table as oce_table
from recfs.http import Http, RetryPolicy
from recfs.sources import eightbyeight as e8
from recfs.sources import oce
from recfs.sources.eightbyeight import DirRef

UTC = dt.timezone.utc
E8_PAGE = e8.PAGE_LIMIT            # 100, the CSS maximum
OCE_PAGE = oce.MAX_PAGE            # 10000, the Documents API maximum


def pages(n: int, limit: int) -> int:
    """The page floor of n items: what a plain client pays at `limit` a page."""
    return max(1, math.ceil(n / limit))


# ------------------------------------------------------------------ 8x8

# (type, year, month, day) -> objects that day: days of one object, of exactly a
# page, of a page and one, of two and a half pages, sparse days, 40 a day
E8_DAYS = {
    ("callrecording", 2024, 9, 1): 1,
    ("callrecording", 2024, 9, 2): 100,
    ("callrecording", 2024, 9, 3): 101,
    ("callrecording", 2024, 9, 4): 250,
    **{("callrecording", 2024, 10, d): 120 for d in (1, 2, 3)},
    **{("callrecording", 2025, 1, d): 1 for d in (5, 17, 31)},
    **{("voicemail", 2024, m, d): 40 for m in (9, 10) for d in range(1, 16)},
}


@pytest.fixture(scope="module")
def e8emu():
    emu = EightByEight(regions=("us-east",))
    blob = BytesBlob(b"x")
    md5 = blob.md5()
    for (type_, y, m, d), n in E8_DAYS.items():
        start = dt.datetime(y, m, d, tzinfo=UTC).timestamp()
        for k in range(n):          # distinct createdTimes spread over the day
            emu.add_object("us-east", type_, f"{type_}-{y}{m:02d}{d:02d}-{k:03d}.mp3", blob,
                           start + 1 + k * (86_000 // n), checksum=md5)
    with emu:
        yield emu


def objects_in(emu: EightByEight, ref: DirRef) -> int:
    """How many objects the folder stands for (what a plain client would page)."""
    n = 0
    for obj in emu.objects.values():
        t = dt.datetime.fromtimestamp(obj.created, UTC)
        if (ref.level == "region" or obj.type == ref.type) and \
                all(getattr(ref, f) in (0, getattr(t, f)) for f in ("year", "month", "day")):
            n += 1
    return n


class E8:
    """A fresh 8x8 source (nothing kept) and the searches it made."""

    def __init__(self, emu: EightByEight, **opts):
        table = e8_table(emu, "e8")
        table.update(opts)
        self.emu = emu
        self.http = Http(retry=RetryPolicy(base_delay=0.001))
        self.src = e8.Source("e8", parse_config({"sources": [table]}).sources[0].options, self.http)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.src.aclose()
        await self.http.aclose()

    async def cost(self, ref) -> tuple[int, list]:
        """(searches, entries) of one listing."""
        before = self.emu.count("objects")
        entries = (await self.src.list_dir(ref)).entries
        return self.emu.count("objects") - before, entries


E8_SEPT = DirRef("month", "us-east", "callrecording", 2024, 9)


@pytest.mark.parametrize("day,n", [(1, 1), (2, 100), (3, 101), (4, 250), (5, 0)])
async def test_8x8_a_day_listed_on_its_own_costs_its_pages(e8emu, day, n):
    ref = DirRef("day", "us-east", "callrecording", 2024, 9, day)
    async with E8(e8emu) as e:
        searches, entries = await e.cost(ref)
    assert len(entries) == n
    assert searches == pages(n, E8_PAGE)


@pytest.mark.parametrize("ref", [
    DirRef("region", "us-east"),
    DirRef("type", "us-east", "callrecording"),
    DirRef("type", "us-east", "voicemail"),
    DirRef("year", "us-east", "callrecording", 2024),
    DirRef("year", "us-east", "callrecording", 2025),
    E8_SEPT,
    DirRef("month", "us-east", "callrecording", 2024, 10),
    DirRef("month", "us-east", "voicemail", 2024, 9),
    DirRef("month", "us-east", "voicemail", 2024, 8),       # empty
], ids=str)
async def test_8x8_a_walk_costs_no_more_than_its_page_floor_nor_its_entries_plus_one(e8emu, ref):
    async with E8(e8emu) as e:
        searches, entries = await e.cost(ref)
    floor = pages(objects_in(e8emu, ref), E8_PAGE)
    assert searches <= min(floor, len(entries) + 1), (searches, floor, len(entries))


async def test_8x8_exact_costs_of_a_month_and_its_days(e8emu):
    """September 2024 (1, 100, 101 and 250 calls on its first four days): the month
    costs a page per day (a page of the 1st and the 2nd, of the 3rd, of the 4th) and
    one that finds nothing after; each day then costs its pages less the page the
    month read of it."""
    async with E8(e8emu) as e:
        searches, days = await e.cost(E8_SEPT)
        assert [d.name for d in days] == ["01", "02", "03", "04"] and searches == 4
        costs = {d.name: await e.cost(d.ref) for d in days}
    assert {name: (len(entries), searches) for name, (searches, entries) in costs.items()} == {
        "01": (1, 0),           # whole in the month's first page
        "02": (100, 1),         # 99 of it there: the rest from pageKey 99
        "03": (101, 1),         # its first 100 there: one more page
        "04": (250, 2)}         # its first 100 there: two more pages


async def test_8x8_walking_the_tree_costs_at_most_its_page_floor(e8emu):
    """`find` over everything: every object once, and no more searches than the
    pages of every day folder at limit=100 (Σ ⌈n/100⌉), 1.1× at most as issue 20
    asks; the old design (limit=1 probes per period, then every day's pages) made
    2.2× (101 for 46)."""
    seen: list[str] = []
    per_level: dict[str, int] = {}
    async with E8(e8emu) as e:
        e8emu.reset_stats()
        await e.src.start()

        async def walk(ref) -> None:
            searches, entries = await e.cost(ref)
            per_level[ref.level] = per_level.get(ref.level, 0) + searches
            for entry in entries:
                if entry.is_dir:
                    await walk(entry.ref)
                else:
                    seen.append(entry.id)
        await walk(e.src.root_ref())
    assert sorted(seen) == sorted(e8emu.objects)
    floor = sum(pages(n, E8_PAGE) for n in E8_DAYS.values())
    total = e8emu.count("objects", "regions")
    assert e8emu.count("regions") == 1            # the check at start answers the root listing
    assert total <= 1.1 * floor, (total, floor, per_level)
    assert per_level["day"] < floor / 2           # the walks' pages were the days' first pages


async def test_8x8_a_folder_listed_again_asks_the_service_again(e8emu):
    """A kept page answers a folder once: a refresh (or an expired listing) sees
    what the service has now, at the cost of a first listing."""
    day = DirRef("day", "us-east", "callrecording", 2024, 9, 4)
    async with E8(e8emu) as e:
        first_month, _ = await e.cost(E8_SEPT)
        again_month, _ = await e.cost(E8_SEPT)
        first_day, _ = await e.cost(day)
        again_day, entries = await e.cost(day)
    assert first_month == again_month == 4
    assert (first_day, again_day, len(entries)) == (2, pages(250, E8_PAGE), 250)


async def test_8x8_calls_of_one_second_across_a_pages_end_are_all_listed():
    """150 calls made in the same second: the month's page holds 100 of them, the
    day's search from pageKey 100 starts in that second too, so the day goes on
    from the calls made before it (none): every call once, a page more than the
    floor."""
    emu = EightByEight(regions=("us-east",))
    when = dt.datetime(2024, 9, 3, 12, tzinfo=UTC)
    for k in range(150):
        emu.add_object("us-east", "callrecording", f"same-{k:03d}.mp3", b"x", when)
    emu.add_object("us-east", "callrecording", "later.mp3", b"x", when + dt.timedelta(days=1))
    with emu:
        async with E8(emu) as e:
            month, days = await e.cost(DirRef("month", "us-east", "callrecording", 2024, 9))
            day, entries = await e.cost(days[0].ref)
    assert [d.name for d in days] == ["03", "04"] and month == 2
    assert sorted(en.name for en in entries) == sorted(f"same-{k:03d}.mp3" for k in range(150))
    assert day == 1 + pages(150, E8_PAGE)


@pytest.mark.parametrize("presign", [False, True])
async def test_8x8_stat_and_open_of_a_file_cost_nothing_its_bytes_one_get(e8emu, presign):
    day = DirRef("day", "us-east", "callrecording", 2024, 10, 2)
    async with E8(e8emu, presign=presign) as e:
        _, entries = await e.cost(day)
        e8emu.reset_stats()
        await e.src.sizes(entries)                  # sizes are in the listing (storedBytes)
        target = e.src.target(entries[7])           # what open prepares
        assert all(en.size == 1 for en in entries) and sum(e8emu.counts.values()) == 0
        got = bytearray()
        await e.http.get_range(target, 0, 1, lambda off, data: got.extend(data), total=1)
    assert bytes(got) == b"x"
    # the GET of the bytes, and with presign the one that signs its URL
    assert e8emu.count("content") + e8emu.count("presigned") == (2 if presign else 1)
    assert e8emu.count("objects", "object", "regions") == 0


# ------------------------------------------------------------------ OCE

OCE_FOLDERS = (0, 1, OCE_PAGE, OCE_PAGE + 1, 2 * OCE_PAGE)


@pytest.fixture(scope="module")
def oceemu():
    emu = OceEmulator()
    emu._check_name = lambda parent, name: None     # names are distinct: skip the O(n) check
    emu.big = {}
    for n in OCE_FOLDERS:
        folder = emu.big[n] = emu.add_folder("self", f"folder-{n}")
        for k in range(n):
            emu.add_file(folder, f"r{k:06d}.wav", b"x", modified=1714550400 + k)
    nested = emu.add_folder(emu.big[OCE_PAGE + 1], "nested")
    emu.add_file(nested, "deep.wav", b"y")
    with emu:
        yield emu


class Oce:
    def __init__(self, emu: OceEmulator, **opts):
        table = oce_table(emu, "oce", **opts)
        options = parse_config({"cache": {"dir": "/tmp/unused"}, "sources": [table]}).sources[0].options
        self.emu = emu
        self.http = Http(retry=RetryPolicy(base_delay=0.001))
        self.src = oce.Source("oce", options, self.http)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.src.aclose()
        await self.http.aclose()


@pytest.mark.parametrize("n", OCE_FOLDERS)
async def test_oce_a_folder_costs_its_pages_at_the_largest_page_size(oceemu, n):
    async with Oce(oceemu) as o:
        oceemu.reset_stats()
        listing = await o.src.list_dir(oceemu.big[n])
    extra = 1 if n == OCE_PAGE + 1 else 0           # that one also holds a folder
    assert len(listing.entries) == n + extra
    assert oceemu.count("items") == pages(n + extra, OCE_PAGE)
    assert sum(oceemu.counts.values()) - oceemu.count("token") == oceemu.count("items")


async def test_oce_the_home_folder_costs_its_own_page_not_its_subtree(oceemu):
    async with Oce(oceemu) as o:
        await o.src.start()                         # GET /folders/self: one request at mount
        assert oceemu.count("folder") == 1
        oceemu.reset_stats()
        listing = await o.src.list_dir(o.src.root_ref())
    assert len(listing.entries) == len(OCE_FOLDERS) and oceemu.count("items") == 1


async def test_oce_stat_and_open_of_a_file_cost_nothing_its_bytes_one_get(oceemu):
    async with Oce(oceemu) as o:
        entries = (await o.src.list_dir(oceemu.big[OCE_PAGE])).entries
        oceemu.reset_stats()
        await o.src.sizes(entries)                  # sizes are in the listing
        target = o.src.target(entries[123])         # what open prepares
        assert all(e.size == 1 for e in entries) and sum(oceemu.counts.values()) == 0
        got = bytearray()
        await o.http.get_range(target, 0, 1, lambda off, data: got.extend(data), total=1)
    assert bytes(got) == b"x" and oceemu.count("data") == 1
    assert sum(oceemu.counts.values()) - oceemu.count("token") == 1
