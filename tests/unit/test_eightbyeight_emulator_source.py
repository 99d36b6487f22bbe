"""The 8x8 source driven directly (no mount) against the real 8x8 emulator."""
from __future__ import annotations

import datetime as dt
import errno
import random

import pytest
import trio

from recfs.config import parse_config
from recfs.content.bulk import BulkEngine
from recfs.content.cache import Cache
from recfs.content.policy import AccessPolicy
from recfs.emulators.base import BytesBlob, PatternBlob
from recfs.emulators.eightbyeight import EightByEight, demo, source_table
from recfs.http import Http, HttpError, RetryPolicy
from recfs.sources import eightbyeight as e8
from recfs.sources.base import Entry, SourceError
from recfs.sources.eightbyeight import DirRef

UTC = dt.timezone.utc


@pytest.fixture
def demo_emu():
    with demo(seed=1) as emu:
        yield emu


@pytest.fixture
def big_day():
    """One day folder of 200 recordings (and a few on the next day)."""
    emu = EightByEight(regions=("us-east",))
    rng = random.Random(4)
    day = dt.datetime(2024, 9, 3, tzinfo=UTC)
    for i in range(200):
        emu.add_object("us-east", "callrecording", f"call-{i:03d}.mp3",
                       BytesBlob(rng.randbytes(rng.randint(2_000, 40_000))),
                       day + dt.timedelta(seconds=300 * i), tags={"callId": f"c{i}"})
    for i in range(3):
        emu.add_object("us-east", "callrecording", f"next-{i}.mp3", PatternBlob(i, 1000),
                       day + dt.timedelta(days=1, hours=i))
    with emu:
        yield emu


class Harness:
    def __init__(self, emu: EightByEight, tmp_path, **opts):
        table = source_table(emu, "e8")
        table.update(poll_interval=0.01, poll_max_interval=0.02, batch_window=0.05)
        table.update(opts)
        options = parse_config({"sources": [table]}).sources[0].options
        self.emu = emu
        self.http = Http(retry=RetryPolicy(base_delay=0.001))
        self.cache = Cache(tmp_path / "cache", max_size=1 << 32)
        self.src = e8.Source("e8", options, self.http)
        # the one bulk engine, driven by the source's bulk capability (as the reader does)
        self.engine = BulkEngine(self.src, self.http, self.cache)

    async def close(self):
        await self.engine.aclose()
        await self.src.aclose()
        await self.http.aclose()

    async def fetch(self, entry: Entry, folder: list[Entry], copying: bool = False) -> bool:
        """The first read of `entry` as the reader makes it: True when a bulk job put
        it in the cache, False to read it per object. `copying`: the access policy says
        the folder is being copied."""
        return await self.engine.fetch(entry, folder, copying)

    async def walk(self, ref=None, path="") -> dict[str, Entry]:
        out = {}
        for e in (await self.src.list_dir(ref or self.src.root_ref())).entries:
            p = f"{path}/{e.name}" if path else e.name
            if e.is_dir:
                out.update(await self.walk(e.ref, p))
            else:
                out.setdefault(p, e)
                if out[p] is not e:            # a duplicate objectName: keep both
                    out[f"{p}#{e.id}"] = e
        return out

    async def day(self, *parts) -> list[Entry]:
        return (await self.src.list_dir(DirRef("day", *parts))).entries

    def cached(self, entry: Entry) -> bytes | None:
        key = self.src.cache_key(entry)
        if not self.cache.has_whole(key, entry.size):
            return None
        return self.cache.entry(key, entry.size).read(0, entry.size)

    async def ranged(self, entry: Entry, start=0, end=None) -> bytes:
        got = bytearray()
        end = entry.size if end is None else end

        def sink(off, data):
            assert off == start + len(got)
            got.extend(data)
        try:
            await self.http.get_range(self.src.target(entry), start, end, sink, total=entry.size)
        except HttpError as exc:
            raise self.src.content_error(entry, exc) from None
        return bytes(got)

    async def copy(self, entries: list[Entry]) -> dict[str, bytes]:
        """What `cp` does through the reader: it opens the files in order (the access
        policy sees a copy from the second one on); the first uncached read asks the
        bulk engine, then falls back to ranged reads."""
        policy = AccessPolicy()
        out = {}
        for i, e in enumerate(entries):
            policy.opened("folder", i)
            data = self.cached(e)
            if data is None and await self.fetch(e, entries, policy.copying("folder")):
                data = self.cached(e)
            if data is None:
                data = await self.ranged(e)
            out[e.id] = data
        return out


