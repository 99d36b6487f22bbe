"""The small HTTP/1.1 client (recfs.rangeget) through Http.get_range (content, in
worker threads) and Http.get_heads (size probes, by trio tasks), against a real socket
server that answers from a script: the framings, TLS and failures the emulators do not
produce. The emulator-based reader tests run over both rangeget and httpx."""
from __future__ import annotations

import collections
import contextlib
import functools
import os
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from recfs.http import Http, HttpError, RetryPolicy

DATA = bytes(range(256)) * 4096          # 1 MiB


class ScriptedServer:
    """One thread per connection; `answer(request_head)` gives the raw answer: bytes,
    (bytes, "close") to close the connection after them, or None to close at once."""

    def __init__(self, answer: Callable[[bytes], bytes | None], tls: ssl.SSLContext | None = None):
        self.answer = answer
        self.tls = tls
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self.connections = 0
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{'localhost' if self.tls else '127.0.0.1'}:{self.port}"

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.tls:
                conn = self.tls.wrap_socket(conn, server_side=True)
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                self.requests.append(head)
                out = self.answer(head)
                if out is None:
                    return
                if isinstance(out, tuple):
                    conn.sendall(out[0])
                    return
                conn.sendall(out)
        except (OSError, ssl.SSLError):
            return
        finally:
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def connections_to(port: int) -> list[str]:
    """This process's open TCP connections to 127.0.0.1:`port` (its client ends), from
    /proc: what a test sees of sockets left open."""
    mine = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            mine.add(target[8:-1])
    remote = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    # state 01 is ESTABLISHED; the server's own ends have the port as their local one
    return [row[9] for row in rows if row[2] == remote and row[3] == "01" and row[9] in mine]


def requested_range(head: bytes) -> tuple[int, int]:
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"range:"):
            a, b = line.split(b"=", 1)[1].split(b"-")
            return int(a), int(b) + 1
    return 0, len(DATA)


def partial(head: bytes, extra: bytes = b"") -> bytes:
    a, b = requested_range(head)
    body = DATA[a:b]
    return (f"HTTP/1.1 206 Partial Content\r\nContent-Length: {len(body)}\r\n"
            f"Content-Range: bytes {a}-{b - 1}/{len(DATA)}\r\n").encode() + extra + b"\r\n" + body


async def fetch(http: Http, url: str, start: int = 0, end: int = len(DATA)) -> bytes:
    out = bytearray(end - start)

    def sink(pos: int, data) -> None:
        out[pos - start:pos - start + len(data)] = data

    async def url_for(renew: bool):
        return url + "/file", {"Accept": "*/*"}

    await http.get_range(url_for, start, end, sink, total=len(DATA))
    return bytes(out)


def threaded_http(threaded: bool = True, **kw) -> Http:
    return Http(retry=RetryPolicy(attempts=4, base_delay=0.01), threaded_content=threaded, **kw)


@contextlib.asynccontextmanager
async def serving(answer, threaded: bool = True, **server_kw):
    """A scripted server and an Http client (threaded unless told), both closed afterwards."""
    server = ScriptedServer(answer, **server_kw)
    http = threaded_http(threaded)
    try:
        yield server, http
    finally:
        await http.aclose()
        server.close()


async def test_ranges_come_whole_over_one_kept_alive_connection():
    async with serving(partial) as (server, http):
        assert await fetch(http, server.url, 0, 300_000) == DATA[:300_000]
        assert await fetch(http, server.url, 300_000) == DATA[300_000:]
    assert server.connections == 1
    assert b"Accept-Encoding: identity" in server.requests[0]


async def test_header_values_that_are_not_ascii_are_kept():
    disposition = 'Content-Disposition: attachment; filename="Zoë.mp3"\r\n'.encode()
    async with serving(lambda h: partial(h, disposition)) as (server, http):
        assert await fetch(http, server.url) == DATA


async def test_a_chunked_answer_is_read_again_through_httpx():
    def chunked(head: bytes) -> bytes:
        a, b = requested_range(head)
        body = DATA[a:b]
        return (f"HTTP/1.1 206 Partial Content\r\nTransfer-Encoding: chunked\r\n"
                f"Content-Range: bytes {a}-{b - 1}/{len(DATA)}\r\n\r\n{len(body):x}\r\n").encode() \
            + body + b"\r\n0\r\n\r\n"
    async with serving(chunked) as (server, http):
        assert await fetch(http, server.url, 1000, 200_000) == DATA[1000:200_000]
    assert len(server.requests) == 2           # the threaded try, then httpx


