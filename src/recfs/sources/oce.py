"""Oracle Content Management (OCE/OCM) Documents REST API 1.2 as a recfs source.

Layout: the folder tree under `root_folder` (default `self`, the user's home
folder). Every OCE folder is a directory, every file a file with its exact size
(the listing's `size`, a string of bytes) and its mtime from `modifiedTime`.

Listing: one `GET /folders/{id}/items` per folder, `limit` = `page_size`
(default and maximum 10000), following `hasMore` ("1"/"0") with `offset`
advanced by the number of items actually received (a server that returns fewer
than asked is not skipped over). Numbers and flags arrive as strings or as JSON
numbers/booleans; both are accepted everywhere.

Content policy:
- A read of a single file uses ranged `GET /files/{id}/data?version=N`: the
  version is pinned so the bytes always match the cache key. 416 or a changed
  total means the file changed: the error says so and the listing goes stale.
- `prefetch_dir` (for `recfs prefetch DIR` and recognisable whole-folder
  copies) runs one bulk `_download` job for the folder's uncached files:
  POST the idList, poll the job (PENDING/PROCESSING -> SUCCEEDED, or FAILED,
  ABORTED, BLOCKED, all terminal) with growing intervals, download the package
  with ranged GETs into the cache's staging directory, and move each verified
  member into the cache. Members are matched to the files asked for by base
  name and exact size and extracted to names of our own: a member's path is
  never used as a path (flat and nested layouts both work). Items the job
  reports in `items[].error`, or that the zip lacks, are logged and left to
  ranged reads; they do not fail the other files.
- A whole-folder copy is recognised by its reads: when the first read of a file
  comes within `copy_window` seconds of the first read of another file of the same
  folder, `fetch_whole` starts one folder job for this file and its uncached
  siblings that follow in listing order (the order `cp -r` and `rsync` use) and
  waits for it (at most `job_wait` seconds, then it reads directly); later files of
  the copy are then in the cache already. A lone read (ffprobe, a single `cp`)
  never starts a job; it waits only for a job that already includes its file.
- A job is DELETEd once nobody waits for it: after its package was unpacked,
  after it failed, when its prefetch was cancelled, and on `aclose`.

Auth: OAuth2 client credentials at an IDCS `token_url` with `scope` (the token
is refreshed before it expires and once on 401), or Basic auth with
`username`/`password` (on-premises and dev servers). Secrets are revealed only
while a request is built.

Errors: the body's errorCode/errorKey/errorMessage are put in the message as
they are; 401 and 403 -> EACCES, 404 -> ENOENT (with `stale` set so the tree
lists the folder again), anything else -> EIO.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import unicodedata
import urllib.parse
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import trio

from ..config import Key, Secret
from ..content import bulk
from ..http import (AuthError, HttpError, OAuthClientCredentials, SizeChangedError, TokenAuth,
                    basic_auth_header, parse_content_range, safe_url)
from .base import Entry, Kind, Listing, Source, SourceContext, SourceError

log = logging.getLogger("recfs.sources.oce")

API_SUFFIX = "/documents/api/1.2"
MAX_PAGE = 10000
TERMINAL = ("SUCCEEDED", "FAILED", "ABORTED", "BLOCKED")


def _api_url_problem(url: str) -> str | None:
    if not url.endswith(API_SUFFIX):
        return f"must end in {API_SUFFIX} (e.g. https://<instance>.oraclecloud.com{API_SUFFIX})"
    return None


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


CONFIG_KEYS = {
    "api_url": Key("url", required=True, check=_api_url_problem,
                   doc=f"the Documents API base, https://<instance>{API_SUFFIX}"),
    "token_url": Key("url", doc="IDCS token endpoint, https://<idcs-host>/oauth2/v1/token"),
    "client_id": Key("str", doc="IDCS confidential application client id"),
    "client_secret": Key("secret", doc="IDCS client secret"),
    "scope": Key("str", doc="token scope, e.g. https://<instance>:443/urn:opc:cec:all"),
    "username": Key("str", doc="user for Basic auth (instead of the OAuth keys)"),
    "password": Key("secret", doc="password for Basic auth"),
    "root_folder": Key("str", default="self",
                       check=lambda v: None if v and "/" not in v else "expected a folder id",
                       doc="id of the folder shown as the source's root; self is the home folder"),
    "page_size": Key("int", default=MAX_PAGE,
                     check=lambda v: None if 1 <= v <= MAX_PAGE else f"must be 1..{MAX_PAGE}",
                     doc="items per listing request"),
    "job_poll_interval": Key("float", default=1.0, check=_positive,
                             doc="seconds before the first poll of a bulk download job"),
    "job_timeout": Key("float", default=1800.0, check=_positive,
                       doc="seconds a bulk download job may take before it is abandoned"),
    "copy_window": Key("float", default=10.0, check=_positive,
                       doc="seconds between first reads of two files of a folder that make "
                           "it a folder copy (served by one folder job)"),
    "job_wait": Key("float", default=60.0, check=_positive,
                    doc="seconds a read waits for a running folder job before reading directly"),
}

_OAUTH_KEYS = ("token_url", "client_id", "client_secret", "scope")
_BASIC_KEYS = ("username", "password")


def check_options(opts: dict) -> str | None:
    oauth = [k for k in _OAUTH_KEYS if opts.get(k)]
    basic = [k for k in _BASIC_KEYS if opts.get(k)]
    if oauth and basic:
        return (f"{basic[0]}: use either OAuth ({', '.join(_OAUTH_KEYS)}) or Basic auth "
                f"(username, password), not both")
    if not oauth and not basic:
        return ("token_url: missing; configure OAuth (token_url, client_id, client_secret, "
                "scope) or Basic auth (username, password)")
    for k in (_OAUTH_KEYS if oauth else _BASIC_KEYS):
        if not opts.get(k):
            how = f"OAuth needs {', '.join(_OAUTH_KEYS)}" if oauth else "Basic auth needs username and password"
            return f"{k}: missing ({how})"
    return None


def create(name: str, options: dict, ctx: SourceContext) -> "OceSource":
    return OceSource(name, options, ctx)


# --------------------------------------------------------------------------- lenient parsing

def as_int(value: Any) -> int | None:
    """12, "12", "12.0" -> 12; anything else -> None."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                f = float(text)
            except ValueError:
                return None
            return int(f) if f.is_integer() else None
    return None


