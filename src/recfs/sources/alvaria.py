"""Alvaria Cloud Media Storage: the S3-style key hierarchy under `root`, mirrored.

Client:
- OAuth2 client credentials at `token_url` (cached, refreshed before expiry and once
  on 401); `x-api-key` and `Authorization: Bearer` on every API call.
- A folder is one `objectKeys?key=PREFIX/&keyType=file:directory` listing, followed
  through `continuationToken` (v2) or `nextToken` (v3) to its last page. Directory
  keys may come with or without their trailing '/'.
- Content: a signed download URL per file, kept as a lease until shortly before its
  expiry (X-Amz-Date + X-Amz-Expires, or the X-Goog- pair; one hour by default). A
  listing item may carry the file's `signedDownloadUrl` (the seed's example answers
  do): it becomes the lease, which saves a request per file. Otherwise the URL is
  asked for on first need. A 403 from storage re-resolves it once and the same range
  is retried.
- Sizes: listings say "5370.0 KB". The exact size is learnt with `Range: bytes=0-0`
  on the signed URL (HEAD is not signed for), for all the files of a folder at once
  when the first of them is stat'ed; learnt sizes are remembered in the cache index.
  While a copy is under way (the reader saw files opened in folder order), a file
  listed at up to WHOLE_PROBE bytes is instead asked for whole: the one request
  gives its size and its content, which goes into the cache.
"""
from __future__ import annotations

import calendar
import datetime as dt
import errno
import logging
import re
import time
import urllib.parse
from typing import Any

import cachetools
import httpx
import trio

from ..config import Key
from ..http import (MAX_SIZE, ForbiddenError, HttpError, OAuthClientCredentials,
                    parse_content_range, safe_url)
from .base import WHOLE_PROBE, Entry, Kind, Listing, Sink, Source, SourceContext, SourceError

log = logging.getLogger("recfs.alvaria")

UPLOAD_PREFIX = "imports/"      # the service's folders for uploads; exports/ is read-only
LEASES_KEPT = 20_000            # signed URLs remembered (about 0.7 KB each)

CONFIG_KEYS = {
    "api_url": Key("url", required=True, doc="…/via/v2|v3/organizations/{orgId}"),
    "token_url": Key("url", required=True, doc="…/tokenservice/oauth2/access_token"),
    "client_id": Key("secret", required=True, doc="OAuth2 client id"),
    "client_secret": Key("secret", required=True, doc="OAuth2 client secret"),
    "api_key": Key("secret", required=True, doc="sent as x-api-key"),
    "root": Key("str", default="", doc="key prefix shown as the source's folder"),
    "page_size": Key("int", default=1000, check=lambda v: None if 1 <= v <= 1000 else "must be 1..1000",
                     doc="maxResults per listing request"),
    # 32: on a real network the probes wait on latency, so many at once pay off (on
    # loopback 8 is ~15% cheaper in CPU, but 4x slower at 20 ms a round trip)
    "size_concurrency": Key("int", default=32, check=lambda v: None if 1 <= v <= 256 else "must be 1..256",
                            doc="concurrent exact-size probes per folder"),
}

_API_RE = re.compile(r"/via/(v2|v3)/organizations/[^/]+$")
_SIZE_RE = re.compile(r"^\s*([\d.]+)\s*([kmgt]?i?b|bytes?)?\s*$", re.I)
_UNIT = {"b": 1, "byte": 1, "bytes": 1, "kb": 1024, "kib": 1024, "mb": 1024**2, "mib": 1024**2,
         "gb": 1024**3, "gib": 1024**3, "tb": 1024**4, "tib": 1024**4}


def check_options(opts: dict) -> str | None:
    if not _API_RE.search(opts["api_url"]):
        return "api_url: must end in /via/v2/organizations/{orgId} or /via/v3/organizations/{orgId}"
    return None