@pytest.fixture
async def h_demo(demo_emu, tmp_path):
    h = Harness(demo_emu, tmp_path)
    yield h
    await h.close()


def expected_paths(emu: EightByEight) -> list[str]:
    out = []
    for o in emu.objects.values():
        if o.objectState != "AVAILABLE":
            continue
        t = dt.datetime.fromtimestamp(o.created, UTC)
        out.append(f"{o.region}/{o.type}/{t:%Y/%m/%d}/{o.objectName}")
    return sorted(out)


# ------------------------------------------------------------------ tree and bytes

async def test_tree_matches_the_emulator(h_demo, demo_emu):
    await h_demo.src.start()
    tree = await h_demo.walk()
    assert sorted(p.split("#")[0] for p in tree) == expected_paths(demo_emu)
    for e in tree.values():
        obj = demo_emu.objects[e.id]
        assert e.size == obj.size and e.mtime == int(obj.created)
        assert e.xattrs["8x8.id"] == obj.id and e.xattrs["8x8.type"] == obj.type
        assert e.xattrs["8x8.checksum"] == obj.checksum
        for k, v in obj.tags.items():
            assert e.xattrs[f"8x8.{k}"] == v
    hidden = {"revoked.wav", "archived.wav", "pending.wav"}
    assert not hidden & {p.rsplit("/", 1)[-1] for p in tree}


async def test_listing_cost_is_proportional_to_the_folder(big_day, tmp_path):
    h = Harness(big_day, tmp_path)
    try:
        entries = await h.day("us-east", "callrecording", 2024, 9, 3)
        assert len(entries) == 200 and big_day.count("objects") == 2    # two pages of 100
        big_day.reset_stats()
        months = await h.src.list_dir(DirRef("month", "us-east", "callrecording", 2024, 9))
        assert [e.name for e in months.entries] == ["03", "04"]
        # a page of September 3's first 100, then the 4th's three (the last page)
        assert big_day.count("objects") == 2
    finally:
        await h.close()


async def test_every_file_reads_byte_equal_per_object(h_demo, demo_emu):
    tree = await h_demo.walk()
    for e in tree.values():
        assert await h_demo.ranged(e) == demo_emu.objects[e.id].blob.all_bytes()
    big = max(tree.values(), key=lambda e: e.size)
    blob = demo_emu.objects[big.id].blob
    assert await h_demo.ranged(big, 1000, 5000) == blob.read(1000, 4000)
    assert demo_emu.jobs_started == 0


async def test_presigned_reads_renew_an_expired_url(demo_emu, tmp_path):
    h = Harness(demo_emu, tmp_path, presign=True)
    try:
        e = max((await h.walk()).values(), key=lambda e: e.size)
        blob = demo_emu.objects[e.id].blob
        assert await h.ranged(e, 0, 100) == blob.read(0, 100)
        demo_emu.advance(4000)                     # past X-Amz-Expires, and the token's life
        assert await h.ranged(e, 100, 300) == blob.read(100, 200)
        # presigned: served, refused as expired (403), served through a renewed URL; the
        # renewal itself met the expired token once (401) and fetched a new one
        assert demo_emu.count("presigned") == 3 and demo_emu.count("token") == 2
        assert [s for m, p, s in demo_emu.log if p.endswith("/content")] == [200, 401, 200]
    finally:
        await h.close()


@pytest.mark.parametrize("quirks", [dict(listing_as_array=True, bulk_as_array=True),
                                    dict(stored_bytes_as_string=True, include_total=True),
                                    dict(content_ranges=False, bulk_polls=0)])
async def test_documented_shape_variants(tmp_path, quirks):
    emu = demo(seed=2)
    for k, v in quirks.items():
        setattr(emu, k, v)
    with emu:
        h = Harness(emu, tmp_path, bulk="always")
        try:
            tree = await h.walk()
            assert sorted(p.split("#")[0] for p in tree) == expected_paths(emu)
            entries = await h.day("us-east", "callrecording", 2024, 9, 2)
            got = await h.copy(entries)
            assert got == {e.id: emu.objects[e.id].blob.all_bytes() for e in entries}
            assert await h.ranged(entries[0], 10, 20) == emu.objects[entries[0].id].blob.read(10, 10)
        finally:
            await h.close()


