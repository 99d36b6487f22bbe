"""The bulk zip machinery (content/bulk.py), the same for every provider: member
extraction with verification, one job's run (its zip downloaded over loopback HTTP),
batching, the engine over the real OCE source and emulator, and the zip download
itself (Http.download: resumed, retried, re-authenticated)."""
from __future__ import annotations

import errno
import hashlib
import io
import os
import warnings
import zipfile
from pathlib import Path

import pytest
import trio

from recfs.config import parse_config
from recfs.content import bulk
from recfs.content.bulk import (BulkBatcher, BulkEngine, BulkFile, JobState, JobStatus, extract_verified,
                                failed, poll_delays, run_job)
from recfs.content.cache import Cache
from recfs.emulators.base import BytesBlob, Emulator, PatternBlob, Request, json_response, range_response
from recfs.emulators.oce import OceEmulator, source_table
from recfs.http import AuthTarget, Http, HttpError, RetryPolicy, StaticHeaders, TokenAuth
from recfs.sources.base import BulkJobs, SourceError
from recfs.sources.oce import OceSource


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def make_zip(path: Path, members: list[tuple[str, bytes]], utf8_flag: bool = True) -> Path:
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        warnings.simplefilter("ignore")             # duplicate member names are on purpose
        for name, data in members:
            zf.writestr(zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0)), data)
    raw = buf.getvalue()
    if not utf8_flag:
        raw = _strip_utf8_flag(raw, members)
    path.write_bytes(raw)
    return path


def _strip_utf8_flag(raw: bytes, members) -> bytes:
    """Rewrite the general-purpose flags so names look like a writer that stores UTF-8
    without saying so (bit 11 cleared in local and central headers)."""
    out = bytearray(raw)
    for sig, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        pos = out.find(sig)
        while pos >= 0:
            flags = int.from_bytes(out[pos + flag_at:pos + flag_at + 2], "little") & ~0x800
            out[pos + flag_at:pos + flag_at + 2] = flags.to_bytes(2, "little")
            pos = out.find(sig, pos + 4)
    return bytes(out)


def bf(key: str, data: bytes, name: str | None = None, with_md5: bool = True) -> BulkFile:
    return BulkFile(key=key, size=len(data), member_name=name or key,
                    md5=md5(data) if with_md5 else None)


@pytest.fixture
def staging(tmp_path):
    d = tmp_path / "staging"
    d.mkdir()
    return d


def staged(staging: Path) -> list[str]:
    return sorted(os.listdir(staging))


# ------------------------------------------------------------------ extraction

def test_members_are_matched_by_name_and_verified(tmp_path, staging):
    a, b = b"alpha" * 100, b"beta" * 50
    z = make_zip(tmp_path / "j.zip", [("ipbx:acme:a +1.mp3", a), ("b.json", b)])
    res = extract_verified(z, [bf("ka", a, "ipbx:acme:a +1.mp3"), bf("kb", b, "b.json")], staging)
    assert res["ka"][1].ok and res["ka"][0].read_bytes() == a
    assert res["kb"][1].ok and res["kb"][0].read_bytes() == b
    # extracted files are ours, named by us, in the staging directory
    assert {p.parent for p, _ in res.values()} == {staging}
    assert all(p.name.startswith("bulk-member-") for p, _ in res.values())


def test_checksum_mismatch_fails_that_file_only(tmp_path, staging):
    a, b = b"alpha" * 100, b"beta" * 50
    z = make_zip(tmp_path / "j.zip", [("a", b"Xlpha" + a[5:]), ("b", b)])
    res = extract_verified(z, [bf("ka", a, "a"), bf("kb", b, "b")], staging)
    assert res["ka"] == (None, res["ka"][1]) and not res["ka"][1].ok
    assert "checksum mismatch" in res["ka"][1].message
    assert res["kb"][1].ok
    assert staged(staging) == [res["kb"][0].name]        # the bad member left nothing behind


