"""recfs mounts cloud call-recording and content stores (8x8, Oracle Content
Management, Alvaria, Kazoo) as a local folder. `recfs demo` tries it on built-in
emulators; `recfs mount CONFIG MOUNTPOINT` mounts your services; `recfs map CONFIG PATH`
tabulates every recording under PATH on a Dask cluster (see README.md)."""
from __future__ import annotations

import argparse
import errno
import importlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .config import ConfigError, load_config
from .redact import LogFilter

log = logging.getLogger("recfs")

EMULATORS = {          # source kind -> emulator module, for the demo and `recfs emulate`
    "alvaria": "recfs.emulators.alvaria",
    "8x8": "recfs.emulators.eightbyeight",
    "oce": "recfs.emulators.oce",
    "kazoo": "recfs.emulators.kazoo",
}


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(LogFilter())
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def _mount(config_path: str, mountpoint: str, *, allow_other: bool = False) -> int:
    try:
        from .mount import MountError, run_mount
    except ImportError as exc:
        if "pyfuse3" not in str(exc):
            raise
        log.error("mounting needs pyfuse3 (and libfuse3): pip install 'recfs[fuse]'")
        return 2
    try:
        cfg = load_config(config_path)
        run_mount(cfg, Path(mountpoint).resolve(), allow_other=allow_other)
    except ConfigError as exc:
        log.error("config: %s", exc)
        return 2
    except MountError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


def start_emulators(kinds: list[str] | None = None) -> list[tuple[str, object, dict]]:
    """Start the built-in emulators with sample data; return (kind, emulator, table)."""
    started = []
    for kind, modname in EMULATORS.items():
        if kinds and kind not in kinds:
            continue
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            continue
        emu = mod.demo()
        emu.start()
        started.append((kind, emu, mod.source_table(emu, kind)))
    return started


def write_config(tables: list[dict], cache_dir: str | None, path: Path) -> None:
    lines = []
    if cache_dir:
        lines += ["[cache]", f"dir = {json.dumps(cache_dir)}", ""]
    for table in tables:
        lines.append("[[sources]]")
        for k, v in table.items():
            lines.append(f"{k} = {json.dumps(v)}")
        lines.append("")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines))


def _demo(args) -> int:
    mountpoint = Path(args.mountpoint or "recfs-demo").resolve()
    mountpoint.mkdir(parents=True, exist_ok=True)
    emulators = start_emulators()
    work = Path(tempfile.mkdtemp(prefix="recfs-demo-"))
    config = work / "demo.toml"
    write_config([t for _, _, t in emulators], args.cache_dir or str(work / "cache"), config)
    print(f"recfs demo: {len(emulators)} emulated services "
          f"({', '.join(k for k, _, _ in emulators)}) mounted at {mountpoint}", file=sys.stderr)
    print(f"  try: ls -lR {mountpoint} | head -40;  Ctrl-C to stop", file=sys.stderr)
    try:
        return _mount(str(config), str(mountpoint))
    finally:
        for _, emu, _ in emulators:
            emu.stop()


