"""Bulk zip jobs: the one engine for every provider that has them (8x8, OCE).

Some services hand out many files at once as an asynchronous export: start a job
for a list of files, poll it, download a zip. A provider declares that capability
(`sources.base.BulkJobs`: its limits and its API calls); everything else is here,
the same for every provider:

- `BulkEngine` decides when a read uses a job: while the access policy says the
  folder is being copied, or always (`mode = "always"`), or when the file is in a
  job already (waiting is then cheaper than a second download). A job holds the
  file asked for and the uncached files after it in name order; a copy gets
  `parallel_jobs` jobs at once, and the next one each time a job somebody waited for
  ends (read-ahead by one job).
- `BulkBatcher` coalesces requests: the first request for a group opens a batch that
  stays open for a short window; every request in that window joins it, and
  read-ahead candidates fill what room is left. Each waiter gets its own file's
  outcome.
- `run_job` drives one job: start, poll with backoff, download the zip through the
  HTTP toolkit (retried, resumed), extract and verify, store in the cache, and end
  the job on the service (cancel or delete) whatever happened.
- `extract_verified` matches members to files by name (the exact name, else a
  member whose path ends in it, the shallowest first), never using a member's name
  as a path; each member is checked against the expected size (and MD5 when the
  service gives a real one) before the cache takes it.

Outcomes are `FileResult`s: stored, failed (EIO with the message: the member does not
match what the listing says), or "fall back" (read the file with ranged GETs: a job
that failed, timed out, left the file out or gave an unreadable zip costs time,
never an error).
"""
from __future__ import annotations

import hashlib
import inspect
import logging
import os
import tempfile
import unicodedata
import uuid
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Hashable, Iterable

import trio

from ..http import HttpError
from ..sources.base import BulkFile, BulkJobs, Entry, JobState, JobStatus, Source, SourceError

log = logging.getLogger("recfs.bulk")

COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileResult:
    ok: bool
    fallback: bool = False      # not served, but a ranged read may still work
    message: str = ""


STORED = FileResult(True)


def failed(message: str) -> FileResult:
    return FileResult(False, False, message)


def fallback(message: str) -> FileResult:
    return FileResult(False, True, message)


async def maybe_await(value):
    if inspect.isawaitable(value):
        return await value
    return value


# --------------------------------------------------------------------------- extraction

def _normalise(name: str) -> str:
    return unicodedata.normalize("NFC", name).replace("\\", "/")


def member_name(info: zipfile.ZipInfo) -> str:
    """The member's name as the service meant it.

    Without the UTF-8 flag (bit 11) zipfile decodes names as cp437; many zip writers
    store UTF-8 without setting the flag, so such names are re-decoded when they are
    valid UTF-8.
    """
    name = info.filename
    if not info.flag_bits & 0x800:
        try:
            name = name.encode("cp437").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    return _normalise(name)


@dataclass
class _Extracted:
    path: Path
    size: int
    md5: str
    complete: bool             # False: the member was longer than any file asked for
    declared: int              # the size its header claims


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, staging: Path, limit: int) -> _Extracted:
    """Copy one member to a temporary file of our own naming, reading at most
    `limit + 1` bytes so a lying header cannot fill the disk."""
    fd, tmp = tempfile.mkstemp(prefix="bulk-member-", dir=staging)
    md5 = hashlib.md5(usedforsecurity=False)
    size = 0
    complete = True
    try:
        with os.fdopen(fd, "wb") as out, zf.open(info) as src:
            while True:
                piece = src.read(min(COPY_CHUNK, limit + 1 - size))
                if not piece:
                    break
                out.write(piece)
                md5.update(piece)
                size += len(piece)
                if size > limit:
                    complete = False
                    break
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return _Extracted(Path(tmp), size, md5.hexdigest(), complete, info.file_size)


