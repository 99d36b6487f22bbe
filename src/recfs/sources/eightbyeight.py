"""8x8 Cloud Storage Service (CSS, API v3) as a recfs source.

Layout
------
    {region}/{type}/{YYYY}/{MM}/{DD}/{objectName}

The date is the object's `createdTime` in UTC. Regions come from `GET /regions`
(any region answers; `us-west` is asked first) unless `regions` is configured.

Listing cost (issue 20): a folder costs at most the pages a plain client needs to
read the objects it stands for at the largest page size (`limit=100`), and at most
one search per entry plus one; never the account:

- every search is a window search: one type's objects created in [start, end),
  sorted by `createdTime` ascending, `limit=100` (the types of a region: sorted by
  `type`, excluding the types found so far, `type!=a;type!=b`);
- the type, year and month levels walk their period with such searches: each page
  shows every period that has objects up to its last object, and the next search
  starts at the period after that object's period; so a walk costs one search per
  page of objects it reads, and no more than one per period it finds, plus one;
- the first pages of those searches are kept a while (`WindowPages`: at most
  `KEPT_PAGES`, as long as the listing they were fetched for stays fresh, each
  answering a folder once): a page of a wider window answers a narrower one that
  starts within it, so the levels below a walk start from its pages, and a day
  folder takes the objects a walk's page holds of it as its first ones and reads on
  from there (`pageKey` = their number) with its own search: with 1,000 calls a
  day, the page that found a day is that day's first page; with 40 a day, one page
  finds two days whole;
- a day folder otherwise is one search with the day's window, page by page until
  `lastPage`.

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
read on its own. Bulk zip jobs (the `bulk` capability; content/bulk.py decides when
and runs them) serve folder copies: `bulk = "auto"` (the default) uses them while a
folder is being copied, `"always"` for every first read, `"never"` not at all. A job
holds at most `bulk_max_files` ids and `bulk_max_bytes` bytes, in one region; it is
polled with backoff from `poll_interval` to `poll_max_interval` (8x8 suggest 15-30 s).
`DONE` zips are used whole; `PARTIAL_DONE` zips for the files they hold; `FAILED`,
`CANCELLED` and any unknown status leave the job's files to per-object reads. Members
are matched by objectName (two objects may share one; they are told apart by size and
MD5) and verified (size, and MD5 when the checksum is 32 hex digits) before the cache
takes them. A job abandoned before its end is cancelled.

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

from ..config import Secret, SourceOptions, option
from ..http import (ForbiddenError, HttpError, Leases, OAuthClientCredentials, Target, AuthTarget,
                    safe_url)
from ..search import Query, Record, day_bounds, direction_of, number_of
from .base import BulkFile, BulkJobs, Entry, Hit, JobState, JobStatus, Kind, Listing, Source, SourceError

log = logging.getLogger("recfs.sources.8x8")

DEFAULT_TOKEN_URL = "https://api.8x8.com/oauth/v2/token"
DISCOVERY_REGIONS = ("us-west", "us-east", "uk", "ap", "ca")
PAGE_LIMIT = 100                 # the API's maximum page size
MAX_TYPES = 200                  # searches per region folder
MAX_YEARS = 100                  # years per type folder
MAX_PAGES = 10000                # a day folder of a million objects is a bug somewhere
KEPT_PAGES = 64                  # window pages kept for the levels below (about 100 KB each)
CLOSED_PERIOD_TTL = 6 * 3600.0   # listing TTL of a period that ended two days ago or more
JSON_HEADERS = {"Accept": "application/json", "Content-Type": "application/json"}
DELETE_WINDOW = 0.0              # seconds a delete waits for others to join (0: one turn)
DELETE_MAX_IDS = 100             # ids per DELETE /bulk (the API names no limit)
DELETE_MAX_IN_FLIGHT = 4         # DELETE /bulk requests out at once per region
PRESIGNED_LIFETIME = 600.0       # seconds, when a presigned URL does not say
AGENT_TAGS = ("agentId", "agentName", "userName", "userEmail", "extensionNumber")  # who took the call
_FIQL_PLAIN = re.compile(r"^[^;,()=!'\"\s<>~]+$")   # a value FIQL takes unquoted


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


@dataclass(kw_only=True)
class Options(SourceOptions):
    api_url: str = option("url", required=True,
                          doc="CSS base URL without region, e.g. https://api.8x8.com/storage")
    token_url: str = option("url", DEFAULT_TOKEN_URL, doc="OAuth token endpoint")
    client_id: Any = option("secret", required=True, doc="API key (client id)")
    client_secret: Any = option("secret", required=True, doc="API secret")
    regions: list[str] | None = option("list[str]", doc="regions to show; default: ask GET /regions")
    filter: str | None = option("str", check=_check_filter,
                                doc="FIQL ANDed to every search, e.g. type==callrecording")
    bulk: str = option("str", "auto", check=lambda v: None if v in ("auto", "always", "never") else
                       "expected \"auto\", \"always\" or \"never\"",
                       doc="when whole-file reads use bulk zip jobs: auto (folder copies), always, never")
    hot_window: float | None = option("float", retired=True, doc="recfs recognises a folder copy by "
                                                   "its opens (accepted so that older configs load)")
    batch_window: float = option("float", 0.5, check=_not_negative,
                                 doc="seconds a bulk batch collects requests before its job starts")
    bulk_max_files: int = option("int", 50, check=lambda v: None if 1 <= v <= 1000 else "expected 1 to 1000",
                                 doc="object ids per bulk job")
    bulk_max_bytes: int = option("size", 2 * 1000**3, check=_positive, doc="bytes per bulk job")
    bulk_max_wait: float = option("float", 90.0, check=_positive,
                                  doc="seconds a read waits for a job before reading per object")
    bulk_timeout: float = option("float", 3600.0, check=_positive,
                                 doc="seconds after which an unfinished job is given up")
    bulk_parallel_jobs: int = option("int", 4, check=lambda v: None if v >= 1 else "must be 1 or more",
                                     doc="jobs started at once when a folder is being copied")
    bulk_readahead: bool = option("bool", True,
                                  doc="start the next job of a folder when one somebody waited for ends")
    poll_interval: float = option("float", 15.0, check=_positive, doc="first job status poll delay")
    poll_max_interval: float = option("float", 30.0, check=_positive, doc="longest poll delay")
    presign: bool = option("bool", False, doc="read content through presigned URLs (?presignUrl=true)")

    def problem(self) -> str | None:
        if self.poll_max_interval < self.poll_interval:
            return "poll_max_interval: must not be less than poll_interval"
        return None


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


# --------------------------------------------------------------------------- window pages

def _page_content(body) -> tuple[list[dict], bool]:
    """The objects of a search answer and its `lastPage`; ValueError for another shape."""
    try:
        page = _one(body)
        content = page.get("content") or []
        last = page.get("lastPage")
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"unexpected answer ({exc})") from None
    if not isinstance(content, list):
        raise ValueError("'content' is not a list")
    if isinstance(last, str):
        last = last.strip().lower() == "true"
    return [o for o in content if isinstance(o, dict)], bool(last)


@dataclass(eq=False)
class WindowPage:
    """Page one of a window search: one type's objects created in [start, end) (None:
    open), sorted by createdTime ascending, at most PAGE_LIMIT of them.

    Sorted, it holds every object of the window created before its last object's
    time (`times[-1]`) and some created at that time; `whole` (the service's
    lastPage) says it holds the whole window. So it answers a narrower window that
    starts at or after `start` as far as it reaches: which periods have objects
    there, and which objects a day starts with."""
    region: str
    type: str
    start: float | None
    end: float | None
    times: tuple[float, ...]
    body: bytes                 # the answer as sent: parsed, a page costs four times the memory
    whole: bool
    at: float                   # trio clock
    ttl: float                  # as fresh as the listing it was fetched for
    served: set = field(default_factory=set)      # folders listed since it came: not answered

    def reaches(self, lo: float | None) -> bool:
        """Whether it knows the first object created at or after `lo`, or that the
        window has none from `lo` to its end."""
        if self.start is not None and (lo is None or lo < self.start):
            return False
        if self.times and (lo is None or self.times[-1] >= lo):
            return True
        return self.whole and (self.end is None or (lo is not None and lo < self.end))

    def covers(self, hi: float | None) -> bool:
        """Whether it holds every object of its window created before `hi`."""
        if hi is not None and self.times and self.times[-1] >= hi:
            return True
        return self.whole and (self.end is None or (hi is not None and self.end >= hi))

    def inside(self, lo: float | None, hi: float | None) -> list[int]:
        """Positions of its objects created in [lo, hi)."""
        return [i for i, t in enumerate(self.times)
                if (lo is None or t >= lo) and (hi is None or t < hi)]

    def objects(self) -> list[dict]:
        return _page_content(json.loads(self.body))[0]


class WindowPages:
    """The window pages fetched lately, so that the level below a walk starts from
    them (issue 20): a page answers a folder's window when it `reaches` the window's
    start, is as fresh as the listing it was fetched for (its `ttl`) and was fetched
    after the folder was last listed (so a folder listed again, e.g. after `recfs
    refresh`, asks the service). At most `keep` pages, the oldest leave first."""

    def __init__(self, keep: int = KEPT_PAGES):
        self.keep = keep
        self._pages: list[WindowPage] = []

    def add(self, page: WindowPage) -> None:
        self._pages.append(page)
        del self._pages[:-self.keep]

    def find(self, folder: Hashable, region: str, type_: str, lo: float | None,
             hi: float | None) -> WindowPage | None:
        """The page that tells most of [lo, hi) for `folder`: one that covers it whole
        first, then the one holding most of its objects, then the newest."""
        now = trio.current_time()
        self._pages = [p for p in self._pages if now - p.at <= p.ttl]
        best, best_key = None, None
        for page in self._pages:
            if page.region != region or page.type != type_ or folder in page.served or not page.reaches(lo):
                continue
            key = (page.covers(hi), len(page.inside(lo, hi)), page.at)
            if best_key is None or key > best_key:
                best, best_key = page, key
        return best

    def listed(self, folder: DirRef) -> None:
        """`folder` was listed: no page there now answers it again."""
        for page in self._pages:
            if (page.region, page.type) == (folder.region, folder.type):
                page.served.add(folder)

    def drop(self, region: str, type_: str) -> None:
        self._pages = [p for p in self._pages if (p.region, p.type) != (region, type_)]

    def __len__(self) -> int:
        return len(self._pages)


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
    folders_are_places = True       # regions, types and dates of the objects

    def __init__(self, name: str, options: Options, http):
        super().__init__(name, options, http)
        self.api_url = options.api_url.rstrip("/")
        self.auth = OAuthClientCredentials(
            http, options.token_url or DEFAULT_TOKEN_URL,
            _reveal(options.client_id), _reveal(options.client_secret), what=f"{name}: 8x8 token")
        self.regions: list[str] | None = options.regions
        user_filter = (options.filter or "").strip()
        self._states_named = "objectstate" in user_filter.lower()
        self._base: list[str] = [] if self._states_named else ["objectState==AVAILABLE"]
        if user_filter:
            self._base.append(_grouped(user_filter))
        self.presign = options.presign
        self._explicit_ttl = options.listing_ttl is not None
        self.bulk = BulkJobs(
            label=f"{name}: 8x8 bulk", group=lambda e: e.ref.folder, member=self._member,
            start=self._job_start, poll=self._job_poll, package=self._job_package, end=self._job_end,
            mode=options.bulk, max_files=options.bulk_max_files, max_bytes=options.bulk_max_bytes,
            batch_window=options.batch_window, parallel_jobs=options.bulk_parallel_jobs,
            readahead=options.bulk_readahead, max_wait=options.bulk_max_wait,
            poll_first=options.poll_interval, poll_max=options.poll_max_interval,
            timeout=options.bulk_timeout)
        self.leases = Leases(http, self._presign_request, self._presign_answer, auth=self.auth,
                             default_lifetime=PRESIGNED_LIFETIME, name=f"{name}: 8x8 presign",
                             headers={"Accept": "*/*"})
        self.pages = WindowPages()
        self._regions_from_start: list[str] | None = None   # answers the first root listing
        self._listed_regions: list[str] | None = None       # the regions the root last showed
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
            self._regions_from_start = await self._region_names()
        except ForbiddenError:
            raise SourceError(f"{self.name}: 8x8 refused access (HTTP 403): the API key needs the "
                              f"'storage' product (Cloud Storage API) in the Admin Console") from None
        except HttpError as exc:
            raise SourceError(f"{self.name}: 8x8 Cloud Storage unreachable: {exc}") from None

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
                    limit: int) -> tuple[list[dict], bool, bytes]:
        """One page of a search: its objects, its lastPage and the answer as sent."""
        params = {"filter": filter_, "sortField": sort_field, "sortDirection": "ASC",
                  "pageKey": str(offset), "limit": str(limit)}
        name = f"{self.name}: 8x8 search"
        url = self._url(region, "objects")
        resp = await self.http.request("GET", url, name=name, auth=self.auth,
                                       headers=JSON_HEADERS, params=params)
        try:
            body = json.loads(resp.content)
        except ValueError:
            raise SourceError(f"{self.name}: {name}: the answer from {safe_url(url)} is not JSON") from None
        try:
            content, last = _page_content(body)
        except ValueError as exc:
            raise SourceError(f"{self.name}: 8x8 search: {exc}") from None
        return content, last, resp.content

    async def objects_matching(self, region: str, filter_: str, sort_field: str = "createdTime", *,
                                         offset: int = 0, after: float | None = None) -> list[dict] | None:
        """Every object matching `filter_` from `offset` on, page by page until
        `lastPage`. With `after` (the time of the last object known to come before
        `offset`), None when the first object found was created at or before it:
        the objects before `offset` are then not known to be the ones known."""
        objects: list[dict] = []
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            content, last, _ = await self._page(region, filter_, sort_field, offset, PAGE_LIMIT)
            if after is not None and content:
                first = parse_time(content[0].get("createdTime"))
                if first is None or first <= after:
                    return None
            after = None
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

    async def _window(self, region: str, type_: str, lo: float | None,
                      hi: float | None) -> WindowPage | None:
        """Page one of the window search [lo, hi) of `type_`, kept for the levels
        below; None (logged) when the answer is not sorted or not in the window."""
        clauses = [f"type=={type_}"]
        if lo is not None:
            clauses.append(f"createdTime=ge={int(lo * 1000)}")
        if hi is not None:
            clauses.append(f"createdTime=lt={int(hi * 1000)}")
        content, last, body = await self._page(region, self.fiql(*clauses), "createdTime", 0, PAGE_LIMIT)
        times = [parse_time(obj.get("createdTime")) for obj in content]
        problem = None
        if any(t is None for t in times):
            problem = "an object without a createdTime"
        elif any(b < a for a, b in zip(times, times[1:])):
            problem = "objects not sorted by createdTime"
        elif times and ((lo is not None and times[0] < lo) or (hi is not None and times[-1] >= hi)):
            problem = "a createdTime outside the window asked for"
        elif not times and not last:
            problem = "an empty page that is not the last"
        if problem:
            log.warning("%s: 8x8 search in %s/%s answered %s; stopping the walk",
                        self.name, region, type_, problem)
            return None
        ttl = self._ttl(_utc(hi), time.time()) if hi is not None else None
        page = WindowPage(region, type_, lo, hi, tuple(times), body, last, trio.current_time(),
                          self.listing_ttl if ttl is None else ttl)
        self.pages.add(page)
        return page

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
            names, self._regions_from_start = self._regions_from_start, None
            if names is None:
                names = await self._region_names()
            self._listed_regions = list(names)
            return Listing([Entry(r, Kind.DIR, DirRef("region", r), mtime=now) for r in names])
        if ref.level == "region":
            return Listing([Entry(t, Kind.DIR, DirRef("type", ref.region, t), mtime=now)
                            for t in await self._types(ref.region)])
        if ref.level == "type":
            years = await self._walk(ref, None, None, _step_year, MAX_YEARS)
            return Listing([self._dir(DirRef("year", ref.region, ref.type, y), f"{y:04d}")
                            for y in years])
        if ref.level == "year":
            lo, hi = _period_bounds(ref)
            months = await self._walk(ref, lo.timestamp(), hi.timestamp(), _step_month, 12)
            return Listing([self._dir(DirRef("month", ref.region, ref.type, ref.year, m), f"{m:02d}")
                            for m in months], ttl=self._ttl(hi, now))
        if ref.level == "month":
            lo, hi = _period_bounds(ref)
            days = await self._walk(ref, lo.timestamp(), hi.timestamp(), _step_day, 31)
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
        """The region's types: pages sorted by type, each excluding the types found so
        far; one page per type at most, plus one."""
        found: list[str] = []
        for _ in range(MAX_TYPES):
            content, last, _ = await self._page(region, self.fiql(*(f"type!={t}" for t in found)),
                                                "type", 0, PAGE_LIMIT)
            new = []
            for obj in content:
                t = obj.get("type")
                if isinstance(t, str) and t and t not in found and t not in new:
                    new.append(t)
            found += new
            if last:
                break
            if not new:
                log.warning("%s: 8x8 type search in %s answered only types it was told to leave "
                            "out; stopping", self.name, region)
                break
        else:
            log.warning("%s: more than %d pages of types in %s; showing the first",
                        self.name, MAX_TYPES, region)
        return sorted(found)

    async def _walk(self, folder: DirRef, lo: float | None, hi: float | None, step,
                    periods: int) -> list[int]:
        """The periods between lo and hi (epoch seconds, None: open) that have objects
        of the folder's type, from window pages: a kept one that reaches the cursor,
        else a search of [cursor, hi). Each page shows every period up to its last
        object; the cursor then moves to the period after that object's. At most
        `periods` periods are found."""
        out: list[int] = []
        cursor = lo
        for _ in range(2 * periods + 2):    # a kept page may only move the cursor on
            page = self.pages.find(folder, folder.region, folder.type, cursor, hi) \
                or await self._window(folder.region, folder.type, cursor, hi)
            if page is None:
                break
            inside = page.inside(cursor, hi)
            for i in inside:
                value, _ = step(_utc(page.times[i]))
                if value not in out:
                    out.append(value)
            if page.covers(hi) or len(out) >= periods:
                break
            if inside:
                following = step(_utc(page.times[inside[-1]]))[1].timestamp()
            else:                           # a whole page: nothing from the cursor to its end
                following = page.end
            if following is None or (cursor is not None and following <= cursor):
                break
            cursor = following
            if hi is not None and cursor >= hi:
                break
        else:
            log.warning("%s: 8x8 walk of %s found more periods than it can hold; showing the first",
                        self.name, folder)
        self.pages.listed(folder)
        return out

    async def _list_day(self, ref: DirRef, now: float) -> Listing:
        lo, hi = _period_bounds(ref)
        objects = await self._day_objects(ref, lo.timestamp(), hi.timestamp(), self.fiql(
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
        return Listing(entries, ttl=self._ttl(hi, now))

    async def _day_objects(self, ref: DirRef, lo: float, hi: float, filter_: str) -> list[dict]:
        """The day's objects: those a kept window page holds of it come first (all of
        them when the page covers the day), then the day's own search from their
        number on (`pageKey`). The page is sorted and holds every object created
        before its last time T, so the k objects it holds of the day are the day's
        first k, unless more objects were created at T than it holds: then the
        search's first object was created at T too, and the day goes on from the
        objects created before T (certainly its first ones)."""
        page = self.pages.find(ref, ref.region, ref.type, lo, hi)
        self.pages.listed(ref)
        if page is None:
            return await self.objects_matching(ref.region, filter_)
        objects = page.objects()
        inside = page.inside(lo, hi)
        known = [objects[i] for i in inside]
        if page.covers(hi) or not known:
            return known if page.covers(hi) else await self.objects_matching(ref.region, filter_)
        last = page.times[-1]
        rest = await self.objects_matching(ref.region, filter_, offset=len(known), after=last)
        if rest is None:
            log.debug("%s: %s: objects created at the same time on both sides of a kept page's "
                      "end; the day goes on from the objects created before", self.name, ref)
            known = [objects[i] for i in inside if page.times[i] < last]
            rest = await self.objects_matching(ref.region, filter_, offset=len(known))
        ids = {str(o.get("id") or "") for o in known}
        return known + [o for o in rest or () if str(o.get("id") or "") not in ids]

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

    async def sizes(self, entries: list[Entry]) -> None:
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
    def target(self, entry: Entry) -> Target:
        ref: FileRef = entry.ref
        if self.presign:
            return self.leases.target(f"{ref.region}/{ref.id}")
        return AuthTarget(self.auth, self._url(ref.region, f"objects/{ref.id}/content"), {"Accept": "*/*"})

    def _presign_request(self, key: str) -> tuple[str, dict[str, str]]:
        region, oid = key.split("/", 1)
        return self._url(region, f"objects/{oid}/content") + "?presignUrl=true", dict(JSON_HEADERS)

    def _presign_answer(self, key: str, resp) -> str:
        """The presigned URL: a redirect's Location, or in the body (parse_presigned)."""
        oid = key.split("/", 1)[1]
        if resp.status_code in (301, 302, 303, 307) and resp.headers.get("location"):
            return resp.headers["location"]
        if resp.status_code == 403:
            raise ForbiddenError(f"{self.name}: 8x8 presign of object {oid}: HTTP 403", 403)
        if resp.status_code != 200:
            raise HttpError(f"{self.name}: 8x8 presign of object {oid}: HTTP {resp.status_code}",
                            resp.status_code)
        url = parse_presigned(resp.text)
        if not url:
            raise SourceError(f"{self.name}: 8x8 gave no presigned URL for object {oid}")
        return url

    # -- bulk jobs (the engine in content/bulk.py decides when)
    @staticmethod
    def _member(entry: Entry) -> tuple[str, str | None, tuple[str, str]]:
        ref: FileRef = entry.ref
        return ref.object_name, ref.md5, (ref.region, ref.id)

    async def _job_start(self, folder: DirRef, files: list[BulkFile]) -> tuple[str, JobStatus]:
        resp = await self.http.request(
            "POST", self._url(folder.region, "bulk/download/start"), name=f"{self.name}: 8x8 bulk start",
            auth=self.auth, headers=JSON_HEADERS, json=[f.ref[1] for f in files],
            idempotent=False, expect=(200, 201, 202))
        body = _one(resp.json())
        zip_name = body.get("zipName")
        if not zip_name:
            raise ValueError("the start answer has no zipName")
        return str(zip_name), status_of(str(body.get("status") or "NOT_STARTED"))

    def _job_url(self, folder: DirRef, what: str, zip_name: str) -> str:
        return self._url(folder.region, f"bulk/download/{what}{urllib.parse.quote(zip_name, safe='')}")

    async def _job_poll(self, folder: DirRef, zip_name: str) -> JobStatus:
        body = await self._get_json(self._job_url(folder, "status/", zip_name), f"{self.name}: 8x8 bulk status")
        return status_of(str(_one(body).get("status") or ""))

    def _job_package(self, folder: DirRef, zip_name: str) -> Target:
        return AuthTarget(self.auth, self._job_url(folder, "", zip_name), {"Accept": "*/*"})

    async def _job_end(self, folder: DirRef, zip_name: str, finished: bool) -> None:
        if not finished:
            await self.http.request("POST", self._job_url(folder, "cancel/", zip_name),
                                    name=f"{self.name}: 8x8 bulk cancel", auth=self.auth,
                                    headers=JSON_HEADERS, idempotent=False, expect=None)

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
        # a kept window page may hold this object: the walks must ask again
        self.pages.drop(ref.folder.region, ref.folder.type)
        self.leases.drop(f"{ref.region}/{ref.id}")

    # -- search: FIQL on tags and createdTime, per region

    searches_server_side = ("caller", "callee", "number", "call_id", "agent", "queue", "direction")

    def record(self, name: str, xattrs: dict[str, str], mtime: float) -> Record:
        try:        # the tag is milliseconds in every example, whatever its text says
            duration = int(xattrs["8x8.duration"]) / 1000
        except (KeyError, ValueError):
            duration = None
        agents = tuple(xattrs[f"8x8.{k}"] for k in AGENT_TAGS if xattrs.get(f"8x8.{k}"))
        return Record(name=name, time=mtime, caller=number_of(xattrs.get("8x8.callerId")),
                      callee=number_of(xattrs.get("8x8.calleeId")), call_id=xattrs.get("8x8.callId"),
                      agents=agents, queue=xattrs.get("8x8.queueName"),
                      direction=direction_of(xattrs.get("8x8.direction")), duration=duration)

    def folder_span(self, ref: Hashable, name: str) -> tuple[float, float] | None:
        if isinstance(ref, DirRef) and ref.level in ("year", "month", "day"):
            return day_bounds(ref.year, ref.month, ref.day)
        return None

    def filters_server_side(self, query: Query) -> bool:
        return self.search_fiql(query) is not None

    def search_fiql(self, query: Query) -> str | None:
        """The FIQL of `query`'s terms that the tags can answer (None: none can). A
        number is asked for with and without its '+'; a value FIQL would have to quote
        is left to the match of the results."""
        def any_of(keys, values) -> str:
            return "(" + ",".join(f"{k}=={v}" for k in keys for v in values) + ")"
        clauses = []
        for side, keys in (("caller", ("callerId",)), ("callee", ("calleeId",)),
                           ("number", ("callerId", "calleeId"))):
            digits = getattr(query, side)
            if digits is not None:
                clauses.append(any_of(keys, (f"+{digits}", digits)))
        for value, keys in ((query.call_id, ("callId",)), (query.agent, AGENT_TAGS),
                            (query.queue, ("queueName",))):
            if value is not None and _FIQL_PLAIN.match(value):
                clauses.append(any_of(keys, (value,)))
        if query.direction is not None:
            clauses.append(any_of(("direction",), (query.direction.upper(), query.direction)))
        if not clauses:
            return None
        if query.since is not None:
            clauses.append(f"createdTime=ge={int(query.since * 1000)}")
        if query.until is not None:
            clauses.append(f"createdTime=lt={int(query.until * 1000)}")
        return self.fiql(*clauses)

    async def search(self, query: Query) -> list[Hit] | None:
        """One search per region (every type at once), page by page: with one caller's
        calls, usually a page a region."""
        filter_ = self.search_fiql(query)
        if filter_ is None:
            return None
        regions = self._listed_regions or self._regions_from_start or await self._region_names()
        hits: list[Hit] = []
        for region in regions:
            for obj in await self.objects_matching(region, filter_) or ():
                created = parse_time(obj.get("createdTime"))
                type_ = obj.get("type")
                if created is None or not isinstance(type_, str) or not type_ \
                        or (region, str(obj.get("id") or "")) in self._deleted \
                        or (not self._states_named and obj.get("objectState", "AVAILABLE") != "AVAILABLE"):
                    continue
                t = _utc(created)
                folder = DirRef("day", region, type_, t.year, t.month, t.day)
                entry = self._file_entry(obj, folder, _period_bounds(folder)[0].timestamp())
                if entry is not None:
                    hits.append(Hit((region, type_, f"{t.year:04d}", f"{t.month:02d}", f"{t.day:02d}"),
                                    entry))
        return hits


def _grouped(expr: str) -> str:
    """`expr` safe to AND with other clauses: an OR outside parentheses gets wrapped."""
    depth = 0
    for ch in expr:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            return f"({expr})"
    return expr


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


Source = EightByEightSource
