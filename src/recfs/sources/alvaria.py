"""Alvaria Cloud Media Storage: the S3-style key hierarchy under `root`, mirrored.

- OAuth2 client credentials at `token_url` (cached, refreshed before expiry and once
  on 401); `x-api-key` and `Authorization: Bearer` on every API call.
- A folder is one `objectKeys?key=PREFIX/&keyType=file:directory` listing, followed
  through `continuationToken` (v2) or `nextToken` (v3) to its last page. Directory
  keys may come with or without their trailing '/'.
- Content: a presigned download URL per file, kept as a lease until shortly before
  its expiry (`http.Leases`). A listing item may carry the file's `signedDownloadUrl`
  (the seed's example answers do): it becomes the lease and saves a request per file.
  Otherwise the URL is asked for on first need.
- Sizes: listings say "5370.0 KB", a hint; the core learns the exact size from the
  content (a ranged GET on the signed URL: HEAD is not signed for).
- Uploads: files written into `imports/…` go to a signed upload URL by PUT, with the
  encryption headers the URL was signed for. Deletes behind `allow_delete`.
"""
from __future__ import annotations

import datetime as dt
import errno
import logging
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

from ..config import SourceOptions, option
from ..http import (MAX_SIZE, HttpError, Leases, OAuthClientCredentials, Target, safe_url)
from .base import Entry, Kind, Listing, Source, SourceError

log = logging.getLogger("recfs.alvaria")

UPLOAD_PREFIX = "imports/"      # the service's folders for uploads; exports/ is read-only
URL_LIFETIME = 3600.0           # signed URLs expire after an hour (the seed)

_API_RE = re.compile(r"/via/(v2|v3)/organizations/[^/]+$")


@dataclass(kw_only=True)
class Options(SourceOptions):
    api_url: str = option("url", required=True, doc="…/via/v2|v3/organizations/{orgId}")
    token_url: str = option("url", required=True, doc="…/tokenservice/oauth2/access_token")
    client_id: Any = option("secret", required=True, doc="OAuth2 client id")
    client_secret: Any = option("secret", required=True, doc="OAuth2 client secret")
    api_key: Any = option("secret", required=True, doc="sent as x-api-key")
    root: str = option("str", "", doc="key prefix shown as the source's folder")
    page_size: int = option("int", 1000, check=lambda v: None if 1 <= v <= 1000 else "must be 1..1000",
                            doc="maxResults per listing request")
    # on a real network the probes wait on latency, so many at once pay off; where a
    # listing carries no URLs, each probe's job asks for the URL first (two round trips)
    size_concurrency: int = option("int", 64, check=lambda v: None if 1 <= v <= 256 else "must be 1..256",
                                   doc="concurrent exact-size probes per folder")

    def problem(self) -> str | None:
        if not _API_RE.search(self.api_url):
            return "api_url: must end in /via/v2/organizations/{orgId} or /via/v3/organizations/{orgId}"
        return None


