"""Loopback emulator of Oracle Content Management's Documents REST API 1.2.

Faithful to /work/shared/reference/apis.md §2, including the parts a client
must be lenient about:

- Auth: an IDCS-style token endpoint (`POST /oauth2/v1/token`, client id and
  secret in HTTP Basic, `grant_type=client_credentials` with the configured
  `scope`; `grant_type=password` as Oracle's toolkit uses it) issuing bearer
  tokens with a short, configurable lifetime measured on the emulator's clock
  (`advance()` expires them; an expired token gets 401). Basic auth with a
  username and password is accepted too (`basic_enabled`).
- `GET /documents/api/1.2/folders/{id}/items` with `limit` (default 50, clamped
  to `max_limit`, 10000 like the service), `offset`, `orderby`, `filterName`;
  the envelope has exactly count/totalResults/ownerFolderID/hasMore/errorCode/
  items, no offset/limit echo. The home folder's id is the literal `self`.
- Type drift: the documented examples send numbers and flags as strings; the
  schemas show numbers and booleans. `drift="mixed"` (the default) alternates
  between the two styles response by response, `"strings"` and `"native"` pin
  one. The bulk-download status also alternates `links` between an object and
  an array, and the job's `Location` between an absolute URL and the
  `[OCEHost]/folders/...` placeholder form of the worked examples.
- `GET /files/{id}/data[?version=N]` with single-range `Range` (206, 416).
- Bulk download: `POST /folders/{id}/_download` with `{"idList": "a,b"}`
  (every id must be a child of the folder: 400 errorCode -96; a child the user
  may not read: 403 errorCode -20), the job id as the last segment of the body's
  `Location`; `GET .../_download/{job}` walks PENDING -> PROCESSING ->
  the job's fate (SUCCEEDED by default; `job_fates` queues FAILED, BLOCKED or
  ABORTED for the next jobs), one step per poll so tests are deterministic;
  items missing when the zip is built (deleted, or listed in `unavailable`) are
  reported in `items[].error` and left out; `GET .../{job}/package` serves the
  zip with Range; `DELETE .../{job}` aborts a running job (ABORTED) or
  discards a finished one.
- `GET /folders/search/items` and `GET /folders/{id}/search/items`: the items of the
  folder's tree (the home's without an id) that `fulltext` or `querytext` finds
  (see `_search` and `_query_test` for the forms accepted), `limit` (default 20),
  `offset`, `orderby` (name, size, lastModifiedName, lastModifiedDate), paged like a
  listing (count/totalResults/hasMore, and totalCount, which Oracle's own toolkit
  reads), at most `search_cap` (10000) results, nothing the user may not read.
- Errors carry errorCode/errorKey/errorMessage (plus title/type/errorType
  where the docs show them): -16 not found (404), -20 no privilege (403),
  -96 ids outside the folder (400), -1 otherwise.

Zip layout is unknown [U]: `zip_layout="flat"` puts the files at the zip's
root, `"nested"` under a directory named after the folder; a folder id in the
idList becomes a subdirectory either way.

Faults (the base class's `faults`) match these route names: token, folder,
file, items, search, data, download_create, download_status, download_package,
download_delete.
"""
from __future__ import annotations

import base64
import collections
import hashlib
import os
import re
import tempfile
import threading
import time
import urllib.parse
import zipfile
from dataclasses import dataclass, field

from .base import (Blob, BytesBlob, Emulator, FileBlob, Request, Response,
                   json_response, new_token, range_response)

API = "/documents/api/1.2"
TOKEN_PATH = "/oauth2/v1/token"
_ID = r"([^/]+)"

TERMINAL = ("SUCCEEDED", "FAILED", "ABORTED", "BLOCKED")
ERROR_TYPE_URL = "https://www.w3.org/Protocols/rfc2616/rfc2616-sec10.html"


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


_NAME_FIELDS = {"fitemname", "ffilename", "ffoldername", "name", "itemname", "filename", "doriginalname"}
_OPS = {"substring": "in", "contains": "in", "matches": "eq", "=": "eq", "starts": "pre", "ends": "suf"}


def _fulltext_test(text: str):
    """fulltext: every word of `text` in the item's name or its owner's or modifier's."""
    words = text.lower().split()

    def test(node: "Node") -> bool:
        where = " ".join((node.name, USER["displayName"], USER["loginName"])).lower()
        return all(w in where for w in words)
    return test


