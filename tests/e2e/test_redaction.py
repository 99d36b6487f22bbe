"""Secrets and issued credentials of every provider stay out of the daemon's debug log
(docs/SEMANTICS.md §8), one test per provider: each mount reads files, has its tokens
(and signed URLs) expire and renewed through the emulator's own mechanisms, and meets
injected faults so that retry and error lines are written; then no secret value, no
issued token and no URL signature is in the log, which does show that activity.
Then services that echo the credentials a request carried in an error message: the
message is logged with *** in their place.

Alvaria is covered by tests/faults/test_security.py
(test_secrets_never_reach_argv_the_process_title_or_the_debug_log and
test_a_service_echoing_a_secret_in_an_error_does_not_put_it_in_the_log).
"""
from __future__ import annotations

import base64
import datetime as dt
import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from recfs.emulators import eightbyeight, kazoo, oce
from recfs.emulators.base import Fault, PatternBlob
from tests.conftest import toml_config
from tests.e2e import tree_files

pytestmark = pytest.mark.e2e

UTC = dt.timezone.utc
# quick failures (two tries), and reads that fetch only the file they read
TUNING = "\n[tuning]\nretry_attempts = 2\nretry_base_delay = 0.05\nsibling_prefetch = 0\n"


def read(path: Path) -> bytes | int:
    try:
        return path.read_bytes()
    except OSError as exc:
        return exc.errno


def final_log(recfs_mount) -> str:
    m = recfs_mount.mounts[-1]
    m.unmount()                       # everything the daemon had to say is in the file
    return m.log_text()


def assert_kept_out(log: str, secrets: dict[str, list[str]]) -> None:
    leaks = sorted({what for what, values in secrets.items() for v in values if v and v in log})
    assert not leaks, f"in the debug log: {leaks}"


def assert_activity(log: str, *needles: str) -> None:
    """The log is a debug log of this run, not an empty or truncated one."""
    lines = log.splitlines()
    assert sum(" recfs." in line for line in lines) >= 5, log[-3000:]     # not only pyfuse3's
    for needle in needles:
        assert any(needle in line for line in lines), f"no line with {needle!r} in:\n{log[-3000:]}"


def error_line_about(log: str, name: str) -> bool:
    return any(" ERROR " in line and name in line for line in log.splitlines())


# ---------------------------------------------------------------------- 8x8

def test_8x8_client_secret_bearer_tokens_and_presigned_signatures_stay_out_of_the_log(recfs_mount):
    emu = eightbyeight.EightByEight(client_id="id8x8-3c9f1a7e52", client_secret="sec8x8-b41d07e9c6",
                                    regions=("us-east",), presign_lifetime=900)
    for day in (2, 3, 4):
        for i in range(2):
            emu.add_object("us-east", "callrecording", f"call-{day}{i}.wav",
                           PatternBlob(80 + 10 * day + i, 300_000 + i),
                           dt.datetime(2024, 9, day, 9 + i, tzinfo=UTC))
    with emu:
        table = eightbyeight.source_table(emu, "8x8")
        table.update(presign=True, bulk="never")
        mnt = recfs_mount(toml_config([table]) + TUNING) / "8x8"
        days = mnt / "us-east/callrecording/2024/09"
        subprocess.run(["ls", "-lR", str(mnt)], check=True, capture_output=True)
        want = {o.objectName: o.blob.all_bytes() for o in emu.objects.values()}
        assert read(days / "02/call-20.wav") == want["call-20.wav"]
        tokens, urls = emu.count("token"), emu.count("content")

        # every bearer token and presigned URL issued so far expires; the first token
        # request after that fails once (a retry line)
        emu.expire_tokens()
        emu.advance(3600)
        token_fault = emu.faults.add(Fault("status", route="token", status=500, times=1,
                                           body=b'{"ErrorCode": "server_error"}'))
        assert read(days / "03/call-30.wav") == want["call-30.wav"]
        assert token_fault.times == 0 and emu.faults.fired["status"] == 1
        assert emu.count("token") >= tokens + 2          # the failed request and the renewal
        assert emu.count("content") > urls               # a new presigned URL

        # presigned GETs fail for good: EIO and an error line
        emu.faults.add(Fault("status", route="presigned", status=503, times=-1))
        assert read(days / "04/call-40.wav") == errno.EIO
        assert emu.faults.fired["status"] >= 2
        emu.faults.clear()
        assert read(days / "04/call-41.wav") == want["call-41.wav"]
        log = final_log(recfs_mount)
    assert len(emu.tokens) >= 2 and len(emu.presigned) >= 3      # renewed, several files
    assert_kept_out(log, {"client id": [emu.client_id], "client secret": [emu.client_secret],
                          "bearer token": list(emu.tokens), "presigned URL signature": list(emu.presigned)})
    assert_activity(log, "HTTP 500; retrying", "HTTP 503")
    assert error_line_about(log, "call-40.wav"), log[-3000:]