def extract_verified(zip_path: Path, files: list[BulkFile], staging: Path,
                     missing_message: str = "not in the zip") -> dict[str, tuple[Path | None, FileResult]]:
    """Match members of `zip_path` to `files` and extract the verified ones.

    Returns key -> (temporary file, STORED) for each verified file, and
    key -> (None, failure or fallback) for the rest. Runs blocking I/O: call it in a
    worker thread. The caller owns the returned temporary files.
    """
    results: dict[str, tuple[Path | None, FileResult]] = {}
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        for f in files:
            results[f.key] = (None, fallback(f"the zip is unreadable ({exc})"))
        return results
    with zf:
        members: dict[str, list[zipfile.ZipInfo]] = defaultdict(list)
        for info in zf.infolist():
            if info.is_dir():
                continue
            members[member_name(info)].append(info)
        wanted: dict[str, list[BulkFile]] = defaultdict(list)
        for f in files:
            wanted[_normalise(f.member_name)].append(f)
        for name, group in wanted.items():
            _extract_group(zf, _candidates(members, name, group), group, staging, results,
                           missing_message)
    return results


def _candidates(members: dict[str, list[zipfile.ZipInfo]], name: str,
                group: list[BulkFile]) -> list[zipfile.ZipInfo]:
    """The members that may be the file called `name`: those of exactly that name; else
    those whose path ends in it (zips that put the files under a folder), the
    shallowest of the ones with a size asked for."""
    if members.get(name):
        return members[name]
    nested = [(n.count("/"), info) for n, infos in members.items() if n.endswith("/" + name)
              for info in infos]
    sizes = {f.size for f in group}
    fitting = [x for x in nested if x[1].file_size in sizes] or nested
    depth = min((d for d, _ in fitting), default=0)
    return [info for d, info in fitting if d == depth]


def _extract_group(zf: zipfile.ZipFile, candidates: list[zipfile.ZipInfo], group: list[BulkFile],
                   staging: Path, results: dict, missing_message: str) -> None:
    if not candidates:
        for f in group:
            results[f.key] = (None, fallback(missing_message))
        return
    limit = max(f.size for f in group)
    extracted: list[_Extracted] = []
    try:
        for info in candidates:
            if info.flag_bits & 0x1:
                continue                    # encrypted: nothing we could verify
            if len(group) > 1 or len(candidates) > 1:
                # declared sizes rule candidates out without reading them
                if not any(info.file_size == f.size for f in group):
                    continue
            try:
                extracted.append(_copy_member(zf, info, staging, limit))
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as exc:
                log.warning("zip member %r unreadable: %s", info.filename, exc)
        used: set[int] = set()
        for f in group:
            results[f.key] = _assign(f, extracted, used)
    finally:
        for ex in extracted:
            if not any(r[0] == ex.path for r in results.values()):
                ex.path.unlink(missing_ok=True)


def _assign(f: BulkFile, extracted: list[_Extracted], used: set[int]) -> tuple[Path | None, FileResult]:
    sized = [i for i, ex in enumerate(extracted) if i not in used and ex.complete and ex.size == f.size]
    if f.md5:
        for i in sized:
            if extracted[i].md5 == f.md5:
                used.add(i)
                return extracted[i].path, STORED
        if sized:
            return None, failed(f"checksum mismatch: the zip member has MD5 {extracted[sized[0]].md5}, "
                                f"the listing says {f.md5}")
    elif sized:
        digests = {extracted[i].md5 for i in sized}
        if len(digests) == 1:
            used.add(sized[0])
            return extracted[sized[0]].path, STORED
        return None, fallback("several zip members share this name and size and there is no "
                              "checksum to tell them apart")
    sizes = sorted({ex.size if ex.complete else ex.declared for ex in extracted})
    if sizes:
        return None, failed(f"size mismatch: the zip member has {sizes[0]} bytes, expected {f.size}")
    return None, failed("the zip member could not be read")


# --------------------------------------------------------------------------- one job

def poll_delays(first: float, longest: float, factor: float = 1.5) -> Iterable[float]:
    delay = first
    while True:
        yield delay
        delay = min(longest, delay * factor)


