"""The provider-independent bulk zip machinery: batching, job runs, member
extraction with verification, streaming downloads."""
from __future__ import annotations

import hashlib
import io
import os
import warnings
import zipfile
from pathlib import Path

import pytest
import trio

from recfs.content import bulk
from recfs.content.bulk import (BulkBackend, BulkBatcher, BulkFile, JobState, JobStatus, PollPolicy,
                                extract_verified, failed, run_job)
from recfs.content.cache import Cache
from recfs.emulators.base import Emulator, PatternBlob, Request, range_response
from recfs.http import Http, HttpError, RetryPolicy, StaticHeaders, TokenAuth


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


def test_size_mismatch_and_missing_member(tmp_path, staging):
    a = b"alpha" * 100
    z = make_zip(tmp_path / "j.zip", [("a", a + b"extra")])
    res = extract_verified(z, [bf("ka", a, "a", with_md5=False), bf("kc", b"c", "c")], staging)
    assert not res["ka"][1].ok and "size mismatch" in res["ka"][1].message
    assert not res["kc"][1].ok and "not in the zip" in res["kc"][1].message
    assert staged(staging) == []


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


def test_truncated_zip_fails_every_file(tmp_path, staging):
    a = os.urandom(5000)
    z = make_zip(tmp_path / "j.zip", [("a", a), ("b", a)])
    z.write_bytes(z.read_bytes()[: z.stat().st_size // 2])
    res = extract_verified(z, [bf("ka", a, "a"), bf("kb", a, "b")], staging)
    assert all(not r.ok and not r.fallback and "unreadable" in r.message for _, r in res.values())


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


# ------------------------------------------------------------------ run_job

class FakeService:
    """A bulk backend over plain data: statuses in order, then a zip built from `zip_members`."""

    def __init__(self, tmp_path: Path, statuses: list[JobStatus], zip_members, first=JobStatus(JobState.WAITING, "NOT_STARTED")):
        self.tmp = tmp_path
        self.statuses = list(statuses)
        self.first = first
        self.zip_members = zip_members
        self.polls = 0
        self.downloads = 0
        self.cancelled: list[str] = []

    def backend(self) -> BulkBackend:
        async def start(files):
            return "job-1", self.first

        async def poll(handle):
            self.polls += 1
            return self.statuses.pop(0)

        async def download(handle, dest: Path):
            self.downloads += 1
            make_zip(dest, self.zip_members)

        async def cancel(handle):
            self.cancelled.append(handle)

        return BulkBackend(start, poll, download, cancel, label="fake")


FAST = PollPolicy(first=0.001, factor=2, max=0.004, timeout=30)


@pytest.fixture
def cache(tmp_path):
    return Cache(tmp_path / "cache", max_size=1 << 30)


async def test_run_job_polls_until_done_and_stores_verified_files(tmp_path, cache):
    a, b = b"a" * 3000, b"b" * 700
    svc = FakeService(tmp_path, [JobStatus(JobState.WAITING, "IN_PROGRESS"), JobStatus(JobState.DONE, "DONE")],
                      [("a", a), ("b", b)])
    res = await run_job(svc.backend(), [bf("ka", a, "a"), bf("kb", b, "b")], cache=cache, policy=FAST)
    assert all(r.ok for r in res.values()) and svc.polls == 2
    assert cache.entry("ka", len(a)).read(0, len(a)) == a
    assert cache.entry("kb", len(b)).read(0, len(b)) == b
    assert os.listdir(cache.staging_dir) == []          # zip and temporaries cleaned up


async def test_run_job_partial_fails_only_the_missing(tmp_path, cache):
    a, b = b"a" * 3000, b"b" * 700
    svc = FakeService(tmp_path, [JobStatus(JobState.PARTIAL, "PARTIAL_DONE")], [("a", a)])
    res = await run_job(svc.backend(), [bf("ka", a, "a"), bf("kb", b, "b")], cache=cache, policy=FAST)
    assert res["ka"].ok
    assert not res["kb"].ok and not res["kb"].fallback and "PARTIAL_DONE" in res["kb"].message
    assert not cache.has_whole("kb", len(b))


async def test_run_job_failed_downloads_nothing(tmp_path, cache):
    a = b"a" * 3000
    svc = FakeService(tmp_path, [JobStatus(JobState.FAILED, "CANCELLED")], [("a", a)])
    res = await run_job(svc.backend(), [bf("ka", a, "a")], cache=cache, policy=FAST)
    assert not res["ka"].ok and "CANCELLED" in res["ka"].message and svc.downloads == 0


async def test_run_job_gives_up_after_its_timeout_and_cancels(tmp_path, cache, autojump_clock):
    a = b"a" * 3000
    svc = FakeService(tmp_path, [JobStatus(JobState.WAITING, "IN_PROGRESS")] * 1000, [("a", a)])
    res = await run_job(svc.backend(), [bf("ka", a, "a")], cache=cache,
                        policy=PollPolicy(first=1, factor=2, max=8, timeout=60))
    assert res["ka"].fallback and svc.cancelled == ["job-1"]
    # backoff 1, 2, 4, 8, 8, ... within 60 s of (mock) time
    assert 7 <= svc.polls <= 11


def test_poll_policy_backs_off_to_its_maximum():
    it = iter(PollPolicy(first=15, factor=1.5, max=30).delays())
    assert [next(it) for _ in range(5)] == [15, 22.5, 30, 30, 30]


async def test_run_job_start_failure_fails_every_file(tmp_path, cache):
    async def start(files):
        raise HttpError("start: HTTP 400", 400)

    backend = BulkBackend(start, None, None, label="fake")
    res = await run_job(backend, [bf("ka", b"a", "a"), bf("kb", b"b", "b")], cache=cache, policy=FAST)
    assert all(not r.ok and "could not start" in r.message for r in res.values())


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


# ------------------------------------------------------------------ download_to_file

class FileServer(Emulator):
    name = "files"

    def __init__(self, blob, token: str | None = None):
        super().__init__()
        self.blob = blob
        self.token = token
        self.route("GET", r"/f", "file", self._file)

    def _file(self, req: Request):
        from recfs.emulators.base import json_response
        if self.token and req.header("authorization") != f"Bearer {self.token}":
            return json_response({"message": "expired"}, 401)
        return range_response(req, self.blob)


async def test_download_resumes_after_a_reset(tmp_path):
    blob = PatternBlob(5, 3_000_000)
    with FileServer(blob) as srv:
        srv.faults.add(kind="reset", route="file", after_bytes=1_000_000)
        srv.faults.add(kind="status", route="file", status=503)
        http = Http(retry=RetryPolicy(base_delay=0.001))
        try:
            n = await bulk.download_to_file(http, srv.url + "/f", tmp_path / "z", name="zip")
        finally:
            await http.aclose()
        assert n == blob.size and (tmp_path / "z").read_bytes() == blob.all_bytes()
        assert srv.count("file") == 3


async def test_download_truncated_body_is_retried_not_accepted(tmp_path):
    blob = PatternBlob(6, 500_000)
    with FileServer(blob) as srv:
        srv.faults.add(kind="truncate", route="file", after_bytes=1000, times=2)
        http = Http(retry=RetryPolicy(base_delay=0.001))
        try:
            await bulk.download_to_file(http, srv.url + "/f", tmp_path / "z")
        finally:
            await http.aclose()
        assert (tmp_path / "z").read_bytes() == blob.all_bytes()


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
            await bulk.download_to_file(http, srv.url + "/f", tmp_path / "z", auth=Rotating())
            with pytest.raises(HttpError) as exc:
                await bulk.download_to_file(http, srv.url + "/f", tmp_path / "y",
                                            auth=StaticHeaders({"Authorization": "Bearer bad"}))
            assert exc.value.status == 401
        finally:
            await http.aclose()
        assert (tmp_path / "z").read_bytes() == blob.all_bytes()