async def test_a_200_without_range_support_is_cut_to_the_range():
    whole = f"HTTP/1.1 200 OK\r\nContent-Length: {len(DATA)}\r\n\r\n".encode() + DATA
    async with serving(lambda h: whole) as (server, http):
        assert await fetch(http, server.url, 5000, 9000) == DATA[5000:9000]


async def test_a_short_body_resumes_where_it_broke():
    answers = iter(["short", "ok"])

    def flaky(head: bytes) -> bytes | None:
        if next(answers, "ok") == "short":
            return partial(head)[:-400_000], "close"
        return partial(head)
    async with serving(lambda h: flaky(h)) as (server, http):
        assert await fetch(http, server.url) == DATA
    first, second = (requested_range(h) for h in server.requests)
    assert first == (0, len(DATA)) and 0 < second[0] < len(DATA)
    assert http.retries == 1


async def test_a_503_is_retried_and_a_404_reported_with_its_status():
    answers = iter([b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\nRetry-After: 0\r\n\r\nbusy"])
    async with serving(lambda h: next(answers, None) or partial(h)) as (server, http):
        assert await fetch(http, server.url, 0, 1000) == DATA[:1000]
        server.answer = lambda h: b'HTTP/1.1 404 Not Found\r\nContent-Length: 17\r\n\r\n{"error":"gone"} '
        with pytest.raises(HttpError) as err:
            await fetch(http, server.url, 0, 1000)
    assert err.value.status == 404 and "gone" in err.value.body


async def test_a_connection_the_server_closed_while_pooled_is_replaced():
    async with serving(partial) as (server, http):
        await fetch(http, server.url, 0, 10)
        # the idle connection goes away: the next GET must not fail for it
        pooled = [c for conns in http.ranges._idle.values() for c in conns]
        assert len(pooled) == 1
        pooled[0].shutdown(socket.SHUT_RD)     # as if the peer had gone away
        assert await fetch(http, server.url, 10, 20) == DATA[10:20]
    assert http.retries == 0


async def test_cancelling_a_read_stops_its_thread_before_returning():
    stalled = threading.Event()

    def stall(head: bytes) -> None:
        stalled.set()
        threading.Event().wait(30)          # no answer at all

    writes = []
    async with serving(stall) as (server, http):
        async def url_for(renew):
            return server.url + "/file", {}

        async def read():
            await http.get_range(url_for, 0, len(DATA), lambda pos, data: writes.append(pos),
                                 total=len(DATA))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            # cancel once the request is in flight and its thread waits on the socket
            assert await trio.to_thread.run_sync(stalled.wait, 10)
            nursery.cancel_scope.cancel()
        # the thread was told to stop and has finished: nothing writes any more
        assert not http.ranges._open
    assert writes == []


@pytest.fixture(scope="module")
def tls_server_context(tmp_path_factory):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    ca_path = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    return ctx, str(ca_path)


async def test_tls_is_verified_against_the_configured_ca(tls_server_context):
    """Content (worker threads) and size probes (trio tasks) alike."""
    ctx, ca_path = tls_server_context
    server = ScriptedServer(partial, tls=ctx)
    trusted = threaded_http(ca_bundle=ca_path)
    untrusted = threaded_http()
    try:
        assert await fetch(trusted, server.url, 100, 200_000) == DATA[100:200_000]
        before = server.connections
        sizes, got = await heads(trusted, server.url, ["/a", "/b"], ends=[1, 4 << 20])
        assert sizes == [len(DATA)] * 2 and bytes(got["/b"]) == DATA
        assert server.connections - before == 2
        with pytest.raises(HttpError, match="ConnectError"):
            await fetch(untrusted, server.url, 0, 100)
        assert (await heads(untrusted, server.url, ["/a"]))[0] == [None]
    finally:
        await trusted.aclose()
        await untrusted.aclose()
        server.close()


SMALL = DATA[:5000]


def small_partial(head: bytes) -> bytes:
    a, b = requested_range(head)
    body = SMALL[a:b]
    return (f"HTTP/1.1 206 Partial Content\r\nContent-Length: {len(body)}\r\n"
            f"Content-Range: bytes {a}-{a + len(body) - 1}/{len(SMALL)}\r\n\r\n").encode() + body


def small_whole(head: bytes) -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(SMALL)}\r\n\r\n".encode() + SMALL


def empty_object(head: bytes) -> bytes:
    return b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */0\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize("threaded", [True, False])
@pytest.mark.parametrize("answer,want", [(small_partial, SMALL), (small_whole, SMALL), (empty_object, b"")])
async def test_a_range_past_the_end_learns_the_size_when_none_is_known(answer, want, threaded):
    """total=None (Alvaria's whole-file size probe): the range asked for may run past
    the end of the object; the answer gives the size, and the bytes up to it arrive."""
    got = bytearray()
    async with serving(answer, threaded) as (server, http):
        async def url_for(renew: bool):
            return server.url + "/file", {}
        size = await http.get_range(url_for, 0, 4 << 20, lambda pos, data: got.extend(data), total=None)
    assert size == len(want) and bytes(got) == want
    assert len(server.requests) == 1


# -- Http.get_heads: the first bytes of several files at once (size probes during a copy)

def by_path(head: bytes):
    """Answers per path: /partial and /whole come right; /error, /closed and /short
    fail in three ways (a status, no answer at all, a body cut short)."""
    path = head.split(b" ")[1]
    if path == b"/partial":
        return small_partial(head)
    if path == b"/whole":
        return small_whole(head)
    if path == b"/error":
        return b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"
    if path == b"/short":
        return small_whole(head)[:-100], "close"
    return None


async def heads(http: Http, url: str, paths: list[str], limiter=None, ends=None) -> tuple[list, dict]:
    got: dict[str, bytearray] = {p: bytearray() for p in paths}
    ends = ends or [4 << 20] * len(paths)
    jobs = [((url + p, {}), lambda pos, data, p=p: got[p].extend(data), end) for p, end in zip(paths, ends)]
    sizes = await http.get_heads(jobs, limiter=limiter)
    return sizes, got


async def test_heads_come_together_and_the_failed_ones_are_left_to_the_caller():
    limiter = trio.CapacityLimiter(8)
    paths = ["/partial", "/error", "/whole", "/closed", "/short"]
    async with serving(by_path) as (server, http):
        sizes, got = await heads(http, server.url, paths, limiter)
        assert sizes == [len(SMALL), None, len(SMALL), None, None]
        assert bytes(got["/partial"]) == bytes(got["/whole"]) == SMALL
        asked = collections.Counter(r.split(b" ")[1].decode() for r in server.requests)
        # once each; /closed twice if it went out on a kept-alive connection (rangeget
        # then takes a fresh one, as the server may have closed the kept one)
        assert asked == dict.fromkeys(paths, 1) | {"/closed": asked["/closed"]} and asked["/closed"] in (1, 2)
        assert all(b"Range: bytes=0-4194303" in r for r in server.requests)
        assert limiter.statistics().borrowed_tokens == 0
        assert http._connections.statistics().borrowed_tokens == 0


async def test_heads_start_as_their_tokens_come():
    """Each job holds one of the caller's tokens and one connection token while it runs;
    with one of three tokens held elsewhere, two jobs start and the third waits for it."""
    go = threading.Event()

    def held(head: bytes):
        go.wait(30)
        return small_partial(head)

    limiter = trio.CapacityLimiter(3)
    elsewhere = object()
    await limiter.acquire_on_behalf_of(elsewhere)
    async with serving(held) as (server, http):
        result = []

        async def batch():
            result.append(await heads(http, server.url, ["/a", "/b", "/c"], limiter))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(batch)
            while len(server.requests) < 2:
                await trio.sleep(0.01)
            await trio.sleep(0.2)
            assert len(server.requests) == 2
            limiter.release_on_behalf_of(elsewhere)
            while len(server.requests) < 3:
                await trio.sleep(0.01)
            go.set()
        assert result[0][0] == [len(SMALL)] * 3
        assert limiter.statistics().borrowed_tokens == 0


async def test_cancelling_heads_closes_their_connections_before_returning():
    stalled = threading.Event()

    def stall(head: bytes) -> None:
        stalled.set()
        threading.Event().wait(30)

    writes = []
    limiter = trio.CapacityLimiter(4)
    async with serving(stall) as (server, http):
        jobs = [((server.url + f"/{i}", {}), lambda pos, data: writes.append(pos), 1 << 20) for i in range(4)]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(http.get_heads, jobs, limiter=limiter))
            assert await trio.to_thread.run_sync(stalled.wait, 10)
            while len(server.requests) < 4:
                await trio.sleep(0.01)
            assert len(connections_to(server.port)) == 4
            nursery.cancel_scope.cancel()
        assert connections_to(server.port) == []
        assert not any(http.async_ranges._idle.values())
        assert limiter.statistics().borrowed_tokens == 0
        assert http._connections.statistics().borrowed_tokens == 0
    assert writes == []


