"""Throttling, server errors, broken and lying transfers, through a real mount.

Every case ends the same way: the read returned the source's bytes, or it failed
with EIO and the daemon's log has a line naming the file and the cause; then the
faults are cleared, the file is read again and compared byte for byte, and every
chunk the cache index records is compared with the source (the cache never keeps
bad bytes).
"""
from __future__ import annotations

import email.utils
import errno
import itertools
import re
import subprocess
import time

import pytest

from recfs.emulators.base import Fault, PatternBlob, Response
from tests.faults import (SOURCE, Mount, TamperingAlvaria, config_for, current_versions,
                          errno_name, read_or_errno, verify_cache)

pytestmark = pytest.mark.e2e

SMALL = 300_000                      # under the reader's small-file limit: one fetch
BIG = 6 * 1024 * 1024 + 7            # over it: head/tail prefetch and a read window
NAMES = 24


@pytest.fixture(scope="module")
def emu():
    emu = TamperingAlvaria()
    for i in range(NAMES):
        emu.put(f"faults/small/s{i:02d}.wav", PatternBlob(1000 + i, SMALL + i))
        emu.put(f"faults/big/b{i:02d}.wav", PatternBlob(2000 + i, BIG + i))
    with emu:
        yield emu


@pytest.fixture(scope="module")
def mount(emu, tmp_path_factory):
    work = tmp_path_factory.mktemp("transport")
    m = Mount(config_for(emu, work / "cache"), work, "mnt")
    m.start()
    # learn every size before any fault is armed: the size probes use the s3 route too
    subprocess.run(["ls", "-lR", str(m.path / SOURCE)], check=True, capture_output=True)
    yield m
    m.unmount()


_counter = itertools.count()


@pytest.fixture
def fresh(emu, mount):
    """fresh('small'|'big') -> (key, path) of a file no other test has read."""
    def pick(kind: str):
        i = next(_counter)
        assert i < NAMES, "add more files to the module's emulator"
        key = f"faults/{kind}/{kind[0]}{i:02d}.wav"
        return key, mount.path / SOURCE / key
    yield pick
    emu.faults.clear()
    emu.tamper = None


def expect_right_bytes(emu, key, path):
    got = read_or_errno(path)
    want = emu.objects[key].blob.all_bytes()
    assert isinstance(got, bytes), f"{key}: read failed with {errno_name(got)}"
    assert got == want, f"{key}: wrong bytes"


def expect_eio_with_log(mount, mark, key, path, cause: str):
    got = read_or_errno(path)
    assert got == errno.EIO, f"{key}: expected EIO, got {errno_name(got)}"
    lines = [line for line in mount.log_since(mark).splitlines()
             if " ERROR " in line and key in line and cause in line]
    assert lines, f"no ERROR line naming {key} and {cause!r} in:\n{mount.log_since(mark)}"


def recovers_after_clearing(emu, mount, key, path):
    emu.faults.clear()
    emu.tamper = None
    expect_right_bytes(emu, key, path)
    verify_cache(mount.config.parent / "cache", current_versions(emu))


def retry_delays(log: str, key: str, cause: str) -> list[float]:
    return [float(d) for d in re.findall(rf"{re.escape(key)}: {re.escape(cause)}; retrying in ([\d.]+)s", log)]


# -------------------------------------------------------------------- throttling

def test_429_without_retry_after_is_retried_with_backoff(emu, mount, fresh):
    key, path = fresh("small")
    mark = mount.log_mark()
    emu.faults.add(Fault("status", route="s3", status=429, times=2,
                         body=b'{"message":"Too Many Requests"}'))
    expect_right_bytes(emu, key, path)
    assert emu.faults.fired["status"] == 2
    delays = retry_delays(mount.log_since(mark), key, "HTTP 429")
    assert len(delays) == 2 and all(d <= 0.4 for d in delays)   # the first two backoff steps


