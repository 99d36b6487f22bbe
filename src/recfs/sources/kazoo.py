"""Kazoo (2600Hz) Crossbar call recordings as a recfs source.

Layout (UTC, by the recording's `start`):

    {account_id}/{YYYY}/{MM}/{DD}/{file}
    {account_id}/users/{owner_id}/{YYYY}/{MM}/{DD}/{file}

How the API shapes the client (apis.md §4):
- Auth: `PUT {api_url}/api_auth` with the API key gives a JWT `auth_token` (its `exp`
  claim tells the lifetime) sent as `X-Auth-Token`. The shared Http layer repeats a
  request that got 401 once with a fresh token, with the same query string, so a
  crawl resumes at the same `start_key`.
- Listings are windows of creation time (`created_from`/`created_to`, Gregorian
  seconds, at most 31 days + 1 hour) walked page by page with `start_key` /
  `next_start_key`. The year, month and `users/` levels come from one pass over the
  history from `since` to now in calendar-month windows; a closed month is never
  asked again, the current one at most once per `listing_ttl`. A day folder is one
  window: [day − 1 h, day end + `created_lag_hours`), because a document is stored
  when its call ends, later than its `start`; only documents whose `start` falls in
  the day are shown.
- Sizes are not in the listing: the core learns them from the media (a ranged GET
  whose answer states the total), with `Accept: audio/mpeg`.
- The file's extension comes from the listing's `_read_only.content_types` (the
  stored attachment's type, which is exactly the Content-Type the media GET
  answers, e.g. audio/wav although audio/mpeg is asked for), else `content_type`,
  else `media_type`. A document whose `content_types` is empty has no media and is
  not shown; one that answers 404 anyway keeps no size (hidden) and its reads fail
  with EIO and a log line naming it.
- Deletes (only with `allow_delete = true`): `DELETE …/recordings/{id}`, Kazoo's
  default soft delete. A 404 means the document is already gone (deleted by someone
  else, or by an earlier try of ours that timed out) and counts as success. The API
  offers no listing of soft-deleted documents and no restore (apis.md §4.6), so
  recfs shows no "deleted" view; see docs/providers/kazoo.md.
"""
from __future__ import annotations

import base64
import datetime as dt
import errno
import hashlib
import json
import logging
import mimetypes
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

import trio

from ..config import Secret, SourceOptions, option
from ..http import CachedToken, ForbiddenError, Http, HttpError, Target, AuthTarget, safe_url
from .base import Entry, Kind, Listing, Source, SourceError

log = logging.getLogger("recfs.sources.kazoo")

GREGORIAN_OFFSET = 62167219200       # Unix epoch in Gregorian seconds (kz_types.hrl)
SERVICE_MAX_RANGE = 31 * 86400 + 3600
MAX_WINDOW = 31 * 86400              # what we ask for: inside the service's limit
DAY = 86400
CLOCK_SKEW = 3600                    # seconds of disagreement tolerated between clocks
DEFAULT_SINCE_DAYS = 90
DEFAULT_TOKEN_LIFETIME = 3600.0
CLOSED_DAY_TTL = 6 * 3600.0          # a past day's listing rarely changes

MIME_EXTENSIONS = {
    "audio/mpeg": ".mp3", "audio/mp3": ".mp3", "audio/mpeg3": ".mp3", "audio/x-mpeg": ".mp3",
    "audio/x-mp3": ".mp3", "audio/wav": ".wav", "audio/x-wav": ".wav", "audio/wave": ".wav",
    "audio/vnd.wave": ".wav", "audio/ogg": ".ogg", "audio/mp4": ".m4a", "audio/x-m4a": ".m4a",
    "audio/flac": ".flac", "audio/x-flac": ".flac", "audio/webm": ".weba",
}
AUDIO_EXTENSIONS = set(MIME_EXTENSIONS.values()) | {".mpeg", ".wave", ".oga", ".opus", ".aac"}
EXTENSION_MIMES = {"mp3": "audio/mpeg", "wav": "audio/wav", "wave": "audio/wav", "ogg": "audio/ogg",
                   "m4a": "audio/mp4", "mp4": "audio/mp4", "flac": "audio/flac"}
XATTR_FIELDS = ("call_id", "caller_id_name", "caller_id_number", "callee_id_name",
                "callee_id_number", "direction", "duration_ms", "owner_id")