@pytest.mark.parametrize("threaded", [True, False])
async def test_each_head_asks_for_its_own_end(threaded):
    """A one-byte probe and a whole-file probe go out in one batch: each job's range is
    its own, and each brings its bytes and the file's size."""
    async with serving(small_partial, threaded) as (server, http):
        sizes, got = await heads(http, server.url, ["/one", "/some", "/whole"], ends=[1, 100, 4 << 20])
    assert sizes == [len(SMALL)] * 3
    assert (bytes(got["/one"]), bytes(got["/some"]), bytes(got["/whole"])) == (SMALL[:1], SMALL[:100], SMALL)
    ranges = sorted(requested_range(h) for h in server.requests)
    assert ranges == [(0, 1), (0, 100), (0, 4 << 20)]
    assert http.batched_requests == (3 if threaded else 0)


def url_or_content(head: bytes):
    """/url/NAME answers a JSON body naming /content/NAME (or /nowhere: 404); the content
    is SMALL, ranged. Counts the requests in flight at once."""
    path = head.split(b" ")[1].decode()
    with url_or_content.lock:
        url_or_content.now += 1
        url_or_content.most = max(url_or_content.most, url_or_content.now)
    try:
        threading.Event().wait(0.02)            # a round trip: jobs overlap
        if path == "/url/nowhere":
            return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        if path.startswith("/url/"):
            body = ('{"u": "/content/%s"}' % path[5:]).encode()
            return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        return small_partial(head)
    finally:
        with url_or_content.lock:
            url_or_content.now -= 1