# ---------------------------------------------------------------------- OCE

def _oce_emulator() -> oce.OceEmulator:
    emu = oce.OceEmulator(client_id="oce-client-2b7d", client_secret="ocesec-9f31c2aa84e0",
                          username="exporter.7f2a", password="ocepw-5e8b1d3c77", token_lifetime=600)
    rec = emu.add_folder("self", "Recordings")
    for d in range(3):
        day = emu.add_folder(rec, f"2024-05-0{d + 1}")
        for k in range(2):
            emu.add_file(day, f"call-{d}{k}.wav", PatternBlob(300 + 10 * d + k, 250_000 + k))
    return emu


def _oce_mount(emu, recfs_mount, basic: bool) -> Path:
    table = oce.source_table(emu, "oce", basic=basic, page_size=100, job_poll_interval=0.02)
    mnt = recfs_mount(toml_config([table]) + TUNING) / "oce"
    subprocess.run(["ls", "-lR", str(mnt)], check=True, capture_output=True)
    return mnt / "Recordings"


def _oce_want(emu) -> dict[str, bytes]:
    return {n.name: n.blob.all_bytes() for n in emu.files()}


def test_oce_oauth_client_secret_and_tokens_stay_out_of_the_log(recfs_mount):
    emu = _oce_emulator()
    with emu:
        rec = _oce_mount(emu, recfs_mount, basic=False)
        want = _oce_want(emu)
        assert read(rec / "2024-05-01/call-00.wav") == want["call-00.wav"]
        tokens = emu.tokens_issued
        assert tokens >= 1

        # the token expires on the service's clock (the daemon learns it from a 401),
        # and the first request for a new one fails once
        emu.advance(700)
        token_fault = emu.faults.add(Fault("status", route="token", status=500, times=1,
                                           body=b'{"error": "temporarily_unavailable"}'))
        assert read(rec / "2024-05-02/call-10.wav") == want["call-10.wav"]
        assert token_fault.times == 0 and emu.faults.fired["status"] == 1
        assert emu.tokens_issued > tokens                # renewed

        emu.faults.add(Fault("status", route="data", status=503, times=-1))
        assert read(rec / "2024-05-03/call-20.wav") == errno.EIO
        assert emu.faults.fired["status"] >= 2
        emu.faults.clear()
        assert read(rec / "2024-05-03/call-21.wav") == want["call-21.wav"]
        log = final_log(recfs_mount)
    assert len(emu.tokens) >= 2
    assert_kept_out(log, {"client secret": [emu.client_secret], "bearer token": list(emu.tokens)})
    assert_activity(log, "HTTP 500; retrying", "HTTP 503")
    assert error_line_about(log, "call-20.wav"), log[-3000:]


def test_oce_basic_auth_password_and_authorization_value_stay_out_of_the_log(recfs_mount):
    emu = _oce_emulator()
    basic = base64.b64encode(f"{emu.username}:{emu.password}".encode()).decode()
    with emu:
        rec = _oce_mount(emu, recfs_mount, basic=True)
        want = _oce_want(emu)
        assert read(rec / "2024-05-01/call-00.wav") == want["call-00.wav"]
        assert emu.tokens_issued == 0                    # Basic auth: no tokens

        # a listing fails once (retried), and content fails for good
        emu.faults.add(Fault("status", route="items", status=500, times=1))
        os.setxattr(rec.parent.parent, "user.recfs.refresh", b"oce/Recordings")
        assert sorted(os.listdir(rec)) == ["2024-05-01", "2024-05-02", "2024-05-03"]
        assert emu.faults.fired["status"] == 1
        emu.faults.add(Fault("status", route="data", status=503, times=-1))
        assert read(rec / "2024-05-03/call-20.wav") == errno.EIO
        assert emu.faults.fired["status"] >= 3
        emu.faults.clear()
        assert read(rec / "2024-05-02/call-10.wav") == want["call-10.wav"]
        log = final_log(recfs_mount)
    assert_kept_out(log, {"password": [emu.password], "Authorization: Basic value": [basic]})
    assert_activity(log, "HTTP 500; retrying", "HTTP 503")
    assert error_line_about(log, "call-20.wav"), log[-3000:]


