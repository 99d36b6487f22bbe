"""Mount lifecycle: stale-mount cleanup, set-up, the trio main loop, signals,
systemd notification and a clean unmount."""
from __future__ import annotations

import errno
import gc
import logging
import os
import signal
import socket
import subprocess
from pathlib import Path

import pyfuse3
import trio

from . import fusewait
from .allocator import keep_large_blocks_mapped
from .assemble import StartError, make_cache, make_http, make_sources, start_sources
from .config import Config
from .core import Core, close_sources
from .fs import Operations

log = logging.getLogger("recfs.mount")

GC_FIRST_GENERATION = 50_000


class MountError(Exception):
    pass


def clear_stale_mount(mountpoint: Path) -> None:
    """A daemon killed without unmounting leaves 'Transport endpoint is not connected'.

    statvfs, not stat: the kernel may answer stat of a dead mount from its cache."""
    try:
        os.statvfs(mountpoint)
        return
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise MountError(f"mount point {mountpoint}: {exc.strerror}") from None
    log.warning("%s: clearing a stale mount left by a daemon that died", mountpoint)
    subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        os.statvfs(mountpoint)
    except OSError as exc:
        raise MountError(f"mount point {mountpoint}: cannot clear stale mount: {exc.strerror}") from None


def check_mountpoint(mountpoint: Path) -> None:
    clear_stale_mount(mountpoint)
    if not mountpoint.is_dir():
        raise MountError(f"mount point {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise MountError(f"{mountpoint} is already a mount point")


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about our state, if it is listening."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(address)
            s.sendall(message.encode())
    except OSError as exc:
        log.warning("cannot notify systemd: %s", exc.strerror)


def fuse_options(name: str, allow_other: bool) -> set[str]:
    opts = set(pyfuse3.default_options)   # default_permissions
    # not "ro": the kernel would refuse setxattr, which the control interface
    # (user.recfs.* on the root) needs; fs.py answers EROFS to every write itself
    opts |= {f"fsname={name}", "subtype=recfs", "noatime", "nodev", "nosuid"}
    if allow_other:
        opts |= {"allow_other", "default_permissions"}
    return opts


async def keep_read_ahead(mountpoint: Path, kib: int) -> None:
    """The kernel's answer to FUSE INIT resets read_ahead_kb to INIT's max_readahead
    (128 KiB), and INIT is answered only once the main loop runs: set it again for
    the first seconds of the mount, until it holds."""
    for _ in range(20):
        await trio.sleep(0.25)
        if await trio.to_thread.run_sync(raise_read_ahead, mountpoint, kib):
            return


def raise_read_ahead(mountpoint: Path, kib: int) -> bool:
    """Let the kernel read further ahead on this mount, where the bdi allows it.
    Return True once the setting holds."""
    # not os.stat(mountpoint): that would wait for this very process to answer FUSE
    try:
        devno = None
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if fields[4] == str(mountpoint):
                    devno = fields[2]
        if devno is None:
            return False
        path = Path(f"/sys/class/bdi/{devno}/read_ahead_kb")
        if int(path.read_text()) >= kib:
            return True
        path.write_text(str(kib))
        log.debug("read_ahead_kb set to %d", kib)
        return False
    except (OSError, ValueError) as exc:
        log.debug("cannot raise read_ahead_kb: %s", exc)
        return True                 # not permitted here: nothing more to try


async def _serve(cfg: Config, mountpoint: Path, *, allow_other: bool, read_ahead_kb: int) -> None:
    cache = make_cache(cfg)
    t = cfg.tuning
    http = make_http(cfg)
    sources = make_sources(cfg, http)
    mounted = False
    core = None
    try:
        try:
            await start_sources(sources)
        except StartError as exc:
            raise MountError(str(exc)) from None
        async with trio.open_nursery() as nursery:
            core = Core(sources, cache, http, nursery, t, searches=cfg.searches)
            ops = Operations(core, direct_io_min_size=t.direct_io_min_size)
            pyfuse3.init(ops, str(mountpoint), fuse_options("recfs", allow_other))
            mounted = True
            if read_ahead_kb:
                nursery.start_soon(keep_read_ahead, mountpoint, read_ahead_kb)
            nursery.start_soon(core.run)
            # before READY: a SIGTERM right after it must find the receiver in place
            await nursery.start(_watch_signals)
            waits = fusewait.install(pyfuse3) if t.fuse_fast_wait else None
            # how often the next FUSE request was already waiting (fusewait, F3)
            core.control.extra["fuse_waits"] = lambda: waits and {"immediate": waits.immediate,
                                                                   "slept": waits.slept}
            log.info("mounted %s at %s", ", ".join(f"{s.name} ({s.kind})" for s in sources), mountpoint)
            sd_notify("READY=1\nSTATUS=mounted")
            await pyfuse3.main()
            sd_notify("STOPPING=1")
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await (core.aclose() if core is not None else close_sources(sources))
        with trio.CancelScope(shield=True):
            await http.aclose()
        fusewait.uninstall(pyfuse3)
        if mounted:
            pyfuse3.close(unmount=True)
        cache.close()
        log.info("unmounted %s", mountpoint)


async def _watch_signals(task_status=trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGUSR1) as signals:
        task_status.started()
        async for signum in signals:
            if signum == signal.SIGUSR1:
                dump_tasks()
                continue
            log.info("%s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


def dump_tasks() -> None:
    """Log what every trio task is waiting on (SIGUSR1): the innermost frames of each."""
    lines = []

    def walk(task, depth):
        coro = task.coro
        where = []
        while coro is not None:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            if frame is not None:
                where.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        lines.append(f"{'  ' * depth}{task.name}: {' > '.join(where[-4:]) or '(running)'}")
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child, depth + 1)

    walk(trio.lowlevel.current_root_task(), 0)
    log.info("SIGUSR1: %d tasks", len(lines))
    for line in lines:
        log.info("  %s", line)


def run_mount(cfg: Config, mountpoint: Path, *, allow_other: bool = False,
              read_ahead_kb: int = 1024) -> None:
    for warning in cfg.warnings:
        log.warning("%s", warning)
    check_mountpoint(mountpoint)
    # The daemon holds up to `entries_in_memory` long-lived nodes and makes thousands
    # per listing; the collector's default first generation (700 objects) would walk
    # them over and over. None of them form cycles the collector must find quickly (an
    # httpx response did, holding its body: Http.request unbinds it).
    gc.set_threshold(GC_FIRST_GENERATION, 20, 100)
    # listing pages and folders come and go in blocks of hundreds of kB: given back
    # when freed, not left between long-lived nodes in the heap (allocator.py)
    keep_large_blocks_mapped()
    trio.run(lambda: _serve(cfg, mountpoint, allow_other=allow_other,
                            read_ahead_kb=read_ahead_kb))