def as_flag(value: Any) -> bool | None:
    """True/1/"1"/"true" -> True; False/0/"0"/"false" -> False; else None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("1", "true", "yes", "y"):
            return True
        if text in ("0", "false", "no", "n", ""):
            return False
    return None


def parse_time(value: Any) -> float | None:
    """ISO-8601 ("2014-02-21T21:32:37Z", with or without fractions or an offset)
    -> epoch seconds; naive times are UTC."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.timestamp()


def strip_guid_prefix(value: str) -> str:
    """'fFileGUID:D123' -> 'D123' (some responses prefix ids with their type)."""
    head, sep, tail = value.partition(":")
    return tail if sep and head in ("fFileGUID", "fFolderGUID") else value


_JOB_ID_RE = re.compile(r"^[A-Za-z0-9._~-]+$")


def job_id_from_location(location: str) -> str:
    """The job id is the last path segment of the `Location` URL, whatever host
    form precedes it ("OCEHost/...", "[OCEHost]/...", a real URL)."""
    text = location.strip().split("?", 1)[0].split("#", 1)[0].rstrip("/")
    job_id = urllib.parse.unquote(text.rsplit("/", 1)[-1])
    if not job_id or not _JOB_ID_RE.match(job_id):
        raise ValueError(f"no job id in Location {location[:200]!r}")
    return job_id


@dataclass
class JobStatus:
    state: str                    # one of PENDING, PROCESSING, SUCCEEDED, FAILED, ABORTED, BLOCKED, or as sent
    completed: bool
    percent: int | None
    filesize: int | None
    filename: str
    error_code: str
    item_errors: dict[str, str]   # file id -> why it is not in the zip
    links: list[dict]

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


