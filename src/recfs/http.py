"""The one HTTP layer every provider uses: a pooled httpx client, retries with
backoff and jitter, 429 handling, token refresh, and ranged downloads that resume.

Rules kept here so that no provider has to remember them:
- A URL is logged without its query string: signed URLs carry credentials there.
- Idempotent requests are retried on transport errors, 429 and 5xx with exponential
  backoff and full jitter, honouring `Retry-After` and `x-ratelimit-reset`, within a
  total time budget; then the error propagates (the FUSE layer turns it into EIO).
- A 401 invalidates the token once and the request is repeated with a fresh one.
"""
from __future__ import annotations

import base64
import calendar
import collections
import contextlib
import contextvars
import email.utils
import functools
import heapq
import logging
import os
import random
import re
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import cachetools
import certifi
import httpx
import trio

from . import rangeget, redact

log = logging.getLogger("recfs.http")

# httpcore reads HTTP/1.1 bodies 64 KiB at a time; each read costs the same Python
# overhead whatever its size, so big ranged bodies go much faster in 1 MiB reads
try:
    import httpcore._async.http11 as _h11
    _h11.AsyncHTTP11Connection.READ_NUM_BYTES = max(_h11.AsyncHTTP11Connection.READ_NUM_BYTES, 1 << 20)
except (ImportError, AttributeError):
    pass

RETRY_STATUSES = {429, 500, 502, 503, 504}
_ORIGIN = re.compile(r"https?://[^/?#]*")    # what urlsplit gives as scheme://netloc
MAX_SIZE = (1 << 63) - 1        # what st_size (and SQLite) can hold
TRANSPORT_ERRORS = (httpx.TransportError,)


def safe_url(url: str | httpx.URL) -> str:
    u = httpx.URL(str(url))
    return f"{u.scheme}://{u.host}{':' + str(u.port) if u.port else ''}{u.path}"


_READ = httpx.ByteStream(b"")


def _unbound(resp: httpx.Response) -> httpx.Response:
    """A response read whole, freed as soon as nobody holds it. httpx binds a
    response's stream to the response (to time it at close): a reference cycle, so
    without this the response and its whole body live until the cyclic collector's
    next full pass, which the daemon makes rare (mount.py): measured through `find`
    over Alvaria, 40-odd listing pages of 1 MB alive at once, the daemon's RSS up by
    150 MB before each pass. Once read and closed, the stream serves no more."""
    resp.stream = _READ
    return resp


class HttpError(Exception):
    """A request failed for good. `status` is None for transport failures."""

    def __init__(self, message: str, status: int | None = None, body: str = ""):
        super().__init__(message)
        self.status = status
        self.body = body


class ForbiddenError(HttpError):
    pass


class RangeError(HttpError):
    """The server's answer to a ranged GET was not the range asked for."""


class SizeChangedError(RangeError):
    def __init__(self, message: str, total: int | None):
        super().__init__(message)
        self.total = total


class VersionChangedError(RangeError):
    """The object is another version than the one the bytes read so far came from."""


class Validator:
    """Which version of an object the bytes of one cache entry come from: the ETag of
    the first answer (its Last-Modified where it has none). Every later ranged GET of
    the entry sends it (`If-Match`, for a strong ETag) and compares the answer's: another
    version raises VersionChangedError before any of its bytes reach the sink. Worker
    threads check it, so it has a lock.

    V1. The first answer that names a version sets it; an answer that names none (the
        service gives no validator) is taken as it is.
    V2. Once set, a validator never changes: an entry that meets another version is
        reset by its reader, with a new Validator."""

    def __init__(self, token: str = ""):
        self._lock = threading.Lock()
        self.token = token              # 'E' + ETag, or 'M' + Last-Modified; "" until known

    def request_headers(self) -> dict[str, str]:
        token = self.token
        return {"If-Match": token[1:]} if token.startswith('E"') else {}

    def check(self, headers, name: str) -> None:
        etag, modified = headers.get("etag"), headers.get("last-modified")
        seen = f"E{etag}" if etag else f"M{modified}" if modified else ""
        if not seen:
            return
        with self._lock:
            if not self.token:
                self.token = seen
            elif seen != self.token and (seen[0] == self.token[0]):
                raise VersionChangedError(f"{name}: the object changed on the service "
                                          f"(now {seen[1:]}, was {self.token[1:]})")


@dataclass
class RetryPolicy:
    attempts: int = 6               # tries in all, the first included
    base_delay: float = 0.2         # seconds; doubled each try, with full jitter
    max_delay: float = 10.0
    budget: float = 60.0            # seconds of retrying at most, per request

    def backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_delay, self.base_delay * (2 ** attempt)))


def retry_after(resp: httpx.Response) -> float | None:
    """Seconds the server asks us to wait (Retry-After, x-ratelimit-reset), if any."""
    value = resp.headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            parsed = email.utils.parsedate_to_datetime(value)
            return max(0.0, parsed.timestamp() - time.time())
        except (ValueError, TypeError, IndexError, OverflowError):
            return None               # unreadable: the normal backoff applies
    reset = resp.headers.get("x-ratelimit-reset")
    if reset:
        try:
            n = float(reset)
        except ValueError:
            return None
        # either seconds from now or an epoch time
        return max(0.0, n - time.time()) if n > 1e9 else n
    return None


class TokenAuth:
    """Something that adds credentials to a request and can refresh them."""

    async def headers(self) -> dict[str, str]:
        raise NotImplementedError

    async def invalidate(self, headers_used: dict[str, str]) -> None:
        """The server refused `headers_used` (401): the next `headers()` must differ."""

    def cached(self) -> dict[str, str] | None:
        """The headers when they are at hand without a request; else None."""
        return None


