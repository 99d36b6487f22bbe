"""recfs as an fsspec filesystem: the tree the mount shows, without FUSE.

    import fsspec
    fs = fsspec.filesystem("recfs", config="calls.toml")
    fs.ls("kazoo/<account>/2025/10/10")
    with fsspec.open("recfs://kazoo/<account>/2025/10/10/x.mp3", "rb", config="calls.toml") as f:
        head = f.read(4096)
    fs.get("8x8/us-east/callrecording/2025/10/", "local/", recursive=True)

A thin front-end over the one core (core.py), as fs.py is for FUSE: every call runs
on the core's trio thread (runtime.py), so names, sizes, times, metadata, reads,
the cache, single flight, read-ahead, bulk jobs, uploads and deletes are the mount's.

 S1. The tree is the mount's: the same paths (a source's name, then the names the
     mount shows), sizes (exact where a file's size is asked for: `info`, and `ls`,
     `find` and `walk` with details, stat each file in readdir order as `ls -l`
     does), times, modes, and metadata (`info()["metadata"]`: the `user.*`
     extended attributes of the mount, without the prefix).
 S2. Bytes come through `Core.open`/`Core.read` only: no fsspec block cache. A file
     opened for reading keeps a small read buffer (as the kernel's page cache does
     for the mount); `read()` of the rest asks the core for it at once.
 S3. `get`, `cat` and `cp` of many files open them one after another in readdir
     order, folder by folder, stat then open, as `cp -r` does through the mount:
     the access policy sees a copy (sizes learnt ahead, small files fetched ahead,
     bulk jobs).
 S4. Changes follow the mount's rules: files can be written (`open(..., "wb")`,
     `put`, `pipe`, `touch`) and folders made only where the service takes uploads
     (Alvaria `imports/`), and close reports whether the upload landed; `rm` deletes
     on the service only for sources with `allow_delete`; `mv` moves a file only where
     rename through the mount would; everything else is refused as the mount refuses
     it, with an OSError carrying the errno (EROFS, EEXIST, ENOENT, EISDIR, ...).
 S5. Errors are OSErrors with the errno the mount would answer; a path that is not
     there is FileNotFoundError.
"""
from __future__ import annotations

import errno
import io
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import trio
from fsspec.callbacks import DEFAULT_CALLBACK
from fsspec.spec import AbstractFileSystem

from .config import Config, load_config, parse_config
from .content.reader import ReadError
from .core import Core, CoreError, Writing
from .http import MAX_SIZE, HttpError
from .runtime import CoreThread, core_thread
from .sources.base import SourceError
from .tree import Local, Node

READ_BUFFER = 256 * 1024            # the read buffer of an open file (S2)
WRITE_BUFFER = 1 << 20              # bytes gathered before they go to the staged upload
COPY_BLOCK = 8 << 20                # a copy asks the core for this much per call
LIST_CONCURRENCY = 8                # folders listed at once by find and walk


def _strip(path) -> str:
    path = os.fspath(path) if not isinstance(path, str) else path
    for prefix in ("recfs://", "recfs::"):
        if path.startswith(prefix):
            path = path[len(prefix):]
    return path.strip("/")


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _split(path: str) -> tuple[str, str]:
    parent, _, name = path.rpartition("/")
    return parent, name


def _oserror(exc: BaseException, path: str) -> OSError:
    """The OSError the mount would answer for a failure of the core (S5)."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, CoreError):
        return OSError(exc.errno, os.strerror(exc.errno), path)
    if isinstance(exc, (SourceError, ReadError)):
        return OSError(exc.errno, str(exc), path)
    if isinstance(exc, HttpError):
        return OSError(errno.EIO, str(exc), path)
    return OSError(errno.EIO, f"{type(exc).__name__}: {exc}", path)


# -- on the core's thread ------------------------------------------------------------

async def _resolve(core: Core, path: str) -> Node:
    node = await core.resolve(path)
    if node is None:
        raise CoreError(errno.ENOENT)
    return node


def _metadata(core: Core, node: Node) -> dict[str, str]:
    return {k: str(v) for k, v in core.xattrs(node).items()}


def _info(core: Core, node: Node, path: str) -> dict[str, Any]:
    """What the mount's stat and getfattr show of `node` (S1)."""
    e = node.entry
    if node.is_dir:
        mode, size, kind = stat.S_IFDIR | (0o755 if core.writable(node) else 0o555), 0, "directory"
    else:
        mode = stat.S_IFREG | (0o644 if node.local is Local.WRITING else 0o444)
        size, kind = min(max(0, node.size or 0), MAX_SIZE), "file"
    return {"name": path, "size": size, "type": kind, "mtime": e.mtime, "mode": mode,
            "ino": node.ino, "exact_size": node.is_dir or node.size_known,
            "metadata": _metadata(core, node)}


