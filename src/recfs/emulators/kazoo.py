"""A loopback emulator of Kazoo (2600Hz) Crossbar's call-recordings API.

What it reproduces (apis.md §4; the Kazoo server's code is the authority there:
cb_recordings, crossbar_view, crossbar_filter, cb_users, cb_api_auth, api_resource):
- `PUT /v2/api_auth` {"data":{"api_key":…}} → 201 with a JWT-shaped `auth_token`
  whose lifetime is configurable (expired or unknown tokens → 401
  `invalid_credentials`); the token is sent as `X-Auth-Token` (or `?auth_token=`).
  A key of 64 characters that no account has → 404 `bad identifier`, any other
  length → 400 (the `api_auth` schema: min and max length 64); both echo the key in
  `data`, as Crossbar does. Each call costs `api_auth_tokens` (35) tokens of the
  bucket, taken all or none: a call that finds too few empties the bucket
  (kz_buckets:consume_tokens_until). A key's account may use its own account and its
  descendants (resellers).
- `GET /v2/accounts/{A}/recordings` and `/users/{U}/recordings`: `created_from` /
  `created_to` in Gregorian seconds, a span over `max_range` (the operator setting
  `crossbar.maximum_range`, by default 2,682,000 s = 31 days + 1 hour) or a reversed
  window → 400 `date_range` with Crossbar's own message ("created_to T is more than N
  seconds from created_from F"); newest first by `[pvt_created, _id]`
  (`ascending=true` flips it); `page_size` (missing → 50; ≤0 or junk → 404
  `faulty_request`, as crossbar_view throws); an opaque `start_key` /
  `next_start_key` cursor (an undecodable key is used raw and matches nothing);
  deleted documents (`pvt_deleted`, what DELETE sets) are never listed — the views
  skip them; `paginate=false` returns everything. crossbar_filter's query filters
  (`filter_K`, `filter_not_K`, `has_key`, `key_missing`, `has_value`,
  `value_missing`) are applied to the rows the view gives, and a page is filled from
  as many rows as it takes: `next_start_key` is the row after the last one looked at.
  `/users/{U}/recordings` answers 404 `bad_identifier` when the user document is
  deleted (cb_users:validate_user_id), although the recordings stay in the account.
- `GET /v2/accounts/{A}/users`: the account's users that are not deleted, paged.
- `GET /v2/accounts/{A}/recordings/{ID}`: JSON document, or with
  `Accept: audio/mpeg` (or `?accept=`) the first attachment with its stored
  Content-Type (a WAV answers `audio/wav`), an unquoted `Content-Disposition`, and
  api_resource:get_range's Range rule: `bytes=S-E` with E before the last byte, or
  `bytes=S-`, → 206; a range ending at or past the last byte, a suffix range or
  anything else → 200 with the whole file from byte 0 (never 416). The document is
  looked up in the month database its id names: a recording is given the month its
  call started, but is saved in the month database of the moment it is stored, so a
  call that runs over a month's end is listed yet answers 404 by id. A document
  without an attachment, a soft-deleted one or a malformed id → 404 `bad_identifier`.
- `DELETE …/recordings/{ID}` (apis.md §4.6): 200 with the document's public fields
  in `data`; soft by default (the document stays, hidden from listings, and GET or a
  second DELETE → 404 `bad_identifier` with `data.cause`); `?should_soft_delete=false`
  deletes it for good. `deletes` records (id, soft) of every delete that succeeded.
- Kazoo 4.3 allows only GET and DELETE on a recording: PATCH answers 405
  `invalid_method`. With `patch_soft_delete=True` the emulator plays the variant of
  seed 003 (a later recordings.md, not in any released branch): PATCH
  `{"data":{"soft_delete":{…}}}` on a recording, or on `recordings/collection` with
  `"recordings": [ids]`, marks documents (hidden from listings unless
  `include=soft_delete`, still readable), `{"data":{"soft_restore":{…}}}` unmarks them.
- Token buckets (`bucket_tokens`, `fill_rate` per second): an empty bucket answers
  429 `too_many_requests` without `Retry-After`.
- Scale mode (`scale=KazooScale(...)`, issue 20): an account whose history of a
  million recordings or more is generated from its index when a listing page or a
  read asks, merged with any stored recordings; read-only. Query filters on the
  parties, the direction or the owner are answered from the index: only the
  candidates they allow are generated and filtered (`KazooScale.narrowing`).

Counters: `counts` per route name (`api_auth`, `list`, `list_user`, `users`, `doc`,
`media`, `delete`, `patch`, `throttled`, `unauthorized`, `method_not_allowed`);
`listings` records the query of every listing request (tests check cursors and windows
with it), `media_requests` the Range and status of every media GET. Faults (base.py) match these route names, e.g. `Fault("status", route="delete")`.
"""
from __future__ import annotations

import base64
import bisect
import collections
import heapq
import datetime as dt
import hashlib
import json
import math
import random
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from .base import (Blob, BytesBlob, Emulator, Fault, PatternBlob, Request, Response,
                   json_response, precondition_failed)
from .scale import ScaleBlob, stable_hash, time_in_day
from .scale import day_start as scale_day_start

GREGORIAN_OFFSET = 62167219200          # Unix epoch in Gregorian seconds
MAX_RANGE = 31 * 86400 + 3600            # crossbar.maximum_range default
DEFAULT_PAGE_SIZE = 50
API_AUTH_TOKENS = 35                     # crossbar.api_auth_tokens default (cb_api_auth)
API_KEY_LENGTH = 64                      # the api_auth schema's min and max length
VERSION = "4.3.142"
NODE = "crossbar@emulator"
FILTER_PREFIXES = ("filter_not_", "filter_")
FILTER_KEYS = ("has_key", "key_missing", "has_value", "value_missing")


def to_gregorian(unix: float) -> int:
    return int(unix) + GREGORIAN_OFFSET


def from_gregorian(greg: int) -> int:
    return int(greg) - GREGORIAN_OFFSET


def modb_of(unix: float) -> str:
    """The month database (its YYYYMM) of a moment."""
    return time.strftime("%Y%m", time.gmtime(unix))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _hex32(rng: random.Random) -> str:
    return "%032x" % rng.getrandbits(128)


@dataclass
class Account:
    id: str
    name: str
    parent: str | None = None


@dataclass
class User:
    """A user document of an account (what `owner_id` of a recording names)."""
    id: str
    account_id: str
    first_name: str
    last_name: str
    username: str
    email: str
    deleted: bool = False                # pvt_deleted (a soft-deleted user), or removed

    def summary(self) -> dict[str, Any]:
        """What users/crossbar_listing emits for it."""
        return {"id": self.id, "features": [], "username": self.username, "email": self.email,
                "first_name": self.first_name, "last_name": self.last_name,
                "priv_level": "user", "presence_id": self.username, "timezone": "UTC",
                "flags": []}