@pytest.mark.parametrize("threaded", [True, False])
async def test_a_pending_target_asks_for_its_url_and_probes_in_one_job(threaded):
    """Pending targets (a URL still to be asked for): each job makes the URL request and
    then the probe, two requests per file and no more; what a request found is kept;
    one whose URL cannot be had is left to the caller. At most `limiter`'s tokens of
    jobs run at once, one request each at a time."""
    from recfs.http import Pending
    url_or_content.lock, url_or_content.now, url_or_content.most = threading.Lock(), 0, 0
    kept: dict[str, str] = {}
    names = [f"f{i}" for i in range(12)] + ["nowhere"]
    limiter = trio.CapacityLimiter(4)
    async with serving(url_or_content, threaded) as (server, http):
        def pending(name: str) -> Pending:
            def read(resp) -> str:
                if resp.status_code != 200:
                    raise HttpError(f"HTTP {resp.status_code}", resp.status_code)
                return server.url + resp.json()["u"]
            return Pending(f"{server.url}/url/{name}", {"Authorization": "Bearer t"}, read,
                           lambda url, name=name: kept.__setitem__(name, url), {})
        jobs = [(pending(n), lambda pos, data: None, 1) for n in names]
        rate = http.limiter(server.url)
        turns = []
        taking = rate.turn

        async def counted() -> None:
            turns.append(1)
            await taking()
        rate.turn = counted
        sizes = await http.get_heads(jobs, limiter=limiter)
    assert sizes == [len(SMALL)] * 12 + [None]
    asked = collections.Counter(r.split(b" ")[1].decode().split("/")[1] for r in server.requests)
    assert asked == {"url": 13, "content": 12}
    assert all(b"Authorization: Bearer t" in r for r in server.requests if b" /url/" in r)
    assert kept == {n: f"{server.url}/content/{n}" for n in names[:12]}
    assert url_or_content.most <= 4
    assert http.requests == 25 and http.batched_requests == (25 if threaded else 0)
    assert len(turns) == 25         # each request on its own turn at the rate limiter
    assert limiter.statistics().borrowed_tokens == 0


async def test_a_probe_connection_the_server_closed_while_pooled_is_replaced():
    answered = []

    def close_after_the_first(head: bytes):
        answered.append(head)
        # the first answer says nothing of closing, and then the server closes
        return (small_partial(head), "close") if len(answered) == 1 else small_partial(head)

    async with serving(close_after_the_first) as (server, http):
        assert (await heads(http, server.url, ["/a"], ends=[1]))[0] == [len(SMALL)]
        assert sum(len(streams) for streams in http.async_ranges._idle.values()) == 1
        sizes, got = await heads(http, server.url, ["/b"], ends=[100])
        assert sizes == [len(SMALL)] and bytes(got["/b"]) == SMALL[:100]
        assert server.connections == 2