async def run_job(bulk: BulkJobs, group: Hashable, files: list[BulkFile], *, http,
                  cache) -> dict[str, FileResult]:
    """Run one job for `files` to its end and put the verified members in `cache`.
    Never raises for a job that went wrong: every file gets a FileResult."""
    label = bulk.label
    results: dict[str, FileResult] = {}

    def all_files(result: FileResult) -> dict[str, FileResult]:
        for f in files:
            results.setdefault(f.key, result)
        return results

    try:
        handle, status = await bulk.start(group, files)
    except (HttpError, SourceError, ValueError, KeyError, TypeError, OSError) as exc:
        log.warning("%s: could not start a bulk job: %s", label, exc)
        return all_files(fallback(f"{label}: could not start a bulk job: {exc}"))
    log.info("%s: job %s started for %d files (%d bytes)", label, handle,
             len(files), sum(f.size for f in files))
    finished = False
    try:
        deadline = trio.current_time() + bulk.timeout
        delays = iter(poll_delays(bulk.poll_first, bulk.poll_max))
        while status.state is JobState.WAITING:
            if trio.current_time() >= deadline:
                return all_files(fallback(f"{label}: job {handle} did not finish within "
                                          f"{bulk.timeout:.0f}s"))
            await trio.sleep(min(next(delays), max(0.0, deadline - trio.current_time())))
            try:
                status = await bulk.poll(group, handle)
            except (HttpError, SourceError, ValueError, KeyError, TypeError) as exc:
                return all_files(fallback(f"{label}: job {handle}: status check failed: {exc}"))
        finished = True
        if status.state is JobState.FAILED:
            log.warning("%s: job %s ended %s", label, handle, status.word)
            return all_files(fallback(f"{label}: job {handle} ended {status.word}"))
        for f in files:
            if f.ref in status.left_out:
                results[f.key] = fallback(f"{label}: job {handle} left it out: {status.left_out[f.ref]}")
        wanted = [f for f in files if f.key not in results]
        await _download_and_store(bulk, group, handle, status, wanted, results, http=http, cache=cache)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(15):
            try:
                await bulk.end(group, handle, finished)
            except Exception as exc:    # best effort: the job expires on its own
                log.debug("%s: ending job %s: %s", label, handle, exc)
    bad = [k for k, r in results.items() if not r.ok]
    if bad:
        log.warning("%s: job %s (%s): %d of %d files not served by it", label, handle,
                    status.word, len(bad), len(files))
    return all_files(fallback(f"{label}: job {handle}: no result"))


async def _download_and_store(bulk: BulkJobs, group, handle, status: JobStatus,
                              files: list[BulkFile], results: dict[str, FileResult], *,
                              http, cache) -> None:
    label = bulk.label
    staging = Path(cache.staging_dir)
    zip_path = staging / f"bulk-{uuid.uuid4().hex}.zip"
    temps: dict[str, tuple[Path | None, FileResult]] = {}
    try:
        try:
            await http.download(bulk.package(group, handle), zip_path, name=f"{label} zip")
        except (HttpError, SourceError, OSError) as exc:
            for f in files:
                results[f.key] = fallback(f"{label}: job {handle}: zip download failed: {exc}")
            return
        missing = f"{label}: job {handle} ended {status.word} without this file"
        temps = await trio.to_thread.run_sync(extract_verified, zip_path, files, staging, missing)
        by_key = {f.key: f for f in files}
        for key, (path, result) in temps.items():
            if path is None:
                message = result.message if result.message.startswith(label) else \
                    f"{label}: job {handle}: {result.message}"
                results[key] = FileResult(result.ok, result.fallback, message)
                continue
            try:
                await maybe_await(cache.store_file(key, by_key[key].size, path))
                results[key] = STORED
            except Exception as exc:   # the cache refusing (quota, disk) fails this file only
                results[key] = fallback(f"{label}: the cache could not keep the file: {exc}")
    finally:
        zip_path.unlink(missing_ok=True)
        for path, _ in temps.values():
            if path is not None:
                path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- batcher

class _Slot:
    """The pending outcome of one file, shared by everyone waiting for it."""

    def __init__(self, file: BulkFile):
        self.file = file
        self.event = trio.Event()
        self.result: FileResult | None = None
        self.waiters = 0

    def resolve(self, result: FileResult) -> None:
        if self.result is None:
            self.result = result
            self.event.set()


class Ticket:
    def __init__(self, slot: _Slot):
        self._slot = slot

    @property
    def file(self) -> BulkFile:
        return self._slot.file

    async def wait(self, timeout: float | None = None) -> FileResult:
        """The file's outcome; `fallback` when `timeout` seconds pass first (the job
        goes on and still fills the cache)."""
        slot = self._slot
        slot.waiters += 1
        try:
            if timeout is None:
                await slot.event.wait()
            else:
                with trio.move_on_after(timeout):
                    await slot.event.wait()
        finally:
            slot.waiters -= 1
        if slot.result is None:
            return fallback(f"the bulk job did not deliver the file within {timeout:.0f}s")
        return slot.result