def _emulate(args) -> int:
    emulators = start_emulators(args.kinds.split(",") if args.kinds else None)
    config = Path(args.write_config) if args.write_config else None
    tables = [t for _, _, t in emulators]
    if config:
        write_config(tables, args.cache_dir, config)
    for kind, emu, _ in emulators:
        print(f"{kind}: {emu.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0


def _xattr_get(mountpoint: str, name: str) -> bytes:
    return os.getxattr(mountpoint, f"user.recfs.{name}")


def _status(args) -> int:
    try:
        raw = _xattr_get(args.mountpoint, "status")
    except OSError as exc:
        print(f"recfs status: {args.mountpoint}: not a recfs mount ({exc.strerror})", file=sys.stderr)
        return 1
    print(raw.decode())
    return 0


def _split_mount_path(path: str) -> tuple[str, str]:
    """Find the recfs mount containing `path`; return (mountpoint, path inside it)."""
    p = Path(path).resolve()
    for candidate in [p, *p.parents]:
        try:
            os.getxattr(candidate, "user.recfs.status")
        except OSError:
            continue
        if os.path.ismount(candidate):
            return str(candidate), str(p.relative_to(candidate))
    raise SystemExit(f"recfs: {path} is not inside a recfs mount")


def _refresh(args) -> int:
    mnt, inside = _split_mount_path(args.path)
    os.setxattr(mnt, "user.recfs.refresh", inside.encode() if inside != "." else b"/")
    return 0


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _progress_line(job: dict) -> str:
    if not job.get("listed"):
        return "listing…"
    done, total = job["done_bytes"], max(1, job["bytes"])
    frac = min(1.0, done / total)
    elapsed = max(0.001, time.time() - job["started"])
    rate = done / elapsed
    eta = (job["bytes"] - done) / rate if rate > 0 else float("inf")
    bar = "#" * int(frac * 30)
    eta_text = f"ETA {int(eta // 60)}:{int(eta % 60):02d}" if eta != float("inf") else "ETA --:--"
    return (f"[{bar:<30}] {frac * 100:5.1f}%  {job['done_files']}/{job['files']} files  "
            f"{_human(done)}/{_human(job['bytes'])}  {_human(rate)}/s  {eta_text}")


def _prefetch(args) -> int:
    mnt, inside = _split_mount_path(args.path)
    inside = "/" if inside == "." else inside
    try:
        os.setxattr(mnt, "user.recfs.prefetch", inside.encode())
    except OSError as exc:
        print(f"recfs prefetch: {args.path}: {exc.strerror}", file=sys.stderr)
        return 1
    tty = sys.stderr.isatty()
    while True:
        job = json.loads(_xattr_get(mnt, f"prefetch:{inside}"))
        if tty:
            print("\r" + _progress_line(job), end="", file=sys.stderr, flush=True)
        if job["finished"]:
            break
        time.sleep(0.2)
    if tty:
        print(file=sys.stderr)
    print(f"prefetched {job['done_files']} files, {_human(job['done_bytes'])}"
          f"{', ' + str(job['failed']) + ' failed' if job['failed'] else ''}")
    return 1 if job["failed"] else 0


def _search_progress(job: dict) -> str:
    p = job["progress"]
    return (f"searching: {p['sources_done']}/{p['sources']} sources, {p['folders']} folders "
            f"({p['listed']} listed from the services), {p['found']} found")


def _search(args) -> int:
    """Recordings matching a query in every source of a running mount, newest first."""
    import secrets

    from .search import QueryError, parse
    args.terms += [f"{k}={v}" for k, v in (("since", args.since), ("until", args.until)) if v]
    try:
        parse(args.terms)           # its mistakes here, before the daemon is asked
    except QueryError as exc:
        print(f"recfs search: {exc}", file=sys.stderr)
        return 2
    mnt, _ = _split_mount_path(args.mountpoint)
    tty = sys.stderr.isatty()
    yes = args.yes
    while True:
        job_id = secrets.token_hex(8)
        try:
            os.setxattr(mnt, "user.recfs.search",
                        json.dumps({"id": job_id, "terms": args.terms, "yes": yes}).encode())
        except OSError as exc:
            print(f"recfs search: {mnt}: {exc.strerror}", file=sys.stderr)
            return 1
        while True:
            job = json.loads(_xattr_get(mnt, f"search:{job_id}"))
            if tty:
                print("\r\033[K" + _search_progress(job), end="", file=sys.stderr, flush=True)
            if job["state"] != "running":
                break
            time.sleep(0.1)
        if tty:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
        if job["state"] != "confirm" or yes:
            break
        print(f"recfs search: {job['error']}", file=sys.stderr)
        if not (sys.stdin.isatty() and tty):
            return 3
        if input("walk them all? [y/N] ").strip().lower() not in ("y", "yes"):
            return 3
        yes = True
    if job["state"] != "done":
        print(f"recfs search: {job.get('error', job['state'])}", file=sys.stderr)
        return 2 if str(job.get("error", "")).startswith("query:") else 1
    results, offset = [], 0
    while offset is not None:
        page = json.loads(_xattr_get(mnt, f"search:{job_id}:{offset}"))
        results += page["results"]
        offset = page["next"]
    if args.rm:
        return _erase([mnt + r["path"] for r in results], yes=args.yes, tty=tty)
    if args.json:
        for r in results:
            r["path"] = mnt + r["path"]
            r["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r["time"]))
        print(json.dumps(results, indent=1))
    else:
        end = "\0" if args.null else "\n"
        sys.stdout.write("".join(mnt + r["path"] + end for r in results))
    p = job["progress"]
    for error in p["errors"]:
        print(f"recfs search: {error}", file=sys.stderr)
    if tty:
        print(f"{len(results)} found in {job.get('seconds', 0):.2f} s ({p['folders']} folders walked, "
              f"{p['listed']} listed; filtered by the service: {', '.join(p['server_side']) or 'none'})",
              file=sys.stderr)
    return 1 if p["errors"] else 0


ERASERS = 8      # unlinks at once: the services' delete batching (8x8) gets company


def _erase(paths: list[str], *, yes: bool, tty: bool) -> int:
    """Delete the search's matches through the mount (so each source's rules apply:
    `allow_delete`, Kazoo's soft delete), after showing them and asking; one line per
    file says what happened."""
    from concurrent.futures import ThreadPoolExecutor
    if not paths:
        print("recfs search: nothing matches: nothing to delete", file=sys.stderr)
        return 0
    print(f"recfs search: these {len(paths)} recordings will be deleted:", file=sys.stderr)
    for path in paths:
        print(f"  {path}", file=sys.stderr)
    if not yes:
        if not (sys.stdin.isatty() and tty):
            print("recfs search: not deleting without --yes (no terminal to ask)", file=sys.stderr)
            return 3
        if input(f"delete these {len(paths)} recordings? [y/N] ").strip().lower() not in ("y", "yes"):
            print("recfs search: nothing deleted", file=sys.stderr)
            return 3

    def erase(path: str) -> str | None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return "already gone"
        except OSError as exc:
            if exc.errno == errno.EROFS:
                return "not deleted: deletes are off for its source (allow_delete)"
            return f"not deleted: {exc.strerror}"
        return None

    with ThreadPoolExecutor(ERASERS) as pool:
        outcomes = list(pool.map(erase, paths))
    failed = 0
    for path, outcome in zip(paths, outcomes):
        if outcome is None:
            print(f"deleted {path}")
        else:
            print(f"{path}: {outcome}")
            failed += outcome != "already gone"
    print(f"recfs search: {len(paths) - failed} of {len(paths)} deleted", file=sys.stderr)
    return 1 if failed else 0


MAP_COLUMNS = ("path", "size", "format", "duration_s", "sha256", "error")


def _map(args) -> int:
    """Format, duration and sha256 of every recording under a path, on a Dask cluster,
    into a table (CSV, or Parquet for a .parquet output)."""
    try:
        from distributed import Client, LocalCluster

        from .dask import describe_recording, map_recordings
    except ImportError:
        log.error("recfs map needs the dask extra: pip install 'recfs[dask]'")
        return 2
    out = Path(args.output)
    if out.suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            log.error("a .parquet table needs pyarrow: pip install 'recfs[parquet]' (or write .csv)")
            return 2
    try:
        cfg = load_config(args.config)          # its mistakes here, before any cluster
    except ConfigError as exc:
        log.error("config: %s", exc)
        return 2
    for warning in cfg.warnings:
        log.warning("%s", warning)
    logging.getLogger("distributed").setLevel(logging.WARNING)     # its INFO lines: one per worker event
    cluster = None
    if args.scheduler:
        client = Client(args.scheduler)
    else:
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=args.threads,
                               processes=True, dashboard_address=None,
                               silence_logs=logging.WARNING)
        client = Client(cluster)
    try:
        rows = map_recordings(describe_recording, args.path, config=str(Path(args.config).resolve()),
                              client=client, by=args.by, unit_bytes=args.unit_bytes,
                              cache_dir=args.cache_dir)
        figures = rows.figures
    except OSError as exc:
        log.error("recfs map: %s", exc)
        return 1
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    records = [{"path": r.path, "size": r.size, "format": (r.value or {}).get("format", ""),
                "duration_s": (r.value or {}).get("duration_s"), "sha256": (r.value or {}).get("sha256", ""),
                "error": r.error} for r in rows]
    _write_table(records, out)
    failed = sum(1 for r in rows if r.error)
    secs = max(1e-9, figures.get("map_s", 0.0))
    total = sum(r.size for r in rows)
    print(f"recfs map: {len(rows)} recordings, {total / 1e6:.1f} MB in {secs:.2f} s "
          f"({total / secs / 1e6:.1f} MB/s, {len(rows) / secs:.1f} files/s) on {figures.get('workers')} "
          f"worker(s), {figures.get('units')} units; listed in {figures.get('listed_s', 0):.2f} s; "
          f"{failed} failed; wrote {out}", file=sys.stderr)
    return 1 if failed else 0


def _write_table(records: list[dict], out: Path) -> None:
    if out.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        columns = {c: [r[c] for r in records] for c in MAP_COLUMNS}
        pq.write_table(pa.table(columns), out)
        return
    import csv
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MAP_COLUMNS)
        writer.writeheader()
        for r in records:
            writer.writerow({**r, "duration_s": "" if r["duration_s"] is None else r["duration_s"]})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recfs", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("RECFS_LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("mount", help="mount the sources of CONFIG at MOUNTPOINT (foreground)")
    p.add_argument("config")
    p.add_argument("mountpoint")
    p.add_argument("--allow-other", action="store_true",
                   help="let other users read the mount (needs user_allow_other in /etc/fuse.conf)")
    p = sub.add_parser("demo", help="mount the built-in emulated services with sample recordings")
    p.add_argument("mountpoint", nargs="?")
    p.add_argument("--cache-dir")
    p = sub.add_parser("emulate", help="run the built-in emulators in the foreground")
    p.add_argument("--kinds", help="comma-separated: alvaria,8x8,oce,kazoo")
    p.add_argument("--write-config", help="write a config file pointing at them")
    p.add_argument("--cache-dir")
    p = sub.add_parser("status", help="show a running mount's state")
    p.add_argument("mountpoint")
    p = sub.add_parser("refresh", help="drop listing snapshots under PATH")
    p.add_argument("path")
    p = sub.add_parser("prefetch", help="warm the cache for every file under PATH")
    p.add_argument("path")
    p = sub.add_parser("search", help="recordings of a caller, a call or an agent in every source "
                                      "of a mount, newest first",
                       description="Terms are ANDed: caller=, callee=, number= (either side), "
                                   "call_id=, agent=, queue=, direction=inbound|outbound, since=DATE, "
                                   "until=DATE, min_duration=SECONDS, name~=TEXT.")
    p.add_argument("mountpoint")
    p.add_argument("terms", nargs="+", metavar="TERM", help="e.g. caller=+15551234567 since=2025-01-01")
    p.add_argument("--since", metavar="DATE", help="the same as the term since=DATE")
    p.add_argument("--until", metavar="DATE", help="the same as the term until=DATE")
    p.add_argument("-0", dest="null", action="store_true", help="end each path with NUL (for xargs -0)")
    p.add_argument("--json", action="store_true", help="a JSON array of the matches with their metadata")
    p.add_argument("--rm", action="store_true",
                   help="delete the matches through the mount (where allow_delete is on), "
                        "after listing them and asking")
    p.add_argument("--yes", action="store_true",
                   help="do not ask: walk whole accounts where a service cannot filter the search; "
                        "with --rm, delete without asking")
    p = sub.add_parser("map", help="format, duration and sha256 of every recording under PATH "
                                   "(a path in the recfs tree: SOURCE/...), on a Dask cluster")
    p.add_argument("config")
    p.add_argument("path")
    p.add_argument("-o", "--output", default="recfs-map.csv",
                   help="the table: .csv, or .parquet (needs pyarrow); default recfs-map.csv")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="a dask.distributed scheduler (default: a local cluster)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="worker processes of the local cluster (default: one per CPU)")
    p.add_argument("--threads", type=int, default=1, help="threads per local worker (default 1)")
    p.add_argument("--by", choices=["size", "folder"], default="size",
                   help="work units: balanced by size (default), or one per folder")
    p.add_argument("--unit-bytes", type=_size_arg, help="bytes per work unit (default: balanced)")
    p.add_argument("--cache-dir", help="base of the workers' caches (default: [cache] dir/fsspec)")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if args.command == "mount":
        return _mount(args.config, args.mountpoint, allow_other=args.allow_other)
    return {"demo": _demo, "emulate": _emulate, "status": _status, "refresh": _refresh,
            "prefetch": _prefetch, "search": _search, "map": _map}[args.command](args)


