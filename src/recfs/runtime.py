"""The core in a thread, for front-ends that are not trio programs (the fsspec
filesystem, Dask workers, plain Python).

A `CoreThread` runs `trio.run` in a background thread, builds the sources, the
cache and one `Core` there exactly as the mount does (assemble.py), and keeps them
until it is closed. Callers in other threads hand it coroutines through trio's
portal (`trio.from_thread.run` with the loop's token), so every namespace, read and
write operation runs on the trio thread, where the core's state lives; nothing of
the core is touched from another thread.

 C1. One core per config per process: `core_thread(key, ...)` returns the running one
     for that key (fsspec makes a filesystem instance per thread; they all share it).
     It is started at its first call, and stopped by `close()` or at exit (atexit),
     which ends the core's work, closes the sources and HTTP connections and syncs
     the cache (I2 in content/cache.py); a later call starts it again.
 C2. A process never shares its cache with another: the cache lives in a numbered
     slot, `<base>/<n>/`, held with an exclusive lock on `<base>/<n>.lock` for as
     long as the core runs; a process takes the first slot nobody holds. The base is
     `<[cache] dir>/fsspec` unless a front-end names another, so a mount of the same
     config (which uses `[cache] dir` itself) and any number of Python processes or
     Dask workers each have their own cache, and a later process reuses a slot's
     warm cache.
 C3. After a fork the child starts its own core (the thread does not survive a
     fork); the parent's stays the parent's.
"""
from __future__ import annotations

import atexit
import errno
import fcntl
import logging
import os
import threading
from pathlib import Path
from typing import Any, Awaitable, Callable

import trio

from .assemble import StartError, make_cache, make_http, make_sources, start_sources
from .config import Config
from .core import Core, close_sources

log = logging.getLogger("recfs.runtime")

START_TIMEOUT = 120.0       # seconds for the sources to start (token requests with retries)
STOP_TIMEOUT = 30.0


class CoreThread:
    def __init__(self, cfg: Config, cache_base: Path | None = None, cache_size: int | None = None):
        self.cfg = cfg
        self.cache_base = Path(cache_base) if cache_base is not None else Path(cfg.cache.dir) / "fsspec"
        self.cache_size = cache_size
        self.cache_dir: Path | None = None
        self.core: Core | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._slot_fd: int | None = None
        self._pid = os.getpid()
        self.generation = 0         # how many times it started: open files belong to one

    # -- the caller's side
    def run(self, afn: Callable[..., Awaitable[Any]], *args) -> Any:
        """`await afn(core, *args)` on the core's thread; its result or its exception."""
        token = self._started()
        return trio.from_thread.run(afn, self.core, *args, trio_token=token)

    def run_sync(self, fn: Callable[..., Any], *args) -> Any:
        """`fn(core, *args)` on the core's thread (for the core's synchronous methods)."""
        if threading.current_thread() is self._thread:     # a file closed by the collector there
            return fn(self.core, *args)
        token = self._started()
        return trio.from_thread.run_sync(fn, self.core, *args, trio_token=token)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.core is not None

    def _started(self) -> trio.lowlevel.TrioToken:
        if self.running and self._pid == os.getpid():
            return self._token
        if _exiting:
            raise RuntimeError("recfs: the interpreter is exiting; the core is closed")
        with self._lock:
            if self._pid != os.getpid():        # C3: forked: the thread is not here
                self._forget_after_fork()
            if not self.running:
                self._start()
            return self._token

    def _start(self) -> None:
        for warning in self.cfg.warnings:
            log.warning("%s", warning)
        self._ready.clear()
        self._error = None
        self.core = None
        self.generation += 1
        self._take_slot()
        self._thread = threading.Thread(target=self._main, name="recfs-core", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise TimeoutError(f"recfs: the sources did not start within {START_TIMEOUT:.0f} s")
        if self._error is not None:
            error, self._error = self._error, None
            self._thread.join(STOP_TIMEOUT)
            self._thread = None
            self._release_slot()
            if isinstance(error, StartError):
                raise OSError(error.errno, str(error)) from None
            raise error

    def close(self) -> None:
        """Stop the core (C1): background work ends, sources and connections close, the
        cache is synced. Safe to call twice, and from atexit."""
        with self._lock:
            thread, token, stop = self._thread, self._token, self._stop
            if thread is None or self._pid != os.getpid():
                return
            if thread.is_alive() and token is not None and stop is not None:
                try:
                    trio.from_thread.run_sync(stop.set, trio_token=token)
                except trio.RunFinishedError:
                    pass
            thread.join(STOP_TIMEOUT)
            if thread.is_alive():
                log.warning("recfs: the core did not stop within %.0f s", STOP_TIMEOUT)
            self._thread = None
            self.core = None
            self._release_slot()

    def _forget_after_fork(self) -> None:
        self._thread = None
        self.core = None
        self._token = None
        self._slot_fd = None        # the parent's lock; the child takes its own slot
        self._pid = os.getpid()

    # -- the cache slot (C2)
    def _take_slot(self) -> None:
        base = self.cache_base
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        n = 0
        while True:
            fd = os.open(base / f"{n}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                    raise
                n += 1
                continue
            self._slot_fd = fd
            self.cache_dir = base / str(n)
            return

    def _release_slot(self) -> None:
        if self._slot_fd is not None:
            os.close(self._slot_fd)         # closing the descriptor releases the lock
            self._slot_fd = None

    # -- the core's thread
    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:        # reported to the caller waiting in _start
            if not self._ready.is_set():
                self._error = exc
            else:
                log.error("recfs: the core stopped: %s", exc)
        finally:
            self.core = None
            self._ready.set()

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        cfg = self.cfg
        http = make_http(cfg)
        sources = make_sources(cfg, http)
        cache = None
        core = None
        try:
            cache = make_cache(cfg, self.cache_dir, self.cache_size)
            await start_sources(sources)
            async with trio.open_nursery() as nursery:
                core = Core(sources, cache, http, nursery, cfg.tuning, searches=cfg.searches)
                nursery.start_soon(core.run)
                self.core = core
                log.info("recfs: %s ready (cache %s)",
                         ", ".join(f"{s.name} ({s.kind})" for s in sources), self.cache_dir)
                self._ready.set()
                await self._stop.wait()
                nursery.cancel_scope.cancel()
        finally:
            self.core = None
            with trio.CancelScope(shield=True):
                await (core.aclose() if core is not None else close_sources(sources))
                await http.aclose()
            if cache is not None:
                cache.close()


_threads: dict[tuple, CoreThread] = {}
_threads_lock = threading.Lock()


def core_thread(key: tuple, make: Callable[[], CoreThread]) -> CoreThread:
    """The process's core thread for `key` (C1), made by `make()` the first time."""
    with _threads_lock:
        thread = _threads.get(key)
        if thread is None:
            thread = _threads[key] = make()
        return thread


_exiting = False


def close_all() -> None:
    """At exit: stop every core, and start none again (files left open are dropped)."""
    global _exiting
    _exiting = True
    with _threads_lock:
        threads = list(_threads.values())
    for thread in threads:
        try:
            thread.close()
        except Exception as exc:        # at exit: report, never raise
            log.warning("recfs: closing the core: %s", exc)


atexit.register(close_all)