async def _info_of(core: Core, path: str) -> dict:
    node = await _resolve(core, path)
    await core.stat(node)
    return _info(core, node, path)


async def _listing(core: Core, folder: Node, path: str, sizes: bool) -> list[tuple[Node, dict]]:
    """A folder's entries in readdir order, with their infos; with `sizes`, each file
    stat'ed in that order, as `ls -l` does (the access policy then learns the folder's
    sizes ahead)."""
    kids = await core.children(folder)
    out = []
    for kid in kids:
        if sizes and not kid.is_dir:
            await core.stat(kid)
        out.append((kid, _info(core, kid, _join(path, kid.name))))
    return out


async def _ls(core: Core, path: str, sizes: bool) -> list[dict]:
    node = await _resolve(core, path)
    if not node.is_dir:
        await core.stat(node)
        return [_info(core, node, path)]
    return [info for _, info in await _listing(core, node, path, sizes)]


async def _tree(core: Core, path: str, maxdepth: int | None, sizes: bool,
                on_error: str = "omit") -> list[tuple[str, list[dict]]]:
    """Every folder under `path` (to `maxdepth` levels) with its entries: [(folder, infos)],
    depth first in readdir order, as os.walk goes. Folders are listed LIST_CONCURRENCY
    at a time; a folder that cannot be listed is shown empty (on_error "omit") or
    fails the walk."""
    root = await _resolve(core, path)
    if not root.is_dir:
        return []
    found: dict[str, list[tuple[Node, dict]]] = {}
    failed: list[Exception] = []
    limiter = trio.CapacityLimiter(LIST_CONCURRENCY)

    async def visit(nursery: trio.Nursery, node: Node, where: str, depth: int) -> None:
        try:
            async with limiter:
                listed = await _listing(core, node, where, sizes)
        except Exception as exc:
            if on_error == "raise":         # the first failure ends the walk, as itself
                failed.append(exc)
                nursery.cancel_scope.cancel()
                return
            listed = []
        found[where] = listed
        if maxdepth is None or depth < maxdepth:
            for kid, info in listed:
                if kid.is_dir:
                    nursery.start_soon(visit, nursery, kid, info["name"], depth + 1)

    async with trio.open_nursery() as nursery:
        await visit(nursery, root, path, 1)
    if failed:
        raise failed[0]
    out: list[tuple[str, list[dict]]] = []
    stack = [path]
    while stack:
        where = stack.pop()
        listed = found[where]
        out.append((where, [info for _, info in listed]))
        stack += reversed([info["name"] for kid, info in listed if kid.is_dir and info["name"] in found])
    return out


async def _plan(core: Core, paths: list[str]) -> list[tuple[int, bool]]:
    """The order a copy of `paths` goes in (S3): folders first, then files folder by
    folder (folders as first met in `paths`), each folder's files in readdir order.
    [(index into paths, is a folder)]; a path that is not there keeps its place."""
    folders, files = [], {}
    for i, p in enumerate(paths):
        node = await core.resolve(p)
        if node is not None and node.is_dir:
            folders.append((i, True))
            continue
        parent = node.parent.ino if node is not None and node.parent is not None else -1 - i
        files.setdefault(parent, []).append((node.ino if node is not None else 0, i))
    order = folders
    for group in files.values():
        order += [(i, False) for _, i in sorted(group)]
    return order