def _size_arg(value: str) -> int:
    from .config import parse_size
    try:
        return parse_size(int(value) if value.isdigit() else value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


MOUNT_OPTIONS_IGNORED = {"defaults", "auto", "noauto", "user", "users", "nofail", "rw", "ro",
                         "exec", "noexec", "suid", "nosuid", "dev", "nodev", "atime", "noatime",
                         "relatime", "sync", "async"}


def mount_helper_main(argv: list[str] | None = None) -> int:
    """`mount.recfs CONFIG MOUNTPOINT [-o options]`, as mount(8) runs it for fstab
    entries: start the daemon in the background, return once the mount is live.

    Options: allow_other; log=/path (the daemon's log; default
    /var/log/recfs/<mountpoint name>.log when writable, else ~/.cache/recfs/…);
    the generic mount options (defaults, _netdev, nofail, …) are accepted and ignored.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    positional, opts = [], []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "-o" and i + 1 < len(argv):
            opts += [o for o in argv[i + 1].split(",") if o]
            i += 2
            continue
        if a.startswith("-"):       # -s -f -n -v from mount(8)
            i += 1
            continue
        positional.append(a)
        i += 1
    if len(positional) != 2:
        print("usage: mount.recfs CONFIG MOUNTPOINT [-o allow_other,log=/path]", file=sys.stderr)
        return 2
    config, mountpoint = positional
    extra, log_path = [], None
    for o in opts:
        if o == "allow_other":
            extra.append("--allow-other")
        elif o.startswith("log="):
            log_path = Path(o[4:])
        elif o in MOUNT_OPTIONS_IGNORED or o.startswith(("_", "x-", "comment=")):
            continue
        else:
            print(f"mount.recfs: unknown option {o!r}", file=sys.stderr)
            return 2
    mnt = Path(mountpoint).resolve()
    if log_path is None:
        base = Path("/var/log/recfs") if os.access("/var/log", os.W_OK) else \
            Path.home() / ".cache" / "recfs" / "logs"
        log_path = base / f"{mnt.name or 'root'}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "recfs", "mount", config, str(mnt), *extra],
                                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            print(f"mount.recfs: recfs exited with status {proc.returncode}:", file=sys.stderr)
            for line in tail:
                print(f"  {line}", file=sys.stderr)
            return 1
        if _mounted(mnt):
            return 0
        time.sleep(0.05)
    print(f"mount.recfs: {mnt} did not come up within 60 s; see {log_path}", file=sys.stderr)
    return 1


def _mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        if not any(line.split()[4] == str(path) for line in f):
            return False
    try:
        os.statvfs(path)
    except OSError:
        return False
    return True
