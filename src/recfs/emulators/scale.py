"""Pieces shared by the emulators' scale modes (issue 20).

A scale mode generates its objects from their index instead of storing them, so a
million recordings cost the emulator nearly nothing: a listing page, a search or a
read computes the objects it needs and forgets them.

- `ScaleBlob`: content generated from an object's identity, with an MD5 that costs a
  few KiB of hashing instead of the whole object (8x8 listings carry every object's
  MD5).
- `Seq`, `Concat`: lazy sequences (length and slices only), so that a listing of a
  generated folder is paged from positions without building the list.
- `stable_hash`, `day_times`: the deterministic numbers objects are made of.
"""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
import random
import struct
import threading
from collections.abc import Callable, Sequence
from typing import ClassVar

from .base import Blob

UTC = dt.timezone.utc


def stable_hash(*parts) -> int:
    """A 64-bit number from `parts`, the same in every process and run (unlike hash())."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


@functools.lru_cache(maxsize=4096)
def day_start(start: dt.date, day: int) -> float:
    """Epoch seconds of 00:00 UTC of the `day`-th day from `start`."""
    d = start + dt.timedelta(days=day)
    return dt.datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()


def time_in_day(count: int, k: int, *salt) -> int:
    """Seconds after midnight of the `k`-th of `count` objects of a day: spread over the
    day with a jitter below the spacing, so strictly increasing in `k` and below 86,400
    (which needs count <= 86,400)."""
    spacing = 86400 // count
    return (k * 86400) // count + stable_hash("t", k, *salt) % spacing


class ScaleBlob(Blob):
    """`size` bytes generated from `ident`.

    The body (all but the last `TAIL` bytes) is one of `FAMILIES` patterns, chosen by
    `ident`, cut to the object's length: every 64 KiB block starts with its own index
    and the family, so a read served from the wrong offset never compares equal. The
    last `TAIL` bytes are a digest of `ident`, so two objects never compare equal
    either. Objects of one family share their body, which makes `md5()` cheap: the
    MD5 state after every 4 KiB of each family's body is kept, and an object's MD5
    hashes at most 4 KiB of body plus its tail.
    """

    BLOCK = 64 * 1024
    HEADER = 16
    STEP = 4096
    TAIL = 32
    FAMILIES = 64
    # shared by every ScaleBlob: the pattern, and per family the MD5 states after 0,
    # STEP, 2*STEP... bytes of its body (made on demand, under the lock: servers are threaded)
    _base: ClassVar[bytes | None] = None
    _states: ClassVar[dict[int, list]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, ident: str, size: int):
        digest = hashlib.sha256(ident.encode()).digest()
        self.ident = ident
        self.size = size
        self.family = digest[0] % self.FAMILIES
        self.body = max(0, size - self.TAIL)
        self.tail = digest[:size - self.body]

    @classmethod
    def _pattern(cls) -> bytes:
        if cls._base is None:
            cls._base = random.Random(0x5CA1E).randbytes((1 << 20) + cls.BLOCK)
        return cls._base

    @classmethod
    def _body_bytes(cls, family: int, start: int, end: int) -> bytes:
        """Bytes [start, end) of `family`'s body (which has no end of its own)."""
        base = cls._pattern()
        out = []
        pos = start
        while pos < end:
            index, inner = divmod(pos, cls.BLOCK)
            stop = min(cls.BLOCK, inner + end - pos)
            if inner < cls.HEADER:
                out.append(struct.pack("<QQ", index, family)[inner:stop])
            if stop > cls.HEADER:      # the block's pattern part, sliced without the rest
                off = (index * 7919 + family * 104729) % (1 << 20) - cls.HEADER
                out.append(base[off + max(inner, cls.HEADER):off + stop])
            pos += stop - inner
        return b"".join(out)

    def read(self, offset: int, length: int) -> bytes:
        end = min(self.size, offset + length)
        if offset >= end:
            return b""
        body = self._body_bytes(self.family, offset, min(end, self.body)) if offset < self.body else b""
        if end <= self.body:
            return body
        return body + self.tail[max(offset, self.body) - self.body:end - self.body]

    @classmethod
    def _state(cls, family: int, steps: int):
        """A copy of the MD5 state after `steps` * STEP bytes of `family`'s body."""
        with cls._lock:
            states = cls._states.setdefault(family, [hashlib.md5()])
            while len(states) <= steps:
                h = states[-1].copy()
                n = len(states) - 1
                h.update(cls._body_bytes(family, n * cls.STEP, (n + 1) * cls.STEP))
                states.append(h)
            return states[steps].copy()

    def md5(self) -> str:
        steps = self.body // self.STEP
        h = self._state(self.family, steps)
        h.update(self._body_bytes(self.family, steps * self.STEP, self.body))
        h.update(self.tail)
        return h.hexdigest()


class Seq:
    """A read-only sequence of `length` items, item j being `item(j)`, made on demand."""

    def __init__(self, length: int, item: Callable[[int], object]):
        self.length = length
        self.item = item

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self.item(j) for j in range(*index.indices(self.length))]
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(index)
        return self.item(index)


class Concat:
    """Sequences one after the other, read by length and slices (step 1)."""

    def __init__(self, *parts: Sequence):
        self.parts = [p for p in parts if len(p)]

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __getitem__(self, index):
        if not isinstance(index, slice):
            got = self[index:index + 1] if index >= 0 else self[len(self) + index:len(self) + index + 1]
            if not got:
                raise IndexError(index)
            return got[0]
        start, stop, step = index.indices(len(self))
        if step != 1:
            raise ValueError("Concat slices have step 1")
        out: list = []
        base = 0
        for part in self.parts:
            n = len(part)
            lo, hi = max(start - base, 0), min(stop - base, n)
            if lo < hi:
                out.extend(part[lo:hi])
            base += n
            if base >= stop:
                break
        return out
