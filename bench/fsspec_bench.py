"""B10: recfs without FUSE (issue 23), against the same server as B5.

- `fs.get` of B5's many-file folder through the fsspec filesystem, in a process of
  its own (`python -m bench.fsspec_bench get ...`), beside `cp -r` of the same folder
  through a recfs mount and through rclone's mount, the three taking turns (the first
  of a round alternating); each copy on an empty cache with the page cache dropped.
  Target: fs.get at least 1.2× rclone's `cp -r` (as B5). The single-stream limit is
  curl reading B1's file on loopback.
- `recfs map` over the same folder in the WAN profile (20 ms per response, 20 MB/s per
  connection) on a local dask.distributed cluster of 1 and of 2 worker processes, each
  on empty caches; the figure is the map's own throughput (from its first unit to its
  last result: the cluster's start and the listing are not in it). Target: 2 workers
  at least 1.7× one worker. The single-stream limit is curl reading 16 MiB of B1's file
  in the WAN profile. Every table is checked: each recording once, its size and sha256.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from .mounts import REPO, Trash
from .servers import DataSet

MANY = "alv/bench/many"
ENV = {"PYTHONPATH": f"{REPO / 'src'}:{REPO}"}
WAN_PROBE = 16 << 20        # bytes curl reads for the WAN single-stream limit


def _config(bench, name: str) -> Path:
    """A config of the server's Alvaria source with a fresh cache directory."""
    from tests.conftest import toml_config
    cache = bench.work / f"cache-{name}"
    Trash.discard(cache)
    path = bench.work / f"{name}.toml"
    path.write_text(toml_config([bench.server.info["alvaria_table"]], cache_dir=cache,
                                cache={"max_size": "40GiB", "min_free": "2GiB"}))
    os.chmod(path, 0o600)
    return path


def _curl(url: str, length: int | None = None) -> float:
    """Bytes per second of one curl stream (the first `length` bytes, or all)."""
    argv = ["curl", "-sS", "-f", "-o", "/dev/null", "-w", "%{size_download} %{time_total}"]
    if length:
        argv += ["-r", f"0-{length - 1}"]
    out = subprocess.run(argv + [url], capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]) / float(out[1])


def _fsspec_get(bench, dest: Path) -> float:
    """Seconds of fs.get of the folder in a fresh process with an empty cache."""
    from .run import drop_caches, tree_bytes
    config = _config(bench, "fsspec")
    Trash.discard(dest)
    drop_caches()
    done = subprocess.run([sys.executable, "-m", "bench.fsspec_bench", "get", str(config), MANY, str(dest)],
                          capture_output=True, text=True, cwd=REPO, env=dict(os.environ, **ENV), timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"fs.get failed:\n{done.stderr[-3000:]}")
    secs = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
    got, want = tree_bytes(dest), (bench.data.many_files, bench.data.many_bytes())
    assert got == want, (got, want)
    Trash.discard(dest)
    Trash.discard(bench.work / "cache-fsspec")
    return secs


def get_vs_cp(bench) -> None:
    from .run import Row, med, ratio_text
    total, count = bench.data.many_bytes(), bench.data.many_files
    dest = bench.work / "copy"
    single = _curl(bench.plain(DataSet.BIG))
    times: dict[str, list[float]] = {"fsspec": [], "mount": [], "rclone": []}

    def fsspec_run() -> None:
        times["fsspec"].append(_fsspec_get(bench, dest))

    def mount_run() -> None:
        with bench.recfs("alv") as m:
            times["mount"].append(bench._timed_copy(m.path / "alv" / "bench" / "many", dest))
            bench.done_with(m)
        Trash.discard(dest)

    def rclone_run() -> None:
        with bench.rclone_mount() as r:
            times["rclone"].append(bench._timed_copy(r.path / "bench" / "many", dest))
        Trash.discard(dest)

    order = [fsspec_run, mount_run] + ([rclone_run] if bench.rclone else [])
    for step in order:          # a warm-up round, not counted (as B5)
        step()
    for key in times:
        times[key].clear()
    for run in range(bench.runs):
        for step in (order if run % 2 == 0 else order[::-1]):
            step()
        bench.say(f"B10 run {run + 1}: fs.get {total / times['fsspec'][-1] / 1e6:.0f} MB/s, "
                  f"cp -r through the mount {total / times['mount'][-1] / 1e6:.0f} MB/s"
                  + (f", rclone {total / times['rclone'][-1] / 1e6:.0f} MB/s" if times["rclone"] else ""))
    bench.raw["B10 get"] = {"bytes": total, "files": count, "curl_Bps": single, **{f"{k}_s": v for k, v in times.items()}}
    rate = {k: total / med(v) for k, v in times.items() if v}
    limit = f"curl one stream {single / 1e9:.2f} GB/s"
    vs_rclone = rate["fsspec"] / rate["rclone"] if "rclone" in rate else None
    bench.rows.append(Row(f"B10 fs.get {count} files ({total / 1e6:.0f} MB)", f"{rate['fsspec'] / 1e6:.0f} MB/s",
                          limit, f"{rate['rclone'] / 1e6:.0f} MB/s" if vs_rclone else "n/a",
                          f"{ratio_text(vs_rclone)}× rclone" if vs_rclone else "", "≥ 1.2× rclone",
                          vs_rclone >= 1.2 if vs_rclone else None))
    bench.rows.append(Row(f"B10 cp -r {count} files through the mount (same run)",
                          f"{rate['mount'] / 1e6:.0f} MB/s", limit, "",
                          f"fs.get {rate['fsspec'] / rate['mount']:.2f}× the mount", "(info)", None))


