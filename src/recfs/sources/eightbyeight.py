"""8x8 Cloud Storage Service (CSS, API v3) as a recfs source.

Layout
------
    {region}/{type}/{YYYY}/{MM}/{DD}/{objectName}

The date is the object's `createdTime` in UTC. Regions come from `GET /regions`
(any region answers; `us-west` is asked first) unless `regions` is configured.

Listing cost is proportional to the folder, never to the account:

- a day folder is one search with a `createdTime` window of that day, followed page
  by page (`pageKey` offset, `limit=100`) until `lastPage`;
- the type, year and month levels are found by sorted `limit=1` probes. A region's
  types: probe sorted by type, excluding the types found so far (`type!=a;type!=b`),
  one probe per type plus one. A type's years, a year's months and a month's days:
  probe sorted by `createdTime` ascending from a cursor, jump the cursor to the start
  of the next year/month/day after the object found; one probe per non-empty folder
  plus one (the first probe of a level reuses what the parent's probe found). Every
  probe count is bounded.

Every search carries `objectState==AVAILABLE` (unless the configured `filter` names
`objectState` itself) and the configured `filter`, ANDed. So folders appear only
when they held a matching object when their parent was listed. Empty folders can
still appear: a region that has no matching objects (from `/regions` or the
configured `regions` list), and a type/year/month/day folder whose objects were
deleted, revoked or archived after its parent was listed (until the parent's
listing expires).

Reading: per object or by bulk zip
----------------------------------
Per-object content (`GET /objects/{id}/content`, or a presigned URL with
`presign = true`) serves ranged reads: random access such as ffprobe, and any file
read on its own. It never waits on a zip job.

Bulk zip jobs serve folder copies. `fetch_whole` (the first uncached read of a file)
uses a job when:
- `bulk = "always"`; or
- `bulk = "auto"` (the default) and the folder is "hot": another file of the same
  folder had its first read within `hot_window` seconds, or a job for the folder ran
  recently; or
- the file is already part of a job in flight (then waiting is cheaper than a second
  download).
Otherwise it returns False and the reader fetches ranges per object. So `cp -r` of a
day folder reads its first file per object and the rest through jobs, while probing
one file never waits on a job.

A job request for a file joins a batch for its folder that stays open for
`batch_window` seconds; the following siblings in listing order (names sorted, the
order of `ls`, `cp -r` and `rsync`) that are not cached fill the rest, bounded by
`bulk_max_files` (50) ids and `bulk_max_bytes` (2 GB). When a job somebody waited
for ends, the next batch of following siblings is started at once (read-ahead by one
job), so a sequential copy rarely waits. A reader waits at most `bulk_max_wait`
seconds; after that it falls back to per-object reads while the job goes on filling
the cache. `recfs prefetch` of a day folder runs jobs for all its files.

Jobs are polled with backoff from `poll_interval` to `poll_max_interval` (8x8 suggest
15-30 s). `DONE` zips are used whole; `PARTIAL_DONE` zips for the files they hold;
`FAILED`, `CANCELLED` and any unknown status fail the job's files. Members are
matched by objectName (two objects may share one; they are told apart by size and
MD5), verified (size, and MD5 when the checksum is 32 hex digits) and only then
adopted by the cache. A file a job failed gives EIO to its reader, and (the reader
sees to it) to every read until it is opened again; nothing is cached for it, so
the next open tries again.

Deletes (only with `allow_delete = true`)
-----------------------------------------
CSS deletes by `DELETE /{region}/v3/bulk` with a JSON array of ids (there is no
per-object delete). A delete goes out at once while fewer than 4 requests of its
region are in flight; deletes that arrive while 4 are out (or in the same instant)
share the next request, of at most 100 ids. Each caller waits for the request that
carries its id and gets its outcome (a failed request fails all of its ids). 200
and 204 are success. A 404 for one id means it is already gone (success); a 404
for several does not say which id was unknown, so each is sent again on its own.
Deleted objects turn REVOKED, which the AVAILABLE filter hides; this mount also
hides them itself. See docs/providers/8x8.md.
"""
from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Hashable

import trio

from ..config import Key, Secret
from ..content.bulk import (BulkBackend, BulkBatcher, BulkFile, FileResult, JobState, JobStatus,
                            PollPolicy, maybe_await, download_to_file, run_job)
from ..http import ForbiddenError, HttpError, OAuthClientCredentials, safe_url
from .base import Entry, Kind, Listing, Source, SourceContext, SourceError

log = logging.getLogger("recfs.sources.8x8")

DEFAULT_TOKEN_URL = "https://api.8x8.com/oauth/v2/token"
DISCOVERY_REGIONS = ("us-west", "us-east", "uk", "ap", "ca")
PAGE_LIMIT = 100                 # the API's maximum page size
MAX_TYPES = 200                  # probes per region folder
MAX_YEARS = 100                  # probes per type folder
MAX_PAGES = 10000                # a day folder of a million objects is a bug somewhere
CLOSED_PERIOD_TTL = 6 * 3600.0   # listing TTL of a period that ended two days ago or more
JSON_HEADERS = {"Accept": "application/json", "Content-Type": "application/json"}
DELETE_WINDOW = 0.0              # seconds a delete waits for others to join (0: one turn)
DELETE_MAX_IDS = 100             # ids per DELETE /bulk (the API names no limit)
DELETE_MAX_IN_FLIGHT = 4         # DELETE /bulk requests out at once per region


def _positive(v):
    return None if v > 0 else "must be greater than 0"


def _not_negative(v):
    return None if v >= 0 else "must not be negative"


