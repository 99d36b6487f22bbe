"""The metadata index: what listings showed, on disk, so that RAM holds only the folders
in use and a remount within a listing's lifetime asks the services nothing.

`metadata.sqlite` in the cache directory:
  sources(name, fingerprint)            the configuration each source's rows were made by
  folders(ino, listed_at, ttl)          when a folder was listed (epoch seconds) and for how long
  nodes(ino, parent, name, kind, ref, mtime, size, size_hint, id, version, xattrs)
                                        every entry listed, by the inode number the tree gave it

Invariants:
 M1. A folder's rows are replaced as a whole, in one transaction, by each listing of it:
     the index never mixes two listings of one folder.
 M2. A row's inode number is its node's number in the tree (T1 in tree.py): a node made
     again from the index keeps it, in this mount and the next.
 M3. A source's rows are dropped at mount when its configuration changed (another root,
     another filter...): they may describe another tree.
 M4. What RAM does not keep of an entry (its metadata) is read from here when asked.
"""
from __future__ import annotations

import os
import pickle
import sqlite3
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from .sources.base import Entry, Kind

FILE, DIR = 0, 1
NO_XATTRS: Mapping[str, str] = MappingProxyType({})     # an entry whose metadata is here only (M4)


class MetadataIndex:
    def __init__(self, directory: Path):
        path = Path(directory) / "metadata.sqlite"
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        os.chmod(path, 0o600)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS sources (name TEXT PRIMARY KEY, fingerprint TEXT)")
        self.db.execute("CREATE TABLE IF NOT EXISTS folders (ino INTEGER PRIMARY KEY, listed_at REAL, "
                        "ttl REAL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS nodes (ino INTEGER PRIMARY KEY, parent INTEGER, "
                        "name TEXT, kind INTEGER, ref BLOB, mtime REAL, size INTEGER, "
                        "size_hint INTEGER, id TEXT, version TEXT, xattrs BLOB)")
        self.db.execute("CREATE INDEX IF NOT EXISTS nodes_parent ON nodes(parent, name)")

    def close(self) -> None:
        self.db.close()

    # -- sources (M3)
    def keep_source(self, name: str, fingerprint: str, ino: int | None) -> bool:
        """Whether the rows of source `name` (its root folder at `ino`) were made by this
        configuration; if not, they are dropped."""
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
        """The mount's sources, by the inode numbers of their root folders; the rows of a
        source no longer configured are dropped."""
        kept = {ino for ino, _, _ in roots}
        gone = [r[0] for r in self.db.execute("SELECT ino FROM nodes WHERE parent=?", (root,))
                if r[0] not in kept]
        self.db.execute("BEGIN")
        for ino in gone:
            self._drop_under(ino)
        self.db.execute("COMMIT")
        self.save(root, 0.0, 0.0, roots)

    def _drop_under(self, ino: int) -> None:
        folders = [ino]
        while folders:
            batch, folders = folders[:500], folders[500:]
            marks = ",".join("?" * len(batch))
            folders += [r[0] for r in self.db.execute(
                f"SELECT ino FROM nodes WHERE parent IN ({marks}) AND kind={DIR}", batch)]
            self.db.execute(f"DELETE FROM nodes WHERE parent IN ({marks})", batch)
            self.db.execute(f"DELETE FROM folders WHERE ino IN ({marks})", batch)

    # -- inode numbers
    def next_ino(self) -> int:
        return (self.db.execute("SELECT MAX(ino) FROM nodes").fetchone()[0] or 0) + 1

    def child_ino(self, parent: int, name: str) -> int | None:
        row = self.db.execute("SELECT ino FROM nodes WHERE parent=? AND name=?", (parent, name)).fetchone()
        return row[0] if row else None

    def parent_of(self, ino: int) -> int | None:
        row = self.db.execute("SELECT parent FROM nodes WHERE ino=?", (ino,)).fetchone()
        return row[0] if row else None

    # -- listings (M1)
    def save(self, folder: int, listed_at: float, ttl: float,
             children: Iterable[tuple[int, str, Entry]]) -> None:
        rows = [(ino, folder, name, DIR if e.kind is Kind.DIR else FILE, pickle.dumps(e.ref),
                 e.mtime, e.size, e.size_hint, e.id, e.version,
                 pickle.dumps(e.xattrs) if e.xattrs else None)
                for ino, name, e in children]
        self.db.execute("BEGIN")
        self.db.execute("DELETE FROM nodes WHERE parent=?", (folder,))
        self.db.executemany("INSERT OR REPLACE INTO nodes(ino, parent, name, kind, ref, mtime, size, "
                            "size_hint, id, version, xattrs) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
        self.db.execute("INSERT OR REPLACE INTO folders(ino, listed_at, ttl) VALUES (?, ?, ?)",
                        (folder, listed_at, ttl))
        self.db.execute("COMMIT")

    def listed(self, folder: int) -> tuple[float, float] | None:
        """(listed_at, ttl) of the folder's last listing, if the index holds it."""
        row = self.db.execute("SELECT listed_at, ttl FROM folders WHERE ino=?", (folder,)).fetchone()
        return (row[0], row[1]) if row else None

    def load(self, folder: int) -> list[tuple[int, str, Entry]]:
        """The folder's entries as last listed (without their metadata: M4)."""
        out = []
        for ino, name, kind, ref, mtime, size, hint, id_, version in self.db.execute(
                "SELECT ino, name, kind, ref, mtime, size, size_hint, id, version FROM nodes "
                "WHERE parent=?", (folder,)):
            out.append((ino, name, Entry(name, Kind.DIR if kind == DIR else Kind.FILE, pickle.loads(ref),
                                         mtime=mtime, size=size, size_hint=hint, id=id_,
                                         version=version, xattrs=NO_XATTRS)))
        return out

    def expire(self, folder: int) -> None:
        """The folder must be listed again (`recfs refresh`, a changed object); its rows
        stay until then, for the inode numbers (M2)."""
        self.db.execute("UPDATE folders SET listed_at=0, ttl=0 WHERE ino=?", (folder,))

    def folders_in(self, folder: int) -> list[int]:
        return [r[0] for r in self.db.execute(
            f"SELECT ino FROM nodes WHERE parent=? AND kind={DIR}", (folder,))]

    def remove(self, ino: int) -> None:
        """An entry deleted here (or a file whose upload was discarded), and what was under it."""
        self.db.execute("BEGIN")
        self.db.execute("DELETE FROM nodes WHERE ino=?", (ino,))
        self._drop_under(ino)
        self.db.execute("COMMIT")

    def set_sizes(self, sizes: list[tuple[int, int]]) -> None:
        if sizes:
            self.db.execute("BEGIN")
            self.db.executemany("UPDATE nodes SET size=? WHERE ino=?", [(s, i) for i, s in sizes])
            self.db.execute("COMMIT")

    def xattrs(self, ino: int) -> dict[str, Any]:
        row = self.db.execute("SELECT xattrs FROM nodes WHERE ino=?", (ino,)).fetchone()
        return pickle.loads(row[0]) if row and row[0] else {}

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM nodes").fetchone()[0]
