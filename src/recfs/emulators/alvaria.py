"""Alvaria Cloud Media Storage emulator (apis.md §3, seed 002).

- Token service: POST /tokenservice/oauth2/access_token, client credentials in HTTP
  Basic or in the form; tokens expire after `token_ttl` seconds (401 afterwards).
- Every API call needs `Authorization: Bearer` and `x-api-key` (403 without the key).
- GET /via/{v2|v3}/organizations/{org}/mediaStorage/data/objectKeys with keyType
  file:directory (one level, S3 delimiter semantics), file (flat), directory,
  signedDownloadUrl; v2 pages with `continuationToken`, v3 with `nextToken` and a
  string `totalItems`; `maxResults` up to 1000.
- GET …/signedDownloadUrl?key= (v3 style) answers the same as keyType=signedDownloadUrl.
- Listing items for files carry a `signedDownloadUrl` (and a blank `signedUploadUrl`),
  as the seed's example answers do; `urls_in_listing=False` leaves them out.
- Sizes are rounded strings ("5370.0 KB"); directory keys come with or without the
  trailing '/', by a fixed pattern per key.
- Scale mode (`scale=AlvariaScale(...)`, issue 20): a read-only tree of day folders
  whose keys, sizes, times and bytes are computed from (day, position) when asked
  for, so a year of 1,000 recordings a day costs the emulator nearly nothing. Its
  folders list, page, sign and serve exactly as the same objects stored would.
- Signed URLs point at /s3/{bucket}/{key} with X-Amz-Date, X-Amz-Expires and an HMAC
  signature over the method, key and dates: they really expire (403 AccessDenied XML
  "Request has expired"), HEAD is refused (403 SignatureDoesNotMatch, the method is
  signed), Range is honoured.
"""
from __future__ import annotations

import base64
import bisect
import datetime as dt
import hashlib
import hmac
import json
import urllib.parse
from dataclasses import dataclass

from .base import (Blob, BytesBlob, Emulator, PatternBlob, Request, Response, json_response,
                   new_token, range_response)
from .scale import Concat, ScaleBlob, Seq, day_start, stable_hash, time_in_day

ORG = "demo-org"
API_KEY = "alvaria-demo-api-key"
CLIENT_ID = "alvaria-demo-client"
CLIENT_SECRET = "alvaria-demo-secret"


class _Objects(dict):
    """The bucket: a dict (tests change it directly) that keeps its keys sorted on
    demand, so that a listing costs the size of its folder, not of the bucket."""

    def __init__(self):
        super().__init__()
        self._sorted: list[str] | None = None

    def __setitem__(self, key, value):
        if key not in self:
            self._sorted = None
        super().__setitem__(key, value)

    def __delitem__(self, key):
        super().__delitem__(key)
        self._sorted = None

    def pop(self, *args):
        self._sorted = None
        return super().pop(*args)

    def clear(self):
        self._sorted = None
        super().clear()

    def update(self, *args, **kw):
        self._sorted = None
        super().update(*args, **kw)

    def setdefault(self, key, default=None):
        if key not in self:
            self._sorted = None
        return super().setdefault(key, default)

    def under(self, prefix: str) -> list[str]:
        """The keys starting with `prefix`, in order."""
        if self._sorted is None:
            self._sorted = sorted(self)
        keys = self._sorted
        lo = bisect.bisect_left(keys, prefix)
        return keys[lo:bisect.bisect_left(keys, prefix + "\U0010ffff", lo)]


@dataclass
class StoredObject:
    blob: Blob
    mtime: float
    version: int = 1            # S3 gives an overwritten object a new ETag


def kb_string(size: int) -> str:
    return f"{size / 1024:.1f} KB"