def _check_filter(text: str) -> str | None:
    if not text.strip():
        return "must not be empty (leave it out instead)"
    depth = 0
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if depth < 0:
            return "has a ')' without its '('"
    if depth:
        return "has a '(' without its ')'"
    if text.strip()[0] in ";," or text.strip()[-1] in ";,":
        return "must not start or end with ';' or ','"
    return None


CONFIG_KEYS = {
    "api_url": Key("url", required=True,
                   doc="CSS base URL without region, e.g. https://api.8x8.com/storage"),
    "token_url": Key("url", default=DEFAULT_TOKEN_URL, doc="OAuth token endpoint"),
    "client_id": Key("secret", required=True, doc="API key (client id)"),
    "client_secret": Key("secret", required=True, doc="API secret"),
    "regions": Key("list[str]", doc="regions to show; default: ask GET /regions"),
    "filter": Key("str", check=_check_filter,
                  doc="FIQL ANDed to every search, e.g. type==callrecording"),
    "bulk": Key("str", default="auto",
                check=lambda v: None if v in ("auto", "always", "never") else
                "expected \"auto\", \"always\" or \"never\"",
                doc="when whole-file reads use bulk zip jobs"),
    "hot_window": Key("float", default=30.0, check=_not_negative,
                      doc="seconds: first reads of two files of one folder this close make it use jobs"),
    "batch_window": Key("float", default=0.5, check=_not_negative,
                        doc="seconds a bulk batch collects requests before its job starts"),
    "bulk_max_files": Key("int", default=50, check=lambda v: None if 1 <= v <= 1000 else
                          "expected 1 to 1000", doc="object ids per bulk job"),
    "bulk_max_bytes": Key("size", default=2 * 1000**3, check=_positive, doc="bytes per bulk job"),
    "bulk_max_wait": Key("float", default=90.0, check=_positive,
                         doc="seconds a read waits for a job before reading per object"),
    "bulk_timeout": Key("float", default=3600.0, check=_positive,
                        doc="seconds after which an unfinished job is given up"),
    "bulk_parallel_jobs": Key("int", default=4, check=lambda v: None if v >= 1 else "must be 1 or more",
                              doc="jobs started at once when a folder is being copied"),
    "bulk_readahead": Key("bool", default=True,
                          doc="start the next job of a folder when one somebody waited for ends"),
    "poll_interval": Key("float", default=15.0, check=_positive, doc="first job status poll delay"),
    "poll_max_interval": Key("float", default=30.0, check=_positive, doc="longest poll delay"),
    "presign": Key("bool", default=False,
                   doc="read content through presigned URLs (?presignUrl=true)"),
}


def check_options(opts: dict) -> str | None:
    if opts["poll_max_interval"] < opts["poll_interval"]:
        return "poll_max_interval: must not be less than poll_interval"
    return None


def create(name: str, options: dict[str, Any], ctx: SourceContext) -> "EightByEightSource":
    return EightByEightSource(name, options, ctx)


# --------------------------------------------------------------------------- refs

@dataclass(frozen=True)
class DirRef:
    level: str                  # root, region, type, year, month, day
    region: str = ""
    type: str = ""
    year: int = 0
    month: int = 0
    day: int = 0


@dataclass(frozen=True)
class FileRef:
    region: str
    id: str
    object_name: str
    md5: str | None
    folder: DirRef


# --------------------------------------------------------------------------- helpers

def _reveal(value) -> str:
    return value.reveal() if isinstance(value, Secret) else str(value)


def _one(body):
    """The documented single object, also when it comes as a one-element array."""
    if isinstance(body, list):
        if len(body) == 1:
            return body[0]
        raise ValueError(f"expected one object, got an array of {len(body)}")
    return body


def _ms(t: dt.datetime) -> int:
    return int(t.timestamp()) * 1000


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc)