class StaticHeaders(TokenAuth):
    def __init__(self, headers: dict[str, str]):
        self._headers = headers

    async def headers(self) -> dict[str, str]:
        return dict(self._headers)

    def cached(self) -> dict[str, str] | None:
        return dict(self._headers)


def basic_auth_header(user: str, password: str) -> str:
    # the encoded pair is as secret as the password: a service that echoes the
    # header in an error must not put it in the log
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    redact.register(encoded)
    return "Basic " + encoded


class CachedToken(TokenAuth):
    """A bearer token fetched by `fetch()`, cached until shortly before it expires.

    Refresh is single-flight: concurrent callers wait for one fetch. Subclasses
    implement `fetch() -> (token, lifetime_seconds)` and may override `render`.
    """

    refresh_margin = 60.0           # seconds before expiry at which we refresh

    def __init__(self) -> None:
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = trio.Lock()
        self.fetches = 0

    async def fetch(self) -> tuple[str, float]:
        raise NotImplementedError

    def render(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def _fresh(self) -> bool:
        margin = min(self.refresh_margin, max(0.0, (self._expires_at - self._issued_at) / 4)) \
            if self._token else 0
        return self._token is not None and time.monotonic() < self._expires_at - margin

    async def headers(self) -> dict[str, str]:
        if not self._fresh():
            async with self._lock:
                if not self._fresh():
                    token, lifetime = await self.fetch()
                    redact.register(token)
                    self.fetches += 1
                    self._token = token
                    self._issued_at = time.monotonic()
                    self._expires_at = self._issued_at + max(1.0, lifetime)
        return self.render(self._token)

    async def invalidate(self, headers_used: dict[str, str]) -> None:
        if self._token is not None and self.render(self._token) == headers_used:
            self._token = None

    def cached(self) -> dict[str, str] | None:
        return self.render(self._token) if self._fresh() else None


class AuthError(HttpError):
    """The credentials were refused (token service or Basic auth)."""


class OAuthClientCredentials(CachedToken):
    """OAuth2 client-credentials grant; the client id and secret go in HTTP Basic.
    The secret may be a config `Secret`: it is revealed only to build the request."""

    def __init__(self, http: "Http", token_url: str, client_id: str, client_secret: Any,
                 scope: str | None = None, what: str = "token"):
        super().__init__()
        self.http = http
        self.token_url = token_url
        self.client_id = client_id
        self.client_secret = client_secret
        self.scope = scope
        self.what = what

    async def fetch(self) -> tuple[str, float]:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        secret = self.client_secret.reveal() if hasattr(self.client_secret, "reveal") \
            else str(self.client_secret)
        resp = await self.http.request(
            "POST", self.token_url, data=form, name=self.what,
            headers={"Authorization": basic_auth_header(self.client_id, secret),
                     "Accept": "application/json"},
            expect=None)
        if resp.status_code in (400, 401, 403):
            raise AuthError(f"{self.what}: the token service at {safe_url(self.token_url)} refused "
                            f"the client credentials{' or scope' if self.scope else ''} "
                            f"(HTTP {resp.status_code}{describe_error_body(resp)})", resp.status_code)
        if resp.status_code != 200:
            raise HttpError(f"{self.what}: token service answered HTTP {resp.status_code}"
                            f"{describe_error_body(resp)}", resp.status_code)
        try:
            body = resp.json()
            token = body["access_token"]
            lifetime = float(body.get("expires_in") or 3600)   # a number or a string ("1799")
        except (ValueError, KeyError, TypeError) as exc:
            raise AuthError(f"{self.what}: malformed token response ({type(exc).__name__})") from None
        return str(token), lifetime


THROTTLE_PATIENCE = 600.0       # seconds a request keeps waiting on a service that throttles it
BACKGROUND: contextvars.ContextVar[bool] = contextvars.ContextVar("recfs_background", default=False)


@contextlib.contextmanager
def background():
    """Requests made in this block (and in tasks it starts) are guesses nobody waits
    for yet (sizes learnt ahead, files fetched ahead): under a rate limit they wait
    until the requests somebody waits for have gone."""
    token = BACKGROUND.set(True)
    try:
        yield
    finally:
        BACKGROUND.reset(token)


class RateLimiter:
    """How fast one service may be asked, learnt from its answers: none at first; a 429
    halves the rate (from what was being sent, a burst measured over its own span; at
    most once a second) and honours
    Retry-After / x-ratelimit-reset by pausing every request; each clean answer adds a
    little (additive increase), and a limit that has grown far past need is dropped.
    Requests wait their turn here instead of spending their retries; those somebody
    waits for go first (`background()` marks the others)."""

    MIN_RATE = 0.5              # requests a second, at the lowest
    FREE_RATE = 1000.0          # a limit grown past this is no limit at all
    BURST_SPAN = 0.1            # seconds: the shortest span a sending rate is measured over

    def __init__(self, origin: str):
        self.origin = origin
        self.rate: float | None = None
        self.throttled = 0
        self._next = 0.0                # when the next request may start (trio time)
        self._paused_until = 0.0
        self._decreased_at = float("-inf")
        self._sent: collections.deque[float] = collections.deque()   # the last second's request starts
        self._queue: list[tuple[int, int, trio.Event]] = []
        self._seq = 0
        self._pumping = False

    @property
    def waiting(self) -> int:
        return len(self._queue)

    async def turn(self) -> None:
        now = trio.current_time()
        if self.rate is None and now >= self._paused_until and not self._queue:
            self._note(now)
            return
        self._seq += 1
        ready = trio.Event()
        heapq.heappush(self._queue, (1 if BACKGROUND.get() else 0, self._seq, ready))
        if not self._pumping:
            self._pumping = True
            trio.lowlevel.spawn_system_task(self._pump, name=f"recfs rate {self.origin}")
        await ready.wait()

    async def _pump(self) -> None:
        try:
            while self._queue:
                now = trio.current_time()
                start = max(self._next, self._paused_until)
                if start > now:
                    await trio.sleep_until(start)
                    continue
                heapq.heappop(self._queue)[2].set()
                self._note(now)
                self._next = max(now, self._next) + (1.0 / self.rate if self.rate else 0.0)
        finally:
            self._pumping = False

    def _note(self, now: float) -> None:
        sent = self._sent
        sent.append(now)
        while sent[0] < now - 1.0:      # oldest first: each start is dropped once
            sent.popleft()

    def answered(self, status: int, asked_wait: float | None) -> None:
        now = trio.current_time()
        if status == 429:
            self.throttled += 1
            if asked_wait:
                self._paused_until = max(self._paused_until, now + asked_wait)
            if now - self._decreased_at >= 1.0:
                base = self.rate if self.rate is not None else self._sending_rate(now)
                self.rate = max(self.MIN_RATE, base / 2)
                self._decreased_at = now
                log.info("%s: the service asks to slow down (HTTP 429): %.1f requests a second",
                         self.origin, self.rate)
        elif self.rate is not None:
            self.rate += 1.0 / self.rate
            if self.rate > self.FREE_RATE:
                self.rate = None

    def _sending_rate(self, now: float) -> float:
        """The rate requests went out at over the last second: a burst is measured over
        its own span (at least BURST_SPAN), so a few requests sent at once do not read as
        a slow client whose halved rate would take minutes to grow back."""
        recent = [t for t in self._sent if t >= now - 1.0]
        if not recent:
            return 1.0
        return max(len(recent) / max(now - recent[0], self.BURST_SPAN), 1.0)

    def status(self) -> dict:
        return {"rate": None if self.rate is None else round(self.rate, 2),
                "waiting": len(self._queue), "throttled": self.throttled}


class _Tries:
    """The retries of one request: every kind of request (API calls, content ranges,
    downloads, uploads) waits by this one policy, so none has a loop of its own. A 429
    is no failure: the service's rate limiter slows down and the request waits its
    turn, without spending an attempt, for up to THROTTLE_PATIENCE seconds."""

    def __init__(self, http: "Http", name: str):
        self.http = http
        self.name = name
        self.attempt = 0
        self.started = time.monotonic()
        self.throttles = 0
        self.throttled_since: float | None = None

    async def turn(self, url: str) -> RateLimiter:
        """Wait until the service may be asked again; its limiter."""
        limiter = self.http.limiter(url)
        await limiter.turn()
        return limiter

    async def wait(self, why: str, resp: httpx.Response | None = None) -> bool:
        """Wait before the next try; False when the attempts or the time budget are spent."""
        policy = self.http.retry
        if resp is not None and resp.status_code == 429:
            return await self._throttled(why, resp)
        if self.attempt + 1 >= policy.attempts:
            return False
        delay = policy.backoff(self.attempt)
        if resp is not None:
            asked = retry_after(resp)
            if asked is not None:
                delay = max(delay, min(asked, policy.max_delay * 3))
        if time.monotonic() - self.started + delay > policy.budget:
            return False
        self.http.retries += 1
        self.attempt += 1
        log.debug("%s: %s; retrying in %.2fs", self.name, why, delay)
        await trio.sleep(delay)
        return True

    async def _throttled(self, why: str, resp: httpx.Response) -> bool:
        now = time.monotonic()
        if self.throttled_since is None:
            self.throttled_since = now
        elif now - self.throttled_since > THROTTLE_PATIENCE:
            return False
        policy = self.http.retry
        delay = policy.backoff(min(self.throttles, 8))
        self.throttles += 1
        asked = retry_after(resp)
        if asked is not None:
            delay = max(delay, min(asked, THROTTLE_PATIENCE))
        self.http.retries += 1
        log.debug("%s: %s; retrying in %.2fs", self.name, why, delay)
        await trio.sleep(delay)
        return True


class Http:
    """One pooled client for the whole mount, plus the statistics `recfs status` shows."""

    def __init__(self, *, max_connections: int = 64, connect_timeout: float = 10.0,
                 read_timeout: float = 30.0, retry: RetryPolicy | None = None,
                 ca_bundle: str | None = None, threaded_content: bool = False):
        self.retry = retry or RetryPolicy()
        # verification cannot be turned off; httpx and rangeget share one context, so
        # they trust the same CAs (httpx's own default is certifi's bundle)
        tls = ssl.create_default_context(cafile=ca_bundle or certifi.where())
        # content bodies received in worker threads, small answers (size probes, signed
        # URLs) by trio tasks (see rangeget); off, they go through httpx like every
        # other request
        self.ranges = rangeget.RangeGetter(connect_timeout=connect_timeout,
                                           read_timeout=read_timeout, tls=tls) \
            if threaded_content else None
        self.async_ranges = rangeget.AsyncRangeGetter(
            connect_timeout=connect_timeout, read_timeout=read_timeout, tls=tls) \
            if threaded_content else None
        self._connections = trio.CapacityLimiter(max_connections)    # rangeget requests in flight
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=connect_timeout, read=read_timeout,
                                  write=read_timeout, pool=None),
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_connections),
            verify=tls, follow_redirects=False, trust_env=False)
        self.requests = 0
        self.errors = 0
        self.retries = 0
        self.bytes_received = 0
        self._limiters: dict[str, RateLimiter] = {}
        self.batched_requests = 0       # those of `requests` made together by get_heads

    def limiter(self, url: str) -> RateLimiter:
        """The rate limiter of the service at `url` (one per origin)."""
        found = _ORIGIN.match(url)
        if found:
            origin = found.group(0)
        else:
            parts = urllib.parse.urlsplit(url)
            origin = f"{parts.scheme}://{parts.netloc}"
        limiter = self._limiters.get(origin)
        if limiter is None:
            limiter = self._limiters[origin] = RateLimiter(origin)
        return limiter

    def limits(self) -> dict[str, dict]:
        """Each service's limiter, for `recfs status`."""
        return {origin: lim.status() for origin, lim in self._limiters.items()}

    async def aclose(self) -> None:
        if self.ranges is not None:
            self.ranges.close()
        if self.async_ranges is not None:
            await self.async_ranges.aclose()
        await self.client.aclose()

    async def request(self, method: str, url: str, *, name: str = "request",
                      auth: TokenAuth | None = None, headers: dict[str, str] | None = None,
                      params: Any = None, json: Any = None, data: Any = None,
                      content: bytes | None = None, small_answer: bool = False,
                      idempotent: bool = True, expect: tuple[int, ...] | None = (200,)) -> httpx.Response:
        """Send a request with retries and read the whole body.

        With `expect`, any other final status raises HttpError (ForbiddenError for 403)
        naming `name`, the status and the URL without its query. `small_answer` marks
        a GET whose answer is small (a signed URL, a one-byte probe): with
        threaded_content it goes through rangeget's task client, which costs the trio
        thread a fraction of an httpx exchange (a copy makes thousands).
        """
        small_get = small_answer and self.async_ranges is not None and method == "GET" \
            and json is None and data is None and content is None
        tries = _Tries(self, name)
        reauthed = False
        while True:
            h = dict(headers or {})
            used: dict[str, str] = {}
            if auth is not None:
                used = await auth.headers()
                h.update(used)
            limiter = await tries.turn(url)
            self.requests += 1
            try:
                resp = None
                if small_get:
                    resp = await self._small_get(url, h, params)
                if resp is None:
                    resp = _unbound(await self.client.request(method, url, headers=h, params=params,
                                                              json=json, data=data, content=content))
            except TRANSPORT_ERRORS as exc:
                why = f"{type(exc).__name__}"
                if (idempotent or isinstance(exc, httpx.ConnectError)) and await tries.wait(why):
                    continue
                self.errors += 1
                raise HttpError(f"{name}: {why} talking to {safe_url(url)}") from None
            self.bytes_received += len(resp.content)
            limiter.answered(resp.status_code, retry_after(resp) if resp.status_code == 429 else None)
            if resp.status_code == 401 and auth is not None and not reauthed:
                reauthed = True
                await auth.invalidate(used)
                continue
            if resp.status_code in RETRY_STATUSES and (idempotent or resp.status_code in (429, 503)):
                if await tries.wait(f"HTTP {resp.status_code}", resp):
                    continue
            if expect is not None and resp.status_code not in expect:
                self.errors += 1
                cls = ForbiddenError if resp.status_code == 403 else HttpError
                raise cls(f"{name}: HTTP {resp.status_code} from {safe_url(url)}"
                          f"{describe_error_body(resp)}", resp.status_code, resp.text[:2000])
            return resp

    async def get_range(self, url_for: Callable[[bool], Awaitable[tuple[str, dict[str, str]]]],
                        start: int, end: int, sink: Callable[[int, Any], None], *,
                        total: int | None, name: str = "content",
                        validator: Validator | None = None) -> int | None:
        """Stream bytes [start, end) of a file into `sink`, resuming after failures.

        `sink(offset, data)` may be called from a worker thread (see rangeget): it must
        only store the bytes. Calls come in file order, without gaps, from `start` on.
        `url_for(renew)` gives the URL and headers to use; it is called with True after
        a 401 or 403 (an expired token or signed URL) and the same range is retried:
        once, and again only after bytes arrived (a long read may outlive several
        tokens; a denial that persists is reported).
        The answer must be the range asked for: a 206 whose Content-Range matches, or
        a 200 with the whole file (the range is then cut out of it). A total different
        from `total` raises SizeChangedError, and a version other than `validator`'s
        VersionChangedError: the object changed under us.
        With `total` None the size is learnt from the first answer (Content-Range, or
        Content-Length of a 200): `end` may then lie past the end of the file, and the
        bytes up to the file's end are delivered. Returns the size when known.
        """
        tries = _Tries(self, name)
        renewed = False
        pos = start
        learnt = total
        while pos < end:
            url, headers = await url_for(False)
            h = dict(headers)
            h["Range"] = f"bytes={pos}-{end - 1}"
            # bytes as stored: a compressed body would not be the range asked for
            h.setdefault("Accept-Encoding", "identity")
            if validator is not None:
                h.update(validator.request_headers())
            limiter = await tries.turn(url)
            self.requests += 1
            plan = functools.partial(_content_plan, pos=pos, end=end, total=total, name=name,
                                     validator=validator)
            out = await self._get_once(url, h, pos, plan, sink)
            self.bytes_received += out.received
            if out.problem is None:
                limiter.answered(out.status, retry_after(out.response()) if out.status == 429 else None)
            resp_for_retry = None
            problem = out.problem
            if problem is None:
                status = out.status
                if status in (401, 403) and not renewed:
                    renewed = True
                    await url_for(True)
                    continue
                if status in RETRY_STATUSES:
                    problem, resp_for_retry = f"HTTP {status}", out.response()
                elif status in (200, 206):
                    if learnt is None:
                        learnt = _answer_total(status, out.headers)
                        if learnt is None and status == 200 and out.pos < out.stop:
                            # no length given (chunked, or ended by closing): a body
                            # that ended without a transport error is the whole file
                            learnt = out.pos
                        if learnt is not None:
                            end = min(end, learnt)
                    if out.pos > pos:
                        renewed = False     # progress: a later 401 may renew again
                    pos = out.pos
                    if pos >= min(out.stop, end):
                        continue
                    problem = "short body"
                elif status == 416:
                    crange = out.headers.get("content-range")
                    if total is None and pos == 0:      # nothing to read: an empty object
                        return parse_content_range(crange)[2] or 0
                    raise SizeChangedError(f"{name}: range {pos}-{end - 1} not satisfiable "
                                           f"({crange})", parse_content_range(crange)[2])
                else:
                    self.errors += 1
                    cls = ForbiddenError if status == 403 else HttpError
                    raise cls(f"{name}: HTTP {status} from {safe_url(url)}", status,
                              out.body[:2000].decode("utf-8", "replace"))
            else:
                if out.pos > pos:
                    renewed = False
                pos = out.pos
            if not await tries.wait(problem, resp_for_retry):
                self.errors += 1
                raise HttpError(f"{name}: {problem} reading {safe_url(url)} at byte {pos}; giving up")
        return learnt

    async def download(self, target: "Target", dest: Path, *, name: str = "download") -> int:
        """Stream a whole body of unknown size (a zip package) into the file `dest`, with
        `get_range`'s retries and resumption; return its size."""
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            def sink(offset: int, data) -> None:
                view = memoryview(data)
                while view:
                    n = os.pwrite(fd, view, offset)
                    offset += n
                    view = view[n:]
            size = await self.get_range(target, 0, MAX_SIZE, sink, total=None, name=name)
        finally:
            os.close(fd)
        return size or 0

    async def put_file(self, target: "Target", path: Path, size: int, *, name: str = "upload") -> None:
        """PUT the local file `path` (an upload). Sending the same bytes to the same key
        again is harmless, so transport errors, 429 and 5xx are retried like any other
        request; a 401 or 403 (an expired token or signed URL) renews the target once."""
        tries = _Tries(self, name)
        renewed = False
        while True:
            url, headers = await target(renewed)
            limiter = await tries.turn(url)
            self.requests += 1
            resp = None
            try:
                resp = await self.client.put(url, content=_file_chunks(path),
                                             headers={**headers, "Content-Length": str(size)})
                why = f"HTTP {resp.status_code}"
            except TRANSPORT_ERRORS as exc:
                why = type(exc).__name__
            if resp is not None:
                limiter.answered(resp.status_code, retry_after(resp) if resp.status_code == 429 else None)
                if resp.status_code in (200, 201, 204):
                    return
                if resp.status_code in (401, 403) and not renewed:
                    renewed = True
                    continue
                if resp.status_code not in RETRY_STATUSES:
                    self.errors += 1
                    cls = ForbiddenError if resp.status_code == 403 else HttpError
                    raise cls(f"{name}: HTTP {resp.status_code} from {safe_url(url)}"
                              f"{describe_error_body(resp)}", resp.status_code, resp.text[:2000])
            if not await tries.wait(why, resp):
                self.errors += 1
                raise HttpError(f"{name}: {why} sending to {safe_url(url)}; giving up")

    async def get_heads(self, jobs: list[tuple["tuple[str, dict[str, str]] | Pending",
                                               Callable[[int, Any], None], int]],
                        *, name: str = "content",
                        limiter: trio.CapacityLimiter | None = None) -> list[int | None]:
        """The first bytes of several files at once (size probes), without retries: for
        each job (where, sink, end[, validator]), bytes [0, end) into the sink, and the
        file's size when its answer came whole and clean, else None (the caller then
        takes the usual way, with retries). `where` is (url, headers), or a `Pending`
        target whose URL is asked for first, by the same job, so that a file whose URL
        is not known yet costs no round of its own. Each job is a task that holds one of
        `limiter`'s tokens (without one, a connection token) and makes its requests over
        `async_ranges`, each on its turn at its service's rate limiter. A validator,
        where given, learns the version the bytes are of. Without threaded content they
        go through httpx."""
        if not jobs:
            return []
        if self.async_ranges is None:
            return await self._heads_httpx(jobs, name, limiter)
        tokens = limiter if limiter is not None else self._connections
        made = [_Made() for _ in jobs]

        async def get(job: _Made, url: str, headers: dict[str, str], plan: rangeget.Plan,
                      sink) -> rangeget.Outcome:
            out = await self.async_ranges.get(url, headers, 0, plan, sink)
            job.requests.append((url, out))
            self.requests += 1
            self.batched_requests += 1
            self.bytes_received += out.received
            if out.problem is None:
                self.limiter(url).answered(out.status, retry_after(out.response())
                                           if out.status == 429 else None)
            return out

        async def run(i: int, borrower: object) -> None:
            where, sink, end, *validator = jobs[i]
            job = made[i]
            try:
                if isinstance(where, Pending):
                    asked = await get(job, where.url, where.headers, _not_content, _no_sink)
                    if asked.problem is not None or asked.truncated:
                        return      # `read` says what a whole answer that is no URL means
                    url = job.found = where.read(asked.response())
                    where.keep(url)
                    headers = where.content_headers
                    await self.limiter(url).turn()
                else:
                    url, headers = where
                h = dict(headers)
                h["Range"] = f"bytes=0-{end - 1}"
                h.setdefault("Accept-Encoding", "identity")
                plan = functools.partial(_content_plan, pos=0, end=end, total=None, name=name,
                                         validator=validator[0] if validator else None)
                await get(job, url, h, plan, sink)
            except Exception as exc:        # Unsupported, a wrong range, the sink's, no URL
                job.error = exc
            finally:
                tokens.release_on_behalf_of(borrower)

        async with trio.open_nursery() as nursery:
            for i, (where, *_) in enumerate(jobs):
                await self.limiter(where.url if isinstance(where, Pending) else where[0]).turn()
                borrower = object()
                try:        # a free token is taken without a trip through the scheduler
                    tokens.acquire_on_behalf_of_nowait(borrower)
                except trio.WouldBlock:
                    await tokens.acquire_on_behalf_of(borrower)
                nursery.start_soon(run, i, borrower)
        sizes: list[int | None] = []
        for (where, _, end, *_), job in zip(jobs, made):
            size, why = None, None
            if job.error is not None:
                why = f"{type(job.error).__name__}: {job.error}"
            elif job.requests:
                url, out = job.requests[-1]
                if out.problem is None and out.status in (200, 206) and \
                        (job.found is not None or not isinstance(where, Pending)):
                    total = _answer_total(out.status, out.headers)
                    if total is not None and out.pos >= min(out.stop, end, total):
                        size = total
                why = out.problem or f"HTTP {out.status}"
            if size is None:
                first = where.url if isinstance(where, Pending) else where[0]
                log.debug("%s: %s from %s; left to the usual way", name, why,
                          safe_url(job.requests[-1][0] if job.requests else first))
            sizes.append(size)
        return sizes

    async def _heads_httpx(self, jobs, name: str,
                           limiter: trio.CapacityLimiter | None) -> list[int | None]:
        sizes: list[int | None] = [None] * len(jobs)

        async def one(i: int) -> None:
            where, sink, end, *validator = jobs[i]
            async with limiter or trio.CapacityLimiter(1):
                try:
                    if isinstance(where, Pending):
                        resp = await self.request("GET", where.url, headers=where.headers,
                                                  expect=(200,), name=name)
                        found = where.read(resp)
                        where.keep(found)
                        where = found, where.content_headers

                    async def target(renew: bool, where=where):
                        return where
                    sizes[i] = await self.get_range(target, 0, end, sink, total=None, name=name,
                                                    validator=validator[0] if validator else None)
                except Exception as exc:        # no URL, or an answer not whole and clean
                    log.debug("%s: %s; left to the usual way", name, exc)

        async with trio.open_nursery() as nursery:
            for i in range(len(jobs)):
                nursery.start_soon(one, i)
        return sizes

    async def _get_once(self, url: str, headers: dict[str, str], pos: int,
                        plan: rangeget.Plan, sink) -> rangeget.Outcome:
        if self.ranges is not None:
            out = await self._in_thread(url, headers, pos, plan, sink)
            if out is not None:
                return out
        return await self._get_once_httpx(url, headers, pos, plan, sink)

    async def _in_thread(self, url: str, headers: dict[str, str], pos: int,
                         plan: rangeget.Plan, sink) -> rangeget.Outcome | None:
        """One rangeget GET in a worker thread; None when it cannot read the answer."""
        ticket = rangeget.Ticket()
        try:
            return await trio.to_thread.run_sync(
                self.ranges.get, ticket, url, headers, pos, plan, sink,
                abandon_on_cancel=True, limiter=self._connections)
        except rangeget.Unsupported as exc:
            log.debug("%s: %s; reading it with httpx", safe_url(url), exc)
            return None
        except trio.Cancelled:
            # the thread may be inside the sink: stop it and let it finish before
            # whoever owns the sink's file goes on
            ticket.abort()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(ticket.finished.wait, 5.0)
            raise

    async def _small_get(self, url: str, headers: dict[str, str], params: Any) -> httpx.Response | None:
        """A small GET through rangeget's task client; None when httpx has to read it."""
        if params:
            # what httpx would send, without building an httpx.Request
            url += ("&" if "?" in url else "?") + urllib.parse.urlencode(params)
        try:
            async with self._connections:
                out = await self.async_ranges.get(url, headers, 0, _not_content, _no_sink)
        except rangeget.Unsupported as exc:
            log.debug("%s: %s; reading it with httpx", safe_url(url), exc)
            return None
        if out.truncated:
            return None
        if out.problem is not None:
            raise httpx.TransportError(out.problem)
        return httpx.Response(out.status, headers=out.headers, content=out.body)

    async def _get_once_httpx(self, url: str, headers: dict[str, str], pos: int,
                              plan: rangeget.Plan, sink) -> rangeget.Outcome:
        out = rangeget.Outcome(pos=pos)
        try:
            async with self.client.stream("GET", url, headers=headers) as resp:
                out.status, out.headers = resp.status_code, resp.headers
                wanted = plan(resp.status_code, resp.headers)
                if wanted is None:
                    body = await resp.aread()
                    out.received += len(body)
                    out.body = body[:rangeget.SMALL_BODY_LIMIT]
                    return out
                out.stop = wanted[1]
                await self._drain(resp, wanted[0], out, sink)
        except TRANSPORT_ERRORS as exc:
            out.problem = type(exc).__name__
        return out

    async def _drain(self, resp: httpx.Response, stream_pos: int, out: rangeget.Outcome,
                     sink: Callable[[int, Any], None]) -> None:
        """Copy the body, which starts at file offset `stream_pos`, into the sink from
        `out.pos` up to `out.stop`, advancing `out.pos`. Transport errors propagate."""
        try:
            async for chunk in resp.aiter_raw():
                out.received += len(chunk)
                cstart, cend = stream_pos, stream_pos + len(chunk)
                stream_pos = cend
                if cend <= out.pos:
                    continue
                lo = out.pos - cstart
                hi = min(len(chunk), out.stop - cstart)
                if hi > lo:
                    sink(out.pos, chunk[lo:hi] if (lo or hi < len(chunk)) else chunk)
                    out.pos += hi - lo
                if out.pos >= out.stop and resp.status_code != 206:
                    break       # a 200 that ignored Range: the rest is not wanted
                # a 206 is read to its end even when done: the connection then goes
                # back to the pool instead of being closed
        except TRANSPORT_ERRORS:
            if out.pos < out.stop:
                raise