def test_a_size_mismatch_fails_and_a_missing_member_falls_back(tmp_path, staging):
    a = b"alpha" * 100
    z = make_zip(tmp_path / "j.zip", [("a", a + b"extra")])
    res = extract_verified(z, [bf("ka", a, "a", with_md5=False), bf("kc", b"c", "c")], staging,
                           missing_message="job 7 ended DONE without this file")
    assert not res["ka"][1].ok and not res["ka"][1].fallback and "size mismatch" in res["ka"][1].message
    assert res["kc"] == (None, res["kc"][1]) and res["kc"][1].fallback
    assert res["kc"][1].message == "job 7 ended DONE without this file"
    assert staged(staging) == []


def test_members_under_a_folder_are_matched_by_the_end_of_their_path(tmp_path, staging):
    a, b = b"alpha" * 100, b"beta" * 50
    z = make_zip(tmp_path / "j.zip", [("Export/2024-05-01/a.wav", a), ("Export/b.wav", b),
                                      ("Export/xa.wav", b"not a"), ("a.wav.bak", b"nor this")])
    res = extract_verified(z, [bf("ka", a, "a.wav"), bf("kb", b, "b.wav")], staging)
    assert res["ka"][1].ok and res["ka"][0].read_bytes() == a
    assert res["kb"][1].ok and res["kb"][0].read_bytes() == b


def test_the_exact_name_wins_then_the_shallowest_member_of_a_size_asked_for(tmp_path, staging):
    exact, shallow, deep = b"e" * 100, b"s" * 100, b"d" * 70
    z = make_zip(tmp_path / "j.zip", [("x/y/a.wav", deep), ("x/a.wav", shallow), ("a.wav", exact)])
    res = extract_verified(z, [bf("k", exact, "a.wav")], staging)
    assert res["k"][1].ok and res["k"][0].read_bytes() == exact
    z = make_zip(tmp_path / "k.zip", [("x/y/a.wav", b"D" * 100), ("x/a.wav", shallow)])
    res = extract_verified(z, [bf("k", shallow, "a.wav", with_md5=False)], staging)
    assert res["k"][1].ok and res["k"][0].read_bytes() == shallow
    # the shallowest member of the size asked for: a shallower one of another size is passed over
    z = make_zip(tmp_path / "l.zip", [("x/a.wav", shallow), ("x/y/a.wav", deep)])
    res = extract_verified(z, [bf("k", deep, "a.wav")], staging)
    assert res["k"][1].ok and res["k"][0].read_bytes() == deep
    # no member of that size: the shallowest decides, and the size does not match
    res = extract_verified(z, [bf("k", b"q" * 5, "a.wav", with_md5=False)], staging)
    assert not res["k"][1].ok and not res["k"][1].fallback and "size mismatch" in res["k"][1].message


def test_duplicate_names_are_told_apart_by_size_then_md5(tmp_path, staging):
    small, big = b"s" * 10, b"b" * 20
    same1, same2 = b"1" * 30, b"2" * 30
    z = make_zip(tmp_path / "j.zip", [("greeting.mp3", big), ("greeting.mp3", small),
                                      ("dup.mp3", same2), ("dup.mp3", same1)])
    files = [bf("small", small, "greeting.mp3", with_md5=False), bf("big", big, "greeting.mp3"),
             bf("one", same1, "dup.mp3"), bf("two", same2, "dup.mp3")]
    res = extract_verified(z, files, staging)
    assert {k: p.read_bytes() for k, (p, r) in res.items() if r.ok} == {
        "small": small, "big": big, "one": same1, "two": same2}


