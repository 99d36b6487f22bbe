"""The shared machinery of the loopback service emulators.

Each emulator is a real HTTP/1.1 server on 127.0.0.1 (never another address),
running in daemon threads so that a test, the demo or a benchmark can start it
in-process, inspect its counters and inject faults while a separate `recfs mount`
process talks to it over real sockets.

Pieces:
- `Blob`: object content that can be large without living in memory.
- `Request` / `Response`: what a route handler gets and returns.
- `Faults`: one-shot or repeated faults matched by route name (429, 5xx, resets,
  stalls, ignored Range, truncated bodies).
- `WanProfile`: per-response latency and a per-connection byte-rate cap.
- `Emulator`: routing, counters, the server thread.
"""
from __future__ import annotations

import collections
import email.utils
import hashlib
import http.server
import json
import random
import re
import socket
import socketserver
import struct
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

LOOPBACK = "127.0.0.1"
SEND_CHUNK = 256 * 1024


# --------------------------------------------------------------------------- blobs

class Blob:
    """Content of one object. Subclasses implement `size` and `read`."""

    size: int

    def read(self, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def iter_range(self, start: int, end: int, chunk: int = SEND_CHUNK) -> Iterator[bytes]:
        pos = start
        while pos < end:
            n = min(chunk, end - pos)
            yield self.read(pos, n)
            pos += n

    def all_bytes(self) -> bytes:
        return self.read(0, self.size)

    def md5(self) -> str:
        h = hashlib.md5()
        for piece in self.iter_range(0, self.size, 1 << 20):
            h.update(piece)
        return h.hexdigest()


class BytesBlob(Blob):
    def __init__(self, data: bytes):
        self.data = bytes(data)
        self.size = len(self.data)

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset:offset + length]


