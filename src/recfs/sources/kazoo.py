"""Kazoo (2600Hz) Crossbar call recordings as a recfs source.

Layout (UTC, by the recording's `start`):

    {account_id}/{YYYY}/{MM}/{DD}/{file}
    {account_id}/users/{owner_id}/{YYYY}/{MM}/{DD}/{file}
    {account_id}/deleted/{YYYY}/{MM}/{DD}/{file}      (servers with PATCH soft_delete)

How the API shapes the client (apis.md §4, and the server's own code):
- Auth: `PUT {api_url}/api_auth` with the API key gives a JWT `auth_token` (its `exp`
  claim tells the lifetime) sent as `X-Auth-Token`. The shared Http layer repeats a
  request that got 401 once with a fresh token, with the same query string, so a
  crawl resumes at the same `start_key`. A key the service refuses (404: no such key;
  400: not 64 characters; 401/403) is "the API key was refused", and is not offered
  again for a while: each api_auth costs 35 of the client's rate-limit tokens.
- Listings are windows of creation time (`created_from`/`created_to`, Gregorian
  seconds) walked page by page with `start_key` / `next_start_key`. A window is at
  most the server's `crossbar.maximum_range` (31 days + 1 hour unless the operator set
  less): a 400 `date_range` teaches the mount the server's limit (from its message, or
  by halving) and the window is listed again in pieces that fit.
- The year, month and day levels come from bounded probes, never from a pass over the
  history: a window listed with `page_size=1` tells whether a period holds a
  recording (the server reads one row, plus one to know there are more). A period is
  probed newest window first and the probe stops at the first recording whose
  `start` falls in it; a closed period's answer is kept for the mount. A closed day is
  probed by the first page of its own listing's body instead, which the listing goes
  on from. A day folder is one window: [day − 1 h, day end + `created_lag_hours`),
  because a document is stored when its call ends, later than its `start`; only
  documents whose `start` falls in the day are shown.
- `users/` lists the account's users (`GET …/users`) and every owner met in the
  account's day listings. A user's day folder is the account's day listing filtered
  by `owner_id`: one listing serves the account view and every user under it, so
  users whose document was deleted (their `/users/{U}/recordings` answers 404) keep
  their recordings. A user's year and month levels come from what the account's day
  listings and probes already told, else from probes of the user's own listing
  (`/users/{U}/recordings`, or the account listing with `filter_owner_id` for a
  departed user).
- Sizes are not in the listing: the core learns them from the media (a ranged GET
  whose answer states the total), with `Accept: audio/mpeg`.
- The file's extension comes from the listing's `_read_only.content_types` (the
  stored attachment's type, which is exactly the Content-Type the media GET
  answers, e.g. audio/wav although audio/mpeg is asked for), else `content_type`,
  else `media_type`. A document whose `content_types` is empty has no media and is
  not shown; one that answers 404 anyway keeps no size and its reads fail with EIO and
  a log line naming it. A recording's id names the month its call started, and a GET
  or DELETE by id looks in that month's database, but the document is saved where
  the call ended: a call over a month's end is listed yet answers 404 by id, and the
  log line says so.
- Deletes (only with `allow_delete = true`): where the server offers PATCH
  `soft_delete` (seed 003; detected once per mount, a 405 means no), `rm` marks the
  recording deleted, naming who deleted it, `deleted/` shows the marked recordings and
  `mv` of one back into its day folder restores it (PATCH `soft_restore`). Elsewhere
  `DELETE …/recordings/{id}`, Kazoo's default soft delete. A 404 means the document is
  already gone and counts as success, unless a listing still shows it.
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
import re
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Hashable

import trio

from ..config import Secret, SourceOptions, option
from ..http import (AuthError, CachedToken, ForbiddenError, Http, HttpError, Target, AuthTarget,
                    describe_error_body, safe_url)
from ..search import Query, Record, day_bounds, direction_of, number_of
from .base import Entry, Hit, Kind, Listing, Source, SourceError

log = logging.getLogger("recfs.sources.kazoo")

GREGORIAN_OFFSET = 62167219200       # Unix epoch in Gregorian seconds (kz_types.hrl)
SERVICE_MAX_RANGE = 31 * 86400 + 3600  # crossbar.maximum_range unless the operator set less
MIN_RANGE = 3600                     # a server that takes less per query is not worth listing
DAY = 86400
CLOCK_SKEW = 3600                    # seconds of disagreement tolerated between clocks
DEFAULT_SINCE_DAYS = 90
DEFAULT_TOKEN_LIFETIME = 3600.0
REFUSED_PAUSE = 300.0                # seconds a refused API key is not offered again
CLOSED_DAY_TTL = 6 * 3600.0          # a past day's listing rarely changes
PROBES_AT_ONCE = 8                   # probes of one folder's periods in flight
# a day's documents, as listed for the account view, are kept (compressed, per owner)
# so that users/{owner}/…/{day} needs no request of its own; at most this many bytes
MEMO_BYTES = 64 << 20
CARRIED_DAYS = 8                # next days' documents kept from a day's window (a walk goes day by day)
FIRST_PAGES = 62                # days' first pages kept from their months' probes (two months' days)
MEMO_FIELDS = ("id", "name", "start", "duration_ms", "content_type", "media_type", "url",
               "_read_only", "soft_delete", "call_id", "caller_id_name", "caller_id_number",
               "callee_id_name", "callee_id_number", "direction", "owner_id")
DELETED = ("deleted",)               # the view of soft-deleted recordings (never an owner id)
NO_SUCH_ID = "0" * 32                # a recording id no server holds (soft-delete detection)
STORE_MARGIN = 600                   # seconds after its end within which a call is stored

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
_MORE_THAN = re.compile(r"more than (\d+) seconds")


def unix_to_gregorian(t: float) -> int:
    return int(t) + GREGORIAN_OFFSET


def gregorian_to_unix(g: int) -> int:
    return int(g) - GREGORIAN_OFFSET


def day_start(d: dt.date) -> int:
    return int(dt.datetime(d.year, d.month, d.day, tzinfo=dt.timezone.utc).timestamp())


def utc_date(t: float) -> dt.date:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).date()


def period_bounds(period: tuple[int, ...]) -> tuple[int, int]:
    """[start, end) in Unix seconds of a year (Y,), a month (Y, M) or a day (Y, M, D)."""
    if len(period) == 1:
        return day_start(dt.date(period[0], 1, 1)), day_start(dt.date(period[0] + 1, 1, 1))
    if len(period) == 2:
        y, m = period
        return day_start(dt.date(y, m, 1)), day_start(dt.date(y + (m == 12), m % 12 + 1, 1))
    first = day_start(dt.date(*period))
    return first, first + DAY


def month_name(t: float) -> str:
    return f"{utc_date(t):%Y-%m}"


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


class KeyRefused(AuthError):
    """api_auth refused the API key. `reason` is the line a user reads at mount time."""

    def __init__(self, message: str, status: int, reason: str):
        super().__init__(message, status)
        self.reason = reason


class UnknownUser(HttpError):
    """`/users/{U}/recordings` answered 404: the user document is deleted (cb_users)."""


class KazooAuth(CachedToken):
    """`PUT /api_auth` with the API key; the token goes in X-Auth-Token.

    A refusal is remembered for REFUSED_PAUSE seconds: every request of the mount
    would otherwise ask api_auth again, and each ask costs 35 rate-limit tokens."""

    def __init__(self, http: Http, api_url: str, api_key: Secret | str, what: str = "kazoo",
                 clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.http = http
        self.url = f"{api_url.rstrip('/')}/api_auth"
        self.api_key = api_key
        self.what = what
        self.clock = clock
        self.account_id: str | None = None
        self.owner_id: str | None = None
        self.asked = 0
        self._refused: tuple[float, KeyRefused] | None = None

    async def fetch(self) -> tuple[str, float]:
        if self._refused is not None:
            until, refusal = self._refused
            if self.clock() < until:
                raise refusal
            self._refused = None
        key = self.api_key.reveal() if isinstance(self.api_key, Secret) else self.api_key
        self.asked += 1
        resp = await self.http.request("PUT", self.url, name=f"{self.what}: api_auth",
                                       json={"data": {"api_key": key}},
                                       headers={"Accept": "application/json"}, expect=None)
        if resp.status_code in (400, 401, 403, 404):
            # 404: no account has the key; 400: not a 64-character key (the answer
            # repeats the key, so nothing of it is kept)
            reason = f"the API key was refused by {safe_url(self.url)}"
            refusal = KeyRefused(f"{self.what}: {reason}", resp.status_code, reason)
            self._refused = (self.clock() + REFUSED_PAUSE, refusal)
            raise refusal
        if resp.status_code not in (200, 201):
            raise HttpError(f"{self.what}: api_auth answered HTTP {resp.status_code} at "
                            f"{safe_url(self.url)}", resp.status_code)
        try:
            body = resp.json()
            token = str(body["auth_token"])
            self.account_id = str(body["data"]["account_id"])
            owner = body["data"].get("owner_id")
            self.owner_id = owner if isinstance(owner, str) and owner else None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise HttpError(f"{self.what}: malformed api_auth response ({type(exc).__name__})") from None
        lifetime = jwt_lifetime(token)
        if lifetime is None or lifetime <= 0:
            lifetime = DEFAULT_TOKEN_LIFETIME
        return token, lifetime

    def render(self, token: str) -> dict[str, str]:
        return {"X-Auth-Token": token}


STOPPED, DONE, CUT = "stopped", "done", "cut"      # how a scan ended


class _TooWide(Exception):
    """A listing window was wider than the server takes; the limit is learnt."""


Visit = Callable[[dict[str, Any]], bool]     # a document -> stop here?


@dataclass(slots=True)
class Page:
    """The first page of a listing window, kept so that a later scan of the same window
    goes on from its cursor (`next_key`; None: the page was the whole window)."""
    window: tuple[int, int]
    ascending: bool
    docs: list[dict[str, Any]]
    next_key: str | None


class KazooClient:
    """The Crossbar calls recfs needs; no layout here."""

    def __init__(self, http: Http, api_url: str, api_key: Secret | str, *, page_size: int = 200,
                 what: str = "kazoo"):
        self.http = http
        self.api_url = api_url.rstrip("/")
        self.page_size = page_size
        self.what = what
        self.auth = KazooAuth(http, self.api_url, api_key, what)
        self.max_range = SERVICE_MAX_RANGE      # seconds one listing may span; learnt lower
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

    async def list_window(self, account_id: str, start: int, end: int, owner_id: str | None = None,
                          extra: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Every document created in [start, end) (Unix seconds), all pages, newest first."""
        docs: list[dict[str, Any]] = []

        def keep(doc: dict[str, Any]) -> bool:
            docs.append(doc)
            return False
        await self.scan(account_id, start, end, keep, owner_id=owner_id, extra=extra)
        return docs

    async def scan(self, account_id: str, start: int, end: int, visit: Visit, *,
                   owner_id: str | None = None, extra: dict[str, str] | None = None,
                   first_page: int | None = None, ascending: bool = False,
                   pages_per_window: int | None = None, resume: Page | None = None) -> str:
        """Hand each document created in [start, end) (Unix seconds) to `visit`, newest
        first (oldest first with `ascending`), until it returns True. The span is listed
        in windows the server takes, each walked page by page; `first_page` is the page
        size of each window's first request (a probe asks for one document), later pages
        are `page_size`; `pages_per_window` stops each window after that many pages.
        `extra` adds query parameters (crossbar filters); `resume`, the first page of the
        first window listed before (`first_page`), is walked on from its cursor. Returns
        STOPPED (`visit` said so), DONE (every document seen) or CUT (a window had more
        pages)."""
        lo, hi = int(start), int(end)
        outcome = DONE
        while lo < hi:
            span = self.max_range
            a, b = (lo, min(hi, lo + span)) if ascending else (max(lo, hi - span), hi)
            kept = resume if resume is not None and resume.window == (a, b) \
                and resume.ascending == ascending else None
            resume = None
            try:
                got = await self._window(account_id, a, b, visit, owner_id, extra, first_page,
                                         ascending, pages_per_window, kept)
            except _TooWide:
                continue                        # the same span again, in the learnt width
            if got == STOPPED:
                return STOPPED
            if got == CUT:
                outcome = CUT
            if ascending:
                lo = b
            else:
                hi = a
        return outcome

    async def first_page(self, account_id: str, start: int, end: int, *,
                         ascending: bool = False) -> Page:
        """The first page of what `scan` of [start, end) would list first, to be handed
        to it later as `resume`."""
        url = self.recordings_url(account_id)
        while True:
            span = self.max_range
            a, b = (start, min(end, start + span)) if ascending else (max(start, end - span), end)
            try:
                body = await self._listing(url, self._params(a, b, self.page_size, ascending, None),
                                           (a, b), None)
            except _TooWide:
                continue
            return Page((a, b), ascending, [d for d in body["data"] if isinstance(d, dict)],
                        body.get("next_start_key") or None)

    @staticmethod
    def _params(a: int, b: int, page_size: int, ascending: bool,
                extra: dict[str, str] | None) -> dict[str, Any]:
        params: dict[str, Any] = {"created_from": unix_to_gregorian(a),
                                  "created_to": unix_to_gregorian(b) - 1,
                                  "page_size": page_size, **(extra or {})}
        if ascending:
            params["ascending"] = "true"
        return params

    async def _window(self, account_id: str, a: int, b: int, visit: Visit, owner_id: str | None,
                      extra: dict[str, str] | None, first_page: int | None, ascending: bool,
                      pages: int | None, resume: Page | None) -> str:
        url = self.recordings_url(account_id, owner_id)
        params = self._params(a, b, first_page or self.page_size, ascending, extra)
        seen: set[str] = set()
        first = True
        body: dict[str, Any] | None = None
        if resume is not None:
            body = {"data": resume.docs, "next_start_key": resume.next_key}
        while True:
            if body is None:
                body = await self._listing(url, params, (a, b) if first else None, owner_id)
            first = False
            for doc in body["data"]:
                if isinstance(doc, dict) and visit(doc):
                    return STOPPED
            nxt = body.get("next_start_key")
            body = None
            if not nxt:
                return DONE
            if pages is not None:
                pages -= 1
                if pages <= 0:
                    return CUT
            if not isinstance(nxt, str) or nxt in seen:
                raise SourceError(f"{self.what}: the listing cursor of {safe_url(url)} "
                                  f"went round in a loop")
            seen.add(nxt)
            params = dict(params, start_key=nxt, page_size=self.page_size)

    async def _listing(self, url: str, params: dict[str, Any], window: tuple[int, int] | None,
                       owner_id: str | None) -> dict[str, Any]:
        resp = await self.http.request("GET", url, name=f"{self.what}: list recordings",
                                       auth=self.auth, params=params,
                                       headers={"Accept": "application/json"}, expect=None)
        self.pages += 1
        if resp.status_code == 400 and window is not None and "date_range" in resp.text:
            self._learn_range(resp, window)
            raise _TooWide()
        if resp.status_code == 404 and owner_id:
            raise UnknownUser(f"{self.what}: user {owner_id} is not in the users API (HTTP 404)", 404)
        if resp.status_code != 200:
            cls = ForbiddenError if resp.status_code == 403 else HttpError
            raise cls(f"{self.what}: list recordings: HTTP {resp.status_code} from {safe_url(url)}"
                      f"{describe_error_body(resp)}", resp.status_code)
        try:
            body = resp.json()
            if not isinstance(body.get("data"), list):
                raise TypeError("data is not a list")
        except (ValueError, TypeError, AttributeError) as exc:
            raise SourceError(f"{self.what}: malformed listing from {safe_url(url)} ({exc})") from None
        return body

    def _learn_range(self, resp, window: tuple[int, int]) -> None:
        """A 400 date_range: the server's crossbar.maximum_range is below the window.
        Its message names the limit ("created_to T is more than N seconds from
        created_from F"); without one, half the window is tried."""
        width = window[1] - window[0]
        limit = None
        match = _MORE_THAN.search(resp.text)
        if match and 0 < int(match.group(1)) < width:
            limit = int(match.group(1))
        learnt = limit if limit is not None else width // 2
        if learnt < MIN_RANGE:
            raise SourceError(f"{self.what}: the service refuses every listing window "
                              f"(400 date_range for {width} seconds)")
        if learnt >= self.max_range:
            return                      # learnt meanwhile, from another listing's answer
        self.max_range = learnt
        log.warning("%s: the service lists at most %d seconds (%.1f days) of recordings per "
                    "query (its crossbar.maximum_range%s); listings are split into windows "
                    "that fit", self.what, self.max_range, self.max_range / DAY,
                    "" if limit is not None else ", found by halving")

    async def users(self, account_id: str) -> list[dict[str, Any]]:
        """The account's users (`GET …/users`, every page)."""
        url = f"{self.api_url}/accounts/{account_id}/users"
        params: dict[str, Any] = {"page_size": self.page_size}
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        while True:
            resp = await self.http.request("GET", url, name=f"{self.what}: list users",
                                           auth=self.auth, params=params,
                                           headers={"Accept": "application/json"})
            try:
                body = resp.json()
                data = body["data"]
                if not isinstance(data, list):
                    raise TypeError("data is not a list")
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                raise SourceError(f"{self.what}: malformed users listing ({exc})") from None
            out.extend(u for u in data if isinstance(u, dict))
            nxt = body.get("next_start_key")
            if not nxt or not isinstance(nxt, str) or nxt in seen:
                return out
            seen.add(nxt)
            params = dict(params, start_key=nxt)

    async def patch_recording(self, account_id: str, recording_id: str, data: dict[str, Any]):
        """PATCH a recording document (seed 003's soft_delete / soft_restore); the answer,
        whatever its status."""
        return await self.http.request("PATCH", self.media_url(account_id, recording_id),
                                       name=f"{self.what}: patch recording", auth=self.auth,
                                       json={"data": data}, headers={"Accept": "application/json"},
                                       expect=None)

    async def delete_recording(self, account_id: str, recording_id: str) -> bool:
        """Soft-delete a recording (the API's default). True when this request deleted
        it, False when the service says it is not there (404)."""
        url = self.media_url(account_id, recording_id)
        # a retried DELETE whose first try went through answers 404: still a success
        resp = await self.http.request("DELETE", url, name=f"{self.what}: delete recording",
                                       auth=self.auth, headers={"Accept": "application/json"},
                                       expect=(200, 404))
        return resp.status_code == 200


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


