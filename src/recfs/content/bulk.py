"""Bulk zip jobs, independent of any provider.

Some services (8x8 Cloud Storage, Oracle Content Management) hand out many files at
once as an asynchronous export: start a job for a list of ids, poll it, download a
zip. This module holds everything about that path that is not the API itself:

- `BulkBatcher` coalesces requests. The first request for a group (a folder) opens
  a batch that stays open for a short window; every request arriving in that window
  joins it, and the provider's prefetch candidates fill what room is left. A batch
  is bounded by a file count and a byte total; one job runs per batch. Each waiter
  gets its own file's outcome, so a failure reaches only the files it concerns.
- `run_job` drives one job with the provider's `BulkBackend` (start, poll,
  download callables): polls with backoff, streams the zip into the cache's staging
  directory, and extracts the members.
- `extract_verified` matches zip members to the files asked for by the member name
  the provider expects. Member names are compared, never used as paths: every
  extracted member goes to a temporary file named by us, so a hostile name
  (`../../x`, absolute paths) cannot write anywhere (no zip slip). Two files may
  share a member name; they are told apart by size, then MD5, and left to ranged
  reads when even that cannot tell them apart. Each member is checked against the
  expected size (and MD5 when the service gives a real one) before the cache
  adopts it with `cache.store_file`.
- `download_to_file` streams an HTTP body to disk with retries, resuming with a
  Range request when the server allows it.

Outcomes are `FileResult`s: stored in the cache, failed (the reader gets EIO with
the message), or "fall back" (the caller should serve the file by ranged reads).
"""
from __future__ import annotations

import enum
import hashlib
import inspect
import logging
import os
import tempfile
import time
import unicodedata
import uuid
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Hashable, Iterable

import httpx
import trio

from ..http import RETRY_STATUSES, TRANSPORT_ERRORS, HttpError, TokenAuth, describe_error_body, \
    parse_content_range, retry_after, safe_url

log = logging.getLogger("recfs.bulk")

COPY_CHUNK = 1 << 20


# --------------------------------------------------------------------------- values

@dataclass(frozen=True)
class BulkFile:
    """One file wanted from a bulk job."""
    key: str                    # the cache key; also what merges duplicate requests
    size: int                   # exact size the member must have
    member_name: str            # the name the service gives it inside the zip
    md5: str | None = None      # lower-case hex, only when the service's checksum is a real MD5
    ref: Hashable = None        # the provider's handle (e.g. the object id)


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


class JobState(enum.Enum):
    WAITING = "waiting"         # not finished yet: poll again
    DONE = "done"               # the zip holds every file
    PARTIAL = "partial"         # the zip exists but may lack some files
    FAILED = "failed"           # no usable zip


@dataclass(frozen=True)
class JobStatus:
    state: JobState
    word: str = ""              # the service's own status word, for messages


@dataclass
class BulkBackend:
    """What a provider supplies to run one job.

    start(files) -> (handle, first status); poll(handle) -> status;
    download(handle, dest) writes the zip to `dest`; cancel(handle) is best effort.
    """
    start: Callable[[list[BulkFile]], Awaitable[tuple[Any, JobStatus]]]
    poll: Callable[[Any], Awaitable[JobStatus]]
    download: Callable[[Any, Path], Awaitable[None]]
    cancel: Callable[[Any], Awaitable[None]] | None = None
    label: str = "bulk"


@dataclass
class PollPolicy:
    """Seconds between status polls: `first`, then times `factor`, at most `max`.
    A job still unfinished after `timeout` seconds is given up (its files fall back)."""
    first: float = 15.0
    factor: float = 1.5
    max: float = 30.0
    timeout: float = 3600.0

    def delays(self) -> Iterable[float]:
        delay = self.first
        while True:
            yield delay
            delay = min(self.max, delay * self.factor)


async def maybe_await(value):
    if inspect.isawaitable(value):
        return await value
    return value


# --------------------------------------------------------------------------- download