# ------------------------------------------------------------------ bulk

async def test_copying_a_200_file_day_takes_a_handful_of_jobs(big_day, tmp_path):
    h = Harness(big_day, tmp_path)
    try:
        entries = await h.day("us-east", "callrecording", 2024, 9, 3)
        got = await h.copy(entries)
        assert got == {e.id: big_day.objects[e.id].blob.all_bytes() for e in entries}
        # the first file per object, then 1-50, 51-100, 101-150 and 151-199 (read ahead)
        assert big_day.jobs_started == 4
        assert big_day.count("content") <= 2          # the first file, read before the folder was hot
        assert all(len(j.ids) <= 50 for j in big_day.jobs.values())
    finally:
        await h.close()


async def test_reads_arriving_together_share_one_job(big_day, tmp_path):
    h = Harness(big_day, tmp_path, bulk="always", bulk_readahead=False)
    try:
        entries = (await h.day("us-east", "callrecording", 2024, 9, 3))[:10]
        results = {}

        async def read(e):
            results[e.id] = await h.fetch(e, entries)
        async with trio.open_nursery() as n:
            for e in entries:
                n.start_soon(read, e)
        assert all(results.values()) and len(results) == 10 and big_day.jobs_started == 1
        assert all(h.cached(e) == big_day.objects[e.id].blob.all_bytes() for e in entries)
    finally:
        await h.close()


async def test_jobs_are_bounded_by_count_and_bytes(big_day, tmp_path):
    h = Harness(big_day, tmp_path)
    try:
        entries = await h.day("us-east", "callrecording", 2024, 9, 3)
        assert await h.engine.prefetch(entries) == 0          # every file delivered
        assert sorted(len(j.ids) for j in big_day.jobs.values()) == [50, 50, 50, 50]
        assert all(h.cached(e) == big_day.objects[e.id].blob.all_bytes() for e in entries)
    finally:
        await h.close()
    big_day.jobs.clear()
    h = Harness(big_day, tmp_path / "2", bulk_max_bytes=100_000)
    try:
        entries = await h.day("us-east", "callrecording", 2024, 9, 3)
        assert await h.engine.prefetch(entries[:40]) == 0
        for job in big_day.jobs.values():
            assert sum(big_day.objects[i].size for i in job.ids) <= 100_000
        assert big_day.jobs_started >= 4
    finally:
        await h.close()


async def test_duplicate_object_names_in_one_zip(h_demo, demo_emu):
    entries = await h_demo.day("us-east", "callcenterrecording", 2024, 9, 4)
    assert [e.name for e in entries] == ["voicemail-greeting.wav"] * 2
    h_demo.src.bulk.mode = "always"
    assert await h_demo.fetch(entries[0], entries)
    assert demo_emu.jobs_started == 1
    for e in entries:
        assert h_demo.cached(e) == demo_emu.objects[e.id].blob.all_bytes()


async def test_md5_mismatch_gives_eio_and_is_not_cached(big_day, tmp_path):
    h = Harness(big_day, tmp_path, bulk="always")
    try:
        entries = (await h.day("us-east", "callrecording", 2024, 9, 3))[:5]
        big_day.corrupt_ids = {entries[0].id}
        with pytest.raises(SourceError) as exc:
            await h.fetch(entries[0], entries)
        assert exc.value.errno == errno.EIO and "checksum mismatch" in str(exc.value)
        assert h.cached(entries[0]) is None
        assert all(h.cached(e) == big_day.objects[e.id].blob.all_bytes() for e in entries[1:])
        # opened again, per-object reads serve the right bytes
        h.src.bulk.mode = "never"
        assert await h.fetch(entries[0], entries) is False
        assert await h.ranged(entries[0]) == big_day.objects[entries[0].id].blob.all_bytes()
    finally:
        await h.close()