def _is_soft_deleted(doc: dict[str, Any]) -> bool:
    """Marked by seed 003's PATCH soft_delete (listed only with include=soft_delete)."""
    return bool(doc.get("soft_delete"))


def _pack(docs: list[dict[str, Any]]) -> bytes:
    return zlib.compress(json.dumps([{k: d[k] for k in MEMO_FIELDS if k in d} for d in docs],
                                    separators=(",", ":")).encode())


def _unpack(packed: bytes) -> list[dict[str, Any]]:
    return json.loads(zlib.decompress(packed))


# --------------------------------------------------------------------------- what is known

def recording_ref(account: str, rid: str, duration_ms: Any = 0, owner: Any = None) -> tuple:
    """A recording's `Entry.ref`: ("rec", account, id, duration in ms, owner id or None),
    what its verbs need after the listing (whose metadata the core then keeps on disk
    only): the duration tells a call that ran over a month's end, the owner where a
    restored recording may go. (Refs of three items, from older indexes, still serve.)"""
    try:
        duration = max(0, int(duration_ms))
    except (TypeError, ValueError):
        duration = 0
    return ("rec", account, rid, duration, owner if isinstance(owner, str) and owner else None)


@dataclass(slots=True)
class Probe:
    """Whether a period of one view holds a recording: the newest start found (None:
    nothing), when that was asked, and whether the period is over (the answer stays)."""
    newest: int | None
    at: float
    closed: bool