def _clause_test(clause: str):
    m = re.fullmatch(r"\s*([A-Za-z][\w.]*)\s*<\s*(\w+|=)\s*>\s*(.*?)\s*", clause, re.S)
    if m is None:
        if "<" in clause or ">" in clause:
            raise ValueError(f"cannot read {clause!r}")
        return _fulltext_test(clause)
    field_, op, value = m.group(1).lower(), _OPS.get(m.group(2).lower()), m.group(3)
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "`'\"":
        value = value[1:-1]
    if op is None:
        raise ValueError(f"unknown operator <{m.group(2)}>")
    if field_ == "fulltext":
        return _fulltext_test(value)
    if field_ not in _NAME_FIELDS:      # tags and metadata collections: none are set here
        return lambda node: False
    v = value.lower()
    return {"in": lambda n: v in n.name.lower(), "eq": lambda n: n.name.lower() == v,
            "pre": lambda n: n.name.lower().startswith(v), "suf": lambda n: n.name.lower().endswith(v)}[op]


def _query_test(text: str):
    """querytext, in each form it is plausibly written (Oracle's reference names the
    parameter but the examples of its targets could not be read): plain words as
    fulltext; `fulltext<CONTAINS>`words``; a name field (fItemName, fFileName, name…)
    with <substring>, <contains>, <matches>, <starts> or <ends> and a value bare,
    `quoted`, 'quoted' or "quoted"; clauses joined by <AND> and <OR>."""
    alternatives = [[_clause_test(c) for c in re.split(r"<\s*and\s*>", alt, flags=re.I)]
                    for alt in re.split(r"<\s*or\s*>", text, flags=re.I)]
    return lambda node: any(all(t(node) for t in tests) for tests in alternatives)


@dataclass
class Node:
    id: str
    parent: str | None
    name: str
    type: str                                   # "folder" or "file"
    created: float
    modified: float
    mime: str = ""
    versions: list[Blob] = field(default_factory=list)   # files: index 0 is version 1
    children: dict[str, None] = field(default_factory=dict)   # folders: child ids, in order
    names: set[str] = field(default_factory=set)              # folders: child names

    @property
    def blob(self) -> Blob:
        return self.versions[-1]

    @property
    def version(self) -> int:
        return len(self.versions)


@dataclass
class Job:
    id: str
    folder_id: str
    ids: list[str]
    fate: str
    polls: int = 0
    progress: str = "PENDING"
    percent: int = 0
    missing: list[str] = field(default_factory=list)
    zip_path: str | None = None
    filename: str = ""


USER = {"displayName": "Recording Exporter", "loginName": "recfs.exporter",
        "id": "U0EAA20910FAF3052ACB79E4T00000000001", "type": "user"}