def _expected_sha256(data: DataSet) -> dict[str, tuple[int, str]]:
    out = {}
    for key, blob in data.files().items():
        if key.startswith("bench/many/"):
            h = hashlib.sha256()
            for piece in blob.iter_range(0, blob.size, 8 << 20):
                h.update(piece)
            out[f"alv/{key}"] = (blob.size, h.hexdigest())
    return out


def _recfs_map(bench, workers: int, want: dict) -> float:
    """Seconds of the map itself, from `recfs map --workers N` over the folder, its
    table checked."""
    config = _config(bench, "map")
    table = bench.work / "map.csv"
    done = subprocess.run([sys.executable, "-m", "recfs", "--log-level", "warning", "map", str(config), MANY,
                           "-o", str(table), "--workers", str(workers)],
                          capture_output=True, text=True, cwd=REPO, env=dict(os.environ, **ENV), timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"recfs map failed:\n{done.stderr[-3000:]}")
    found = re.search(r"recfs map: (\d+) recordings, [\d.]+ MB in ([\d.]+) s .* on (\d+) worker", done.stderr)
    assert found and int(found.group(3)) == workers, done.stderr[-2000:]
    with open(table, newline="") as f:
        rows = {r["path"]: (int(r["size"]), r["sha256"]) for r in csv.DictReader(f)}
    assert rows == want, "recfs map: a recording missing, twice, or with a wrong size or sha256"
    Trash.discard(table)
    Trash.discard(bench.work / "cache-map")
    return float(found.group(2))


def map_scaling(bench) -> None:
    from .run import Row, med, ratio_text
    want = _expected_sha256(bench.data)
    total, count = bench.data.many_bytes(), bench.data.many_files
    times: dict[int, list[float]] = {1: [], 2: []}
    with bench.served(wan=True):
        single = _curl(bench.plain(DataSet.BIG), WAN_PROBE)
        for run in range(bench.runs):
            for workers in ((1, 2) if run % 2 == 0 else (2, 1)):
                times[workers].append(_recfs_map(bench, workers, want))
            bench.say(f"B10 WAN run {run + 1}: recfs map 1 worker {total / times[1][-1] / 1e6:.0f} MB/s, "
                      f"2 workers {total / times[2][-1] / 1e6:.0f} MB/s")
    bench.raw["B10 map"] = {"bytes": total, "files": count, "curl_Bps": single,
                            "one_worker_s": times[1], "two_workers_s": times[2]}
    one, two = total / med(times[1]), total / med(times[2])
    limit = f"one connection {single / 1e6:.0f} MB/s, 20 ms per response"
    bench.rows.append(Row(f"B10 recfs map {count} recordings, WAN, 1 worker", f"{one / 1e6:.0f} MB/s", limit, "",
                          f"{one / single:.1f}× one connection", "(info)", None))
    scale = two / one
    bench.rows.append(Row(f"B10 recfs map {count} recordings, WAN, 2 workers", f"{two / 1e6:.0f} MB/s", limit, "",
                          f"{ratio_text(scale, 1.7)}× one worker", "≥ 1.7× one worker", scale >= 1.7))


def run(bench) -> None:
    get_vs_cp(bench)
    map_scaling(bench)


def _get_main(config: str, rpath: str, dest: str) -> None:
    """The measured side of fs.get, in its own process: the filesystem is started and
    the folder's parent listed before the clock starts (as a mount is, before cp -r)."""
    from recfs.fsspec import RecfsFileSystem
    fs = RecfsFileSystem(config=config)
    fs.ls(rpath.rsplit("/", 1)[0], detail=False)
    t0 = time.perf_counter()
    fs.get(rpath, dest, recursive=True)
    secs = time.perf_counter() - t0
    fs.close()
    print(json.dumps({"seconds": secs}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["get"]:
        _get_main(*sys.argv[2:5])
    else:
        raise SystemExit("usage: python -m bench.fsspec_bench get CONFIG RPATH DEST")