def parse_job_status(body: Any) -> JobStatus:
    """Read a `GET .../_download/{jobId}` body, accepting booleans or strings,
    numbers or strings, and `links` as an object or an array."""
    if not isinstance(body, dict):
        raise ValueError("the job status is not a JSON object")
    progress = str(body.get("progress") or "").strip().upper()
    completed = bool(as_flag(body.get("completed")))
    details = body.get("details")
    if isinstance(details, list):
        details = next((d for d in details if isinstance(d, dict)), {})
    if not isinstance(details, dict):
        details = {}
    links = body.get("links")
    if isinstance(links, dict):
        links = [links]
    links = [l for l in links if isinstance(l, dict)] if isinstance(links, list) else []
    item_errors: dict[str, str] = {}
    items = body.get("items")
    for item in (items if isinstance(items, list) else []):
        if isinstance(item, dict) and item.get("id"):
            item_errors[strip_guid_prefix(str(item["id"]))] = str(item.get("error") or "not copied")
    if progress:
        state = progress
    elif completed:
        # no progress field: a finished job with a package to fetch succeeded
        state = "SUCCEEDED" if (links or details.get("filesize") is not None) else "FAILED"
    else:
        state = "PROCESSING"
    code = body.get("errorCode")
    return JobStatus(state=state, completed=completed,
                     percent=as_int(body.get("completedPercentage")),
                     filesize=as_int(details.get("filesize")),
                     filename=str(details.get("filename") or ""),
                     error_code="" if code is None else str(code),
                     item_errors=item_errors, links=links)


def describe_oce_error(text: str) -> str:
    """'errorCode -16, !csItemNotFound: Security validation failed ...' from an
    error body; empty when the body is not an OCE error."""
    try:
        body = json.loads(text)
    except (ValueError, TypeError):
        return ""
    if not isinstance(body, dict):
        return ""
    parts = []
    if body.get("errorCode") not in (None, "", "0", 0):
        parts.append(f"errorCode {body['errorCode']}")
    if body.get("errorKey"):
        parts.append(str(body["errorKey"])[:300])
    message = body.get("errorMessage") or body.get("error_description") or body.get("title")
    head = ", ".join(parts)
    if message:
        head = f"{head}: {str(message)[:500]}" if head else str(message)[:500]
    elif body.get("error"):
        head = f"{head}: {body['error']}" if head else str(body["error"])
    return head


# --------------------------------------------------------------------------- auth

class BasicAuth(TokenAuth):
    def __init__(self, username: str, password: Secret):
        self.username = username
        self.password = password

    async def headers(self) -> dict[str, str]:
        pw = self.password.reveal() if isinstance(self.password, Secret) else str(self.password)
        return {"Authorization": basic_auth_header(self.username, pw)}


# --------------------------------------------------------------------------- zip members

def member_basename(name: str) -> str:
    return re.split(r"[/\\]", name)[-1]


def _norm(name: str) -> str:
    return unicodedata.normalize("NFC", name).strip()


@dataclass
class Wanted:
    key: str          # what the caller calls this file (its id)
    name: str         # the service's file name
    size: int


