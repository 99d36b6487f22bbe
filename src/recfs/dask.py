"""Scale-out on Dask: every recording under a recfs path, through a function, on a
dask.distributed cluster.

    from distributed import Client
    from recfs.dask import map_recordings, describe_recording
    with Client("tcp://scheduler:8786") as client:
        rows = map_recordings(describe_recording, "kazoo/<account>/2025",
                              config="/etc/recfs/calls.toml", client=client)

`plan` turns a path into work units; `map_recordings` runs a function over every
recording of them on the cluster and gathers the results with progress;
`describe_recording` is the function of `recfs map` (format, duration, sha256).

 D1. Units are balanced: the files of a folder stay together and in readdir order
     (a worker then reads them one after another, which the core recognises as a
     copy: sizes learnt ahead, small files fetched ahead, bulk jobs), folders smaller
     than a unit are put together, and a folder bigger than one is cut into
     consecutive runs, aiming at UNITS_PER_WORKER units per worker of about the same
     weight (bytes, with PER_FILE_WEIGHT for each file's own round trips). A cut has a
     cost: the core's reads run up to AHEAD files ahead of a copy, so the first files
     after a cut may be fetched by both workers; a folder is cut only into runs worth
     CUT_COST_FACTOR times that. Units go to the cluster in path order, so that each
     worker goes forward through a folder, as the core's look-ahead expects.
 D2. Every recording is in exactly one unit, and its result comes back once: a
     failure of the function or of a read is that file's `error`, not the unit's.
 D3. Each worker process has its own recfs filesystem and core, made from the same
     config (runtime.py C1), and its own cache (C2: a slot of the cache directory per
     process; the config and its secrets must be readable on the workers), started on
     every worker before the first unit. The client only lists the tree, with the
     sizes its listings give (no size probes).
"""
from __future__ import annotations

import hashlib
import math
import sys
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .config import Tuning
from .content.reader import WHOLE_PROBE
from .fsspec import RecfsFileSystem
from .tree import AHEAD_CHUNKS, SIZE_CHUNK

UNITS_PER_WORKER = 8
PER_FILE_WEIGHT = 64 * 1024
# how far a copy's reads go ahead of the file being read: sizes learnt up to
# AHEAD_CHUNKS size chunks on (small files whole, tree.py T4), small files fetched ahead
AHEAD = AHEAD_CHUNKS * SIZE_CHUNK + Tuning().sibling_prefetch
CUT_COST_FACTOR = 4         # a folder is cut into runs of at least this many times a cut's cost
READ_BLOCK = 1 << 20


@dataclass
class Unit:
    """Recordings one task reads, one after another."""
    paths: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)     # as listed (exact, or the listing's guess)

    @property
    def bytes(self) -> int:
        return sum(self.sizes)

    @property
    def weight(self) -> int:
        return sum(self.sizes) + PER_FILE_WEIGHT * len(self.paths)


class Rows(list):
    """The rows of a map, in path order; `figures`: what the map did (files, bytes,
    units, workers, the workers' caches, seconds listing and mapping, failures)."""

    figures: dict


@dataclass
class Row:
    """One recording's result: `value` is what the function returned, `error` why it
    failed (then `value` is None)."""
    path: str
    size: int
    value: Any = None
    error: str = ""


def plan(fs: RecfsFileSystem, path: str, *, workers: int = 1, by: str = "size",
         unit_bytes: int | None = None) -> list[Unit]:
    """The recordings under `path` as balanced work units (D1). `by="folder"`: one unit
    per folder; `by="size"`: units of about `unit_bytes` (default: the tree's weight
    over UNITS_PER_WORKER units per worker)."""
    if by not in ("size", "folder"):
        raise ValueError(f"by: 'size' or 'folder', not {by!r}")
    folders: list[list[tuple[str, int]]] = []
    for _, _, files in fs.walk(path, detail=True, sizes=False):
        group = [(info["name"], int(info["size"])) for info in files.values()]
        if group:
            folders.append(group)
    if not folders and fs.isfile(path):
        folders.append([(fs._strip_protocol(path), int(fs.info(path)["size"]))])
    if by == "folder":
        return [Unit([p for p, _ in g], [s for _, s in g]) for g in folders]
    total = sum(s + PER_FILE_WEIGHT for g in folders for _, s in g)
    target = unit_bytes or max(1, math.ceil(total / (max(1, workers) * UNITS_PER_WORKER)))
    pieces: list[Unit] = []
    for group in folders:
        for run in _cut(group, target):
            pieces.append(Unit([p for p, _ in run], [s for _, s in run]))
    units: list[Unit] = []
    for piece in pieces:            # consecutive small pieces (whole folders) together
        if units and units[-1].weight + piece.weight <= target:
            units[-1].paths += piece.paths
            units[-1].sizes += piece.sizes
        else:
            units.append(piece)
    return units