@dataclass
class Recording:
    """One `call_recording` document in an account's MODB, with its attachment."""
    id: str
    account_id: str
    created: int                         # pvt_created, Unix seconds
    public: dict[str, Any]               # the public fields, as stored
    blob: Blob | None = None             # the first attachment; None: no media
    attachment_name: str = ""
    attachment_type: str = "audio/mpeg"
    deleted: bool = False                # pvt_deleted: DELETE's soft delete
    marked: bool = False                 # the PATCH `soft_delete` variant's marker
    rev: int = 1                         # the document's revision (its _rev's number)

    @property
    def view_key(self) -> tuple[int, str]:
        return (to_gregorian(self.created), self.id)

    @property
    def modb(self) -> str:
        """The month database the document is saved in: that of the moment it was stored."""
        return modb_of(self.created)

    def full_doc(self) -> dict[str, Any]:
        """The stored document with its private fields (what query filters look at)."""
        return {**self.public, "_id": self.id, "pvt_type": "call_recording",
                "pvt_account_id": self.account_id, "pvt_created": to_gregorian(self.created)}


@dataclass(frozen=True)
class KazooScale:
    """A generated account history (issue 20's scale mode): `per_day` recordings on
    each of `days` days from `start`, owned in turn by `owners` (and by nobody, when
    `ownerless`), computed from their index j = day * per_day + n whenever a listing
    page or a read asks for them; nothing is stored per recording.

    Recording j starts at a time spread over its day that increases with n, and is
    stored STORED_AFTER seconds later (so the view's order, by pvt_created, is j's
    order); its id is `{YYYYMM of its start}-{day:08x}{n:08x}{hash:016x}`, so a call
    that starts in a month's last minutes is saved in the next month's database, as a
    real one would be. Sizes lie between `min_size` and `max_size`; the content is a
    `ScaleBlob` of the id.

    The parties come from j's arithmetic, so that a search can be answered without
    generating the history (issue 24): the caller is one of `callers` numbers,
    `+1555200xxxx`, number (j * CALLER_STRIDE) mod `callers` (each caller calls every
    `callers`-th recording: at 1,000 a day and 2,000 callers, every other day); the
    callee one of `callees` lines `+1555100xxxx`, number j mod `callees`; the direction
    alternates with j. `narrowing` turns crossbar filters on these fields (and on
    `owner_id`) into residues of j, of which `candidates` lists the j of a window; the
    listing then generates only those and filters them as it would any document."""
    account: str
    start: dt.date = dt.date(2024, 1, 1)
    days: int = 365
    per_day: int = 1000
    owners: tuple[str, ...] = ()
    ownerless: bool = False
    min_size: int = 16_000
    max_size: int = 960_000
    seed: int = 0
    callers: int = 2000
    callees: int = 20

    STORED_AFTER = 90
    CALLER_STRIDE = 7919          # a prime: j -> j * stride mod callers is a permutation
    CALLER_BASE = 2_000_000       # caller k is +1555{CALLER_BASE + k:07d}
    CALLEE_BASE = 1_000_000

    def __post_init__(self):
        if not (1 <= self.per_day <= 86_400 and 1 <= self.days <= 0xFFFFFFFF
                and 0 <= self.min_size <= self.max_size):
            raise ValueError("per_day: 1 to 86,400; days: 1 or more; 0 <= min_size <= max_size")
        if not (1 <= self.callers <= 1_000_000 and 1 <= self.callees <= 1_000_000
                and math.gcd(self.CALLER_STRIDE, self.callers) == 1):
            raise ValueError("callers, callees: 1 to 1,000,000; callers not a multiple of 7919")

    @property
    def total(self) -> int:
        return self.days * self.per_day

    def started(self, j: int) -> int:
        d, n = divmod(j, self.per_day)
        return int(scale_day_start(self.start, d)) + time_in_day(self.per_day, n, self.seed, d)

    def created(self, j: int) -> int:
        return self.started(j) + self.STORED_AFTER

    def rid(self, j: int) -> str:
        d, n = divmod(j, self.per_day)
        return f"{modb_of(self.started(j))}-{d:08x}{n:08x}{stable_hash('kazoo', self.seed, j):016x}"

    def index(self, rid: str) -> int | None:
        """j of a generated id, or None."""
        m = re.match(r"^\d{6}-([0-9a-f]{8})([0-9a-f]{8})[0-9a-f]{16}$", rid)
        if not m:
            return None
        d, n = int(m.group(1), 16), int(m.group(2), 16)
        j = d * self.per_day + n
        return j if d < self.days and n < self.per_day and self.rid(j) == rid else None

    def owner(self, j: int) -> str | None:
        pool = (*self.owners, None) if self.ownerless or not self.owners else self.owners
        return pool[j % len(pool)]

    def recording(self, j: int) -> Recording:
        rid = self.rid(j)
        start = self.started(j)
        d, n = divmod(j, self.per_day)
        name = f"call-{self.start + dt.timedelta(days=d):%Y%m%d}-{n:05d}.mp3"
        size = self.min_size + stable_hash("size", self.seed, j) % (self.max_size - self.min_size + 1)
        duration_ms = size // 16                 # 128 kbit/s
        call_id = f"{stable_hash('call', self.seed, j):016x}@10.0.0.1"
        public: dict[str, Any] = {
            "call_id": call_id, "callee_id_name": "Callee", "callee_id_number": self.callee_number(j),
            "caller_id_name": "Caller", "caller_id_number": self.caller_number(j),
            "cdr_id": f"{rid[:6]}-{call_id}", "custom_channel_vars": {},
            "description": f"recording {name}", "direction": ("inbound", "outbound")[j % 2],
            "duration": duration_ms // 1000, "duration_ms": duration_ms,
            "media_source": "recorded", "name": name, "source_type": "kzc_recording",
            "start": to_gregorian(start), "content_type": "audio/mpeg", "media_type": "mp3",
        }
        owner = self.owner(j)
        if owner:
            public["owner_id"] = owner
        return Recording(rid, self.account, self.created(j), public,
                         ScaleBlob(f"kazoo/{self.seed}/{rid}", size), name, "audio/mpeg")

    # -- the parties, and the filters on them
    def caller_number(self, j: int) -> str:
        return f"+1555{self.CALLER_BASE + j * self.CALLER_STRIDE % self.callers:07d}"

    def callee_number(self, j: int) -> str:
        return f"+1555{self.CALLEE_BASE + j % self.callees:07d}"

    def caller_recordings(self, number: str) -> range:
        """Every j whose caller is `number` (empty for a number no recording has)."""
        residues = self._residues("caller_id_number", number)
        return range(residues[1].pop(), self.total, residues[0]) if residues and residues[1] else range(0)

    def _party(self, number: str, base: int, count: int) -> int | None:
        """k of `+1555{base + k:07d}` with k below count, or None."""
        m = re.fullmatch(r"\+1555(\d{7})", number)
        k = int(m.group(1)) - base if m else -1
        return k if 0 <= k < count else None

    def _residues(self, field: str, value: str) -> tuple[int, set[int]] | None:
        """(period, residues): the j whose `field` reads `value` (as the filters read it:
        '' for a missing field) are those with j mod period in residues; None for a
        field j's arithmetic does not give."""
        if field == "caller_id_number":
            k = self._party(value, self.CALLER_BASE, self.callers)
            inverse = pow(self.CALLER_STRIDE, -1, self.callers)
            return self.callers, set() if k is None else {k * inverse % self.callers}
        if field == "callee_id_number":
            k = self._party(value, self.CALLEE_BASE, self.callees)
            return self.callees, set() if k is None else {k}
        if field == "direction":
            return 2, {r for r, name in enumerate(("inbound", "outbound")) if name == value}
        if field == "owner_id":
            pool = (*self.owners, None) if self.ownerless or not self.owners else self.owners
            return len(pool), {r for r, owner in enumerate(pool) if (owner or "") == value}
        return None

    def narrowing(self, filters: dict[str, str], owner: str | None = None) -> tuple[int, set[int]] | None:
        """The sparsest (period, residues) that every recording passing `filters` (and
        owned by `owner`, on a user's listing) satisfies; None when no filter narrows.
        A superset: the listing still filters each candidate as it would any document."""
        found = []
        for key, wanted in filters.items():
            field = key[len("filter_"):]
            if key.startswith("filter_not_") or not key.startswith("filter_") \
                    or self._residues(field, "") is None:
                continue
            sets = [self._residues(field, v) for v in _filter_values(wanted)]
            found.append((sets[0][0], set().union(*(r for _, r in sets))))
        if owner is not None:
            found.append(self._residues("owner_id", owner))
        return min(found, key=lambda c: len(c[1]) / c[0], default=None)

    def candidates(self, lo: int, hi: int, period: int, residues: set[int]) -> list[int]:
        """The j in [lo, hi) with j mod period in residues, ascending."""
        out = [j for r in residues for j in range(lo + (r - lo) % period, hi, period)]
        out.sort()
        return out

    def bounds(self, frm: int, to: int, ascending: bool, after: tuple[int, str] | None) -> tuple[int, int]:
        """[lo, hi): the j created in [frm, to] (Gregorian), from the view key `after` on
        (inclusive) in the view's order."""
        lo = self._first_created_at_or_after(frm)
        hi = self._first_created_at_or_after(to + 1)
        if after is not None:
            at = self._first_created_at_or_after(after[0])
            exact = at < self.total and to_gregorian(self.created(at)) == after[0]
            if ascending:
                lo = max(lo, at if not exact or self.rid(at) >= after[1] else at + 1)
            else:
                hi = min(hi, at + 1 if exact and self.rid(at) <= after[1] else at)
        return lo, hi

    def _first_created_at_or_after(self, greg: int) -> int:
        """The first j whose pvt_created (Gregorian) is at or after `greg`."""
        lo, hi = 0, self.total
        while lo < hi:
            mid = (lo + hi) // 2
            if to_gregorian(self.created(mid)) < greg:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def rows(self, frm: int, to: int, ascending: bool, after: tuple[int, str] | None):
        """The recordings created in [frm, to] (Gregorian), from the view key `after` on
        (inclusive), in view order, made one by one as they are read."""
        lo, hi = self.bounds(frm, to, ascending, after)
        order = range(lo, hi) if ascending else range(hi - 1, lo - 1, -1)
        return (self.recording(j) for j in order)


