"""OCE through a real mount: the folder tree, byte-exact files, random seeks, folder jobs."""
from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from recfs.emulators.base import PatternBlob
from recfs.emulators.oce import OceEmulator, source_table
from tests.conftest import toml_config

pytestmark = pytest.mark.e2e


@pytest.fixture
def emu():
    e = OceEmulator(job_polls=2)
    rec = e.add_folder("self", "Recordings")
    e.add_file("self", "README.txt", b"exported recordings\n", mime="text/plain")
    e.day = e.add_folder(rec, "2024-05-01")
    for k, size in enumerate((1, 4096, 300_001, 3 * 1024 * 1024 + 17)):
        e.add_file(e.day, f"call-{k}.wav", PatternBlob(200 + k, size), modified=1714550400 + k)
    sub = e.add_folder(e.day, "Escalations")
    e.add_file(sub, "call-1.wav", PatternBlob(77, 2222))          # a namesake one level down
    e.busy = e.add_folder(rec, "busy")
    for k in range(240):
        e.add_file(e.busy, f"r{k:04d}.wav", PatternBlob(500 + k, 50 + 13 * k))
    odd = e.add_folder(rec, "Ünïcode été")
    e.add_file(odd, "appel à 10h — ñ.wav", PatternBlob(9, 7000))
    with e:
        yield e


@pytest.fixture(params=["oauth", "basic"])
def mnt(request, emu, recfs_mount):
    table = source_table(emu, "oce", basic=request.param == "basic", page_size=100,
                         job_poll_interval=0.02)
    return recfs_mount(toml_config([table])) / "oce"


def prefetch(path: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "recfs", "prefetch", str(path)],
                          capture_output=True, text=True)
    return done


def emulator_files(emu) -> dict[str, object]:
    return {emu.path_of(n.id): n for n in emu.files()}


def test_tree_matches_the_emulator(emu, mnt):
    found = {}
    for dirpath, dirs, files in os.walk(mnt):
        for f in files:
            p = Path(dirpath) / f
            found[str(p.relative_to(mnt))] = p
    expected = emulator_files(emu)
    assert sorted(found) == sorted(expected)
    for rel, node in expected.items():
        st = found[rel].stat()
        assert st.st_size == node.blob.size, rel
        assert st.st_mtime == int(node.modified)
    assert os.getxattr(found["README.txt"], "user.oce.id").decode() == expected["README.txt"].id


def test_every_file_is_byte_equal(emu, mnt, tmp_path):
    for rel, node in emulator_files(emu).items():
        want = tmp_path / "want"
        want.write_bytes(node.blob.all_bytes())
        subprocess.run(["cmp", str(want), str(mnt / rel)], check=True)
    # reading every file of a folder in turn is a folder copy: at most a job per folder
    assert emu.count("download_create") <= 4


def test_random_offset_reads(emu, mnt):
    rel = "Recordings/2024-05-01/call-3.wav"
    blob = emulator_files(emu)[rel].blob
    rng = random.Random(11)
    with open(mnt / rel, "rb", buffering=0) as f:
        for _ in range(40):
            off = rng.randrange(blob.size)
            n = rng.randrange(1, 300_000)
            f.seek(off)
            assert f.read(n) == blob.read(off, n)


def test_prefetch_of_a_folder_runs_one_job_then_reads_cost_nothing(emu, mnt):
    day = mnt / "Recordings" / "2024-05-01"
    done = prefetch(day)
    assert done.returncode == 0, done.stderr
    # one job for the folder and one for its subfolder; each is deleted afterwards
    assert emu.count("download_create") == 2
    assert emu.count("download_delete") == 2 and emu.jobs == {}
    assert emu.count("data") == 0
    for rel, node in emulator_files(emu).items():
        if rel.startswith("Recordings/2024-05-01/"):
            assert (mnt / rel).read_bytes() == node.blob.all_bytes()
    assert emu.count("data") == 0                       # everything came from the zips


def test_prefetch_of_a_busy_folder(emu, mnt):
    busy = mnt / "Recordings" / "busy"
    done = prefetch(busy)
    assert done.returncode == 0, done.stderr
    assert emu.count("download_create") == 1
    for rel, node in emulator_files(emu).items():
        if rel.startswith("Recordings/busy/"):
            assert (mnt / rel).read_bytes() == node.blob.all_bytes()
    assert emu.count("data") == 0


def test_a_failed_job_falls_back_to_ranged_reads(emu, mnt):
    emu.job_fates.extend(["FAILED", "FAILED"])
    day = mnt / "Recordings" / "2024-05-01"
    prefetch(day)
    for rel, node in emulator_files(emu).items():
        if rel.startswith("Recordings/2024-05-01/"):
            assert (mnt / rel).read_bytes() == node.blob.all_bytes()
    assert emu.count("data") > 0


def test_forbidden_and_vanished_files(emu, mnt):
    rel = "Recordings/2024-05-01/call-2.wav"
    node = emulator_files(emu)[rel]
    os.listdir(mnt / "Recordings" / "2024-05-01")
    emu.forbidden.add(node.id)
    with pytest.raises(OSError) as e:
        (mnt / rel).read_bytes()
    assert e.value.errno == errno.EACCES
    emu.forbidden.discard(node.id)
    gone = emulator_files(emu)["Recordings/2024-05-01/call-1.wav"]
    emu.remove(gone.id)
    with pytest.raises(OSError) as e:
        (mnt / "Recordings/2024-05-01/call-1.wav").read_bytes()
    assert e.value.errno == errno.ENOENT


def test_cp_r_of_a_folder_is_recognised_and_served_by_one_folder_job(emu, mnt, tmp_path):
    busy = mnt / "Recordings" / "busy"
    names = sorted(os.listdir(busy))
    emu.reset_stats()
    subprocess.run(["cp", "-r", str(busy), str(tmp_path / "copy")], check=True)
    for name in names:
        node = next(n for n in emu.files() if emu.path_of(n.id) == f"Recordings/busy/{name}")
        assert (tmp_path / "copy" / name).read_bytes() == node.blob.all_bytes()
    # the first file is read directly; the second read makes it a copy: one job for the rest
    assert emu.count("download_create") == 1
    assert emu.count("data") <= 3


def test_a_single_file_read_never_starts_a_job(emu, mnt):
    subprocess.run(["cat", str(mnt / "Recordings/busy/r0007.wav")], check=True, capture_output=True)
    assert emu.count("download_create") == 0


def test_a_running_folder_job_is_aborted_when_the_mount_stops(emu, mnt, recfs_mount):
    import time
    emu.job_polls = 10_000                       # the job never finishes on its own
    prefetch = subprocess.Popen([sys.executable, "-m", "recfs", "prefetch",
                                 str(mnt / "Recordings" / "busy")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while emu.count("download_status") < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert emu.count("download_status") >= 2
    m = recfs_mount.mounts[-1]
    subprocess.run(["fusermount3", "-u", str(m.path)], check=True)
    assert m.proc.wait(timeout=30) == 0
    prefetch.wait(timeout=30)
    assert emu.count("download_delete") == 1      # nobody waits for it any more
    assert emu.job_history[-1].progress == "ABORTED"