def test_duplicate_names_without_a_checksum_fall_back(tmp_path, staging):
    same1, same2 = b"1" * 30, b"2" * 30
    z = make_zip(tmp_path / "j.zip", [("dup.mp3", same2), ("dup.mp3", same1)])
    res = extract_verified(z, [bf("one", same1, "dup.mp3", with_md5=False),
                               bf("two", same2, "dup.mp3", with_md5=False)], staging)
    assert all(not r.ok and r.fallback for _, r in res.values())
    assert staged(staging) == []


def test_identical_duplicates_without_a_checksum_are_fine(tmp_path, staging):
    same = b"same" * 10
    z = make_zip(tmp_path / "j.zip", [("dup", same), ("dup", same)])
    res = extract_verified(z, [bf("one", same, "dup", False), bf("two", same, "dup", False)], staging)
    assert all(r.ok for _, r in res.values())
    assert res["one"][0] != res["two"][0]


@pytest.mark.parametrize("evil", ["../../escaped.mp3", "/tmp/recfs-escaped.mp3", "a/../../b.mp3",
                                  "..\\..\\win.mp3"])
def test_hostile_member_names_never_become_paths(tmp_path, staging, evil):
    data = b"payload" * 10
    z = make_zip(tmp_path / "j.zip", [(evil, data)])
    res = extract_verified(z, [bf("k", data, evil)], staging)
    assert res["k"][1].ok and res["k"][0].parent == staging
    assert not (tmp_path / "escaped.mp3").exists() and not Path("/tmp/recfs-escaped.mp3").exists()
    assert not (tmp_path.parent / "escaped.mp3").exists()
    assert staged(staging) == [res["k"][0].name]