@pytest.mark.parametrize("headers, low, high", [
    ({"Retry-After": "2"}, 2.0, 2.0),
    ({"x-ratelimit-reset": "1"}, 1.0, 1.0),
    ({"x-ratelimit-reset": "EPOCH+3"}, 1.0, 3.0),
    ({"Retry-After": "HTTPDATE+3"}, 1.0, 3.0),
], ids=["retry-after-seconds", "ratelimit-reset-seconds", "ratelimit-reset-epoch",
        "retry-after-http-date"])
def test_429_waits_as_long_as_the_server_asks(emu, mount, fresh, headers, low, high):
    key, path = fresh("small")
    now = time.time()
    headers = {k: (str(int(now) + 3) if v == "EPOCH+3" else
                   email.utils.formatdate(now + 3, usegmt=True) if v == "HTTPDATE+3" else v)
               for k, v in headers.items()}
    mark = mount.log_mark()
    fired = emu.faults.fired["status"]
    emu.faults.add(Fault("status", route="s3", status=429, times=1, headers=headers))
    expect_right_bytes(emu, key, path)
    assert emu.faults.fired["status"] - fired == 1
    delays = retry_delays(mount.log_since(mark), key, "HTTP 429")
    assert len(delays) == 1 and low <= delays[0] <= high, delays


def test_429_with_a_garbage_retry_after_falls_back_to_backoff(emu, mount, fresh):
    key, path = fresh("small")
    mark = mount.log_mark()
    fired = emu.faults.fired["status"]
    emu.faults.add(Fault("status", route="s3", status=429, times=2, headers={"Retry-After": "soon"}))
    expect_right_bytes(emu, key, path)
    assert emu.faults.fired["status"] - fired == 2
    assert not [line for line in mount.log_since(mark).splitlines() if " ERROR " in line]


# -------------------------------------------------------------------- server errors

@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_retried(emu, mount, fresh, status):
    key, path = fresh("small")
    mark = mount.log_mark()
    fired = emu.faults.fired["status"]
    emu.faults.add(Fault("status", route="s3", status=status, times=3))
    expect_right_bytes(emu, key, path)
    assert emu.faults.fired["status"] - fired == 3
    assert len(retry_delays(mount.log_since(mark), key, f"HTTP {status}")) == 3


def test_a_server_error_that_persists_gives_eio_within_the_retry_bound(emu, mount, fresh):
    key, path = fresh("small")
    mark = mount.log_mark()
    before = emu.count("s3")
    fired = emu.faults.fired["status"]
    emu.faults.add(Fault("status", route="s3", status=503, times=-1))
    expect_eio_with_log(mount, mark, key, path, "HTTP 503")
    tries = emu.count("s3") - before
    assert emu.faults.fired["status"] - fired >= max(1, tries)     # every try met the 503
    # 6 tries per fetch; the kernel may ask a failed page once more
    assert 6 <= tries <= 18, tries
    recovers_after_clearing(emu, mount, key, path)


def test_a_storage_403_that_persists_renews_the_url_once_then_eio(emu, mount, fresh):
    key, path = fresh("small")
    mark = mount.log_mark()
    urls = emu.count("signedUrl")
    before, fired = emu.count("s3"), emu.faults.fired["status"]
    emu.faults.add(Fault("status", route="s3", status=403, times=-1,
                         body=b"<Error><Code>AccessDenied</Code></Error>"))
    expect_eio_with_log(mount, mark, key, path, "HTTP 403")
    tries = emu.count("s3") - before
    assert emu.faults.fired["status"] - fired >= max(1, tries)     # every try met the 403
    assert emu.count("signedUrl") > urls
    recovers_after_clearing(emu, mount, key, path)


# -------------------------------------------------------------------- broken bodies

@pytest.mark.parametrize("kind", ["reset", "truncate"])
@pytest.mark.parametrize("size", ["small", "big"])
def test_a_body_broken_midway_is_resumed(emu, mount, fresh, kind, size):
    key, path = fresh(size)
    mark = mount.log_mark()
    fired = emu.faults.fired[kind]
    emu.faults.add(Fault(kind, route="s3", times=2, after_bytes=100_000))
    expect_right_bytes(emu, key, path)
    assert emu.faults.fired[kind] >= 2
    assert emu.faults.fired[kind] - fired == 2                      # this test's two, not earlier ones
    assert f"{key}: connection broken mid-body; retrying" in mount.log_since(mark)
    verify_cache(mount.config.parent / "cache", current_versions(emu))


