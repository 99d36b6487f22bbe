"""The pyfuse3 adapter: translate FUSE calls to the tree, the reader and the upload
staging, and errors to errno values. No provider knowledge and no I/O policy live here."""
from __future__ import annotations

import bisect
import collections
import errno
import functools
import logging
import os
import stat
import time
from typing import Any

import pyfuse3
import trio

from .content.reader import Reader, ReadError, describe
from .content.uploads import Staged
from .http import MAX_SIZE, HttpError
from .sources.base import Entry, Kind, SourceError
from .tree import ROOT_INODE, Node, Tree

log = logging.getLogger("recfs.fs")

FILE_TIMEOUT = 300.0        # recordings do not change: let the kernel keep what it learnt
NEGATIVE_TIMEOUT = 10.0
CONTROL_PREFIX = b"user.recfs."


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, tree: Tree, reader: Reader, control: Any = None, uploads: Any = None,
                 nursery: trio.Nursery | None = None, direct_io_min_size: int = 0):
        super().__init__()
        self.direct_io_min_size = direct_io_min_size
        self.tree = tree
        self.reader = reader
        self.uploads = uploads
        self.nursery = nursery
        self.op_counts: collections.Counter[str] = collections.Counter()   # for recfs status
        tree.on_changed = self.forget_kernel_cache
        self.control = control          # answers the user.recfs.* xattrs on the root
        self.uid = os.getuid()
        self.gid = os.getgid()
        self.handles: dict[int, Any] = {}
        self._next_fh = 1

    # -- helpers
    def forget_kernel_cache(self, node: Node) -> None:
        """The object changed on the service: the kernel must drop the attributes and
        pages it keeps for it. Done from a worker thread, after the current request:
        a notification sent from inside a handler can deadlock against the kernel."""
        if self.nursery is not None:
            self.nursery.start_soon(self._invalidate, node.ino)

    @staticmethod
    async def _invalidate(ino: int) -> None:
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, ino, False)
        except Exception as exc:            # the kernel may not know the inode: fine
            log.debug("invalidate inode %d: %s", ino, exc)

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
            writable = node.source is not None and node.source.upload_dir(e.ref)
            a.st_mode = stat.S_IFDIR | (0o755 if writable else 0o555)
            a.st_nlink = 2
            a.st_size = 0
            ttl = node.source.listing_ttl if node.source else 60.0
            a.entry_timeout = a.attr_timeout = min(ttl, FILE_TIMEOUT)
        else:
            a.st_mode = stat.S_IFREG | (0o644 if isinstance(node.staged, Staged) else 0o444)
            a.st_nlink = 1
            a.st_size = min(max(0, node.size), MAX_SIZE)
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
        node = self._node(inode)
        parent = node.parent
        if parent is not None and parent.ino != ROOT_INODE and not self.tree.fresh(parent) \
                and parent.children is not None and node.staged is None:
            # the kernel asks again once its attribute timeout ran out: answer from a
            # current listing of the folder (one listing per folder TTL at most)
            try:
                await self.tree.refresh(parent)
            except Exception as exc:
                log.warning("listing %s: %s (answering from the last listing)", parent.path(),
                            describe(exc))
        return await self._attrs_exact(node)

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
        # children come in inode order (T2): resume after start_id by bisection
        first = bisect.bisect_right(children, start_id, key=lambda n: n.ino)
        for child in children[first:]:
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
        if isinstance(node.staged, Staged):
            return self._open_staged(node, flags)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        try:
            await self.tree.ensure_size(node)
            siblings, index = node.parent.files() if node.parent else ([], {})
            handle = self.reader.open(node.source, node.entry, siblings, index.get(node.entry.id))
            self.tree.copy_progress(node)
        except Exception as exc:
            raise self._fail(exc, f"opening {node.path()}")
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = (node, handle)
        # direct I/O hands each read() to us with the reader's own buffer: one copy
        # less and no second copy of the file in the page cache (B1: 0.6 -> 0.86 GB/s),
        # but no shared mmap and no kernel readahead, so only for big files
        direct = 0 < self.direct_io_min_size <= node.entry.size
        return pyfuse3.FileInfo(fh=fh, keep_cache=not direct, direct_io=direct)

    async def read(self, fh, off, size):
        node, handle = self.handles[fh]
        if isinstance(handle, _StagedHandle):
            return os.pread(handle.fd, size, off)
        try:
            return await self.reader.read(handle, off, size)
        except ReadError as exc:
            if exc.stale and node.parent is not None:
                self.tree.invalidate(node.parent)
                # attributes only, right now (no page locks involved, so no deadlock):
                # the next stat must come back to us; the pages are dropped afterwards
                try:
                    pyfuse3.invalidate_inode(node.ino, True)
                except OSError:
                    pass
                self.forget_kernel_cache(node)
            raise pyfuse3.FUSEError(exc.errno)
        except Exception as exc:
            raise self._fail(exc, f"reading {node.path()}")

    async def release(self, fh):
        _, handle = self.handles.pop(fh)
        if isinstance(handle, _StagedHandle):
            os.close(handle.fd)
            return
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
        # security.*, system.posix_acl_* and the rest: not supported here. EOPNOTSUPP
        # (not ENODATA) lets ls -l remember that per file system and stop asking for
        # every file (two round trips per entry otherwise)
        raise pyfuse3.FUSEError(errno.EOPNOTSUPP)

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

    # -- writes: files created in a folder the service takes uploads in (Alvaria
    # imports/), deletes where the source allows them; everything else is EROFS

    def _writable_dir(self, parent_inode) -> Node:
        parent = self._node(parent_inode)
        if not parent.is_dir or parent.source is None or self.uploads is None \
                or not parent.source.upload_dir(parent.entry.ref):
            raise pyfuse3.FUSEError(errno.EROFS)
        return parent

    async def create(self, parent_inode, name, mode, flags, ctx):
        parent = self._writable_dir(parent_inode)
        fname = os.fsdecode(name)
        existing = await self.tree.lookup(parent, fname)
        if existing is not None and not isinstance(existing.staged, Staged):
            raise pyfuse3.FUSEError(errno.EEXIST if flags & os.O_EXCL else errno.EROFS)
        if existing is not None:
            self.uploads.discard(existing.staged)
            self.tree.remove(existing)
        staged = self.uploads.create(parent.source.name, parent.entry.ref, fname)
        entry = Entry(fname, Kind.FILE, ref=None, mtime=time.time(), size=0, id=f"staged:{staged.id}")
        node = self.tree.add_local(parent, fname, entry, staged)
        info = self._open_staged(node, flags | os.O_RDWR)
        self.tree.remember(node)
        return info, self.attrs(node)

    def _open_staged(self, node: Node, flags) -> pyfuse3.FileInfo:
        staged = node.staged
        fd = os.open(self.uploads.data_path(staged), os.O_RDWR)
        if flags & os.O_TRUNC:
            os.ftruncate(fd, 0)
            node.entry.size = 0
            staged.dirty = True
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = (node, _StagedHandle(fd, staged))
        # direct_io: the size changes while written; no stale page cache either way
        return pyfuse3.FileInfo(fh=fh, keep_cache=False, direct_io=True)

    async def write(self, fh, off, buf):
        node, handle = self.handles[fh]
        if not isinstance(handle, _StagedHandle):
            raise pyfuse3.FUSEError(errno.EROFS)
        n = os.pwrite(handle.fd, buf, off)
        handle.staged.dirty = True
        node.entry.size = max(node.entry.size or 0, off + n)
        node.entry.mtime = time.time()
        return n

    async def flush(self, fh):
        """close(): upload a written file now, so close reports whether it landed."""
        node, handle = self.handles[fh]
        if not isinstance(handle, _StagedHandle):
            return
        staged = handle.staged
        if staged.id not in self.uploads.pending or not (staged.dirty or staged.closed):
            return                      # already sent, or opened and closed unwritten
        try:
            await self.uploads.upload(staged)
        except Exception:
            raise pyfuse3.FUSEError(errno.EIO)
        finally:
            # U3: a close is also the moment to send what failed before
            if self.nursery is not None:
                self.uploads.retry_soon(self.nursery, exclude=staged.id)
            else:
                await self.uploads.retry_all(exclude=staged.id)
        src = node.source
        if node.parent is not None:
            node.entry = Entry(node.name, Kind.FILE, ref=src.child_ref(node.parent.entry.ref, node.name, Kind.FILE),
                               mtime=node.entry.mtime, size=staged.size,
                               id=str(src.child_ref(node.parent.entry.ref, node.name, Kind.FILE)),
                               version=f"uploaded:{staged.id}")
            node.staged = "uploaded"
            parent = node.parent
            while parent is not None and parent.staged == "dir":
                parent.staged = None            # the folder exists on the service now
                parent = parent.parent
            self.tree.invalidate(node.parent)

    async def fsync(self, fh, datasync):
        await self.flush(fh)

    async def setattr(self, inode, attr, fields, fh, ctx):
        node = self._node(inode)
        if not isinstance(node.staged, Staged):
            raise pyfuse3.FUSEError(errno.EROFS)
        if fields.update_size:
            with open(self.uploads.data_path(node.staged), "r+b") as f:
                f.truncate(attr.st_size)
            node.entry.size = attr.st_size
            node.staged.dirty = True
        # modes and times of a file being uploaded cannot be stored: accepted, ignored
        return self.attrs(node)

    async def mkdir(self, parent_inode, name, mode, ctx):
        parent = self._writable_dir(parent_inode)
        dname = os.fsdecode(name)
        if await self.tree.lookup(parent, dname) is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        ref = parent.source.child_ref(parent.entry.ref, dname, Kind.DIR)
        entry = Entry(dname, Kind.DIR, ref=ref, mtime=time.time(), id=str(ref))
        node = self.tree.add_local(parent, dname, entry, "dir")
        self.tree.remember(node)
        return self.attrs(node)

    async def unlink(self, parent_inode, name, ctx):
        parent = self._node(parent_inode)
        node = await self.tree.lookup(parent, os.fsdecode(name)) if parent.is_dir else None
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if isinstance(node.staged, Staged):       # never sent: just forget it
            self.uploads.discard(node.staged)
            self.tree.remove(node)
            return
        if node.source is None or not node.source.allow_delete:
            raise pyfuse3.FUSEError(errno.EROFS)
        try:
            await node.source.delete(node.entry)
        except Exception as exc:
            raise self._fail(exc, f"deleting {node.path()}")
        log.info("deleted %s", node.path())
        self.tree.remove(node)

    async def rmdir(self, parent_inode, name, ctx):
        parent = self._node(parent_inode)
        node = await self.tree.lookup(parent, os.fsdecode(name)) if parent.is_dir else None
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if node.staged == "dir" and not node.children:
            self.tree.remove(node)
            return
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def symlink(self, parent_inode, name, target, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def link(self, inode, new_parent_inode, new_name, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)


class _StagedHandle:
    __slots__ = ("fd", "staged")

    def __init__(self, fd: int, staged: Staged):
        self.fd = fd
        self.staged = staged


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
