"""The pyfuse3 adapter: translate FUSE calls to the tree and the reader, and errors
to errno values. No provider knowledge and no I/O policy live here."""
from __future__ import annotations

import errno
import logging
import os
import stat
from typing import Any

import pyfuse3

from .content.reader import Reader, ReadError, describe
from .http import HttpError
from .sources.base import SourceError
from .tree import ROOT_INODE, Node, Tree

log = logging.getLogger("recfs.fs")

FILE_TIMEOUT = 300.0        # recordings do not change: let the kernel keep what it learnt
NEGATIVE_TIMEOUT = 10.0
CONTROL_PREFIX = b"user.recfs."


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, tree: Tree, reader: Reader, control: Any = None):
        super().__init__()
        self.tree = tree
        self.reader = reader
        self.control = control          # answers the user.recfs.* xattrs on the root
        self.uid = os.getuid()
        self.gid = os.getgid()
        self.handles: dict[int, Any] = {}
        self._next_fh = 1

    # -- helpers
    def _node(self, ino: int) -> Node:
        node = self.tree.get(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _fail(self, exc: Exception, what: str) -> pyfuse3.FUSEError:
        if isinstance(exc, pyfuse3.FUSEError):
            return exc
        code = getattr(exc, "errno", None) or errno.EIO
        if not isinstance(exc, (SourceError, HttpError, ReadError)):
            log.exception("%s: unexpected error", what)
        else:
            log.error("%s: %s", what, describe(exc))
        return pyfuse3.FUSEError(code)

    def attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        e = node.entry
        if node.is_dir:
            a.st_mode = stat.S_IFDIR | 0o555
            a.st_nlink = 2
            a.st_size = 0
            ttl = node.source.listing_ttl if node.source else 60.0
            a.entry_timeout = a.attr_timeout = min(ttl, FILE_TIMEOUT)
        else:
            a.st_mode = stat.S_IFREG | 0o444
            a.st_nlink = 1
            a.st_size = node.size
            # an unresolved size must not be cached: the next stat comes back to us
            a.entry_timeout = a.attr_timeout = FILE_TIMEOUT if node.size_known else 0
        a.st_uid = self.uid
        a.st_gid = self.gid
        ns = int(e.mtime * 1e9)
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = ns
        a.st_blksize = 128 * 1024
        a.st_blocks = (a.st_size + 511) // 512
        return a

    async def _attrs_exact(self, node: Node) -> pyfuse3.EntryAttributes:
        if not node.is_dir and not node.size_known and not node.size_failed:
            try:
                await self.tree.ensure_size(node)
            except Exception as exc:
                log.error("%s: %s", node.path(), describe(exc))
        return self.attrs(node)

    # -- namespace
    async def lookup(self, parent_inode, name, ctx=None):
        parent = self._node(parent_inode)
        if not parent.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        try:
            node = await self.tree.lookup(parent, os.fsdecode(name))
        except Exception as exc:
            raise self._fail(exc, f"listing {parent.path()}")
        if node is None:
            miss = pyfuse3.EntryAttributes()
            miss.st_ino = 0                 # a negative entry the kernel may cache
            miss.entry_timeout = NEGATIVE_TIMEOUT
            return miss
        attrs = await self._attrs_exact(node)
        self.tree.remember(node)
        return attrs

    async def getattr(self, inode, ctx=None):
        return await self._attrs_exact(self._node(inode))

    async def forget(self, inode_list):
        for ino, count in inode_list:
            self.tree.forget(ino, count)

    async def opendir(self, inode, ctx):
        node = self._node(inode)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh, start_id, token):
        node = self._node(fh)
        try:
            children = await self.tree.children(node) if node.ino != ROOT_INODE \
                else node.sorted_children()
        except Exception as exc:
            raise self._fail(exc, f"listing {node.path()}")
        for child in children:
            if child.ino <= start_id:
                continue
            if not pyfuse3.readdir_reply(token, os.fsencode(child.name), self.attrs(child), child.ino):
                break
            self.tree.remember(child)

    async def releasedir(self, fh):
        pass

    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 128 * 1024
        s.f_blocks = s.f_bfree = s.f_bavail = 0
        s.f_files = len(self.tree.inodes)
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    # -- files
    async def open(self, inode, flags, ctx):
        node = self._node(inode)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        try:
            await self.tree.ensure_size(node)
            siblings = [c.entry for c in node.parent.sorted_children()
                        if not c.is_dir] if node.parent else []
            handle = self.reader.open(node.source, node.entry, siblings)
        except Exception as exc:
            raise self._fail(exc, f"opening {node.path()}")
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = (node, handle)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True, direct_io=False)

    async def read(self, fh, off, size):
        node, handle = self.handles[fh]
        try:
            return await self.reader.read(handle, off, size)
        except ReadError as exc:
            if exc.stale and node.parent is not None:
                self.tree.invalidate(node.parent)
            raise pyfuse3.FUSEError(exc.errno)
        except Exception as exc:
            raise self._fail(exc, f"reading {node.path()}")

    async def release(self, fh):
        _, handle = self.handles.pop(fh)
        self.reader.release(handle)

    # -- extended attributes: recording metadata, and the control interface on the root
    async def getxattr(self, inode, name, ctx):
        node = self._node(inode)
        if inode == ROOT_INODE and name.startswith(CONTROL_PREFIX) and self.control:
            value = await self.control.get(name[len(CONTROL_PREFIX):].decode())
            if value is None:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
            return value
        if name.startswith(b"user."):
            value = node.entry.xattrs.get(name[5:].decode("utf-8", "replace"))
            if value is not None:
                return str(value).encode()
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    async def listxattr(self, inode, ctx):
        node = self._node(inode)
        return [b"user." + k.encode() for k in node.entry.xattrs]

    async def setxattr(self, inode, name, value, ctx):
        if inode == ROOT_INODE and name.startswith(CONTROL_PREFIX) and self.control:
            try:
                ok = await self.control.set(name[len(CONTROL_PREFIX):].decode(), value)
            except Exception as exc:
                raise self._fail(exc, f"control {name!r}")
            if ok:
                return
            raise pyfuse3.FUSEError(errno.EINVAL)
        raise pyfuse3.FUSEError(errno.EROFS)

    async def removexattr(self, inode, name, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    # -- everything that would change the tree: read-only for now
    async def setattr(self, inode, attr, fields, fh, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mkdir(self, parent_inode, name, mode, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def unlink(self, parent_inode, name, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rmdir(self, parent_inode, name, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def symlink(self, parent_inode, name, target, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def link(self, inode, new_parent_inode, new_name, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def create(self, parent_inode, name, mode, flags, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def write(self, fh, off, buf):
        raise pyfuse3.FUSEError(errno.EROFS)