def test_a_body_broken_every_time_gives_eio(emu, mount, fresh):
    key, path = fresh("small")
    mark = mount.log_mark()
    before, fired = emu.count("s3"), emu.faults.fired["reset"]
    emu.faults.add(Fault("reset", route="s3", times=-1, after_bytes=1000))
    expect_eio_with_log(mount, mark, key, path, "giving up")
    tries = emu.count("s3") - before
    assert emu.faults.fired["reset"] - fired >= max(1, tries)      # every try was broken
    recovers_after_clearing(emu, mount, key, path)


def test_a_stall_shorter_than_the_read_timeout_then_a_reset_is_resumed(emu, mount, fresh):
    key, path = fresh("small")
    emu.faults.add(Fault("stall", route="s3", times=1, after_bytes=64 * 1024, seconds=2.0))
    expect_right_bytes(emu, key, path)
    assert emu.faults.fired["stall"] == 1


# -------------------------------------------------------------------- Range ignored, lying headers

def test_a_server_ignoring_range_still_gives_the_right_bytes(emu, mount, fresh):
    key, path = fresh("big")
    emu.faults.add(Fault("ignore_range", route="s3", times=-1))
    want = emu.objects[key].blob.all_bytes()
    for offset, length in [(5 * 1024 * 1024, 4096), (123_457, 200_000), (0, 10), (BIG - 50, 100)]:
        got = read_or_errno(path, offset, length)
        assert got == want[offset:offset + length], (offset, errno_name(got))
    assert emu.faults.fired["ignore_range"] >= 1
    expect_right_bytes(emu, key, path)


def _short_content_length(req, resp: Response) -> Response:
    start, end = resp.body_range
    resp.body_range = (start, max(start, end - 1000))     # Content-Range still claims all of it
    return resp


def _long_body(req, resp: Response) -> Response:
    start, end = resp.body_range
    resp.body_range = (start, min(resp.body.size, end + 5000))   # more than Content-Range says
    return resp


@pytest.mark.parametrize("lie", [_short_content_length, _long_body],
                         ids=["content-length-short", "body-longer-than-range"])
def test_a_content_length_that_lies_is_detected_and_retried(emu, mount, fresh, lie):
    key, path = fresh("small")
    emu.tamper, emu.tamper_times = lie, 2
    expect_right_bytes(emu, key, path)
    assert emu.tamper_times < 2                 # at least one answer lied
    verify_cache(mount.config.parent / "cache", current_versions(emu))


def _shifted_range(req, resp: Response) -> Response:
    start, end = resp.body_range
    resp.headers["Content-Range"] = f"bytes {start + 1}-{end}/{resp.body.size}"
    return resp


def _other_total(req, resp: Response) -> Response:
    start, end = resp.body_range
    resp.headers["Content-Range"] = f"bytes {start}-{end - 1}/{resp.body.size + 1}"
    return resp


@pytest.mark.parametrize("lie, cause", [(_shifted_range, "asked for bytes"),
                                        (_other_total, "the object is now")],
                         ids=["content-range-shifted", "content-range-total"])
def test_a_content_range_that_lies_gives_eio_never_garbage(emu, mount, fresh, lie, cause):
    key, path = fresh("small")
    mark = mount.log_mark()
    emu.tamper, emu.tamper_times = lie, -1
    expect_eio_with_log(mount, mark, key, path, cause)
    recovers_after_clearing(emu, mount, key, path)


# -------------------------------------------------------------------- the cache afterwards

def test_zz_after_all_faults_the_cache_holds_only_right_bytes(emu, mount):
    """Runs last in this module: after a clean unmount (which flushes the index),
    every recorded chunk is compared with the source."""
    mount.unmount()
    checked = verify_cache(mount.config.parent / "cache", current_versions(emu))
    assert checked > 0