# -- targets: where a file's bytes are, as `get_range`, `download` and `put_file` take it

class Target:
    """`await target(renew) -> (url, headers)`: the URL and headers to send (renew: the
    last ones got a 401 or 403). `ready()` gives them when that needs no request (a
    fresh token or lease), else None; `pending()` then the request that would. Any such callable will do where a Target is
    taken; this class adds `ready()`."""

    async def __call__(self, renew: bool) -> tuple[str, dict[str, str]]:
        raise NotImplementedError

    def ready(self) -> tuple[str, dict[str, str]] | None:
        return None

    def pending(self) -> "Pending | None":
        """When `ready()` is None: the one request that would make it ready, if the
        target can say it without a request of its own (a lease, with the token held)."""
        return None


@dataclass(slots=True)
class Pending:
    """A target's URL that is still to be asked for, as the one request that hands it
    out: `url` and `headers` (credentials included) ask for it, `read(response)` finds
    the content URL in the answer or raises, `keep(url)` is told what was found,
    `content_headers` go with the content GET. Batched size probes (`Http.get_heads`) make the request
    and the probe one after the other in one job."""
    url: str
    headers: dict[str, str]
    read: Callable[[httpx.Response], str]
    keep: Callable[[str], None]
    content_headers: dict[str, str]


