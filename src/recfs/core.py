"""The core every front-end drives: the namespace (tree.py), the reader and its cache,
the access policy, staged uploads and the control operations, over the sources.

Plain trio code, no pyfuse3. A front-end (the FUSE adapter in fs.py) translates its
calls into these and their errors into its own terms: `CoreError` carries the errno
of a refusal (EROFS, ENOENT, ...); anything else from below is a failure to report
(SourceError, HttpError and ReadError carry an errno; the rest is EIO).
"""
from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from .config import SavedSearch, Tuning
from .content.cache import Cache
from .content.policy import AccessPolicy
from .content.reader import Folder, Handle, Reader, ReadError
from .content.uploads import Staged, Uploads
from .control import Control
from .finder import Finder, Found, Progress
from .http import Http
from .index import MetadataIndex
from .saved import SavedSearches
from .search import Query
from .sources.base import Entry, Kind, Source, SourceError
from .tree import Local, Node, Tree

log = logging.getLogger("recfs.core")


async def close_sources(sources: list[Source]) -> None:
    """Stop the sources' background work (shielded: this runs while unmounting)."""
    for src in sources:
        with trio.move_on_after(5) as scope:
            scope.shield = True
            try:
                await src.aclose()
            except Exception as exc:
                log.warning("source %s: closing: %s", src.name, exc)


class CoreError(Exception):
    """A refusal: the operation does not apply here (errno says which)."""

    def __init__(self, errno_: int, message: str = ""):
        super().__init__(message or os.strerror(errno_))
        self.errno = errno_


@dataclass(slots=True)
class Writing:
    """An open file being written into an upload folder (a staged upload)."""
    node: Node
    fd: int
    staged: Staged