async def _open_read(core: Core, path: str, first: int, whole_closes: bool = False
                     ) -> tuple[Node, Any, int, bytes]:
    """Stat and open a file, as `cp` does through the mount, and read its first
    `first` bytes: (node, handle, size, bytes). `whole_closes`: a file that came whole
    is released at once (its handle None)."""
    node = await _resolve(core, path)
    if node.is_dir:
        raise CoreError(errno.EISDIR)
    await core.stat(node)
    handle = await core.open(node)
    try:
        data = await core.read(node, handle, 0, first) if first else b""
    except BaseException:
        core.release(handle)
        raise
    size = node.entry.size or 0
    if whole_closes and len(data) >= size:
        core.release(handle)
        handle = None
    return node, handle, size, data


async def _read_range(core: Core, path: str, start: int, end: int | None) -> bytes:
    """One file's bytes [start, end) in one call: open, read, release."""
    node, handle, size, _ = await _open_read(core, path, 0)
    try:
        stop = size if end is None else min(end, size)
        if start >= stop:
            return b""
        return await core.read(node, handle, start, stop - start)
    finally:
        core.release(handle)


async def _read(core: Core, node: Node, handle, offset: int, length: int) -> bytes:
    return await core.read(node, handle, offset, length)


def _release(core: Core, handle) -> None:
    core.release(handle)


async def _create(core: Core, path: str, mode: str) -> Writing:
    parent, name = _split(path)
    if not name:
        raise CoreError(errno.EISDIR)
    folder = await _resolve(core, parent)
    if not folder.is_dir:
        raise CoreError(errno.ENOTDIR)
    existing = await core.lookup(folder, name)
    if mode == "ab" and existing is not None:
        if existing.is_dir:
            raise CoreError(errno.EISDIR)
        return core.open_written(existing, truncate=False)
    if existing is not None and existing.is_dir:
        raise CoreError(errno.EISDIR)
    return await core.create(folder, name, exclusive=mode == "xb")


def _write(core: Core, handle: Writing, offset: int, data: bytes) -> int:
    return core.write(handle, offset, data)


async def _close_written(core: Core, handle: Writing) -> None:
    try:
        await core.close_written(handle)
    finally:
        core.release(handle)


async def _mkdir(core: Core, path: str, parents: bool, exist_ok: bool) -> None:
    parts = [p for p in path.split("/") if p]
    if not parts:
        if exist_ok:
            return
        raise CoreError(errno.EEXIST)
    node = core.tree.root
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        kid = await core.lookup(node, part) if node is not core.tree.root else node.children.get(part)
        if kid is not None:
            if not kid.is_dir:
                raise CoreError(errno.ENOTDIR if not last else errno.EEXIST)
            if last and not exist_ok:
                raise CoreError(errno.EEXIST)
            node = kid
            continue
        if not last and not parents:
            raise CoreError(errno.ENOENT)
        if node is core.tree.root:
            raise CoreError(errno.EROFS)
        node = await core.mkdir(node, part)


async def _unlink(core: Core, path: str) -> None:
    parent, name = _split(path)
    folder = await _resolve(core, parent)
    if folder is core.tree.root:
        raise CoreError(errno.EROFS if name in folder.children else errno.ENOENT)
    await core.unlink(folder, name)


async def _rmdir(core: Core, path: str) -> None:
    parent, name = _split(path)
    folder = await _resolve(core, parent)
    if folder is core.tree.root:
        raise CoreError(errno.EROFS if name in folder.children else errno.ENOENT)
    await core.rmdir(folder, name)


async def _rename(core: Core, path1: str, path2: str) -> None:
    """A move, where the mount's rename would do it (the core decides; EROFS elsewhere)."""
    (parent1, name1), (parent2, name2) = _split(path1), _split(path2)
    old, new = await _resolve(core, parent1), await _resolve(core, parent2)
    if old is core.tree.root or new is core.tree.root or not name2:
        raise CoreError(errno.EROFS)
    await core.rename(old, name1, new, name2)