def unix_to_gregorian(t: float) -> int:
    return int(t) + GREGORIAN_OFFSET


def gregorian_to_unix(g: int) -> int:
    return int(g) - GREGORIAN_OFFSET


def day_start(d: dt.date) -> int:
    return int(dt.datetime(d.year, d.month, d.day, tzinfo=dt.timezone.utc).timestamp())


def utc_date(t: float) -> dt.date:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).date()


def month_windows(since: float, until: float) -> list[tuple[int, int]]:
    """Calendar-month windows [a, b) in Unix seconds covering [since, until]; the first
    starts at `since`. A month has at most 31 days, so every window fits the API."""
    out = []
    a = int(since)
    d = utc_date(a)
    while a <= until:
        nxt = dt.date(d.year + (d.month == 12), d.month % 12 + 1, 1)
        b = day_start(nxt)
        out.append((a, b))
        a, d = b, nxt
    return out


# --------------------------------------------------------------------------- config

def _check_api_url(url: str) -> str | None:
    if not url.rstrip("/").endswith("/v2"):
        return f"{url!r} must be the Crossbar base ending in /v2 (e.g. https://kazoo.example.com:8000/v2)"
    return None


def _check_accounts(ids: list[str]) -> str | None:
    for acct in ids:
        if len(acct) != 32 or any(c not in "0123456789abcdef" for c in acct):
            return f"{acct!r} is not a Kazoo account id (32 lower-case hex digits)"
    return None


def _check_range(lo: float, hi: float) -> Callable[[Any], str | None]:
    return lambda v: None if lo <= v <= hi else f"must be between {lo:g} and {hi:g}"


@dataclass(kw_only=True)
class Options(SourceOptions):
    api_url: str = option("url", required=True, check=_check_api_url, doc="Crossbar API base, ending in /v2")
    api_key: Any = option("secret", required=True, doc="the account's API key (api_auth)")
    accounts: list[str] | None = option("list[str]", check=_check_accounts,
                                        doc="account ids to show (default: the API key's own account)")
    since: dt.date | None = option("date", doc=f"oldest day shown (default: {DEFAULT_SINCE_DAYS} days before the mount)")
    page_size: int = option("int", 200, check=_check_range(1, 5000), doc="documents per listing page")
    created_lag_hours: float = option("float", 6.0, check=_check_range(0, 24 * 29),
                                      doc="how long after its start a recording may be stored")
    size_concurrency: int = option("int", 16, check=_check_range(1, 256),
                                   doc="concurrent size probes per folder")
    user_view: bool = option("bool", True, doc="show {account}/users/{owner_id}/…")

    def problem(self) -> str | None:
        if self.since is not None and self.since > dt.datetime.now(dt.timezone.utc).date():
            return "since: is in the future"
        return None


# --------------------------------------------------------------------------- client