@dataclass(slots=True)
class Carried:
    """What the account's window of one day saw of the next day: every document stored
    before the next day's body (see `_day_of`), listed at `at`. The next day's listing
    then asks only for its body."""
    at: float
    docs: list[dict[str, Any]]


@dataclass(slots=True)
class FirstPage:
    """The first page of a closed day's body, listed at `at` by its month's probe of the
    day; the day's listing goes on from it (documents packed, as kept days are)."""
    at: float
    window: tuple[int, int]
    packed: bytes
    next_key: str | None

    def page(self) -> Page:
        return Page(self.window, True, _unpack(self.packed), self.next_key)


@dataclass(slots=True)
class DaySummary:
    """What the account's listing of one day said: its newest start and, per owner, the
    newest start of theirs (the users/ levels are derived from it)."""
    at: float
    closed: bool
    newest: int | None
    owners: dict[str, int]


# --------------------------------------------------------------------------- source

class KazooSource(Source):
    kind = "kazoo"
    folders_are_places = True       # accounts, views and dates of the recordings
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
        self._accounts: list[str] | None = None
        self._probes: dict[tuple, Probe] = {}
        self._days: dict[tuple[str, dt.date], DaySummary] = {}
        self._memo: OrderedDict[tuple[str, dt.date], dict[str, bytes]] = OrderedDict()
        self._memo_bytes = 0
        # the day folders (account, day) -> {views} the kept documents already answered:
        # kept documents answer a folder once, and the folder listed again (its TTL, or
        # `recfs refresh`) asks the server, as a listing that nobody kept would
        self._answered: dict[tuple[str, dt.date], set[str | None]] = {}
        # (account, day) -> the part of the day its previous day's window already listed
        self._carried: OrderedDict[tuple[str, dt.date], Carried] = OrderedDict()
        # (account, day) -> the first page of the day's body, listed by a probe of the day
        self._first_pages: OrderedDict[tuple[str, dt.date], FirstPage] = OrderedDict()
        self._locks: dict[Hashable, trio.Lock] = {}
        self._users: dict[str, tuple[float, dict[str, dict[str, Any]]]] = {}
        self._departed: set[tuple[str, str]] = set()     # (account, owner): users API says 404
        self._soft_delete: bool | None = None            # PATCH soft_delete offered? (once)
        # (account, recording id) deleted or restored through this mount: a listing that
        # was in flight meanwhile (or a lazily updated view) must not undo it here
        self._deleted: set[tuple[str, str]] = set()
        self._restored: set[tuple[str, str]] = set()

    @property
    def auth(self) -> KazooAuth:
        return self.client.auth

    async def start(self) -> None:
        try:
            own = await self.client.own_account()
        except KeyRefused as exc:
            raise SourceError(exc.reason) from None
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

    def _lock(self, key: Hashable) -> trio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = trio.Lock()
        return lock

    def _closed(self, end: float, now: float) -> bool:
        """A period ending at `end` is over: nothing it holds is stored any more."""
        return end + self.lag + CLOCK_SKEW < now

    def _valid(self, at: float, closed: bool, now: float) -> bool:
        return closed or now - at < self.listing_ttl

    # -- listings

    async def list_dir(self, ref: Hashable) -> Listing:
        what = ref[0]
        if what == "root":
            # the root must not cost a probe, so accounts show the mount's start
            return Listing([self._dir(a, ("acct", a), mtime=self.created_at)
                            for a in await self.accounts()])
        if what == "acct":
            account = ref[1]
            entries = await self._period_dirs(account, None, ())
            newest = max((e.mtime for e in entries), default=self.created_at)
            if self.user_view:
                entries.append(self._dir("users", ("users", account), mtime=newest))
            if await self._offers_soft_delete(account):
                entries.append(self._dir("deleted", ("deleted", account), mtime=newest))
            return Listing(entries)
        if what == "users":
            return Listing(await self._owner_dirs(ref[1]))
        if what == "user":
            _, account, owner = ref
            return Listing(await self._period_dirs(account, owner, ()))
        if what == "deleted":
            return Listing(await self._period_dirs(ref[1], DELETED, ()))
        if what in ("year", "month"):
            _, account, view, *period = ref
            return Listing(await self._period_dirs(account, _view(view), tuple(period)))
        if what == "day":
            _, account, view, y, m, d = ref
            return await self._list_day(account, _view(view), dt.date(y, m, d))
        raise SourceError(f"kazoo source {self.name!r}: unknown folder {ref!r}", errno.ENOENT)

    def _dir(self, name: str, ref: tuple, mtime: float = 0.0,
             xattrs: dict[str, str] | None = None) -> Entry:
        return Entry(name=name, kind=Kind.DIR, ref=ref, mtime=float(mtime), size=0,
                     xattrs=xattrs or {})

    def _sub_periods(self, period: tuple[int, ...], now: float) -> list[tuple[int, ...]]:
        """The years, months of a year or days of a month that lie between `since` and now."""
        first, last = utc_date(self.since), utc_date(now)
        if not period:
            return [(y,) for y in range(first.year, last.year + 1)]
        if len(period) == 1:
            y = period[0]
            return [(y, m) for m in range(1, 13)
                    if (first.year, first.month) <= (y, m) <= (last.year, last.month)]
        y, m = period
        out = []
        d = dt.date(y, m, 1)
        while d.month == m:
            if first <= d <= last:
                out.append((y, m, d.day))
            d += dt.timedelta(days=1)
        return out

    async def _period_dirs(self, account: str, view, period: tuple[int, ...]) -> list[Entry]:
        """The folders of the next level under `period` that hold a recording of `view`
        (None: the account's; an owner id: theirs; DELETED: soft-deleted ones)."""
        subs = self._sub_periods(period, self.clock())
        if len(period) == 2:
            await self._survey(account, view, period)
        newest: dict[tuple[int, ...], int | None] = {}
        limiter = trio.CapacityLimiter(PROBES_AT_ONCE)

        async def one(sub: tuple[int, ...]) -> None:
            async with limiter:
                newest[sub] = await self._newest(account, view, sub)
        async with trio.open_nursery() as nursery:
            for sub in subs:
                nursery.start_soon(one, sub)
        level = ("year", "month", "day")[len(period)]
        return [self._dir(f"{sub[-1]:0{4 if level == 'year' else 2}d}",
                          (level, account, _stored(view), *sub), mtime=newest[sub])
                for sub in subs if newest[sub] is not None]

    # -- what a period holds: derived from what is known, else probed

    async def _newest(self, account: str, view, period: tuple[int, ...]) -> int | None:
        key = (account, _stored(view), period)
        now = self.clock()
        known = self._probes.get(key)
        if known is not None and self._valid(known.at, known.closed, now):
            return known.newest
        async with self._lock(("probe", key)):
            known = self._probes.get(key)
            if known is not None and self._valid(known.at, known.closed, now):
                return known.newest
            derived, newest = self._derive(account, view, period, now)
            if not derived:
                newest = await self._probe(account, view, period)
            self._probes[key] = Probe(newest, now, self._closed(period_bounds(period)[1], now))
            return newest

    def _day_known(self, account: str, day: dt.date, now: float) -> DaySummary | None:
        """What is known of the account's recordings on `day` without asking: its day
        listing, or a probe that found nothing in the day, its month or its year."""
        summary = self._days.get((account, day))
        if summary is not None and self._valid(summary.at, summary.closed, now):
            return summary
        for period in ((day.year, day.month, day.day), (day.year, day.month), (day.year,)):
            probe = self._probes.get((account, None, period))
            if probe is not None and probe.newest is None and self._valid(probe.at, probe.closed, now):
                return DaySummary(now, probe.closed, None, {})
        return None

    def _derive(self, account: str, view, period: tuple[int, ...], now: float) -> tuple[bool, int | None]:
        """(known, newest start) of a period from the account's day listings and probes;
        known is False when a day of it is unknown and none tells it holds a recording."""
        if view == DELETED:
            return False, None
        p0, p1 = period_bounds(period)
        lo, hi = max(p0, self.since), min(p1, day_start(utc_date(now)) + DAY)
        newest: int | None = None
        complete = True
        day = utc_date(lo) if lo < hi else None
        while day is not None and day_start(day) < hi:
            summary = self._day_known(account, day, now)
            if summary is None:
                complete = False
            else:
                t = summary.newest if view is None else summary.owners.get(view)
                if t is not None and (newest is None or t > newest):
                    newest = t
            day += dt.timedelta(days=1)
        return (complete or newest is not None), newest

    async def _probe(self, account: str, view, period: tuple[int, ...]) -> int | None:
        """The start of a recording of `view` whose call started in `period`, or None:
        the period's creation window, newest first, one document a request until one
        starts in the period; if none does, the hours after it (a call that started in
        the period is stored when it ends)."""
        p0, p1 = period_bounds(period)
        lo = max(p0, self.since)
        now = int(self.clock())
        if lo >= p1 or lo > now + CLOCK_SKEW:
            return None
        if view is None and len(period) == 3 and lo == p0 and self._closed(p1, now):
            newest = await self._probe_day_body(account, dt.date(*period))
            if newest is not None:
                return newest
        found: list[int] = []

        def visit(doc: dict[str, Any]) -> bool:
            start = self._shown_start(account, view, doc)
            if start is not None and lo <= start < p1:
                found.append(start)
                return True
            return False
        await self._scan(account, view, lo - CLOCK_SKEW, min(p1, now + CLOCK_SKEW), visit, first_page=1)
        if not found and p1 < now + CLOCK_SKEW:
            await self._scan(account, view, p1, min(p1 + self.lag, now + CLOCK_SKEW), visit,
                             first_page=1, ascending=True)
        return found[0] if found else None

    async def _probe_day_body(self, account: str, day: dt.date) -> int | None:
        """A closed day of the account probed by the first page of its body, which its
        listing then goes on from (so the probe costs the walk no request): the newest
        start of the day on that page, or None when none of the page's documents
        started in the day (a day whose calls all ended before its body, or none)."""
        first = day_start(day)
        page = await self.client.first_page(account, self._body_start(day), first + DAY + self.lag,
                                            ascending=True)
        self._first_pages[(account, day)] = FirstPage(self.clock(), page.window, _pack(page.docs),
                                                      page.next_key)
        while len(self._first_pages) > FIRST_PAGES:
            self._first_pages.popitem(last=False)
        starts = [start for doc in page.docs
                  if (start := self._shown_start(account, None, doc)) is not None
                  and first <= start < first + DAY]
        return max(starts, default=None)

    def _body_start(self, day: dt.date) -> int:
        """Where a day's body begins: where the previous day's window ended, less a
        second's overlap (a document is kept once)."""
        return day_start(day) + self.lag - 1

    async def _scan(self, account: str, view, start: int, end: int, visit: Visit, **kw) -> str:
        """Scan a window of the listing that holds `view`'s recordings."""
        if view is None:
            return await self.client.scan(account, start, end, visit, **kw)
        if view == DELETED:
            return await self.client.scan(account, start, end, visit, **kw,
                                          extra={"include": "soft_delete", "has_key": "soft_delete"})
        if (account, view) not in self._departed:
            try:
                return await self.client.scan(account, start, end, visit, owner_id=view, **kw)
            except UnknownUser:
                self._departed.add((account, view))
                log.info("%s: user %s of account %s is gone from the users API (404); their "
                         "recordings are found in the account's listing", self.name, view, account)
        return await self.client.scan(account, start, end, visit, **kw,
                                      extra={"filter_owner_id": view})

    def _shown_start(self, account: str, view, doc: dict[str, Any]) -> int | None:
        """The start of `doc` if it is shown in `view`, else None."""
        rid = doc.get("id")
        start = start_of(doc)
        if not isinstance(rid, str) or not rid or start is None or start < self.since \
                or has_no_media(doc):
            return None
        marked = _is_soft_deleted(doc) and (account, rid) not in self._restored
        if view == DELETED:
            return start if marked else None
        if marked or (account, rid) in self._deleted:
            return None
        if view is not None and doc.get("owner_id") != view:
            return None
        return start

    # -- day folders

    async def _list_day(self, account: str, view, day: dt.date) -> Listing:
        first = day_start(day)
        now = self.clock()
        if view is None:
            shown = await self._account_day(account, day)
        elif view == DELETED:
            shown = await self._day_of(account, DELETED, day)
        else:
            shown = await self._user_day(account, view, day)
        entries = []
        for doc, start in shown:
            entry = self._file_entry(account, doc, start, deleted=view == DELETED)
            if entry is not None:
                entries.append(entry)
        closed = self._closed(first + DAY, now)
        return Listing(entries, ttl=max(CLOSED_DAY_TTL, self.listing_ttl) if closed else None)

    async def _day_of(self, account: str, view, day: dt.date) -> list[tuple[dict[str, Any], int]]:
        """`view`'s recordings that started on `day`: one window, from an hour before
        the day to `created_lag_hours` after it, oldest first. It is two parts for the
        account: the head, up to `created_lag_hours` into the day, and the body after
        it. The window overlaps the next day's by those hours: what it saw of the next
        day (its head) is carried to that day's listing (within the listing TTL); a
        month's probe of a closed day lists the first page of the day's body, and the
        listing goes on from it. So a walk of consecutive days reads each stored
        document about once, and the probes of their month cost it nothing."""
        first = day_start(day)
        now = self.clock()
        docs: dict[str, tuple[dict[str, Any], int]] = {}
        body = self._body_start(day)
        lo = first - CLOCK_SKEW
        carried = self._carried.pop((account, day), None) if view is None else None
        if carried is not None and now - carried.at < self.listing_ttl:
            for doc in carried.docs:
                start = self._shown_start(account, None, doc)
                if start is not None and first <= start < first + DAY:
                    docs.setdefault(doc["id"], (doc, start))
            lo = body
        kept = self._first_pages.pop((account, day), None) if view is None else None
        page = kept.page() if kept is not None and now - kept.at < self.listing_ttl else None
        following: list[dict[str, Any]] = []

        def visit(doc: dict[str, Any]) -> bool:
            began = start_of(doc)
            if began is None:
                log.debug("%s: recording %s has no start; not shown", self.name, doc.get("id"))
                return False
            start = self._shown_start(account, view, doc)
            if start is not None and first <= start < first + DAY:
                docs.setdefault(doc["id"], (doc, start))
            elif view is None and first + DAY <= began < first + 2 * DAY:
                following.append(doc)
            return False
        end = first + DAY + self.lag
        if page is not None and lo < body:
            await self._scan(account, view, lo, body, visit, ascending=True)
            lo = body
        outcome = await self._scan(account, view, lo, end, visit, ascending=True, resume=page)
        if view is None and outcome == DONE and self._closed(first + DAY, now):
            # every document stored up to `end` was there to be listed: the next day's
            # listing needs only its body
            self._carried[(account, day + dt.timedelta(days=1))] = Carried(now, following)
            while len(self._carried) > CARRIED_DAYS:
                self._carried.popitem(last=False)
        return list(docs.values())

    def forget(self, ref: Hashable) -> None:
        # `recfs refresh`: the days below it are asked for whole again
        for ahead in (self._carried, self._first_pages):
            if ref == ("root",):
                ahead.clear()
            elif isinstance(ref, tuple) and len(ref) > 1 and isinstance(ref[1], str):
                for key in [k for k in ahead if k[0] == ref[1]]:
                    del ahead[key]

    async def _account_day(self, account: str, day: dt.date) -> list[tuple[dict[str, Any], int]]:
        """The account's recordings of `day`: from what this mount learnt of the day in
        the last `listing_ttl` (a survey of its month, say) if that has not answered
        this folder yet, else listed now. (So a past day is listed again when its folder
        is: at its TTL, or after `recfs refresh`.)"""
        async with self._lock(("day", account, day)):
            now = self.clock()
            kept = self._take_kept(account, day, now, None)
            if kept is not None:
                return kept
            shown = await self._day_of(account, None, day)
            self._learn_day(account, day, shown, now)
            self._answered[(account, day)].add(None)
            return shown

    def _learn_day(self, account: str, day: dt.date, shown: list[tuple[dict[str, Any], int]],
                   now: float) -> None:
        """Keep what a complete listing of the account's `day` said: the summary per
        owner always, the documents (compressed, per owner; "" for those without one)
        within MEMO_BYTES."""
        owners: dict[str, list[dict[str, Any]]] = {}
        newest: dict[str, int] = {}
        for doc, start in shown:
            owner = doc.get("owner_id")
            owner = owner if isinstance(owner, str) else ""
            owners.setdefault(owner, []).append(doc)
            if owner:
                newest[owner] = max(newest.get(owner, 0), start)
        self._answered[(account, day)] = set()
        closed = self._closed(day_start(day) + DAY, now)
        latest = max((s for _, s in shown), default=None)
        self._days[(account, day)] = DaySummary(now, closed, latest, newest)
        # the day folder's mtime from now on: a probe by the day's first page saw part of it
        self._probes[(account, None, (day.year, day.month, day.day))] = Probe(latest, now, closed)
        self._remember(account, day, {o: _pack(docs) for o, docs in owners.items()})

    def _take_kept(self, account: str, day: dt.date, now: float,
                   owner: str | None) -> list[tuple[dict[str, Any], int]] | None:
        """The kept documents of `day` for the folder of `owner` (None: the account's),
        unless they already answered that folder since they were learnt."""
        answered = self._answered.get((account, day))
        if answered is None or owner in answered:
            return None
        kept = self._kept_docs(account, day, now, owner, recent=owner is None)
        if kept is not None:
            answered.add(owner)
        return kept

    def _kept_docs(self, account: str, day: dt.date, now: float, owner: str | None, *,
                   recent: bool = False) -> list[tuple[dict[str, Any], int]] | None:
        """`owner`'s (None: everybody's) recordings of `day` from the kept documents of
        the account's day, or None when they are not kept or no longer current (with
        `recent`: learnt more than `listing_ttl` ago, even for a past day)."""
        summary = self._days.get((account, day))
        packed = self._memo.get((account, day))
        if summary is None or packed is None or \
                not self._valid(summary.at, summary.closed and not recent, now):
            return None
        self._memo.move_to_end((account, day))
        out = []
        for who, blob in packed.items():
            if owner is not None and who != owner:
                continue
            for doc in _unpack(blob):
                start = self._shown_start(account, owner, doc)
                if start is not None:
                    out.append((doc, start))
        return out

    def _remember(self, account: str, day: dt.date, packed: dict[str, bytes]) -> None:
        self._forget_memo(account, day)
        self._memo[(account, day)] = packed
        self._memo_bytes += sum(len(b) for b in packed.values())
        while self._memo_bytes > MEMO_BYTES and len(self._memo) > 1:
            old = next(iter(self._memo))
            self._forget_memo(*old)

    def _forget_memo(self, account: str, day: dt.date) -> None:
        packed = self._memo.pop((account, day), None)
        if packed is not None:
            self._memo_bytes -= sum(len(b) for b in packed.values())

    async def _user_day(self, account: str, owner: str, day: dt.date) -> list[tuple[dict[str, Any], int]]:
        """An owner's recordings of `day`: from the account's listing of the day (made
        now if this mount has not made it yet, for every owner at once), or, when that
        listing's documents are no longer kept, from the owner's own listing."""
        now = self.clock()
        summary = self._day_known(account, day, now)
        if summary is not None:
            if owner not in summary.owners:
                return []
            kept = self._take_kept(account, day, now, owner)
            if kept is not None:
                return kept
            return await self._day_of(account, owner, day)
        shown = [(doc, start) for doc, start in await self._account_day(account, day)
                 if doc.get("owner_id") == owner]
        self._answered.setdefault((account, day), set()).add(owner)
        return shown

    async def _survey(self, account: str, view, month: tuple[int, int]) -> None:
        """Before a month's days are probed one by one: one page of the month's listing
        (per window the server takes). When the month fits in it, every day of the
        month is known from it, and for the account view every owner and document of
        each day too; otherwise the days it showed are known to hold recordings."""
        now = self.clock()
        days = self._sub_periods(month, now)
        if all(self._known(account, view, d, now) for d in days):
            return
        p0, p1 = period_bounds(month)
        lo = max(p0, self.since)
        seen: dict[str, tuple[dict[str, Any], int]] = {}

        def visit(doc: dict[str, Any]) -> bool:
            start = self._shown_start(account, view, doc)
            if start is not None and lo <= start < p1:
                seen.setdefault(doc["id"], (doc, start))
            return False
        async with self._lock(("survey", account, _stored(view), month)):
            if all(self._known(account, view, d, now) for d in days):
                return
            end = min(p1, int(now) + CLOCK_SKEW)
            complete = await self._scan(account, view, lo - CLOCK_SKEW, end, visit,
                                        pages_per_window=1) == DONE
            if complete and p1 < now + CLOCK_SKEW and self.lag:
                complete = await self._scan(account, view, p1, min(p1 + self.lag, int(now) + CLOCK_SKEW),
                                            visit, ascending=True, pages_per_window=1) == DONE
            by_day: dict[dt.date, list[tuple[dict[str, Any], int]]] = {}
            for doc, start in seen.values():
                by_day.setdefault(utc_date(start), []).append((doc, start))
            stored = _stored(view)
            for d in days:
                day = dt.date(*d)
                shown = by_day.get(day, [])
                if not shown and not complete:
                    continue
                newest = max((start for _, start in shown), default=None)
                self._probes[(account, stored, d)] = Probe(newest, now, self._closed(day_start(day) + DAY, now))
                if complete and view is None:
                    self._learn_day(account, day, shown, now)

    def _known(self, account: str, view, day: tuple[int, ...], now: float) -> bool:
        probe = self._probes.get((account, _stored(view), day))
        if probe is not None and self._valid(probe.at, probe.closed, now):
            return True
        return self._derive(account, view, day, now)[0]

    # -- users/

    async def _owner_dirs(self, account: str) -> list[Entry]:
        """The account's users (users API) and every owner met in its day listings,
        each with their name where the users API gives one."""
        users = await self._users_of(account)
        newest: dict[str, float] = {}
        for (acct, _), summary in self._days.items():
            if acct == account:
                for owner, t in summary.owners.items():
                    newest[owner] = max(newest.get(owner, 0), t)
        entries = []
        for owner in sorted(set(users) | set(newest)):
            xattrs = {"kazoo.owner_id": owner}
            user = users.get(owner)
            if user is not None:
                name = " ".join(str(user.get(k) or "") for k in ("first_name", "last_name")).strip()
                if name:
                    xattrs["kazoo.user_name"] = name
                if user.get("username"):
                    xattrs["kazoo.username"] = str(user["username"])
            else:
                xattrs["kazoo.user_status"] = "not in the users API (deleted)"
            entries.append(self._dir(owner, ("user", account, owner),
                                     mtime=newest.get(owner, self.created_at), xattrs=xattrs))
        return entries

    async def _users_of(self, account: str) -> dict[str, dict[str, Any]]:
        now = self.clock()
        known = self._users.get(account)
        if known is not None and now - known[0] < self.listing_ttl:
            return known[1]
        try:
            listed = await self.client.users(account)
        except (HttpError, SourceError) as exc:
            log.warning("%s: cannot list the users of account %s (%s); users/ shows the owners "
                        "met in its listings", self.name, account, exc)
            return known[1] if known is not None else {}
        users = {str(u["id"]): u for u in listed if isinstance(u.get("id"), str) and u["id"]}
        self._users[account] = (now, users)
        return users

    def _file_entry(self, account: str, doc: dict[str, Any], start: int, *,
                    deleted: bool = False) -> Entry | None:
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
        if deleted and isinstance(doc.get("soft_delete"), dict):
            mark = doc["soft_delete"]
            try:
                xattrs["kazoo.deleted_at"] = dt.datetime.fromtimestamp(
                    gregorian_to_unix(int(mark["deleted_at"])), dt.timezone.utc).isoformat()
            except (KeyError, TypeError, ValueError, OverflowError, OSError):
                pass
            by = mark.get("deleted_by")
            if isinstance(by, dict):
                for k in ("account_id", "user_id"):
                    if isinstance(by.get(k), str):
                        xattrs[f"kazoo.deleted_by.{k}"] = by[k]
        try:
            hint = max(0, int(duration_ms)) * 16        # ~128 kbit/s
        except (TypeError, ValueError):
            hint = 0
        return Entry(name=name, kind=Kind.FILE, ref=recording_ref(account, rid, duration_ms, doc.get("owner_id")),
                     mtime=float(start),
                     size=None, size_hint=hint, id=rid, version=version, xattrs=xattrs)

    # -- bytes (sizes are not in the listing: the core learns them from the media)

    def target(self, entry: Entry) -> Target:
        account, rid = entry.ref[1], entry.ref[2]
        return AuthTarget(self.auth, self.client.media_url(account, rid), {"Accept": "audio/mpeg"})

    def content_error(self, entry: Entry, exc: HttpError) -> Exception:
        if exc.status == 404:
            account, rid = entry.ref[1], entry.ref[2]
            if _crosses_month(entry):
                return SourceError(
                    f"{self.name}: recording {rid} of account {account} is listed but answers "
                    f"404 by id: its call ran to the end of {_id_month(rid)}, so Kazoo saved it "
                    f"in the next month's database, while a GET by id looks only in the month "
                    f"its id names; the API cannot read it", errno.EIO)
            return SourceError(f"{self.name}: recording {rid} of account {account} has no media "
                               f"(404 bad_identifier)", errno.EIO)
        return exc

    # -- deletes, and the soft delete of seed 003

    async def _offers_soft_delete(self, account: str) -> bool:
        """Whether the server takes PATCH soft_delete (seed 003), asked once a mount: a
        PATCH of a recording id no server holds answers 405 where PATCH is not allowed
        (Kazoo 4.3), else 404; nothing is changed either way."""
        if self._soft_delete is None:
            async with self._lock("soft_delete"):
                if self._soft_delete is None:
                    rid = f"{utc_date(self.clock()):%Y%m}-{NO_SUCH_ID}"
                    try:
                        resp = await self.client.patch_recording(account, rid, {"soft_restore": {}})
                    except HttpError as exc:
                        log.warning("%s: cannot tell whether the service has soft delete: %s",
                                    self.name, exc)
                        return False
                    if resp.status_code == 405:
                        self._soft_delete = False
                    elif resp.status_code in (200, 400, 404, 409):
                        self._soft_delete = True
                        log.info("%s: the service keeps soft-deleted recordings (PATCH "
                                 "soft_delete): they are shown under deleted/", self.name)
                    else:
                        log.warning("%s: cannot tell whether the service has soft delete "
                                    "(PATCH answered HTTP %d)", self.name, resp.status_code)
                        return False
        return bool(self._soft_delete)

    async def _who(self) -> dict[str, str]:
        """Who deletes or restores: the API key's account (and its user, where api_auth
        names one)."""
        await self.auth.headers()
        by = {"account_id": self.auth.account_id or ""}
        if self.auth.owner_id:
            by["user_id"] = self.auth.owner_id
        return by

    async def delete(self, entry: Entry) -> None:
        """Delete the recording on the service: PATCH soft_delete where the server has
        it (the recording then shows under deleted/ and can be restored), else Kazoo's
        DELETE. Both views forget it here (the tree drops it from the folder it was
        deleted in; the other view's day folder loses it at its next listing)."""
        if not self.allow_delete:
            raise SourceError(f"{self.name}: deleting is off (set allow_delete = true)", errno.EROFS)
        ref = entry.ref
        if entry.kind is not Kind.FILE or not (isinstance(ref, tuple) and len(ref) >= 3
                                               and ref[0] == "rec"):
            raise SourceError(f"{self.name}: only recordings can be deleted", errno.EROFS)
        account, rid = ref[1], ref[2]
        gone = None
        if self._soft_delete is not False:
            mark = {"deleted_by": await self._who(), "deleted_at": unix_to_gregorian(self.clock())}
            gone = await self._patch(account, rid, "delete", {"soft_delete": mark})
        if gone is None:
            try:
                deleted = await self.client.delete_recording(account, rid)
            except ForbiddenError:
                raise SourceError(f"{self.name}: the API key may not delete recording {rid} of "
                                  f"account {account} (HTTP 403)", errno.EACCES) from None
            except HttpError as exc:
                raise SourceError(f"{self.name}: cannot delete recording {rid} of account "
                                  f"{account}: {exc}", errno.EIO) from None
            gone = not deleted
        if gone:
            await self._check_gone(entry, "delete")
            log.info("%s: recording %s of account %s was already gone (404); counted as deleted",
                     self.name, rid, account)
        else:
            log.info("%s: deleted recording %s of account %s (%s)%s", self.name, rid, account,
                     entry.name, " (soft delete: shown under deleted/)" if self._soft_delete else "")
        self._deleted.add((account, rid))
        self._restored.discard((account, rid))
        self._changed(account, entry.mtime)

    async def _patch(self, account: str, rid: str, what: str, data: dict[str, Any]) -> bool | None:
        """PATCH a recording: False when done, True when the service has no such document
        (404), None when the server takes no PATCH (405: remembered for the mount)."""
        try:
            resp = await self.client.patch_recording(account, rid, data)
        except HttpError as exc:
            raise SourceError(f"{self.name}: cannot {what} recording {rid} of account {account}: "
                              f"{exc}", errno.EIO) from None
        if resp.status_code == 405:
            if self._soft_delete:
                raise SourceError(f"{self.name}: the service no longer takes PATCH on recordings "
                                  f"(HTTP 405); cannot {what} recording {rid}", errno.EIO)
            self._soft_delete = False
            log.info("%s: the service has no soft delete (PATCH answered 405): rm uses DELETE",
                     self.name)
            return None
        if resp.status_code == 200:
            self._soft_delete = True
            return False
        if resp.status_code == 404:
            return True
        if resp.status_code == 403:
            raise SourceError(f"{self.name}: the API key may not {what} recording {rid} of "
                              f"account {account} (HTTP 403)", errno.EACCES)
        raise SourceError(f"{self.name}: cannot {what} recording {rid} of account {account}: "
                          f"HTTP {resp.status_code}{describe_error_body(resp)}", errno.EIO)

    async def _check_gone(self, entry: Entry, what: str) -> None:
        """The service answered 404 by id. Gone, unless a fresh listing still shows it:
        then it is a recording saved in another month's database than its id names."""
        account, rid = entry.ref[1], entry.ref[2]
        start = int(entry.mtime)
        duration = _duration_ms(entry) // 1000
        try:
            listed = await self.client.scan(account, start - CLOCK_SKEW,
                                            start + duration + self.lag + CLOCK_SKEW,
                                            lambda doc: doc.get("id") == rid) == STOPPED
        except HttpError as exc:
            raise SourceError(f"{self.name}: recording {rid} of account {account} answers 404 by "
                              f"id and cannot be looked for in a listing ({exc}); not counted as "
                              f"done", errno.EIO) from None
        if listed:
            where = (f"its call ran to the end of {_id_month(rid)}, so Kazoo saved it in the next "
                     f"month's database, where the API looks for no id of that month"
                     if _crosses_month(entry) else "it is stored where the API does not look for it")
            raise SourceError(f"{self.name}: cannot {what} recording {rid} of account {account}: "
                              f"it is still listed but answers 404 by id ({where})", errno.EIO)

    def _changed(self, account: str, start: float) -> None:
        """A recording of the day of `start` was deleted or restored here: what is known
        of that day (and of its month and year, in every view) is asked again."""
        day = utc_date(start)
        self._days.pop((account, day), None)
        self._answered.pop((account, day), None)
        self._forget_memo(account, day)
        self._carried.pop((account, day), None)
        self._first_pages.pop((account, day), None)
        periods = {(day.year,), (day.year, day.month), (day.year, day.month, day.day)}
        for key in [k for k in self._probes if k[0] == account and k[2] in periods]:
            del self._probes[key]

    async def rename(self, entry: Entry, from_ref: Hashable, to_ref: Hashable, new_name: str) -> None:
        """Restore a soft-deleted recording: `mv` of it from deleted/…/{day}/ back to its
        day folder in the account view (or its owner's), under its name."""
        if not (isinstance(from_ref, tuple) and len(from_ref) == 6 and from_ref[0] == "day"
                and _view(from_ref[2]) == DELETED):
            raise SourceError(f"{self.name}: recordings cannot be moved or renamed", errno.EROFS)
        if not self.allow_delete:
            raise SourceError(f"{self.name}: restoring is off (set allow_delete = true)", errno.EROFS)
        account, rid = entry.ref[1], entry.ref[2]
        owner = entry.ref[4] if len(entry.ref) > 4 else None
        if not (isinstance(to_ref, tuple) and len(to_ref) == 6 and to_ref[0] == "day"
                and to_ref[1] == account and tuple(to_ref[3:]) == tuple(from_ref[3:])
                and (to_ref[2] is None or (owner is not None and to_ref[2] == owner))):
            raise SourceError(f"{self.name}: a deleted recording is restored by moving it to its "
                              f"own day folder ({account}/{from_ref[3]:04d}/{from_ref[4]:02d}/"
                              f"{from_ref[5]:02d})", errno.EROFS)
        stem = os.path.splitext(entry.name)[0]
        if new_name != entry.name and not new_name.startswith(stem + " ~"):
            raise SourceError(f"{self.name}: a restored recording keeps its name "
                              f"({entry.name})", errno.EROFS)
        mark = {"restored_by": await self._who(), "restored_at": unix_to_gregorian(self.clock())}
        missing = await self._patch(account, rid, "restore", {"soft_restore": mark})
        if missing is None:
            raise SourceError(f"{self.name}: the service has no soft delete to undo", errno.EROFS)
        if missing:
            raise SourceError(f"{self.name}: recording {rid} of account {account} is no longer "
                              f"on the service (404)", errno.ENOENT)
        log.info("%s: restored recording %s of account %s (%s)", self.name, rid, account, entry.name)
        self._deleted.discard((account, rid))
        self._restored.add((account, rid))
        self._changed(account, entry.mtime)

    # -- search: crossbar_filter's query-string filters within the listing windows

    searches_server_side = ("caller", "callee", "number", "call_id", "agent", "direction")

    def record(self, name: str, xattrs: dict[str, str], mtime: float) -> Record:
        try:
            duration = int(xattrs["kazoo.duration_ms"]) / 1000
        except (KeyError, ValueError):
            duration = None
        owner = xattrs.get("kazoo.owner_id")
        return Record(name=name, time=mtime, caller=number_of(xattrs.get("kazoo.caller_id_number")),
                      callee=number_of(xattrs.get("kazoo.callee_id_number")),
                      call_id=xattrs.get("kazoo.call_id"), agents=(owner,) if owner else (),
                      direction=direction_of(xattrs.get("kazoo.direction")), duration=duration)

    def folder_span(self, ref: Hashable, name: str) -> tuple[float, float] | None:
        if isinstance(ref, tuple) and ref and ref[0] in ("year", "month", "day"):
            return day_bounds(*ref[3:])
        return None

    def search_skips(self, ref: Hashable) -> bool:
        # users/ and deleted/ show again what the account's date folders show (or what
        # was deleted): a walk finds each recording once, in its account's day
        return isinstance(ref, tuple) and bool(ref) and ref[0] in ("users", "deleted")

    def search_filters(self, query: Query) -> list[dict[str, str]]:
        """The crossbar filters of `query`, one set per listing pass: the filters of one
        pass AND together, so number= (either side) takes a pass per side. A number is
        asked for in the forms a recorder stores (with and without its '+'): a filter's
        value may be a JSON list meaning any of them."""
        def forms(digits: str) -> str:
            return json.dumps([f"+{digits}", digits])
        common: dict[str, str] = {}
        if query.caller is not None:
            common["filter_caller_id_number"] = forms(query.caller)
        if query.callee is not None:
            common["filter_callee_id_number"] = forms(query.callee)
        if query.call_id is not None:
            common["filter_call_id"] = query.call_id
        if query.agent is not None:
            common["filter_owner_id"] = query.agent
        if query.direction is not None:
            common["filter_direction"] = query.direction
        if query.number is not None:
            return [{**common, "filter_caller_id_number": forms(query.number)},
                    {**common, "filter_callee_id_number": forms(query.number)}]
        return [common] if common else []

    async def search(self, query: Query) -> list[Hit] | None:
        """The account listings of the query's period, within the windows the server
        takes (its learnt maximum_range), filtered by the server: a year costs about a
        dozen windows per pass, a page each unless one window holds more than a page of
        matches."""
        passes = self.search_filters(query)
        if not passes:
            return None
        now = int(self.clock())
        since = max(self.since, int(query.since) if query.since is not None else self.since)
        until = min(now + CLOCK_SKEW, int(query.until) if query.until is not None else now + CLOCK_SKEW)
        if since >= until:
            return []
        hits: dict[tuple[str, str], Hit] = {}
        for account in await self.accounts():
            def visit(doc: dict[str, Any], account=account) -> bool:
                start = self._shown_start(account, None, doc)
                if start is None or not since <= start < until or (account, doc["id"]) in hits:
                    return False
                entry = self._file_entry(account, doc, start)
                if entry is not None:
                    day = utc_date(start)
                    hits[(account, doc["id"])] = Hit(
                        (account, f"{day.year:04d}", f"{day.month:02d}", f"{day.day:02d}"), entry)
                return False
            # created from an hour before the first start to `created_lag_hours` after
            # the last, as a day folder's window is
            end = min(until + self.lag, now + CLOCK_SKEW)
            for filters in passes:
                await self.client.scan(account, since - CLOCK_SKEW, end, visit, extra=filters)
        return list(hits.values())


def _view(stored) -> Any:
    """A view as refs carry it: None, an owner id, or DELETED (a list once pickled)."""
    return DELETED if isinstance(stored, (tuple, list)) and tuple(stored) == DELETED else stored


def _stored(view) -> Any:
    return DELETED if view == DELETED else view


def _duration_ms(entry: Entry) -> int:
    return entry.ref[3] if len(entry.ref) > 3 else 0


def _id_month(rid: str) -> str:
    return f"{rid[:4]}-{rid[4:6]}" if re.match(r"^\d{6}-", rid) else "its month"


def _crosses_month(entry: Entry) -> bool:
    """Whether the call ran to the end of the month its id names (it is stored a little
    after it ends): then it was saved in a later month's database."""
    rid = entry.ref[2]
    ended = month_name(entry.mtime + _duration_ms(entry) / 1000 + STORE_MARGIN)
    return re.match(r"^\d{6}-", rid) is not None and ended != _id_month(rid)


Source = KazooSource