class Core:
    def __init__(self, sources: list[Source], cache: Cache, http: Http, nursery: trio.Nursery,
                 tuning: Tuning | None = None, uploads_dir: Path | None = None,
                 searches: list[SavedSearch] | None = None):
        t = tuning or Tuning()
        self.sources = sources
        self.cache = cache
        self.http = http
        self.nursery = nursery
        self.policy = AccessPolicy()
        self.reader = Reader(cache, nursery, http, self.policy, max_connections=t.max_connections,
                             first_window=t.first_window, max_window=t.max_window,
                             max_request=t.max_request, small_file=t.small_file,
                             sibling_prefetch=t.sibling_prefetch)
        self.index = MetadataIndex(Path(cache.dir))
        self.finder = Finder(self)
        # saved searches: a folder of the root beside the sources, its files theirs (saved.py);
        # a run is confirmed by the config, and asks the services that filter afresh
        views = [SavedSearches(searches, sources, lambda query, progress: self.finder.search(
            query, yes=True, again=True, progress=progress))] if searches else []
        self.tree = Tree([*sources, *views], cache, nursery, self.reader.learn_sizes, self.policy,
                         index=self.index, max_entries=t.entries_in_memory)
        self.reader.on_changed = self._object_changed
        self.uploads = Uploads(uploads_dir or Path(cache.dir) / "uploads",
                               {s.name: s for s in sources})
        self.uploads.on_uploaded = self._landed
        self._writing: dict[str, Node] = {}     # staged upload id -> its node
        self.control = Control(self)
        if views:
            self.control.extra["saved_searches"] = views[0].status

    @property
    def on_changed(self):
        """Called with a node whose object changed: front-ends drop what they cached."""
        return self.tree.on_changed

    @on_changed.setter
    def on_changed(self, callback) -> None:
        self.tree.on_changed = callback

    async def aclose(self) -> None:
        await self.reader.aclose()
        await close_sources(self.sources)
        self.index.close()

    # -- the namespace
    def node(self, ino: int) -> Node | None:
        return self.tree.get(ino)

    def xattrs(self, node: Node) -> dict[str, str]:
        """The recording's metadata (caller, agent, duration...) as its service lists it."""
        return self.tree.xattrs(node)

    async def lookup(self, parent: Node, name: str) -> Node | None:
        if not parent.is_dir:
            raise CoreError(errno.ENOTDIR)
        return await self.tree.lookup(parent, name)

    async def children(self, folder: Node) -> list[Node]:
        if not folder.is_dir:
            raise CoreError(errno.ENOTDIR)
        if folder is self.tree.root:
            return folder.sorted_children()
        return await self.tree.children(folder)

    async def for_readdir(self, folder: Node) -> tuple[list[Node] | None, list[tuple] | None]:
        """The folder's entries as the kernel's readdir is told them (tree.py T8): its
        nodes, or rows read from the index while its snapshot is out of RAM."""
        if not folder.is_dir:
            raise CoreError(errno.ENOTDIR)
        if folder is self.tree.root:
            return folder.sorted_children(), None
        return await self.tree.for_readdir(folder)

    async def stat(self, node: Node, *, relist: bool = False) -> Node:
        """`node` with its exact size where it can be learnt. `relist`: the caller's
        copy of the attributes expired, so answer from a listing no older than the
        folder's TTL (one listing per TTL at most)."""
        parent = node.parent
        if relist and parent is not None and parent is not self.tree.root \
                and not self.tree.fresh(parent) and parent.children is not None and node.local is None:
            try:
                await self.tree.refresh(parent)
            except Exception as exc:
                log.warning("listing %s: %s (answering from the last listing)", parent.path(), exc)
        if node.is_dir:
            return node
        if parent is not None and self.policy.statted(parent.ino, parent.files()[2].get(node.ino)):
            self.tree.learn_ahead(node)     # ls -l and the like: the folder's sizes too
        if not node.size_known and not node.size_failed:
            try:
                await self.tree.ensure_size(node)
            except Exception as exc:
                log.error("%s: %s", node.path(), exc)
        return node

    async def resolve(self, path: str) -> Node | None:
        """The node at a path under the root ('' or '/': the root)."""
        node = self.tree.root
        for part in [p for p in path.strip("/").split("/") if p]:
            if not node.is_dir:
                return None
            node = await self.tree.lookup(node, part) if node is not self.tree.root \
                else node.children.get(part)
            if node is None:
                return None
        return node

    async def search(self, query: Query, *, yes: bool = False,
                     progress: Progress | None = None) -> list[Found]:
        """The recordings matching `query` in every source, newest first (finder.py):
        with the services' own filters where they have them, else from the listings.
        Raises finder.NeedsConfirmation for a walk of whole accounts without `yes`."""
        return await self.finder.search(query, yes=yes, progress=progress)

    def writable(self, folder: Node) -> bool:
        """Whether files can be created in `folder` (its service takes uploads there)."""
        return folder.is_dir and folder.source is not None and folder.source.upload_dir(folder.entry.ref)

    # -- reading
    async def open(self, node: Node) -> Handle | Writing:
        """Open a file for reading (a file being uploaded: as it is written so far)."""
        if node.is_dir:
            raise CoreError(errno.EISDIR)
        if node.local is Local.WRITING:
            return self.open_written(node, truncate=False)
        folder = node.parent
        if node.recheck:            # after `recfs refresh`: is what is cached current?
            node.recheck = False
            if folder is not None and not self.tree.fresh(folder):
                await self.tree.refresh(folder)         # the entry as listed now
            await self.tree.ensure_size(node)
            await self.reader.recheck(node.source, node.entry)
        view, copy = None, False
        if folder is not None and folder.children is not None:
            _, entries, position = folder.files()
            view = Folder(folder.ino, entries, position.get(node.ino))
            copy = self.policy.opened(folder.ino, view.index, lambda: self.tree.folder_before(folder))
            if copy:
                self.tree.learn_ahead(node)
        await self.tree.ensure_size(node)
        handle = self.reader.open(node.source, node.entry, view, copy=copy,
                                  label=node.path(), owner=node)
        self.tree.copy_progress(node)
        return handle

    async def read(self, node: Node, handle: Handle | Writing, offset: int, length: int) -> bytes:
        if isinstance(handle, Writing):
            return os.pread(handle.fd, length, offset)
        try:
            return await self.reader.read(handle, offset, length)
        except ReadError as exc:
            if exc.stale:
                self._object_changed(node)
            raise

    def _object_changed(self, node: Node) -> None:
        """The object changed or vanished on the service: list its folder again, and let
        the front-ends drop what they cached of it."""
        if node.parent is not None:
            self.tree.invalidate(node.parent)
        self.tree.on_changed(node)

    @staticmethod
    def pages_kept(handle: Handle | Writing) -> None:
        """The front-end hands out pages it kept from an earlier open of the same content:
        this open may not start over on another version of the object (R1)."""
        if isinstance(handle, Handle):
            handle.pages_kept = True

    @staticmethod
    def content_version(handle: Handle | Writing) -> tuple:
        """Which content an open file shows: front-ends that cache pages keep them only
        while this stays the same (the listing's version, and each version met since)."""
        if isinstance(handle, Writing):
            return ("writing", handle.staged.id)
        return handle.state.entry.version, handle.state.ce.changes

    def release(self, handle: Handle | Writing) -> None:
        if isinstance(handle, Writing):
            os.close(handle.fd)
        else:
            self.reader.release(handle)

    # -- writing: new files in upload folders, deletes where the source allows them
    def _upload_folder(self, folder: Node) -> Node:
        if not self.writable(folder):
            raise CoreError(errno.EROFS)
        return folder

    async def create(self, folder: Node, name: str, *, exclusive: bool = False) -> Writing:
        """A new file in an upload folder, staged until it is closed (uploads.py)."""
        self._upload_folder(folder)
        existing = await self.tree.lookup(folder, name)
        if existing is not None and existing.local is not Local.WRITING:
            raise CoreError(errno.EEXIST if exclusive else errno.EROFS)
        if existing is not None:
            self.uploads.discard(existing.upload)
            self._writing.pop(existing.upload.id, None)
            self.tree.remove(existing)
        staged = self.uploads.create(folder.source.name, folder.entry.ref, name)
        entry = Entry(name, Kind.FILE, ref=None, mtime=time.time(), size=0, id=f"staged:{staged.id}")
        node = self.tree.add_local(folder, name, entry, Local.WRITING, staged)
        self._writing[staged.id] = node
        return self.open_written(node, truncate=False)

    def open_written(self, node: Node, *, truncate: bool) -> Writing:
        if node.local is not Local.WRITING:
            raise CoreError(errno.EROFS)
        fd = os.open(self.uploads.data_path(node.upload), os.O_RDWR)
        if truncate:
            self.truncate(node, 0)
        return Writing(node, fd, node.upload)

    def write(self, handle: Handle | Writing, offset: int, data: bytes) -> int:
        if not isinstance(handle, Writing):
            raise CoreError(errno.EROFS)
        n = os.pwrite(handle.fd, data, offset)
        self.uploads.writing(handle.staged)
        entry = handle.node.entry
        entry.size = max(entry.size or 0, offset + n)
        entry.mtime = time.time()
        return n

    def truncate(self, node: Node, size: int) -> None:
        if node.local is not Local.WRITING:
            raise CoreError(errno.EROFS)
        os.truncate(self.uploads.data_path(node.upload), size)
        node.entry.size = size
        self.uploads.writing(node.upload)

    async def close_written(self, handle: Handle | Writing) -> None:
        """close() of a written file: upload it now, so close reports whether it
        landed (U1-U4 in uploads.py). Raises when it did not; it stays staged."""
        if not isinstance(handle, Writing):
            return
        staged = handle.staged
        if staged.id not in self.uploads.pending or handle.node.local is not Local.WRITING:
            return                      # already sent
        try:
            await self.uploads.upload(staged)
        finally:
            # U3: a close is also the moment to send what failed before
            self.uploads.retry_soon(self.nursery, exclude=staged.id)

    def _landed(self, staged: Staged) -> None:
        """An upload reached the service (at its close, or by a retry): its node shows
        the uploaded file until a listing has it (T6)."""
        node = self._writing.pop(staged.id, None)
        if node is None or node.local is not Local.WRITING or node.parent is None:
            return
        ref = node.source.child_ref(node.parent.entry.ref, node.name, Kind.FILE)
        self.tree.uploaded(node, Entry(node.name, Kind.FILE, ref=ref, mtime=node.entry.mtime,
                                       size=staged.size, id=str(ref), version=f"uploaded:{staged.id}"))

    async def mkdir(self, folder: Node, name: str) -> Node:
        self._upload_folder(folder)
        if await self.tree.lookup(folder, name) is not None:
            raise CoreError(errno.EEXIST)
        ref = folder.source.child_ref(folder.entry.ref, name, Kind.DIR)
        return self.tree.add_local(folder, name, Entry(name, Kind.DIR, ref=ref, mtime=time.time(),
                                                       id=str(ref)), Local.MADE_DIR)

    async def unlink(self, folder: Node, name: str) -> None:
        node = await self.tree.lookup(folder, name) if folder.is_dir else None
        if node is None:
            raise CoreError(errno.ENOENT)
        if node.is_dir:
            raise CoreError(errno.EISDIR)
        if node.local is Local.WRITING:         # never sent: just forget it
            self.uploads.discard(node.upload)
            self._writing.pop(node.upload.id, None)
            self.tree.remove(node)
            return
        if node.source is None or not node.source.allow_delete or folder.source is not node.source:
            raise CoreError(errno.EROFS)        # (shown away from its home: deleted there only)
        await node.source.delete(node.entry)
        log.info("deleted %s", node.path())
        self.tree.remove(node)
        self.finder.forget(node.source)

    async def rename(self, old_folder: Node, old_name: str, new_folder: Node, new_name: str) -> None:
        """mv of a service's file within its source, where the source can do it (Kazoo:
        a soft-deleted recording moved out of deleted/ is restored); everything else is
        EROFS. The file leaves its folder at once; the folder it went to is listed again
        at its next access."""
        node = await self.tree.lookup(old_folder, old_name) if old_folder.is_dir else None
        if node is None:
            raise CoreError(errno.ENOENT)
        if not new_folder.is_dir:
            raise CoreError(errno.ENOTDIR)
        if node.is_dir or node.local is not None or node.source is None or old_folder.source is not node.source \
                or new_folder.source is not node.source or new_folder.local is not None:
            raise CoreError(errno.EROFS)
        try:
            await node.source.rename(node.entry, old_folder.entry.ref, new_folder.entry.ref, new_name)
        except SourceError as exc:
            if exc.errno != errno.EROFS:
                raise
            log.info("mv %s: %s", node.path(), exc)     # a refusal, said once, not an error
            raise CoreError(errno.EROFS) from None
        log.info("moved %s to %s/%s", node.path(), new_folder.path(), new_name)
        self.tree.remove(node)
        self.tree.invalidate(new_folder)

    async def rmdir(self, folder: Node, name: str) -> None:
        node = await self.tree.lookup(folder, name) if folder.is_dir else None
        if node is None:
            raise CoreError(errno.ENOENT)
        if not node.is_dir:
            raise CoreError(errno.ENOTDIR)
        if node.local is Local.MADE_DIR and not node.children:
            self.tree.remove(node)
            return
        source = node.source
        if node.local is not None or source is None \
                or not (source.folders_are_places and source.allow_delete):
            raise CoreError(errno.EROFS)
        # a folder that is only the place of its objects: empty on the service (listed
        # afresh) means gone there too, as after `rm -r` of its files
        self.tree.invalidate(node)
        if await self.children(node):
            raise CoreError(errno.ENOTEMPTY)
        log.info("removed the empty folder %s", node.path())
        self.tree.remove(node)

    async def run(self) -> None:
        """The core's background work, for as long as it is mounted."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.cache.run_flusher)
            nursery.start_soon(self.uploads.run_retries)