@dataclass(slots=True)
class _Made:
    """What one job of `get_heads` did: its requests and their outcomes, in order, the
    URL a Pending target's request found, or the exception that ended it."""
    requests: list[tuple[str, rangeget.Outcome]] = field(default_factory=list)
    found: str | None = None
    error: Exception | None = None


class AuthTarget(Target):
    """A URL reached with the service's own credentials; a renewal drops the token that
    was refused, so the next try gets a fresh one."""

    def __init__(self, auth: TokenAuth, url: str, headers: dict[str, str] | None = None):
        self.auth = auth
        self.url = url
        self.headers = headers or {}
        self._used: dict[str, str] = {}

    async def __call__(self, renew: bool) -> tuple[str, dict[str, str]]:
        if renew:
            await self.auth.invalidate(dict(self._used))
        self._used = await self.auth.headers()
        return self.url, {**self.headers, **self._used}

    def ready(self) -> tuple[str, dict[str, str]] | None:
        held = self.auth.cached()
        return None if held is None else (self.url, {**self.headers, **held})


_SIGNED_EXPIRES = re.compile(r"[?&]X-(?:Amz|Goog)-Expires=(\d+)")
_SIGNED_DATE = re.compile(r"[?&]X-(?:Amz|Goog)-Date=(\d{8}T\d{6}Z)(?:&|$)")