def iso_ms(t: float) -> str:
    d = dt.datetime.fromtimestamp(t, dt.timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class AlvariaScale:
    """A generated, read-only tree: `{root}{YYYY-MM-DD}/call-{n:06d}.wav`, `per_day`
    recordings (n from 0) in each of `days` day folders from `start`.

    Everything is a function of (day, n): the key; the time, spread over the day and
    increasing with n (a day folder's time is that of its last recording); the size,
    between `min_size` and `max_size` bytes, exact in Content-Range and in the bytes,
    and rounded in the listing's "KB" string like any object's; the content, a
    `ScaleBlob` of the key. Nothing is stored per object."""
    root: str = "exports/scale/"
    start: dt.date = dt.date(2024, 1, 1)
    days: int = 365
    per_day: int = 1000
    min_size: int = 16_000
    max_size: int = 960_000
    seed: int = 0

    def __post_init__(self):
        if not self.root.endswith("/") or self.root.startswith("/") or "//" in self.root:
            raise ValueError("root: a key prefix ending in '/', such as 'exports/scale/'")
        if not (1 <= self.per_day <= 86_400 and self.days >= 1 and 0 <= self.min_size <= self.max_size):
            raise ValueError("per_day: 1 to 86,400; days: 1 or more; 0 <= min_size <= max_size")

    @property
    def total(self) -> int:
        return self.days * self.per_day

    def day_name(self, d: int) -> str:
        return (self.start + dt.timedelta(days=d)).isoformat()

    def day_index(self, name: str) -> int | None:
        """The day folder's index, or None when `name` is not one of the tree's days."""
        try:
            d = (dt.date.fromisoformat(name) - self.start).days
        except ValueError:
            return None
        return d if 0 <= d < self.days and self.day_name(d) == name else None

    def key(self, d: int, n: int) -> str:
        return f"{self.root}{self.day_name(d)}/call-{n:06d}.wav"

    def parse(self, key: str) -> tuple[int, int] | None:
        """(day, n) of a generated key, or None."""
        if not key.startswith(self.root):
            return None
        day, _, name = key[len(self.root):].partition("/")
        d = self.day_index(day)
        if d is None or not (name.startswith("call-") and name.endswith(".wav")):
            return None
        digits = name[5:-4]
        if not digits.isdigit() or int(digits) >= self.per_day or self.key(d, int(digits)) != key:
            return None
        return d, int(digits)

    def mtime(self, d: int, n: int) -> float:
        return day_start(self.start, d) + time_in_day(self.per_day, n, self.seed, d)

    def newest(self, d: int | None = None) -> float:
        """The newest mtime of day `d`, or of the whole tree."""
        return self.mtime(self.days - 1 if d is None else d, self.per_day - 1)

    def size(self, d: int, n: int) -> int:
        return self.min_size + stable_hash("size", self.seed, d, n) % (self.max_size - self.min_size + 1)

    def blob(self, d: int, n: int) -> ScaleBlob:
        return ScaleBlob(f"alvaria/{self.seed}/{self.key(d, n)}", self.size(d, n))

    def object(self, key: str) -> StoredObject | None:
        at = self.parse(key)
        return None if at is None else StoredObject(self.blob(*at), self.mtime(*at))

    def has_under(self, prefix: str) -> bool:
        """Whether a generated key starts with `prefix` (a folder prefix: '' or ending in '/')."""
        if not prefix.startswith(self.root):
            return self.root.startswith(prefix)
        rest = prefix[len(self.root):]
        return rest == "" or (rest.endswith("/") and self.day_index(rest[:-1]) is not None)

    def items(self, prefix: str, key_type: str) -> Seq:
        """A listing of `prefix` (inside the tree) as the emulator's `_list` makes it:
        (key, is_dir, mtime) in key order, computed per item when a page asks."""
        per = self.per_day
        if prefix == self.root:
            if key_type == "file":
                return Seq(self.total, lambda j: (self.key(*divmod(j, per)), False, 0.0))
            return Seq(self.days, lambda d: (f"{self.root}{self.day_name(d)}/", True, self.newest(d)))
        rest = prefix[len(self.root):]
        d = self.day_index(rest[:-1]) if rest.endswith("/") else None
        if d is None or key_type == "directory":
            return Seq(0, lambda j: None)
        return Seq(per, lambda n: (self.key(d, n), False, 0.0))

    def folder_pages(self, max_results: int = 1000) -> int:
        """Listing pages of the tree's folders (the root and every day), folder by folder."""
        return -(-self.days // max_results) + self.days * -(-self.per_day // max_results)


class AlvariaEmulator(Emulator):
    name = "alvaria"

    def __init__(self, *, org: str = ORG, api_key: str = API_KEY, client_id: str = CLIENT_ID,
                 client_secret: str = CLIENT_SECRET, token_ttl: float = 3600.0,
                 url_ttl: int = 3600, page_limit: int = 1000, urls_in_listing: bool = True,
                 scale: AlvariaScale | None = None, **kw):
        super().__init__(**kw)
        self.scale = scale
        self.org = org
        self.api_key = api_key
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_ttl = token_ttl
        self.url_ttl = url_ttl
        self.page_limit = page_limit
        self.urls_in_listing = urls_in_listing
        self.objects: _Objects = _Objects()
        self.tokens: dict[str, float] = {}          # token -> expiry (emulator clock)
        self._signing_key = new_token(32).encode()
        self._session_token = new_token(24)       # STS session token: one per session
        self._date = (0, "")
        self.route("POST", r"/tokenservice/oauth2/access_token", "token", self._token)
        base = r"/via/(?P<ver>v2|v3)/organizations/(?P<org>[^/]+)/mediaStorage/data"
        self.route("GET", base + r"/objectKeys", "objectKeys", self._object_keys)
        self.route("DELETE", base + r"/objectKeys", "delete", self._delete)
        self.route("GET", base + r"/signedDownloadUrl", "signedDownloadUrl", self._signed_download)
        self.route("GET", base + r"/signedUploadUrl", "signedUploadUrl", self._signed_upload)
        self.route("GET", r"/s3/(?P<bucket>[^/]+)/(?P<key>.+)", "s3", self._s3_get)
        self.route("PUT", r"/s3/(?P<bucket>[^/]+)/(?P<key>.+)", "s3_put", self._s3_put)
        self.kms_key = "08e98aa8-1c0a-4547-bf34-e6f6aa11d16a"
        self.puts: list[str] = []                  # keys stored by PUT, in order

    # -- data
    def put(self, key: str, content: bytes | Blob, mtime: float = 1_700_000_000.0) -> None:
        """Store an object; an existing one is overwritten: a new version, a new ETag."""
        if self.scale is not None and key.startswith(self.scale.root):
            raise ValueError(f"{key}: the scale tree {self.scale.root} is generated and read-only")
        blob = content if isinstance(content, Blob) else BytesBlob(content)
        old = self.objects.get(key)
        self.objects[key] = StoredObject(blob, mtime, old.version + 1 if old else 1)

    def _get(self, key: str) -> StoredObject | None:
        """A stored object, else a generated one (scale mode), else None."""
        obj = self.objects.get(key)
        if obj is None and self.scale is not None:
            obj = self.scale.object(key)
        return obj

    def _any_under(self, prefix: str) -> bool:
        return bool(self.objects.under(prefix)) or (self.scale is not None and self.scale.has_under(prefix))

    def api_url(self, version: str = "v3") -> str:
        return f"{self.url}/via/{version}/organizations/{self.org}"

    @property
    def token_url(self) -> str:
        return f"{self.url}/tokenservice/oauth2/access_token"

    # -- auth
    def _token(self, req: Request) -> Response:
        cid = secret = None
        auth = req.header("authorization") or ""
        if auth.startswith("Basic "):
            try:
                cid, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            except Exception:
                pass
        form = req.form()
        cid = cid or form.get("client_id")
        secret = secret or form.get("client_secret")
        if form.get("grant_type") != "client_credentials":
            return json_response({"error": "unsupported_grant_type"}, 400)
        if cid != self.client_id or secret != self.client_secret:
            return json_response({"error": "invalid_client"}, 401)
        token = new_token(40)
        self.tokens[token] = self.now() + self.token_ttl
        return json_response({"access_token": token, "token_type": "Bearer",
                              "expires_in": int(self.token_ttl)})

    def _check_auth(self, req: Request) -> Response | None:
        if req.header("x-api-key") != self.api_key:
            return json_response({"message": "Forbidden"}, 403)
        auth = req.header("authorization") or ""
        token = auth[7:] if auth.startswith("Bearer ") else None
        expiry = self.tokens.get(token or "")
        if expiry is None or expiry < self.now():
            return json_response({"message": "Unauthorized"}, 401)
        if req.match and req.match.group("org") != self.org:
            return json_response({"message": "Forbidden"}, 403)
        return None

    # -- listing
    def _slash(self, key: str) -> str:
        """Directory keys come with or without their trailing '/' (both happen)."""
        return key if hashlib.md5(key.encode()).digest()[0] % 2 else key.rstrip("/")

    def _item(self, key: str, is_dir: bool, mtime: float = 0.0) -> dict:
        name = key.rstrip("/").rsplit("/", 1)[-1]
        if is_dir:
            return {"kind": "objectKey", "key": self._slash(key), "keyName": name, "size": "",
                    "lastModifiedTime": iso_ms(mtime), "keyType": "directory", "childObjectKeys": []}
        obj = self._get(key)
        item = {"kind": "objectKey", "key": key, "keyName": name, "size": kb_string(obj.blob.size),
                "lastModifiedTime": iso_ms(obj.mtime), "keyType": "file"}
        if self.urls_in_listing:
            url = self.signed_url(key)
            item.update(signedUploadUrl=" ", signedDownloadUrl=url, nativeSignedDownloadUrl=url)
        return item

    def _list(self, prefix: str, key_type: str):
        """(key, is_dir, mtime) for a listing, in key order; a directory's mtime is
        its newest object's. A list, or (scale mode) a lazy sequence read by slices."""
        scale = self.scale
        if scale is not None and prefix.startswith(scale.root):
            return scale.items(prefix, key_type)
        above = scale is not None and scale.root.startswith(prefix)    # the scale tree is below
        under = self.objects.under(prefix)
        if key_type == "file":
            files = [(k, False, 0.0) for k in under]
            if above:
                cut = bisect.bisect_left(under, scale.root)
                return Concat(files[:cut], scale.items(scale.root, "file"), files[cut:])
            return files
        files, dirs = [], {}
        if above:
            d = prefix + scale.root[len(prefix):].split("/", 1)[0] + "/"
            dirs[d] = scale.newest()
        for k in under:
            rest = k[len(prefix):]
            if "/" in rest:
                d = prefix + rest.split("/", 1)[0] + "/"
                dirs[d] = max(dirs.get(d, 0.0), self.objects[k].mtime)
            elif rest and key_type == "file:directory":
                files.append((k, False, 0.0))
        items = [(d, True, t) for d, t in dirs.items()] + files
        items.sort(key=lambda it: it[0])
        return items

    def _object_keys(self, req: Request) -> Response:
        denied = self._check_auth(req)
        if denied:
            return denied
        key = req.query.get("key")
        key_type = (req.query.get("keyType") or "").strip()
        if key is None or not key_type:
            return json_response({"message": "key and keyType are required"}, 400)
        if key_type in ("signedDownloadUrl", "nativeSignedDownloadUrl"):
            return self._signed_download(req)
        if key_type in ("signedUploadUrl", "nativeSignedUploadUrl"):
            return self._signed_upload(req)
        if key_type not in ("file", "directory", "file:directory"):
            return json_response({"message": f"invalid keyType {key_type}"}, 400)
        prefix = key if (key == "" or key.endswith("/")) else key + "/"
        items = self._list(prefix, key_type)
        if not items and prefix and not self._any_under(prefix):
            return json_response({"message": "No record exists for the provided key"}, 404)
        version = req.match.group("ver")
        try:
            limit = min(self.page_limit, int(req.query.get("maxResults") or self.page_limit))
        except ValueError:
            return json_response({"message": "maxResults must be an integer"}, 400)
        token = req.query.get("continuationToken" if version == "v2" else "nextToken")
        start = 0
        if token:
            try:
                start = int(json.loads(base64.b64decode(token))["o"])
            except Exception:
                return json_response({"message": "invalid pagination token"}, 400)
        # rendered (and signed) for this page only; an item a test crafted is already raw
        page = [self._item(*it) if isinstance(it, tuple) else it for it in items[start:start + max(1, limit)]]
        body: dict = {"kind": "objectKeys", "objectKeys": page}
        if start + len(page) < len(items):
            nxt = base64.b64encode(json.dumps({"o": start + len(page), "r": new_token(6)}).encode()).decode()
            body["continuationToken" if version == "v2" else "nextToken"] = nxt
        if version == "v3":
            body["totalItems"] = str(len(items))
        return json_response(body)

    def _delete(self, req: Request) -> Response:
        denied = self._check_auth(req)
        if denied:
            return denied
        key = req.query.get("key", "")
        if self.scale is not None and self.scale.parse(key) is not None:
            return json_response({"message": "Forbidden: the scale tree is read-only"}, 403)
        if key not in self.objects:
            return json_response({"message": "No record exists for the provided key"}, 404)
        del self.objects[key]
        return json_response({"key": key, "keyHash": hashlib.md5(key.encode()).hexdigest(),
                              "status": "Delete request succeeded"})

    # -- signed URLs
    def _sign(self, method: str, key: str, date: str, expires: str) -> str:
        msg = f"{method}\n{key}\n{date}\n{expires}".encode()
        return hmac.new(self._signing_key, msg, hashlib.sha256).hexdigest()

    def _presign(self, key: str, method: str, signed_headers: str, extra: dict | None = None) -> str:
        """A URL for `method` on `key`, valid for `url_ttl` seconds from now. (Cheap: a
        listing signs one per file.)"""
        now = int(self.now())
        if self._date[0] != now:
            self._date = (now, dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
        date = self._date[1]
        expires = str(self.url_ttl)
        q = urllib.parse.urlencode(extra) + "&" if extra else ""
        q += (f"X-Amz-Security-Token={self._session_token}&X-Amz-Algorithm=AWS4-HMAC-SHA256"
              f"&X-Amz-Date={date}&X-Amz-SignedHeaders={urllib.parse.quote(signed_headers, safe='')}"
              f"&X-Amz-Expires={expires}&X-Amz-Credential=EMULATOR%2F{date[:8]}%2Fus-east-1%2Fs3%2Faws4_request"
              f"&X-Amz-Signature={self._sign(method, key, date, expires)}")
        return f"{self.url}/s3/aspect-via-data-{self.org}/{urllib.parse.quote(key)}?{q}"

    def _check_presigned(self, req: Request) -> Response | None:
        """403 unless the URL was signed for this method and key and has not expired."""
        key = req.match.group("key")
        q = req.query
        date, expires = q.get("X-Amz-Date", ""), q.get("X-Amz-Expires", "")
        if not hmac.compare_digest(q.get("X-Amz-Signature", ""), self._sign(req.method, key, date, expires)):
            return self._s3_error("SignatureDoesNotMatch", "The request signature we calculated "
                                  "does not match the signature you provided.")
        issued = dt.datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc).timestamp()
        if self.now() > issued + int(expires):
            return self._s3_error("AccessDenied", "Request has expired")
        return None

    def signed_url(self, key: str) -> str:
        return self._presign(key, "GET", "host")

    def _signed_download(self, req: Request) -> Response:
        req.route = "signedUrl"
        denied = self._check_auth(req)
        if denied:
            return denied
        key = req.query.get("key", "")
        obj = self._get(key)
        if obj is None:
            return json_response({"message": "No record exists for the provided key"}, 404)
        url = self.signed_url(key)
        return json_response({"key": key, "keyHash": hashlib.md5(key.encode()).hexdigest(),
                              "keyName": key.rsplit("/", 1)[-1], "size": kb_string(obj.blob.size),
                              "lastModifiedTime": iso_ms(obj.mtime), "keyType": "File ",
                              "signedUploadUrl": " ", "signedDownloadUrl": url,
                              "nativeSignedDownloadUrl": url})

    def signed_upload_url(self, key: str) -> str:
        return self._presign(
            key, "PUT", "host;x-amz-server-side-encryption;x-amz-server-side-encryption-aws-kms-key-id",
            {"kms-key": self.kms_key, "x-amz-storage-class": "STANDARD_IA"})

    def _signed_upload(self, req: Request) -> Response:
        req.route = "signedUploadUrl"
        denied = self._check_auth(req)
        if denied:
            return denied
        key = req.query.get("key", "")
        if not key.startswith("imports/") or key.endswith("/") or \
                (self.scale is not None and key.startswith(self.scale.root)):
            # the credentials' scopes cover uploads to imports/ only
            return json_response({"message": "Forbidden: no upload scope for this key"}, 403)
        url = self.signed_upload_url(key)
        return json_response({"key": key, "keyHash": hashlib.md5(key.encode()).hexdigest(),
                              "keyName": key.rsplit("/", 1)[-1], "size": "", "lastModifiedDate": "",
                              "keyType": "File ", "signedUploadUrl": url, "nativeSignedUploadUrl": url,
                              "signedDownloadUrl": ""})

    def _s3_put(self, req: Request) -> Response:
        denied = self._check_presigned(req)
        if denied:
            return denied
        key, q = req.match.group("key"), req.query
        # the signed headers must come with the values the URL was signed for
        sse = (req.header("x-amz-server-side-encryption") or "").strip("'\"")
        if sse != "aws:kms" or req.header("x-amz-server-side-encryption-aws-kms-key-id") != q.get("kms-key"):
            return self._s3_error("SignatureDoesNotMatch", "The signed encryption headers are missing "
                                  "or differ from the signature.")
        self.put(key, req.body, self.now())
        self.puts.append(key)
        return Response(200, {"ETag": f'"{hashlib.md5(req.body).hexdigest()}"'}, b"")

    @staticmethod
    def _s3_error(code: str, message: str, status: int = 403) -> Response:
        xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
               f"<Message>{message}</Message></Error>")
        return Response(status, {"Content-Type": "application/xml"}, xml.encode())

    def _s3_get(self, req: Request) -> Response:
        denied = self._check_presigned(req)
        if denied:
            return denied
        key = req.match.group("key")
        obj = self._get(key)
        if obj is None:
            return self._s3_error("NoSuchKey", "The specified key does not exist.", 404)
        return range_response(req, obj.blob, {"ETag": f'"{hashlib.md5(f"{key}:{obj.version}".encode()).hexdigest()}"',
                                              "Content-Type": "audio/wav" if key.endswith(".wav")
                                              else "application/octet-stream"})


def source_table(emu: AlvariaEmulator, name: str = "alvaria", version: str = "v3") -> dict:
    return {"name": name, "kind": "alvaria", "api_url": emu.api_url(version),
            "token_url": emu.token_url, "client_id": emu.client_id,
            "client_secret": emu.client_secret, "api_key": emu.api_key}


def populate_sample(emu: AlvariaEmulator, seed: int = 0, files_per_day: int = 4) -> None:
    """The folder hierarchy of the seed document with a few recordings and exports."""
    t0 = 1_760_000_000.0
    for day in range(3):
        for i in range(files_per_day):
            size = 40_000 + ((seed + day * 7 + i * 13) % 17) * 9_000
            emu.put(f"exports/cxp/recordings/2025-10-{10 + day:02d}/call-{day}{i:03d}.wav",
                    PatternBlob(seed * 1000 + day * 100 + i, size), t0 + day * 86400 + i * 60)
    emu.put("exports/cxp/utterances/utt-0001.json", b'{"utterance": "hello", "confidence": 0.93}\n', t0)
    emu.put("exports/reporting/outreach/outreach-20251010.tar", PatternBlob(seed + 77, 300_000), t0)
    emu.put("exports/compliance/audit/audit-2025-10.csv", b"time,user,action\n" * 200, t0)
    emu.put("imports/outreach/list-management/list-0001.csv", b"id,phone\n1,5550100\n", t0)
    emu.put("imports/outreach/list-management/empty.txt", b"", t0)


def demo(seed: int = 0) -> AlvariaEmulator:
    """Sample data with real, playable call recordings and their transcripts."""
    from .samples import call_wav, transcript
    emu = AlvariaEmulator()
    populate_sample(emu, seed, files_per_day=0)
    t0 = 1_760_000_000.0
    for day in range(3):
        for i in range(3):
            n = seed * 100 + day * 10 + i
            seconds = 4 + (n % 5)
            stamp = t0 + day * 86400 + i * 900
            folder = f"exports/cxp/recordings/2025-10-{10 + day:02d}"
            emu.put(f"{folder}/call-{day}{i:03d}.wav", call_wav(n, seconds), stamp)
            emu.put(f"exports/cxp/callsre/2025-10-{10 + day:02d}/call-{day}{i:03d}.json",
                    transcript(n, seconds, f"call-{day}{i:03d}"), stamp + 60)
    return emu