class OceEmulator(Emulator):
    name = "oce"

    def __init__(self, *, client_id: str = "recfs-oce-client",
                 client_secret: str = "oce-client-secret",
                 scope: str = "https://oce.example.com:443/urn:opc:cec:all",
                 username: str = "recfs.exporter", password: str = "oce-password",
                 basic_enabled: bool = True, token_lifetime: float = 3600.0,
                 drift: str = "mixed", zip_layout: str = "flat", job_polls: int = 3,
                 max_limit: int = 10000, search_cap: int = 10000, seed: int = 0, **kw):
        super().__init__(**kw)
        self.client_id = client_id
        self.client_secret = client_secret
        self.scope = scope
        self.username = username
        self.password = password
        self.basic_enabled = basic_enabled
        self.token_lifetime = token_lifetime
        assert drift in ("mixed", "strings", "native")
        self.drift = drift
        assert zip_layout in ("flat", "nested")
        self.zip_layout = zip_layout
        self.job_polls = job_polls              # status polls until a job reaches its fate
        self.max_limit = max_limit
        self.search_cap = search_cap            # "The search has a limit of 10000 items"
        self.search_log: list[dict[str, str]] = []   # every search's query parameters, for tests
        self.search_omits: set[str] = set()     # item fields a search answer leaves out (e.g.
                                                # version, size: its item schema is not shown)
        self.seed = seed
        self.nodes: dict[str, Node] = {}
        self.tokens: dict[str, float] = {}      # token -> expiry on the emulator clock
        self.jobs: dict[str, Job] = {}
        self.job_history: list[Job] = []      # every job ever created, for tests
        self.job_fates: collections.deque[str] = collections.deque()
        self.unavailable: set[str] = set()      # ids left out of zips ("Item not available")
        self.forbidden: set[str] = set()        # ids the user may not read (403, -20)
        self.tokens_issued = 0
        self.jobs_created = 0
        self.jobs_deleted = 0
        self._lock = threading.RLock()
        self._serial = 0
        self._style_flip = 0
        self._tmp = tempfile.mkdtemp(prefix="recfs-oce-emu-")
        now = time.time()
        self.nodes["self"] = Node("self", None, "Home", "folder", now - 86400 * 30, now - 86400)

        a = API
        self.route("POST", TOKEN_PATH, "token", self._token)
        # before folders/{id}/items, which "folders/search/items" would match too
        self.route("GET", rf"{a}/folders/search/items", "search", self._search)
        self.route("GET", rf"{a}/folders/{_ID}/search/items", "search", self._search)
        self.route("GET", rf"{a}/folders/{_ID}/items", "items", self._items)
        self.route("GET", rf"{a}/folders/{_ID}", "folder", self._folder)
        self.route("POST", rf"{a}/folders/{_ID}/_download", "download_create", self._dl_create)
        self.route("GET", rf"{a}/folders/{_ID}/_download/{_ID}/package", "download_package",
                   self._dl_package)
        self.route("GET", rf"{a}/folders/{_ID}/_download/{_ID}", "download_status", self._dl_status)
        self.route("DELETE", rf"{a}/folders/{_ID}/_download/{_ID}", "download_delete",
                   self._dl_delete)
        self.route("GET", rf"{a}/files/{_ID}/data", "data", self._data)
        self.route("GET", rf"{a}/files/{_ID}", "file", self._file)

    # ------------------------------------------------------------------ content setup

    def _new_id(self, prefix: str) -> str:
        self._serial += 1
        digest = hashlib.sha1(f"{self.seed}:{self._serial}".encode()).hexdigest().upper()
        return f"{prefix}{digest[:23]}T{self._serial:020d}"

    def add_folder(self, parent: str, name: str, *, modified: float | None = None) -> str:
        with self._lock:
            self._check_name(parent, name)
            fid = self._new_id("F")
            ts = modified if modified is not None else time.time()
            self.nodes[fid] = Node(fid, parent, name, "folder", ts, ts)
            self._adopt(parent, fid, name)
            return fid

    def add_file(self, parent: str, name: str, content: bytes | Blob, *,
                 mime: str = "audio/wav", modified: float | None = None) -> str:
        with self._lock:
            self._check_name(parent, name)
            blob = BytesBlob(content) if isinstance(content, (bytes, bytearray)) else content
            fid = self._new_id("D")
            ts = modified if modified is not None else time.time()
            self.nodes[fid] = Node(fid, parent, name, "file", ts, ts, mime, [blob])
            self._adopt(parent, fid, name)
            return fid

    def _check_name(self, parent: str, name: str) -> None:
        # errorCode -17: names are unique within a folder
        if name in self.nodes[parent].names:
            raise ValueError(f"{name!r} already exists in {parent}")

    def _adopt(self, parent: str, child: str, name: str) -> None:
        folder = self.nodes[parent]
        folder.children[child] = None
        folder.names.add(name)

    def new_version(self, file_id: str, content: bytes | Blob) -> int:
        with self._lock:
            node = self.nodes[file_id]
            node.versions.append(BytesBlob(content) if isinstance(content, (bytes, bytearray))
                                 else content)
            node.modified = max(self.now(), node.modified + 1)
            return node.version

    def remove(self, node_id: str) -> None:
        with self._lock:
            node = self.nodes.pop(node_id)
            if node.parent in self.nodes:
                folder = self.nodes[node.parent]
                del folder.children[node_id]
                folder.names.discard(node.name)
            for child in list(node.children):
                self.remove(child)

    def path_of(self, node_id: str) -> str:
        parts = []
        while node_id != "self":
            node = self.nodes[node_id]
            parts.append(node.name)
            node_id = node.parent
        return "/".join(reversed(parts))

    def files(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.type == "file"]

    def stop(self) -> None:
        super().stop()
        with self._lock:
            for job in self.jobs.values():
                self._discard_zip(job)
        try:
            os.rmdir(self._tmp)
        except OSError:
            pass

    # ------------------------------------------------------------------ helpers

    def _native(self) -> bool:
        """Which style this response uses: numbers/booleans (True) or strings."""
        if self.drift == "strings":
            return False
        if self.drift == "native":
            return True
        with self._lock:
            self._style_flip += 1
            return self._style_flip % 2 == 0

    @staticmethod
    def _err(status: int, code: str, key: str, message: str, **extra) -> Response:
        body = {"errorCode": code, "errorKey": key, "errorMessage": message,
                "title": message, "type": ERROR_TYPE_URL}
        body.update(extra)
        return json_response(body, status)

    def _not_found(self, node_id: str) -> Response:
        return self._err(404, "-16", "!csUnableToGetItemInfo!csItemNotFound",
                         f"Security validation failed. '{node_id}' does not exist.")

    def _forbidden(self, node_id: str, service: str = "DOCS_GET") -> Response:
        return self._err(403, "-20", f"!csItemInsufficientPrivileges,{USER['loginName']},{node_id}",
                         f"User '{USER['loginName']}' has insufficient privilege to access "
                         f"{node_id} with service {service}.")

    def _lookup(self, node_id: str, kind: str) -> tuple[Node | None, Response | None]:
        node = self.nodes.get(node_id)
        if node is None or node.type != kind:
            return None, self._not_found(node_id)
        if node_id in self.forbidden:
            return None, self._forbidden(node_id)
        return node, None

    def _authorized(self, req: Request) -> Response | None:
        header = req.header("authorization") or ""
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            expiry = self.tokens.get(value.strip())
            if expiry is not None and self.now() < expiry:
                return None
        elif scheme.lower() == "basic" and self.basic_enabled:
            try:
                user, _, pw = base64.b64decode(value.strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                user, pw = "", ""
            if user == self.username and pw == self.password:
                return None
        resp = json_response({"errorCode": "-1", "errorKey": "!csUserNotAuthenticated",
                              "errorMessage": "The user is not authenticated.",
                              "title": "Unauthorized"}, 401)
        resp.headers["WWW-Authenticate"] = 'Bearer realm="oce"'
        return resp

    def _item_json(self, node: Node, native: bool) -> dict:
        def n(v):
            return v if native else str(v)
        out = {"type": node.type, "id": node.id, "parentID": node.parent, "name": node.name,
               "ownedBy": USER, "createdBy": USER, "modifiedBy": USER,
               "createdTime": iso(node.created), "modifiedTime": iso(node.modified)}
        if node.type == "folder":
            size = sum(self.nodes[c].blob.size for c in node.children
                       if self.nodes[c].type == "file")
            out.update(size=n(size), childItemsCount=n(len(node.children)))
        else:
            out.update(size=n(node.blob.size), version=n(node.version), mimeType=node.mime)
        return out

    # ------------------------------------------------------------------ auth

    def _token(self, req: Request) -> Response:
        form = req.form()
        cid, secret = form.get("client_id", ""), form.get("client_secret", "")
        header = req.header("authorization") or ""
        if header.lower().startswith("basic "):
            try:
                cid, _, secret = base64.b64decode(header[6:].strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                pass
        if cid != self.client_id or secret != self.client_secret:
            return json_response({"error": "invalid_client",
                                  "error_description": "Client authentication failed."}, 401)
        grant = form.get("grant_type")
        if grant == "password":
            if form.get("username") != self.username or form.get("password") != self.password:
                return json_response({"error": "invalid_grant",
                                      "error_description": "Invalid user credentials."}, 400)
        elif grant != "client_credentials":
            return json_response({"error": "unsupported_grant_type",
                                  "error_description": f"Grant type {grant!r} is not supported."}, 400)
        if form.get("scope") != self.scope:
            return json_response({"error": "invalid_scope",
                                  "error_description": "The requested scope is invalid, unknown, "
                                                       "or malformed."}, 400)
        token = new_token(40)
        with self._lock:
            self.tokens[token] = self.now() + self.token_lifetime
            self.tokens_issued += 1
        return json_response({"access_token": token, "token_type": "Bearer",
                              "expires_in": int(self.token_lifetime)})

    # ------------------------------------------------------------------ folders and files

    def _folder(self, req: Request) -> Response:
        return self._item(req, "folder", description="", errorCode="0")

    def _file(self, req: Request) -> Response:
        return self._item(req, "file", errorCode="0")

    def _item(self, req: Request, kind: str, **extra) -> Response:
        if (denied := self._authorized(req)) is not None:
            return denied
        with self._lock:
            node, error = self._lookup(req.match.group(1), kind)
            if error:
                return error
            body = self._item_json(node, self._native())
            body.update(extra)
            return json_response(body)

    def _paging(self, q, default_limit: int) -> "tuple[int, int] | Response":
        """`limit` (at most max_limit) and `offset` of a page, or the service's 400."""
        try:
            limit = int(q.get("limit", str(default_limit)))
            offset = int(q.get("offset", "0"))
            if limit < 1 or offset < 0:
                raise ValueError
        except ValueError:
            return self._err(400, "-1", "!csInvalidParameter",
                             "The limit and offset parameters must be non-negative integers.")
        return min(limit, self.max_limit), offset

    def _page(self, nodes: list[Node], offset: int, limit: int, omit=(), **extra) -> Response:
        """A page of `nodes` in the envelope of every paged answer (a folder's listing, a
        search): numbers and flags as strings, as documented, unless `native`; `extra`
        fields after the totals; the items without the fields in `omit`."""
        native = self._native()

        def number(n: int):
            return n if native else str(n)
        page = nodes[offset:offset + limit]
        has_more = offset + len(page) < len(nodes)
        return json_response({
            "count": number(len(page)),
            "totalResults": number(len(nodes)),
            **{k: number(v) if isinstance(v, int) else v for k, v in extra.items()},
            "hasMore": number(int(has_more)),
            "errorCode": number(0),
            "items": [{k: v for k, v in self._item_json(n, native).items() if k not in omit}
                      for n in page],
        })

    def _items(self, req: Request) -> Response:
        if (denied := self._authorized(req)) is not None:
            return denied
        q = req.query
        paging = self._paging(q, 50)
        if isinstance(paging, Response):
            return paging
        limit, offset = paging
        field_, _, direction = q.get("orderby", "name:asc").partition(":")
        sort_key = {"name": lambda n: n.name.lower(), "createdTime": lambda n: n.created,
                    "modifiedTime": lambda n: n.modified}.get(field_)
        if sort_key is None or direction not in ("asc", "desc", ""):
            return self._err(400, "-1", "!csInvalidParameter", f"Invalid orderby {q['orderby']!r}.")
        with self._lock:
            folder, error = self._lookup(req.match.group(1), "folder")
            if error:
                return error
            children = [self.nodes[c] for c in folder.children]
            if "filterName" in q:
                children = [c for c in children if c.name == q["filterName"]]
            children.sort(key=sort_key, reverse=direction == "desc")
            return self._page(children, offset, limit, ownerFolderID=folder.id)

    # ------------------------------------------------------------------ search

    def _under_forbidden(self, node: Node) -> bool:
        while node is not None:
            if node.id in self.forbidden:
                return True
            node = self.nodes.get(node.parent) if node.parent else None
        return False

    def _subtree(self, folder: Node) -> list[Node]:
        out, stack = [], [folder]
        while stack:
            for cid in stack.pop().children:
                child = self.nodes[cid]
                if child.id in self.forbidden:      # nothing the user may not read, nor below it
                    continue
                out.append(child)
                if child.type == "folder":
                    stack.append(child)
        return out

    def _search(self, req: Request) -> Response:
        """`GET folders[/{id}]/search/items`: every item of the folder's tree (the home
        folder's without an id) that `fulltext` or `querytext` matches, paged like a
        folder listing, at most `search_cap` of them. fulltext looks at the item's name
        (which holds its extension) and its owner's and last modifier's names, as a
        case-insensitive substring of each word given (the service's matching, whole
        words or substrings, is not documented: the emulator takes the wider reading).
        Contents and folder descriptions are not indexed here."""
        if (denied := self._authorized(req)) is not None:
            return denied
        q = req.query
        paging = self._paging(q, 20)
        if isinstance(paging, Response):
            return paging
        limit, offset = paging
        fulltext, querytext = q.get("fulltext", "").strip(), q.get("querytext", "").strip()
        if not fulltext and not querytext:
            return self._err(400, "-1", "!csInvalidParameter",
                             "Either fulltext or querytext must be provided.")
        try:
            test = _query_test(querytext) if querytext else _fulltext_test(fulltext)
        except ValueError as exc:
            return self._err(400, "-1", "!csInvalidParameter", f"Invalid querytext: {exc}")
        field_, _, direction = q.get("orderby", "name:asc").partition(":")
        sort_key = {"name": lambda n: n.name.lower(), "size": self._size_of,
                    "lastModifiedName": lambda n: USER["displayName"],
                    "lastModifiedDate": lambda n: n.modified}.get(field_)
        if sort_key is None or direction not in ("asc", "desc", ""):
            return self._err(400, "-1", "!csInvalidParameter", f"Invalid orderby {q['orderby']!r}.")
        with self._lock:
            self.search_log.append(dict(q))
            top = req.match.group(1) if req.match.groups() else "self"
            folder, error = self._lookup(top, "folder")
            if error:
                return error
            if self._under_forbidden(folder):
                return self._forbidden(top, "DOCS_SEARCH")
            found = sorted((n for n in self._subtree(folder) if test(n)), key=sort_key,
                           reverse=direction == "desc")[:self.search_cap]
            return self._page(found, offset, limit, omit=self.search_omits, totalCount=len(found))

    def _size_of(self, node: Node) -> int:
        if node.type == "file":
            return node.blob.size
        return sum(self.nodes[c].blob.size for c in node.children if self.nodes[c].type == "file")

    def _data(self, req: Request) -> Response:
        if (denied := self._authorized(req)) is not None:
            return denied
        with self._lock:
            node, error = self._lookup(req.match.group(1), "file")
            if error:
                return error
            blob = node.blob
            if "version" in req.query:
                try:
                    wanted = int(req.query["version"])
                    if wanted < 1:
                        raise IndexError
                    blob = node.versions[wanted - 1]
                except (ValueError, IndexError):
                    return self._not_found(f"{node.id} version {req.query['version']}")
            quoted = urllib.parse.quote(node.name)
        return range_response(req, blob, {
            "Content-Type": node.mime or "application/octet-stream",
            "Content-Disposition": f"attachment; filename*=UTF-8''{quoted}"})

    # ------------------------------------------------------------------ bulk download

    def _job_url(self, job: Job, placeholder: bool) -> str:
        if placeholder:
            return f"[OCEHost]/folders/{job.folder_id}/_download/{job.id}"
        return f"{self.url}{API}/folders/{job.folder_id}/_download/{job.id}"

    def _dl_create(self, req: Request) -> Response:
        if (denied := self._authorized(req)) is not None:
            return denied
        folder_id = req.match.group(1)
        try:
            id_list = req.json()["idList"]
            if not isinstance(id_list, str) or not id_list.strip():
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return self._err(400, "-1", "!csBulkdownloadUnableToInitJob!csInvalidParameter",
                             "Unable to start bulk download of files. The idList is missing "
                             "or invalid.", errorType="folder")
        ids = [i.strip() for i in id_list.split(",") if i.strip()]
        with self._lock:
            folder, error = self._lookup(folder_id, "folder")
            if error:
                return error

            def prefixed(i):
                node = self.nodes.get(i)
                return f"{'fFolderGUID' if node and node.type == 'folder' else 'fFileGUID'}:{i}"
            common = {"errorType": "folder", "id": f"fFolderGUID:{folder_id}",
                      "idList": ",".join(prefixed(i) for i in ids), "parentID": folder_id}
            if any(i == "self" or i not in folder.children or i not in self.nodes for i in ids):
                return self._err(
                    400, "-96",
                    "!csBulkdownloadUnableToInitJob!csCloudBulkDownloadRequestItemsNotInParentFolder",
                    "Unable to start bulk download of files. One or more of the Ids are not "
                    "located in the parent folder.", **common)
            for i in ids:
                if i in self.forbidden:
                    return self._err(
                        403, "-20",
                        f"!csBulkdownloadUnableToInitJob!csCloudItemInsufficientPrivileges,"
                        f"{USER['loginName']},{prefixed(i)},DOCS_BULK_BUILD_ZIP",
                        f"Unable to start bulk download of files. User '{USER['loginName']}' has "
                        f"insufficient privilege to access {prefixed(i)} with service "
                        f"DOCS_BULK_BUILD_ZIP.", **common)
            job_id = hashlib.md5(f"{self.seed}:job:{self.jobs_created}:{time.time()}".encode()
                                 ).hexdigest().upper() + str(int(time.time() * 1000))
            fate = self.job_fates.popleft() if self.job_fates else "SUCCEEDED"
            job = Job(job_id, folder_id, ids, fate)
            self.jobs[job_id] = job
            self.job_history.append(job)
            self.jobs_created += 1
            native = self._native()
            body = {"Location": self._job_url(job, placeholder=not native),
                    "errorCode": 0 if native else "0", "id": common["id"],
                    "idList": common["idList"], "parentID": folder_id, "type": "folder"}
            return json_response(body)

    def _job(self, req: Request) -> tuple[Job | None, Response | None]:
        folder_id, job_id = req.match.group(1), req.match.group(2)
        job = self.jobs.get(job_id)
        if job is None or job.folder_id != folder_id:
            return None, self._err(404, "-16", "!csBulkdownloadUnableToGetJobStatus",
                                   "Unable to get bulkdownload job status.", errorType="folder",
                                   parentID=folder_id)
        return job, None

    def _advance_job(self, job: Job) -> None:
        if job.progress in TERMINAL:
            return
        job.polls += 1
        if job.polls >= self.job_polls:
            job.progress = job.fate
            if job.fate == "SUCCEEDED":
                job.percent = 100
                self._build_zip(job)
        elif job.polls == 1:
            job.progress = "PENDING"
        else:
            job.progress = "PROCESSING"
            job.percent = min(99, 100 * (job.polls - 1) // max(1, self.job_polls - 1))

    def finish_job(self, job_id: str) -> None:
        """Run a job to its fate now (tests that do not want to count polls)."""
        with self._lock:
            job = self.jobs[job_id]
            while job.progress not in TERMINAL:
                job.polls = max(job.polls, self.job_polls - 1)
                self._advance_job(job)

    def _zip_entries(self, node: Node, prefix: str, out: list[tuple[str, Node]]) -> None:
        if node.type == "file":
            out.append((prefix + node.name, node))
            return
        for c in node.children:
            child = self.nodes[c]
            if c in self.forbidden or c in self.unavailable:
                continue
            self._zip_entries(child, f"{prefix}{node.name}/", out)

    def _build_zip(self, job: Job) -> None:
        folder = self.nodes.get(job.folder_id)
        prefix = f"{folder.name}/" if folder is not None and self.zip_layout == "nested" else ""
        entries: list[tuple[str, Node]] = []
        for i in job.ids:
            node = self.nodes.get(i)
            if node is None or i in self.unavailable or i in self.forbidden:
                job.missing.append(i)
                continue
            self._zip_entries(node, prefix, entries)
        fd, path = tempfile.mkstemp(prefix=f"job-{job.id}-", suffix=".zip", dir=self._tmp)
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED,
                                                         compresslevel=1) as zf:
            for arcname, node in entries:
                info = zipfile.ZipInfo(arcname, time.gmtime(node.modified)[:6])
                info.compress_type = zipfile.ZIP_DEFLATED
                with zf.open(info, "w", force_zip64=node.blob.size > 2**31) as member:
                    for piece in node.blob.iter_range(0, node.blob.size):
                        member.write(piece)
        job.zip_path = path
        job.filename = f"OCE-{time.strftime('%Y%m%d', time.gmtime(self.now()))}.zip"

    def _discard_zip(self, job: Job) -> None:
        if job.zip_path:
            try:
                os.unlink(job.zip_path)
            except OSError:
                pass
            job.zip_path = None

    def _dl_status(self, req: Request) -> Response:
        if (denied := self._authorized(req)) is not None:
            return denied
        with self._lock:
            job, error = self._job(req)
            if error:
                return error
            self._advance_job(job)
            native = self._native()
            completed = job.progress in TERMINAL

            def n(v):
                return v if native else str(v)
            body = {"completed": completed if native else str(completed).lower(),
                    "completedPercentage": n(job.percent), "progress": job.progress,
                    "errorCode": n(0 if job.progress in ("SUCCEEDED", "PENDING", "PROCESSING")
                                   else -1),
                    "type": "folder"}
            if job.missing:
                body["items"] = [{"id": i, "error": "Item not available"} for i in job.missing]
            if job.progress == "SUCCEEDED" and job.zip_path:
                body["details"] = {"filename": job.filename,
                                   "filesize": n(os.path.getsize(job.zip_path))}
                link = {"href": self._job_url(job, placeholder=False) + "/package",
                        "rel": "enclosure", "method": "GET", "mediaType": "application/zip"}
                body["links"] = link if native else [link]
            return json_response(body)

    def _dl_package(self, req: Request) -> Response:
        if (denied := self._authorized(req)) is not None:
            return denied
        with self._lock:
            job, error = self._job(req)
            if error:
                return error
            if job.progress != "SUCCEEDED" or not job.zip_path:
                return self._err(400, "-1", "!csBulkdownloadJobNotComplete",
                                 f"The bulk download job is {job.progress}; there is no package.",
                                 errorType="folder", parentID=job.folder_id)
            blob = FileBlob(job.zip_path)
            quoted = urllib.parse.quote(job.filename)
        return range_response(req, blob, {"Content-Type": "application/zip",
                                          "Content-Disposition": f"attachment; filename*=UTF-8''{quoted}"})

    def _dl_delete(self, req: Request) -> Response:
        if (denied := self._authorized(req)) is not None:
            return denied
        with self._lock:
            folder_id = req.match.group(1)
            job = self.jobs.get(req.match.group(2))
            if job is None or job.folder_id != folder_id:
                return self._err(404, "-16", "!csBulkdownloadUnableToAbortJob",
                                 "Unable to abort bulkdownload job.", errorType="folder",
                                 parentID=folder_id)
            self.jobs_deleted += 1
            if job.progress in TERMINAL:
                self._discard_zip(job)
                del self.jobs[job.id]
            else:
                job.progress = "ABORTED"
            return json_response({"errorCode": "0", "type": "folder"})


# ---------------------------------------------------------------------- for tests and the demo

def source_table(emu: OceEmulator, name: str, *, basic: bool = False, **extra) -> dict:
    """The `[[sources]]` table that points an oce source at `emu`."""
    table = {"name": name, "kind": "oce", "api_url": f"{emu.url}{API}"}
    if basic:
        table.update(username=emu.username, password=emu.password)
    else:
        table.update(token_url=f"{emu.url}{TOKEN_PATH}", client_id=emu.client_id,
                     client_secret=emu.client_secret, scope=emu.scope)
    table.update(extra)
    return table


def demo(seed: int = 0, **kw) -> OceEmulator:
    from .samples import call_wav, transcript
    """An emulator with a small recording archive in the home folder:
    Recordings/<queue>/<day>/call-*.wav plus a README at the top."""
    emu = OceEmulator(seed=seed, **kw)
    base = time.time() - 86400 * 10
    rec = emu.add_folder("self", "Recordings", modified=base)
    emu.add_file("self", "README.txt", b"Call recordings exported from the contact centre.\n",
                 mime="text/plain", modified=base)
    n = 0
    for q, queue in enumerate(("Sales", "Support", "Billing")):
        qid = emu.add_folder(rec, queue, modified=base + q)
        for d in range(2):
            day = time.strftime("%Y-%m-%d", time.gmtime(base + 86400 * d))
            did = emu.add_folder(qid, day, modified=base + 86400 * d)
            for k in range(3):
                n += 1
                seconds = 3 + (seed + n) % 5
                name = f"call-{day}-{q}{k:03d}"
                emu.add_file(did, f"{name}.wav", BytesBlob(call_wav(seed * 1000 + n, seconds)),
                             modified=base + 86400 * d + 600 * k)
                emu.add_file(did, f"{name}.json", BytesBlob(transcript(seed * 1000 + n, seconds, name)),
                             mime="application/json", modified=base + 86400 * d + 600 * k + 60)
    return emu