def parse_time(value) -> float | None:
    """createdTime as epoch seconds: `YYYY-MM-DDTHH:MM:SS` (UTC, no zone) as
    documented, tolerating a zone, fractions, or epoch milliseconds."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value / 1000.0 if value > 1e11 else float(value)
    text = str(value).strip()
    if text.isdigit():
        n = int(text)
        return n / 1000.0 if n > 1e11 else float(n)
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.timestamp()


def _int(value) -> int | None:
    try:
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return None


_MD5_RE = re.compile(r"^[0-9a-fA-F]{32}$")

FIELD_XATTRS = ("id", "type", "mimeType", "objectName", "objectState", "checksum", "checksumType",
                "createdTime", "updatedTime", "bucketId", "customerId", "userId")


def _period_bounds(ref: DirRef) -> tuple[dt.datetime, dt.datetime] | None:
    if ref.level == "year":
        return dt.datetime(ref.year, 1, 1, tzinfo=dt.timezone.utc), \
            dt.datetime(ref.year + 1, 1, 1, tzinfo=dt.timezone.utc)
    if ref.level == "month":
        return dt.datetime(ref.year, ref.month, 1, tzinfo=dt.timezone.utc), _next_month(ref.year, ref.month)
    if ref.level == "day":
        start = dt.datetime(ref.year, ref.month, ref.day, tzinfo=dt.timezone.utc)
        return start, start + dt.timedelta(days=1)
    return None


def _next_month(year: int, month: int) -> dt.datetime:
    return dt.datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=dt.timezone.utc)


def _step_year(t: dt.datetime) -> tuple[int, dt.datetime]:
    return t.year, dt.datetime(t.year + 1, 1, 1, tzinfo=dt.timezone.utc)


def _step_month(t: dt.datetime) -> tuple[int, dt.datetime]:
    return t.month, _next_month(t.year, t.month)


def _step_day(t: dt.datetime) -> tuple[int, dt.datetime]:
    start = dt.datetime(t.year, t.month, t.day, tzinfo=dt.timezone.utc)
    return t.day, start + dt.timedelta(days=1)


def status_of(word: str) -> JobStatus:
    """A bulk status word as a job state; unknown words are failures."""
    w = (word or "").upper()
    if w in ("NOT_STARTED", "IN_PROGRESS"):
        return JobStatus(JobState.WAITING, w)
    if w == "DONE":
        return JobStatus(JobState.DONE, w)
    if w == "PARTIAL_DONE":
        return JobStatus(JobState.PARTIAL, w)
    return JobStatus(JobState.FAILED, w or "(no status)")


# --------------------------------------------------------------------------- deletes

# send(group, ids) -> {id: None on success, or the SourceError of that id}
DeleteSender = Callable[[Hashable, list[str]], Awaitable[dict[str, "SourceError | None"]]]


_NO_OUTCOME = object()


@dataclass
class _DeleteBatch:
    ids: list[str] = field(default_factory=list)
    closed: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)
    results: dict[str, "SourceError | None"] = field(default_factory=dict)
    failure: "SourceError | None" = None


class DeleteCoalescer:
    """Deletes of one group (a region) share requests of at most `max_ids` ids; every
    caller waits for the request that carries its id and gets the outcome of that id.

    A delete is sent at once when fewer than `max_in_flight` requests of its group
    are out (after `window` seconds, default: only a scheduler turn, so deletes that
    arrive in the same instant still travel together); otherwise it joins the batch
    that goes out when a request returns. So deletes one after another (`rm -r`: the
    kernel passes unlinks of one folder on one at a time) pay no waiting time, and
    many at once (parallel unlinks across folders) become few requests.

    The first caller of a batch sends it. It is shielded from cancellation from the
    moment its batch opens: the other callers wait on it, and a delete that may
    already have reached the service must not be left half-reported."""

    def __init__(self, send: DeleteSender, *, window: float = DELETE_WINDOW,
                 max_ids: int = DELETE_MAX_IDS, max_in_flight: int = DELETE_MAX_IN_FLIGHT):
        self._send = send
        self.window = window
        self.max_ids = max_ids
        self.max_in_flight = max_in_flight
        self._open: dict[Hashable, _DeleteBatch] = {}
        self._slots: dict[Hashable, trio.Semaphore] = {}
        self.batches_sent = 0

    async def delete(self, group: Hashable, oid: str) -> None:
        batch = self._open.get(group)
        leader = batch is None
        if batch is None:
            batch = self._open[group] = _DeleteBatch()
        if oid not in batch.ids:
            batch.ids.append(oid)
        if len(batch.ids) >= self.max_ids:
            self._close(group, batch)
        if leader:
            slots = self._slots.setdefault(group, trio.Semaphore(self.max_in_flight))
            with trio.CancelScope(shield=True):
                try:
                    async with slots:       # while all slots are taken the batch fills up
                        if self.window > 0:
                            with trio.move_on_after(self.window):
                                await batch.closed.wait()
                        else:
                            await trio.sleep(0)
                        self._close(group, batch)
                        self.batches_sent += 1
                        batch.results = await self._send(group, list(batch.ids))
                except SourceError as exc:
                    batch.failure = exc
                except Exception as exc:   # every waiter must hear of it, not just the sender
                    batch.failure = SourceError(f"delete failed: {type(exc).__name__}: {exc}")
                finally:
                    self._close(group, batch)
                    batch.done.set()
        else:
            await batch.done.wait()
        problem = batch.failure or batch.results.get(oid, _NO_OUTCOME)
        if problem is _NO_OUTCOME:
            problem = SourceError(f"delete of {oid}: the request gave no outcome for it")
        if problem is not None:
            # a fresh exception per caller: one instance raised in many tasks tangles tracebacks
            raise SourceError(str(problem), problem.errno)

    def _close(self, group: Hashable, batch: _DeleteBatch) -> None:
        batch.closed.set()
        if self._open.get(group) is batch:
            del self._open[group]


# --------------------------------------------------------------------------- source

class EightByEightSource(Source):
    kind = "8x8"

    def __init__(self, name: str, options: dict[str, Any], ctx: SourceContext):
        super().__init__(name, options, ctx)
        self.http = ctx.http
        self.api_url = options["api_url"].rstrip("/")
        self.auth = OAuthClientCredentials(
            self.http, options.get("token_url") or DEFAULT_TOKEN_URL,
            _reveal(options["client_id"]), _reveal(options["client_secret"]),
            what=f"{name}: 8x8 token")
        self.regions: list[str] | None = options.get("regions")
        user_filter = (options.get("filter") or "").strip()
        self._states_named = "objectstate" in user_filter.lower()
        self._base: list[str] = [] if self._states_named else ["objectState==AVAILABLE"]
        if user_filter:
            self._base.append(_grouped(user_filter))
        self.bulk_mode = options.get("bulk") or "auto"
        self.hot_window = float(_opt(options, "hot_window"))
        self.max_wait = float(_opt(options, "bulk_max_wait"))
        self.readahead = bool(_opt(options, "bulk_readahead"))
        self.parallel_jobs = int(_opt(options, "bulk_parallel_jobs"))
        self.presign = bool(_opt(options, "presign"))
        self.poll_policy = PollPolicy(first=float(_opt(options, "poll_interval")),
                                      max=float(_opt(options, "poll_max_interval")),
                                      timeout=float(_opt(options, "bulk_timeout")))
        self._explicit_ttl = options.get("listing_ttl") is not None
        self.batcher = BulkBatcher(self._run_job, window=float(_opt(options, "batch_window")),
                                   max_files=int(_opt(options, "bulk_max_files")),
                                   max_bytes=int(_opt(options, "bulk_max_bytes")),
                                   on_done=self._job_done)
        self._first_reads: dict[DirRef, dict[str, float]] = {}
        self._hot_until: dict[DirRef, float] = {}
        self._siblings: dict[DirRef, list[Entry]] = {}
        self._leases: dict[str, tuple[str, float]] = {}
        self._firsts: dict[tuple[str, str, int], tuple[float, float]] = {}
        self._lease_locks: dict[str, trio.Lock] = {}
        self.deleter = DeleteCoalescer(self._send_deletes)
        # (region, id) deleted through this mount: hidden even where the configured
        # filter shows REVOKED objects, and from listings that were in flight
        self._deleted: set[tuple[str, str]] = set()

    # -- lifecycle
    async def start(self) -> None:
        try:
            await self.auth.headers()
        except HttpError as exc:
            raise SourceError(f"{self.name}: cannot get an 8x8 API token: {exc}") from None
        try:
            await self._region_names()
        except ForbiddenError:
            raise SourceError(f"{self.name}: 8x8 refused access (HTTP 403): the API key needs the "
                              f"'storage' product (Cloud Storage API) in the Admin Console") from None
        except HttpError as exc:
            raise SourceError(f"{self.name}: 8x8 Cloud Storage unreachable: {exc}") from None

    async def aclose(self) -> None:
        await self.batcher.aclose()

    def root_ref(self) -> Hashable:
        return DirRef("root")

    # -- requests
    def _url(self, region: str, path: str) -> str:
        return f"{self.api_url}/{urllib.parse.quote(region, safe='')}/v3/{path}"

    async def _get_json(self, url: str, name: str, params=None):
        resp = await self.http.request("GET", url, name=name, auth=self.auth,
                                       headers=JSON_HEADERS, params=params)
        try:
            return resp.json()
        except ValueError:
            raise SourceError(f"{self.name}: {name}: the answer from {safe_url(url)} is not JSON") from None

    def fiql(self, *clauses: str) -> str:
        return ";".join([*clauses, *self._base])

    async def _page(self, region: str, filter_: str, sort_field: str, offset: int,
                    limit: int) -> tuple[list[dict], bool]:
        params = {"filter": filter_, "sortField": sort_field, "sortDirection": "ASC",
                  "pageKey": str(offset), "limit": str(limit)}
        body = await self._get_json(self._url(region, "objects"), f"{self.name}: 8x8 search", params)
        try:
            page = _one(body)
            content = page.get("content") or []
            last = page.get("lastPage")
        except (ValueError, AttributeError) as exc:
            raise SourceError(f"{self.name}: 8x8 search: unexpected answer ({exc})") from None
        if not isinstance(content, list):
            raise SourceError(f"{self.name}: 8x8 search: 'content' is not a list")
        if isinstance(last, str):
            last = last.strip().lower() == "true"
        return [o for o in content if isinstance(o, dict)], bool(last)

    async def search(self, region: str, filter_: str, sort_field: str = "createdTime") -> list[dict]:
        """Every object matching `filter_`, page by page until `lastPage`."""
        objects: list[dict] = []
        seen: set[str] = set()
        offset = 0
        for _ in range(MAX_PAGES):
            content, last = await self._page(region, filter_, sort_field, offset, PAGE_LIMIT)
            for obj in content:
                oid = str(obj.get("id") or "")
                # offsets over a live result set can repeat an object across pages
                if oid and oid in seen:
                    continue
                seen.add(oid)
                objects.append(obj)
            if last:
                break
            if not content:
                log.warning("%s: 8x8 search returned an empty page that is not the last; stopping",
                            self.name)
                break
            offset += len(content)
        return objects

    async def _probe(self, region: str, filter_: str, sort_field: str) -> dict | None:
        content, _ = await self._page(region, filter_, sort_field, 0, 1)
        return content[0] if content else None

    # -- listing
    async def _region_names(self) -> list[str]:
        if self.regions:
            return list(self.regions)
        last_exc: HttpError | None = None
        for region in DISCOVERY_REGIONS:
            try:
                body = await self._get_json(self._url(region, "regions"), f"{self.name}: 8x8 regions")
            except HttpError as exc:
                if exc.status == 404:
                    last_exc = exc
                    continue
                raise
            names = []
            for item in body if isinstance(body, list) else [body]:
                if isinstance(item, str):
                    names.append(item)
                elif isinstance(item, dict):
                    value = item.get("region") or item.get("name") or item.get("id")
                    if value:
                        names.append(str(value))
            return names
        raise last_exc or SourceError(f"{self.name}: no region answered GET /regions")

    async def list_dir(self, ref: Hashable) -> Listing:
        if not isinstance(ref, DirRef):
            raise SourceError(f"{self.name}: not a folder", errno.ENOTDIR)
        now = time.time()
        if ref.level == "root":
            return Listing([Entry(r, Kind.DIR, DirRef("region", r), mtime=now)
                            for r in await self._region_names()])
        if ref.level == "region":
            return Listing([Entry(t, Kind.DIR, DirRef("type", ref.region, t), mtime=now)
                            for t in await self._types(ref.region)])
        if ref.level == "type":
            years = await self._walk(ref.region, ref.type, None, None, _step_year, MAX_YEARS)
            return Listing([self._dir(DirRef("year", ref.region, ref.type, y), f"{y:04d}")
                            for y in years])
        if ref.level == "year":
            lo, hi = _period_bounds(ref)
            months = await self._walk(ref.region, ref.type, lo, hi, _step_month, 13)
            return Listing([self._dir(DirRef("month", ref.region, ref.type, ref.year, m), f"{m:02d}")
                            for m in months], ttl=self._ttl(hi, now))
        if ref.level == "month":
            lo, hi = _period_bounds(ref)
            days = await self._walk(ref.region, ref.type, lo, hi, _step_day, 32)
            return Listing([self._dir(DirRef("day", ref.region, ref.type, ref.year, ref.month, d),
                                      f"{d:02d}") for d in days], ttl=self._ttl(hi, now))
        if ref.level == "day":
            return await self._list_day(ref, now)
        raise SourceError(f"{self.name}: unknown folder level {ref.level!r}")

    def _dir(self, ref: DirRef, name: str) -> Entry:
        lo, _ = _period_bounds(ref)
        return Entry(name, Kind.DIR, ref, mtime=lo.timestamp())

    def _ttl(self, period_end: dt.datetime, now: float) -> float | None:
        if self._explicit_ttl or period_end.timestamp() > now - 2 * 86400:
            return None
        return max(self.listing_ttl, CLOSED_PERIOD_TTL)

    async def _types(self, region: str) -> list[str]:
        found: list[str] = []
        for _ in range(MAX_TYPES):
            obj = await self._probe(region, self.fiql(*(f"type!={t}" for t in found)), "type")
            if obj is None:
                break
            t = obj.get("type")
            if not isinstance(t, str) or not t or t in found:
                log.warning("%s: 8x8 type probe in %s answered type %r again; stopping",
                            self.name, region, t)
                break
            found.append(t)
        else:
            log.warning("%s: more than %d types in %s; showing the first", self.name, MAX_TYPES, region)
        return sorted(found)

    async def _walk(self, region: str, type_: str, lo: dt.datetime | None, hi: dt.datetime | None,
                    step, limit: int) -> list[int]:
        """The non-empty periods between lo and hi, one sorted limit=1 probe each."""
        out: list[int] = []
        cursor = lo
        for _ in range(limit):
            ts = self._first_after(region, type_, cursor)
            if ts is None or (hi is not None and ts >= hi.timestamp()):
                clauses = [f"type=={type_}"]
                if cursor is not None:
                    clauses.append(f"createdTime=ge={_ms(cursor)}")
                if hi is not None:
                    clauses.append(f"createdTime=lt={_ms(hi)}")
                obj = await self._probe(region, self.fiql(*clauses), "createdTime")
                if obj is None:
                    break
                ts = parse_time(obj.get("createdTime"))
                if ts is None or (cursor is not None and ts < cursor.timestamp()) or \
                        (hi is not None and ts >= hi.timestamp()):
                    log.warning("%s: 8x8 answered createdTime %r outside the window asked for; "
                                "stopping the probe", self.name, obj.get("createdTime"))
                    break
                self._remember_first(region, type_, ts, cursor)
            value, cursor = step(_utc(ts))
            if value not in out:
                out.append(value)
            if hi is not None and cursor >= hi:
                break
        return out

    def _remember_first(self, region: str, type_: str, ts: float,
                        cursor: dt.datetime | None) -> None:
        """A probe from `cursor` found `ts` first, so `ts` is also the first object of
        its year, month and day, as far as they start at or after the cursor: the walk
        one level down need not probe for it again. (A probe from October 1 says
        nothing about September, so it must not stand for the first of the year.)"""
        if len(self._firsts) > 4096:
            self._firsts.clear()
        t = _utc(ts)
        now = trio.current_time()
        for start in (dt.datetime(t.year, 1, 1, tzinfo=dt.timezone.utc),
                      dt.datetime(t.year, t.month, 1, tzinfo=dt.timezone.utc),
                      dt.datetime(t.year, t.month, t.day, tzinfo=dt.timezone.utc)):
            if cursor is None or start >= cursor:
                self._firsts[(region, type_, _ms(start))] = (ts, now)

    def _first_after(self, region: str, type_: str, cursor: dt.datetime | None) -> float | None:
        if cursor is None:
            return None
        hit = self._firsts.pop((region, type_, _ms(cursor)), None)
        if hit is None or trio.current_time() - hit[1] > self.listing_ttl:
            return None
        return hit[0]

    async def _list_day(self, ref: DirRef, now: float) -> Listing:
        lo, hi = _period_bounds(ref)
        objects = await self.search(ref.region, self.fiql(
            f"type=={ref.type}", f"createdTime=ge={_ms(lo)}", f"createdTime=lt={_ms(hi)}"))
        entries = []
        for obj in objects:
            if not self._states_named and obj.get("objectState", "AVAILABLE") != "AVAILABLE":
                continue
            if (ref.region, str(obj.get("id") or "")) in self._deleted:
                continue
            entry = self._file_entry(obj, ref, lo.timestamp())
            if entry is not None:
                entries.append(entry)
        # name order is the order ls, cp -r and rsync read in, which prefetch follows
        entries.sort(key=lambda e: (e.name, e.mtime, e.id))
        self._remember_siblings(ref, entries)
        return Listing(entries, ttl=self._ttl(hi, now))

    def _remember_siblings(self, folder: DirRef, entries: list[Entry]) -> None:
        """The files of recently used folders, in listing order, for read-ahead."""
        self._siblings.pop(folder, None)
        self._siblings[folder] = entries
        while len(self._siblings) > 64:
            del self._siblings[next(iter(self._siblings))]

    def _file_entry(self, obj: dict, folder: DirRef, day_start: float) -> Entry | None:
        oid = obj.get("id")
        if not oid:
            return None
        oid = str(oid)
        name = str(obj.get("objectName") or oid)
        checksum = str(obj.get("checksum") or "")
        ctype = str(obj.get("checksumType") or "MD5").upper()
        md5 = checksum.lower() if ctype == "MD5" and _MD5_RE.match(checksum) else None
        size = _int(obj.get("storedBytes"))
        created = parse_time(obj.get("createdTime"))
        xattrs = {}
        for key in FIELD_XATTRS:
            value = obj.get(key)
            if value is not None and value != "":
                xattrs[f"8x8.{key}"] = str(value)
        for tag in obj.get("tags") or []:
            if isinstance(tag, dict) and tag.get("key"):
                key = f"8x8.{tag['key']}"
                if key in xattrs:
                    key = f"8x8.tag.{tag['key']}"
                xattrs[key] = str(tag.get("value", ""))
        return Entry(name=name, kind=Kind.FILE,
                     ref=FileRef(folder.region, oid, name, md5, folder),
                     mtime=created if created is not None else day_start,
                     size=size, size_hint=size or 0, id=oid,
                     version=checksum or str(obj.get("updatedTime") or obj.get("createdTime") or ""),
                     xattrs=xattrs)

    async def resolve_sizes(self, entries: list[Entry]) -> None:
        limiter = trio.CapacityLimiter(32)

        async def one(entry: Entry) -> None:
            async with limiter:
                ref: FileRef = entry.ref
                try:
                    body = _one(await self._get_json(self._url(ref.region, f"objects/{ref.id}"),
                                                     f"{self.name}: 8x8 object"))
                    entry.size = _int(body.get("storedBytes"))
                except (HttpError, SourceError, ValueError, AttributeError) as exc:
                    log.warning("%s: size of %s unknown: %s", self.name, ref.object_name, exc)

        async with trio.open_nursery() as nursery:
            for entry in entries:
                if entry.size is None and isinstance(entry.ref, FileRef):
                    nursery.start_soon(one, entry)

    # -- per-object content
    async def fetch_range(self, entry: Entry, start: int, end: int, sink) -> None:
        ref: FileRef = entry.ref
        used: dict[str, str] = {}

        async def url_for(renew: bool):
            nonlocal used
            if self.presign:
                return await self._presigned(ref, renew), {"Accept": "*/*"}
            if renew:                   # a 401 or 403: the token, not the URL, went stale
                await self.auth.invalidate(used)
            used = await self.auth.headers()
            return self._url(ref.region, f"objects/{ref.id}/content"), {**used, "Accept": "*/*"}

        await self.http.get_range(url_for, start, end, sink, total=entry.size,
                                  name=f"{self.name}: 8x8 content of {ref.object_name}")

    async def _presigned(self, ref: FileRef, renew: bool) -> str:
        lease = self._leases.get(ref.id)
        if lease and not renew and lease[1] > time.time() + 60:
            return lease[0]
        lock = self._lease_locks.setdefault(ref.id, trio.Lock())
        async with lock:
            lease = self._leases.get(ref.id)
            if lease and lease[1] > time.time() + 60 and not renew:
                return lease[0]
            resp = await self.http.request(
                "GET", self._url(ref.region, f"objects/{ref.id}/content"), auth=self.auth,
                name=f"{self.name}: 8x8 presign", params={"presignUrl": "true"},
                headers=JSON_HEADERS, expect=(200, 301, 302, 303, 307))
            if resp.is_redirect and resp.headers.get("location"):
                url = resp.headers["location"]
            else:
                url = parse_presigned(resp.text)
            if not url:
                raise SourceError(f"{self.name}: 8x8 gave no presigned URL for {ref.object_name}")
            self._leases[ref.id] = (url, time.time() + presigned_lifetime(url))
            return url

    # -- bulk
    def _bulk_file(self, entry: Entry) -> BulkFile:
        ref: FileRef = entry.ref
        return BulkFile(key=self.cache_key(entry), size=entry.size or 0, member_name=ref.object_name,
                        md5=ref.md5, ref=(ref.region, ref.id))

    async def _cached(self, entry: Entry) -> bool:
        cache = self.ctx.cache
        if cache is None or entry.size is None:
            return False
        return bool(await maybe_await(cache.has_whole(self.cache_key(entry), entry.size)))

    def _folder_hot(self, folder: DirRef, oid: str) -> bool:
        now = trio.current_time()
        reads = self._first_reads.setdefault(folder, {})
        for other, when in list(reads.items()):
            if now - when > self.hot_window:
                del reads[other]
        hot = any(other != oid for other in reads) or self._hot_until.get(folder, 0) > now
        reads[oid] = now
        if len(self._first_reads) > 256:
            for key in [k for k, v in self._first_reads.items() if not v]:
                del self._first_reads[key]
            for key in [k for k, until in self._hot_until.items() if until <= now]:
                del self._hot_until[key]
        if hot:
            self._hot_until[folder] = now + self.hot_window
        return hot

    async def _following(self, entry: Entry, siblings: list[Entry], *,
                         with_entry: bool = True) -> list[BulkFile]:
        """Uncached files after `entry` in listing order, as many as one job can take
        (besides `entry` itself when `with_entry`)."""
        index = next((i for i, s in enumerate(siblings) if s.id == entry.id), -1)
        out: list[BulkFile] = []
        room_files = self.batcher.max_files - (1 if with_entry else 0)
        room_bytes = self.batcher.max_bytes - ((entry.size or 0) if with_entry else 0)
        for sib in siblings[index + 1:]:
            if len(out) >= room_files or room_bytes <= 0:
                break
            if sib.is_dir or not isinstance(sib.ref, FileRef) or not sib.size:
                continue
            file = self._bulk_file(sib)
            if file.size > room_bytes or self.batcher.in_flight(file.key) or await self._cached(sib):
                continue
            out.append(file)
            room_bytes -= file.size
        return out

    async def fetch_whole(self, entry: Entry, siblings: list[Entry]) -> bool:
        if self.bulk_mode == "never" or not isinstance(entry.ref, FileRef) or not entry.size:
            return False
        file = self._bulk_file(entry)
        if not self.batcher.fits(file) or self.ctx.cache is None:
            return False
        if await self._cached(entry):
            return True
        folder = entry.ref.folder
        if siblings:
            self._remember_siblings(folder, siblings)
        ticket = self.batcher.in_flight(file.key)
        if ticket is None:
            if self.bulk_mode == "auto" and not self._folder_hot(folder, entry.id):
                return False
            self._hot_until[folder] = trio.current_time() + self.hot_window
            siblings = siblings or self._siblings.get(folder, [])
            following = await self._following(entry, siblings)
            ticket = self.batcher.request(folder, file, following)
            if self.readahead and following:
                await self._more_jobs(folder, siblings, following[-1], self.parallel_jobs - 1)
        return self._outcome(entry, await ticket.wait(self.max_wait))

    async def _more_jobs(self, folder: DirRef, siblings: list[Entry], after: BulkFile,
                         jobs: int) -> None:
        """A copy of the folder is going on: start the jobs for the files after the
        first job's at once, so their waits overlap instead of following each other
        (8x8 jobs take seconds to minutes). Later ones start as these end."""
        for _ in range(jobs):
            index = next((i for i, s in enumerate(siblings)
                          if isinstance(s.ref, FileRef) and self.cache_key(s) == after.key), None)
            if index is None:
                return
            batch = await self._following(siblings[index], siblings, with_entry=False)
            if not batch:
                return
            self.batcher.prefetch(folder, batch)
            after = batch[-1]

    def _outcome(self, entry: Entry, result: FileResult) -> bool:
        if result.ok:
            return True
        if result.fallback:
            log.info("%s: %s: reading per object: %s", self.name, entry.name, result.message)
            return False
        raise SourceError(result.message, errno.EIO)

    async def prefetch_dir(self, ref: Hashable, entries: list[Entry]) -> bool:
        if self.bulk_mode == "never" or self.ctx.cache is None:
            return False
        by_folder: dict[DirRef, list[BulkFile]] = {}
        for entry in entries:
            if entry.is_dir or not isinstance(entry.ref, FileRef) or not entry.size:
                continue
            file = self._bulk_file(entry)
            if self.batcher.fits(file) and not await self._cached(entry):
                # jobs are per region, so group by the folder the file was listed in
                by_folder.setdefault(entry.ref.folder, []).append(file)
        files = [f for group in by_folder.values() for f in group]
        if not files:
            return True
        tickets = [t for folder, group in by_folder.items() for t in self.batcher.prefetch(folder, group)]
        results = [await t.wait() for t in tickets]
        bad = [r for r in results if not r.ok]
        if bad:
            raise SourceError(f"{self.name}: {len(bad)} of {len(files)} files could not be "
                              f"prefetched; first: {bad[0].message}", errno.EIO)
        return True

    async def _job_done(self, folder: DirRef, files: list[BulkFile], results: dict[str, FileResult],
                        waited: bool) -> None:
        """Read ahead: a job somebody waited for means a copy is going on; start the
        next batch of the folder now so the copy does not stall on it."""
        if not (waited and self.readahead and self.bulk_mode != "never"):
            return
        if not any(r.ok for r in results.values()):
            return
        siblings = self._siblings.get(folder) or []
        keys = {f.key for f in files}
        last = max((i for i, s in enumerate(siblings)
                    if isinstance(s.ref, FileRef) and self.cache_key(s) in keys), default=None)
        if last is None:
            return
        batch = await self._following(siblings[last], siblings, with_entry=False)
        if batch:
            self._hot_until[folder] = trio.current_time() + self.hot_window
            self.batcher.prefetch(folder, batch)

    async def _run_job(self, folder: DirRef, files: list[BulkFile]) -> dict[str, FileResult]:
        return await run_job(self._backend(folder.region), files, cache=self.ctx.cache,
                             policy=self.poll_policy)

    def _backend(self, region: str) -> BulkBackend:
        name = self.name

        async def start(files: list[BulkFile]):
            resp = await self.http.request(
                "POST", self._url(region, "bulk/download/start"), name=f"{name}: 8x8 bulk start",
                auth=self.auth, headers=JSON_HEADERS, json=[f.ref[1] for f in files],
                idempotent=False, expect=(200, 201, 202))
            body = _one(resp.json())
            zip_name = body.get("zipName")
            if not zip_name:
                raise ValueError("the start answer has no zipName")
            return str(zip_name), status_of(str(body.get("status") or "NOT_STARTED"))

        async def poll(zip_name: str) -> JobStatus:
            body = await self._get_json(
                self._url(region, f"bulk/download/status/{urllib.parse.quote(zip_name, safe='')}"),
                f"{name}: 8x8 bulk status")
            return status_of(str(_one(body).get("status") or ""))

        async def download(zip_name: str, dest) -> None:
            await download_to_file(
                self.http, self._url(region, f"bulk/download/{urllib.parse.quote(zip_name, safe='')}"),
                dest, auth=self.auth, name=f"{name}: 8x8 bulk zip")

        async def cancel(zip_name: str) -> None:
            await self.http.request(
                "POST", self._url(region, f"bulk/download/cancel/{urllib.parse.quote(zip_name, safe='')}"),
                name=f"{name}: 8x8 bulk cancel", auth=self.auth, headers=JSON_HEADERS,
                idempotent=False, expect=None)

        return BulkBackend(start, poll, download, cancel, label="8x8 bulk")

    # -- deletes (issue 9)
    async def delete(self, entry: Entry) -> None:
        if not self.allow_delete:
            raise SourceError(f"{self.name}: deleting is off (set allow_delete = true)", errno.EROFS)
        if entry.kind is not Kind.FILE or not isinstance(entry.ref, FileRef):
            raise SourceError(f"{self.name}: only objects can be deleted", errno.EROFS)
        ref: FileRef = entry.ref
        await self.deleter.delete(ref.region, ref.id)
        log.info("%s: deleted %s (%s) in %s", self.name, ref.object_name, ref.id, ref.region)
        self._forget(ref)

    async def _bulk_delete(self, region: str, ids: list[str]) -> int:
        """One DELETE /bulk; the status (200, 204 or 404), or HttpError."""
        # sending the same ids again is harmless (already gone: 404), so retries are safe
        resp = await self.http.request(
            "DELETE", self._url(region, "bulk"), name=f"{self.name}: 8x8 bulk delete",
            auth=self.auth, headers=JSON_HEADERS, json=ids, expect=(200, 204, 404))
        return resp.status_code

    def _delete_error(self, exc: HttpError, region: str, count: int) -> SourceError:
        what = "1 object" if count == 1 else f"{count} objects"
        if isinstance(exc, ForbiddenError):
            return SourceError(f"{self.name}: 8x8 refused to delete {what} in {region} (HTTP 403): "
                               f"the API key needs edit access to objects", errno.EACCES)
        return SourceError(f"{self.name}: cannot delete {what} in {region}: {exc}", errno.EIO)

    async def _send_deletes(self, region: Hashable, ids: list[str]) -> dict[str, SourceError | None]:
        region = str(region)
        try:
            status = await self._bulk_delete(region, ids)
        except HttpError as exc:
            raise self._delete_error(exc, region, len(ids)) from None
        if status != 404:
            return {oid: None for oid in ids}
        if len(ids) == 1:
            log.info("%s: 8x8 object %s in %s was already gone (404); counted as deleted",
                     self.name, ids[0], region)
            return {ids[0]: None}
        # the answer does not say which ids were unknown, nor whether the others went:
        # ask for each on its own (a rare path: someone else deleted some first)
        log.info("%s: 8x8 bulk delete of %d objects in %s answered 404; deleting them one by one",
                 self.name, len(ids), region)
        results: dict[str, SourceError | None] = {}
        limiter = trio.CapacityLimiter(8)

        async def one(oid: str) -> None:
            async with limiter:
                try:
                    await self._bulk_delete(region, [oid])
                    results[oid] = None
                except HttpError as exc:
                    results[oid] = self._delete_error(exc, region, 1)

        async with trio.open_nursery() as nursery:
            for oid in ids:
                nursery.start_soon(one, oid)
        return results

    def _forget(self, ref: FileRef) -> None:
        self._deleted.add((ref.region, ref.id))
        folder = ref.folder
        siblings = self._siblings.get(folder)
        if siblings is not None:
            self._siblings[folder] = [e for e in siblings if e.id != ref.id]
        # a remembered probe hit may be this object: the walk must ask again
        for key in [k for k in self._firsts if k[:2] == (folder.region, folder.type)]:
            del self._firsts[key]
        self._leases.pop(ref.id, None)


def _grouped(expr: str) -> str:
    """`expr` safe to AND with other clauses: an OR outside parentheses gets wrapped."""
    depth = 0
    for ch in expr:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            return f"({expr})"
    return expr


def _opt(options: dict, key: str):
    value = options.get(key)
    return CONFIG_KEYS[key].default if value is None else value


def parse_presigned(text: str) -> str | None:
    """The URL in a presign answer: a JSON string, an object with a URL field, a
    one-element array of either, or the URL as plain text."""
    text = text.strip()
    try:
        body = json.loads(text)
    except ValueError:
        body = text
    if isinstance(body, list) and len(body) == 1:
        body = body[0]
    if isinstance(body, dict):
        for key in ("url", "presignedUrl", "presignUrl", "signedUrl", "location", "href", "uri"):
            if isinstance(body.get(key), str):
                body = body[key]
                break
    if isinstance(body, str) and re.match(r"^https?://", body.strip()):
        return body.strip()
    return None


def presigned_lifetime(url: str) -> float:
    """Seconds an S3 presigned URL stays valid (X-Amz-Expires from X-Amz-Date);
    10 minutes when it does not say."""
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    expires = _int(query.get("X-Amz-Expires"))
    if expires is None:
        return 600.0
    signed = query.get("X-Amz-Date")
    if signed:
        try:
            t = dt.datetime.strptime(signed, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
            return t.timestamp() + expires - time.time()
        except ValueError:
            pass
    return float(expires)