def extract_members(zip_path: Path, wanted: list[Wanted],
                    out_dir: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """Extract the members of `zip_path` that are the files in `wanted` into
    temporary files of our own naming in `out_dir`.

    OCE's zip layout is not documented (files at the root, or under a folder
    named after the job's folder), so each file's member is found first: the
    member whose base name (after the last / or \\) is the file's name and
    whose declared size is the file's size; the shallowest when several qualify
    (a namesake in a subdirectory). The copy and its checks (size, CRC, names
    never used as paths) are the shared `bulk.extract_verified`.
    Returns ({key: path}, {key: problem}); the caller owns the files.
    """
    done: dict[str, Path] = {}
    problems: dict[str, str] = {}
    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        return {}, {w.key: f"the package is not a readable zip ({exc})" for w in wanted}
    by_base: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for info in infos:
        name = bulk.member_name(info)
        by_base[_norm(member_basename(name))].append((name, info.file_size))
    everything = [m for group in by_base.values() for m in group]
    taken: set[str] = set()
    files: list[bulk.BulkFile] = []
    for want in wanted:
        name = _norm(want.name)
        candidates = [m for m in by_base.get(name, []) if m[0] not in taken]
        if not candidates:
            # a name with a slash in it lands in the zip as a path
            candidates = [m for m in everything if m[0] not in taken
                          and (m[0] == name or m[0].endswith("/" + name))]
        sized = [m for m in candidates if m[1] == want.size]
        if not sized:
            problems[want.key] = ("not in the package" if not candidates else
                                  f"the package holds {candidates[0][1]} bytes, expected {want.size}")
            continue
        member = min(sized, key=lambda m: m[0].replace("\\", "/").count("/"))[0]
        taken.add(member)
        files.append(bulk.BulkFile(key=want.key, size=want.size, member_name=member))
    for key, (path, result) in bulk.extract_verified(zip_path, files, out_dir).items():
        if path is not None:
            done[key] = path
        else:
            problems[key] = result.message
    return done, problems


# --------------------------------------------------------------------------- the source

class FileRef(NamedTuple):
    id: str
    folder: str       # the parent folder's id: bulk jobs are per folder
    version: str      # the service's version number ("1", "2", ...), may be ""


@dataclass
class FolderJob:
    folder_id: str
    files: dict[str, Entry]                                 # file id -> entry
    job_id: str = ""
    deleted: bool = False
    done: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope | None = None
    stored: set[str] = field(default_factory=set)           # file ids now in the cache
    failures: dict[str, str] = field(default_factory=dict)  # file id -> why not
    error: str = ""                                         # why the job as a whole failed


class OceSource(Source):
    kind = "oce"
    listing_ttl = 60.0
    job_max_files = 2000                  # ids per bulk job; a bigger folder takes several
    job_max_bytes = 4 * 1024**3           # bytes per bulk job
    job_max_poll_interval = 10.0

    def __init__(self, name: str, options: dict, ctx: SourceContext):
        super().__init__(name, options, ctx)
        self.api = options["api_url"].rstrip("/")
        self.root = options.get("root_folder") or "self"
        self.page_size = int(options.get("page_size") or MAX_PAGE)
        self.poll_interval = float(options.get("job_poll_interval") or 1.0)
        self.job_timeout = float(options.get("job_timeout") or 1800.0)
        self.job_wait = float(options.get("job_wait") or 60.0)
        self.auth: TokenAuth
        if options.get("username"):
            self.auth = BasicAuth(options["username"], options["password"])
        else:
            self.auth = OAuthClientCredentials(ctx.http, options["token_url"], options["client_id"],
                                               options["client_secret"], options["scope"],
                                               what=f"{name}: token")
        self._jobs: list[FolderJob] = []
        self._job_of_file: dict[str, FolderJob] = {}
        self.copy_window = float(options.get("copy_window") or 10.0)
        self._first_reads: dict[str, dict[str, float]] = {}    # folder -> file id -> time
        self.jobs_started = 0
        self.jobs_deleted = 0

    @property
    def http(self):
        return self.ctx.http

    def root_ref(self) -> str:
        return self.root

    # ---------------------------------------------------------------- errors

    def _error(self, what: str, status: int | None, body: str = "") -> SourceError:
        why = describe_oce_error(body)
        message = f"{self.name}: {what}: " + (f"HTTP {status}" if status else "no answer")
        if why:
            message += f" ({why})"
        if status == 401:
            err = SourceError(message + "; the credentials were refused", errno.EACCES)
        elif status == 403:
            err = SourceError(message + "; permission denied", errno.EACCES)
        elif status == 404:
            err = SourceError(message + "; it no longer exists", errno.ENOENT)
        else:
            err = SourceError(message, errno.EIO)
        err.stale = status == 404       # True: the folder's listing must be read again
        return err

    def _from_http(self, what: str, exc: HttpError) -> SourceError:
        if isinstance(exc, AuthError):
            return SourceError(str(exc), errno.EACCES)
        if exc.status in (401, 403, 404) or exc.body:
            return self._error(what, exc.status, exc.body)
        return SourceError(f"{self.name}: {what}: {exc}", errno.EIO)

    async def _call(self, method: str, url: str, what: str, *, expect=(200,), **kw):
        """One API request with the source's auth; non-`expect` answers become
        SourceError with the body's errorCode/errorKey/errorMessage."""
        try:
            resp = await self.http.request(method, url, name=f"{self.name}: {what}",
                                           auth=self.auth, expect=None, **kw)
        except HttpError as exc:
            raise self._from_http(what, exc) from None
        if resp.status_code not in expect:
            raise self._error(what, resp.status_code, resp.text[:4000])
        return resp

    async def _get_json(self, url: str, what: str, **kw) -> dict:
        resp = await self._call("GET", url, what, **kw)
        try:
            body = resp.json()
        except ValueError:
            raise SourceError(f"{self.name}: {what}: the answer is not JSON", errno.EIO) from None
        if not isinstance(body, dict):
            raise SourceError(f"{self.name}: {what}: the answer is not a JSON object", errno.EIO)
        return body

    def _url(self, *segments: str) -> str:
        return self.api + "".join("/" + urllib.parse.quote(s, safe="") for s in segments)

    # ---------------------------------------------------------------- start / listing

    async def start(self) -> None:
        await self._get_json(self._url("folders", self.root),
                             f"checking root_folder {self.root!r} at {safe_url(self.api)}")

    async def list_dir(self, ref: str) -> Listing:
        entries: list[Entry] = []
        seen: set[str] = set()
        offset = 0
        while True:
            body = await self._get_json(self._url("folders", ref, "items"),
                                        f"listing folder {ref}",
                                        params={"limit": self.page_size, "offset": offset})
            items = body.get("items")
            if items is None:
                items = []
            if not isinstance(items, list):
                raise SourceError(f"{self.name}: listing folder {ref}: `items` is not a list",
                                  errno.EIO)
            for item in items:
                entry = self._entry(item, ref) if isinstance(item, dict) else None
                # offset paging over a folder that changes can repeat an item
                if entry is not None and entry.id not in seen:
                    seen.add(entry.id)
                    entries.append(entry)
            offset += len(items)
            more = as_flag(body.get("hasMore"))
            if more is None:
                total = as_int(body.get("totalResults"))
                more = total is not None and offset < total
            if not more:
                break
            if not items:
                log.warning("%s: folder %s: hasMore is set but the page is empty; "
                            "stopping at %d items", self.name, ref, offset)
                break
        return Listing(entries)

    def _entry(self, item: dict, parent: str) -> Entry | None:
        kind = str(item.get("type") or "").lower()
        item_id = item.get("id")
        name = item.get("name")
        if not item_id or not isinstance(name, str) or not name or kind not in ("file", "folder"):
            log.debug("%s: skipping an item without id, name or known type in %s", self.name, parent)
            return None
        item_id = strip_guid_prefix(str(item_id))
        modified = str(item.get("modifiedTime") or "")
        mtime = parse_time(modified) or parse_time(item.get("createdTime")) or 0.0
        xattrs = {"oce.id": item_id, "oce.parentID": strip_guid_prefix(str(item.get("parentID") or parent))}
        for field_ in ("createdTime", "modifiedTime", "mimeType"):
            if item.get(field_):
                xattrs[f"oce.{field_}"] = str(item[field_])
        for field_ in ("createdBy", "modifiedBy", "ownedBy"):
            user = item.get(field_)
            if isinstance(user, dict):
                who = user.get("loginName") or user.get("displayName")
                if who:
                    xattrs[f"oce.{field_}"] = str(who)
        if kind == "folder":
            return Entry(name=name, kind=Kind.DIR, ref=item_id, mtime=mtime, size=0,
                         id=item_id, version=modified, xattrs=xattrs)
        version = str(as_int(item.get("version")) or item.get("version") or "").strip()
        if version:
            xattrs["oce.version"] = version
        size = as_int(item.get("size"))
        if size is not None and size < 0:
            size = None
        return Entry(name=name, kind=Kind.FILE, ref=FileRef(item_id, parent, version),
                     mtime=mtime, size=size, size_hint=size or 0, id=item_id,
                     version=f"v{version or 0}.{int(mtime)}", xattrs=xattrs)

    async def resolve_sizes(self, entries: list[Entry]) -> None:
        """Files listed without a size: read it from `GET /files/{id}`."""
        limiter = trio.CapacityLimiter(32)

        async def one(entry: Entry) -> None:
            async with limiter:
                try:
                    body = await self._get_json(self._url("files", entry.ref.id),
                                                f"reading the size of {entry.name}")
                except SourceError as exc:
                    log.warning("%s", exc)
                    return
                size = as_int(body.get("size"))
                if size is not None and size >= 0:
                    entry.size = size

        async with trio.open_nursery() as nursery:
            for entry in entries:
                if entry.size is None and not entry.is_dir:
                    nursery.start_soon(one, entry)

    # ---------------------------------------------------------------- ranged reads

    async def _ranged_get(self, url: str, start: int, end: int, sink, *, total: int | None,
                          what: str) -> None:
        """http.get_range with the source's auth (get_range renews the token on a
        401), OCE error bodies turned into SourceError."""
        used: dict[str, str] = {}

        async def url_for(renew: bool) -> tuple[str, dict[str, str]]:
            # `renew` follows a 401 or a 403; only the 401 is about the token, but both
            # get a fresh one (a permission denial then repeats and is reported)
            nonlocal used
            if renew:
                await self.auth.invalidate(used)
            used = await self.auth.headers()
            return url, used

        try:
            await self.http.get_range(url_for, start, end, sink, total=total,
                                      name=f"{self.name}: {what}")
        except SizeChangedError:
            raise               # the reader marks the listing stale on this one
        except AuthError as exc:
            raise SourceError(str(exc), errno.EACCES) from None
        except HttpError as exc:
            raise self._from_http(what, exc) from None

    def _data_url(self, ref: FileRef) -> str:
        url = self._url("files", ref.id, "data")
        return f"{url}?version={urllib.parse.quote(ref.version)}" if ref.version.isdigit() else url

    async def fetch_range(self, entry: Entry, start: int, end: int, sink) -> None:
        if end <= start:
            return
        await self._ranged_get(self._data_url(entry.ref), start, end, sink, total=entry.size,
                               what=f"reading {entry.name}")

    # ---------------------------------------------------------------- bulk jobs

    async def fetch_whole(self, entry: Entry, siblings: list[Entry]) -> bool:
        job = self._job_of_file.get(entry.id)
        if job is None and self._copying_folder(entry):
            batch = self._uncached_from(entry, siblings)
            if len(batch) > 1:
                job = FolderJob(entry.ref.folder, {e.id: e for e in batch})
                for fid in job.files:
                    self._job_of_file[fid] = job
                trio.lowlevel.spawn_system_task(self._run_job_safely, job,
                                                name=f"oce folder job {entry.ref.folder}")
        if job is None:
            return False
        with trio.move_on_after(self.job_wait):
            await job.done.wait()
        return entry.id in job.stored

    async def prefetch_dir(self, ref: str, entries: list[Entry]) -> bool:
        cache = self.ctx.cache
        if cache is None or getattr(cache, "staging_dir", None) is None:
            return False
        todo: list[Entry] = []
        others: list[FolderJob] = []
        for entry in entries:
            if entry.is_dir or not entry.size or getattr(entry.ref, "folder", None) != ref:
                continue            # an empty file has nothing to download
            running = self._job_of_file.get(entry.id)
            if running is not None:
                if running not in others:
                    others.append(running)
            elif not cache.has_whole(self.cache_key(entry), entry.size):
                todo.append(entry)
        errors: list[str] = []
        for batch in self._batches(todo):
            job = await self._run_job(ref, batch)
            if job.error:
                errors.append(job.error)
        for job in others:
            await job.done.wait()
        if errors:
            raise SourceError(f"{self.name}: prefetching folder {ref}: " + "; ".join(errors),
                              errno.EIO)
        return True

    def _batches(self, entries: list[Entry]) -> list[list[Entry]]:
        batches: list[list[Entry]] = []
        current: list[Entry] = []
        nbytes = 0
        for entry in entries:
            if current and (len(current) >= self.job_max_files
                            or nbytes + entry.size > self.job_max_bytes):
                batches.append(current)
                current, nbytes = [], 0
            current.append(entry)
            nbytes += entry.size
        if current:
            batches.append(current)
        return batches

    def _copying_folder(self, entry: Entry) -> bool:
        """Did another file of this folder have its first read within copy_window?"""
        folder = getattr(entry.ref, "folder", None)
        now = trio.current_time()
        recent = self._first_reads.setdefault(folder, {})
        for fid in [f for f, t in recent.items() if now - t > self.copy_window]:
            del recent[fid]
        others = [f for f in recent if f != entry.id]
        recent.setdefault(entry.id, now)
        if len(self._first_reads) > 1000:
            self._first_reads = {folder: recent}
        return bool(others)

    def _uncached_from(self, entry: Entry, siblings: list[Entry]) -> list[Entry]:
        """`entry` and the uncached files after it in listing order, one job's worth."""
        cache = self.ctx.cache
        if cache is None or getattr(cache, "staging_dir", None) is None:
            return []
        names = [e.id for e in siblings]
        start = names.index(entry.id) if entry.id in names else 0
        out, nbytes = [], 0
        for e in [entry] + [s for s in siblings[start + 1:]]:
            if e.is_dir or not e.size or e.id in self._job_of_file \
                    or getattr(e.ref, "folder", None) != entry.ref.folder:
                continue
            if e is not entry and cache.has_whole(self.cache_key(e), e.size):
                continue
            if len(out) >= self.job_max_files or nbytes + e.size > self.job_max_bytes:
                break
            out.append(e)
            nbytes += e.size
        return out

    async def _run_job_safely(self, job: FolderJob) -> None:
        """A job started by a read runs on its own: its failure is logged, never raised."""
        try:
            await self._run_job(job.folder_id, list(job.files.values()), job)
        except Exception as exc:
            log.error("%s: folder job for %s: %s", self.name, job.folder_id, exc)
            job.error = job.error or str(exc)
            job.done.set()

    async def _run_job(self, folder_id: str, files: list[Entry], job: FolderJob | None = None) -> FolderJob:
        job = job or FolderJob(folder_id, {e.id: e for e in files})
        self._jobs.append(job)
        for file_id in job.files:
            self._job_of_file[file_id] = job
        try:
            with trio.CancelScope() as job.scope:
                try:
                    await self._execute(job)
                except SourceError as exc:
                    job.error = str(exc)
                except SizeChangedError as exc:
                    job.error = f"downloading the package: {exc}"
            if job.scope.cancelled_caught and not job.error:
                job.error = f"{self.name}: bulk download job {job.job_id or '(not started)'} was stopped"
        finally:
            self._jobs.remove(job)
            for file_id in job.files:
                if self._job_of_file.get(file_id) is job:
                    del self._job_of_file[file_id]
            job.done.set()
            # nobody waits for this job any more (done, failed or cancelled)
            with trio.CancelScope(shield=True):
                await self._delete_job(job)
        for file_id, why in job.failures.items():
            log.warning("%s: %s (%s) was not taken from the bulk download: %s; it will be "
                        "read directly", self.name, job.files[file_id].name, file_id, why)
        if job.error:
            log.warning("%s", job.error)
        return job

    async def _delete_job(self, job: FolderJob) -> None:
        if not job.job_id or job.deleted:
            return
        job.deleted = True
        with trio.move_on_after(15):
            try:
                resp = await self.http.request(
                    "DELETE", self._url("folders", job.folder_id, "_download", job.job_id),
                    name=f"{self.name}: deleting bulk download job", auth=self.auth, expect=None)
                self.jobs_deleted += 1
                if resp.status_code not in (200, 204, 404):
                    log.debug("%s: deleting job %s: HTTP %s %s", self.name, job.job_id,
                              resp.status_code, describe_oce_error(resp.text))
            except HttpError as exc:
                log.debug("%s: deleting job %s: %s", self.name, job.job_id, exc)

    async def _execute(self, job: FolderJob) -> None:
        what = f"bulk download of {len(job.files)} files of folder {job.folder_id}"
        resp = await self._call("POST", self._url("folders", job.folder_id, "_download"), what,
                                json={"idList": ",".join(job.files)}, idempotent=False)
        try:
            body = resp.json()
        except ValueError:
            body = {}
        location = (body.get("Location") if isinstance(body, dict) else None) \
            or resp.headers.get("location") or ""
        try:
            job.job_id = job_id_from_location(str(location))
        except ValueError as exc:
            raise SourceError(f"{self.name}: {what}: {exc}", errno.EIO) from None
        self.jobs_started += 1
        status_url = self._url("folders", job.folder_id, "_download", job.job_id)
        interval = self.poll_interval
        deadline = trio.current_time() + self.job_timeout
        while True:
            body = await self._get_json(status_url, f"status of bulk download job {job.job_id}")
            try:
                status = parse_job_status(body)
            except ValueError as exc:
                raise SourceError(f"{self.name}: job {job.job_id}: {exc}", errno.EIO) from None
            if status.terminal:
                break
            if trio.current_time() + interval > deadline:
                raise SourceError(f"{self.name}: bulk download job {job.job_id} did not finish "
                                  f"within {self.job_timeout:.0f} s (last state {status.state})",
                                  errno.ETIMEDOUT)
            await trio.sleep(interval)
            interval = min(interval * 1.5, max(self.poll_interval, self.job_max_poll_interval))
        if status.state != "SUCCEEDED":
            code = f", errorCode {status.error_code}" if status.error_code not in ("", "0") else ""
            raise SourceError(f"{self.name}: bulk download job {job.job_id} of folder "
                              f"{job.folder_id} ended {status.state}{code}", errno.EIO)
        for file_id, why in status.item_errors.items():
            if file_id in job.files:
                job.failures[file_id] = why
        staging = Path(self.ctx.cache.staging_dir)
        zip_path = staging / f"oce-{job.job_id}.zip"
        try:
            await self._download_package(job, status.filesize, zip_path)
            wanted = [Wanted(fid, e.name, e.size) for fid, e in job.files.items()
                      if fid not in job.failures]
            try:
                done, problems = await trio.to_thread.run_sync(
                    extract_members, zip_path, wanted, staging)
            except OSError as exc:
                raise SourceError(f"{self.name}: job {job.job_id}: the package is not a "
                                  f"readable zip ({exc})", errno.EIO) from None
            job.failures.update(problems)
            for file_id, path in done.items():
                entry = job.files[file_id]
                try:
                    self.ctx.cache.store_file(self.cache_key(entry), entry.size, path)
                    job.stored.add(file_id)
                except (OSError, ValueError) as exc:
                    job.failures[file_id] = f"the cache refused it ({exc})"
                finally:
                    Path(path).unlink(missing_ok=True)
        finally:
            zip_path.unlink(missing_ok=True)

    async def _download_package(self, job: FolderJob, filesize: int | None, path: Path) -> None:
        url = self._url("folders", job.folder_id, "_download", job.job_id, "package")
        what = f"package of bulk download job {job.job_id}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            def sink(offset: int, data: bytes) -> None:
                view = memoryview(data)
                while view:
                    n = os.pwrite(fd, view, offset)
                    offset += n
                    view = view[n:]

            if filesize is None:
                # the status gave no size: learn it from a one-byte range
                resp = await self._call("GET", url, what, expect=(200, 206),
                                        headers={"Range": "bytes=0-0"})
                if resp.status_code == 200:
                    sink(0, resp.content)
                    return
                filesize = parse_content_range(resp.headers.get("content-range"))[2]
                if filesize is None:
                    raise SourceError(f"{self.name}: {what}: no size in Content-Range", errno.EIO)
            if filesize > 0:
                await self._ranged_get(url, 0, filesize, sink, total=filesize, what=what)
        finally:
            os.close(fd)

    async def aclose(self) -> None:
        """Stop running jobs and DELETE them on the server."""
        for job in list(self._jobs):
            with trio.CancelScope(shield=True):
                await self._delete_job(job)
            if job.scope is not None:
                job.scope.cancel()