# ---------------------------------------------------------------------- Kazoo

def _jwt_parts(tokens) -> list[str]:
    """Each token whole, and its payload and signature (a part of one is a leak too)."""
    out = []
    for t in tokens:
        out.append(t)
        out += t.split(".")[1:]
    return out


def test_kazoo_api_key_and_auth_tokens_stay_out_of_the_log(recfs_mount):
    emu = kazoo.demo(5, bucket_tokens=None)
    with emu:
        mnt = recfs_mount(toml_config([kazoo.source_table(emu, "kazoo")]) + TUNING) / "kazoo"
        files = tree_files(mnt)                          # lists every window: tokens in use
        subprocess.run(["ls", "-lR", str(mnt)], check=True, capture_output=True)
        by_id = {}
        for rel, path in files.items():
            if "/users/" not in rel:
                by_id.setdefault(os.getxattr(path, "user.kazoo.recording_id").decode(), path)
        ids = sorted(by_id, key=lambda rid: str(by_id[rid]))
        assert len(ids) >= 4
        a, b, c, d = (by_id[rid] for rid in ids[:4])
        want = {rid: emu.recordings[rid].blob.all_bytes() for rid in ids[:4]}
        assert read(a) == want[ids[0]]
        issued = set(emu.tokens)
        logins = emu.count("api_auth")

        # every token is revoked (401); the first login after that fails once
        emu.revoke_tokens()
        login_fault = emu.faults.add(Fault("status", route="api_auth", status=500, times=1))
        assert read(b) == want[ids[1]]
        assert login_fault.times == 0 and emu.faults.fired["status"] == 1
        assert emu.count("api_auth") >= logins + 2       # the failed login and the renewal
        issued |= set(emu.tokens)

        # and the tokens expire on the service's clock, then are renewed again
        emu.advance(2 * 3600)
        emu.soft_delete(ids[2])                          # its 404 answer echoes the token
        got = read(c)
        assert got in (errno.EIO, errno.ENOENT), got
        issued |= set(emu.tokens)
        emu.faults.add(Fault("status", route="media", status=503, times=-1))
        assert read(d) == errno.EIO
        assert emu.faults.fired["status"] >= 3
        emu.faults.clear()
        issued |= set(emu.tokens)
        log = final_log(recfs_mount)
    assert len(issued) >= 3                              # first, after the revocation, after expiry
    assert_kept_out(log, {"API key": [emu.demo_key], "auth token": _jwt_parts(issued)})
    assert_activity(log, "HTTP 500; retrying", "HTTP 503")
    assert error_line_about(log, c.name) and error_line_about(log, d.name), log[-3000:]


# ---------------------------------------------------------------------- echoed credentials

def _basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def _echo(status: int, route: str, text: str) -> Fault:
    """A service answering an error whose message repeats what the request carried."""
    body = {"errorCode": str(status), "message": text, "errorMessage": text}
    return Fault("status", route=route, status=status, times=-1, body=json.dumps(body).encode())