def signed_url_lifetime(url: str, default: float) -> float:
    """Seconds a presigned URL is valid for (X-Amz-Expires or X-Goog-Expires)."""
    m = _SIGNED_EXPIRES.search(url)
    return float(m.group(1)) if m else default


def signed_url_time_left(url: str, now: float, default: float) -> float:
    """Seconds until a presigned URL expires: from its signing date when it names one
    (a URL handed out with a listing may be minutes old), else its whole lifetime."""
    lifetime = signed_url_lifetime(url, default)
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


class Leases:
    """Presigned URLs, one per key, each kept until shortly before it expires (a
    quarter of its lifetime, at most five minutes, before). `request(key)` is the API
    call that hands one out (its URL and headers, sent with `auth`), `answer(key,
    response)` reads the URL out of its answer. Concurrent askers for one key wait for
    a single request; `pending(key)` hands the request to a batch that makes it (size
    probes); a URL that came with a listing is `offer`ed and saves the request.
    Bounded: listings offer one per file."""

    def __init__(self, http: "Http", request: Callable[[str], tuple[str, dict[str, str]]],
                 answer: Callable[[str, httpx.Response], str], *, auth: TokenAuth,
                 default_lifetime: float, name: str, kept: int = 20_000,
                 headers: dict[str, str] | None = None):
        self.http = http
        self._request = request
        self._answer = answer
        self.auth = auth
        self.default_lifetime = default_lifetime
        self.name = name
        self.headers = headers or {}            # sent with the presigned URL
        self._urls: cachetools.LRUCache[str, tuple[str, float]] = cachetools.LRUCache(kept)
        self._locks: dict[str, trio.Lock] = {}
        self.asked = 0

    def offer(self, key: str, url: str) -> None:
        left = signed_url_time_left(url, time.time(), self.default_lifetime)
        margin = min(300.0, signed_url_lifetime(url, self.default_lifetime) / 4)
        self._urls[key] = (url, time.monotonic() + left - margin)

    def drop(self, key: str) -> None:
        self._urls.pop(key, None)

    def fresh(self, key: str) -> str | None:
        lease = self._urls.get(key)
        return lease[0] if lease and time.monotonic() < lease[1] else None

    async def url(self, key: str, renew: bool = False) -> str:
        held = self._urls.get(key)
        if held and not renew and time.monotonic() < held[1]:
            return held[0]
        lock = self._locks.setdefault(key, trio.Lock())
        try:
            async with lock:
                now_held = self._urls.get(key)
                if now_held and now_held is not held and time.monotonic() < now_held[1]:
                    return now_held[0]          # another task renewed it meanwhile
                url, headers = self._request(key)
                resp = await self.http.request("GET", url, headers=headers, auth=self.auth,
                                               expect=None, small_answer=True,
                                               name=f"{self.name}: signed URL for {key}")
                found = self._answer(key, resp)
                self._found(key, found)
                return found
        finally:
            stats = lock.statistics()
            if not stats.locked and not stats.tasks_waiting and self._locks.get(key) is lock:
                del self._locks[key]

    def pending(self, key: str) -> Pending | None:
        """The request for `key`'s URL, to be made by whoever batches it (size probes:
        `Http.get_heads`); None while the token is not held (the usual way gets one).
        What it finds is kept as if `url` had asked."""
        auth = self.auth.cached()
        if auth is None:
            return None
        url, headers = self._request(key)
        return Pending(url, {**headers, **auth}, functools.partial(self._answer, key),
                       functools.partial(self._found, key), dict(self.headers))

    def _found(self, key: str, url: str) -> None:
        self.asked += 1
        self.offer(key, url)

    def target(self, key: str) -> "LeaseTarget":
        return LeaseTarget(self, key)