class FileBlob(Blob):
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.size = self.path.stat().st_size

    def read(self, offset: int, length: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read(length)


class PatternBlob(Blob):
    """Deterministic pseudo-random bytes of any size, generated on the fly.

    Every 64 KiB block starts with its own index, so a read served from the wrong
    offset never compares equal to the right one.
    """

    BLOCK = 64 * 1024
    _bases: dict[int, bytes] = {}

    def __init__(self, seed: int, size: int):
        self.seed = seed
        self.size = size
        base = self._bases.get(seed)
        if base is None:
            base = random.Random(seed).randbytes((1 << 20) + self.BLOCK)
            self._bases[seed] = base
        self._base = base

    def _block(self, index: int) -> bytes:
        off = (index * 7919) % (1 << 20)
        return struct.pack("<Q", index ^ self.seed) + self._base[off:off + self.BLOCK - 8]

    def read(self, offset: int, length: int) -> bytes:
        end = min(self.size, offset + length)
        if offset >= end:
            return b""
        out = []
        pos = offset
        while pos < end:
            index, inner = divmod(pos, self.BLOCK)
            take = min(self.BLOCK - inner, end - pos)
            out.append(self._block(index)[inner:inner + take])
            pos += take
        return b"".join(out)


# --------------------------------------------------------------------------- requests

@dataclass
class Request:
    method: str
    path: str                     # decoded path, without the query string
    raw_path: str                 # as sent, with the query string
    query: dict[str, str]
    headers: dict[str, str]       # lower-case names
    body: bytes
    match: re.Match | None = None
    route: str | None = None      # a handler may count itself under another name

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    def json(self):
        return json.loads(self.body.decode() or "null")

    def form(self) -> dict[str, str]:
        return {k: v[-1] for k, v in urllib.parse.parse_qs(self.body.decode()).items()}


@dataclass
class Response:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | Blob = b""
    body_range: tuple[int, int] | None = None   # slice of a Blob body to send

    @property
    def length(self) -> int:
        if isinstance(self.body, Blob):
            start, end = self.body_range or (0, self.body.size)
            return end - start
        return len(self.body)

    def chunks(self) -> Iterable[bytes]:
        if isinstance(self.body, Blob):
            start, end = self.body_range or (0, self.body.size)
            return self.body.iter_range(start, end)
        return [self.body] if self.body else []


def json_response(obj, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    return Response(status, h, json.dumps(obj).encode())


_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def precondition_failed(req: Request, etag: str | None) -> Response | None:
    """412 when the request's `If-Match` names no version the object is (RFC 9110:
    strong comparison; `*` matches any); else None."""
    wanted = req.header("if-match")
    if not wanted or not etag or wanted.strip() == "*":
        return None
    if etag.startswith("W/") or etag not in [t.strip() for t in wanted.split(",")]:
        return Response(412, {"Content-Type": "application/xml", "ETag": etag},
                        b"<Error><Code>PreconditionFailed</Code></Error>")
    return None


def range_response(req: Request, blob: Blob, headers: dict[str, str] | None = None) -> Response:
    """Serve `blob` honouring `If-Match` against the headers' ETag (412) and a
    single-range `Range` header (206, 416 or 200)."""
    h = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
    h.update(headers or {})
    failed = precondition_failed(req, h.get("ETag"))
    if failed is not None:
        return failed
    rng = req.header("range")
    size = blob.size
    if rng:
        m = _RANGE_RE.match(rng.strip())
        if m and (m.group(1) or m.group(2)):
            if m.group(1):
                start = int(m.group(1))
                end = int(m.group(2)) + 1 if m.group(2) else size
            else:  # suffix range
                start = max(0, size - int(m.group(2)))
                end = size
            end = min(end, size)
            if start >= size or start >= end:
                h["Content-Range"] = f"bytes */{size}"
                return Response(416, h, b"")
            h["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            return Response(206, h, blob, (start, end))
    return Response(200, h, blob, (0, size))


# --------------------------------------------------------------------------- faults

@dataclass
class Fault:
    """One kind of misbehaviour for requests whose route name matches `route`.

    kind:
      "status"       answer `status` with `headers` and `body` instead of the real reply
      "reset"        send the real headers and `after_bytes` of the body, then reset
      "stall"        send the real headers and `after_bytes`, then stall `seconds`, then reset
      "ignore_range" answer 200 with the whole body although a Range was asked
      "truncate"     send the real headers, then only `after_bytes` and close cleanly
      "delay"        wait `seconds` before answering normally
    """
    kind: str
    route: str = "*"
    times: int = 1               # how many requests it hits; -1 for every one
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    after_bytes: int = 0
    seconds: float = 0.0
    probability: float = 1.0
    skip: int = 0                # matching requests let through before it hits

    def matches(self, route: str) -> bool:
        return self.route == "*" or self.route == route


class Faults:
    def __init__(self, seed: int = 0):
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._rng = random.Random(seed)
        self.fired: collections.Counter[str] = collections.Counter()

    def add(self, fault: Fault | None = None, /, **kw) -> Fault:
        fault = fault or Fault(**kw)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, route: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.times != 0 and fault.matches(route):
                    if fault.skip > 0:
                        fault.skip -= 1
                        continue
                    if fault.probability < 1.0 and self._rng.random() >= fault.probability:
                        continue
                    if fault.times > 0:
                        fault.times -= 1
                    self.fired[fault.kind] += 1
                    return fault
            return None


@dataclass
class WanProfile:
    """Latency added to every response and a byte-rate cap per connection."""
    latency_s: float = 0.020
    bytes_per_s: float = 20e6


# --------------------------------------------------------------------------- server

Handler = Callable[[Request], Response]


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def handle_error(self, request, client_address):
        # a client that hangs up mid-answer (a cancelled read, an unmount) is normal
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class Emulator:
    """A loopback HTTP service. Subclasses register routes in `__init__`."""

    name = "emulator"

    def __init__(self, *, port: int = 0, wan: WanProfile | None = None, fault_seed: int = 0):
        self._routes: list[tuple[str, re.Pattern, str, Handler]] = []
        self.port = port
        self.wan = wan
        self.faults = Faults(fault_seed)
        self.counts: collections.Counter[str] = collections.Counter()
        self.bytes_sent = 0
        self.log: collections.deque[tuple[str, str, int]] = collections.deque(maxlen=10000)
        self._stats_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.clock_offset = 0.0   # tests move the emulator's clock forward to expire things
        self.bucket: TokenBucket | None = None

    # -- time
    def now(self) -> float:
        return time.time() + self.clock_offset

    def advance(self, seconds: float) -> None:
        self.clock_offset += seconds

    # -- routing
    def route(self, method: str, pattern: str, name: str, handler: Handler) -> None:
        self._routes.append((method, re.compile(pattern + r"\Z", re.S), name, handler))

    def reset_stats(self) -> None:
        with self._stats_lock:
            self.counts.clear()
            self.bytes_sent = 0
            self.log.clear()

    def count(self, *names: str) -> int:
        with self._stats_lock:
            return sum(self.counts[n] for n in names)

    # -- lifecycle
    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> "Emulator":
        emulator = self

        class RequestHandler(_RequestHandler):
            pass
        RequestHandler.emulator = emulator
        self._server = _Server((LOOPBACK, self.port), RequestHandler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name=f"{self.name}-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- dispatch
    def resolve(self, req: Request) -> tuple[str, Handler]:
        path_matched = False
        for method, pattern, name, handler in self._routes:
            m = pattern.match(req.path)
            if not m:
                continue
            path_matched = True
            if method != req.method and not (method == "GET" and req.method == "HEAD"):
                continue
            req.match = m
            return name, handler
        if path_matched:
            return "method_not_allowed", lambda r: json_response({"message": "Method Not Allowed"}, 405)
        return "not_found", lambda r: json_response({"message": "Not Found"}, 404)

    def gate(self, req: Request) -> tuple[str, Response] | None:
        """Answer before routing (throttling): (route name, response), or None."""
        if self.bucket is not None and not self.bucket.take(self.cost(req)):
            return "throttled", self.too_many_requests(req)
        return None

    # -- rate limiting: a token bucket every request draws from (off unless set)
    def rate_limit(self, capacity: float | None, rate: float = 10.0) -> None:
        self.bucket = TokenBucket(capacity, rate) if capacity else None

    def cost(self, req: Request) -> float:
        """Tokens a request costs (the service's own pricing where it has one)."""
        return 1.0

    def too_many_requests(self, req: Request) -> Response:
        return json_response({"message": "Too Many Requests"}, 429)


class TokenBucket:
    """`capacity` tokens, refilled at `rate` per second, real time."""

    def __init__(self, capacity: float, rate: float):
        self.capacity = capacity
        self.rate = rate
        self.tokens = capacity
        self.stamp = time.monotonic()
        self.throttled = 0
        self._lock = threading.Lock()

    def take(self, cost: float = 1.0) -> bool:
        with self._lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= cost:
                self.tokens -= cost
                return True
            self.throttled += 1
            return False

    def drain(self) -> None:
        with self._lock:
            self.tokens = 0.0
            self.stamp = time.monotonic()


class _RequestHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body go out in separate writes: without TCP_NODELAY the body waits
    # for the client's delayed ACK (about 40 ms a request)
    disable_nagle_algorithm = True
    emulator: Emulator
    server_version = "recfs-emulator"
    sys_version = ""

    def log_message(self, format, *args):  # the emulators are quiet; tests read counters
        pass

    def _handle(self):
        emu = self.emulator
        parsed = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        req = Request(
            method=self.command,
            path=urllib.parse.unquote(parsed.path),
            raw_path=self.path,
            query={k: v[-1] for k, v in urllib.parse.parse_qs(parsed.query, keep_blank_values=True).items()},
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        gated = emu.gate(req)
        if gated is not None:            # e.g. throttled before any route is looked at
            route, handler = gated[0], (lambda r, resp=gated[1]: resp)
        else:
            route, handler = emu.resolve(req)
        # a fault on the route's own name is decided before the handler runs, so an
        # injected error leaves no side effect (a PUT that fails stores nothing)
        fault = emu.faults.take(route)
        if fault and fault.kind == "status":
            resp = Response(fault.status, dict(fault.headers), fault.body)
            fault = None
        else:
            try:
                resp = handler(req)
            except Exception as exc:  # an emulator bug must show, not hang the client
                route, resp = "error", json_response({"message": f"emulator error: {exc!r}"}, 500)
            if req.route and req.route != route:
                route = req.route     # the handler counted itself under another name
                fault = fault or emu.faults.take(route)
        with emu._stats_lock:
            emu.counts[route] += 1
            emu.log.append((self.command, parsed.path, resp.status))
        if emu.wan:
            time.sleep(emu.wan.latency_s)
        if fault and fault.kind == "delay":
            time.sleep(fault.seconds)
            fault = None
        if fault and fault.kind == "status":      # a renamed route's fault, found late
            resp = Response(fault.status, dict(fault.headers), fault.body)
            fault = None
        if fault and fault.kind == "ignore_range" and isinstance(resp.body, Blob):
            resp.status = 200
            resp.headers.pop("Content-Range", None)
            resp.body_range = None
            fault = None
        self._send(resp, fault)

    def _send(self, resp: Response, fault: Fault | None):
        emu = self.emulator
        self.send_response(resp.status)
        headers = dict(resp.headers)
        headers.setdefault("Date", email.utils.formatdate(usegmt=True))
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(resp.length))
        self.end_headers()
        if self.command == "HEAD":
            return
        limit = fault.after_bytes if fault else None
        sent = 0
        started = time.monotonic()
        for piece in resp.chunks():
            if limit is not None and sent + len(piece) > limit:
                piece = piece[: limit - sent]
            if piece:
                # counted before the write, so a client that has the bytes sees them counted
                with emu._stats_lock:
                    emu.bytes_sent += len(piece)
                self.wfile.write(piece)
                sent += len(piece)
                if emu.wan:
                    ahead = sent / emu.wan.bytes_per_s - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
            if limit is not None and sent >= limit:
                break
        if fault is None:
            return
        self.wfile.flush()
        if fault.kind == "stall":
            time.sleep(fault.seconds)
        if fault.kind in ("reset", "stall"):
            # SO_LINGER 0 makes close() send RST: the client sees a reset, not EOF
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle


def new_token(nbytes: int = 24) -> str:
    return "".join(random.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
                   for _ in range(nbytes))
