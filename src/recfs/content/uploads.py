"""Staged uploads: files written into a writable folder of the mount (Alvaria
`imports/…`) are kept on local disk until the service has them.

Invariants:
 U1. A staged file's record (`<id>.json`) is written before its first upload try
     and removed only after the service accepted the bytes; so a failed upload, a
     crash or an unmount never loses a file that close() did not confirm.
 U2. The record names the source, folder and file name; the same file uploaded
     twice lands under the same key (an overwrite), so a retried upload lands once.
 U3. Pending uploads are retried after the next close() of any file of the mount
     (in the background: that close() reports its own file only), at the next
     mount, and every `retry_interval` seconds; `recfs status` lists them.
 U4. Only a file that was closed is ever sent: one whose writer was cut short (the
     daemon died mid-write) stays staged, is reported, and is not uploaded.
"""
from __future__ import annotations

import enum
import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import trio

log = logging.getLogger("recfs.uploads")


class UploadState(enum.Enum):
    WRITING = "writing"     # being written: never sent in this state (U4)
    WAITING = "waiting"     # closed, complete: to be sent (again, after a failure)


@dataclass
class Staged:
    id: str
    source: str
    dir_ref: Any
    name: str
    size: int = 0
    created: float = field(default_factory=time.time)
    attempts: int = 0
    last_error: str = ""
    state: UploadState = UploadState.WRITING

    def record(self) -> dict:
        return {**asdict(self), "state": self.state.value}

    @classmethod
    def from_record(cls, data: dict) -> "Staged":
        closed = data.pop("closed", None)       # records written before the state existed
        state = data.pop("state", None) or ("waiting" if closed else "writing")
        return cls(**data, state=UploadState(state))


class Uploads:
    def __init__(self, directory: Path, sources: dict, retry_interval: float = 60.0):
        self.dir = Path(directory)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.sources = sources          # name -> Source
        self.retry_interval = retry_interval
        self.pending: dict[str, Staged] = {}
        self.on_uploaded: Callable[[Staged], None] = lambda st: None   # told of each upload that landed
        self._locks: dict[str, trio.Lock] = {}
        self._retrying = False
        self.uploaded = 0
        self.failed = 0
        for rec in sorted(self.dir.glob("*.json")):
            try:
                st = Staged.from_record(json.loads(rec.read_text()))
                if (self.dir / f"{st.id}.data").exists():
                    self.pending[st.id] = st
            except (ValueError, TypeError, KeyError, OSError) as exc:
                log.warning("uploads: ignoring an unreadable record %s: %s", rec.name, exc)

    def data_path(self, st: Staged) -> Path:
        return self.dir / f"{st.id}.data"

    def create(self, source: str, dir_ref: Any, name: str) -> Staged:
        st = Staged(uuid.uuid4().hex, source, dir_ref, name)
        fd = os.open(self.data_path(st), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        self._save(st)
        self.pending[st.id] = st
        return st

    def _save(self, st: Staged) -> None:
        tmp = self.dir / f"{st.id}.json.tmp"
        tmp.write_text(json.dumps(st.record()))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.dir / f"{st.id}.json")

    def discard(self, st: Staged) -> None:
        self.pending.pop(st.id, None)
        for suffix in (".json", ".data"):
            try:
                os.unlink(self.dir / f"{st.id}{suffix}")
            except FileNotFoundError:
                pass

    def writing(self, st: Staged) -> None:
        """`st` is being written (again): it is not sent until it is closed (U4), not
        even by a retry after a crash."""
        if st.state is not UploadState.WRITING:
            st.state = UploadState.WRITING
            self._save(st)

    def status(self) -> list[dict]:
        return [{"source": st.source, "folder": str(st.dir_ref), "name": st.name, "size": st.size,
                 "attempts": st.attempts, "last_error": st.last_error}
                for st in self.pending.values()]

    async def upload(self, st: Staged) -> None:
        """Send one staged file (U1, U2); raise on failure, keeping it staged."""
        lock = self._locks.setdefault(st.id, trio.Lock())
        async with lock:
            if st.id not in self.pending:
                return                   # another task sent it meanwhile
            path = self.data_path(st)
            st.size = os.path.getsize(path)
            st.attempts += 1
            st.state = UploadState.WAITING
            self._save(st)
            source = self.sources.get(st.source)
            try:
                if source is None:
                    raise RuntimeError(f"source {st.source!r} is no longer configured")
                with open(path, "rb+") as f:
                    os.fsync(f.fileno())
                await source.upload(st.dir_ref, st.name, path, st.size)
            except Exception as exc:
                st.last_error = str(exc)[:500]
                self._save(st)
                self.failed += 1
                log.error("upload of %s%s (%d bytes) failed, kept for a retry: %s",
                          st.dir_ref, st.name, st.size, st.last_error)
                raise
            log.info("uploaded %s%s (%d bytes)", st.dir_ref, st.name, st.size)
            self.uploaded += 1
            self.discard(st)
            self._locks.pop(st.id, None)
            self.on_uploaded(st)

    def retry_soon(self, nursery: trio.Nursery, exclude: str | None = None) -> None:
        """Start retrying the pending uploads in the background, unless that runs
        already: a close() must not wait for other files' retries."""
        if not self._retrying and any(st.id != exclude and st.state is UploadState.WAITING
                                      for st in self.pending.values()):
            nursery.start_soon(self.retry_all, exclude)

    async def retry_all(self, exclude: str | None = None) -> None:
        if self._retrying:
            return
        self._retrying = True
        try:
            await self._retry_all(exclude)
        finally:
            self._retrying = False

    async def _retry_all(self, exclude: str | None) -> None:
        for st in list(self.pending.values()):
            if st.id == exclude or st.state is not UploadState.WAITING:
                continue              # still being written (or cut short by a crash)
            try:
                await self.upload(st)
            except Exception:
                pass

    async def run_retries(self) -> None:
        """At mount and then every `retry_interval` seconds (U3)."""
        for st in self.pending.values():
            if st.state is UploadState.WRITING:
                log.warning("upload of %s%s was never closed (the daemon stopped while it was "
                            "written); it stays in %s and is not sent", st.dir_ref, st.name, self.dir)
        while True:
            await self.retry_all()
            await trio.sleep(self.retry_interval)