def _cut(group: list[tuple[str, int]], target: int) -> list[list[tuple[str, int]]]:
    """A folder's files in at most as many consecutive runs of equal count as its weight
    holds targets, each run at least CUT_COST_FACTOR times what a cut costs (D1)."""
    weight = sum(s + PER_FILE_WEIGHT for _, s in group)
    # a copy's reads run ahead of the file it reads: the sizes of the folder's next
    # files up to AHEAD files on, the small ones fetched whole, and the next small
    # files fetched ahead; past a cut those belong to the next unit, fetched twice if
    # another worker takes it
    small = sum(s for _, s in group if s <= WHOLE_PROBE) / len(group)
    cost = AHEAD * (small + PER_FILE_WEIGHT)
    runs = max(1, min(math.ceil(weight / target), int(weight // (CUT_COST_FACTOR * cost)), len(group)))
    size = math.ceil(len(group) / runs)
    return [group[i:i + size] for i in range(0, len(group), size)]


def _run_unit(fs_options: dict, paths: list[str], func: Callable) -> list[Row]:
    """On a worker: the unit's recordings, one after another (D2, D3)."""
    fs = RecfsFileSystem(**fs_options)
    rows = []
    for p in paths:
        row = Row(p, 0)
        try:
            with fs.open(p, "rb") as f:
                row.size = f.size
                row.value = func(p, f)
        except Exception as exc:
            row.error = f"{type(exc).__name__}: {exc}"
        rows.append(row)
    return rows


def _start(fs_options: dict) -> str:
    """On a worker: start its core (sources started, credentials checked); its cache."""
    fs = RecfsFileSystem(**fs_options)
    fs.ls("", detail=False)
    return str(fs._core.cache_dir)


def map_recordings(func: Callable[[str, Any], Any], path: str, *, config, client=None,
                   by: str = "size", unit_bytes: int | None = None, cache_dir: str | None = None,
                   cache_size: int | None = None,
                   progress: bool | Callable[[dict], None] | None = None) -> Rows:
    """`func(path, f)` for every recording under `path`, `f` the open file, on the
    cluster of `client` (default: distributed's current client); one Row per
    recording, in path order (`.figures`: what the map did). `progress`: a callable given a dict of figures after
    each unit, True for a line on stderr, None for that line on a terminal only."""
    from distributed import as_completed, default_client

    client = client or default_client()
    if not isinstance(config, dict):        # the workers' working directory may be another
        config = str(Path(config).expanduser().resolve())
    if cache_dir:
        cache_dir = str(Path(cache_dir).expanduser().resolve())
    fs_options = {"config": config, "cache_dir": cache_dir, "cache_size": cache_size}
    fs = RecfsFileSystem(**fs_options)
    started = time.monotonic()
    workers = max(1, len(client.scheduler_info().get("workers", {})))
    units = plan(fs, path, workers=workers, by=by, unit_bytes=unit_bytes)
    figures = {"files": sum(len(u.paths) for u in units), "bytes": sum(u.bytes for u in units),
               "units": len(units), "workers": workers, "listed_s": time.monotonic() - started,
               "done_files": 0, "done_bytes": 0, "failed": 0, "units_done": 0}
    report = _progress_line if progress is True or (progress is None and sys.stderr.isatty()) \
        else progress if callable(progress) else None
    # every worker's core starts before the first unit: a worker that cannot reach a
    # service fails the map here, and the time to start is not the units'
    figures["caches"] = sorted(set(client.run(_start, fs_options).values()))
    mapped = time.monotonic()
    # in path order: a worker's units then go forward through each folder, the way the
    # core learns sizes ahead of a copy (a unit before the last one would start cold)
    futures = [client.submit(_run_unit, fs_options, u.paths, func, pure=False) for u in units]
    rows = Rows()
    for _, result in as_completed(futures, with_results=True):
        rows += result
        figures["units_done"] += 1
        figures["done_files"] += len(result)
        figures["done_bytes"] += sum(r.size for r in result)
        figures["failed"] += sum(1 for r in result if r.error)
        figures["map_s"] = time.monotonic() - mapped
        if report:
            report(figures)
    if report is _progress_line:
        print(file=sys.stderr)
    figures["map_s"] = time.monotonic() - mapped
    rows.sort(key=lambda r: r.path)
    rows.figures = figures
    return rows


def _progress_line(f: dict) -> None:
    elapsed = max(1e-3, f.get("map_s", 0.0))
    rate = f["done_bytes"] / elapsed
    left = (f["bytes"] - f["done_bytes"]) / rate if rate > 0 else float("inf")
    eta = f"ETA {int(left // 60)}:{int(left % 60):02d}" if left != float("inf") else "ETA --:--"
    print(f"\r{f['done_files']}/{f['files']} recordings, {f['done_bytes'] / 1e6:.1f}/"
          f"{f['bytes'] / 1e6:.1f} MB, {rate / 1e6:.1f} MB/s, {f['failed']} failed  {eta}   ",
          end="", file=sys.stderr, flush=True)


# -- recfs map's function ------------------------------------------------------------

FORMATS = {"MP3": "mp3", "WAVE": "wav", "OggVorbis": "ogg", "OggOpus": "opus", "FLAC": "flac",
           "MP4": "m4a", "AIFF": "aiff", "ASF": "wma", "OggSpeex": "spx", "AAC": "aac"}


def describe_recording(path: str, f) -> dict:
    """sha256 of the bytes (read once, in order), then the format and duration in
    seconds from the container's headers (mutagen; the standard library's wave module
    where mutagen is not installed). A file no parser recognises has format
    "unknown" and no duration."""
    h = hashlib.sha256()
    while True:
        block = f.read(READ_BLOCK)
        if not block:
            break
        h.update(block)
    f.seek(0)
    fmt, duration = audio_format(f)
    return {"format": fmt, "duration_s": duration, "sha256": h.hexdigest()}


def audio_format(f) -> tuple[str, float | None]:
    """(format, duration in seconds or None) of an open audio file."""
    try:
        import mutagen
    except ImportError:
        mutagen = None
    if mutagen is not None:
        try:
            found = mutagen.File(f)
        except Exception:
            found = None
        if found is not None:
            length = getattr(found.info, "length", None)
            name = type(found).__name__
            return FORMATS.get(name, name.lower()), round(length, 3) if length is not None else None
        f.seek(0)
    try:
        with wave.open(f, "rb") as w:
            return "wav", round(w.getnframes() / w.getframerate(), 3)
    except (wave.Error, EOFError, ZeroDivisionError, ValueError):
        return "unknown", None
