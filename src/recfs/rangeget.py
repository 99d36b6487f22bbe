"""A small HTTP/1.1 client for GETs, with two ways of receiving: ranged content in
worker threads, straight into the cache, and small answers by trio tasks.

Why this exists: httpx parses bodies on the trio thread, which also answers every
FUSE request, and that one thread then caps a cold read; a worker thread that
`recv_into`s a reused buffer and `pwrite`s it, both of which release the GIL, moves
several times more (docs/BENCHMARKS.md). So content GETs (the one request type that
carries megabytes) go through `RangeGetter`, in worker threads. Size probes and
signed URLs are thousands of small answers at once; a thread hand-off costs more
than such an exchange itself, and httpx more again, so they go through
`AsyncRangeGetter`, which reads them on the trio thread with the same parsing
(`_take_head`, `_Body`). Everything else (listings, tokens, uploads, jobs) stays on
httpx.

What both handle, and what they hand back:
- GET over http or https (verified TLS, the same context as httpx), keep-alive
  connections pooled per origin, one retry on a fresh connection when a pooled one
  turns out to be closed before any byte of the answer arrived.
- Answers framed by Content-Length or by the end of the connection. Anything else
  (chunked transfer coding, a content coding) is `Unsupported`, and the caller
  repeats that attempt with httpx; a GET is safe to repeat.
- The caller's `plan(status, headers)` decides whether the answer is content and
  where its body starts; it may raise (a wrong range, a changed size), and that
  exception reaches the caller unchanged, as does one from the sink.
- Transport failures (reset, timeout, a short body) are not raised: the outcome says
  how far the body got, and the caller resumes from there.

Cancellation: in a thread, a `Ticket` is shared with the caller: `abort()` shuts the
socket down, so a thread blocked in `recv` returns at once, and no sink call starts
after it. A task is cancelled as any trio task is, and its connection is closed.
"""
from __future__ import annotations

import re
import select
import socket
import ssl
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable

import httpx
import trio

HEAD_LIMIT = 64 * 1024          # status line and headers
SMALL_BODY_LIMIT = 64 * 1024    # what is kept of a non-content answer's body
BUFFER = 1 << 20                # per thread; big reads keep the per-byte cost low
ASYNC_RECEIVE = 64 * 1024      # a trio receive allocates what it asks for
# A connection opens only when none to its origin is idle, so the open ones never
# outnumber the most in use at once; this cap only closes some after a burst. Below
# a usual burst (a folder's size probes: `size_concurrency`, 64 for Alvaria) it would
# close connections that the next burst reopens, each new one costing both ends.
MAX_IDLE_PER_ORIGIN = 128

Plan = Callable[[int, httpx.Headers], "tuple[int, int] | None"]
Sink = Callable[[int, memoryview], None]


class Unsupported(Exception):
    """The answer uses framing this client does not read; repeat with httpx."""


@dataclass
class Outcome:
    status: int = 0
    headers: httpx.Headers = field(default_factory=httpx.Headers)
    body: bytes = b""           # the start of a non-content answer's body
    pos: int = 0                # the file offset the content reached
    stop: int = 0               # the file offset the content answer ends at
    received: int = 0           # body bytes received
    problem: str | None = None  # a transport failure; `pos` says how far it got
    truncated: bool = False     # `body` holds only the start of a longer body

    def response(self) -> httpx.Response:
        """The answer as an httpx.Response (for Retry-After and error-body parsing)."""
        return httpx.Response(self.status, headers=self.headers, content=self.body)