class _Echoing:
    """One provider's emulator and mount, a folder to list, and how its credentials
    go: the route of a listing and of a login, what a login sends, how tokens end."""

    def __init__(self, provider: str, recfs_mount, basic: bool = False):
        self.provider = provider
        if provider == "8x8":
            emu = eightbyeight.EightByEight(client_id="id8x8-3c9f1a7e52", client_secret="sec8x8-b41d07e9c6",
                                            regions=("us-east",))
            emu.add_object("us-east", "callrecording", "call-0.wav", PatternBlob(90, 5000),
                           dt.datetime(2024, 9, 2, 9, tzinfo=UTC))
            self.listing, self.login = "objects", "token"
            self.secret = emu.client_secret
            self.basic = _basic(emu.client_id, emu.client_secret)
            self.expire = emu.expire_tokens
        elif provider == "oce":
            emu = _oce_emulator()
            self.listing, self.login = "items", "token"
            self.secret = emu.password if basic else emu.client_secret
            self.basic = _basic(emu.username, emu.password) if basic else _basic(emu.client_id, emu.client_secret)
            self.expire = lambda: emu.advance(7200)
        else:
            emu = kazoo.demo(5, bucket_tokens=None)
            self.listing, self.login = "list", "api_auth"
            self.secret = emu.demo_key
            self.basic = None
            self.expire = emu.revoke_tokens
        self.emu = emu.start()
        if provider == "8x8":
            table = eightbyeight.source_table(emu, "8x8")
        elif provider == "oce":
            table = oce.source_table(emu, "oce", basic=basic)
        else:
            table = kazoo.source_table(emu, "kazoo")
        self.mnt = recfs_mount(toml_config([table]) + TUNING)
        self.root = self.mnt / provider
        if provider == "8x8":
            self.folder = self.root / "us-east/callrecording/2024/09/02"
        elif provider == "oce":
            self.folder = self.root / "Recordings/2024-05-01"
        else:
            self.folder = next(Path(p).parent for p in sorted(map(str, tree_files(self.root).values()))
                               if "/users/" not in p)
        self.issued: set[str] = set()
        self.note_tokens()

    def note_tokens(self) -> None:
        self.issued |= set(self.emu.tokens)

    def newest_token(self) -> str:
        return list(self.emu.tokens)[-1]

    def relist_fails(self) -> None:
        """List the folder again; the listing fails (an injected fault)."""
        os.setxattr(self.mnt, "user.recfs.refresh", self.provider.encode())
        with pytest.raises(OSError):
            os.listdir(self.folder)


@pytest.mark.parametrize("provider", ["8x8", "oce", "kazoo"])
def test_a_token_or_secret_a_service_echoes_in_an_error_is_redacted(recfs_mount, provider):
    """Services that repeat the request's credentials in an error message (the bearer
    token or JWT sent, the client secret or API key of a login): the message reaches
    the log, the credentials are replaced by ***."""
    svc = _Echoing(provider, recfs_mount)
    try:
        assert os.listdir(svc.folder)
        svc.note_tokens()
        token = svc.newest_token()
        svc.emu.faults.add(_echo(400, svc.listing, f"request refused for token {token}"))
        svc.relist_fails()
        assert svc.emu.faults.fired["status"] >= 1
        svc.emu.faults.clear()

        svc.expire()                                     # the next request logs in again
        svc.emu.faults.add(_echo(500, svc.login, f"login refused for secret {svc.secret}"))
        svc.relist_fails()
        assert svc.emu.faults.fired["status"] >= 3       # one listing, two login tries
        svc.emu.faults.clear()
        svc.note_tokens()
        log = final_log(recfs_mount)
    finally:
        svc.emu.stop()
    assert_kept_out(log, {"token": _jwt_parts(svc.issued), "secret": [svc.secret]})
    errors = [line for line in log.splitlines() if " ERROR " in line]
    echoed = [line for line in errors if "request refused for token" in line]
    assert echoed, log[-3000:]                           # the message was logged...
    assert all("request refused for token ***" in line for line in echoed), echoed   # ...redacted
    logins = [line for line in errors if "login refused for secret" in line]
    if provider != "kazoo":       # (Kazoo's failed api_auth is logged without its message)
        assert logins, log[-3000:]
    assert all("login refused for secret ***" in line for line in logins), logins


@pytest.mark.parametrize("provider, basic", [("8x8", False), ("oce", False), ("oce", True)],
                         ids=["8x8-token-endpoint", "oce-token-endpoint", "oce-basic-auth"])
def test_http_basic_credentials_a_service_echoes_in_an_error_are_redacted(recfs_mount, provider, basic):
    svc = _Echoing(provider, recfs_mount, basic=basic)
    try:
        assert os.listdir(svc.folder)
        if basic:                                        # every request carries the Basic value
            route = svc.listing
        else:                                            # the token request does
            svc.expire()
            route = svc.login
        svc.emu.faults.add(_echo(500, route, f"refused: Authorization: Basic {svc.basic}"))
        svc.relist_fails()
        assert svc.emu.faults.fired["status"] >= 2
        svc.emu.faults.clear()
        log = final_log(recfs_mount)
    finally:
        svc.emu.stop()
    assert any(" ERROR " in line and "refused: Authorization: Basic" in line for line in log.splitlines())
    assert_kept_out(log, {"HTTP Basic credential": [svc.basic], "secret": [svc.secret]})
