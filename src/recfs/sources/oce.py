"""Oracle Content Management (OCE/OCM) Documents REST API 1.2 as a recfs source.

Layout: the folder tree under `root_folder` (default `self`, the user's home
folder). Every OCE folder is a directory, every file a file with its exact size
(the listing's `size`, a string of bytes) and its mtime from `modifiedTime`.

Listing: one `GET /folders/{id}/items` per folder, `limit` = `page_size`
(default and maximum 10000), following `hasMore` ("1"/"0") with `offset`
advanced by the number of items actually received (a server that returns fewer
than asked is not skipped over). Numbers and flags arrive as strings or as JSON
numbers/booleans; both are accepted everywhere.

Content: ranged `GET /files/{id}/data?version=N` (the version is pinned, so the
bytes always match the cache key; 416 or a changed total means the file changed).
Bulk jobs (the `bulk` capability; content/bulk.py decides when and runs them): POST
`folders/{id}/_download` with the idList, poll the job (PENDING/PROCESSING ->
SUCCEEDED, or FAILED, ABORTED, BLOCKED, all terminal), download the package, and
DELETE the job once nobody waits for it. Items the job reports in `items[].error`
are left to ranged reads. The zip's layout is not documented (files at the root, or
under a folder): the engine matches members by name, the shallowest first.

Search (`recfs search`, a number or a name~= text): `GET /folders/{root}/search/items
?fulltext=…`, paged like a listing; each hit the whole query matches is placed by its
folders (names and parents from the listings, else `GET /folders/{id}` once), and left
out when they do not lead to the root. docs/providers/oce.md says what is documented.

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
import re
import time
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, AsyncIterator, NamedTuple

import trio

from ..config import Secret, SourceOptions, option
from ..http import (AuthError, HttpError, OAuthClientCredentials, SizeChangedError, Target, TokenAuth,
                    AuthTarget, basic_auth_header, safe_url)
from ..search import Query, matches
from .base import BulkFile, BulkJobs, Entry, Hit, JobState, JobStatus, Kind, Listing, Source, SourceError

log = logging.getLogger("recfs.sources.oce")

API_SUFFIX = "/documents/api/1.2"
MAX_PAGE = 10000
SEARCH_CAP = 10000          # "The search has a limit of 10000 items (folders and files)"
KNOWN_FOLDERS = 100_000     # folders whose name and parent are remembered (for hit paths)
TERMINAL = ("SUCCEEDED", "FAILED", "ABORTED", "BLOCKED")
JOB_MAX_POLL = 10.0


def _api_url_problem(url: str) -> str | None:
    if not url.endswith(API_SUFFIX):
        return f"must end in {API_SUFFIX} (e.g. https://<instance>.oraclecloud.com{API_SUFFIX})"
    return None


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


_OAUTH_KEYS = ("token_url", "client_id", "client_secret", "scope")
_BASIC_KEYS = ("username", "password")


@dataclass(kw_only=True)
class Options(SourceOptions):
    api_url: str = option("url", required=True, check=_api_url_problem,
                          doc=f"the Documents API base, https://<instance>{API_SUFFIX}")
    token_url: str | None = option("url", doc="IDCS token endpoint, https://<idcs-host>/oauth2/v1/token")
    client_id: str | None = option("str", doc="IDCS confidential application client id")
    client_secret: Any = option("secret", doc="IDCS client secret")
    scope: str | None = option("str", doc="token scope, e.g. https://<instance>:443/urn:opc:cec:all")
    username: str | None = option("str", doc="user for Basic auth (instead of the OAuth keys)")
    password: Any = option("secret", doc="password for Basic auth")
    root_folder: str = option("str", "self", check=lambda v: None if v and "/" not in v else "expected a folder id",
                              doc="id of the folder shown as the source's root; self is the home folder")
    page_size: int = option("int", MAX_PAGE, check=lambda v: None if 1 <= v <= MAX_PAGE else f"must be 1..{MAX_PAGE}",
                            doc="items per listing request")
    job_poll_interval: float = option("float", 1.0, check=_positive,
                                      doc="seconds before the first poll of a bulk download job")
    job_timeout: float = option("float", 1800.0, check=_positive,
                                doc="seconds a bulk download job may take before it is abandoned")
    job_wait: float = option("float", 60.0, check=_positive,
                             doc="seconds a read waits for a running folder job before reading directly")
    copy_window: float | None = option("float", retired=True, doc="recfs recognises a folder copy by its "
                                                    "opens (accepted so that older configs load)")

    def problem(self) -> str | None:
        oauth = [k for k in _OAUTH_KEYS if getattr(self, k)]
        basic = [k for k in _BASIC_KEYS if getattr(self, k)]
        if oauth and basic:
            return (f"{basic[0]}: use either OAuth ({', '.join(_OAUTH_KEYS)}) or Basic auth "
                    f"(username, password), not both")
        if not oauth and not basic:
            return ("token_url: missing; configure OAuth (token_url, client_id, client_secret, "
                    "scope) or Basic auth (username, password)")
        for k in (_OAUTH_KEYS if oauth else _BASIC_KEYS):
            if not getattr(self, k):
                how = f"OAuth needs {', '.join(_OAUTH_KEYS)}" if oauth else "Basic auth needs username and password"
                return f"{k}: missing ({how})"
        return None


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
class OceJobStatus:
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


def parse_job_status(body: Any) -> OceJobStatus:
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
    return OceJobStatus(state=state, completed=completed,
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
        return self.cached()

    def cached(self) -> dict[str, str]:
        pw = self.password.reveal() if isinstance(self.password, Secret) else str(self.password)
        return {"Authorization": basic_auth_header(self.username, pw)}


# --------------------------------------------------------------------------- the source

class FileRef(NamedTuple):
    id: str
    folder: str       # the parent folder's id: bulk jobs are per folder
    version: str      # the service's version number ("1", "2", ...), may be ""


class OceSource(Source):
    kind = "oce"
    listing_ttl = 60.0

    def __init__(self, name: str, options: Options, http):
        super().__init__(name, options, http)
        self.api = options.api_url.rstrip("/")
        self.root = options.root_folder or "self"
        self.page_size = options.page_size
        self.auth: TokenAuth
        if options.username:
            self.auth = BasicAuth(options.username, options.password)
        else:
            self.auth = OAuthClientCredentials(http, options.token_url, options.client_id,
                                               options.client_secret, options.scope,
                                               what=f"{name}: token")
        self.bulk = BulkJobs(
            label=f"{name}: bulk download", group=lambda e: e.ref.folder,
            member=lambda e: (e.name, None, e.id), start=self._job_start, poll=self._job_poll,
            package=self._job_package, end=self._job_end, max_files=2000, max_bytes=4 * 1024**3,
            batch_window=0.0, max_wait=options.job_wait, poll_first=options.job_poll_interval,
            poll_max=max(options.job_poll_interval, JOB_MAX_POLL), timeout=options.job_timeout)
        self.jobs_deleted = 0
        self._roots = {self.root}
        # folder id -> (name, parent id, when learnt), from listings, searches and GETs:
        # what places a search hit in the tree without listing its folders
        self._folders: dict[str, tuple[str, str, float]] = {}
        self._fresh_from = 0.0

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
        body = await self._get_json(self._url("folders", self.root),
                                    f"checking root_folder {self.root!r} at {safe_url(self.api)}")
        # the root's own id (`self` is an alias: items below it may name its GUID as parent)
        if body.get("id"):
            self._roots.add(strip_guid_prefix(str(body["id"])))

    async def _pages(self, url: str, what: str, params: dict | None = None) -> AsyncIterator[list]:
        """The `items` of an offset-paged answer (a folder's listing, a search), page by
        page, while `hasMore` says there are more (else `totalResults` or `totalCount`,
        else a full page)."""
        offset = 0
        while True:
            body = await self._get_json(url, what, params={**(params or {}), "limit": self.page_size,
                                                           "offset": offset})
            items = body.get("items")
            if items is None:
                items = []
            if not isinstance(items, list):
                raise SourceError(f"{self.name}: {what}: `items` is not a list", errno.EIO)
            yield items
            offset += len(items)
            more = as_flag(body.get("hasMore"))
            if more is None:
                total = as_int(body.get("totalResults"))
                total = as_int(body.get("totalCount")) if total is None else total
                more = offset < total if total is not None else len(items) >= self.page_size
            if not more:
                return
            if not items:
                log.warning("%s: %s: hasMore is set but the page is empty; stopping at %d items",
                            self.name, what, offset)
                return

    async def list_dir(self, ref: str) -> Listing:
        entries: list[Entry] = []
        seen: set[str] = set()
        async for items in self._pages(self._url("folders", ref, "items"), f"listing folder {ref}"):
            for item in items:
                entry = self._entry(item, ref) if isinstance(item, dict) else None
                # offset paging over a folder that changes can repeat an item
                if entry is not None and entry.id not in seen:
                    seen.add(entry.id)
                    entries.append(entry)
                    if entry.is_dir:
                        self._learn_folder(entry.id, entry.name, ref)
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

    async def sizes(self, entries: list[Entry]) -> None:
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

    # ---------------------------------------------------------------- search

    # A number in a file name, or a part of a name: the service's search finds the names
    # that hold it (`fulltext` looks at item names among other things); the core then
    # matches every hit against the whole query, so more hits than needed cost nothing.
    searches_server_side = ("caller", "callee", "number", "name")
    search_cap = SEARCH_CAP     # a search with this many results may have been cut

    def search_text(self, query: Query) -> str | None:
        """The one term the service is asked for: a number's digits (names hold them as
        a run of their own, with or without a '+'), else the name~= text."""
        for side in ("caller", "callee", "number"):
            if getattr(query, side) is not None:
                return getattr(query, side)
        return query.name

    async def search(self, query: Query) -> list[Hit] | None:
        """`GET /folders/{root_folder}/search/items?fulltext=…`, page by page: the files
        of the root's tree that the service finds, each placed by its parents (known
        from listings, else `GET /folders/{id}` once each); items outside the root (the
        service also searches folders shared with the user) are left out. None when the
        service's cap of 10000 results may have cut the answer: the core walks then."""
        text = self.search_text(query)
        if not text:
            return None
        self._fresh_from = time.time() - self.listing_ttl
        items = await self._search_items(text)
        if items is None:
            return None
        for item in items:                  # folders found tell their names for free
            if str(item.get("type") or "").lower() == "folder" and item.get("id") and item.get("name"):
                self._learn_folder(strip_guid_prefix(str(item["id"])), str(item["name"]),
                                   strip_guid_prefix(str(item.get("parentID") or "")))
        # the service found the text somewhere (a name, the contents, an owner): only
        # the files the whole query matches are placed, so no other costs a request
        files = []
        for item in items:
            if str(item.get("type") or "").lower() != "file":
                continue
            entry = self._entry(item, self._folder_of(item))
            if entry is not None and matches(query, self.record(entry.name, entry.xattrs, entry.mtime)):
                files.append((item, entry))
        await self._learn_ancestors({entry.ref.folder for _, entry in files})
        hits: list[Hit] = []
        incomplete: list[tuple[Entry, tuple[str, ...]]] = []
        for item, entry in files:
            folders = self._folders_to(entry.ref.folder)
            if folders is None:
                continue
            if entry.size is None or not entry.ref.version:
                incomplete.append((entry, folders))
            else:
                hits.append(Hit(folders, entry))
        hits += await self._completed(incomplete)
        return hits

    async def _search_items(self, text: str) -> list[dict] | None:
        items: list[dict] = []
        seen: set[str] = set()
        offset = 0
        async for page in self._pages(self._url("folders", self.root, "search", "items"),
                                      f"searching for {text!r}", {"fulltext": text}):
            for item in page:
                if isinstance(item, dict) and item.get("id") and str(item["id"]) not in seen:
                    seen.add(str(item["id"]))
                    items.append(item)
            offset += len(page)
        if offset >= self.search_cap:
            log.warning("%s: the search for %r reached the service's limit of %d results; "
                        "walking the folders instead", self.name, text, self.search_cap)
            return None
        return items

    def _folder_of(self, item: dict) -> str:
        parent = strip_guid_prefix(str(item.get("parentID") or ""))
        return self.root if parent in self._roots else parent

    def _learn_folder(self, folder_id: str, name: str, parent: str) -> None:
        if len(self._folders) >= KNOWN_FOLDERS:
            self._folders.clear()
        self._folders[folder_id] = (name, self.root if parent in self._roots else parent, time.time())

    def _known(self, folder_id: str) -> tuple[str, str] | None:
        """A folder's name and parent, while what was learnt is as fresh as a listing
        (or was learnt by the search under way)."""
        known = self._folders.get(folder_id)
        if known is None or known[2] < self._fresh_from:
            return None
        return known[0], known[1]

    def _folders_to(self, folder_id: str) -> tuple[str, ...] | None:
        """The names of the folders from the root down to `folder_id`, None when it is
        not below the root (or an ancestor is unknown)."""
        names: list[str] = []
        while folder_id not in self._roots:
            known = self._known(folder_id)
            if known is None or len(names) > 64:
                return None
            names.append(known[0])
            folder_id = known[1]
        return tuple(reversed(names))

    async def _learn_ancestors(self, folder_ids: set[str]) -> None:
        """Learn the folders between `folder_ids` and the root that no listing told,
        level by level, each with one `GET /folders/{id}`. A folder that is gone or may
        not be read (404, 403) or the top of another tree ends its branch: its hits are
        not below the root."""
        limiter = trio.CapacityLimiter(16)
        dead: set[str] = set()

        def unknown_above(folder_id: str) -> str | None:
            for _ in range(65):
                if folder_id in self._roots or not folder_id or folder_id in dead:
                    return None
                known = self._known(folder_id)
                if known is None:
                    return folder_id
                folder_id = known[1]
            return None

        async def learn(folder_id: str) -> None:
            async with limiter:
                try:
                    body = await self._get_json(self._url("folders", folder_id),
                                                f"reading folder {folder_id} (a search hit's place)")
                except SourceError as exc:
                    if exc.errno not in (errno.ENOENT, errno.EACCES):
                        raise
                    dead.add(folder_id)
                    return
            parent = strip_guid_prefix(str(body.get("parentID") or ""))
            if not body.get("name") or not parent:
                dead.add(folder_id)
                return
            self._learn_folder(folder_id, str(body["name"]), parent)

        while True:
            missing = {m for f in folder_ids if (m := unknown_above(f)) is not None}
            if not missing:
                return
            async with trio.open_nursery() as nursery:
                for folder_id in missing:
                    nursery.start_soon(learn, folder_id)

    async def _completed(self, found: list[tuple[Entry, tuple[str, ...]]]) -> list[Hit]:
        """Hits whose item lacked its size or version: `GET /files/{id}` makes them
        what a listing makes (the same version, so the same cache key)."""
        hits: list[Hit] = []
        limiter = trio.CapacityLimiter(16)

        async def one(entry: Entry, folders: tuple[str, ...]) -> None:
            async with limiter:
                try:
                    body = await self._get_json(self._url("files", entry.id), f"reading {entry.name}")
                except SourceError as exc:
                    if exc.errno == errno.ENOENT:
                        return
                    raise
            full = self._entry(body, entry.ref.folder)
            if full is not None:
                hits.append(Hit(folders, full))

        async with trio.open_nursery() as nursery:
            for entry, folders in found:
                nursery.start_soon(one, entry, folders)
        return hits

    # ---------------------------------------------------------------- content

    def target(self, entry: Entry) -> Target:
        ref: FileRef = entry.ref
        url = self._url("files", ref.id, "data")
        if ref.version.isdigit():
            url += f"?version={urllib.parse.quote(ref.version)}"
        return AuthTarget(self.auth, url)

    def content_error(self, entry: Entry, exc: HttpError) -> Exception:
        if isinstance(exc, SizeChangedError):
            return exc              # the reader marks the listing stale on this one
        return self._from_http(f"reading {entry.name}", exc)

    # ---------------------------------------------------------------- bulk jobs

    async def _job_start(self, folder_id: str, files: list[BulkFile]) -> tuple[str, JobStatus]:
        what = f"bulk download of {len(files)} files of folder {folder_id}"
        resp = await self._call("POST", self._url("folders", folder_id, "_download"), what,
                                json={"idList": ",".join(f.ref for f in files)}, idempotent=False)
        try:
            body = resp.json()
        except ValueError:
            body = {}
        location = (body.get("Location") if isinstance(body, dict) else None) \
            or resp.headers.get("location") or ""
        return job_id_from_location(str(location)), JobStatus(JobState.WAITING, "PENDING")

    async def _job_poll(self, folder_id: str, job_id: str) -> JobStatus:
        body = await self._get_json(self._url("folders", folder_id, "_download", job_id),
                                    f"status of bulk download job {job_id}")
        status = parse_job_status(body)
        if not status.terminal:
            return JobStatus(JobState.WAITING, status.state)
        if status.state != "SUCCEEDED":
            code = f", errorCode {status.error_code}" if status.error_code not in ("", "0") else ""
            return JobStatus(JobState.FAILED, status.state + code)
        return JobStatus(JobState.DONE, status.state, status.item_errors)

    def _job_package(self, folder_id: str, job_id: str) -> Target:
        return AuthTarget(self.auth, self._url("folders", folder_id, "_download", job_id, "package"))

    async def _job_end(self, folder_id: str, job_id: str, finished: bool) -> None:
        """A job is deleted once nobody waits for it: unpacked, failed or abandoned."""
        resp = await self.http.request(
            "DELETE", self._url("folders", folder_id, "_download", job_id),
            name=f"{self.name}: deleting bulk download job", auth=self.auth, expect=None)
        self.jobs_deleted += 1
        if resp.status_code not in (200, 204, 404):
            log.debug("%s: deleting job %s: HTTP %s %s", self.name, job_id,
                      resp.status_code, describe_oce_error(resp.text))


Source = OceSource
