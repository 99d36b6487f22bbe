"""Shared helpers of the fault, hostile-input and security tests (issue 7).

Everything here drives a real `recfs mount` subprocess against a loopback Alvaria
emulator; the checks look at what a user sees (bytes, errno), at the daemon's log,
at its /proc entries and at the cache directory it leaves behind.
"""
from __future__ import annotations

import errno
import os
import sqlite3
import time
from pathlib import Path
from typing import Callable

from recfs.content.cache import CHUNK, key_hash
from recfs.emulators.alvaria import AlvariaEmulator, iso_ms, kb_string, source_table
from recfs.emulators.base import Blob, Request, Response
from tests.conftest import MountedRecfs, toml_config

SOURCE = "alv"


class Mount(MountedRecfs):
    """A MountedRecfs with the helpers the fault tests use."""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_since(self, offset: int) -> str:
        return self.log_text()[offset:]

    def log_mark(self) -> int:
        return len(self.log_text())


def config_for(emu: AlvariaEmulator, cache_dir: Path, *, cache: dict | None = None,
               extra_text: str = "", **table_extra) -> str:
    table = source_table(emu, SOURCE)
    table.update(table_extra)
    # the tests read files one after another and arm a fault for each just before its
    # read: fetching the next files ahead (sibling prefetch) would get them first
    no_prefetch = "sibling_prefetch = 0\n"
    if "[tuning]" in extra_text:
        extra_text = extra_text.replace("[tuning]\n", "[tuning]\n" + no_prefetch, 1)
    else:
        extra_text += "\n[tuning]\n" + no_prefetch
    return toml_config([table], cache_dir=cache_dir, cache=cache) + extra_text


def version_key(key: str, blob: Blob, mtime: float) -> str:
    """The id@version part of the cache key the Alvaria source gives this object."""
    return f"{key}@{iso_ms(mtime)}|{kb_string(blob.size)}"


def current_versions(emu: AlvariaEmulator) -> dict[str, Blob]:
    return {version_key(k, o.blob, o.mtime): o.blob for k, o in emu.objects.items()}


def verify_cache(cache_dir: Path, blobs: dict[str, Blob], source: str = SOURCE,
                 only: str = "") -> int:
    """Compare every chunk the cache index records as present with the source's bytes.

    `blobs` maps id@version to the content that version had; `only` limits the check
    to object ids starting with it. Returns the number of
    chunks compared; raises AssertionError on the first wrong byte or unknown entry.
    """
    db = sqlite3.connect(f"file:{cache_dir / 'index.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT key, size, bitmap, present FROM entries").fetchall()
    finally:
        db.close()
    prefix = f"alvaria:{source}:"
    checked = 0
    for key, size, bitmap, present in rows:
        assert key.startswith(prefix), key
        if not key.startswith(prefix + only):
            continue
        blob = blobs.get(key[len(prefix):])
        assert blob is not None, f"cache entry for an unknown object version: {key}"
        assert size == blob.size, f"{key}: cached size {size}, source {blob.size}"
        if present == 0:
            continue
        path = cache_dir / "data" / key_hash(key)[:2] / key_hash(key)
        with open(path, "rb") as f:
            for i in range((size + CHUNK - 1) // CHUNK):
                if bitmap[i >> 3] & (1 << (i & 7)):
                    f.seek(i * CHUNK)
                    n = min(CHUNK, size - i * CHUNK)
                    assert f.read(n) == blob.read(i * CHUNK, n), f"{key}: chunk {i} holds wrong bytes"
                    checked += 1
    return checked


def read_or_errno(path: Path, offset: int = 0, length: int | None = None) -> bytes | int:
    """The bytes a read returns, or the errno it failed with."""
    try:
        with open(path, "rb", buffering=0) as f:
            if length is None:
                f.seek(offset)
                return f.read()
            return os.pread(f.fileno(), length, offset)
    except OSError as exc:
        return exc.errno


def forget_pages(path: Path) -> None:
    """Drop the kernel's page cache of one file, so the next read reaches the daemon."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def fd_targets(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return out


def established_to(pid: int, port: int) -> int:
    """TCP connections of process `pid` in ESTABLISHED state to local port `port`."""
    inodes = {t[len("socket:["):-1] for t in fd_targets(pid) if t.startswith("socket:[")}
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if fields[3] == "01" and remote_port == port and fields[9] in inodes:
                count += 1
    return count


def errno_name(value: bytes | int) -> str:
    return errno.errorcode.get(value, str(value)) if isinstance(value, int) else f"{len(value)} bytes"


class TamperingAlvaria(AlvariaEmulator):
    """An Alvaria emulator whose storage (s3) answers can be made to lie, and whose
    listings can be replaced by crafted items for given prefixes."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.tamper: Callable[[Request, Response], Response] | None = None
        self.tamper_times = 0
        self.crafted: dict[str, list] = {}          # prefix -> raw objectKeys items
        self.raw_listing: dict[str, bytes] = {}     # prefix -> raw response body

    def _s3_get(self, req: Request) -> Response:
        resp = super()._s3_get(req)
        if self.tamper is not None and self.tamper_times != 0 and resp.status == 206:
            if self.tamper_times > 0:
                self.tamper_times -= 1
            resp = self.tamper(req, resp)
        return resp

    def _list(self, prefix: str, key_type: str) -> list:
        if prefix in self.crafted:
            return self.crafted[prefix]
        return super()._list(prefix, key_type)

    def _object_keys(self, req: Request) -> Response:
        key = req.query.get("key") or ""
        if key in self.raw_listing and req.query.get("keyType") == "file:directory":
            denied = self._check_auth(req)
            if denied:
                return denied
            return Response(200, {"Content-Type": "application/json"}, self.raw_listing[key])
        return super()._object_keys(req)