class Ticket:
    def __init__(self) -> None:
        self.aborted = False
        self.finished = threading.Event()
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def _attach(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
            if self.aborted and sock is not None:
                _shutdown(sock)

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            if self._sock is not None:
                _shutdown(self._sock)


class _Broken(Exception):
    """A transport failure while reading the answer."""


def _readable(sock: socket.socket) -> bool:
    poller = select.poll()          # not select(): descriptors may be above 1024
    poller.register(sock.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class RangeGetter:
    def __init__(self, *, connect_timeout: float, read_timeout: float, tls: ssl.SSLContext):
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.tls = tls
        self._idle: dict[tuple[str, str, int], list[socket.socket]] = {}
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._closed = False

    def close(self) -> None:
        """Shut every connection down: threads blocked on one return at once."""
        with self._lock:
            self._closed = True
            conns = list(self._open)
            self._idle.clear()
        for conn in conns:
            _shutdown(conn)
            conn.close()

    # -- connections
    def _checkout(self, origin: tuple[str, str, int]) -> tuple[socket.socket, bool]:
        with self._lock:
            if self._closed:
                raise _Broken("the mount is stopping")
            idle = self._idle.get(origin)
            while idle:
                conn = idle.pop()
                # a pooled connection with something to read has been closed (or
                # spoiled) by the server while idle
                if _readable(conn):
                    self._open.discard(conn)
                    conn.close()
                    continue
                return conn, True
        scheme, host, port = origin
        try:
            sock = socket.create_connection((host, port), timeout=self.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                sock = self.tls.wrap_socket(sock, server_hostname=host)
        except socket.timeout:
            raise _Broken("ConnectTimeout") from None
        except (OSError, ssl.SSLError) as exc:
            raise _Broken(f"ConnectError ({type(exc).__name__})") from None
        sock.settimeout(self.read_timeout)
        with self._lock:
            self._open.add(sock)
        return sock, False

    def _checkin(self, origin: tuple[str, str, int], conn: socket.socket) -> None:
        with self._lock:
            idle = self._idle.setdefault(origin, [])
            if not self._closed and len(idle) < MAX_IDLE_PER_ORIGIN:
                idle.append(conn)
                return
            self._open.discard(conn)
        conn.close()

    def _discard(self, conn: socket.socket) -> None:
        with self._lock:
            self._open.discard(conn)
        conn.close()

    def _buffer(self) -> memoryview:
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = memoryview(bytearray(BUFFER))
        return buf

    # -- one request
    def get(self, ticket: Ticket, url: str, headers: dict[str, str], pos: int,
            plan: Plan, sink: Sink) -> Outcome:
        """GET `url`; for a content answer, hand the body from file offset `pos` on
        to `sink`. Runs in a worker thread."""
        try:
            return self._get(ticket, url, headers, pos, plan, sink)
        finally:
            ticket.finished.set()

    def _get(self, ticket: Ticket, url: str, headers: dict[str, str], pos: int,
             plan: Plan, sink: Sink) -> Outcome:
        origin, request = _prepare(url, headers)
        out = Outcome(pos=pos)
        for attempt in range(2):
            try:
                conn, reused = self._checkout(origin)
            except _Broken as exc:
                out.problem = str(exc)
                return out
            ticket._attach(conn)
            keep = False
            got_any = False
            try:
                conn.sendall(request)
                status, hdrs, version, leftover = self._read_head(conn)
                got_any = True
                out.status, out.headers = status, hdrs
                keep = self._read_body(ticket, conn, out, hdrs, version, leftover, plan, sink)
                return out
            except (_Broken, OSError, ssl.SSLError) as exc:
                if reused and not got_any and attempt == 0 and not ticket.aborted:
                    continue        # the server had closed the pooled connection
                out.problem = _problem(exc, got_any)
                return out
            finally:
                ticket._attach(None)
                if keep and not ticket.aborted:
                    self._checkin(origin, conn)
                else:
                    self._discard(conn)
        return out

    def _read_head(self, conn: socket.socket) -> tuple[int, httpx.Headers, str, memoryview]:
        data = bytearray()
        while (head := _take_head(data)) is None:
            chunk = conn.recv(HEAD_LIMIT)
            if not chunk:
                raise _Broken("the connection closed before an answer")
            data += chunk
        return head

    def _read_body(self, ticket: Ticket, conn: socket.socket, out: Outcome, hdrs: httpx.Headers,
                   version: str, leftover: memoryview, plan: Plan, sink: Sink) -> bool:
        """Read the body; True when the connection can be reused."""
        body = _Body(out, hdrs, version, leftover, plan, sink, lambda: ticket.aborted)
        buf = self._buffer()
        while n := body.want():
            k = conn.recv_into(buf, n)
            if k:
                body.feed(buf[:k])
            else:
                body.ended()
        return body.keep


class AsyncRangeGetter:
    """The same GETs made by trio tasks over trio streams, for many small answers at
    once (size probes and the signed URLs they need): a worker thread per request costs
    more in hand-offs than such a request itself. What it reads and hands back is the
    same (`_take_head`, `_Body`); it has a pool of its own, and cancelling the task
    closes the connection it was using."""

    def __init__(self, *, connect_timeout: float, read_timeout: float, tls: ssl.SSLContext):
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.tls = tls
        self._idle: dict[tuple[str, str, int], list[trio.abc.Stream]] = {}

    async def aclose(self) -> None:
        idle, self._idle = self._idle, {}
        for streams in idle.values():
            for stream in streams:
                await trio.aclose_forcefully(stream)

    async def get(self, url: str, headers: dict[str, str], pos: int, plan: Plan,
                  sink: Sink) -> Outcome:
        """GET `url` as `RangeGetter.get` does, on the trio thread."""
        origin, request = _prepare(url, headers)
        out = Outcome(pos=pos)
        for attempt in range(2):
            try:
                stream, reused = await self._checkout(origin)
            except _Broken as exc:
                out.problem = str(exc)
                return out
            keep = False
            got_any = False
            try:
                await stream.send_all(request)
                data = bytearray()
                while (head := _take_head(data)) is None:
                    chunk = await self._receive(stream, HEAD_LIMIT)
                    if not chunk:
                        raise _Broken("the connection closed before an answer")
                    data += chunk
                out.status, out.headers, version, leftover = head
                got_any = True
                body = _Body(out, out.headers, version, leftover, plan, sink, _never)
                while n := body.want():
                    chunk = await self._receive(stream, min(n, ASYNC_RECEIVE))
                    if chunk:
                        body.feed(memoryview(chunk))
                    else:
                        body.ended()
                keep = body.keep
                return out
            except (_Broken, OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                if reused and not got_any and attempt == 0:
                    continue        # the server had closed the pooled connection
                out.problem = _problem(exc, got_any)
                return out
            finally:
                if keep:
                    idle = self._idle.setdefault(origin, [])
                    if len(idle) < MAX_IDLE_PER_ORIGIN:
                        idle.append(stream)
                    else:
                        await trio.aclose_forcefully(stream)
                else:
                    await trio.aclose_forcefully(stream)
        return out

    async def _checkout(self, origin: tuple[str, str, int]) -> tuple[trio.abc.Stream, bool]:
        idle = self._idle.get(origin)
        if idle:
            return idle.pop(), True
        scheme, host, port = origin
        stream: trio.abc.Stream | None = None
        try:
            with trio.fail_after(self.connect_timeout):
                stream = await trio.open_tcp_stream(host, port)
                if scheme == "https":
                    stream = trio.SSLStream(stream, self.tls, server_hostname=host,
                                            https_compatible=True)
                    await stream.do_handshake()
        except trio.TooSlowError:
            if stream is not None:
                await trio.aclose_forcefully(stream)
            raise _Broken("ConnectTimeout") from None
        except (OSError, trio.BrokenResourceError) as exc:
            if stream is not None:
                await trio.aclose_forcefully(stream)
            raise _Broken(f"ConnectError ({_cause_name(exc)})") from None
        return stream, False

    async def _receive(self, stream: trio.abc.Stream, n: int) -> bytes:
        with trio.CancelScope(deadline=trio.current_time() + self.read_timeout):
            return await stream.receive_some(n)
        raise trio.TooSlowError


def _never() -> bool:
    return False


def _prepare(url: str, headers: dict[str, str]) -> tuple[tuple[str, str, int], bytes]:
    """The origin (scheme, host, port) a GET of `url` goes to, and the request's bytes."""
    scheme, host, port, target, netloc = _split(url)
    if scheme not in ("http", "https"):
        raise Unsupported(f"scheme {scheme}")
    origin = (scheme, host, port or (443 if scheme == "https" else 80))
    return origin, _request_bytes(target, netloc, headers)


def _problem(exc: BaseException, got_any: bool) -> str:
    """What an outcome says of the transport failure that ended its answer."""
    if got_any:
        return "connection broken mid-body"
    if isinstance(exc, (TimeoutError, trio.TooSlowError)):     # socket.timeout is TimeoutError
        return "ReadTimeout"
    return str(exc) if isinstance(exc, _Broken) else _cause_name(exc)


def _cause_name(exc: BaseException) -> str:
    """The name of what broke: trio wraps a socket's or TLS's error in BrokenResourceError."""
    if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None:
        exc = exc.__cause__
    return type(exc).__name__


def _take_head(data: bytearray) -> tuple[int, httpx.Headers, str, memoryview] | None:
    """The answer's status, headers and HTTP version, and the bytes after them, once
    `data` holds its whole head; None until then. Interim answers (1xx: 100 Continue,
    103 Early Hints) are taken out of `data` and skipped."""
    while True:
        idx = data.find(b"\r\n\r\n")
        if idx < 0:
            if len(data) > HEAD_LIMIT:
                raise _Broken("the answer's headers are too long")
            return None
        status, hdrs, version = _parse_head(bytes(data[:idx]))
        if 100 <= status < 200:
            del data[:idx + 4]
            continue
        return status, hdrs, version, memoryview(bytes(data[idx + 4:]))


class _Body:
    """One answer's body as it arrives, whoever receives it (a worker thread's blocking
    socket, a trio task's stream): a content answer (`plan` says where its body starts
    and where to stop) goes to the sink, any other body is kept, its first
    SMALL_BODY_LIMIT bytes. `want()` is how much to receive next, 0 once the body is
    over or the rest is not wanted; `keep` then says whether the connection can carry
    the next request."""

    def __init__(self, out: Outcome, hdrs: httpx.Headers, version: str, leftover: memoryview,
                 plan: Plan, sink: Sink, aborted: Callable[[], bool]):
        te = hdrs.get("transfer-encoding", "identity").strip().lower()
        ce = hdrs.get("content-encoding", "identity").strip().lower()
        if te != "identity":
            raise Unsupported(f"transfer-encoding {te}")
        cl = hdrs.get("content-length")
        if out.status in (204, 304):
            length: int | None = 0
        elif cl is not None:
            try:
                length = int(cl)
            except ValueError:
                raise _Broken("unreadable Content-Length") from None
            if length < 0:
                raise _Broken("negative Content-Length")
        else:
            length = None                       # the body ends with the connection
        self.reusable = (version == "HTTP/1.1" and length is not None
                         and "close" not in hdrs.get("connection", "").lower())
        wanted = plan(out.status, hdrs)
        if wanted is not None and ce != "identity":
            raise Unsupported(f"content-encoding {ce}")
        self.out, self.sink, self.aborted = out, sink, aborted
        self.remaining = length
        self.content = wanted is not None
        self.small = bytearray()                # a non-content body
        self.over = False
        self.keep = False
        if self.content:
            self.stream_pos, out.stop = wanted
        self.feed(leftover)

    def want(self) -> int:
        if self.over:
            return 0
        limit = BUFFER if self.content else SMALL_BODY_LIMIT
        return limit if self.remaining is None else min(limit, self.remaining)

    def feed(self, view: memoryview) -> None:
        out = self.out
        if self.remaining is not None:
            view = view[:self.remaining]
            self.remaining -= len(view)
        out.received += len(view)
        if self.content:
            n = len(view)
            start = self.stream_pos
            self.stream_pos += n
            lo = max(out.pos - start, 0)
            hi = min(n, out.stop - start)
            if hi > lo:
                if self.aborted():
                    raise _Broken("aborted")
                self.sink(start + lo, view[lo:hi])
                out.pos = start + hi
        else:
            self.small += view
        if self.remaining == 0:
            self._finish(self.reusable)
        elif self.content and out.pos >= out.stop:
            self._finish(False)                 # the rest is not wanted: drop the connection
        elif not self.content and len(self.small) > SMALL_BODY_LIMIT:
            self._finish(False)

    def ended(self) -> None:
        """The connection closed: the end of a body framed by it, else a short body."""
        if self.remaining is not None:
            raise _Broken("short body")
        self._finish(False)

    def _finish(self, keep: bool) -> None:
        self.over = True
        self.keep = keep
        if not self.content:
            self.out.body = bytes(self.small[:SMALL_BODY_LIMIT])
            self.out.truncated = len(self.small) > SMALL_BODY_LIMIT


# a URL of only these characters needs no normalising: it is sent as it is
_PLAIN_URL = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9\-._~%!$&'()*+,;=:@/]*)?(\?[A-Za-z0-9\-._~%!$&'()*+,;=:@/?]*)?$")


def _split(url: str) -> tuple[str, str, int | None, bytes, bytes]:
    """(scheme, host, port, request target, Host header) of a URL. A plain URL is split
    as it is (cheap); any other goes through httpx.URL, which percent-encodes it."""
    if _PLAIN_URL.match(url):
        scheme, rest = url.split("://", 1)
        cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
        netloc, target = rest[:cut], rest[cut:]
        if not target.startswith("/"):
            target = "/" + target
        host, port = netloc, None
        if not netloc.endswith("]") and ":" in netloc:     # not a bare IPv6 address
            host, _, digits = netloc.rpartition(":")
            port = int(digits) if digits else None
        return scheme, host.strip("[]").lower(), port, target.encode("ascii"), netloc.encode("ascii")
    u = httpx.URL(url)
    return u.scheme, u.host, u.port, u.raw_path, u.netloc


def _request_bytes(target: bytes, netloc: bytes, headers: dict[str, str]) -> bytes:
    names = {k.lower() for k in headers}
    lines = [b"GET " + target + b" HTTP/1.1", b"Host: " + netloc]
    for name, value in headers.items():
        if any(c in name + value for c in "\r\n\0") or ":" in name:
            raise ValueError(f"header {name!r} holds a line break")
        lines.append(f"{name}: {value}".encode("latin-1"))
    if "accept-encoding" not in names:
        lines.append(b"Accept-Encoding: identity")
    if "user-agent" not in names:
        lines.append(b"User-Agent: recfs")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _parse_head(head: bytes) -> tuple[int, httpx.Headers, str]:
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    try:
        version = parts[0].decode("ascii")
        status = int(parts[1])
    except (IndexError, ValueError, UnicodeDecodeError):
        raise _Broken("an unreadable status line") from None
    if not version.startswith("HTTP/1.") or not 100 <= status <= 999:
        raise _Broken("an unreadable status line")
    pairs = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name.strip():
            continue
        pairs.append((name.strip(), value.strip()))     # bytes: httpx decodes them itself
    return status, httpx.Headers(pairs), version
