"""Loopback emulator of the 8x8 Cloud Storage Service (CSS v3) and its token endpoint.

Follows /work/shared/reference/apis.md §1 (where this emulator and apis.md disagree,
apis.md wins). Paths, relative to `emu.url`:

    POST /oauth/v2/token                              client credentials, HTTP Basic
    GET  /storage/{region}/v3/regions                 the account's regions, from any region
    GET  /storage/{region}/v3/objects                 FIQL search, sort, pageKey offset, limit
    GET  /storage/{region}/v3/objects/{id}[/metadata] one object
    GET  /storage/{region}/v3/objects/{id}/content    bytes (Range), or ?presignUrl=true
    POST /storage/{region}/v3/objects/{id}/restore    ARCHIVED -> AVAILABLE after a delay
    POST /storage/{region}/v3/bulk/download/start     JSON array of ids -> zipName
    GET  /storage/{region}/v3/bulk/download/status[/{zipName}]
    GET  /storage/{region}/v3/bulk/download/{zipName} the zip (404 until DONE)
    POST /storage/{region}/v3/bulk/download/cancel/{zipName}
    PUT  /storage/{region}/v3/bulk/download/clear
    DELETE /storage/{region}/v3/bulk                  JSON array of ids -> REVOKED
    GET  /s3/{bucket}/{id}?X-Amz-...                  presigned content (403 once expired)

Quirks reproduced: token numbers are strings (`expires_in "1799"`); an expired token
answers 401 with Apigee's fault body; time filters compare epoch milliseconds while
objects show `YYYY-MM-DDTHH:MM:SS`; `pageKey` in a page is request offset + limit even
on the last page; only AVAILABLE objects unless the filter names `objectState`;
`limit` above 100 is clamped; zip members are named by objectName, duplicates
included. Switches: `listing_as_array` / `bulk_as_array` (the OpenAPI's array
wrapping), `include_total`, `stored_bytes_as_string`, `date_filter_500` (the field
report), `content_ranges`, `presign_shape`.

Bulk jobs: a job reaches its final status on its `bulk_polls`-th status call and not
before `bulk_seconds` of emulator time have passed (`bulk_polls=0`: the start answer
is already final). `plan_job(...)` queues the outcome of the next job: a status
(FAILED, CANCELLED, PARTIAL_DONE, or any word), ids to leave out, ids whose member
bytes are altered (bad MD5), a truncated zip. `corrupt_ids` alters members in every
zip. Ids that are unknown or not AVAILABLE are left out and make the job PARTIAL_DONE
(FAILED when nothing is left). `jobs_started` counts jobs.

Deletes (apis.md §1.7): `DELETE /{region}/v3/bulk` with a JSON array of ids moves
the objects to REVOKED (hidden by the default AVAILABLE filter, content 404);
`purge()` turns them DELETED later. The answer is `delete_status` (200 with an empty
body, or 204). A body that is not a non-empty array of strings → 400; more than
`delete_max_ids` ids → 400; a read-only key → 403. Ids unknown in the region
(or already REVOKED/DELETED) follow `delete_unknown`: "reject" (404, nothing
deleted), "partial" (the known ones deleted, then 404) or "ignore" (the known ones
deleted, success). `deletes` records (region, ids) of every DELETE that deleted
something; faults match the route name `bulk_delete`.

Scale mode (issue 20): `scale=ScaleRegion(...)` adds a generated, read-only region
whose objects (fields, tags, bytes, MD5) are computed from (type, day, k) when a
search, a read or a bulk job needs them, so a year of 1,000 recordings a day costs
the emulator nearly nothing; they answer every search, read and job as the same
objects stored would. Adding or deleting objects there is refused. A search on the
callerId/calleeId tags generates only the candidates their numbers allow (issue 24).
"""
from __future__ import annotations

import base64
import collections
import datetime as dt
import email.utils
import functools
import hashlib
import heapq
import os
import random
import re
import shutil
import tempfile
import threading
import urllib.parse
import uuid
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Any

from .base import (Blob, BytesBlob, Emulator, FileBlob, Request, Response,
                   json_response, new_token, precondition_failed, range_response)
from .scale import ScaleBlob, day_start, stable_hash, time_in_day

UTC = dt.timezone.utc
VALID_REGIONS = ("us-west", "us-east", "uk", "ap", "ca")
TIME_FIELDS = ("createdTime", "updatedTime")
STRING_FIELDS = ("id", "type", "mimeType", "objectName", "objectState", "checksum", "checksumType",
                 "customerId", "userId", "bucketId")


# --------------------------------------------------------------------------- objects