class LeaseTarget(Target):
    def __init__(self, leases: Leases, key: str):
        self.leases = leases
        self.key = key

    async def __call__(self, renew: bool) -> tuple[str, dict[str, str]]:
        return await self.leases.url(self.key, renew), dict(self.leases.headers)

    def ready(self) -> tuple[str, dict[str, str]] | None:
        url = self.leases.fresh(self.key)
        return None if url is None else (url, dict(self.leases.headers))

    def pending(self) -> Pending | None:
        return self.leases.pending(self.key)


async def _file_chunks(path: Path, chunk: int = 1 << 20):
    with open(path, "rb") as f:
        while True:
            data = f.read(chunk)
            if not data:
                return
            yield data


def _not_content(status: int, headers: httpx.Headers) -> None:
    return None


def _no_sink(pos: int, data: Any) -> None:
    raise AssertionError("a small GET has no content")


def _content_plan(status: int, headers: httpx.Headers, *, pos: int, end: int,
                  total: int | None, name: str, validator: Validator | None = None
                  ) -> tuple[int, int] | None:
    """For a content answer to `Range: bytes=pos-(end-1)`: the file offset its body
    starts at and the offset to stop at; None for any other answer. Raises before any
    byte is taken when the answer is not of the object asked for (another size, another
    version, other bytes)."""
    if status == 412 and validator is not None:
        raise VersionChangedError(f"{name}: the object changed on the service (HTTP 412 to If-Match)")
    if status in (200, 206) and validator is not None:
        validator.check(headers, name)
    if status == 206:
        first, last, size = parse_content_range(headers.get("content-range"))
        if total is not None and size is not None and size != total:
            raise SizeChangedError(f"{name}: the object is now {size} bytes, not {total}", size)
        if first != pos or last is None or last + 1 > end:
            raise RangeError(f"{name}: asked for bytes {pos}-{end - 1}, "
                             f"got {headers.get('content-range')!r}")
        return first, last + 1
    if status == 200:
        length = _answer_total(status, headers)
        if total is not None and length is not None and length != total:
            raise SizeChangedError(f"{name}: the object is now {length} bytes, not {total}", length)
        # the server ignored Range: skip to pos and keep what we asked for
        return 0, end
    return None