async def download_to_file(http, url: str, dest: Path, *, auth: TokenAuth | None = None,
                           headers: dict[str, str] | None = None, name: str = "download") -> int:
    """Stream the body of GET `url` into `dest`; return the byte count.

    Retries transport errors and 429/5xx with the Http layer's policy, re-authenticates
    once on 401, and resumes with a Range request when the server advertised
    `Accept-Ranges: bytes` (else starts over). A body shorter than its Content-Length
    is an error, never a silently short file.
    """
    policy = http.retry
    started = time.monotonic()
    attempt = 0
    reauthed = False
    written = 0
    resumable = False
    while True:
        h = {"Accept": "*/*"}
        h.update(headers or {})
        used: dict[str, str] = {}
        if auth is not None:
            used = await auth.headers()
            h.update(used)
        if written and resumable:
            h["Range"] = f"bytes={written}-"
        problem = ""
        resp_for_retry: httpx.Response | None = None
        http.requests += 1
        try:
            async with http.client.stream("GET", url, headers=h) as resp:
                if resp.status_code == 401 and auth is not None and not reauthed:
                    reauthed = True
                    await resp.aread()
                    await auth.invalidate(used)
                    continue
                if resp.status_code in RETRY_STATUSES:
                    await resp.aread()
                    problem, resp_for_retry = f"HTTP {resp.status_code}", resp
                elif resp.status_code in (200, 206):
                    if resp.status_code == 206:
                        first, _, _ = parse_content_range(resp.headers.get("content-range"))
                        if first != written:
                            written, resumable = 0, False
                            problem = "resume answered the wrong range"
                            raise _Retry()
                    else:
                        written = 0     # a fresh body: start the file over
                    resumable = resp.headers.get("accept-ranges", "").lower() == "bytes" or \
                        resp.status_code == 206
                    expected = None
                    if "content-encoding" not in resp.headers and resp.headers.get("content-length"):
                        expected = written + int(resp.headers["content-length"])
                    written = await _write_body(http, resp, dest, written)
                    if expected is None or written >= expected:
                        return written
                    problem = f"body ended at byte {written} of {expected}"
                else:
                    await resp.aread()
                    http.errors += 1
                    raise HttpError(f"{name}: HTTP {resp.status_code} from {safe_url(url)}"
                                    f"{describe_error_body(resp)}", resp.status_code, resp.text[:2000])
        except _Retry:
            pass
        except _BrokenBody as exc:
            written, problem = exc.written, "connection broken mid-body"
        except TRANSPORT_ERRORS as exc:
            problem = type(exc).__name__
        if attempt + 1 >= policy.attempts:
            http.errors += 1
            raise HttpError(f"{name}: {problem} downloading {safe_url(url)}; giving up")
        delay = policy.backoff(attempt)
        if resp_for_retry is not None:
            asked = retry_after(resp_for_retry)
            if asked is not None:
                delay = max(delay, min(asked, policy.max_delay * 3))
        if time.monotonic() - started + delay > policy.budget:
            http.errors += 1
            raise HttpError(f"{name}: {problem} downloading {safe_url(url)}; giving up")
        http.retries += 1
        log.debug("%s: %s; retrying in %.2fs", name, problem, delay)
        await trio.sleep(delay)
        attempt += 1


class _Retry(Exception):
    pass


class _BrokenBody(Exception):
    def __init__(self, written: int):
        self.written = written


async def _write_body(http, resp: httpx.Response, dest: Path, offset: int) -> int:
    """Append the body to `dest` at `offset` (truncating what was after it)."""
    mode = "r+b" if offset and dest.exists() else "wb"
    f = await trio.open_file(dest, mode)
    written = offset
    try:
        if offset:
            await f.seek(offset)
            await f.truncate()
        buf = bytearray()
        try:
            async for chunk in resp.aiter_bytes():
                http.bytes_received += len(chunk)
                buf += chunk
                if len(buf) >= COPY_CHUNK:
                    await f.write(bytes(buf))
                    written += len(buf)
                    buf.clear()
        except TRANSPORT_ERRORS:
            if buf:
                await f.write(bytes(buf))
                written += len(buf)
            raise _BrokenBody(written)
        if buf:
            await f.write(bytes(buf))
            written += len(buf)
    finally:
        await f.aclose()
    return written