@dataclass
class _Batch:
    group: Hashable
    demand: list[_Slot] = field(default_factory=list)
    extras: dict[str, BulkFile] = field(default_factory=dict)   # in arrival order
    bytes: int = 0
    closed: bool = False


JobRunner = Callable[[Hashable, list[BulkFile]], Awaitable[dict[str, FileResult]]]
JobDone = Callable[[Hashable, list[BulkFile], dict[str, FileResult], bool], Any]


class BulkBatcher:
    """Coalesces requests for files of one group into bounded bulk jobs.

    `run(group, files)` runs one job (usually `run_job` with the provider's backend)
    and returns each file's outcome. `on_done(group, files, results, waited)` is told
    when a job ends; `waited` says whether anybody was waiting for one of its files
    (the provider uses it to read ahead); it may be a coroutine function. Jobs run as background tasks, so a reader
    that stops waiting never orphans the others, and at most `max_jobs` run at once.
    """

    def __init__(self, run: JobRunner, *, window: float = 0.5, max_files: int = 50,
                 max_bytes: int = 2 * 1000**3, max_jobs: int = 4, on_done: JobDone | None = None):
        self._run = run
        self.window = window
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.on_done = on_done
        self._limiter = trio.CapacityLimiter(max_jobs)
        self._slots: dict[str, _Slot] = {}
        self._open: dict[Hashable, _Batch] = {}
        self._scopes: set[trio.CancelScope] = set()
        self._idle = trio.Event()           # set when no background task runs
        self._closed = False
        self.jobs_started = 0

    # -- queries
    def fits(self, file: BulkFile) -> bool:
        return 0 < file.size <= self.max_bytes

    def in_flight(self, key: str) -> Ticket | None:
        slot = self._slots.get(key)
        return Ticket(slot) if slot is not None else None

    # -- requests
    def request(self, group: Hashable, file: BulkFile, extras: Iterable[BulkFile] = ()) -> Ticket:
        """Ask for `file` (someone will wait for it) and offer `extras` to fill the job."""
        slot = self._slots.get(file.key)
        if slot is not None:
            return Ticket(slot)
        slot = self._slots[file.key] = _Slot(file)
        batch = self._batch(group)
        batch.demand.append(slot)
        batch.bytes += file.size
        batch.extras.pop(file.key, None)
        for extra in extras:
            if extra.key not in self._slots and extra.key not in batch.extras:
                batch.extras[extra.key] = extra
        if len(batch.demand) >= self.max_files or batch.bytes >= self.max_bytes:
            self._flush(batch)
        return Ticket(slot)

    def prefetch(self, group: Hashable, files: Iterable[BulkFile]) -> list[Ticket]:
        """Start jobs for `files` at once (no window), skipping those already in flight.
        Returns tickets for all of them, the in-flight ones included."""
        tickets: list[Ticket] = []
        fresh: list[_Slot] = []
        for f in files:
            slot = self._slots.get(f.key)
            if slot is None:
                slot = self._slots[f.key] = _Slot(f)
                fresh.append(slot)
            tickets.append(Ticket(slot))
        for job in self._pack(fresh):
            self._spawn(self._job, group, job)
        return tickets

    def _batch(self, group: Hashable) -> _Batch:
        batch = self._open.get(group)
        if batch is None or batch.closed:
            batch = self._open[group] = _Batch(group)
            self._spawn(self._close_after_window, batch)
        return batch

    async def _close_after_window(self, batch: _Batch) -> None:
        await trio.sleep(self.window)
        self._flush(batch)

    def _flush(self, batch: _Batch) -> None:
        if batch.closed:
            return
        batch.closed = True
        if self._open.get(batch.group) is batch:
            del self._open[batch.group]
        jobs = self._pack(batch.demand)
        # prefetch candidates only fill the room left in the last job
        if jobs:
            last = jobs[-1]
            room_files = self.max_files - len(last)
            room_bytes = self.max_bytes - sum(s.file.size for s in last)
            for extra in batch.extras.values():
                if room_files <= 0:
                    break
                if extra.key in self._slots or not self.fits(extra) or extra.size > room_bytes:
                    continue
                slot = self._slots[extra.key] = _Slot(extra)
                last.append(slot)
                room_files -= 1
                room_bytes -= extra.size
        for job in jobs:
            self._spawn(self._job, batch.group, job)

    def _pack(self, slots: list[_Slot]) -> list[list[_Slot]]:
        jobs: list[list[_Slot]] = []
        current: list[_Slot] = []
        size = 0
        for slot in slots:
            if current and (len(current) >= self.max_files or size + slot.file.size > self.max_bytes):
                jobs.append(current)
                current, size = [], 0
            current.append(slot)
            size += slot.file.size
        if current:
            jobs.append(current)
        return jobs

    async def _job(self, group: Hashable, slots: list[_Slot]) -> None:
        files = [s.file for s in slots]
        results: dict[str, FileResult] = {}
        try:
            async with self._limiter:
                self.jobs_started += 1
                results = await self._run(group, files)
        except trio.Cancelled:
            results = {f.key: fallback("the bulk job was abandoned") for f in files}
            raise
        except Exception as exc:   # a bug in a provider must not kill the mount
            log.exception("bulk job for %s crashed", group)
            results = {f.key: failed(f"bulk job crashed: {exc!r}") for f in files}
        finally:
            waited = any(s.waiters > 0 for s in slots)
            for slot in slots:
                slot.resolve(results.get(slot.file.key) or failed("no result from the bulk job"))
                if self._slots.get(slot.file.key) is slot:
                    del self._slots[slot.file.key]
        if self.on_done is not None and not self._closed:
            try:
                await maybe_await(self.on_done(group, files, results, waited))
            except Exception:
                log.exception("bulk on_done callback failed")

    # -- background tasks
    def _spawn(self, fn, *args) -> None:
        if self._closed:
            for arg in args:
                if isinstance(arg, list):
                    for slot in arg:
                        slot.resolve(fallback("shutting down"))
            return
        trio.lowlevel.spawn_system_task(self._guarded, fn, *args, name=f"recfs-bulk-{fn.__name__}")

    async def _guarded(self, fn, *args) -> None:
        scope = trio.CancelScope()
        self._scopes.add(scope)
        try:
            with scope:
                await fn(*args)
        except Exception:   # system tasks must never raise: that would crash the run
            log.exception("bulk background task failed")
        finally:
            self._scopes.discard(scope)
            if not self._scopes:
                self._idle.set()

    async def aclose(self) -> None:
        """Stop the batcher: abandon open batches and running jobs (their waiters
        get a fall-back result), and wait, briefly, until each job has been ended on
        the service (cancelled or deleted)."""
        self._closed = True
        for batch in list(self._open.values()):
            batch.closed = True
            for slot in batch.demand:
                slot.resolve(fallback("shutting down"))
        self._open.clear()
        for scope in list(self._scopes):
            scope.cancel()
        for slot in list(self._slots.values()):
            slot.resolve(fallback("shutting down"))
        self._slots.clear()
        if self._scopes:
            self._idle = trio.Event()
            with trio.move_on_after(20):
                await self._idle.wait()