def _answer_total(status: int, headers: httpx.Headers) -> int | None:
    """The object's size as a 206 (Content-Range) or a 200 (Content-Length) states it."""
    if status == 206:
        return parse_content_range(headers.get("content-range"))[2]
    length = (headers.get("content-length") or "").strip()
    return int(length) if length.isdigit() and int(length) <= MAX_SIZE else None


def parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """'bytes 0-0/1234' -> (0, 0, 1234); 'bytes */1234' -> (None, None, 1234)."""
    if not value:
        return None, None, None
    try:
        unit, _, rest = value.strip().partition(" ")
        span, _, total = rest.partition("/")
        size = None if total.strip() == "*" else int(total)
        if size is not None and not 0 <= size <= MAX_SIZE:
            return None, None, None
        if span.strip() == "*":
            return None, None, size
        a, _, b = span.partition("-")
        first, last = int(a), int(b)
    except ValueError:
        return None, None, None
    if first < 0 or last < first or (size is not None and not 0 <= size <= MAX_SIZE):
        return None, None, None       # nonsense: treated as no answer at all
    return first, last, size


def describe_error_body(resp: httpx.Response) -> str:
    """A short, secret-free summary of an error body (error codes and messages only)."""
    try:
        body = resp.json()
    except ValueError:
        return ""
    if isinstance(body, list) and body:
        body = body[0]
    if not isinstance(body, dict):
        return ""
    parts = []
    for key in ("errorCode", "errorKey", "code", "error", "error_description", "errorMessage",
                "message", "title", "detail"):
        val = body.get(key)
        if isinstance(val, (str, int)) and str(val).strip():
            # scrubbed before it is cut: a secret cut in two no longer matches
            parts.append(f"{key}={redact.scrub(str(val))[:200]}")
    return (": " + ", ".join(parts)) if parts else ""
