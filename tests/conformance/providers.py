"""One harness per provider for the conformance suite: its emulator filled with the
same small data set, in the provider's own layout, and what the suite needs to know
about it (where the data set is, what metadata every file carries, where content
is served)."""
from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field

from recfs.emulators.base import Emulator, PatternBlob

MiB = 1 << 20
# name -> size: one byte, a few hundred, one chunk exactly, odd sizes, and one bigger
# than [tuning] small_file, which the reader fetches in windows, not whole
FILES = {"a-tiny.mp3": 1, "b-short.mp3": 999, "c-chunk.mp3": 256 * 1024,
         "d-odd.mp3": 300_001, "e-long.mp3": 5 * MiB + 123}
DAY = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3)).replace(
    hour=0, minute=0, second=0, microsecond=0)


@dataclass
class Harness:
    kind: str
    emu: Emulator
    table: dict                         # the [[sources]] table pointing at the emulator
    folder: list[str]                   # path from the source's root to the data set
    content_route: str                  # the emulator's route that serves file bytes
    metadata_key: str                   # an xattr every file of the data set has
    blobs: dict[str, PatternBlob] = field(default_factory=dict)
    refs: dict[str, object] = field(default_factory=dict)   # name -> the emulator's own handle
    bad_credentials: dict = field(default_factory=dict)     # table changes the service refuses

    def expected(self, name: str) -> bytes:
        return self.blobs[name].all_bytes()


def _blobs() -> dict[str, PatternBlob]:
    return {name: PatternBlob(i + 1, size) for i, (name, size) in enumerate(FILES.items())}


def alvaria() -> Harness:
    from recfs.emulators.alvaria import AlvariaEmulator, source_table
    emu = AlvariaEmulator().start()
    blobs = _blobs()
    for name, blob in blobs.items():
        emu.put(f"exports/conformance/{DAY:%Y-%m-%d}/{name}", blob, mtime=DAY.timestamp() + 60)
    return Harness("alvaria", emu, source_table(emu, "src"), ["exports", "conformance", f"{DAY:%Y-%m-%d}"],
                   "s3", "alvaria.key", blobs,
                   {n: f"exports/conformance/{DAY:%Y-%m-%d}/{n}" for n in blobs},
                   {"client_secret": "not-the-secret"})


def eightbyeight() -> Harness:
    from recfs.emulators.eightbyeight import EightByEight, source_table
    emu = EightByEight(regions=("us-east",)).start()
    blobs = _blobs()
    refs = {name: emu.add_object("us-east", "callrecording", name, blob, DAY + dt.timedelta(hours=9, minutes=i)).id
            for i, (name, blob) in enumerate(blobs.items())}
    table = source_table(emu, "src")
    table["bulk"] = "never"             # the suite reads per object; bulk jobs have their own tests
    return Harness("8x8", emu, table, ["us-east", "callrecording", f"{DAY:%Y}", f"{DAY:%m}", f"{DAY:%d}"],
                   "content", "8x8.id", blobs, refs, {"client_secret": "not-the-secret"})


def oce() -> Harness:
    from recfs.emulators.oce import OceEmulator, source_table
    emu = OceEmulator().start()
    blobs = _blobs()
    folder = emu.add_folder("self", "conformance", modified=DAY.timestamp())
    refs = {name: emu.add_file(folder, name, blob, mime="audio/mpeg", modified=DAY.timestamp() + 60)
            for name, blob in blobs.items()}
    return Harness("oce", emu, source_table(emu, "src"), ["conformance"], "data", "oce.id", blobs, refs,
                   {"client_secret": "not-the-secret"})


def kazoo() -> Harness:
    from recfs.emulators.kazoo import KazooEmulator, source_table
    emu = KazooEmulator(bucket_tokens=None).start()
    account = emu.add_account("Conformance")
    emu.demo_key = emu.add_api_key(account)
    blobs = _blobs()
    refs = {}
    for i, (name, blob) in enumerate(blobs.items()):
        start = DAY.timestamp() + 9 * 3600 + 600 * i
        rec = emu.add_recording(account, start, name=name, blob=blob, duration_ms=max(1000, blob.size // 16))
        refs[name] = rec.id
    return Harness("kazoo", emu, source_table(emu, "src"), [account, f"{DAY:%Y}", f"{DAY:%m}", f"{DAY:%d}"],
                   "doc", "kazoo.recording_id", blobs, refs, {"api_key": "f" * 64})


HARNESSES = {"alvaria": alvaria, "8x8": eightbyeight, "oce": oce, "kazoo": kazoo}


def vanish(h: Harness, name: str) -> None:
    """Take a file of the data set off the service."""
    ref = h.refs[name]
    if h.kind == "alvaria":
        del h.emu.objects[ref]
    elif h.kind == "8x8":
        del h.emu.objects[ref]
    elif h.kind == "oce":
        h.emu.remove(ref)
    else:
        del h.emu.recordings[ref]


def replace(h: Harness, name: str, blob) -> None:
    """Give a file of the data set other bytes on the service, in place: the same size,
    a new version (a redaction, an export run again under the same key)."""
    ref = h.refs[name]
    if h.kind == "alvaria":
        h.emu.put(ref, blob, mtime=h.emu.objects[ref].mtime + 60)    # S3: a new LastModified
    elif h.kind == "8x8":
        h.emu.replace(ref, blob)
    elif h.kind == "oce":
        h.emu.new_version(ref, blob)
    else:
        h.emu.replace_media(ref, blob)
    h.blobs[name] = blob
