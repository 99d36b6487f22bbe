"""The metadata index: what listings showed, on disk, so that RAM holds only the folders
in use and a remount within a listing's lifetime asks the services nothing.

`metadata.sqlite` in the cache directory:
  sources(name, fingerprint)     the configuration each source's rows were made by
  folders(ino, listed_at, ttl, count, entries, xattrs)
                                 each folder's last listing: when (epoch seconds), for how
                                 long, its entries (one pickled list of tuples) and their
                                 metadata (one pickled {ino: xattrs}), by the inode
                                 numbers the tree gave them
  inos(ino, folder)              the folder of every inode number ever listed

A listing is one row, not a row per entry: writing a folder of a thousand files is one
INSERT, and reading it back one SELECT. Sizes learnt after a listing are not written
here: the cache keeps them by object version (`Cache.known_size`), and the tree asks it
for the sizes a listing lacked when it reads a folder back.

Invariants:
 M1. A folder's listing is replaced as a whole, in one statement, by each listing of
     it: the index never mixes two listings of one folder.
 M2. An entry's inode number is its node's number in the tree (T1 in tree.py): a node
     made again from the index keeps it, in this mount and the next. `inos` keeps the
     numbers of entries no longer listed, so a number is never given twice.
 M3. A source's folders are dropped at mount when its configuration changed (another
     root, another filter...): they may describe another tree.
 M4. What RAM does not keep of an entry (its metadata) is read from here when asked.
"""
from __future__ import annotations

import os
import pickle
import sqlite3
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping

import cachetools

from .sources.base import Entry, Kind

SCHEMA = 2                  # PRAGMA user_version: another layout is dropped and made again
NO_XATTRS: Mapping[str, str] = MappingProxyType({})     # an entry whose metadata is here only (M4)
_KINDS = {Kind.FILE: 0, Kind.DIR: 1}
_BY_CODE = {v: k for k, v in _KINDS.items()}
DIR_CODE = _KINDS[Kind.DIR]

# A stored entry (a row of a folder's `entries`):
#   (ino, name, kind code, ref, mtime, size, size_hint, id, version)
Row = tuple


def entry_of(row: Row) -> Entry:
    """The entry a stored row describes (without its metadata: M4)."""
    ino, name, kind, ref, mtime, size, hint, id_, version = row
    return Entry(name, _BY_CODE[kind], ref, mtime, size, hint, id_, version, NO_XATTRS)


