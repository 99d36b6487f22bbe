"""How the daemon waits for the kernel's next FUSE request: pyfuse3's wait, made cheap.

Before it reads each request, pyfuse3's session loop takes a `trio.Lock` and then
waits for the FUSE device with `trio.lowlevel.wait_readable`. Each is a trip through
trio's scheduler (`Lock.acquire` always yields; the wait arms epoll, sleeps and is
woken), and together they cost the one thread that answers every FUSE request about
as much as the rest of a metadata request. A program that stats or opens files one after another (`ls -l`, `find`,
`rsync`, `cp -r`) has usually sent its next request by the time the last one is
answered, so most waits need no sleep at all.

pyfuse3 looks its `trio` up as a module global (`pyfuse3.asyncio` swaps it the same
way). `install()` puts in a stand-in that forwards everything to trio except:

- `Lock`, used only as the read lock: `HandOffLock`, taken without a scheduler trip
  when it is free;
- `lowlevel.wait_readable`: returns at once when `poll()` with no timeout shows a
  request already waiting, else waits as trio does.

Invariants:

F1  Only the holder of the read lock waits on the device or reads from it (trio allows
    one waiter per fd; pyfuse3 reads only after its wait returned, still holding it).
F2  A released lock with tasks waiting passes straight to the first of them (FIFO);
    it is never free while a task waits for it.
F3  At most MAX_UNYIELDED waits in a row return without a checkpoint: while requests
    stream in, the other tasks (fetches finishing, the cache's flusher) still get
    their turn, and a cancellation is still noticed.
"""
from __future__ import annotations

import logging
import select

import trio

log = logging.getLogger("recfs.fusewait")

MAX_UNYIELDED = 8


class HandOffLock:
    """The part of `trio.Lock` that pyfuse3's read lock uses (`async with`), without
    the scheduler trip `trio.Lock` makes on every acquire, free or not (F2)."""

    def __init__(self) -> None:
        self._held = False
        self._waiters = trio.lowlevel.ParkingLot()

    async def __aenter__(self) -> None:
        if self._held:
            await self._waiters.park()      # __aexit__ handed it over: still held
        else:
            self._held = True

    async def __aexit__(self, *exc) -> None:
        if self._waiters:
            self._waiters.unpark()
        else:
            self._held = False

    def locked(self) -> bool:
        return self._held


class FastWait:
    """`wait_readable` for the FUSE device: no sleep when a request is waiting (F3)."""

    def __init__(self) -> None:
        self._poll = select.poll()
        self._fd = -1
        self._unyielded = 0
        self.immediate = 0          # waits that found a request already there
        self.slept = 0

    async def wait_readable(self, fd) -> None:
        if fd != self._fd:
            if self._fd >= 0:
                self._poll.unregister(self._fd)
            self._poll.register(fd, select.POLLIN)
            self._fd = fd
        if self._unyielded < MAX_UNYIELDED and self._poll.poll(0):
            self._unyielded += 1
            self.immediate += 1
            return
        self._unyielded = 0
        self.slept += 1
        await trio.lowlevel.wait_readable(fd)


class _Forward:
    """Every attribute of `target`, except the ones given."""

    def __init__(self, target, **overrides) -> None:
        self._target = target
        self.__dict__.update(overrides)

    def __getattr__(self, name: str):
        return getattr(self._target, name)


def install(pyfuse3_module) -> FastWait | None:
    """Give pyfuse3 the cheap lock and wait; None (and pyfuse3 left as it is) when its
    loop is not the one this was written for, or it runs on asyncio."""
    if getattr(pyfuse3_module, "trio", None) is not trio \
            or not hasattr(pyfuse3_module, "_wait_fuse_readable"):
        log.info("pyfuse3 %s: keeping its own wait for FUSE requests",
                 getattr(pyfuse3_module, "__version__", "?"))
        return None
    wait = FastWait()
    pyfuse3_module.trio = _Forward(trio, Lock=HandOffLock,
                                   lowlevel=_Forward(trio.lowlevel, wait_readable=wait.wait_readable))
    return wait


def uninstall(pyfuse3_module) -> None:
    if isinstance(getattr(pyfuse3_module, "trio", None), _Forward):
        pyfuse3_module.trio = trio