def parse_size(text: Any) -> int:
    """'5370.0 KB' -> 5498880 (an estimate: KB is taken as 1024 bytes); 0 if unparsable."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return max(0, min(MAX_SIZE, int(text))) if text == text and abs(text) != float("inf") else 0
    m = _SIZE_RE.match(str(text or ""))
    if not m:
        return 0
    unit = (m.group(2) or "b").lower()
    try:
        return max(0, min(MAX_SIZE, int(float(m.group(1)) * _UNIT.get(unit, 1))))
    except (ValueError, OverflowError):
        return 0


def parse_time(text: Any) -> float:
    try:
        return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


_EXPIRES = re.compile(r"[?&]X-(?:Amz|Goog)-Expires=([^&#]*)")


def url_lifetime(url: str, default: float = 3600.0) -> float:
    """Seconds a signed URL stays valid, from its own query (S3 or GCS style)."""
    m = _EXPIRES.search(url)
    if m:
        try:
            return float(m.group(1))
        except ValueError:
            pass
    return default


_SIGNED_DATE = re.compile(r"[?&]X-(?:Amz|Goog)-Date=(\d{8}T\d{6}Z)(?:&|$)")


def url_time_left(url: str, now: float) -> float:
    """Seconds until a signed URL expires: from its signing date when it names one (a
    URL that came with a listing may be minutes old), else its whole lifetime. (A
    listing gives one URL per file: this is kept cheap.)"""
    lifetime = url_lifetime(url)
    m = _SIGNED_DATE.search(url)
    if m is None:
        return lifetime
    d = m.group(1)
    try:
        signed = calendar.timegm((int(d[0:4]), int(d[4:6]), int(d[6:8]),
                                  int(d[9:11]), int(d[11:13]), int(d[13:15]), 0, 0, 0))
    except ValueError:
        return lifetime
    return signed + lifetime - now


def keep_dot_segments(url: str) -> str:
    """A key may hold '.' or '..' segments; sent as they are, an HTTP client would
    normalise them away and ask for another object. Percent-encoded, they reach the
    store as part of the key."""
    parts = urllib.parse.urlsplit(url)
    segments = parts.path.split("/")
    if not any(seg in (".", "..") for seg in segments):
        return url
    path = "/".join("%2E" if seg == "." else "%2E%2E" if seg == ".." else seg for seg in segments)
    return urllib.parse.urlunsplit(parts._replace(path=path))


class _Auth(OAuthClientCredentials):
    def __init__(self, http, token_url, client_id, client_secret, api_key: str):
        super().__init__(http, token_url, client_id, client_secret, what="alvaria token")
        self.api_key = api_key

    def render(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}", "x-api-key": self.api_key}


class AlvariaSource(Source):
    kind = "alvaria"
    listing_ttl = 60.0

    def __init__(self, name: str, options: dict, ctx: SourceContext):
        super().__init__(name, options, ctx)
        self.api_url = options["api_url"]
        self.version = _API_RE.search(self.api_url).group(1)
        self.auth = _Auth(ctx.http, options["token_url"], options["client_id"].reveal(),
                          options["client_secret"].reveal(), options["api_key"].reveal())
        root = (options.get("root") or "").strip("/")
        self.root = root + "/" if root else ""
        self.page_size = options.get("page_size") or 1000
        self.size_limiter = trio.CapacityLimiter(options.get("size_concurrency") or 32)
        # key -> (signed url, renew at); bounded, as listings fill it for every file
        self.leases: cachetools.LRUCache[str, tuple[str, float]] = cachetools.LRUCache(LEASES_KEPT)
        self._lease_locks: dict[str, trio.Lock] = {}
        self.url_resolutions = 0

    @property
    def data_url(self) -> str:
        return f"{self.api_url}/mediaStorage/data"

    async def start(self) -> None:
        """Fetch a token and make one tiny listing, so that a wrong client secret or
        api_key stops the mount with a clear message instead of EIO on every folder."""
        try:
            await self.auth.headers()
            resp = await self.ctx.http.request(
                "GET", f"{self.data_url}/objectKeys", auth=self.auth, expect=None,
                params={"key": self.root, "keyType": "file:directory", "maxResults": 1},
                name=f"{self.name}: checking access")
        except HttpError as exc:
            raise SourceError(str(exc)) from None
        if resp.status_code == 403:
            raise SourceError(f"{self.name}: the service refused the api_key (HTTP 403 on "
                              f"{safe_url(self.data_url)}/objectKeys)")
        if resp.status_code == 401:
            raise SourceError(f"{self.name}: the service refused the access token (HTTP 401)")
        if resp.status_code not in (200, 404):
            raise SourceError(f"{self.name}: the service answered HTTP {resp.status_code} "
                              f"to a first listing")

    def root_ref(self) -> str:
        return self.root

    # -- listing
    async def list_dir(self, prefix: str) -> Listing:
        token_param = "continuationToken" if self.version == "v2" else "nextToken"
        params: dict[str, Any] = {"key": prefix, "keyType": "file:directory", "maxResults": self.page_size}
        entries: list[Entry] = []
        seen_tokens: set[str] = set()
        while True:
            resp = await self.ctx.http.request("GET", f"{self.data_url}/objectKeys", params=params,
                                               auth=self.auth, name=f"{self.name}: list {prefix or '/'}",
                                               expect=(200, 404))
            if resp.status_code == 404:        # an empty or vanished prefix
                return Listing([])
            try:
                body = resp.json()
            except ValueError:
                raise SourceError(f"{self.name}: listing {prefix or '/'}: the answer is not JSON") from None
            items = body.get("objectKeys") if isinstance(body, dict) else None
            if not isinstance(items, list):
                raise SourceError(f"{self.name}: listing {prefix or '/'}: no objectKeys list in the answer")
            for item in items:
                entry = self._entry(prefix, item)
                if entry is not None:
                    entries.append(entry)
            token = body.get(token_param) or body.get("nextToken") or body.get("continuationToken")
            if not token:
                break
            if token in seen_tokens:
                raise SourceError(f"{self.name}: listing {prefix or '/'}: the service repeated a page token")
            seen_tokens.add(token)
            params = {k: v for k, v in params.items() if k not in ("nextToken", "continuationToken")}
            params[token_param] = token
        return Listing(entries)

    def _entry(self, prefix: str, item: Any) -> Entry | None:
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            log.warning("%s: skipping a malformed item in %s", self.name, prefix or "/")
            return None
        key: str = item["key"]
        key_type = str(item.get("keyType") or "").strip().lower()
        is_dir = key_type == "directory" or key.endswith("/")
        bare = key.rstrip("/")
        if not bare.startswith(prefix) or bare == prefix.rstrip("/"):
            return None                          # the folder's own placeholder object
        name = bare[len(prefix):]
        mtime = parse_time(item.get("lastModifiedTime"))
        if is_dir:
            return Entry(name, Kind.DIR, ref=bare + "/", mtime=mtime, id=bare + "/")
        url = item.get("signedDownloadUrl")
        if isinstance(url, str) and url.strip().startswith(("http://", "https://")):
            self._lease(key, keep_dot_segments(url.strip()))
        size_text = str(item.get("size") or "")
        hint = parse_size(size_text)
        return Entry(name, Kind.FILE, ref=key, mtime=mtime, size=None, size_hint=hint, id=key,
                     version=f"{item.get('lastModifiedTime')}|{size_text}",
                     xattrs={"alvaria.key": key, "alvaria.size": size_text,
                             "alvaria.lastModifiedTime": str(item.get("lastModifiedTime") or "")})

    # -- signed URL leases
    async def signed_url(self, key: str, renew: bool = False) -> tuple[str, dict[str, str]]:
        lease = self.leases.get(key)
        if lease and not renew and time.monotonic() < lease[1]:
            return lease[0], {}
        lock = self._lease_locks.setdefault(key, trio.Lock())
        try:
            async with lock:
                lease_now = self.leases.get(key)
                if lease_now and lease_now is not lease and time.monotonic() < lease_now[1]:
                    return lease_now[0], {}        # another task renewed it meanwhile
                url = keep_dot_segments(await self._ask_signed_url(key, "signedDownloadUrl"))
                self.url_resolutions += 1
                self._lease(key, url)
                return url, {}
        finally:
            stats = lock.statistics()
            if not stats.locked and not stats.tasks_waiting and self._lease_locks.get(key) is lock:
                del self._lease_locks[key]

    def _lease(self, key: str, url: str) -> None:
        left = url_time_left(url, time.time())
        margin = min(300.0, url_lifetime(url) / 4)
        self.leases[key] = (url, time.monotonic() + left - margin)

    # -- sizes
    async def resolve_sizes(self, entries: list[Entry]) -> None:
        async def probe(entry: Entry) -> None:
            async with self.size_limiter:
                try:
                    if entry.size_hint <= WHOLE_PROBE:
                        key = entry.ref
                        entry.size = await self.probe_whole(
                            entry, lambda renew: self.signed_url(key, renew), f"{self.name}: {key}")
                    if entry.size is None:
                        entry.size = await self._probe_size(entry.ref)
                except (HttpError, SourceError) as exc:
                    log.error("%s: cannot learn the size of %s: %s", self.name, entry.ref, exc)

        def unsized() -> list[Entry]:
            return [e for e in entries if e.size is None]

        def url_for(e: Entry):
            return self.signed_url(e.ref)

        # a chunk's GETs together: during a copy the small files come whole, else (and
        # for the bigger ones) one byte each; whatever failed, one probe each (and a
        # small file that did not come whole is tried whole again there)
        again = {id(e) for e in await self.probe_many(
            [e for e in unsized() if e.size_hint <= WHOLE_PROBE], url_for, self.size_limiter, whole=True)}
        await self.probe_many([e for e in unsized() if id(e) not in again], url_for,
                              self.size_limiter, whole=False)
        async with trio.open_nursery() as nursery:
            for entry in unsized():
                nursery.start_soon(probe, entry)

    async def _probe_size(self, key: str) -> int:
        for renew in (False, True):
            url, headers = await self.signed_url(key, renew)
            resp = await self.ctx.http.request("GET", url, headers={**headers, "Range": "bytes=0-0"},
                                               name=f"{self.name}: size of {key}", expect=None,
                                               small_answer=True)
            if resp.status_code == 403 and not renew:
                continue
            if resp.status_code == 206:
                total = parse_content_range(resp.headers.get("content-range"))[2]
                if total is not None:
                    return total
                raise HttpError(f"unusable Content-Range {resp.headers.get('content-range')!r} "
                                f"from {safe_url(url)}")
            if resp.status_code == 200:
                return len(resp.content)
            if resp.status_code == 416:          # an empty object
                total = parse_content_range(resp.headers.get("content-range"))[2]
                return total or 0
            cls = ForbiddenError if resp.status_code == 403 else HttpError
            raise cls(f"HTTP {resp.status_code} from {safe_url(url)}", resp.status_code)
        raise AssertionError("unreachable")

    # -- content
    async def fetch_range(self, entry: Entry, start: int, end: int, sink: Sink) -> None:
        key = entry.ref
        await self.ctx.http.get_range(lambda renew: self.signed_url(key, renew), start, end, sink,
                                      total=entry.size, name=f"{self.name}: {key}")


    # -- writes: uploads into imports/, deletes behind allow_delete
    def upload_dir(self, ref) -> bool:
        return isinstance(ref, str) and (ref + "/").startswith(UPLOAD_PREFIX)

    def child_ref(self, dir_ref, name: str, kind: Kind) -> str:
        return dir_ref + name + ("/" if kind is Kind.DIR else "")

    async def upload(self, dir_ref, name: str, path, size: int) -> None:
        """Two steps, as the service documents: a signed upload URL for the key, then a
        PUT of the bytes with the encryption headers the URL was signed for. A 403 (an
        expired URL) gets a new URL once; 5xx and broken connections are retried."""
        key = self.child_ref(dir_ref, name, Kind.FILE)
        http = self.ctx.http
        url = await self._signed_upload_url(key)
        renewed = False
        attempt = 0
        started = time.monotonic()
        while True:
            headers = {"Content-Length": str(size), "x-amz-server-side-encryption": "aws:kms"}
            kms = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).get("kms-key")
            if kms:
                headers["x-amz-server-side-encryption-aws-kms-key-id"] = kms[0]
            http.requests += 1
            problem = None
            resp = None
            try:
                resp = await http.client.put(url, content=_file_chunks(path), headers=headers)
            except httpx.TransportError as exc:
                problem = type(exc).__name__
            if resp is not None:
                if resp.status_code in (200, 201, 204):
                    return
                if resp.status_code == 403 and not renewed:
                    renewed = True
                    url = await self._signed_upload_url(key)
                    continue
                if resp.status_code not in (429, 500, 502, 503, 504):
                    raise SourceError(f"{self.name}: upload of {key}: HTTP {resp.status_code} "
                                      f"from {safe_url(url)}")
                problem = f"HTTP {resp.status_code}"
            if not await http._sleep_before_retry(attempt, started, resp, f"upload {key}", problem):
                raise SourceError(f"{self.name}: upload of {key}: {problem}; giving up")
            attempt += 1

    async def _signed_upload_url(self, key: str) -> str:
        return await self._ask_signed_url(key, "signedUploadUrl")

    async def _ask_signed_url(self, key: str, kind: str) -> str:
        """`objectKeys?keyType=signedDownloadUrl|signedUploadUrl`: the URL in the answer
        (a bare object, or the first of an objectKeys list: both forms are seen)."""
        resp = await self.ctx.http.request(
            "GET", f"{self.data_url}/objectKeys", params={"key": key, "keyType": kind},
            auth=self.auth, name=f"{self.name}: {kind} for {key}", expect=(200, 404),
            small_answer=True)
        if resp.status_code == 404:
            raise SourceError(f"{self.name}: {key} no longer exists", errno.ENOENT)
        try:
            body = resp.json()
            if isinstance(body, dict) and isinstance(body.get("objectKeys"), list):
                body = body["objectKeys"][0]
            url = str(body[kind]).strip()
        except (ValueError, KeyError, IndexError, TypeError):
            raise SourceError(f"{self.name}: {key}: no {kind} in the answer") from None
        if not url.startswith(("http://", "https://")):
            raise SourceError(f"{self.name}: {key}: the {kind} is not an http(s) URL")
        return url

    async def delete(self, entry: Entry) -> None:
        key = entry.ref
        resp = await self.ctx.http.request(
            "DELETE", f"{self.data_url}/objectKeys", params={"key": key}, auth=self.auth,
            name=f"{self.name}: delete {key}", expect=(200, 204, 404))
        if resp.status_code == 404:
            raise SourceError(f"{self.name}: {key} does not exist any more", errno.ENOENT)
        self.leases.pop(key, None)


async def _file_chunks(path, chunk: int = 1 << 20):
    with open(path, "rb") as f:
        while True:
            data = f.read(chunk)
            if not data:
                return
            yield data


def create(name: str, options: dict, ctx: SourceContext) -> AlvariaSource:
    return AlvariaSource(name, options, ctx)