async def _refresh(core: Core, path: str) -> int:
    node = await core.resolve(path)
    return core.tree.invalidate_under(node) if node is not None else 0


# -- open files ----------------------------------------------------------------------

class _Reader(io.RawIOBase):
    """A file opened for reading: its reads are `Core.read`s of one open handle."""

    def __init__(self, fs: "RecfsFileSystem", path: str):
        super().__init__()
        self._fs = fs
        self.path = self.name = path       # name: what tools that guess by extension read
        self._node, self._handle, self.size, _ = fs._run(_open_read, path, 0, path=path)
        self._generation = fs._core.generation
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise OSError(errno.EINVAL, "negative seek position", self.path)
        self._pos = pos
        return pos

    def _get(self, length: int) -> bytes:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        _same_core(self._fs, self._generation, self.path)
        length = min(length, self.size - self._pos)
        if length <= 0:
            return b""
        data = self._fs._run(_read, self._node, self._handle, self._pos, length, path=self.path)
        self._pos += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self._get(len(buffer))
        n = len(data)
        memoryview(buffer).cast("B")[:n] = data
        return n

    def readall(self) -> bytes:
        return self._get(self.size - self._pos)

    def close(self) -> None:
        if not self.closed:
            try:
                if _alive(self._fs, self._generation):
                    self._fs._core.run_sync(_release, self._handle)
            finally:
                super().close()


def _alive(fs: "RecfsFileSystem", generation: int) -> bool:
    """Whether the core an open file was opened on still runs (not closed since)."""
    return fs._core.generation == generation and fs._core.running


def _same_core(fs: "RecfsFileSystem", generation: int, path: str) -> None:
    if not _alive(fs, generation):
        raise OSError(errno.EBADF, "the recfs filesystem was closed since this file was opened", path)


class _Writer(io.RawIOBase):
    """A file being written into an upload folder: staged, uploaded at close, which
    raises when the upload did not land (the file stays staged, as with the mount)."""

    def __init__(self, fs: "RecfsFileSystem", path: str, mode: str):
        super().__init__()
        self._fs = fs
        self.path = path
        self._handle = fs._run(_create, path, mode, path=path)
        self._generation = fs._core.generation
        self._pos = fs._core.run_sync(lambda core, h: h.node.entry.size or 0, self._handle) \
            if mode == "ab" else 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def write(self, data) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        data = bytes(data)
        _same_core(self._fs, self._generation, self.path)
        n = self._fs._run(_write, self._handle, self._pos, data, path=self.path, sync=True)
        self._pos += n
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                # a core closed first leaves the file staged, never sent (U4 in uploads.py)
                _same_core(self._fs, self._generation, self.path)
                self._fs._run(_close_written, self._handle, path=self.path)
            finally:
                super().close()


class RecfsFile(io.BufferedReader):
    """What `open(path, "rb")` returns: a buffered, seekable reader (S2)."""

    def __init__(self, raw: _Reader, buffer_size: int):
        super().__init__(raw, buffer_size)
        self.path = raw.path
        self.size = raw.size


class RecfsWriteFile(io.BufferedWriter):
    """What `open(path, "wb")` returns; `close()` uploads (S4)."""

    def __init__(self, raw: _Writer, buffer_size: int):
        super().__init__(raw, buffer_size)
        self.path = raw.path


# -- the filesystem ------------------------------------------------------------------