class KazooEmulator(Emulator):
    name = "kazoo"

    def __init__(self, *, token_lifetime: float = 3600.0, bucket_tokens: float | None = 100,
                 fill_rate: float = 10.0, max_range: int = MAX_RANGE,
                 default_page_size: int = DEFAULT_PAGE_SIZE, seed: int = 0,
                 patch_soft_delete: bool = False, api_auth_tokens: float = API_AUTH_TOKENS,
                 cut_past_end: int | None = None, cut_past_end_times: int = 1,
                 scale: KazooScale | None = None, **kw):
        super().__init__(**kw)
        self.scale = scale
        self.token_lifetime = token_lifetime
        self.max_range = max_range
        self.default_page_size = default_page_size
        self.patch_soft_delete = patch_soft_delete
        self.api_auth_tokens = api_auth_tokens
        self.deletes: list[tuple[str, bool]] = []             # (recording id, soft)
        self.patches: list[tuple[str, str, Any]] = []         # (recording id, soft_delete|soft_restore, value)
        self.media_requests: list[tuple[str, str | None, int]] = []   # (id, Range sent, status)
        # a test's fault: the first `cut_past_end_times` media answers of each recording
        # to a range that runs past its end (a whole-file probe) are cut after
        # `cut_past_end` bytes (a reset), so the client asks again from there to past
        # the end
        self.cut_past_end = cut_past_end
        self.cut_past_end_times = cut_past_end_times
        self._cut: collections.Counter[str] = collections.Counter()
        self.rate_limit(bucket_tokens, fill_rate)
        self.rng = random.Random(seed)
        self.accounts: dict[str, Account] = {}
        self.users: dict[str, User] = {}
        self.api_keys: dict[str, str] = {}                    # key -> account id
        self.tokens: dict[str, tuple[str, float]] = {}        # token -> (account id, exp)
        self.recordings: dict[str, Recording] = {}            # id -> recording
        self._views: dict[str, list[tuple[tuple[int, str], Recording]]] = {}   # account -> by view key
        self.listings: list[dict[str, Any]] = []              # every listing request
        # called with the number of listing requests so far, after each one is answered:
        # lets a test expire tokens between two pages of one crawl
        self.on_listing: Callable[[int], None] | None = None
        self._lock = threading.Lock()
        self.demo_key: str | None = None                      # set by demo()
        self.demo_accounts: list[str] = []
        self.demo_since: str | None = None
        self.demo_users: dict[str, list[str]] = {}
        acct = r"/v2/accounts/(?P<acct>[^/]+)"
        self.route("PUT", r"/v2/api_auth", "api_auth", self._api_auth)
        self.route("GET", acct + r"/recordings", "list", self._list)
        self.route("GET", acct + r"/users", "users", self._list_users)
        self.route("GET", acct + r"/users/(?P<uid>[^/]+)/recordings", "list_user", self._list)
        self.route("GET", acct + r"/recordings/(?P<rid>[^/]+)", "doc", self._get)
        self.route("DELETE", acct + r"/recordings/(?P<rid>[^/]+)", "delete", self._delete)
        self.route("PATCH", acct + r"/recordings/(?P<rid>[^/]+)", "patch", self._patch)
        if scale is not None:
            if scale.account not in self.accounts:
                self.add_account("Scale", account_id=scale.account)
            for owner in scale.owners:
                if owner not in self.users:
                    self.add_user(scale.account, user_id=owner)

    # ------------------------------------------------------------------ set-up

    def add_account(self, name: str, parent: str | None = None, account_id: str | None = None) -> str:
        account_id = account_id or _hex32(self.rng)
        self.accounts[account_id] = Account(account_id, name, parent)
        return account_id

    def add_api_key(self, account_id: str, key: str | None = None) -> str:
        key = key or "%064x" % self.rng.getrandbits(256)
        self.api_keys[key] = account_id
        return key

    def add_user(self, account_id: str, first_name: str = "", last_name: str = "",
                 user_id: str | None = None) -> str:
        """A user document in the account; its id is what recordings carry as owner_id."""
        user_id = user_id or _hex32(self.rng)
        first_name = first_name or f"User{len(self.users) + 1}"
        last_name = last_name or "Example"
        username = f"{first_name}.{last_name}".lower()
        self.users[user_id] = User(user_id, account_id, first_name, last_name, username,
                                   f"{username}@demo.example.com")
        return user_id

    def new_user_id(self, account_id: str | None = None) -> str:
        """A user of `account_id` (the first account when not given)."""
        return self.add_user(account_id or next(iter(self.accounts)))

    def delete_user(self, user_id: str) -> None:
        """The user leaves: the document is deleted; their recordings stay."""
        self.users[user_id].deleted = True

    def add_recording(self, account_id: str, start: float, *, duration_ms: int = 60000,
                      name: str | None = None, owner_id: str | None = None,
                      blob: Blob | None | bool = True, attachment_type: str = "audio/mpeg",
                      content_type: str | None = "", media_type: str | None = "",
                      created: float | None = None, direction: str = "inbound",
                      caller_id_name: str = "Caller", caller_id_number: str = "+15550100",
                      callee_id_name: str = "Callee", callee_id_number: str = "+15550199",
                      extra: dict[str, Any] | None = None) -> Recording:
        """Store a recording document. `blob=True` makes deterministic content, `None`
        stores a document without an attachment. `content_type`/`media_type` default
        to what the recorder writes for `attachment_type`; pass None to leave them out.
        The id carries the month the call started (kapps_call_recording); `created`
        (by default when the call ended) decides the month database it is saved in."""
        created = int(created if created is not None else start + duration_ms / 1000 + 2)
        rid = f"{modb_of(start)}-{_hex32(self.rng)}"
        call_id = f"{_hex32(self.rng)[:16]}@10.0.0.1"
        ext = {"audio/wav": "wav", "audio/x-wav": "wav"}.get(attachment_type, "mp3")
        if name is None:
            name = f"{_hex32(self.rng)}.{ext}"
        if blob is True:
            size = 8000 + self.rng.randrange(60000)
            blob = PatternBlob(self.rng.getrandbits(31), size)
        public: dict[str, Any] = {
            "call_id": call_id,
            "callee_id_name": callee_id_name, "callee_id_number": callee_id_number,
            "caller_id_name": caller_id_name, "caller_id_number": caller_id_number,
            "cdr_id": f"{modb_of(start)}-{call_id}",
            "custom_channel_vars": {},
            "description": f"recording {name}",
            "direction": direction,
            "duration": duration_ms // 1000,
            "duration_ms": duration_ms,
            "from": f"{caller_id_number}@demo.example.com",
            "to": f"{callee_id_number}@demo.example.com",
            "request": f"{callee_id_number}@demo.example.com",
            "interaction_id": f"{to_gregorian(start)}-{_hex32(self.rng)[:8]}",
            "media_source": "recorded",
            "name": name,
            "origin": f"untracked : {callee_id_number}",
            "source_type": "kzc_recording",
            "start": to_gregorian(start),
        }
        if content_type is not None:
            public["content_type"] = content_type or attachment_type
        if media_type is not None:
            public["media_type"] = media_type or ext
        if owner_id:
            public["owner_id"] = owner_id
        public.update(extra or {})
        rec = Recording(rid, account_id, created, public, blob or None, name, attachment_type)
        with self._lock:
            self.recordings[rid] = rec
            bisect.insort(self._views.setdefault(account_id, []), (rec.view_key, rec),
                          key=lambda row: row[0])
        return rec

    def generate(self, account_id: str, first_day: dt.date, days: int, per_day: int, *,
                 owners: list[str | None] = (None,), every: int = 1,
                 hours: tuple[int, int] = (8, 18)) -> list[Recording]:
        """Recordings of `per_day` calls on every `every`-th day from `first_day` on,
        spread over the working hours and the owners in turn: histories for listing
        tests, cheap to make (the content is generated when it is read)."""
        out = []
        for d in range(0, days, every):
            base = dt.datetime(first_day.year, first_day.month, first_day.day,
                               tzinfo=dt.timezone.utc).timestamp() + d * 86400
            for k in range(per_day):
                start = base + hours[0] * 3600 + (k * (hours[1] - hours[0]) * 3600) // max(1, per_day)
                i = len(self.recordings)
                out.append(self.add_recording(
                    account_id, start, duration_ms=30_000 + 1000 * (i % 50),
                    owner_id=owners[i % len(owners)], name=f"call-{d:04d}-{k:03d}.mp3",
                    blob=PatternBlob(7000 + i % 16, 2000 + 37 * (i % 97))))
        return out

    def soft_delete(self, rid: str) -> None:
        self.recordings[rid].deleted = True

    def revoke_tokens(self) -> None:
        """Every token issued so far stops working (as after DELETE /v2/token_auth)."""
        with self._lock:
            self.tokens.clear()

    def replace_media(self, rid: str, blob: Blob) -> None:
        """New bytes for a recording's attachment (a redaction, say): a new revision."""
        with self._lock:
            rec = self.recordings[rid]
            rec.blob = blob
            rec.rev += 1

    def drain_bucket(self) -> None:
        """Empty the token bucket now: the next requests get 429 until it refills."""
        if self.bucket:
            self.bucket.drain()

    def now_gregorian(self) -> int:
        return to_gregorian(self.now())

    # ------------------------------------------------------------------ envelopes

    def _envelope(self, req: Request, data: Any, http_status: int = 200, **extra) -> Response:
        body = {"auth_token": self._token_of(req) or "", "data": data,
                "node": NODE, "request_id": uuid.uuid4().hex, "revision": "undefined",
                "status": "success",
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.now())),
                "version": VERSION}
        body.update(extra)
        return json_response(body, http_status)

    def _error(self, req: Request, status: int, message: str, data: Any = None) -> Response:
        resp = self._envelope(req, data if data is not None else {}, status,
                              error=str(status), message=message, status="error")
        return resp

    def _unauthorized(self, req: Request) -> Response:
        req.route = "unauthorized"
        return self._error(req, 401, "invalid_credentials", {"message": "invalid credentials"})

    def _bad_identifier(self, req: Request, data: Any) -> Response:
        return self._error(req, 404, "bad_identifier", data)

    # ------------------------------------------------------------------ dispatch

    def too_many_requests(self, req: Request) -> Response:
        return self._error(req, 429, "too_many_requests", {"message": "too many requests"})

    def cost(self, req: Request) -> float:
        if req.method == "PUT" and req.path.rstrip("/") == "/v2/api_auth":
            return self.api_auth_tokens
        return 1.0

    def gate(self, req: Request) -> tuple[str, Response] | None:
        gated = super().gate(req)
        if gated is not None and self.cost(req) > 1:
            # api_auth takes its tokens all or none, and a call that finds too few
            # empties the bucket (kz_buckets:consume_tokens_until)
            self.bucket.drain()
        return gated

    # ------------------------------------------------------------------ auth

    def _token_of(self, req: Request) -> str | None:
        return req.header("x-auth-token") or req.query.get("auth_token")

    def _api_auth(self, req: Request) -> Response:
        try:
            key = req.json()["data"]["api_key"]
        except (ValueError, KeyError, TypeError):
            return self._error(req, 400, "invalid request",
                               {"api_key": {"required": {"message": "Field is required but missing"}}})
        if not isinstance(key, str):
            return self._error(req, 400, "validation error", {"api_key": {"type": {
                "message": "Value is not of type string", "target": "string", "cause": key,
                "value": key}}})
        if len(key.encode()) != API_KEY_LENGTH:
            # kz_json_schema's messages, which repeat the value sent
            code = "minLength" if len(key.encode()) < API_KEY_LENGTH else "maxLength"
            word = "at least" if code == "minLength" else "not more than"
            return self._error(req, 400, "validation error", {"api_key": {code: {
                "message": f"String must be {word} {API_KEY_LENGTH} characters",
                "target": API_KEY_LENGTH, "cause": key, "value": key}}})
        account_id = self.api_keys.get(key)
        if account_id is None:
            # cb_api_auth: no account has the key → crossbar_util:response_bad_identifier
            return self._error(req, 404, "bad identifier", [key])
        iat = int(self.now())
        exp = iat + int(self.token_lifetime)
        header = _b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
        payload = _b64url(json.dumps({"account_id": account_id, "iat": iat, "exp": exp,
                                      "jti": uuid.uuid4().hex}).encode())
        token = f"{header}.{payload}.{_b64url(hashlib.sha256(payload.encode()).digest())}"
        with self._lock:
            self.tokens[token] = (account_id, iat + self.token_lifetime)
        data = {"account_id": account_id, "apps": [], "is_reseller": True, "language": "en-US",
                "owner_id": _hex32(self.rng), "reseller_id": account_id}
        resp = self._envelope(req, data, 201)
        body = json.loads(resp.body)
        body["auth_token"] = token
        resp.body = json.dumps(body).encode()
        return resp

    def _authorize(self, req: Request, account_id: str) -> Response | None:
        """None when the request's token may act on `account_id`, else the error reply."""
        token = self._token_of(req)
        found = self.tokens.get(token or "")
        if found is None or self.now() >= found[1]:
            return self._unauthorized(req)
        if account_id not in self.accounts:
            return self._bad_identifier(req, [account_id])
        owner = found[0]
        cursor: str | None = account_id
        while cursor is not None:
            if cursor == owner:
                return None
            cursor = self.accounts[cursor].parent
        return self._error(req, 403, "forbidden", {"message": "access denied"})

    # ------------------------------------------------------------------ listing

    @staticmethod
    def encode_key(key: tuple[int, str]) -> str:
        return _b64url(json.dumps(list(key)).encode())

    @staticmethod
    def decode_key(text: str) -> tuple[int, str] | str:
        try:
            created, rid = json.loads(_b64url_decode(text))
            return (int(created), str(rid))
        except (ValueError, TypeError):
            return text           # Kazoo uses an undecodable key raw

    def summary(self, rec: Recording) -> dict[str, Any]:
        doc = {k: v for k, v in rec.public.items() if not k.startswith(("_", "pvt_"))}
        doc["id"] = rec.id
        doc["_read_only"] = {"content_types": [rec.attachment_type] if rec.blob is not None else []}
        return doc

    def _int_param(self, req: Request, key: str, default: int) -> int | Response:
        raw = req.query.get(key)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError:
            return self._error(req, 400, "validation error",
                               {key: {"type": {"message": "Value is not of type integer",
                                               "value": raw}}})

    def _page_size(self, req: Request) -> int | Response:
        """crossbar_view:get_page_size_from_request: missing → the default; anything
        but a positive integer is thrown, and answered 404 faulty_request."""
        raw = req.query.get("page_size")
        if raw is None:
            return self.default_page_size
        try:
            size = int(raw)
        except ValueError:
            return self._error(req, 404, "faulty_request", {"message": "invalid page size"})
        if size <= 0:
            return self._error(req, 404, "faulty_request", {"message": "page size must be at least 1"})
        return size

    def _list(self, req: Request) -> Response:
        record = {"account": req.match.group("acct"), "owner": req.match.groupdict().get("uid"),
                  **req.query}
        with self._lock:
            self.listings.append(record)
        resp = self._answer_listing(req)
        record["status"] = resp.status
        if self.on_listing is not None:
            self.on_listing(len(self.listings))
        return resp

    def _time_range(self, req: Request) -> tuple[int, int] | Response:
        """crossbar_view:time_range/5, with its messages."""
        to = self._int_param(req, "created_to", self.now_gregorian())
        if isinstance(to, Response):
            return to
        frm = self._int_param(req, "created_from", to - self.max_range)
        if isinstance(frm, Response):
            return frm
        if to < frm:
            return self._error(req, 400, "validation error", {"created_from": {"date_range": {
                "message": f"created_to {to} is prior to created_from {frm}", "cause": frm}}})
        if to - frm > self.max_range:
            return self._error(req, 400, "validation error", {"created_from": {"date_range": {
                "message": f"created_to {to} is more than {self.max_range} seconds from "
                           f"created_from {frm}", "cause": to}}})
        return frm, to

    def _answer_listing(self, req: Request) -> Response:
        account_id = req.match.group("acct")
        owner = req.match.groupdict().get("uid")
        denied = self._authorize(req, account_id)
        if denied:
            return denied
        if owner is not None:
            user = self.users.get(owner)
            if user is None or user.account_id != account_id or user.deleted:
                # cb_users:validate_user_id: a deleted user document is no resource
                return self._bad_identifier(req, {"cause": owner})
        window = self._time_range(req)
        if isinstance(window, Response):
            return window
        frm, to = window
        page_size = self._page_size(req)
        if isinstance(page_size, Response):
            return page_size
        include_marked = self.patch_soft_delete and \
            "soft_delete" in req.query.get("include", "").split(",")
        ascending = req.query.get("ascending") == "true" or req.query.get("descending") == "false"
        after: tuple[int, str] | None = None
        raw_key = req.query.get("start_key")
        paginate = req.query.get("paginate") != "false"
        if raw_key is not None and paginate:
            key = self.decode_key(raw_key)
            if isinstance(key, str):
                # a binary start key sorts outside every [created, id] key
                return self._envelope(req, [], page_size=0)
            after = key
        filters = {k: v for k, v in req.query.items()
                   if k.startswith(FILTER_PREFIXES) or k in FILTER_KEYS}

        def shown(r: Recording) -> bool:
            return not r.deleted and (include_marked or not r.marked) \
                and (owner is None or r.public.get("owner_id") == owner)
        sparse = self._sparse_listing(account_id, frm, to, ascending, after, filters, owner,
                                      page_size if paginate else None)
        if sparse is not None:
            page, nxt = sparse
        else:
            rows = (r for r in self._rows(account_id, frm, to, ascending, after) if shown(r))
            if not paginate:
                return self._envelope(req, [self.summary(r) for r in rows
                                            if _passes(r.full_doc(), filters)])
            # crossbar_view: rows are read page_size + 1 at a time and filtered; the page
            # is filled from as many rows as it takes, and the next start key is the row
            # after the last one looked at
            page = []
            nxt = None
            for r in rows:
                if len(page) == page_size:
                    nxt = r.view_key
                    break
                if _passes(r.full_doc(), filters):
                    page.append(r)
        if not paginate:
            return self._envelope(req, [self.summary(r) for r in page])
        extra: dict[str, Any] = {"page_size": len(page)}
        if page:
            extra["start_key"] = raw_key if raw_key is not None else self.encode_key(page[0].view_key)
        if nxt is not None:
            extra["next_start_key"] = self.encode_key(nxt)
        return self._envelope(req, [self.summary(r) for r in page], **extra)

    def _sparse_listing(self, account_id: str, frm: int, to: int, ascending: bool,
                        after: tuple[int, str] | None, filters: dict[str, str], owner: str | None,
                        page_size: int | None) -> tuple[list[Recording], tuple[int, str] | None] | None:
        """The page (and the next start key) of a filtered listing of a generated
        history, from the candidates the filters' arithmetic allows rather than every
        row: the same answer as reading every row (None: the filters do not narrow, or
        stored recordings are merged in). Without page_size, every match."""
        scale = self.scale
        if scale is None or scale.account != account_id or self._views.get(account_id):
            return None
        narrow = scale.narrowing(filters, owner)
        if narrow is None:
            return None
        lo, hi = scale.bounds(frm, to, ascending, after)
        order = scale.candidates(lo, hi, *narrow)
        if not ascending:
            order.reverse()
        page: list[Recording] = []
        for j in order:
            rec = scale.recording(j)
            if (owner is None or rec.public.get("owner_id") == owner) and _passes(rec.full_doc(), filters):
                page.append(rec)
                if len(page) == page_size:
                    # the next start key: the row after this one that the view shows
                    rows = range(j + 1, hi) if ascending else range(j - 1, lo - 1, -1)
                    if owner is not None:
                        shown = scale.narrowing({}, owner)
                        rows = (k for k in rows if k % shown[0] in shown[1])
                    k = next(iter(rows), None)
                    return page, None if k is None else (to_gregorian(scale.created(k)), scale.rid(k))
        return page, None

    def _rows(self, account_id: str, frm: int, to: int, ascending: bool,
              after: tuple[int, str] | None):
        """The view's rows of the account created in [frm, to] (Gregorian), from the
        start key `after` on (inclusive), newest first unless ascending: the stored
        recordings merged with the generated ones of a scale account."""
        with self._lock:
            view = self._views.get(account_id, [])
            lo = bisect.bisect_left(view, (frm, ""), key=lambda row: row[0])
            hi = bisect.bisect_right(view, (to, "\uffff"), key=lambda row: row[0])
            stored = [r for _, r in view[lo:hi]]
        if after is not None:
            stored = [r for r in stored if (r.view_key >= after if ascending else r.view_key <= after)]
        if not ascending:
            stored.reverse()
        scale = self.scale
        if scale is None or scale.account != account_id:
            return iter(stored)
        generated = scale.rows(frm, to, ascending, after)
        return heapq.merge(stored, generated, key=lambda r: r.view_key, reverse=not ascending)

    def _list_users(self, req: Request) -> Response:
        account_id = req.match.group("acct")
        denied = self._authorize(req, account_id)
        if denied:
            return denied
        page_size = self._page_size(req)
        if isinstance(page_size, Response):
            return page_size
        users = sorted((u for u in self.users.values() if u.account_id == account_id and not u.deleted),
                       key=lambda u: u.id)
        start = req.query.get("start_key")
        if start is not None:
            users = [u for u in users if u.id >= start]
        page, rest = users[:page_size], users[page_size:]
        extra: dict[str, Any] = {"page_size": len(page)}
        if rest:
            extra["next_start_key"] = rest[0].id
        return self._envelope(req, [u.summary() for u in page], **extra)

    # ------------------------------------------------------------------ one document

    def _load(self, req: Request) -> Recording | Response:
        account_id, rid = req.match.group("acct"), req.match.group("rid")
        denied = self._authorize(req, account_id)
        if denied:
            return denied
        if not re.match(r"^\d{6}-", rid):
            return self._bad_identifier(req, [rid])
        rec = self.recordings.get(rid)
        if rec is None and self.scale is not None and self.scale.account == account_id:
            j = self.scale.index(rid)
            rec = None if j is None else self.scale.recording(j)
        # cb_recordings looks in the month database the id names
        if rec is None or rec.account_id != account_id or rec.modb != rid[:6]:
            return self._bad_identifier(req, {"cause": rid})
        if rec.deleted:
            return self._bad_identifier(req, {"cause": rid})
        return rec

    def _wants_media(self, req: Request) -> bool | None:
        """True: the attachment; False: the JSON document; None: nothing acceptable."""
        accept = req.query.get("accept") or req.header("accept") or ""
        kinds = [part.split(";")[0].strip().lower() for part in accept.split(",") if part.strip()]
        if not kinds:
            return False
        if any(k in ("audio/mpeg", "audio/mp3") for k in kinds):
            return True
        if any(k in ("application/json", "application/x-json", "*/*") for k in kinds):
            return False
        return None

    def _get(self, req: Request) -> Response:
        wants = self._wants_media(req)
        if wants:
            req.route = "media"
        rec = self._load(req)
        if isinstance(rec, Response):
            return rec
        if wants is None:
            return self._error(req, 406, "not acceptable", {"message": "not acceptable"})
        if not wants:
            doc = {k: v for k, v in rec.public.items() if not k.startswith(("_", "pvt_"))}
            doc["id"] = rec.id
            return self._envelope(req, doc, revision=f"1-{hashlib.md5(rec.id.encode()).hexdigest()}")
        if rec.blob is None:
            return self._bad_identifier(req, {"details": rec.id})
        disposition = "inline" if req.query.get("inline") == "true" else "attachment"
        headers = {"Content-Type": rec.attachment_type,
                   # Kazoo writes the name unquoted, as raw UTF-8 bytes
                   "Content-Disposition": f"{disposition}; filename={rec.attachment_name}"
                   .encode().decode("latin-1"),
                   # crossbar_doc:load_attachment: the document's revision (rev_to_etag);
                   # cowboy_rest answers a stale If-Match with 412
                   "ETag": f'"{rec.rev}-{hashlib.md5(rec.id.encode()).hexdigest()}"'}
        resp = precondition_failed(req, headers["ETag"])
        if resp is None:
            resp = kazoo_range_response(req, rec.blob, headers)
            m = _RANGE_RE.match((req.header("range") or "").strip())
            if self.cut_past_end and m and m.group(2) and int(m.group(2)) >= rec.blob.size \
                    and self._cut[rec.id] < self.cut_past_end_times and resp.length > self.cut_past_end:
                self._cut[rec.id] += 1
                req.route = f"media-cut:{rec.id}"
                self.faults.add(Fault("reset", route=req.route, after_bytes=self.cut_past_end))
        with self._lock:
            self.media_requests.append((rec.id, req.header("range"), resp.status))
        return resp

    def _generated(self, req: Request, rec: Recording) -> Response | None:
        """A generated recording (scale mode) cannot change: 403."""
        if rec.id in self.recordings:
            return None
        return self._error(req, 403, "forbidden", {"message": "the generated history is read-only"})

    def _delete(self, req: Request) -> Response:
        rec = self._load(req)
        if isinstance(rec, Response):
            return rec
        refused = self._generated(req, rec)
        if refused is not None:
            return refused
        doc = {k: v for k, v in rec.public.items() if not k.startswith(("_", "pvt_"))}
        doc["id"] = rec.id
        soft = req.query.get("should_soft_delete") != "false"
        with self._lock:
            if rec.deleted:        # a concurrent DELETE got there first
                return self._bad_identifier(req, {"cause": rec.id})
            rec.deleted = True
            if not soft:
                del self.recordings[rec.id]
                view = self._views.get(rec.account_id, [])
                view.pop(bisect.bisect_left(view, rec.view_key, key=lambda row: row[0]))
            self.deletes.append((rec.id, soft))
        return self._envelope(req, doc)

    def _patch(self, req: Request) -> Response:
        if not self.patch_soft_delete:
            req.route = "method_not_allowed"
            return self._error(req, 405, "invalid_method", {"message": "invalid method"})
        account_id, rid = req.match.group("acct"), req.match.group("rid")
        denied = self._authorize(req, account_id)
        if denied:
            return denied
        try:
            data = req.json()["data"]
            if not isinstance(data, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return self._error(req, 400, "invalid request", {})
        if rid == "collection":
            ids = data.get("recordings")
            if not isinstance(ids, list):
                return self._error(req, 400, "validation error", {"recordings": {"required": {
                    "message": "Field is required but missing"}}})
            success, failed = {}, {}
            for one in ids:
                req.match = re.match(r"(?P<acct>.*)/(?P<rid>.*)", f"{account_id}/{one}")
                rec = self._load(req)
                if not isinstance(rec, Response):
                    rec = self._generated(req, rec) or rec
                if isinstance(rec, Response):
                    failed[str(one)] = json.loads(rec.body)["data"]
                else:
                    success[rec.id] = self._mark(rec, data)
            body: dict[str, Any] = {"success": success}
            if failed:
                body["error"] = failed
            return self._envelope(req, body)
        rec = self._load(req)
        if isinstance(rec, Response):
            return rec
        return self._generated(req, rec) or self._envelope(req, self._mark(rec, data))

    def _mark(self, rec: Recording, data: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if "soft_delete" in data:
                value = dict(data["soft_delete"]) if isinstance(data["soft_delete"], dict) else {}
                if "deleted_at" in value:
                    try:
                        value["deleted_at"] = int(value["deleted_at"])
                    except (TypeError, ValueError):
                        pass
                rec.marked = True
                rec.public["soft_delete"] = value
                self.patches.append((rec.id, "soft_delete", value))
            elif "soft_restore" in data:
                rec.marked = False
                rec.public.pop("soft_delete", None)
                self.patches.append((rec.id, "soft_restore", data["soft_restore"]))
            rec.rev += 1
        return dict(rec.public, id=rec.id)


def _json_path(doc: dict[str, Any], key: str) -> Any:
    value: Any = doc
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _as_binary(value: Any) -> str:
    """kz_json:get_binary_value: the value as text ('' when missing)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _filter_matches(value: str, wanted: str) -> bool:
    """crossbar_filter:should_filter/2: equal, or a JSON list holding the value."""
    if value == wanted:
        return True
    try:
        decoded = json.loads(wanted)
    except ValueError:
        return False
    if isinstance(decoded, list):
        return value in decoded
    return decoded == value


def _filter_values(wanted: str) -> list[str]:
    """Every text `_filter_matches` accepts for `wanted`: itself, and the strings of the
    JSON list or the JSON string it may be."""
    out = [wanted]
    try:
        decoded = json.loads(wanted)
    except ValueError:
        return out
    if isinstance(decoded, list):
        out += [v for v in decoded if isinstance(v, str)]
    elif isinstance(decoded, str):
        out.append(decoded)
    return out


def _passes(doc: dict[str, Any], filters: dict[str, str]) -> bool:
    """crossbar_filter:filter_doc_by_querystring over the stored document."""
    for key, wanted in filters.items():
        if key.startswith("filter_not_"):
            ok = not _filter_matches(_as_binary(_json_path(doc, key[len("filter_not_"):])), wanted)
        elif key.startswith("filter_"):
            ok = _filter_matches(_as_binary(_json_path(doc, key[len("filter_"):])), wanted)
        elif key == "has_key":
            ok = _json_path(doc, wanted) is not None
        elif key == "key_missing":
            ok = _json_path(doc, wanted) is None
        elif key == "has_value":
            ok = _json_path(doc, wanted) not in (None, "", [], {})
        else:                                   # value_missing
            ok = _json_path(doc, wanted) in (None, "", [], {})
        if not ok:
            return False
    return True


_RANGE_RE = re.compile(r"^bytes=(\d+)-(\d*)$")


def kazoo_range_response(req: Request, blob: Blob, headers: dict[str, str]) -> Response:
    """api_resource:get_range: `bytes=S-` → from S; `bytes=S-E` with E before the file's
    end → S..E; anything else (a range ending at or past the end, a suffix range,
    several ranges) → the whole file. An answer holding the whole file is a 200 (with
    `Content-Range: bytes 0-(N-1)/N` when a Range was sent), anything less a 206; never
    416. `bytes=S-` with S past the end crashes the handler: 500."""
    h = {"Accept-Ranges": "bytes"}
    h.update(headers)
    size = blob.size
    m = _RANGE_RE.match((req.header("range") or "").strip())
    start, end = 0, size
    if m:
        first = int(m.group(1))
        if not m.group(2):
            start, end = first, size
        elif int(m.group(2)) < size and first <= int(m.group(2)):
            start, end = first, int(m.group(2)) + 1
    if start > size:
        # the binary match of get_range fails on the server
        return json_response({"message": "internal server error"}, 500)
    # to_binary sets Content-Range on every ranged answer, the whole file's too
    h["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    if end - start == size:
        if not m and req.header("range") is None:
            del h["Content-Range"]
        return Response(200, h, blob, (0, size))
    return Response(206, h, blob, (start, end))


# --------------------------------------------------------------------------- wiring

def source_table(emu: KazooEmulator, name: str) -> dict:
    """The `[[sources]]` table pointing a kazoo source at this running emulator."""
    if emu.demo_key is None:
        raise ValueError("source_table needs an emulator with an API key in demo_key")
    table: dict[str, Any] = {"name": name, "kind": "kazoo", "api_url": emu.url + "/v2",
                             "api_key": emu.demo_key}
    if emu.demo_accounts:
        table["accounts"] = list(emu.demo_accounts)
    if emu.demo_since:
        table["since"] = emu.demo_since
    return table


def demo(seed: int = 0, **kw) -> KazooEmulator:
    """A reseller account with a sub-account, three users each, recordings spread over
    the last ~70 days (several months), and the quirks a client must survive: a WAV
    answered as audio/wav, names without an extension, spaces and non-ASCII in names,
    5.x-style `media_type` ".mp3", a document without media, a soft-deleted one, one
    without an owner, and a call that starts before midnight and is stored after it."""
    from .samples import call_wav
    emu = KazooEmulator(seed=seed, **kw)
    rng = random.Random(seed)
    reseller = emu.add_account("Demo Reseller")
    sub = emu.add_account("Demo Customer", parent=reseller)
    emu.demo_key = emu.add_api_key(reseller)
    emu.demo_accounts = [reseller, sub]
    today = dt.datetime.now(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    emu.demo_since = (today - dt.timedelta(days=75)).date().isoformat()
    first_names = ["Ana", "Bram", "Chloé", "Dev", "Eun-ji", "Femi"]
    for acct in (reseller, sub):
        users = [emu.add_user(acct, first_names[i], "Demo") for i in range(3)]
        emu.demo_users[acct] = users
        days = sorted(rng.sample(range(1, 70), 5)) + [0]
        for day in days:
            base = (today - dt.timedelta(days=day)).timestamp()
            for _ in range(rng.randrange(2, 4)):
                start = base + rng.randrange(8 * 3600, 18 * 3600)
                if day == 0:
                    # today's calls must already have ended
                    start = min(start, time.time() - 3600 - rng.randrange(3600))
                seconds = rng.randrange(3, 8)
                emu.add_recording(acct, start, duration_ms=seconds * 1000,
                                  blob=BytesBlob(call_wav(rng.getrandbits(20), seconds)),
                                  attachment_type="audio/wav",
                                  owner_id=rng.choice(users),
                                  direction=rng.choice(["inbound", "outbound"]),
                                  caller_id_name=rng.choice(first_names),
                                  caller_id_number=f"+1555{rng.randrange(10**7):07d}")
        quirk_day = (today - dt.timedelta(days=days[1])).timestamp()
        emu.add_recording(acct, quirk_day + 9 * 3600, owner_id=users[0], duration_ms=42000,
                          attachment_type="audio/wav")
        emu.add_recording(acct, quirk_day + 10 * 3600, owner_id=users[1], duration_ms=31000,
                          name="Sales call with Zoë", media_type=".mp3")
        emu.add_recording(acct, quirk_day + 11 * 3600, owner_id=users[2], duration_ms=27000,
                          name=f"voicemail {acct[:6]}", attachment_type="audio/wav",
                          content_type=None, media_type="wav")
        emu.add_recording(acct, quirk_day + 12 * 3600, duration_ms=15000)        # no owner
        emu.add_recording(acct, quirk_day + 13 * 3600, owner_id=users[0], blob=None)
        gone = emu.add_recording(acct, quirk_day + 14 * 3600, owner_id=users[1])
        emu.soft_delete(gone.id)
        midnight_day = today - dt.timedelta(days=days[2])
        if midnight_day.day == 1:
            # a call over a month's end is saved in the next month's database and cannot
            # be read by id: the demo keeps every recording readable
            midnight_day -= dt.timedelta(days=1)
        midnight = midnight_day.timestamp()
        emu.add_recording(acct, midnight - 120, owner_id=users[2], duration_ms=300000,
                          created=midnight + 200)
    return emu


__all__ = ["KazooEmulator", "KazooScale", "Recording", "User", "GREGORIAN_OFFSET", "MAX_RANGE", "to_gregorian",
           "from_gregorian", "modb_of", "kazoo_range_response", "source_table", "demo"]