# --------------------------------------------------------------------------- the engine

class BulkEngine:
    """Runs one source's bulk jobs (its `bulk` capability) for the reader."""

    def __init__(self, source: Source, http, cache):
        self.source = source
        self.bulk: BulkJobs = source.bulk
        self.http = http
        self.cache = cache
        bulk = self.bulk
        self.batcher = BulkBatcher(self._run, window=bulk.batch_window, max_files=bulk.max_files,
                                   max_bytes=bulk.max_bytes, max_jobs=bulk.parallel_jobs,
                                   on_done=self._job_done)
        # the files of folders being copied, in name order, for read-ahead (bounded)
        self._folders: dict[Hashable, list[Entry]] = {}

    def _file(self, entry: Entry) -> BulkFile:
        name, md5, ref = self.bulk.member(entry)
        return BulkFile(self.source.cache_key(entry), entry.size or 0, name, md5, ref)

    def _usable(self, entry: Entry) -> bool:
        return not entry.is_dir and bool(entry.size) and entry.size <= self.bulk.max_bytes

    async def fetch(self, entry: Entry, files: list[Entry], copying: bool) -> bool:
        """Put `entry` into the cache by a job when that is the way to read it; True when
        the cache holds it now, False to read it with ranged GETs. Raises SourceError
        when a job delivered something that does not match the listing."""
        if self.bulk.mode == "never" or not self._usable(entry):
            return False
        file = self._file(entry)
        if self.cache.has_whole(file.key, file.size):
            return True
        group = self.bulk.group(entry)
        ticket = self.batcher.in_flight(file.key)
        if ticket is None:
            if self.bulk.mode == "auto" and not copying:
                return False
            self._remember(group, files)
            following = self._following(entry, files, self.bulk.max_files - 1,
                                        self.bulk.max_bytes - file.size)
            ticket = self.batcher.request(group, file, following)
            if self.bulk.readahead and following:
                self._more_jobs(group, files, following[-1], self.bulk.parallel_jobs - 1)
        result = await ticket.wait(self.bulk.max_wait)
        if result.ok:
            return True
        if result.fallback:
            log.info("%s: %s: reading it directly: %s", self.source.name, entry.name, result.message)
            return False
        raise SourceError(result.message)

    async def prefetch(self, entries: list[Entry]) -> int:
        """Run jobs for the uncached files among `entries` and wait for them; return how
        many files the jobs did not deliver (the caller reads those directly)."""
        if self.bulk.mode == "never":
            return 0
        groups: dict[Hashable, list[BulkFile]] = defaultdict(list)
        for entry in entries:
            if self._usable(entry):
                file = self._file(entry)
                if not self.cache.has_whole(file.key, file.size):
                    groups[self.bulk.group(entry)].append(file)
        tickets = [t for group, files in groups.items() for t in self.batcher.prefetch(group, files)]
        left = 0
        for ticket in tickets:
            left += not (await ticket.wait()).ok
        return left

    def _remember(self, group: Hashable, files: list[Entry]) -> None:
        self._folders.pop(group, None)
        self._folders[group] = files
        while len(self._folders) > 64:
            del self._folders[next(iter(self._folders))]

    def _following(self, after: Entry, files: list[Entry], room_files: int,
                   room_bytes: int) -> list[BulkFile]:
        """Uncached files after `after` in name order, as many as fit the room."""
        index = next((i for i, e in enumerate(files) if e.id == after.id), len(files))
        out: list[BulkFile] = []
        group = self.bulk.group(after)
        for entry in files[index + 1:]:
            if len(out) >= room_files or room_bytes <= 0:
                break
            if not self._usable(entry) or self.bulk.group(entry) != group:
                continue
            file = self._file(entry)
            if file.size > room_bytes or self.batcher.in_flight(file.key) \
                    or self.cache.has_whole(file.key, file.size):
                continue
            out.append(file)
            room_bytes -= file.size
        return out

    def _more_jobs(self, group: Hashable, files: list[Entry], after: BulkFile, jobs: int) -> None:
        """A copy of the folder is going on: start the jobs for the files after the
        first job's at once, so their waits overlap (jobs take seconds to minutes)."""
        for _ in range(jobs):
            entry = next((e for e in files if not e.is_dir and self.source.cache_key(e) == after.key), None)
            if entry is None:
                return
            batch = self._following(entry, files, self.bulk.max_files, self.bulk.max_bytes)
            if not batch:
                return
            self.batcher.prefetch(group, batch)
            after = batch[-1]

    async def _job_done(self, group: Hashable, files: list[BulkFile], results: dict[str, FileResult],
                        waited: bool) -> None:
        """Read ahead: a job somebody waited for means a copy is going on; start the
        next batch of the folder now so the copy does not stall on it."""
        if not (waited and self.bulk.readahead) or not any(r.ok for r in results.values()):
            return
        folder = self._folders.get(group) or []
        keys = {f.key for f in files}
        last = max((i for i, e in enumerate(folder)
                    if not e.is_dir and self.source.cache_key(e) in keys), default=None)
        if last is not None:
            batch = self._following(folder[last], folder, self.bulk.max_files, self.bulk.max_bytes)
            if batch:
                self.batcher.prefetch(group, batch)

    async def _run(self, group: Hashable, files: list[BulkFile]) -> dict[str, FileResult]:
        return await run_job(self.bulk, group, files, http=self.http, cache=self.cache)

    async def aclose(self) -> None:
        await self.batcher.aclose()