@pytest.mark.parametrize("status", ["PARTIAL_DONE", "FAILED", "CANCELLED", "ERROR"])
async def test_failed_jobs_leave_the_missing_files_to_per_object_reads_and_a_later_job_works(
        big_day, tmp_path, caplog, status):
    h = Harness(big_day, tmp_path, bulk="always", bulk_readahead=False)
    try:
        entries = (await h.day("us-east", "callrecording", 2024, 9, 3))[:4]
        missing = entries[1]
        big_day.plan_job(status, missing={missing.id})
        with caplog.at_level("INFO", logger="recfs.bulk"):
            assert await h.fetch(missing, entries) is False       # read it per object
        assert f"ended {status}" in caplog.text
        assert h.cached(missing) is None
        assert await h.ranged(missing) == big_day.objects[missing.id].blob.all_bytes()
        others = [e for e in entries if e is not missing and e.id in big_day.jobs[next(iter(big_day.jobs))].ids]
        assert others
        for e in others:
            assert (h.cached(e) is not None) == (status == "PARTIAL_DONE")
        assert await h.fetch(missing, entries)          # the next job is DONE
        assert h.cached(missing) == big_day.objects[missing.id].blob.all_bytes()
        assert big_day.jobs_started == 2
    finally:
        await h.close()


async def test_an_unreadable_zip_leaves_its_files_to_per_object_reads(big_day, tmp_path):
    h = Harness(big_day, tmp_path, bulk="always", bulk_readahead=False)
    try:
        entries = (await h.day("us-east", "callrecording", 2024, 9, 3))[:3]
        big_day.plan_job("DONE", truncate=True)
        assert await h.fetch(entries[0], entries) is False       # read per object instead
        assert all(h.cached(e) is None for e in entries)
        assert await h.fetch(entries[0], entries)                # the next job delivers it
    finally:
        await h.close()


async def test_a_slow_job_lets_the_reader_fall_back(big_day, tmp_path):
    h = Harness(big_day, tmp_path, bulk="always", bulk_max_wait=0.3, bulk_readahead=False)
    try:
        entries = (await h.day("us-east", "callrecording", 2024, 9, 3))[:3]
        big_day.plan_job("DONE", polls=10_000)
        assert await h.fetch(entries[0], entries) is False
        assert big_day.jobs_started == 1
    finally:
        await h.close()
    # the job nobody waits for any more was cancelled on the service
    assert big_day.count("bulk_cancel") == 1


async def test_token_expiry_is_survived(big_day, tmp_path):
    h = Harness(big_day, tmp_path, bulk="always")
    try:
        entries = await h.day("us-east", "callrecording", 2024, 9, 3)
        big_day.expire_tokens()
        assert await h.fetch(entries[0], entries)
        big_day.expire_tokens()
        assert len(await h.day("us-east", "callrecording", 2024, 9, 3)) == 200
        assert big_day.count("token") == 3
    finally:
        await h.close()


async def test_a_failed_file_keeps_failing_until_it_is_opened_again(big_day, tmp_path, nursery):
    """The kernel retries a failed read page by page; through the reader, those
    retries must not quietly succeed by ranged reads where the bulk job failed."""
    from recfs.content.reader import Folder, Reader, ReadError
    h = Harness(big_day, tmp_path, bulk="always", bulk_readahead=False)
    reader = Reader(h.cache, nursery, h.http)
    try:
        entries = (await h.day("us-east", "callrecording", 2024, 9, 3))[:3]
        folder = Folder("day", entries, 0)
        big_day.corrupt_ids = {entries[0].id}
        handle = reader.open(h.src, entries[0], folder)
        for offset in (0, 4096, 8192):
            with pytest.raises(ReadError) as exc:
                await reader.read(handle, offset, 4096)
            assert exc.value.errno == errno.EIO and "checksum mismatch" in str(exc.value)
        reader.release(handle)
        assert big_day.jobs_started == 1 and big_day.count("content") == 0
        h.src.bulk.mode = "never"                    # the next open tries again
        handle = reader.open(h.src, entries[0], folder)
        data = await reader.read(handle, 0, entries[0].size)
        assert data == big_day.objects[entries[0].id].blob.all_bytes()
        reader.release(handle)
    finally:
        await reader.aclose()
        await h.close()


