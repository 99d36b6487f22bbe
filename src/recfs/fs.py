"""The pyfuse3 adapter: FUSE calls become calls of the core (core.py), nodes become
attributes, and errors become errno values. No provider knowledge, no I/O policy and
no write lifecycle live here."""
from __future__ import annotations

import bisect
import collections
import errno
import functools
import logging
import os
import stat
import sys
from operator import attrgetter, itemgetter
from typing import Any

import pyfuse3
import trio

from .content.reader import ReadError, describe
from .core import Core, CoreError, Writing
from .http import MAX_SIZE, HttpError
from .sources.base import SourceError
from .tree import ROOT_INODE, Local, Node

log = logging.getLogger("recfs.fs")

FILE_TIMEOUT = 300.0        # recordings do not change: let the kernel keep what it learnt
NEGATIVE_TIMEOUT = 10.0
CONTROL_PREFIX = b"user.recfs."
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND
RENAME_EXCHANGE = 2         # renameat2(2): swap two names; nothing here can
BLOCK_SIZE = 128 * 1024
FILE_MODE = stat.S_IFREG | 0o444
WRITING_MODE = stat.S_IFREG | 0o644
FS_ENCODING = sys.getfilesystemencoding()   # os.fsencode's, without its checks per name
_ino = attrgetter("ino")
_row_ino = itemgetter(0)


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, core: Core, direct_io_min_size: int = 0):
        super().__init__()
        self.core = core
        self.direct_io_min_size = direct_io_min_size
        self.op_counts: collections.Counter[str] = collections.Counter()   # for recfs status
        core.on_changed = self.forget_kernel_cache
        core.control.extra["fuse_requests"] = lambda: dict(self.op_counts)
        self.uid = os.getuid()
        self.gid = os.getgid()
        self.handles: dict[int, tuple[Node, Any]] = {}
        self._next_fh = 1
        self._versions: dict[int, tuple] = {}   # inode -> the content its pages are of

    # -- helpers
    def forget_kernel_cache(self, node: Node) -> None:
        """The object changed on the service: the kernel must drop the attributes and
        pages it keeps for it. Attributes at once (no page locks involved, so safe
        inside a handler: the next stat comes back to us); pages from a worker thread
        after the current request, as that notification can deadlock against the
        kernel when sent from inside a handler."""
        try:
            pyfuse3.invalidate_inode(node.ino, True)
        except OSError:
            pass                            # the kernel may not know the inode: fine
        self.core.nursery.start_soon(self._invalidate_pages, node.ino)

    @staticmethod
    async def _invalidate_pages(ino: int) -> None:
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, ino, False)
        except Exception as exc:
            log.debug("invalidate inode %d: %s", ino, exc)

    def _node(self, ino: int) -> Node:
        node = self.core.node(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _fail(self, exc: Exception, what: str) -> pyfuse3.FUSEError:
        if isinstance(exc, pyfuse3.FUSEError):
            return exc
        if isinstance(exc, CoreError):
            return pyfuse3.FUSEError(exc.errno)
        code = getattr(exc, "errno", None) or errno.EIO
        if not isinstance(exc, (SourceError, HttpError, ReadError)):
            log.exception("%s: unexpected error", what)
        else:
            log.error("%s: %s", what, describe(exc))
        return pyfuse3.FUSEError(code)

    def _new_fh(self, node: Node, handle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = (node, handle)
        return fh

    def attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        if not node.is_dir:
            return self.file_attrs(node.ino, node.size, node.size_known, node.entry.mtime,
                                   node.local is Local.WRITING)
        a = pyfuse3.EntryAttributes()      # generation 0
        a.st_ino = node.ino
        a.st_mode = stat.S_IFDIR | (0o755 if self.core.writable(node) else 0o555)
        a.st_nlink = 2
        a.st_size = 0
        ttl = node.source.listing_ttl if node.source else 60.0
        a.entry_timeout = a.attr_timeout = min(ttl, FILE_TIMEOUT)
        a.st_uid = self.uid
        a.st_gid = self.gid
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = int(node.entry.mtime * 1e9)
        a.st_blksize = BLOCK_SIZE
        return a

    def file_attrs(self, ino: int, size: int, exact: bool, mtime: float,
                   writing: bool = False) -> pyfuse3.EntryAttributes:
        """A file's attributes (from its node, or from its folder's row in the index)."""
        a = pyfuse3.EntryAttributes()      # generation 0, one link
        a.st_ino = ino
        a.st_mode = WRITING_MODE if writing else FILE_MODE
        size = min(max(0, size), MAX_SIZE)
        a.st_size = size
        # an unresolved size must not be cached: the next stat comes back to us
        a.entry_timeout = a.attr_timeout = FILE_TIMEOUT if exact else 0
        a.st_uid = self.uid
        a.st_gid = self.gid
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = int(mtime * 1e9)
        a.st_blksize = BLOCK_SIZE
        a.st_blocks = (size + 511) // 512
        return a

    # -- namespace
    async def lookup(self, parent_inode, name, ctx=None):
        parent = self._node(parent_inode)
        try:
            node = await self.core.lookup(parent, os.fsdecode(name))
        except Exception as exc:
            raise self._fail(exc, f"listing {parent.path()}")
        if node is None:
            miss = pyfuse3.EntryAttributes()
            miss.st_ino = 0                 # a negative entry the kernel may cache
            miss.entry_timeout = NEGATIVE_TIMEOUT
            return miss
        attrs = self.attrs(await self.core.stat(node))
        self.core.tree.remember(node.ino)
        return attrs

    async def getattr(self, inode, ctx=None):
        # the kernel asks again once its attribute timeout ran out
        return self.attrs(await self.core.stat(self._node(inode), relist=True))

    async def forget(self, inode_list):
        for ino, count in inode_list:
            self.core.tree.forget(ino, count)

    async def opendir(self, inode, ctx):
        node = self._node(inode)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh, start_id, token):
        node = self._node(fh)
        try:
            nodes, rows = await self.core.for_readdir(node)
        except Exception as exc:
            raise self._fail(exc, f"listing {node.path()}")
        reply, remember = pyfuse3.readdir_reply, self.core.tree.remember
        # entries come in inode order (T2): resume after start_id by bisection
        if rows is None:
            for child in nodes[bisect.bisect_right(nodes, start_id, key=_ino):]:
                if not reply(token, child.name.encode(FS_ENCODING, "surrogateescape"), self.attrs(child),
                             child.ino):
                    break
                remember(child.ino)
            return
        # a folder out of RAM (tree.py T8): its files have no node, their rows suffice
        file_attrs = self.file_attrs
        for ino, name, child, size, exact, mtime in rows[bisect.bisect_right(rows, start_id, key=_row_ino):]:
            attrs = self.attrs(child) if child is not None else file_attrs(ino, size, exact, mtime)
            if not reply(token, name.encode(FS_ENCODING, "surrogateescape"), attrs, ino):
                break
            remember(ino)

    async def releasedir(self, fh):
        pass

    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 128 * 1024
        s.f_blocks = s.f_bfree = s.f_bavail = 0
        s.f_files = len(self.core.tree.inodes)
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    # -- files
    async def open(self, inode, flags, ctx):
        node = self._node(inode)
        try:
            if flags & WRITE_FLAGS:
                handle = self.core.open_written(node, truncate=bool(flags & os.O_TRUNC))
            else:
                handle = await self.core.open(node)
        except Exception as exc:
            raise self._fail(exc, f"opening {node.path()}")
        fh = self._new_fh(node, handle)
        if isinstance(handle, Writing):
            # the size changes while written; no stale page cache either way
            return pyfuse3.FileInfo(fh=fh, keep_cache=False, direct_io=True)
        # direct I/O hands each read() to us with the reader's own buffer: one copy
        # less and no second copy of the file in the page cache, but no shared mmap
        # and no kernel readahead, so only for big files
        direct = 0 < self.direct_io_min_size <= node.entry.size
        # the kernel keeps the pages it has of the file only while its content is the
        # same: a new version, from a listing or met by a read, drops them at this open
        version = self.core.content_version(handle)
        keep = self._versions.get(inode) == version
        if len(self._versions) >= 100_000:
            self._versions.clear()
        self._versions[inode] = version
        if keep and not direct:
            self.core.pages_kept(handle)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep and not direct, direct_io=direct)

    async def read(self, fh, off, size):
        node, handle = self.handles[fh]
        try:
            return await self.core.read(node, handle, off, size)
        except ReadError as exc:
            raise pyfuse3.FUSEError(exc.errno)
        except Exception as exc:
            raise self._fail(exc, f"reading {node.path()}")

    async def release(self, fh):
        _, handle = self.handles.pop(fh)
        self.core.release(handle)

    # -- extended attributes: recording metadata, and the control interface on the root
    async def getxattr(self, inode, name, ctx):
        node = self._node(inode)
        if inode == ROOT_INODE and name.startswith(CONTROL_PREFIX):
            value = await self.core.control.get(name[len(CONTROL_PREFIX):].decode())
            if value is None:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
            return value
        if name.startswith(b"user."):
            value = self.core.xattrs(node).get(name[5:].decode("utf-8", "replace"))
            if value is not None:
                return str(value).encode()
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        # security.*, system.posix_acl_* and the rest: not supported here. EOPNOTSUPP
        # (not ENODATA) lets ls -l remember that per file system and stop asking for
        # every file (two round trips per entry otherwise)
        raise pyfuse3.FUSEError(errno.EOPNOTSUPP)

    async def listxattr(self, inode, ctx):
        node = self._node(inode)
        return [b"user." + k.encode() for k in self.core.xattrs(node)]

    async def setxattr(self, inode, name, value, ctx):
        if inode == ROOT_INODE and name.startswith(CONTROL_PREFIX):
            try:
                ok = await self.core.control.set(name[len(CONTROL_PREFIX):].decode(), value)
            except Exception as exc:
                raise self._fail(exc, f"control {name!r}")
            if ok:
                return
            raise pyfuse3.FUSEError(errno.EINVAL)
        raise pyfuse3.FUSEError(errno.EROFS)

    async def removexattr(self, inode, name, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    # -- writes: the core refuses what does not apply (EROFS outside upload folders)
    async def create(self, parent_inode, name, mode, flags, ctx):
        parent = self._node(parent_inode)
        try:
            handle = await self.core.create(parent, os.fsdecode(name), exclusive=bool(flags & os.O_EXCL))
        except Exception as exc:
            raise self._fail(exc, f"creating {os.fsdecode(name)} in {parent.path()}")
        self.core.tree.remember(handle.node.ino)
        fh = self._new_fh(handle.node, handle)
        return pyfuse3.FileInfo(fh=fh, keep_cache=False, direct_io=True), self.attrs(handle.node)

    async def write(self, fh, off, buf):
        _, handle = self.handles[fh]
        try:
            return self.core.write(handle, off, buf)
        except CoreError as exc:
            raise pyfuse3.FUSEError(exc.errno)

    async def flush(self, fh):
        """close(): a written file is uploaded now, so close reports whether it landed."""
        node, handle = self.handles[fh]
        try:
            await self.core.close_written(handle)
        except Exception as exc:
            raise self._fail(exc, f"uploading {node.path()}")

    async def fsync(self, fh, datasync):
        await self.flush(fh)

    async def setattr(self, inode, attr, fields, fh, ctx):
        node = self._node(inode)
        if node.local is not Local.WRITING:
            raise pyfuse3.FUSEError(errno.EROFS)
        if fields.update_size:
            self.core.truncate(node, attr.st_size)
        # modes and times of a file being uploaded cannot be stored: accepted, ignored
        return self.attrs(node)

    async def mkdir(self, parent_inode, name, mode, ctx):
        parent = self._node(parent_inode)
        try:
            node = await self.core.mkdir(parent, os.fsdecode(name))
        except Exception as exc:
            raise self._fail(exc, f"mkdir in {parent.path()}")
        self.core.tree.remember(node.ino)
        return self.attrs(node)

    async def unlink(self, parent_inode, name, ctx):
        parent = self._node(parent_inode)
        try:
            await self.core.unlink(parent, os.fsdecode(name))
        except Exception as exc:
            raise self._fail(exc, f"deleting {os.fsdecode(name)} in {parent.path()}")

    async def rmdir(self, parent_inode, name, ctx):
        parent = self._node(parent_inode)
        try:
            await self.core.rmdir(parent, os.fsdecode(name))
        except Exception as exc:
            raise self._fail(exc, f"removing {os.fsdecode(name)} in {parent.path()}")

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def symlink(self, parent_inode, name, target, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        if flags & RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        old, new = self._node(parent_inode_old), self._node(parent_inode_new)
        try:
            await self.core.rename(old, os.fsdecode(name_old), new, os.fsdecode(name_new))
        except Exception as exc:
            raise self._fail(exc, f"moving {os.fsdecode(name_old)} in {old.path()}")

    async def link(self, inode, new_parent_inode, new_name, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)


def _guarded(handler):
    """pyfuse3 lets any exception but FUSEError end the whole mount: turn the
    unexpected ones into EIO for that one call, with the traceback in the log."""
    name = handler.__name__

    @functools.wraps(handler)
    async def guarded(self, *args):
        self.op_counts[name] += 1
        try:
            return await handler(self, *args)
        except pyfuse3.FUSEError:
            raise
        except Exception:
            log.exception("%s: unexpected error (answered EIO)", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
    return guarded


for _name in ("lookup", "getattr", "forget", "opendir", "readdir", "releasedir", "statfs", "open",
              "read", "release", "getxattr", "listxattr", "setxattr", "removexattr", "create",
              "write", "flush", "fsync", "setattr", "mkdir", "unlink", "rmdir", "mknod", "symlink",
              "rename", "link"):
    setattr(Operations, _name, _guarded(getattr(Operations, _name)))