class MetadataIndex:
    def __init__(self, directory: Path):
        path = Path(directory) / "metadata.sqlite"
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        os.chmod(path, 0o600)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        if self.db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA:
            for (table,) in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall():
                self.db.execute(f"DROP TABLE {table}")
            self.db.execute(f"PRAGMA user_version={SCHEMA}")
        self.db.execute("CREATE TABLE IF NOT EXISTS sources (name TEXT PRIMARY KEY, fingerprint TEXT)")
        self.db.execute("CREATE TABLE IF NOT EXISTS folders (ino INTEGER PRIMARY KEY, listed_at REAL, "
                        "ttl REAL, count INTEGER, entries BLOB, xattrs BLOB)")
        self.db.execute("CREATE TABLE IF NOT EXISTS inos (ino INTEGER PRIMARY KEY, folder INTEGER)")
        # the metadata of the folders asked last (getfattr over a folder: one read of it)
        self._xattrs: cachetools.LRUCache[int, dict[int, dict]] = cachetools.LRUCache(4)

    def close(self) -> None:
        self.db.close()

    # -- sources (M3)
    def keep_source(self, name: str, fingerprint: str, ino: int | None) -> bool:
        """Whether the folders of source `name` (its root folder at `ino`) were listed
        under this configuration; if not, they are dropped."""
        row = self.db.execute("SELECT fingerprint FROM sources WHERE name=?", (name,)).fetchone()
        if row is not None and row[0] == fingerprint:
            return True
        self.db.execute("BEGIN")
        if ino is not None:
            self._drop_under(ino)
        self.db.execute("INSERT OR REPLACE INTO sources(name, fingerprint) VALUES (?, ?)",
                        (name, fingerprint))
        self.db.execute("COMMIT")
        return False

    def set_sources(self, root: int, roots: list[tuple[int, str, Entry]]) -> None:
        """The mount's sources, by the inode numbers of their root folders; the folders of
        a source no longer configured are dropped."""
        kept = {ino for ino, _, _ in roots}
        gone = [ino for ino, _, _ in self.load(root) if ino not in kept]
        self.db.execute("BEGIN")
        for ino in gone:
            self._drop_under(ino)
        self.db.execute("COMMIT")
        self.save(root, 0.0, 0.0, roots)

    def _drop_under(self, ino: int) -> None:
        folders = [ino]
        while folders:
            folder = folders.pop()
            folders += self.folders_in(folder)
            self.db.execute("DELETE FROM folders WHERE ino=?", (folder,))
        self._xattrs.clear()

    # -- inode numbers (M2)
    def next_ino(self) -> int:
        return (self.db.execute("SELECT MAX(ino) FROM inos").fetchone()[0] or 0) + 1

    def child_ino(self, parent: int, name: str) -> int | None:
        return next((ino for ino, n, _ in self.load(parent) if n == name), None)

    def parent_of(self, ino: int) -> int | None:
        row = self.db.execute("SELECT folder FROM inos WHERE ino=?", (ino,)).fetchone()
        return row[0] if row else None

    # -- listings (M1)
    def save(self, folder: int, listed_at: float, ttl: float,
             children: Iterable[tuple[int, str, Entry]]) -> None:
        entries, xattrs = [], {}
        for ino, name, e in children:
            entries.append((ino, name, _KINDS[e.kind], e.ref, e.mtime, e.size, e.size_hint, e.id,
                            e.version))
            if e.xattrs:
                xattrs[ino] = dict(e.xattrs)
        self.db.execute("BEGIN")
        self.db.execute("INSERT OR REPLACE INTO folders(ino, listed_at, ttl, count, entries, xattrs) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (folder, listed_at, ttl, len(entries), pickle.dumps(entries, protocol=5),
                         pickle.dumps(xattrs, protocol=5) if xattrs else None))
        self.db.executemany("INSERT OR IGNORE INTO inos(ino, folder) VALUES (?, ?)",
                            [(e[0], folder) for e in entries])
        self.db.execute("COMMIT")
        self._xattrs.pop(folder, None)

    def listed(self, folder: int) -> tuple[float, float] | None:
        """(listed_at, ttl) of the folder's last listing, if the index holds it."""
        row = self.db.execute("SELECT listed_at, ttl FROM folders WHERE ino=?", (folder,)).fetchone()
        return (row[0], row[1]) if row else None

    def snapshot(self, folder: int, *, fresh_at: float | None = None) -> tuple[float, float, list[Row]] | None:
        """(listed_at, ttl, rows) of the folder's last listing, in one statement; None when
        the index has none or, with `fresh_at` (epoch seconds), when it was stale by then.
        The rows are as stored: a caller makes entries (`entry_of`) only of those it keeps."""
        row = self.db.execute("SELECT listed_at, ttl, entries FROM folders WHERE ino=?", (folder,)).fetchone()
        if row is None or (fresh_at is not None and fresh_at - row[0] >= row[1]):
            return None
        return row[0], row[1], pickle.loads(row[2])

    def load(self, folder: int) -> list[tuple[int, str, Entry]]:
        """The folder's entries as last listed (without their metadata: M4)."""
        snap = self.snapshot(folder)
        return [] if snap is None else [(row[0], row[1], entry_of(row)) for row in snap[2]]

    def folders_in(self, folder: int) -> list[int]:
        return [ino for ino, _, e in self.load(folder) if e.kind is Kind.DIR]

    def expire(self, folder: int) -> None:
        """The folder must be listed again (`recfs refresh`, a changed object); its entries
        stay until then, for the inode numbers (M2)."""
        self.db.execute("UPDATE folders SET listed_at=0, ttl=0 WHERE ino=?", (folder,))

    def remove(self, ino: int) -> None:
        """An entry deleted here (or a file whose upload was discarded), and what was under it."""
        folder = self.parent_of(ino)
        row = None if folder is None else self.db.execute(
            "SELECT listed_at, ttl, entries, xattrs FROM folders WHERE ino=?", (folder,)).fetchone()
        self.db.execute("BEGIN")
        self._drop_under(ino)
        if row is not None:
            listed_at, ttl, entries, xattrs = row
            kept = [e for e in pickle.loads(entries) if e[0] != ino]
            meta = pickle.loads(xattrs) if xattrs else {}
            meta.pop(ino, None)
            self.db.execute("UPDATE folders SET count=?, entries=?, xattrs=? WHERE ino=?",
                            (len(kept), pickle.dumps(kept, protocol=5),
                             pickle.dumps(meta, protocol=5) if meta else None, folder))
        self.db.execute("COMMIT")
        self._xattrs.pop(folder, None)

    def xattrs(self, ino: int) -> dict[str, Any]:
        folder = self.parent_of(ino)
        if folder is None:
            return {}
        meta = self._xattrs.get(folder)
        if meta is None:
            row = self.db.execute("SELECT xattrs FROM folders WHERE ino=?", (folder,)).fetchone()
            meta = self._xattrs[folder] = pickle.loads(row[0]) if row and row[0] else {}
        return meta.get(ino, {})

    def count(self) -> int:
        """Entries listed in all."""
        return self.db.execute("SELECT COALESCE(SUM(count), 0) FROM folders").fetchone()[0]