def test_an_unreadable_zip_leaves_every_file_to_ranged_reads(tmp_path, staging):
    a = os.urandom(5000)
    z = make_zip(tmp_path / "j.zip", [("a", a), ("b", a)])
    z.write_bytes(z.read_bytes()[: z.stat().st_size // 2])
    res = extract_verified(z, [bf("ka", a, "a"), bf("kb", a, "b")], staging)
    assert all(not r.ok and r.fallback and "unreadable" in r.message for _, r in res.values())


def test_utf8_names_without_the_utf8_flag(tmp_path, staging):
    data = b"x" * 50
    name = "réunion équipe.mp3"
    z = make_zip(tmp_path / "j.zip", [(name, data)], utf8_flag=False)
    with zipfile.ZipFile(z) as zf:
        assert zf.infolist()[0].filename != name          # zipfile read it as cp437
    res = extract_verified(z, [bf("k", data, name)], staging)
    assert res["k"][1].ok


def test_member_bigger_than_declared_is_cut_off(tmp_path, staging):
    z = make_zip(tmp_path / "j.zip", [("a", b"a" * 10_000)])
    res = extract_verified(z, [bf("k", b"a" * 100, "a", with_md5=False)], staging)
    assert not res["k"][1].ok and "10000" in res["k"][1].message
    assert staged(staging) == []


# ------------------------------------------------------------------ one job's run

class FileServer(Emulator):
    """Serves one blob at /f (ranges honoured), behind a bearer token if given."""
    name = "files"

    def __init__(self, blob, token: str | None = None):
        super().__init__()
        self.blob = blob
        self.token = token
        self.route("GET", r"/f", "file", self._file)

    def _file(self, req: Request):
        if self.token and req.header("authorization") != f"Bearer {self.token}":
            return json_response({"message": "expired"}, 401)
        return range_response(req, self.blob)


def zip_bytes(tmp_path: Path, members) -> BytesBlob:
    return BytesBlob(make_zip(tmp_path / "served.zip", members).read_bytes())


class FakeService:
    """The hooks of a bulk job over plain data: statuses in order; the zip is served by
    a loopback FileServer (the engine downloads it over HTTP as from a service)."""

    def __init__(self, server: FileServer, statuses: list[JobStatus],
                 first: JobStatus = JobStatus(JobState.WAITING, "NOT_STARTED")):
        self.server = server
        self.statuses = list(statuses)
        self.first = first
        self.started: list[list[str]] = []
        self.polls = 0
        self.ended: list[tuple[str, bool]] = []

    def jobs(self, **limits) -> BulkJobs:
        async def start(group, files):
            self.started.append([f.key for f in files])
            return "job-1", self.first

        async def poll(group, handle):
            self.polls += 1
            return self.statuses.pop(0)

        def package(group, handle):
            async def target(renew: bool):
                return self.server.url + "/f", {}
            return target

        async def end(group, handle, finished):
            self.ended.append((handle, finished))

        limits = {"poll_first": 0.001, "poll_max": 0.004, "timeout": 30, **limits}
        return BulkJobs(label="fake", group=lambda e: "day", member=lambda e: (e.name, None, e.id),
                        start=start, poll=poll, package=package, end=end, **limits)


@pytest.fixture
def cache(tmp_path):
    c = Cache(tmp_path / "cache", max_size=1 << 30)
    yield c
    c.close()


@pytest.fixture
async def http():
    http = Http(retry=RetryPolicy(attempts=3, base_delay=0.001))
    yield http
    await http.aclose()


A, B = b"a" * 3000, b"b" * 700


def serve(tmp_path, members):
    return FileServer(zip_bytes(tmp_path, members))


async def test_run_job_polls_until_done_and_stores_verified_files(tmp_path, cache, http):
    with serve(tmp_path, [("a", A), ("b", B)]) as srv:
        svc = FakeService(srv, [JobStatus(JobState.WAITING, "IN_PROGRESS"), JobStatus(JobState.DONE, "DONE")])
        res = await run_job(svc.jobs(), "day", [bf("ka", A, "a"), bf("kb", B, "b")], http=http, cache=cache)
        assert all(r.ok for r in res.values()) and svc.polls == 2 and srv.count("file") == 1
    assert cache.entry("ka", len(A)).read(0, len(A)) == A
    assert cache.entry("kb", len(B)).read(0, len(B)) == B
    assert svc.started == [["ka", "kb"]] and svc.ended == [("job-1", True)]
    assert os.listdir(cache.staging_dir) == []          # zip and temporaries cleaned up


async def test_run_job_a_file_missing_from_the_zip_falls_back(tmp_path, cache, http):
    with serve(tmp_path, [("a", A)]) as srv:
        svc = FakeService(srv, [JobStatus(JobState.PARTIAL, "PARTIAL_DONE")])
        res = await run_job(svc.jobs(), "day", [bf("ka", A, "a"), bf("kb", B, "b")], http=http, cache=cache)
    assert res["ka"].ok
    assert not res["kb"].ok and res["kb"].fallback and "PARTIAL_DONE" in res["kb"].message
    assert not cache.has_whole("kb", len(B))


async def test_run_job_files_the_service_left_out_fall_back_with_its_reason(tmp_path, cache, http):
    files = [BulkFile("ka", len(A), "a", md5(A), ref="id-a"), BulkFile("kb", len(B), "b", md5(B), ref="id-b")]
    with serve(tmp_path, [("a", A)]) as srv:
        svc = FakeService(srv, [JobStatus(JobState.DONE, "SUCCEEDED", {"id-b": "Item not available"})])
        res = await run_job(svc.jobs(), "day", files, http=http, cache=cache)
    assert res["ka"].ok
    assert res["kb"].fallback and "left it out: Item not available" in res["kb"].message


async def test_run_job_a_member_that_does_not_match_fails_its_file(tmp_path, cache, http):
    with serve(tmp_path, [("a", b"X" + A[1:]), ("b", B)]) as srv:
        svc = FakeService(srv, [JobStatus(JobState.DONE, "DONE")])
        res = await run_job(svc.jobs(), "day", [bf("ka", A, "a"), bf("kb", B, "b")], http=http, cache=cache)
    assert not res["ka"].ok and not res["ka"].fallback and "checksum mismatch" in res["ka"].message
    assert res["ka"].message.startswith("fake: job job-1: ")
    assert res["kb"].ok and not cache.has_whole("ka", len(A))


async def test_run_job_that_failed_falls_back_without_a_download(tmp_path, cache, http):
    with serve(tmp_path, [("a", A)]) as srv:
        svc = FakeService(srv, [JobStatus(JobState.FAILED, "CANCELLED")])
        res = await run_job(svc.jobs(), "day", [bf("ka", A, "a")], http=http, cache=cache)
        assert srv.count("file") == 0
    assert res["ka"].fallback and "CANCELLED" in res["ka"].message
    assert svc.ended == [("job-1", True)]


async def test_run_job_a_zip_that_cannot_be_downloaded_falls_back(tmp_path, cache, http):
    with serve(tmp_path, [("a", A)]) as srv:
        srv.faults.add(kind="status", route="file", status=404)
        svc = FakeService(srv, [JobStatus(JobState.DONE, "DONE")])
        res = await run_job(svc.jobs(), "day", [bf("ka", A, "a")], http=http, cache=cache)
    assert res["ka"].fallback and "zip download failed" in res["ka"].message
    assert svc.ended == [("job-1", True)] and os.listdir(cache.staging_dir) == []


async def test_run_job_gives_up_after_its_timeout_and_ends_the_job(tmp_path, cache, http, autojump_clock):
    with serve(tmp_path, [("a", A)]) as srv:
        svc = FakeService(srv, [JobStatus(JobState.WAITING, "IN_PROGRESS")] * 1000)
        res = await run_job(svc.jobs(poll_first=1, poll_max=8, timeout=60), "day", [bf("ka", A, "a")],
                            http=http, cache=cache)
        assert srv.count("file") == 0
    assert res["ka"].fallback and "did not finish within 60s" in res["ka"].message
    assert svc.ended == [("job-1", False)]
    # polls after 1, 1.5, 2.25, ... 8, 8, ... seconds of (mock) time, the last cut at 60
    assert svc.polls == 11


def test_poll_delays_back_off_to_their_maximum():
    it = iter(poll_delays(15, 30))
    assert [next(it) for _ in range(5)] == [15, 22.5, 30, 30, 30]


async def test_run_job_that_could_not_start_falls_back_for_every_file(cache, http):
    async def start(group, files):
        raise HttpError("start: HTTP 400", 400)

    jobs = BulkJobs(label="fake", group=None, start=start, poll=None, package=None, end=None, member=None)
    res = await run_job(jobs, "day", [bf("ka", b"a", "a"), bf("kb", b"b", "b")], http=http, cache=cache)
    assert all(r.fallback and "could not start" in r.message for r in res.values())


async def test_run_job_a_failed_status_check_falls_back_and_ends_the_job(tmp_path, cache, http):
    with serve(tmp_path, [("a", A)]) as srv:
        svc = FakeService(srv, [])
        jobs = svc.jobs()

        async def poll(group, handle):
            raise SourceError("status: HTTP 500")
        jobs.poll = poll
        res = await run_job(jobs, "day", [bf("ka", A, "a")], http=http, cache=cache)
    assert res["ka"].fallback and "status check failed" in res["ka"].message
    assert svc.ended == [("job-1", False)]


# ------------------------------------------------------------------ batcher

class Recorder:
    def __init__(self, outcome=None, delay: float = 1.0):
        self.jobs: list[list[str]] = []
        self.outcome = outcome or {}
        self.delay = delay
        self.done: list[tuple[list[str], bool]] = []

    async def run(self, group, files):
        self.jobs.append([f.key for f in files])
        await trio.sleep(self.delay)
        return {f.key: self.outcome.get(f.key, bulk.STORED) for f in files}

    def on_done(self, group, files, results, waited):
        self.done.append(([f.key for f in files], waited))


def files(n: int, size: int = 10) -> list[BulkFile]:
    return [BulkFile(f"k{i:03d}", size, f"m{i}") for i in range(n)]


async def test_requests_close_together_share_one_job(autojump_clock):
    rec = Recorder()
    b = BulkBatcher(rec.run, window=0.5, max_files=50)
    fs = files(5)
    results = {}

    async def want(f):
        results[f.key] = await b.request("day", f).wait()

    async with trio.open_nursery() as n:
        for f in fs:
            n.start_soon(want, f)
            await trio.sleep(0.05)
    assert rec.jobs == [[f.key for f in fs]]
    assert all(r.ok for r in results.values())


async def test_extras_fill_only_the_room_left(autojump_clock):
    rec = Recorder()
    b = BulkBatcher(rec.run, window=0.1, max_files=4, max_bytes=35)
    fs = files(10)
    await b.request("day", fs[0], fs[1:]).wait()
    assert rec.jobs == [["k000", "k001", "k002"]]          # 3 x 10 bytes; a 4th would pass 35


async def test_batches_are_bounded_by_count(autojump_clock):
    rec = Recorder()
    b = BulkBatcher(rec.run, window=0.5, max_files=3)
    fs = files(7)
    async with trio.open_nursery() as n:
        for f in fs:
            n.start_soon(b.request("day", f).wait)
    assert sorted(len(j) for j in rec.jobs) == [1, 3, 3]
    assert sorted(k for j in rec.jobs for k in j) == [f.key for f in fs]


async def test_groups_never_share_a_job(autojump_clock):
    rec = Recorder()
    b = BulkBatcher(rec.run, window=0.5)
    fs = files(2)
    async with trio.open_nursery() as n:
        n.start_soon(b.request("day1", fs[0]).wait)
        n.start_soon(b.request("day2", fs[1]).wait)
    assert sorted(rec.jobs) == [["k000"], ["k001"]]


async def test_a_file_in_flight_is_not_asked_for_twice(autojump_clock):
    rec = Recorder()
    b = BulkBatcher(rec.run, window=0.1)
    fs = files(3)
    t1 = b.request("day", fs[0], fs[1:])
    await trio.sleep(0.2)                                    # the job is running
    assert b.in_flight("k002") is not None
    t2 = b.request("day", fs[2])
    assert (await t1.wait()).ok and (await t2.wait()).ok
    assert rec.jobs == [["k000", "k001", "k002"]]


async def test_failures_reach_only_their_files(autojump_clock):
    rec = Recorder(outcome={"k001": failed("gone")})
    b = BulkBatcher(rec.run, window=0.1)
    fs = files(3)
    tickets = [b.request("day", f) for f in fs]
    results = [await t.wait() for t in tickets]
    assert [r.ok for r in results] == [True, False, True] and results[1].message == "gone"
    # nothing is remembered: asking again runs a new job
    assert (await b.request("day", fs[1]).wait()).ok is False
    assert len(rec.jobs) == 2


async def test_a_waiter_times_out_but_the_job_goes_on(autojump_clock):
    rec = Recorder(delay=100)
    b = BulkBatcher(rec.run, window=0.1, on_done=rec.on_done)
    t = b.request("day", files(1)[0])
    r = await t.wait(timeout=5)
    assert r.fallback and not r.ok
    await trio.sleep(200)
    assert rec.done == [(["k000"], False)]                   # finished, nobody waiting any more


async def test_on_done_says_whether_somebody_waited(autojump_clock):
    rec = Recorder()
    b = BulkBatcher(rec.run, window=0.1, on_done=rec.on_done)
    fs = files(4)
    await b.request("day", fs[0], fs[1:2]).wait()
    b.prefetch("day", fs[2:])
    await trio.sleep(10)
    assert rec.done == [(["k000", "k001"], True), (["k002", "k003"], False)]


async def test_aclose_releases_waiters(autojump_clock):
    rec = Recorder(delay=1000)
    b = BulkBatcher(rec.run, window=0.1)
    t = b.request("day", files(1)[0])
    await trio.sleep(1)
    await b.aclose()
    assert (await t.wait()).fallback


# ------------------------------------------------------------------ the engine, over the OCE source

DAY = [(f"call-{k}.wav", PatternBlob(200 + k, 1000 + 997 * k)) for k in range(6)]


@pytest.fixture
def oce_emu():
    emu = OceEmulator(job_polls=2)
    with emu:
        yield emu


async def oce_engine(emu: OceEmulator, http: Http, cache: Cache):
    """(engine, source, the day's entries in name order, the emulator's file ids)."""
    day = emu.add_folder("self", "2024-05-01")
    ids = {name: emu.add_file(day, name, blob) for name, blob in DAY}
    options = parse_config({"sources": [source_table(emu, "oce", basic=True, job_poll_interval=0.01)]}
                           ).sources[0].options
    source = OceSource("oce", options, http)
    entries = sorted((await source.list_dir(day)).entries, key=lambda e: e.name)
    return BulkEngine(source, http, cache), source, entries, ids


def cached(cache: Cache, source, entry) -> bytes | None:
    key = source.cache_key(entry)
    return cache.entry(key, entry.size).read(0, entry.size) if cache.has_whole(key, entry.size) else None


async def test_a_copys_first_read_runs_one_job_for_it_and_the_files_after_it(oce_emu, http, cache):
    engine, source, entries, _ = await oce_engine(oce_emu, http, cache)
    try:
        assert await engine.fetch(entries[2], entries, copying=True)
        assert oce_emu.jobs_created == 1
        assert oce_emu.job_history[0].ids == [e.id for e in entries[2:]]
        assert [cached(cache, source, e) for e in entries] == \
            [None, None] + [blob.all_bytes() for _, blob in DAY[2:]]
        assert await engine.fetch(entries[4], entries, copying=True)    # in the cache already
        assert oce_emu.jobs_created == 1 and source.jobs_deleted == 1
        assert oce_emu.count("data") == 0                   # no ranged read
    finally:
        await engine.aclose()


async def test_outside_a_copy_the_engine_leaves_reads_to_ranged_gets(oce_emu, http, cache):
    engine, source, entries, _ = await oce_engine(oce_emu, http, cache)
    try:
        assert not await engine.fetch(entries[0], entries, copying=False)
        assert oce_emu.jobs_created == 0
        source.bulk.mode = "always"
        assert await engine.fetch(entries[0], entries, copying=False)
        assert oce_emu.jobs_created == 1
        source.bulk.mode = "never"
        assert not await engine.fetch(entries[1], entries, copying=True)
        assert await engine.prefetch(entries) == 0 and oce_emu.jobs_created == 1
    finally:
        await engine.aclose()


async def test_files_a_job_left_out_or_a_failed_job_are_read_directly(oce_emu, http, cache):
    engine, source, entries, ids = await oce_engine(oce_emu, http, cache)
    try:
        oce_emu.unavailable.add(ids["call-3.wav"])
        assert not await engine.fetch(entries[3], entries, copying=True)    # a fallback, no error
        assert cached(cache, source, entries[4]) == DAY[4][1].all_bytes()   # the others came
        oce_emu.job_fates.append("FAILED")
        assert not await engine.fetch(entries[0], entries, copying=True)
        assert cached(cache, source, entries[0]) is None
        assert oce_emu.jobs_created == 2 and source.jobs_deleted == 2
    finally:
        await engine.aclose()


async def test_a_zip_with_the_files_under_a_folder(http, cache):
    with OceEmulator(job_polls=2, zip_layout="nested") as emu:
        engine, source, entries, _ = await oce_engine(emu, http, cache)
        try:
            assert await engine.fetch(entries[0], entries, copying=True)
            assert [cached(cache, source, e) for e in entries] == [b.all_bytes() for _, b in DAY]
        finally:
            await engine.aclose()


async def test_a_member_that_does_not_match_the_listing_is_an_error(oce_emu, http, cache):
    engine, source, entries, ids = await oce_engine(oce_emu, http, cache)
    try:
        oce_emu.new_version(ids["call-1.wav"], b"changed since it was listed")
        with pytest.raises(SourceError) as err:
            await engine.fetch(entries[1], entries, copying=True)
        assert "size mismatch" in str(err.value) and err.value.errno == errno.EIO
        assert cached(cache, source, entries[1]) is None
        assert cached(cache, source, entries[2]) == DAY[2][1].all_bytes()
    finally:
        await engine.aclose()


async def test_prefetch_says_how_many_files_the_jobs_did_not_deliver(oce_emu, http, cache):
    engine, source, entries, ids = await oce_engine(oce_emu, http, cache)
    try:
        oce_emu.unavailable.update({ids["call-0.wav"], ids["call-5.wav"]})
        assert await engine.prefetch(entries) == 2
        assert [cached(cache, source, e) is not None for e in entries] == [False] + [True] * 4 + [False]
        assert await engine.prefetch(entries[1:5]) == 0 and oce_emu.jobs_created == 1
    finally:
        await engine.aclose()


# ------------------------------------------------------------------ Http.download (the zips)

async def test_download_resumes_after_a_reset(tmp_path):
    blob = PatternBlob(5, 3_000_000)
    with FileServer(blob) as srv:
        srv.faults.add(kind="reset", route="file", after_bytes=1_000_000)
        srv.faults.add(kind="status", route="file", status=503)
        http = Http(retry=RetryPolicy(base_delay=0.001))
        try:
            n = await http.download(AuthTarget(StaticHeaders({}), srv.url + "/f"), tmp_path / "z", name="zip")
        finally:
            await http.aclose()
        assert n == blob.size and (tmp_path / "z").read_bytes() == blob.all_bytes()
        assert srv.count("file") == 3
        # the third request took up where the bytes that arrived ended, not at 0 (a reset
        # loses what was still on its way, so that is at most where the server broke off)
        assert srv.bytes_sent < 1_000_000 + blob.size


async def test_download_truncated_body_is_retried_not_accepted(tmp_path):
    blob = PatternBlob(6, 500_000)
    with FileServer(blob) as srv:
        srv.faults.add(kind="truncate", route="file", after_bytes=1000, times=2)
        http = Http(retry=RetryPolicy(base_delay=0.001))
        try:
            assert await http.download(AuthTarget(StaticHeaders({}), srv.url + "/f"), tmp_path / "z") == blob.size
        finally:
            await http.aclose()
        assert (tmp_path / "z").read_bytes() == blob.all_bytes()
        assert srv.count("file") == 3


async def test_download_reauthenticates_once_on_401(tmp_path):
    class Rotating(TokenAuth):
        def __init__(self):
            self.tokens = ["old", "new"]

        async def headers(self):
            return {"Authorization": f"Bearer {self.tokens[0]}"}

        async def invalidate(self, used):
            self.tokens.pop(0)

    blob = PatternBlob(7, 1000)
    with FileServer(blob, token="new") as srv:
        http = Http(retry=RetryPolicy(base_delay=0.001))
        try:
            await http.download(AuthTarget(Rotating(), srv.url + "/f"), tmp_path / "z")
            assert srv.count("file") == 2
            with pytest.raises(HttpError) as exc:
                await http.download(AuthTarget(StaticHeaders({"Authorization": "Bearer bad"}), srv.url + "/f"),
                                    tmp_path / "y")
            assert exc.value.status == 401
            assert srv.count("file") == 4                   # renewed once, then reported
        finally:
            await http.aclose()
        assert (tmp_path / "z").read_bytes() == blob.all_bytes()