async def test_a_failed_job_is_read_per_object_through_the_reader(big_day, tmp_path, nursery):
    """A job that ends FAILED costs time, not an error: the reader reads the file per
    object."""
    from recfs.content.reader import Folder, Reader
    h = Harness(big_day, tmp_path, bulk="always", bulk_readahead=False)
    reader = Reader(h.cache, nursery, h.http)
    try:
        entries = (await h.day("us-east", "callrecording", 2024, 9, 3))[:3]
        big_day.plan_job("FAILED")
        handle = reader.open(h.src, entries[0], Folder("day", entries, 0))
        try:
            data = await reader.read(handle, 0, entries[0].size)
        finally:
            reader.release(handle)
        assert data == big_day.objects[entries[0].id].blob.all_bytes()
        assert big_day.jobs_started == 1 and big_day.count("bulk_download") == 0
        assert big_day.count("content") >= 1
    finally:
        await reader.aclose()
        await h.close()


async def test_job_delays_in_emulator_seconds(big_day, tmp_path):
    big_day.bulk_seconds = 600
    h = Harness(big_day, tmp_path, bulk="always", bulk_readahead=False)
    try:
        entries = (await h.day("us-east", "callrecording", 2024, 9, 3))[:2]
        result = []

        async def read():
            result.append(await h.fetch(entries[0], entries))
        async with trio.open_nursery() as n:
            n.start_soon(read)
            while big_day.count("bulk_status") < 5:
                await trio.sleep(0.01)
            assert not result and big_day.count("bulk_download") == 0
            big_day.advance(600)
        assert result == [True]
        statuses = [s for j in big_day.jobs.values() for s in [big_day._job_status(j)]]
        assert statuses == ["DONE"]
    finally:
        await h.close()


# ------------------------------------------------------------------ the emulator's FIQL

@pytest.mark.parametrize("fiql,expect", [
    ("type==callrecording", {"a", "b"}),
    ("type==callrecording;direction==INBOUND", {"a"}),
    ("type==voicemail,direction==INBOUND", {"a", "c"}),
    ("(type==voicemail,direction==INBOUND);duration=gt=100", {"c"}),
    ("createdTime=ge=1725321600000;createdTime=lt=1725408000000", {"a", "c"}),
    ("duration=le=100", {"a", "b"}),
    ("type!=callrecording", {"c"}),
    ("(objectState==AVAILABLE,objectState==REVOKED)", {"a", "b", "c", "r"}),
])
def test_emulator_fiql(fiql, expect):
    from recfs.emulators.eightbyeight import evaluate, parse_fiql, selectors
    emu = EightByEight()
    day = dt.datetime(2024, 9, 3, 12, tzinfo=UTC)
    objs = {
        "a": emu.add_object("us-east", "callrecording", "a", b"a", day, tags={"direction": "INBOUND", "duration": "90"}),
        "b": emu.add_object("us-east", "callrecording", "b", b"b", day + dt.timedelta(days=1),
                            tags={"direction": "OUTBOUND", "duration": "100"}),
        "c": emu.add_object("us-east", "voicemail", "c", b"c", day, tags={"duration": "1271000"}),
        "r": emu.add_object("us-east", "voicemail", "r", b"r", day, state="REVOKED"),
    }
    tree = parse_fiql(fiql)
    named = selectors(tree)
    got = {k for k, o in objs.items()
           if ("objectState" in named or o.objectState == "AVAILABLE") and evaluate(tree, o)}
    assert got == expect


@pytest.mark.parametrize("bad", ["type=in=(a,b)", "type==", "(type==a", "type==a;", "createdTime=gt=yesterday"])
async def test_emulator_rejects_what_css_does_not_document(big_day, tmp_path, bad):
    h = Harness(big_day, tmp_path)
    try:
        with pytest.raises(Exception) as exc:
            await h.src._page("us-east", bad, "createdTime", 0, 10)
        assert getattr(exc.value, "status", None) == 400
    finally:
        await h.close()


async def test_a_token_expiring_between_ranged_reads_is_renewed(big_day, tmp_path):
    h = Harness(big_day, tmp_path)
    try:
        e = (await h.day("us-east", "callrecording", 2024, 9, 3))[0]
        blob = big_day.objects[e.id].blob
        assert await h.ranged(e, 0, 100) == blob.read(0, 100)
        big_day.expire_tokens()
        assert await h.ranged(e, 100, 200) == blob.read(100, 100)
        assert [s for m, p, s in big_day.log if p.endswith("/content")] == [206, 401, 206]
        assert big_day.count("token") == 2
    finally:
        await h.close()