class RecfsFileSystem(AbstractFileSystem):
    """The recfs tree of a config as an fsspec filesystem.

    `config`: the path of a recfs config file (TOML), or its parsed content as a dict
    (default: $RECFS_CONFIG). `cache_dir`: where this process's cache goes
    (default `<[cache] dir>/fsspec`; runtime.py C2: one numbered slot per process);
    `cache_size`: its byte quota (default `[cache] max_size`).
    """

    protocol = "recfs"
    root_marker = ""
    cachable = True

    def __init__(self, config: str | os.PathLike | dict | None = None, cache_dir: str | None = None,
                 cache_size: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if config is None:
            config = os.environ.get("RECFS_CONFIG")
            if not config:
                raise ValueError("recfs: no config (config=PATH, or $RECFS_CONFIG)")
        if isinstance(config, dict):
            ident: tuple = ("data", json.dumps(config, sort_keys=True, default=str))
            load = lambda: parse_config(config)     # noqa: E731
        else:
            where = Path(config).expanduser().resolve()
            ident = ("file", str(where))
            load = lambda: load_config(where)       # noqa: E731
        key = (*ident, str(cache_dir) if cache_dir else None, cache_size)
        self._core: CoreThread = core_thread(
            key, lambda: CoreThread(load(), Path(cache_dir) if cache_dir else None, cache_size))
        self._collect = threading.local()

    @property
    def config(self) -> Config:
        return self._core.cfg

    @property
    def fsid(self) -> str:
        return f"recfs-{self._fs_token}"

    def close(self) -> None:
        """Stop this config's core in this process (runtime.py C1): it starts again
        at the next call."""
        self._core.close()

    def _run(self, afn, *args, path: str = "", sync: bool = False):
        try:
            if sync:
                return self._core.run_sync(afn, *args)
            return self._core.run(afn, *args)
        except (CoreError, SourceError, ReadError, HttpError) as exc:
            raise _oserror(exc, path) from None

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        return _strip(path)

    @classmethod
    def _parent(cls, path):
        return _split(_strip(path))[0]

    def unstrip_protocol(self, name: str) -> str:
        return name if name.startswith("recfs://") else f"recfs://{name}"

    # -- the namespace (S1)
    def ls(self, path, detail=True, sizes=None, **kwargs):
        """A folder's entries in readdir order. With `detail`, each file's exact size
        (as `ls -l`); `sizes=False` leaves sizes the listing lacks as the mount's
        first guess (`exact_size` False) instead of asking the service."""
        path = _strip(path)
        infos = self._run(_ls, path, detail if sizes is None else sizes, path=path)
        return infos if detail else [i["name"] for i in infos]

    def info(self, path, **kwargs):
        path = _strip(path)
        return self._run(_info_of, path, path=path)

    def exists(self, path, **kwargs):
        path = _strip(path)
        try:
            return self._run(_resolve, path, path=path) is not None
        except FileNotFoundError:
            return False

    def isdir(self, path):
        try:
            return self._run(_resolve, _strip(path)).is_dir
        except OSError:
            return False

    def isfile(self, path):
        try:
            return not self._run(_resolve, _strip(path)).is_dir
        except OSError:
            return False

    def walk(self, path, maxdepth=None, topdown=True, on_error="omit", **kwargs):
        if maxdepth is not None and maxdepth < 1:
            raise ValueError("maxdepth must be at least 1")
        path = _strip(path)
        detail = kwargs.pop("detail", False)
        sizes = kwargs.pop("sizes", detail)
        try:
            folders = self._run(_tree, path, maxdepth, sizes,
                                "raise" if on_error == "raise" else "omit", path=path)
        except OSError as exc:
            if on_error == "raise":
                raise
            if callable(on_error):
                on_error(exc)
            return
        levels = []
        for where, infos in folders:
            dirs = {i["name"].rpartition("/")[2]: i for i in infos if i["type"] == "directory"}
            files = {i["name"].rpartition("/")[2]: i for i in infos if i["type"] != "directory"}
            levels.append((where, dirs if detail else list(dirs), files if detail else list(files)))
        if topdown:
            yield from levels
        else:
            yield from reversed(levels)

    def find(self, path, maxdepth=None, withdirs=False, detail=False, **kwargs):
        path = _strip(path)
        sizes = kwargs.pop("sizes", detail)
        out: dict[str, dict] = {}
        try:
            node_info = self._run(_info_of if sizes else _ls_self, path, path=path)
        except FileNotFoundError:
            return {} if detail else []
        if node_info["type"] != "directory":
            out[path] = node_info
        else:
            if withdirs and path:
                out[path] = node_info
            for _, infos in self._run(_tree, path, maxdepth, sizes, path=path):
                for info in infos:
                    if withdirs or info["type"] != "directory":
                        out[info["name"]] = info
        names = sorted(out)
        return {n: out[n] for n in names} if detail else names

    def glob(self, path, maxdepth=None, **kwargs):
        # glob needs names and kinds: sizes are learnt only for detail=True
        kwargs.setdefault("sizes", bool(kwargs.get("detail", False)))
        return super().glob(path, maxdepth=maxdepth, **kwargs)

    def invalidate_cache(self, path=None):
        """Drop the listing snapshots under `path` (all: None), as `recfs refresh`."""
        if self._core.running:
            self._run(_refresh, _strip(path or ""))

    def refresh(self, path: str = "") -> int:
        """`recfs refresh PATH`: the next listing under PATH asks the service."""
        return self._run(_refresh, _strip(path))

    def status(self) -> dict:
        """What `recfs status` shows for a mount, for this process's core."""
        return self._run(_status)

    # -- reading (S2, S3)
    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        path = _strip(path)
        if mode == "rb":
            return RecfsFile(_Reader(self, path), block_size or READ_BUFFER)
        if mode in ("wb", "xb", "ab"):
            return RecfsWriteFile(_Writer(self, path, mode), block_size or WRITE_BUFFER)
        raise ValueError(f"recfs: mode {mode!r} is not supported (rb, wb, xb, ab)")

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        # "create": an exclusive open, so an existing file is EEXIST from the core
        with self.open(path, "xb" if mode == "create" else "wb", **kwargs) as f:
            f.write(value)

    def cat_file(self, path, start=None, end=None, **kwargs):
        path = _strip(path)
        if (start is not None and start < 0) or (end is not None and end < 0):
            size = self.info(path)["size"]
            start = max(0, size + start) if start is not None and start < 0 else start
            end = max(0, size + end) if end is not None and end < 0 else end
        return self._run(_read_range, path, start or 0, end, path=path)

    def cat(self, path, recursive=False, on_error="raise", **kwargs):
        paths = self.expand_path(path, recursive=recursive, **kwargs)
        if len(paths) == 1 and not isinstance(path, list) and paths[0] == _strip(path):
            return self.cat_file(paths[0], **kwargs)
        out = {}
        for i, is_dir in self._run(_plan, paths):
            if is_dir:
                continue
            try:
                out[paths[i]] = self.cat_file(paths[i], **kwargs)
            except Exception as exc:
                if on_error == "raise":
                    raise
                if on_error == "return":
                    out[paths[i]] = exc
        return {p: out[p] for p in paths if p in out}

    def get(self, rpath, lpath, recursive=False, callback=DEFAULT_CALLBACK, maxdepth=None, **kwargs):
        """Copy files to local disk: fsspec's own rules for what goes where, then the
        files one after another in readdir order (S3)."""
        pairs: list[tuple[str, str]] = []
        self._collect.pairs = pairs
        try:
            super().get(rpath, lpath, recursive=recursive, maxdepth=maxdepth, **kwargs)
        finally:
            self._collect.pairs = None
        if not pairs:
            return
        callback.set_size(len(pairs))
        for i, is_dir in self._run(_plan, [r for r, _ in pairs]):
            rp, lp = pairs[i]
            if is_dir and not hasattr(lp, "write"):
                os.makedirs(lp, exist_ok=True)
            else:
                with callback.branched(rp, lp) as child:
                    self._get_one(rp, lp, child)
            callback.relative_update(1)

    def get_file(self, rpath, lpath, callback=DEFAULT_CALLBACK, outfile=None, **kwargs):
        pairs = getattr(self._collect, "pairs", None)
        if pairs is not None:           # inside get(): gather, copy in readdir order after
            pairs.append((_strip(rpath), outfile if outfile is not None else lpath))
            return
        if outfile is None and not hasattr(lpath, "write") and self.isdir(rpath):
            os.makedirs(lpath, exist_ok=True)
            return
        self._get_one(_strip(rpath), outfile if outfile is not None else lpath, callback)

    def _get_one(self, rpath: str, lpath, callback=DEFAULT_CALLBACK) -> None:
        """One file to local disk: its first COPY_BLOCK bytes come with the open, and a
        file no bigger is released in that same call (one call to the core's thread
        for a recording of usual size); the rest COPY_BLOCK at a time."""
        node, handle, size, data = self._run(_open_read, rpath, COPY_BLOCK, True, path=rpath)
        generation = self._core.generation
        try:
            callback.set_size(size)
            own = not hasattr(lpath, "write")
            if own:
                parent = os.path.dirname(os.fspath(lpath))
                if parent:
                    os.makedirs(parent, exist_ok=True)
            out = open(lpath, "wb") if own else lpath
            try:
                pos = 0
                while True:
                    out.write(data)
                    pos += len(data)
                    callback.relative_update(len(data))
                    if pos >= size or not data:
                        break
                    _same_core(self, generation, rpath)
                    data = self._run(_read, node, handle, pos, COPY_BLOCK, path=rpath)
            finally:
                if own:
                    out.close()
        finally:
            if handle is not None and _alive(self, generation):
                self._core.run_sync(_release, handle)

    # -- changes (S4)
    def mkdir(self, path, create_parents=True, **kwargs):
        path = _strip(path)
        self._run(_mkdir, path, create_parents, False, path=path)

    def makedirs(self, path, exist_ok=False):
        path = _strip(path)
        self._run(_mkdir, path, True, exist_ok, path=path)

    def rmdir(self, path):
        path = _strip(path)
        self._run(_rmdir, path, path=path)

    def rm_file(self, path):
        path = _strip(path)
        self._run(_unlink, path, path=path)

    def _rm(self, path):
        self.rm_file(path)

    def rm(self, path, recursive=False, maxdepth=None):
        paths = self.expand_path(path, recursive=recursive, maxdepth=maxdepth)
        for p in reversed(paths):
            if self.isdir(p):
                self.rmdir(p)
            else:
                self.rm_file(p)

    def cp_file(self, path1, path2, **kwargs):
        path1, path2 = _strip(path1), _strip(path2)
        copies = getattr(self._collect, "copies", None)
        if copies is not None:          # inside copy(): gather, copy in readdir order after
            copies.append((path1, path2))
            return
        if self.isdir(path1):
            self.makedirs(path2, exist_ok=True)
            return
        parent = self._parent(path2)
        if parent:
            self.makedirs(parent, exist_ok=True)    # as put_file does, and cp -r through the mount
        with self.open(path2, "wb") as out:
            self._get_one(path1, out)

    def copy(self, path1, path2, recursive=False, maxdepth=None, on_error=None, **kwargs):
        """fsspec's copy, with the sources read one after another in readdir order (S3)."""
        if on_error is None:
            on_error = "ignore" if recursive else "raise"
        copies: list[tuple[str, str]] = []
        self._collect.copies = copies
        try:
            super().copy(path1, path2, recursive=recursive, maxdepth=maxdepth, on_error=on_error,
                         **kwargs)
        finally:
            self._collect.copies = None
        for i, _ in self._run(_plan, [p for p, _ in copies]) if copies else ():
            try:
                self.cp_file(*copies[i])
            except FileNotFoundError:
                if on_error == "raise":
                    raise

    def mv(self, path1, path2, recursive=False, maxdepth=None, **kwargs):
        """A file moved as rename moves it through the mount: where the service can (the
        core decides), else EROFS; never a copy and a delete (S4)."""
        if isinstance(path1, list) or isinstance(path2, list):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path1))
        path1, path2 = _strip(path1), _strip(path2)
        if self.isdir(path2):
            path2 = _join(path2, _split(path1)[1])
        self._run(_rename, path1, path2, path=path1)

    def modified(self, path):
        import datetime
        return datetime.datetime.fromtimestamp(self.info(path)["mtime"], datetime.timezone.utc)

    created = modified


async def _ls_self(core: Core, path: str) -> dict:
    """A path's entry without asking for its exact size."""
    return _info(core, await _resolve(core, path), path)


async def _status(core: Core) -> dict:
    return core.control.status()