def jwt_lifetime(token: str) -> float | None:
    """exp − iat of a JWT, or None when the token is not one (then assume an hour)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"]) - float(claims.get("iat") or time.time())
    except (IndexError, ValueError, KeyError, TypeError):
        return None


class KazooAuth(CachedToken):
    """`PUT /api_auth` with the API key; the token goes in X-Auth-Token."""

    def __init__(self, http: Http, api_url: str, api_key: Secret | str, what: str = "kazoo"):
        super().__init__()
        self.http = http
        self.url = f"{api_url.rstrip('/')}/api_auth"
        self.api_key = api_key
        self.what = what
        self.account_id: str | None = None

    async def fetch(self) -> tuple[str, float]:
        key = self.api_key.reveal() if isinstance(self.api_key, Secret) else self.api_key
        resp = await self.http.request("PUT", self.url, name=f"{self.what}: api_auth",
                                       json={"data": {"api_key": key}},
                                       headers={"Accept": "application/json"}, expect=None)
        if resp.status_code in (400, 401, 403, 404):
            raise HttpError(f"{self.what}: the service refused the API key (HTTP "
                            f"{resp.status_code}) at {safe_url(self.url)}", resp.status_code)
        if resp.status_code not in (200, 201):
            raise HttpError(f"{self.what}: api_auth answered HTTP {resp.status_code} at "
                            f"{safe_url(self.url)}", resp.status_code)
        try:
            body = resp.json()
            token = str(body["auth_token"])
            self.account_id = str(body["data"]["account_id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise HttpError(f"{self.what}: malformed api_auth response ({type(exc).__name__})") from None
        lifetime = jwt_lifetime(token)
        if lifetime is None or lifetime <= 0:
            lifetime = DEFAULT_TOKEN_LIFETIME
        return token, lifetime

    def render(self, token: str) -> dict[str, str]:
        return {"X-Auth-Token": token}


class KazooClient:
    """The Crossbar calls recfs needs; no layout here."""

    def __init__(self, http: Http, api_url: str, api_key: Secret | str, *, page_size: int = 200,
                 what: str = "kazoo"):
        self.http = http
        self.api_url = api_url.rstrip("/")
        self.page_size = page_size
        self.what = what
        self.auth = KazooAuth(http, self.api_url, api_key, what)
        self.pages = 0

    async def own_account(self) -> str:
        await self.auth.headers()
        if self.auth.account_id is None:
            raise SourceError(f"{self.what}: api_auth gave no account_id")
        return self.auth.account_id

    def recordings_url(self, account_id: str, owner_id: str | None = None) -> str:
        if owner_id:
            return f"{self.api_url}/accounts/{account_id}/users/{owner_id}/recordings"
        return f"{self.api_url}/accounts/{account_id}/recordings"

    def media_url(self, account_id: str, recording_id: str) -> str:
        return f"{self.api_url}/accounts/{account_id}/recordings/{recording_id}"

    async def list_window(self, account_id: str, start: int, end: int,
                          owner_id: str | None = None) -> list[dict[str, Any]]:
        """Every document created in [start, end) (Unix seconds), all pages, newest first."""
        if end - start > MAX_WINDOW or end <= start:
            raise ValueError(f"window {start}..{end} is empty or wider than 31 days")
        url = self.recordings_url(account_id, owner_id)
        params: dict[str, Any] = {"created_from": unix_to_gregorian(start),
                                  "created_to": unix_to_gregorian(end) - 1,
                                  "page_size": self.page_size}
        docs: list[dict[str, Any]] = []
        seen: set[str] = set()
        while True:
            resp = await self.http.request("GET", url, name=f"{self.what}: list recordings",
                                           auth=self.auth, params=params,
                                           headers={"Accept": "application/json"})
            self.pages += 1
            try:
                body = resp.json()
                data = body.get("data")
                if not isinstance(data, list):
                    raise TypeError("data is not a list")
            except (ValueError, TypeError, AttributeError) as exc:
                raise SourceError(f"{self.what}: malformed listing from {safe_url(url)} "
                                  f"({exc})") from None
            docs.extend(d for d in data if isinstance(d, dict))
            nxt = body.get("next_start_key")
            if not nxt:
                return docs
            if nxt in seen:
                raise SourceError(f"{self.what}: the listing cursor of {safe_url(url)} "
                                  f"went round in a loop")
            seen.add(nxt)
            params = dict(params, start_key=nxt)

    async def delete_recording(self, account_id: str, recording_id: str) -> bool:
        """Soft-delete a recording (the API's default). True when this request deleted
        it, False when the service says it is already gone (404)."""
        url = self.media_url(account_id, recording_id)
        # a retried DELETE whose first try went through answers 404: still a success
        resp = await self.http.request("DELETE", url, name=f"{self.what}: delete recording",
                                       auth=self.auth, headers={"Accept": "application/json"},
                                       expect=(200, 404))
        return resp.status_code == 200


def _error_message(resp) -> str:
    try:
        body = resp.json()
        return str(body.get("message") or "")
    except ValueError:
        return ""


# --------------------------------------------------------------------------- naming

def media_type_of(doc: dict[str, Any]) -> str:
    """The MIME type the media GET will answer with, decided from the listing."""
    declared = str(doc.get("content_type") or "").split(";")[0].strip().lower()
    read_only = doc.get("_read_only")
    stored = read_only.get("content_types") if isinstance(read_only, dict) else None
    if isinstance(stored, list) and stored:
        stored = [str(t).split(";")[0].strip().lower() for t in stored]
        if len(stored) == 1 or declared not in stored:
            return stored[0]
        return declared
    if declared:
        return declared
    ext = str(doc.get("media_type") or "").lstrip(".").lower()
    return EXTENSION_MIMES.get(ext, "audio/mpeg")


def extension_for(mime: str) -> str:
    """The extension for an audio type; '' for anything else (the name is then kept)."""
    if mime in MIME_EXTENSIONS:
        return MIME_EXTENSIONS[mime]
    return (mimetypes.guess_extension(mime) or "") if mime.startswith("audio/") else ""


def file_name(name: str, mime: str) -> str:
    """`name` with the extension its media type calls for: kept when it matches,
    replaced when it is another audio extension, appended otherwise."""
    ext = extension_for(mime)
    if not ext:
        return name
    suffix = os.path.splitext(name)[1].lower()
    if suffix == ext:
        return name
    if suffix in AUDIO_EXTENSIONS:
        return name[: -len(suffix)] + ext
    return name + ext


def has_no_media(doc: dict[str, Any]) -> bool:
    read_only = doc.get("_read_only")
    stored = read_only.get("content_types") if isinstance(read_only, dict) else None
    return isinstance(stored, list) and not stored


def start_of(doc: dict[str, Any]) -> int | None:
    try:
        return gregorian_to_unix(int(doc["start"]))
    except (KeyError, TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- the index

@dataclass
class WindowSummary:
    """What one history window taught: the recordings of each day, per account and
    owner (day -> recording id -> start). Ids, not just days, are kept so a delete can
    take its recording out, and a day left empty disappears without asking again."""
    fetched_at: float
    closed: bool
    days: dict[dt.date, dict[str, int]] = field(default_factory=dict)
    user_days: dict[str, dict[dt.date, dict[str, int]]] = field(default_factory=dict)

    def forget(self, rid: str) -> None:
        for days in (self.days, *self.user_days.values()):
            for day in [d for d, recs in days.items() if rid in recs]:
                del days[day][rid]
                if not days[day]:
                    del days[day]
        for owner in [o for o, days in self.user_days.items() if not days]:
            del self.user_days[owner]


def _bump(days: dict[dt.date, int], day: dt.date, start: int) -> None:
    if days.get(day, -1) < start:
        days[day] = start


def _newest(days: dict[dt.date, dict[str, int]]) -> dict[dt.date, int]:
    """day -> newest start (for folder mtimes)."""
    return {day: max(recs.values()) for day, recs in days.items() if recs}


# --------------------------------------------------------------------------- source

class KazooSource(Source):
    kind = "kazoo"
    listing_ttl = 60.0

    def __init__(self, name: str, options: Options, http: Http,
                 clock: Callable[[], float] = time.time):
        super().__init__(name, options, http)
        self.clock = clock
        self.created_at = clock()
        self.client = KazooClient(http, options.api_url, options.api_key,
                                  page_size=options.page_size, what=f"kazoo source {name!r}")
        self.configured_accounts = list(options.accounts or [])
        since = options.since
        if since is None:
            since = utc_date(clock()) - dt.timedelta(days=DEFAULT_SINCE_DAYS)
        self.since = day_start(since)
        self.lag = int(3600 * options.created_lag_hours)
        self.user_view = options.user_view
        self.size_probes = options.size_concurrency
        self._windows: dict[str, dict[tuple[int, int], WindowSummary]] = defaultdict(dict)
        self._index_locks: dict[str, trio.Lock] = defaultdict(trio.Lock)
        self._accounts: list[str] | None = None
        # (account, recording id) deleted through this mount: a listing that was in
        # flight while the delete ran must not bring them back
        self._deleted: set[tuple[str, str]] = set()

    @property
    def auth(self) -> KazooAuth:
        return self.client.auth

    async def start(self) -> None:
        try:
            own = await self.client.own_account()
        except HttpError as exc:
            raise SourceError(str(exc)) from None
        self._accounts = self.configured_accounts or [own]
        now = int(self.clock())
        for acct in self._accounts:
            try:   # a one-second window: cheap proof that the key may read this account
                await self.client.list_window(acct, now - 1, now)
            except HttpError as exc:
                raise SourceError(f"kazoo source {self.name!r}: cannot list recordings of "
                                  f"account {acct}: {exc}") from None

    async def accounts(self) -> list[str]:
        if self._accounts is None:
            self._accounts = self.configured_accounts or [await self.client.own_account()]
        return self._accounts

    def root_ref(self) -> Hashable:
        return ("root",)

    # -- the history index (year, month and users/ levels)

    async def _index(self, account: str) -> list[WindowSummary]:
        async with self._index_locks[account]:
            now = self.clock()
            cached = self._windows[account]
            out = []
            for window in month_windows(self.since, now):
                summary = cached.get(window)
                if summary is None or (not summary.closed
                                       and now - summary.fetched_at >= self.listing_ttl):
                    docs = await self.client.list_window(account, *window)
                    summary = self._summarize(account, docs, fetched_at=now,
                                              closed=window[1] + CLOCK_SKEW < now)
                    cached[window] = summary
                out.append(summary)
            return out

    def _summarize(self, account: str, docs: list[dict[str, Any]], fetched_at: float,
                   closed: bool) -> WindowSummary:
        summary = WindowSummary(fetched_at, closed)
        for doc in docs:
            start = start_of(doc)
            rid = doc.get("id")
            if start is None or start < self.since or has_no_media(doc) or \
                    not isinstance(rid, str) or (account, rid) in self._deleted:
                continue
            day = utc_date(start)
            summary.days.setdefault(day, {})[rid] = start
            owner = doc.get("owner_id")
            if isinstance(owner, str) and owner:
                summary.user_days.setdefault(owner, {}).setdefault(day, {})[rid] = start
        return summary

    async def _days(self, account: str, owner: str | None) -> dict[dt.date, int]:
        days: dict[dt.date, int] = {}
        for summary in await self._index(account):
            source = summary.days if owner is None else summary.user_days.get(owner, {})
            for day, start in _newest(source).items():
                _bump(days, day, start)
        return days

    # -- listings

    async def list_dir(self, ref: Hashable) -> Listing:
        what = ref[0]
        if what == "root":
            # the root must not cost a history pass, so accounts show the mount's start
            return Listing([self._dir(a, ("acct", a), mtime=self.created_at)
                            for a in await self.accounts()])
        if what == "acct":
            account = ref[1]
            days = await self._days(account, None)
            entries = self._period_dirs(days, account, None, "year", ())
            if self.user_view:
                entries.append(self._dir("users", ("users", account),
                                         mtime=max(days.values(), default=self.created_at)))
            return Listing(entries)
        if what == "users":
            account = ref[1]
            owners: dict[str, int] = {}
            for summary in await self._index(account):
                for owner, days in summary.user_days.items():
                    newest = _newest(days)
                    if newest:
                        owners[owner] = max(owners.get(owner, 0), max(newest.values()))
            return Listing([self._dir(o, ("user", account, o), mtime=t) for o, t in sorted(owners.items())])
        if what == "user":
            _, account, owner = ref
            return Listing(self._period_dirs(await self._days(account, owner), account, owner, "year", ()))
        if what in ("year", "month"):
            account, owner, *period = ref[1:]
            level = "month" if what == "year" else "day"
            return Listing(self._period_dirs(await self._days(account, owner), account, owner,
                                             level, tuple(period)))
        if what == "day":
            return await self._list_day(*ref[1:])
        raise SourceError(f"kazoo source {self.name!r}: unknown folder {ref!r}", errno.ENOENT)

    def _dir(self, name: str, ref: tuple, mtime: float = 0.0) -> Entry:
        return Entry(name=name, kind=Kind.DIR, ref=ref, mtime=float(mtime), size=0)

    def _period_dirs(self, days: dict[dt.date, int], account: str, owner: str | None,
                     level: str, period: tuple[int, ...]) -> list[Entry]:
        """Folders of the next level under `period` ((), (Y,), (Y, M))."""
        newest: dict[int, int] = {}
        for day, start in days.items():
            parts = (day.year, day.month, day.day)
            if parts[:len(period)] != period:
                continue
            key = parts[len(period)]
            newest[key] = max(newest.get(key, 0), start)
        width = 4 if level == "year" else 2
        return [self._dir(f"{key:0{width}d}", (level, account, owner, *period, key), mtime=t)
                for key, t in sorted(newest.items())]

    async def _list_day(self, account: str, owner: str | None, year: int, month: int,
                        day: int) -> Listing:
        first = day_start(dt.date(year, month, day))
        last = first + DAY
        window_end = min(last + self.lag, first - CLOCK_SKEW + MAX_WINDOW)
        docs = await self.client.list_window(account, first - CLOCK_SKEW, window_end, owner)
        entries = []
        for doc in docs:
            start = start_of(doc)
            if start is None:
                log.debug("%s: recording %s has no start; not shown", self.name, doc.get("id"))
                continue
            if not (first <= start < last) or start < self.since or \
                    (account, doc.get("id")) in self._deleted:
                continue
            entry = self._file_entry(account, doc, start)
            if entry is not None:
                entries.append(entry)
        closed = window_end + CLOCK_SKEW < self.clock()
        return Listing(entries, ttl=max(CLOSED_DAY_TTL, self.listing_ttl) if closed else None)

    def _file_entry(self, account: str, doc: dict[str, Any], start: int) -> Entry | None:
        rid = doc.get("id")
        if not isinstance(rid, str) or not rid:
            return None
        if has_no_media(doc):
            log.debug("%s: recording %s of account %s has no media; not shown", self.name, rid, account)
            return None
        mime = media_type_of(doc)
        name = file_name(str(doc.get("name") or rid), mime)
        duration_ms = doc.get("duration_ms")
        fingerprint = json.dumps([doc.get("name"), mime, duration_ms, doc.get("start"),
                                  doc.get("url"), doc.get("media_type")], default=str)
        version = hashlib.sha1(fingerprint.encode()).hexdigest()[:16]
        xattrs = {f"kazoo.{k}": str(doc[k]) for k in XATTR_FIELDS
                  if doc.get(k) is not None and not isinstance(doc[k], (dict, list))}
        xattrs["kazoo.recording_id"] = rid
        xattrs["kazoo.content_type"] = mime
        xattrs["kazoo.account_id"] = account
        try:
            hint = max(0, int(duration_ms)) * 16        # ~128 kbit/s
        except (TypeError, ValueError):
            hint = 0
        return Entry(name=name, kind=Kind.FILE, ref=("rec", account, rid), mtime=float(start),
                     size=None, size_hint=hint, id=rid, version=version, xattrs=xattrs)

    # -- bytes (sizes are not in the listing: the core learns them from the media)

    def target(self, entry: Entry) -> Target:
        _, account, rid = entry.ref
        return AuthTarget(self.auth, self.client.media_url(account, rid), {"Accept": "audio/mpeg"})

    def content_error(self, entry: Entry, exc: HttpError) -> Exception:
        if exc.status == 404:
            _, account, rid = entry.ref
            return SourceError(f"{self.name}: recording {rid} of account {account} has no media "
                               f"(404 bad_identifier)", errno.EIO)
        return exc

    # -- deletes (issue 9)

    async def delete(self, entry: Entry) -> None:
        """Soft-delete the recording on the service and forget it here, so neither the
        account view nor the per-user view shows it again (the same recording appears in
        both; the tree drops it from the folder it was deleted in, the other view's day
        folder loses it at its next listing)."""
        if not self.allow_delete:
            raise SourceError(f"{self.name}: deleting is off (set allow_delete = true)", errno.EROFS)
        ref = entry.ref
        if entry.kind is not Kind.FILE or not (isinstance(ref, tuple) and len(ref) == 3
                                               and ref[0] == "rec"):
            raise SourceError(f"{self.name}: only recordings can be deleted", errno.EROFS)
        _, account, rid = ref
        try:
            deleted = await self.client.delete_recording(account, rid)
        except ForbiddenError:
            raise SourceError(f"{self.name}: the API key may not delete recording {rid} of "
                              f"account {account} (HTTP 403)", errno.EACCES) from None
        except HttpError as exc:
            raise SourceError(f"{self.name}: cannot delete recording {rid} of account "
                              f"{account}: {exc}", errno.EIO) from None
        if deleted:
            log.info("%s: deleted recording %s of account %s (%s)", self.name, rid, account, entry.name)
        else:
            log.info("%s: recording %s of account %s was already gone (404); counted as deleted",
                     self.name, rid, account)
        self._forget(account, rid, entry.version)

    def _forget(self, account: str, rid: str, version: str) -> None:
        self._deleted.add((account, rid))
        for summary in self._windows.get(account, {}).values():
            summary.forget(rid)


Source = KazooSource
