"""Ranged GETs whose bodies are received in worker threads, straight into the cache.

Why this exists: httpx parses bodies on the trio thread, which also answers every
FUSE request, and that one thread then caps a cold read; a worker thread that
`recv_into`s a reused buffer and `pwrite`s it, both of which release the GIL, moves
several times more (docs/BENCHMARKS.md). So content GETs
(the one request type that carries megabytes) use this small HTTP/1.1 client, and
so do the many small GETs of size probing (signed URLs, one-byte probes: a thread
hop costs the trio thread less than an httpx exchange). Everything else (listings,
tokens, uploads, jobs) stays on httpx.

What it handles, and what it hands back:
- GET over http or https (verified TLS, the same context as httpx), keep-alive
  connections pooled per origin, one retry on a fresh connection when a pooled one
  turns out to be closed before any byte of the answer arrived.
- Answers framed by Content-Length or by the end of the connection. Anything else
  (chunked transfer coding, a content coding) is `Unsupported`, and the caller
  repeats that attempt with httpx; a GET is safe to repeat.
- The caller's `plan(status, headers)` decides, in the thread, whether the answer is
  content and where its body starts; it may raise (a wrong range, a changed size),
  and that exception reaches the caller unchanged, as does one from the sink.
- Transport failures (reset, timeout, a short body) are not raised: the outcome says
  how far the body got, and the caller resumes from there.

Cancellation: a `Ticket` is shared with the caller. `abort()` shuts the socket down,
so a thread blocked in `recv` returns at once, and no sink call starts after it.
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

HEAD_LIMIT = 64 * 1024          # status line and headers
SMALL_BODY_LIMIT = 64 * 1024    # what is kept of a non-content answer's body
BUFFER = 1 << 20                # per thread; big reads keep the per-byte cost low
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
        scheme, host, port, target, netloc = _split(url)
        if scheme not in ("http", "https"):
            raise Unsupported(f"scheme {scheme}")
        origin = (scheme, host, port or (443 if scheme == "https" else 80))
        request = _request_bytes(target, netloc, headers)
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
                if got_any:
                    out.problem = "connection broken mid-body"
                elif isinstance(exc, (socket.timeout, TimeoutError)):
                    out.problem = "ReadTimeout"
                else:
                    out.problem = str(exc) if isinstance(exc, _Broken) else type(exc).__name__
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
        while True:
            idx = data.find(b"\r\n\r\n")
            if idx >= 0:
                head, rest = bytes(data[:idx]), memoryview(bytes(data[idx + 4:]))
                status, hdrs, version = _parse_head(head)
                if 100 <= status < 200:         # 100 Continue, 103 Early Hints
                    data = bytearray(rest)
                    continue
                return status, hdrs, version, rest
            if len(data) > HEAD_LIMIT:
                raise _Broken("the answer's headers are too long")
            chunk = conn.recv(HEAD_LIMIT)
            if not chunk:
                raise _Broken("the connection closed before an answer")
            data += chunk

    def _read_body(self, ticket: Ticket, conn: socket.socket, out: Outcome, hdrs: httpx.Headers,
                   version: str, leftover: memoryview, plan: Plan, sink: Sink) -> bool:
        """Read the body; True when the connection can be reused."""
        te = hdrs.get("transfer-encoding", "identity").strip().lower()
        ce = hdrs.get("content-encoding", "identity").strip().lower()
        if te != "identity":
            raise Unsupported(f"transfer-encoding {te}")
        length: int | None
        cl = hdrs.get("content-length")
        if out.status in (204, 304):
            length = 0
        elif cl is not None:
            try:
                length = int(cl)
            except ValueError:
                raise _Broken("unreadable Content-Length") from None
            if length < 0:
                raise _Broken("negative Content-Length")
        else:
            length = None                       # the body ends with the connection
        reusable = (version == "HTTP/1.1" and length is not None
                    and "close" not in hdrs.get("connection", "").lower())
        wanted = plan(out.status, hdrs)
        if wanted is not None and ce != "identity":
            raise Unsupported(f"content-encoding {ce}")
        if wanted is None:
            return self._read_small_body(conn, out, length, leftover) and reusable
        stream_pos, stop = wanted
        out.stop = stop
        remaining = length

        def consume(view: memoryview) -> None:
            nonlocal stream_pos
            n = len(view)
            start = stream_pos
            stream_pos += n
            lo = max(out.pos - start, 0)
            hi = min(n, stop - start)
            if hi > lo:
                if ticket.aborted:
                    raise _Broken("aborted")
                sink(start + lo, view[lo:hi])
                out.pos = start + hi

        if remaining is not None:
            leftover = leftover[:remaining]
            remaining -= len(leftover)
        out.received += len(leftover)
        consume(leftover)
        buf = self._buffer()
        while remaining is None or remaining > 0:
            if out.pos >= stop:
                return False        # the rest is not wanted: drop the connection
            k = conn.recv_into(buf, BUFFER if remaining is None else min(BUFFER, remaining))
            if k == 0:
                if remaining is None:
                    return False    # the end of a connection-framed body
                raise _Broken("short body")
            out.received += k
            if remaining is not None:
                remaining -= k
            consume(buf[:k])
        return reusable

    def _read_small_body(self, conn: socket.socket, out: Outcome, length: int | None,
                         leftover: memoryview) -> bool:
        body = bytearray(leftover[:length] if length is not None else leftover)
        remaining = None if length is None else length - len(body)
        while remaining is None or remaining > 0:
            if len(body) >= SMALL_BODY_LIMIT:
                out.body = bytes(body[:SMALL_BODY_LIMIT])
                out.truncated = True
                out.received += len(body)
                return False
            chunk = conn.recv(SMALL_BODY_LIMIT if remaining is None
                                   else min(SMALL_BODY_LIMIT, remaining))
            if not chunk:
                if remaining is None:
                    break
                raise _Broken("short body")
            body += chunk
            if remaining is not None:
                remaining -= len(chunk)
        out.body = bytes(body[:SMALL_BODY_LIMIT])
        out.received += len(body)
        return remaining is not None


# a URL of only these characters needs no normalising: it is sent as it is
_PLAIN_URL = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9\-._~%!$&'()*+,;=:@/]*)?(\?[A-Za-z0-9\-._~%!$&'()*+,;=:@/?]*)?$")


def _split(url: str) -> tuple[str, str, int | None, bytes, bytes]:
    """(scheme, host, port, request target, Host header) of a URL. A plain URL is split
    as it is (cheap); any other goes through httpx.URL, which percent-encodes it."""
    if _PLAIN_URL.match(url):
        parts = urllib.parse.urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return parts.scheme, parts.hostname or "", parts.port, target.encode("ascii"), \
            parts.netloc.encode("ascii")
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