_SIZE_RE = re.compile(r"^\s*([\d.]+)\s*([kmgt]?i?b|bytes?)?\s*$", re.I)
_UNIT = {"b": 1, "byte": 1, "bytes": 1, "kb": 1024, "kib": 1024, "mb": 1024**2, "mib": 1024**2,
         "gb": 1024**3, "gib": 1024**3, "tb": 1024**4, "tib": 1024**4}


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
    folders_are_places = True       # S3 prefixes
    listing_ttl = 60.0

    def __init__(self, name: str, options: Options, http):
        super().__init__(name, options, http)
        self.api_url = options.api_url
        self.version = _API_RE.search(self.api_url).group(1)
        self.auth = _Auth(http, options.token_url, options.client_id.reveal(),
                          options.client_secret.reveal(), options.api_key.reveal())
        root = (options.root or "").strip("/")
        self.root = root + "/" if root else ""
        self.page_size = options.page_size
        self.size_probes = options.size_concurrency
        self.leases = Leases(http, self._url_request("signedDownloadUrl"), self._url_answer("signedDownloadUrl"),
                             auth=self.auth, default_lifetime=URL_LIFETIME, name=name)

    @property
    def data_url(self) -> str:
        return f"{self.api_url}/mediaStorage/data"

    async def start(self) -> None:
        """Fetch a token and make one tiny listing, so that a wrong client secret or
        api_key stops the mount with a clear message instead of EIO on every folder."""
        try:
            await self.auth.headers()
            resp = await self.http.request(
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
            resp = await self.http.request("GET", f"{self.data_url}/objectKeys", params=params,
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
            self.leases.offer(key, keep_dot_segments(url.strip()))
        size_text = str(item.get("size") or "")
        hint = parse_size(size_text)
        return Entry(name, Kind.FILE, ref=key, mtime=mtime, size=None, size_hint=hint, id=key,
                     version=f"{item.get('lastModifiedTime')}|{size_text}",
                     xattrs={"alvaria.key": key, "alvaria.size": size_text,
                             "alvaria.lastModifiedTime": str(item.get("lastModifiedTime") or "")})

    # -- content
    def target(self, entry: Entry) -> Target:
        return self.leases.target(entry.ref)

    # -- writes: uploads into imports/, deletes behind allow_delete
    def upload_dir(self, ref) -> bool:
        return isinstance(ref, str) and (ref + "/").startswith(UPLOAD_PREFIX)

    def child_ref(self, dir_ref, name: str, kind: Kind) -> str:
        return dir_ref + name + ("/" if kind is Kind.DIR else "")

    async def upload(self, dir_ref, name: str, path, size: int) -> None:
        """Two steps, as the service documents: a signed upload URL for the key, then a
        PUT of the bytes with the encryption headers the URL was signed for. A 403 (an
        expired URL) gets a new URL."""
        key = self.child_ref(dir_ref, name, Kind.FILE)

        async def target(renew: bool) -> tuple[str, dict[str, str]]:
            url = await self._signed_upload_url(key)
            headers = {"x-amz-server-side-encryption": "aws:kms"}
            kms = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).get("kms-key")
            if kms:
                headers["x-amz-server-side-encryption-aws-kms-key-id"] = kms[0]
            return url, headers
        try:
            await self.http.put_file(target, path, size, name=f"{self.name}: upload of {key}")
        except HttpError as exc:
            raise SourceError(str(exc)) from None

    async def _signed_upload_url(self, key: str) -> str:
        url, headers = self._url_request("signedUploadUrl")(key)
        resp = await self.http.request("GET", url, headers=headers, auth=self.auth, expect=None,
                                       name=f"{self.name}: signedUploadUrl for {key}")
        return self._url_answer("signedUploadUrl")(key, resp)

    def _url_request(self, kind: str):
        """`objectKeys?key=KEY&keyType=signedDownloadUrl|signedUploadUrl`, for a key."""
        base = f"{self.data_url}/objectKeys?keyType={kind}&key="
        return lambda key: (base + urllib.parse.quote(key, safe=""), {})

    def _url_answer(self, kind: str):
        """The URL in an answer to `_url_request`: a bare object, or the first of an
        objectKeys list (both forms are seen)."""
        def answer(key: str, resp) -> str:
            if resp.status_code == 404:
                raise SourceError(f"{self.name}: {key} no longer exists", errno.ENOENT)
            if resp.status_code != 200:
                raise SourceError(f"{self.name}: {kind} for {key}: HTTP {resp.status_code}")
            try:
                body = resp.json()
                if isinstance(body, dict) and isinstance(body.get("objectKeys"), list):
                    body = body["objectKeys"][0]
                url = str(body[kind]).strip()
            except (ValueError, KeyError, IndexError, TypeError):
                raise SourceError(f"{self.name}: {key}: no {kind} in the answer") from None
            if not url.startswith(("http://", "https://")):
                raise SourceError(f"{self.name}: {key}: the {kind} is not an http(s) URL")
            return keep_dot_segments(url) if kind == "signedDownloadUrl" else url
        return answer

    async def delete(self, entry: Entry) -> None:
        key = entry.ref
        resp = await self.http.request(
            "DELETE", f"{self.data_url}/objectKeys", params={"key": key}, auth=self.auth,
            name=f"{self.name}: delete {key}", expect=(200, 204, 404))
        if resp.status_code == 404:
            raise SourceError(f"{self.name}: {key} does not exist any more", errno.ENOENT)
        self.leases.drop(key)


Source = AlvariaSource
