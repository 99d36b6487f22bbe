"""The one owner of access-pattern decisions.

Every component that behaves differently by how files are used asks here, so they
agree and share one clock: the core (the sizes of a folder learnt ahead), the reader
(small files fetched ahead, bulk jobs), the size learner (small files fetched whole
with their size) and the tree (the next folder prepared before a copy gets there).
Providers never see access patterns.

Positions are a file's place in its folder's readdir order (tree.py T1: name order
on a fresh listing), the order ls, cp -r, find, tar and rsync go in.

Invariants:
 P1. A folder is being copied when its files are opened one after another: an open
     of the file right after the one opened last in that folder. The copy counts as
     under way for COPY_MEMORY seconds after such an open: long enough to outlast
     the read of one file, short enough that an `ls -l` a little later is an `ls -l`
     again. Files opened in another order (ffprobe of a few files, a random pick)
     never make a copy.
 P2. A folder is being listed with sizes when its files are stat'ed one after
     another the same way (ls -l, find -ls, du, rsync's file list), or copied.
 P3. A copy "came from the folder before" (T5 in tree.py) only when that folder, in
     name order, was itself being copied when the copy opened its first file here.
 P4. Memory is bounded: at most MAX_FOLDERS folders are remembered, the least
     recently used forgotten first.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable

import trio

COPY_MEMORY = 10.0          # seconds a copy counts as under way after its last open in order
MAX_FOLDERS = 4096


@dataclass(slots=True)
class _Folder:
    opened: int = -1                # position of the file opened last
    statted: int = -1               # position of the file stat'ed last
    copy_at: float = float("-inf")  # when an open last continued the order
    came_from_before: bool = False  # the copy came here from the folder before it (P3)


class AccessPolicy:
    def __init__(self, clock: Callable[[], float] = trio.current_time):
        self.clock = clock
        self._folders: OrderedDict[Hashable, _Folder] = OrderedDict()

    def _folder(self, key: Hashable) -> _Folder:
        state = self._folders.pop(key, None) or _Folder()
        self._folders[key] = state
        while len(self._folders) > MAX_FOLDERS:
            self._folders.popitem(last=False)
        return state

    def opened(self, folder: Hashable, index: int | None,
               before: Callable[[], Hashable | None] = lambda: None) -> bool:
        """A file at position `index` of `folder` was opened; `before()` names the folder
        just before it in name order. True when the open continues a copy (P1)."""
        if index is None:
            return False
        state = self._folder(folder)
        if index == 0 or state.opened < 0:          # a copy may be arriving here (P3)
            prior = self._folders.get(before())
            state.came_from_before = prior is not None and self._under_way(prior)
        follows = index > 0 and index == state.opened + 1
        state.opened = index
        if follows:
            state.copy_at = self.clock()
        return follows

    def statted(self, folder: Hashable, index: int | None) -> bool:
        """A size of the file at position `index` of `folder` was asked for. True when
        the folder is being listed with sizes or copied (P2): its other sizes will be
        asked for too."""
        if index is None:
            return False
        state = self._folder(folder)
        follows = index > 0 and index == state.statted + 1
        state.statted = index
        return follows or self._under_way(state)

    def copying(self, folder: Hashable) -> bool:
        """Whether `folder` is being copied (P1)."""
        state = self._folders.get(folder)
        return state is not None and self._under_way(state)

    def came_from_before(self, folder: Hashable) -> bool:
        """Whether the copy of `folder` came from the folder before it (P3)."""
        state = self._folders.get(folder)
        return state is not None and state.came_from_before and self._under_way(state)

    def _under_way(self, state: _Folder) -> bool:
        return self.clock() - state.copy_at < COPY_MEMORY