@dataclass
class StoredObject:
    id: str
    region: str
    type: str
    objectName: str
    blob: Blob
    created: float                      # epoch seconds (UTC)
    updated: float
    mimeType: str = "audio/mpeg"
    objectState: str = "AVAILABLE"
    checksum: str = ""
    checksumType: str = "MD5"
    customerId: str = "0012J00002KTQJYQA5"
    userId: str = "TMZIdbKzQGWvvi_04IC9Lg"
    bucketId: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    shared: bool = False
    available_at: float | None = None   # a restore in progress

    @property
    def size(self) -> int:
        return self.blob.size

    def value(self, name: str):
        """A filter/sort field: times in epoch ms, storedBytes an int, tags by key."""
        if name == "createdTime":
            return int(self.created * 1000)
        if name == "updatedTime":
            return int(self.updated * 1000)
        if name == "storedBytes":
            return self.size
        if name == "shared":
            return "true" if self.shared else "false"
        if name in STRING_FIELDS:
            return getattr(self, name)
        return self.tags.get(name)


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(int(ts), dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


# --------------------------------------------------------------------------- FIQL

class FiqlError(ValueError):
    pass


OPERATORS = ("==", "!=", "=gt=", "=ge=", "=lt=", "=le=")


def parse_fiql(text: str):
    """FIQL as CSS documents it: six comparisons, `;` AND, `,` OR, parentheses.
    Returns a tree of ("and"|"or", [nodes]) and ("cmp", selector, op, value)."""
    pos = 0

    def peek() -> str:
        return text[pos] if pos < len(text) else ""

    def expr():
        nonlocal pos
        nodes = [conj()]
        while peek() == ",":
            pos += 1
            nodes.append(conj())
        return nodes[0] if len(nodes) == 1 else ("or", nodes)

    def conj():
        nonlocal pos
        nodes = [term()]
        while peek() == ";":
            pos += 1
            nodes.append(term())
        return nodes[0] if len(nodes) == 1 else ("and", nodes)

    def term():
        nonlocal pos
        if peek() == "(":
            pos += 1
            node = expr()
            if peek() != ")":
                raise FiqlError(f"expected ')' at {pos}")
            pos += 1
            return node
        m = re.compile(r"([^=!();,]+)(==|!=|=[A-Za-z]*=)").match(text, pos)
        if not m:
            raise FiqlError(f"expected a comparison at {pos}")
        selector, op = m.group(1).strip(), m.group(2)
        if op not in OPERATORS:
            raise FiqlError(f"unsupported operator {op}")
        pos = m.end()
        if peek() in ("'", '"'):
            quote = peek()
            end = text.find(quote, pos + 1)
            if end < 0:
                raise FiqlError("unterminated quote")
            value = text[pos + 1:end]
            pos = end + 1
        else:
            m2 = re.compile(r"[^();,]*").match(text, pos)
            value = m2.group(0)
            pos = m2.end()
        if not value:
            raise FiqlError(f"empty value for {selector}")
        return ("cmp", selector, op, value)

    node = expr()
    if pos != len(text):
        raise FiqlError(f"unexpected {text[pos]!r} at {pos}")
    return node


def selectors(node) -> set[str]:
    if node[0] == "cmp":
        return {node[1]}
    return set().union(*(selectors(n) for n in node[1]))


def _as_number(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def evaluate(node, obj: StoredObject) -> bool:
    kind = node[0]
    if kind == "and":
        return all(evaluate(n, obj) for n in node[1])
    if kind == "or":
        return any(evaluate(n, obj) for n in node[1])
    _, selector, op, raw = node
    actual = obj.value(selector)
    if actual is None:
        return op == "!="
    if selector in TIME_FIELDS or selector == "storedBytes":
        if not re.fullmatch(r"-?\d+", raw):
            raise FiqlError(f"{selector} needs a number (epoch milliseconds), got {raw!r}")
        want: Any = int(raw)
    else:
        want = raw
        a, b = _as_number(actual), _as_number(raw)
        if op not in ("==", "!=") and a is not None and b is not None:
            actual, want = a, b
        else:
            actual = str(actual)
    if op == "==":
        return actual == want
    if op == "!=":
        return actual != want
    if op == "=gt=":
        return actual > want
    if op == "=ge=":
        return actual >= want
    if op == "=lt=":
        return actual < want
    return actual <= want


# --------------------------------------------------------------------------- bulk jobs

@dataclass
class JobPlan:
    status: str = "DONE"                 # the final status word
    missing: set[str] | None = None      # ids left out (PARTIAL_DONE without it: the last id)
    corrupt: set[str] = field(default_factory=set)   # member bytes altered: bad MD5
    truncate: bool = False               # serve only the first half of the zip
    polls: int | None = None             # overrides the emulator's bulk_polls


@dataclass
class Job:
    zip_name: str
    region: str
    ids: list[str]
    plan: JobPlan
    created: float
    polls_needed: int
    polls: int = 0
    final: str = "DONE"
    missing: set[str] = field(default_factory=set)
    cancelled: bool = False
    zip_path: str | None = None


class SliceBlob(Blob):
    def __init__(self, blob: Blob, size: int):
        self.blob = blob
        self.size = size

    def read(self, offset: int, length: int) -> bytes:
        return self.blob.read(offset, max(0, min(length, self.size - offset)))


class CorruptBlob(Blob):
    """The same size as `blob`, first byte flipped: the MD5 no longer matches."""

    def __init__(self, blob: Blob):
        self.blob = blob
        self.size = blob.size

    def read(self, offset: int, length: int) -> bytes:
        data = self.blob.read(offset, length)
        if offset == 0 and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        return data


# --------------------------------------------------------------------------- scale mode

def sort_key(obj: StoredObject, field_name: str):
    """How a search orders objects by `field_name`: numbers before strings, ties by id."""
    v = obj.value(field_name)
    return (0, v, obj.id) if isinstance(v, int) else (1, str(v or ""), obj.id)


def _bad_number(node) -> bool:
    """Whether the tree holds a comparison `evaluate` refuses: a time or a size that is
    not a number."""
    if node[0] != "cmp":
        return any(_bad_number(n) for n in node[1])
    return (node[1] in TIME_FIELDS or node[1] == "storedBytes") and not re.fullmatch(r"-?\d+", node[3])


class _Unplanned(Exception):
    """A search a scale region cannot answer from positions (see ScaleRegion)."""


_SCALE_ID_RE = re.compile(r"([0-9a-f]{4})([0-9a-f]{4})-([0-9a-f]{4})-4([0-9a-f])[0-9a-f]{2}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_FIRST_NAMES = ("Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Niklaus")
_LAST_NAMES = ("Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson",
               "Perlman", "Wirth")


@dataclass(frozen=True)
class ScaleRegion:
    """A generated, read-only region (issue 20): for each (type, count) of `types`,
    `count` objects a day for `days` days from `start`, with the fields and tags real
    recordings carry, computed from (type, day, k) whenever a search, a read or a
    bulk job needs them. Nothing is stored per object.

    Object k of a day is created at a time spread over the day that increases with k
    (so no two objects of a type share a createdTime; updatedTime is the same).
    Ids are UUID-shaped and sort as (type index, day, k). Sizes lie between
    `min_size` and `max_size`; the content is a `ScaleBlob` and the checksum its real
    MD5 (cheap to compute for that blob).

    A search is answered from positions (bisection over the time order, a merge for
    several types) when its filter ANDs comparisons of `type` (==, !=, or an OR of
    ==), of createdTime/updatedTime (anything but !=) and of objectState, and it sorts
    by createdTime, updatedTime, type or id. That covers every search recfs's 8x8
    client makes (type probes, time-window probes, day pages) and a plain client's
    paging of a whole region. Any other search generates every object of the region
    and filters and sorts them as `_search` does stored ones: the same answer, slowly.

    The parties of a call recording come from its position i (issue 24), so that a
    search for one caller is answered without generating the region: the callerId tag
    is one of `callers` numbers, `{caller_prefix}xxxx` (+1669555xxxx), number (i * CALLER_STRIDE) mod
    `callers` (at 1,000 a day and 2,000 callers, a caller calls every other day); the
    calleeId one of `callees` lines `{callee_prefix}xxxx`, number i mod `callees`. A filter
    that ANDs an equality (or an OR of equalities) on these tags with the comparisons
    above generates only the positions those numbers allow, and keeps those that
    match the whole filter; the rest of the filter may then be anything.
    """
    region: str = "ap"
    types: tuple[tuple[str, int], ...] = (("callrecording", 1000), ("voicemail", 40))
    start: dt.date = dt.date(2024, 1, 1)
    days: int = 365
    min_size: int = 16_000
    max_size: int = 960_000
    seed: int = 0
    callers: int = 2000
    callees: int = 50
    caller_prefix: str = "+1669555"    # caller k is {caller_prefix}{k:04d}
    callee_prefix: str = "+1669200"

    CALLER_STRIDE = 7919           # a prime: i -> i * stride mod callers is a permutation
    PARTY_TYPE = "callrecording"   # the type whose objects carry callerId and calleeId

    def __post_init__(self):
        if not (1 <= self.callers <= 10_000 and 1 <= self.callees <= 10_000
                and self.callers % self.CALLER_STRIDE):
            raise ValueError("callers, callees: 1 to 10,000")
        names = [name for name, _ in self.types]
        if not names or len(set(names)) != len(names) or len(names) > 0xFFFF:
            raise ValueError("types: distinct (name, count a day) pairs")
        if not all(1 <= count <= 86_400 for _, count in self.types):
            raise ValueError("types: 1 to 86,400 objects a day")
        if not (1 <= self.days <= 0xFFFF and 0 <= self.min_size <= self.max_size):
            raise ValueError("days: 1 to 65,535; 0 <= min_size <= max_size")

    # -- the objects
    @property
    def total(self) -> int:
        return self.days * sum(count for _, count in self.types)

    def length(self, t: int) -> int:
        """Objects of type index `t`; position i is day i // count, k = i % count."""
        return self.days * self.types[t][1]

    def created(self, t: int, i: int) -> int:
        """createdTime of object (t, i), epoch seconds."""
        d, k = divmod(i, self.types[t][1])
        return int(day_start(self.start, d)) + time_in_day(self.types[t][1], k, self.seed, self.region, t, d)

    def _ms(self, t: int, i: int) -> int:
        return self.created(t, i) * 1000

    def _digest(self, t: int, d: int, k: int) -> str:
        ident = f"8x8/{self.seed}/{self.region}/{t}/{d}/{k}".encode()
        return hashlib.blake2b(ident, digest_size=16).hexdigest()

    def oid(self, t: int, i: int) -> str:
        d, k = divmod(i, self.types[t][1])
        h = self._digest(t, d, k)
        return f"{t:04x}{d:04x}-{k >> 4:04x}-4{k & 15:x}{h[:2]}-{'89ab'[int(h[2], 16) & 3]}{h[3:6]}-{h[6:18]}"

    def locate(self, oid: str) -> tuple[int, int] | None:
        """(t, i) of a generated id, or None."""
        m = _SCALE_ID_RE.fullmatch(oid)
        if not m:
            return None
        t, d, k = int(m.group(1), 16), int(m.group(2), 16), int(m.group(3), 16) * 16 + int(m.group(4), 16)
        if t >= len(self.types) or d >= self.days or k >= self.types[t][1]:
            return None
        i = d * self.types[t][1] + k
        return (t, i) if self.oid(t, i) == oid else None

    def find(self, oid: str) -> StoredObject | None:
        at = self.locate(oid)
        return None if at is None else self.object(*at)

    def object(self, t: int, i: int) -> StoredObject:
        type_, count = self.types[t]
        d, k = divmod(i, count)
        oid = self.oid(t, i)
        h = int(self._digest(t, d, k), 16)
        created = self.created(t, i)
        size = self.min_size + h % (self.max_size - self.min_size + 1)
        blob = ScaleBlob(f"8x8/{self.seed}/{self.region}/{oid}", size)
        when = dt.datetime.fromtimestamp(created, UTC)
        ext = 200 + (h >> 20) % 50
        duration = max(1000, size * 1000 // 16_000)      # 8 kHz, 16-bit mono
        tags = {"callId": f"int-{(h >> 24) & 0xFFFFFFFFFF:x}-{(h >> 64) & 0xFFFFFFFF:x}",
                "startTime": str(created * 1000), "endTime": str(created * 1000 + duration),
                "duration": str(duration), "direction": "INBOUND" if (h >> 100) & 1 else "OUTBOUND"}
        if type_ == "callrecording":
            name = f"ipbx:acmecorp:callrecording:users:{ext}:{when:%Y%m%d-%H%M%S}-{k:06d}_E.wav"
            tags.update(pbxId="acmecorp", extensionNumber=str(ext), callerId=self.caller_number(i),
                        calleeId=self.callee_number(i),
                        userName=f"{_FIRST_NAMES[ext % 10]} {_LAST_NAMES[ext // 10 % 10]}")
        elif type_ == "callcenterrecording":
            name = f"int-{(h >> 24) & 0xFFFFFFFFFF:x}-{when:%Y%m%d-%H%M%S}-{k:06d}-supertenantcsm01.wav"
            tags.update(agentId=f"ag{1000 + ext}", queueName="Support", tenantId="acmecorp01")
        else:
            name = f"{type_}-{when:%Y%m%d-%H%M%S}-{k:06d}.wav"
        user = base64.urlsafe_b64encode(hashlib.blake2b(f"user{ext}".encode(), digest_size=16).digest())
        bucket = uuid.UUID(int=stable_hash("bucket", self.seed, self.region) << 64 | stable_hash(self.region),
                           version=4)
        return StoredObject(id=oid, region=self.region, type=type_, objectName=name, blob=blob,
                            created=float(created), updated=float(created), mimeType="audio/wav",
                            checksum=blob.md5(), userId=user.decode().rstrip("="), bucketId=str(bucket),
                            tags=tags)

    # -- the parties (call recordings only)
    def caller_number(self, i: int) -> str:
        return f"{self.caller_prefix}{i * self.CALLER_STRIDE % self.callers:04d}"

    def callee_number(self, i: int) -> str:
        return f"{self.callee_prefix}{i % self.callees:04d}"

    def caller_positions(self, number: str) -> range:
        """The positions of the call recordings whose callerId is `number`."""
        period, residues = self._party_residues("callerId", number)
        t = self._party_type()
        return range(residues.pop(), self.length(t), period) if residues and t is not None else range(0)

    def _party_type(self) -> int | None:
        return next((t for t, (name, _) in enumerate(self.types) if name == self.PARTY_TYPE), None)

    def _party_residues(self, tag: str, value: str) -> tuple[int, set[int]] | None:
        """(period, residues): the call recordings whose `tag` is `value` are those at
        positions i with i mod period in residues; None for a tag i does not give."""
        if tag == "callerId":
            prefix, count = self.caller_prefix, self.callers
        elif tag == "calleeId":
            prefix, count = self.callee_prefix, self.callees
        else:
            return None
        m = re.fullmatch(re.escape(prefix) + r"(\d{4})", value)
        k = int(m.group(1)) if m else count
        if k >= count:
            return count, set()
        if tag == "callerId":
            k = k * pow(self.CALLER_STRIDE, -1, count) % count
        return count, {k}

    def _tag_narrowing(self, node) -> list[tuple[int, set[int]]] | None:
        """For an equality on callerId or calleeId, or an OR of such equalities: the
        (period, residues) whose union holds every call recording it matches."""
        nodes = node[1] if node[0] == "or" else [node]
        out = []
        for n in nodes:
            if n[0] != "cmp" or n[2] != "==":
                return None
            got = self._party_residues(n[1], n[3])
            if got is None:
                return None
            out.append(got)
        return out

    def objects(self):
        """Every object, in (type index, position) order."""
        for t in range(len(self.types)):
            for i in range(self.length(t)):
                yield self.object(t, i)

    def flat_pages(self, limit: int = 100) -> int:
        """Pages of a search of everything in the region at `limit` a page."""
        return max(1, -(-self.total // limit))

    def folder_pages(self, limit: int = 100) -> int:
        """Pages of one search per (type, day), as day folders are listed."""
        return self.days * sum(-(-count // limit) for _, count in self.types)

    # -- searches
    def search(self, tree, sort_field: str, direction: str, offset: int,
               limit: int) -> tuple[list[StoredObject], int]:
        """One page of a search and the number of matches, as `_search` would answer
        with these objects stored. FiqlError for a filter it would refuse."""
        try:
            ranges, narrow = self._plan(tree)
            if narrow is not None:
                return self._search_candidates(tree, ranges, narrow, sort_field, direction, offset, limit)
            ordered = self._order(ranges, sort_field)
        except _Unplanned:
            return self._search_all(tree, sort_field, direction, offset, limit)
        total = sum(b - a for a, b in ranges.values())
        if direction == "DESC":        # keys are unique: DESC is ASC reversed
            at = ordered(max(0, total - offset - limit), max(0, total - offset))[::-1]
        else:
            at = ordered(offset, min(total, offset + limit))
        return [self.object(t, i) for t, i in at], total

    def _search_all(self, tree, sort_field, direction, offset, limit):
        hits = []
        for t in range(len(self.types)):
            for i in range(self.length(t)):
                obj = self.object(t, i)
                if tree is None or evaluate(tree, obj):
                    hits.append((sort_key(obj, sort_field), t, i))
        hits.sort(reverse=direction == "DESC")
        return [self.object(t, i) for _, t, i in hits[offset:offset + limit]], len(hits)

    def _plan(self, tree) -> tuple[dict[int, tuple[int, int]], list[tuple[int, set[int]]] | None]:
        """The positions [a, b) per type the filter's comparisons of type, times and
        state admit, and the sparsest tag narrowing among its conjuncts (None: none, and
        then every conjunct is one of those comparisons; otherwise the candidates are
        checked against the whole filter, so other conjuncts may be anything)."""
        conjuncts, stack = [], [tree] if tree is not None else []
        while stack:
            node = stack.pop()
            if node[0] == "and":
                stack.extend(node[1])
            else:
                conjuncts.append(node)
        if tree is not None and _bad_number(tree):    # for the slow path to refuse as stored ones do
            raise _Unplanned
        plain, narrowings, other = [], [], False
        for node in conjuncts:
            try:
                self._ranges(node)
                plain.append(node)
            except _Unplanned:
                narrowing = self._tag_narrowing(node)
                if narrowing is None:
                    other = True
                else:
                    narrowings.append(narrowing)
        if not narrowings:
            if other:
                raise _Unplanned
            return self._ranges(tree), None
        ranges = self._ranges(("and", plain)) if plain else self._ranges(None)
        party = self._party_type()
        ranges = {t: r for t, r in ranges.items() if t == party}      # no other type has the tags
        return ranges, min(narrowings, key=lambda n: sum(len(r) / p for p, r in n))

    def _search_candidates(self, tree, ranges, narrow, sort_field, direction, offset, limit):
        """A search answered from the positions a tag narrowing allows: each candidate
        generated and matched against the whole filter, then sorted as `_search_all`."""
        hits = []
        for t, (a, b) in ranges.items():
            positions = sorted({i for period, residues in narrow for r in residues
                                for i in range(a + (r - a) % period, b, period)})
            for i in positions:
                obj = self.object(t, i)
                if evaluate(tree, obj):
                    hits.append((sort_key(obj, sort_field), t, i))
        hits.sort(reverse=direction == "DESC")
        return [self.object(t, i) for _, t, i in hits[offset:offset + limit]], len(hits)

    def _ranges(self, tree) -> dict[int, tuple[int, int]]:
        """For every type the filter admits, the positions [a, b) it matches."""
        types = set(range(len(self.types)))
        bounds = [None, None]          # createdTime in ms, both inclusive
        index = {name: t for t, (name, _) in enumerate(self.types)}

        def bound(op: str, v: int) -> None:
            if op in ("=ge=", "=gt=", "=="):
                v_lo = v + (op == "=gt=")
                bounds[0] = v_lo if bounds[0] is None else max(bounds[0], v_lo)
            if op in ("=le=", "=lt=", "=="):
                v_hi = v - (op == "=lt=")
                bounds[1] = v_hi if bounds[1] is None else min(bounds[1], v_hi)

        def visit(node) -> None:
            nonlocal types
            if node[0] == "and":
                for n in node[1]:
                    visit(n)
                return
            if node[0] == "or":
                if not all(n[0] == "cmp" and n[1] == "type" and n[2] == "==" for n in node[1]):
                    raise _Unplanned
                types &= {index[n[3]] for n in node[1] if n[3] in index}
                return
            _, selector, op, raw = node
            if selector == "type" and op in ("==", "!="):
                named = {index[raw]} if raw in index else set()
                types = types & named if op == "==" else types - named
            elif selector in TIME_FIELDS and op != "!=" and re.fullmatch(r"-?\d+", raw):
                bound(op, int(raw))
            elif selector == "objectState" and op in ("==", "!="):
                if (raw == "AVAILABLE") != (op == "=="):     # every generated object is AVAILABLE
                    types = set()
            else:
                raise _Unplanned

        if tree is not None:
            visit(tree)
        lo, hi = bounds
        out = {}
        for t in sorted(types):
            n = self.length(t)
            a = 0 if lo is None else self._first_at(t, lo, 0, n)
            b = n if hi is None else self._first_at(t, hi + 1, a, n)
            if a < b:
                out[t] = (a, b)
        return out

    def _first_at(self, t: int, ms: int, a: int, b: int) -> int:
        """The first position in [a, b) of type t created at or after `ms` (b if none)."""
        while a < b:
            mid = (a + b) // 2
            if self._ms(t, mid) < ms:
                a = mid + 1
            else:
                b = mid
        return a

    def _order(self, ranges: dict[int, tuple[int, int]], sort_field: str):
        """A function (r0, r1) -> the (t, i) of ranks [r0, r1) in the ascending order."""
        if sort_field in TIME_FIELDS:
            return lambda r0, r1: self._merged(ranges, r0, r1)
        if sort_field == "type":
            seq = sorted(ranges, key=lambda t: self.types[t][0])
        elif sort_field == "id":
            seq = sorted(ranges)
        else:
            raise _Unplanned

        def concatenated(r0: int, r1: int) -> list[tuple[int, int]]:
            out, base = [], 0
            for t in seq:
                a, b = ranges[t]
                lo, hi = max(r0 - base, 0), min(r1 - base, b - a)
                out += [(t, a + j) for j in range(lo, hi)]
                base += b - a
            return out
        return concatenated

    def _merged(self, ranges: dict[int, tuple[int, int]], r0: int, r1: int) -> list[tuple[int, int]]:
        """Ranks [r0, r1) of the types' ranges merged by (createdTime, id): within a type
        times increase with position, and at equal times ids order by type index."""
        if r0 >= r1:
            return []
        if len(ranges) == 1:
            (t, (a, _)), = ranges.items()
            return [(t, a + j) for j in range(r0, r1)]

        def earlier(ms: int) -> int:           # matches created before `ms`
            return sum(self._first_at(t, ms, a, b) - a for t, (a, b) in ranges.items())
        lo = min(self._ms(t, a) for t, (a, _) in ranges.items())
        hi = max(self._ms(t, b - 1) for t, (_, b) in ranges.items())
        while lo < hi:                          # the largest ms with earlier(ms) <= r0
            mid = (lo + hi + 1) // 2
            if earlier(mid) <= r0:
                lo = mid
            else:
                hi = mid - 1
        heap = []
        for t, (a, b) in ranges.items():
            p = self._first_at(t, lo, a, b)
            if p < b:
                heap.append((self._ms(t, p), t, p))
        heapq.heapify(heap)
        skip = r0 - earlier(lo)
        out: list[tuple[int, int]] = []
        while heap and len(out) < skip + (r1 - r0):
            _, t, p = heapq.heappop(heap)
            out.append((t, p))
            if p + 1 < ranges[t][1]:
                heapq.heappush(heap, (self._ms(t, p + 1), t, p + 1))
        return out[skip:]


# --------------------------------------------------------------------------- emulator

class EightByEight(Emulator):
    name = "8x8"

    def __init__(self, *, client_id: str = "recfs-8x8-key", client_secret: str = "recfs-8x8-secret",
                 regions: tuple[str, ...] | list[str] = ("us-east", "uk"), token_lifetime: int = 1799,
                 bulk_polls: int = 2, bulk_seconds: float = 0.0, bulk_limit_bytes: int = 2 * 1000**3,
                 bulk_max_ids: int | None = None, listing_as_array: bool = False,
                 bulk_as_array: bool = False, include_total: bool = False,
                 stored_bytes_as_string: bool = False, date_filter_500: bool = False,
                 content_ranges: bool = True, presign_shape: str = "text",
                 presign_lifetime: int = 1800, read_only_key: bool = False,
                 restore_seconds: float = 5.0, zip_compression: int = zipfile.ZIP_DEFLATED,
                 delete_status: int = 200, delete_unknown: str = "reject",
                 delete_max_ids: int | None = None,
                 scale: ScaleRegion | tuple[ScaleRegion, ...] = (), **kw):
        super().__init__(**kw)
        self.client_id = client_id
        self.client_secret = client_secret
        self.regions = list(regions)
        self.token_lifetime = token_lifetime
        self.bulk_polls = bulk_polls
        self.bulk_seconds = bulk_seconds
        self.bulk_limit_bytes = bulk_limit_bytes
        self.bulk_max_ids = bulk_max_ids
        self.listing_as_array = listing_as_array
        self.bulk_as_array = bulk_as_array
        self.include_total = include_total
        self.stored_bytes_as_string = stored_bytes_as_string
        self.date_filter_500 = date_filter_500
        self.content_ranges = content_ranges
        self.presign_shape = presign_shape
        self.presign_lifetime = presign_lifetime
        self.read_only_key = read_only_key
        self.restore_seconds = restore_seconds
        self.zip_compression = zip_compression
        if delete_status not in (200, 204) or delete_unknown not in ("reject", "partial", "ignore"):
            raise ValueError("delete_status: 200 or 204; delete_unknown: reject, partial or ignore")
        self.delete_status = delete_status
        self.delete_unknown = delete_unknown
        self.delete_max_ids = delete_max_ids
        self.deletes: list[tuple[str, list[str]]] = []
        self.objects: dict[str, StoredObject] = {}
        self.tokens: dict[str, float] = {}           # token -> expiry (emulator clock)
        self.presigned: dict[str, tuple[str, float]] = {}
        self.jobs: dict[str, Job] = {}
        self.job_plans: collections.deque[JobPlan] = collections.deque()
        self.corrupt_ids: set[str] = set()
        self._lock = threading.RLock()
        self._zip_dir = tempfile.mkdtemp(prefix="recfs-8x8-zips-")
        self._rng = random.Random(0)
        # scale mode: generated, read-only regions, by name
        self.scales: dict[str, ScaleRegion] = {
            r.region: r for r in ((scale,) if isinstance(scale, ScaleRegion) else scale)}
        self.regions += [r for r in self.scales if r not in self.regions]

        base = r"/storage/(?P<region>[^/]+)/v3"
        self.route("POST", r"/oauth/v2/token", "token", self._token)
        self.route("GET", base + r"/regions", "regions", self._regions)
        self.route("GET", base + r"/objects", "objects", self._search)
        self.route("GET", base + r"/objects/(?P<id>[^/]+)/content", "content", self._content)
        self.route("POST", base + r"/objects/(?P<id>[^/]+)/restore", "restore", self._restore)
        self.route("GET", base + r"/objects/(?P<id>[^/]+)(?:/metadata)?", "object", self._object)
        self.route("POST", base + r"/bulk/download/start", "bulk_start", self._bulk_start)
        self.route("GET", base + r"/bulk/download/status", "bulk_statuses", self._bulk_statuses)
        self.route("GET", base + r"/bulk/download/status/(?P<zip>[^/]+)", "bulk_status", self._bulk_status)
        self.route("POST", base + r"/bulk/download/cancel/(?P<zip>[^/]+)", "bulk_cancel", self._bulk_cancel)
        self.route("PUT", base + r"/bulk/download/clear", "bulk_clear", self._bulk_clear)
        self.route("GET", base + r"/bulk/download/(?P<zip>[^/]+)", "bulk_download", self._bulk_download)
        self.route("DELETE", base + r"/bulk", "bulk_delete", self._bulk_delete)
        self.route("GET", r"/s3/(?P<bucket>[^/]+)/(?P<id>[^/]+)", "presigned", self._presigned)

    # ------------------------------------------------------------------ set-up
    @property
    def api_url(self) -> str:
        return f"{self.url}/storage"

    @property
    def token_url(self) -> str:
        return f"{self.url}/oauth/v2/token"

    @property
    def jobs_started(self) -> int:
        return len(self.jobs)

    def add_object(self, region: str, type: str, objectName: str, blob: Blob | bytes,
                   created: float | dt.datetime, *, id: str | None = None, mimeType: str | None = None,
                   state: str = "AVAILABLE", tags: dict[str, str] | None = None,
                   checksum: str | None = None, updated: float | None = None,
                   bucketId: str | None = None) -> StoredObject:
        if region in self.scales:
            raise ValueError(f"{region} is a generated (scale) region: it is read-only")
        if isinstance(blob, (bytes, bytearray)):
            blob = BytesBlob(blob)
        if isinstance(created, dt.datetime):
            if created.tzinfo is None:
                created = created.replace(tzinfo=dt.timezone.utc)
            created = created.timestamp()
        oid = id or str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        if mimeType is None:
            mimeType = {"transcription": "application/json", "agentnotes": "text/plain",
                        "meeting": "video/mp4"}.get(type, "audio/mpeg")
        obj = StoredObject(id=oid, region=region, type=type, objectName=objectName, blob=blob,
                           created=float(created), updated=float(updated or created),
                           mimeType=mimeType, objectState=state,
                           checksum=blob.md5() if checksum is None else checksum,
                           bucketId=bucketId or str(uuid.UUID(int=self._rng.getrandbits(128), version=4)),
                           tags=dict(tags or {}))
        with self._lock:
            self.objects[oid] = obj
        return obj

    def plan_job(self, status: str = "DONE", *, missing: set[str] | list[str] | None = None,
                 corrupt: set[str] | list[str] = (), truncate: bool = False,
                 polls: int | None = None) -> JobPlan:
        """Queue the outcome of the next bulk job."""
        plan = JobPlan(status, set(missing) if missing is not None else None, set(corrupt),
                       truncate, polls)
        self.job_plans.append(plan)
        return plan

    @property
    def deleted_ids(self) -> set[str]:
        return {oid for _, ids in self.deletes for oid in ids}

    def purge(self) -> None:
        """What the service does some time after a delete: REVOKED objects become DELETED."""
        with self._lock:
            for oid in self.deleted_ids:
                obj = self.objects.get(oid)
                if obj is not None and obj.objectState == "REVOKED":
                    obj.objectState = "DELETED"

    def expire_tokens(self) -> None:
        with self._lock:
            for token in self.tokens:
                self.tokens[token] = self.now() - 1

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self._zip_dir, ignore_errors=True)

    # ------------------------------------------------------------------ helpers
    def _fault(self, status: int, message: str, code: str | None = None) -> Response:
        body: dict[str, Any] = {"status": status, "message": message}
        if code:
            body["errorCode"] = code
        return json_response(body, status)

    def _auth(self, req: Request) -> Response | None:
        header = req.header("authorization") or ""
        if not header.startswith("Bearer "):
            return json_response({"fault": {"faultstring": "Invalid access token",
                                            "detail": {"errorcode": "oauth.v2.InvalidAccessToken"}}}, 401)
        token = header[7:].strip()
        with self._lock:
            expires = self.tokens.get(token)
        if expires is None:
            return json_response({"fault": {"faultstring": "Invalid access token",
                                            "detail": {"errorcode": "oauth.v2.InvalidAccessToken"}}}, 401)
        if self.now() >= expires:
            return json_response({"fault": {"faultstring": "Access Token expired",
                                            "detail": {"errorcode": "keymanagement.service.access_token_expired"}}}, 401)
        return None

    def _region(self, req: Request) -> tuple[str | None, Response | None]:
        region = req.match.group("region")
        if region not in VALID_REGIONS and region not in self.regions:
            return None, self._fault(404, f"unknown region {region}")
        return region, None

    def _guard(self, req: Request) -> tuple[str | None, Response | None]:
        denied = self._auth(req)
        if denied:
            return None, denied
        return self._region(req)

    def _state(self, obj: StoredObject) -> str:
        if obj.available_at is not None and self.now() >= obj.available_at:
            obj.objectState, obj.available_at = "AVAILABLE", None
        return obj.objectState

    def render(self, obj: StoredObject) -> dict:
        self._state(obj)
        return {
            "id": obj.id, "type": obj.type, "mimeType": obj.mimeType, "objectName": obj.objectName,
            "checksumType": obj.checksumType, "checksum": obj.checksum, "customerId": obj.customerId,
            "userId": obj.userId,
            "storedBytes": str(obj.size) if self.stored_bytes_as_string else obj.size,
            "createdTime": iso(obj.created), "updatedTime": iso(obj.updated),
            "objectState": obj.objectState, "bucketId": obj.bucketId,
            "tags": [{"key": k, "value": v} for k, v in obj.tags.items()], "shared": obj.shared,
        }

    def _find(self, region: str, oid: str) -> StoredObject | None:
        obj = self.objects.get(oid)
        if obj is None and region in self.scales:
            obj = self.scales[region].find(oid)
        return obj if obj is not None and obj.region == region else None

    def _any(self, oid: str) -> StoredObject | None:
        """The object `oid` in whichever region, stored or generated."""
        obj = self.objects.get(oid)
        for scale in self.scales.values():
            obj = obj or scale.find(oid)
        return obj

    # ------------------------------------------------------------------ routes
    def _token(self, req: Request) -> Response:
        header = req.header("authorization") or ""
        try:
            user, _, password = base64.b64decode(header.split(" ", 1)[1]).decode().partition(":") \
                if header.startswith("Basic ") else ("", "", "")
        except (ValueError, IndexError):
            user, password = "", ""
        if (user, password) != (self.client_id, self.client_secret):
            return json_response({"ErrorCode": "invalid_client", "Error": "ClientId is Invalid"}, 401)
        if req.form().get("grant_type") != "client_credentials":
            return json_response({"ErrorCode": "invalid_request",
                                  "Error": "Unsupported grant type : " + req.form().get("grant_type", "")}, 400)
        token = new_token(28)
        issued = self.now()
        with self._lock:
            self.tokens[token] = issued + self.token_lifetime
        products = ["CE-PCS-Product", "Chat", "storage", "vcc"]
        return json_response({
            "access_token": token, "token_type": "BearerToken",
            "api_product_list": "[" + ", ".join(products) + "]", "status": "approved", "scope": "",
            "refresh_token_expires_in": "0", "expires_in": str(self.token_lifetime),
            "refresh_count": "0", "developer.email": "deprecated",
            "issued_at": str(int(issued * 1000)), "client_id": "deprecated",
            "api_product_list_json": products,
        })

    def _regions(self, req: Request) -> Response:
        _, problem = self._guard(req)
        return problem or json_response(list(self.regions))

    def _search(self, req: Request) -> Response:
        region, problem = self._guard(req)
        if problem:
            return problem
        q = req.query
        filter_text = q.get("filter", "")
        try:
            tree = parse_fiql(filter_text) if filter_text else None
        except FiqlError as exc:
            return self._fault(400, f"invalid filter: {exc}")
        named = selectors(tree) if tree else set()
        if self.date_filter_500 and named & set(TIME_FIELDS):
            return self._fault(500, "Internal Server Error")
        try:
            offset = int(q.get("pageKey", "0") or 0)
            limit = int(q.get("limit", "100") or 100)
        except ValueError:
            return self._fault(400, "pageKey and limit must be integers")
        if offset < 0 or limit < 1:
            return self._fault(400, "pageKey must be >= 0 and limit >= 1")
        limit = min(limit, 100)
        direction = q.get("sortDirection", "DESC").upper()
        if direction not in ("ASC", "DESC"):
            return self._fault(400, "sortDirection must be ASC or DESC")
        sort_field = q.get("sortField") or "createdTime"
        if region in self.scales:
            try:
                page, total = self.scales[region].search(tree, sort_field, direction, offset, limit)
            except FiqlError as exc:
                return self._fault(400, f"invalid filter: {exc}")
        else:
            with self._lock:
                candidates = [o for o in self.objects.values() if o.region == region]
            matches = []
            try:
                for obj in candidates:
                    state = self._state(obj)
                    if "objectState" not in named and state != "AVAILABLE":
                        continue
                    if tree is None or evaluate(tree, obj):
                        matches.append(obj)
            except FiqlError as exc:
                return self._fault(400, f"invalid filter: {exc}")
            matches.sort(key=lambda o: sort_key(o, sort_field), reverse=direction == "DESC")
            page = matches[offset:offset + limit]
            total = len(matches)
        body: dict[str, Any] = {"lastPage": offset + limit >= total, "pageKey": offset + limit,
                                "pageSize": len(page), "content": [self.render(o) for o in page]}
        if self.include_total:
            body["total"] = -(-total // limit)
        return json_response([body] if self.listing_as_array else body)

    def _object(self, req: Request) -> Response:
        region, problem = self._guard(req)
        if problem:
            return problem
        obj = self._find(region, req.match.group("id"))
        if obj is None:
            return self._fault(404, "object not found")
        return json_response(self.render(obj))

    def _readable(self, obj: StoredObject | None) -> Response | None:
        if obj is None:
            return self._fault(404, "object not found")
        state = self._state(obj)
        if state == "ARCHIVED":
            return self._fault(403, "object is archived; restore it first")
        if state != "AVAILABLE":
            return self._fault(404, f"object is {state}")
        return None

    def _content(self, req: Request) -> Response:
        region, problem = self._guard(req)
        if problem:
            return problem
        obj = self._find(region, req.match.group("id"))
        problem = self._readable(obj)
        if problem:
            return problem
        if req.query.get("presignUrl", "").lower() == "true":
            url = self.presign(obj)
            if self.presign_shape == "json":
                return json_response({"url": url})
            return Response(200, {"Content-Type": "text/plain"}, url.encode())
        return self._serve(req, obj)

    def _serve(self, req: Request, obj: StoredObject) -> Response:
        headers = {"Content-Type": obj.mimeType, "ETag": f'"{obj.checksum}"',
                   "Last-Modified": email.utils.formatdate(obj.updated, usegmt=True)}
        if not self.content_ranges:
            return precondition_failed(req, headers["ETag"]) or Response(200, headers, obj.blob)
        return range_response(req, obj.blob, headers)

    def replace(self, oid: str, blob: Blob) -> StoredObject:
        """New bytes for an object, in place: a new checksum and updatedTime."""
        with self._lock:
            obj = self.objects[oid]
            obj.blob = blob
            obj.checksum = blob.md5()
            obj.updated = max(self.now(), obj.updated + 1)
            return obj

    def presign(self, obj: StoredObject) -> str:
        signature = hashlib.sha256(new_token(32).encode()).hexdigest()
        now = self.now()
        with self._lock:
            self.presigned[signature] = (obj.id, now + self.presign_lifetime)
        stamp = dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        filename = base64.b64encode(obj.objectName.encode()).decode()
        query = urllib.parse.urlencode({
            "X-Amz-Algorithm": "AWS4-HMAC-SHA256", "X-Amz-Date": stamp,
            "X-Amz-SignedHeaders": "host", "X-Amz-Expires": str(self.presign_lifetime),
            "X-Amz-Credential": "AKIAEMULATOR/css/s3/aws4_request",
            "response-content-disposition": f'attachment; filename="=?UTF-8?b?{filename}?="',
            "X-Amz-Signature": signature})
        return f"{self.url}/s3/css-{obj.region}/{obj.id}?{query}"

    def _presigned(self, req: Request) -> Response:
        signature = req.query.get("X-Amz-Signature", "")
        with self._lock:
            grant = self.presigned.get(signature)
        denied = Response(403, {"Content-Type": "application/xml"},
                          b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code>"
                          b"<Message>Request has expired</Message></Error>")
        if grant is None or grant[0] != req.match.group("id") or self.now() >= grant[1]:
            return denied
        obj = self._any(grant[0])
        problem = self._readable(obj)
        return problem or self._serve(req, obj)

    def _restore(self, req: Request) -> Response:
        region, problem = self._guard(req)
        if problem:
            return problem
        if self.read_only_key:
            return self._fault(403, "the API key may not edit objects")
        obj = self._find(region, req.match.group("id"))
        if obj is None:
            return self._fault(404, "object not found")
        days = 7
        if req.body:
            try:
                days = int(req.json().get("expirationDays", 7))
            except (ValueError, AttributeError, TypeError):
                return self._fault(400, "expirationDays must be an integer")
        if not 1 <= days <= 10:
            return self._fault(400, "expirationDays must be between 1 and 10")
        if self._state(obj) == "ARCHIVED":
            obj.available_at = self.now() + self.restore_seconds
        return json_response({"expirationDays": days})

    # -- bulk
    def _job_status(self, job: Job) -> str:
        if job.cancelled:
            return "CANCELLED"
        done_by_polls = job.polls >= job.polls_needed
        done_by_time = self.now() >= job.created + self.bulk_seconds
        if done_by_polls and done_by_time:
            return job.final
        return "IN_PROGRESS" if job.polls >= 1 else "NOT_STARTED"

    def _job_body(self, job: Job, status: str) -> dict:
        return {"zipName": job.zip_name, "status": status,
                "content": [f"{i}:{'MISSING' if i in job.missing else status}" for i in job.ids]}

    def _bulk_answer(self, body: dict) -> Response:
        return json_response([body] if self.bulk_as_array else body)

    def _bulk_start(self, req: Request) -> Response:
        region, problem = self._guard(req)
        if problem:
            return problem
        try:
            ids = req.json()
        except ValueError:
            return self._fault(400, "the body must be a JSON array of object ids")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            return self._fault(400, "the body must be a non-empty JSON array of object ids")
        if self.bulk_max_ids is not None and len(ids) > self.bulk_max_ids:
            return self._fault(400, f"at most {self.bulk_max_ids} ids per request")
        plan = self.job_plans.popleft() if self.job_plans else JobPlan()
        with self._lock:
            present = []
            for oid in ids:
                obj = self._find(region, oid)
                if obj is not None and self._state(obj) == "AVAILABLE":
                    present.append(oid)
            missing = set(ids) - set(present)
            final = plan.status
            if final == "PARTIAL_DONE":
                missing |= plan.missing if plan.missing is not None else {ids[-1]}
            elif final == "DONE" and missing:
                final = "PARTIAL_DONE"
            if final in ("DONE", "PARTIAL_DONE"):
                if not set(ids) - missing:
                    final = "FAILED"
                elif sum(self._find(region, i).size for i in set(ids) - missing) > self.bulk_limit_bytes:
                    final = "FAILED"
            polls = self.bulk_polls if plan.polls is None else plan.polls
            job = Job(zip_name=f"{uuid.uuid4()}.zip", region=region, ids=list(ids), plan=plan,
                      created=self.now(), polls_needed=polls, final=final, missing=missing)
            self.jobs[job.zip_name] = job
        return self._bulk_answer(self._job_body(job, self._job_status(job)))

    def _job_in(self, req: Request, region: str) -> Job | None:
        """The job the path names, if it belongs to `region` (call with the lock held)."""
        job = self.jobs.get(req.match.group("zip"))
        return job if job is not None and job.region == region else None

    def _jobs_answer(self, jobs: list[Job]) -> Response:
        return json_response([{"zipName": j.zip_name, "status": self._job_status(j)} for j in jobs])

    def _bulk_status(self, req: Request) -> Response:
        region, problem = self._guard(req)
        if problem:
            return problem
        with self._lock:
            job = self._job_in(req, region)
            if job is None:
                return self._fault(404, "no such download")
            job.polls += 1
            body = self._job_body(job, self._job_status(job))
        return self._bulk_answer(body)

    def _bulk_statuses(self, req: Request) -> Response:
        region, problem = self._guard(req)
        if problem:
            return problem
        with self._lock:
            return self._jobs_answer([j for j in self.jobs.values() if j.region == region])

    def _bulk_cancel(self, req: Request) -> Response:
        region, problem = self._guard(req)
        if problem:
            return problem
        with self._lock:
            job = self._job_in(req, region)
            if job is None:
                return self._fault(404, "no such download")
            if self._job_status(job) in ("NOT_STARTED", "IN_PROGRESS"):
                job.cancelled = True
            return self._jobs_answer([job])

    def _bulk_clear(self, req: Request) -> Response:
        region, problem = self._guard(req)
        if problem:
            return problem
        with self._lock:
            for job in self.jobs.values():
                if job.region == region:
                    job.cancelled = job.cancelled or self._job_status(job) in ("NOT_STARTED", "IN_PROGRESS")
            return self._jobs_answer([j for j in self.jobs.values() if j.region == region])

    def _bulk_download(self, req: Request) -> Response:
        region, problem = self._guard(req)
        if problem:
            return problem
        with self._lock:
            job = self._job_in(req, region)
            if job is None:
                return self._fault(404, "no such download")
            status = self._job_status(job)
            if status not in ("DONE", "PARTIAL_DONE"):
                return self._fault(404, f"the download is {status}")
            if job.zip_path is None:
                job.zip_path = self._build_zip(job)
        blob: Blob = FileBlob(job.zip_path)
        if job.plan.truncate:
            blob = SliceBlob(blob, blob.size // 2)
        return range_response(req, blob, {"Content-Type": "application/zip",
                                          "Content-Disposition": f'attachment; filename="{job.zip_name}"'})

    def _build_zip(self, job: Job) -> str:
        path = os.path.join(self._zip_dir, job.zip_name)
        corrupt = job.plan.corrupt | self.corrupt_ids
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")       # duplicate names are the point
            with zipfile.ZipFile(path, "w", compression=self.zip_compression, compresslevel=1) as zf:
                for oid in job.ids:
                    if oid in job.missing:
                        continue
                    obj = self._find(job.region, oid)
                    blob = CorruptBlob(obj.blob) if oid in corrupt else obj.blob
                    stamp = dt.datetime.fromtimestamp(obj.created, dt.timezone.utc)
                    info = zipfile.ZipInfo(obj.objectName, date_time=(
                        max(stamp.year, 1980), stamp.month, stamp.day, stamp.hour, stamp.minute,
                        stamp.second))
                    info.compress_type = self.zip_compression
                    info.file_size = blob.size
                    with zf.open(info, "w", force_zip64=blob.size > 2**31) as out:
                        for piece in blob.iter_range(0, blob.size):
                            out.write(piece)
        return path

    def _bulk_delete(self, req: Request) -> Response:
        region, problem = self._guard(req)
        if problem:
            return problem
        if self.read_only_key:
            return self._fault(403, "the API key may not delete objects")
        try:
            ids = req.json()
        except ValueError:
            return self._fault(400, "the body must be a JSON array of object ids")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            return self._fault(400, "the body must be a non-empty JSON array of object ids")
        if self.delete_max_ids is not None and len(ids) > self.delete_max_ids:
            return self._fault(400, f"at most {self.delete_max_ids} ids per request")
        if region in self.scales and any(self.scales[region].locate(i) for i in ids):
            return self._fault(403, f"{region} is a generated (scale) region: it is read-only")
        with self._lock:
            known, unknown = [], []
            for oid in dict.fromkeys(ids):
                obj = self._find(region, oid)
                if obj is None or self._state(obj) in ("REVOKED", "DELETED"):
                    unknown.append(oid)
                else:
                    known.append(oid)
            if unknown and self.delete_unknown == "reject":
                return self._fault(404, f"{len(unknown)} of {len(ids)} objects not found")
            for oid in known:
                obj = self.objects[oid]
                obj.objectState, obj.available_at = "REVOKED", None
                obj.updated = self.now()
            if known:
                self.deletes.append((region, known))
        if unknown and self.delete_unknown == "partial":
            return self._fault(404, f"{len(unknown)} of {len(ids)} objects not found")
        if self.delete_status == 204:
            return Response(204, {}, b"")
        return Response(200, {}, b"")


# --------------------------------------------------------------------------- demo

def source_table(emu: EightByEight, name: str) -> dict:
    """The [[sources]] table of a source reading from `emu` (polls fast: it is local)."""
    return {"name": name, "kind": "8x8", "api_url": emu.api_url, "token_url": emu.token_url,
            "client_id": emu.client_id, "client_secret": emu.client_secret,
            "poll_interval": 0.05, "poll_max_interval": 0.5, "batch_window": 0.1}


def _tags(rng: random.Random, type_: str, when: float, duration_ms: int) -> dict[str, str]:
    tags = {"callId": f"int-{rng.getrandbits(40):x}-{rng.getrandbits(32):x}",
            "startTime": str(int(when * 1000)), "endTime": str(int(when * 1000) + duration_ms),
            "duration": str(duration_ms), "direction": rng.choice(["INBOUND", "OUTBOUND"])}
    if type_ == "callrecording":
        tags.update(pbxId="acmecorp", userName="Ada Lovelace", extensionNumber=str(rng.randint(100, 999)),
                    callerId=f"+1669555{rng.randint(1000, 9999)}")
    elif type_ == "callcenterrecording":
        tags.update(agentId=f"ag{rng.randint(1000, 9999)}", queueName="Support", tenantId="acmecorp01")
    elif type_ == "transcription":
        tags = {"sourceObjectType": "callcenterrecording", "language": "en-US",
                "sourceObjectId": str(uuid.UUID(int=rng.getrandbits(128), version=4))}
    return tags


@functools.lru_cache(maxsize=256)
def _call_wav(n: int, seconds: int) -> bytes:
    from .samples import call_wav
    return call_wav(n, seconds)


def demo(seed: int = 0) -> EightByEight:
    """An account with two regions, several types and days, real (playable) WAV call
    recordings with their JSON transcripts, odd names, one duplicate objectName, and
    objects that must stay hidden (REVOKED, ARCHIVED, PENDING)."""
    from .samples import transcript
    rng = random.Random(seed)
    emu = EightByEight(regions=("us-east", "uk"))
    emu._rng = random.Random(seed)
    counter = iter(range(1, 1000))

    def add(region, type_, name, day, hour, seconds=None, **kw):
        when = dt.datetime(*day, hour, rng.randint(0, 59), rng.randint(0, 59), tzinfo=UTC)
        n = seed * 1000 + next(counter)
        seconds = seconds or 3 + n % 5
        if type_ == "transcription":
            blob: Blob = BytesBlob(transcript(n, seconds, f"int-{n:06d}"))
        elif type_ in ("agentnotes", "postcallsurvey"):
            blob = BytesBlob(f"call {n}: customer asked about order status; resolved.\n".encode())
            kw.setdefault("mimeType", "text/plain" if type_ == "agentnotes" else "application/json")
        else:
            blob = BytesBlob(_call_wav(n, seconds))
            kw.setdefault("mimeType", "audio/wav")
        tags = _tags(rng, type_, when.timestamp(), seconds * 1000)
        return emu.add_object(region, type_, name, blob, when, tags=tags, **kw)

    for day in [(2024, 9, 2), (2024, 9, 3), (2024, 10, 15), (2025, 1, 7)]:
        for j in range(3):
            ext = 117209 + j
            add("us-east", "callrecording",
                f"ipbx:acmecorp:callrecording:users:{ext}:{day[0]}{day[1]:02d}{day[2]:02d}-+1669555551{j}_E.wav",
                day, 9 + j)
    add("us-east", "callrecording", "team meeting (Ünïcode) + notes.wav", (2024, 9, 2), 15)
    for j in range(4):
        add("us-east", "callcenterrecording",
            f"int-1819420cbe{j}-sHtEBArUkmmtmyczfbcDGWMwl-phone-00-supertenantcsm01.wav",
            (2024, 9, 3), 10 + j)
    # two recordings that share an objectName: the zip holds both under one name
    add("us-east", "callcenterrecording", "voicemail-greeting.wav", (2024, 9, 4), 8, seconds=3)
    add("us-east", "callcenterrecording", "voicemail-greeting.wav", (2024, 9, 4), 9, seconds=4)
    for j in range(2):
        add("us-east", "transcription", f"int-1819420cbe{j}-transcript.json", (2024, 9, 3), 12 + j)
    add("us-east", "agentnotes", "int-1819420cbe0-supertenantcsm01.agentnotes", (2024, 9, 3), 14)
    add("us-east", "callrecording", "revoked.wav", (2024, 9, 2), 16, state="REVOKED")
    add("us-east", "callrecording", "archived.wav", (2024, 9, 2), 17, state="ARCHIVED")
    add("us-east", "callrecording", "pending.wav", (2024, 9, 2), 18, state="PENDING")
    for j in range(2):
        add("uk", "voicemail", f"vm-{j + 1}-+44207946000{j}.wav", (2024, 11, 20), 11 + j)
    add("uk", "postcallsurvey", "pcs-0001", (2024, 11, 20), 13)
    return emu
