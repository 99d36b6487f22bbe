"""recfs.dask and `recfs map` on a real dask.distributed LocalCluster with two worker
processes, over the Alvaria emulator: every recording processed exactly once, with the
right checksum, each worker with its own core and cache."""
from __future__ import annotations

import csv
import hashlib
import subprocess
import sys
from collections import Counter

import pytest

pytest.importorskip("distributed")

from distributed import Client, LocalCluster  # noqa: E402

from recfs.dask import AHEAD, CUT_COST_FACTOR, describe_recording, map_recordings, plan  # noqa: E402
from recfs.emulators.alvaria import AlvariaEmulator, source_table  # noqa: E402
from recfs.emulators.base import PatternBlob  # noqa: E402
from recfs.emulators.samples import call_wav  # noqa: E402
from tests.fsspec.conftest import filesystem, write_config  # noqa: E402

T0 = 1_760_000_000.0
ROOT = "alv/exports/cxp/recordings"
# folders of different weights: one big, two small, one with real WAV recordings
TREE = {"2025-10-10": [PatternBlob(100 + i, 200_000 + 7_001 * i) for i in range(16)],
        "2025-10-11": [PatternBlob(200 + i, 30_000 + 101 * i) for i in range(5)],
        "2025-10-12": [PatternBlob(300 + i, 90_000) for i in range(3)],
        "2025-10-13": [call_wav(400 + i, 2.0 + i) for i in range(4)]}


def expected() -> dict[str, bytes]:
    out = {}
    for day, blobs in TREE.items():
        for i, b in enumerate(blobs):
            out[f"{ROOT}/{day}/call-{i:03d}.wav"] = b if isinstance(b, bytes) else b.all_bytes()
    return out


@pytest.fixture(scope="module")
def emu():
    emu = AlvariaEmulator()
    for path, data in expected().items():
        emu.put(path.split("/", 1)[1], data, T0)
    with emu:
        yield emu


@pytest.fixture(scope="module")
def config(emu, tmp_path_factory):
    return write_config([source_table(emu, "alv")], tmp_path_factory.mktemp("dask"))


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as c:
            yield c


def test_plan_keeps_folders_together_in_order_and_balances(tmp_path):
    """Units: each file once, folders whole and in order, small folders together, a big
    folder cut into equal runs only where each run is worth several times what a cut
    costs (the core's reads run AHEAD files past a cut)."""
    emu = AlvariaEmulator()
    for i in range(2 * CUT_COST_FACTOR * AHEAD + 40):       # a day of many short calls
        emu.put(f"exports/day/a/c{i:04d}.wav", PatternBlob(i, 1000), T0)
    for folder, count in (("b", 3), ("c", 3), ("d", 50)):
        for i in range(count):
            emu.put(f"exports/day/{folder}/c{i:04d}.wav", PatternBlob(i, 1000), T0)
    with emu:
        fs = filesystem(write_config([source_table(emu, "alv")], tmp_path))
        try:
            files = fs.find("alv/exports/day")
            units = plan(fs, "alv/exports/day", workers=2)
            assert [p for u in units for p in u.paths] == files              # each once, in order
            a = [u for u in units if "/a/" in u.paths[0]]
            assert len(a) == 2 and abs(len(a[0].paths) - len(a[1].paths)) <= 1
            assert all(len(u.paths) >= CUT_COST_FACTOR * AHEAD for u in a)
            rest = [[p.split("/")[3] for p in u.paths] for u in units if "/a/" not in u.paths[0]]
            assert rest == [["b"] * 3 + ["c"] * 3, ["d"] * 50]               # small ones together
            assert [len(u.paths) for u in plan(fs, "alv/exports/day", by="folder")] == \
                [2 * CUT_COST_FACTOR * AHEAD + 40, 3, 3, 50]
            assert [u.paths for u in plan(fs, "alv/exports/day/b/c0001.wav")] == \
                [["alv/exports/day/b/c0001.wav"]]
        finally:
            fs.close()


def test_every_recording_exactly_once_with_its_checksum_on_two_workers(config, client):
    rows = map_recordings(describe_recording, ROOT, config=str(config), client=client, progress=False)
    want = expected()
    assert Counter(r.path for r in rows) == Counter({p: 1 for p in want})
    for r in rows:
        assert not r.error, r
        assert r.size == len(want[r.path])
        assert r.value["sha256"] == hashlib.sha256(want[r.path]).hexdigest(), r.path
    wavs = [r for r in rows if "2025-10-13" in r.path]
    assert [(r.value["format"], r.value["duration_s"]) for r in wavs] == \
        [("wav", 2.0), ("wav", 3.0), ("wav", 4.0), ("wav", 5.0)]
    figures = rows.figures
    assert figures["workers"] == 2 and figures["done_files"] == len(want) and figures["failed"] == 0
    assert len(figures["caches"]) == 2          # each worker process its own cache
    assert all("/fsspec/" in c for c in figures["caches"])


def test_a_failure_is_its_recording_s_row_not_the_unit_s(config, client):
    def size_or_fail(path, f):
        if path.endswith("2025-10-11/call-002.wav"):
            raise ValueError("not this one")
        return len(f.read())

    rows = map_recordings(size_or_fail, f"{ROOT}/2025-10-11", config=str(config), client=client,
                          progress=False)
    assert [(r.path.rsplit("/", 1)[1], r.value, r.error) for r in rows] == \
        [(f"call-{i:03d}.wav", None if i == 2 else 30_000 + 101 * i,
          "ValueError: not this one" if i == 2 else "") for i in range(5)]


def test_recfs_map_writes_the_table(config, tmp_path):
    out = tmp_path / "calls.csv"
    done = subprocess.run([sys.executable, "-m", "recfs", "map", str(config), ROOT, "-o", str(out),
                           "--workers", "2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"recfs map: {len(expected())} recordings" in done.stderr and "2 worker(s)" in done.stderr
    with open(out, newline="") as f:
        table = list(csv.DictReader(f))
    want = expected()
    assert [r["path"] for r in table] == sorted(want)
    for r in table:
        data = want[r["path"]]
        assert (int(r["size"]), r["sha256"], r["error"]) == (len(data), hashlib.sha256(data).hexdigest(), "")
        if "2025-10-13" in r["path"]:
            assert r["format"] == "wav" and float(r["duration_s"]) > 1.9
        else:
            assert r["format"] == "unknown" and r["duration_s"] == ""
    parquet = tmp_path / "calls.parquet"
    done = subprocess.run([sys.executable, "-m", "recfs", "map", str(config), f"{ROOT}/2025-10-12",
                           "-o", str(parquet), "--workers", "1"], capture_output=True, text=True, timeout=300)
    try:
        import pyarrow.parquet as pq
    except ImportError:                        # the parquet extra is not installed: said so
        assert done.returncode == 2 and "recfs[parquet]" in done.stderr and not parquet.exists()
    else:
        assert done.returncode == 0, done.stderr
        assert pq.read_table(parquet).column("path").to_pylist() == \
            [p for p in sorted(want) if "2025-10-12" in p]