# --------------------------------------------------------------------------- extraction

def _normalise(name: str) -> str:
    return unicodedata.normalize("NFC", name)


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
            results[f.key] = (None, failed(f"the zip is unreadable ({exc})"))
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
            _extract_group(zf, members.get(name, []), group, staging, results, missing_message)
    return results


def _extract_group(zf: zipfile.ZipFile, candidates: list[zipfile.ZipInfo], group: list[BulkFile],
                   staging: Path, results: dict, missing_message: str) -> None:
    if not candidates:
        for f in group:
            results[f.key] = (None, failed(missing_message))
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
        for i, ex in enumerate(extracted):
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

async def run_job(backend: BulkBackend, files: list[BulkFile], *, cache, policy: PollPolicy,
                  cancelled: trio.Event | None = None) -> dict[str, FileResult]:
    """Run one bulk job for `files` to its end and put the verified members in `cache`.

    Never raises for a job that went wrong: every file gets a FileResult.
    """
    label = backend.label
    results: dict[str, FileResult] = {}

    def all_files(result: FileResult) -> dict[str, FileResult]:
        for f in files:
            results.setdefault(f.key, result)
        return results

    try:
        handle, status = await backend.start(files)
    except (HttpError, OSError, ValueError, KeyError, TypeError) as exc:
        return all_files(failed(f"{label}: could not start a bulk job: {exc}"))
    total = sum(f.size for f in files)
    log.info("%s: job %s started for %d files (%d bytes)", label, handle, len(files), total)
    deadline = trio.current_time() + policy.timeout
    delays = iter(policy.delays())
    while status.state is JobState.WAITING:
        if trio.current_time() >= deadline:
            await _cancel(backend, handle)
            return all_files(fallback(f"{label}: job {handle} did not finish within "
                                      f"{policy.timeout:.0f}s"))
        await trio.sleep(min(next(delays), max(0.0, deadline - trio.current_time())))
        try:
            status = await backend.poll(handle)
        except (HttpError, ValueError, KeyError, TypeError) as exc:
            return all_files(failed(f"{label}: job {handle}: status check failed: {exc}"))
    if status.state is JobState.FAILED:
        log.warning("%s: job %s ended %s", label, handle, status.word)
        return all_files(failed(f"{label}: job {handle} ended {status.word}"))

    staging = Path(cache.staging_dir)
    staging.mkdir(parents=True, exist_ok=True)
    zip_path = staging / f"bulk-{uuid.uuid4().hex}.zip"
    temps: dict[str, tuple[Path | None, FileResult]] = {}
    try:
        try:
            await backend.download(handle, zip_path)
        except (HttpError, OSError) as exc:
            return all_files(failed(f"{label}: job {handle}: zip download failed: {exc}"))
        missing = (f"{label}: job {handle} ended {status.word} without this file"
                   if status.state is JobState.PARTIAL else f"{label}: job {handle}: not in the zip")
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
                results[key] = failed(f"{label}: the cache could not keep the file: {exc}")
    finally:
        zip_path.unlink(missing_ok=True)
        for path, _ in temps.values():
            if path is not None:
                path.unlink(missing_ok=True)
    bad = [k for k, r in results.items() if not r.ok]
    if bad:
        log.warning("%s: job %s (%s): %d of %d files not served", label, handle, status.word,
                    len(bad), len(files))
    return all_files(failed(f"{label}: job {handle}: no result"))


async def _cancel(backend: BulkBackend, handle) -> None:
    if backend.cancel is None:
        return
    with trio.move_on_after(10):
        try:
            await backend.cancel(handle)
        except Exception as exc:  # best effort: the job expires on its own
            log.debug("%s: cancelling job %s failed: %s", backend.label, handle, exc)


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

    async def aclose(self) -> None:
        """Stop the batcher: abandon open batches and running jobs (their waiters
        get a fall-back result)."""
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
