"""8x8 Cloud Storage through a real mount: ls, find, cp -r, rsync, cmp, xattrs, and
bulk zip jobs seen from the emulator's counters."""
from __future__ import annotations

import datetime as dt
import errno
import os
import random
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from recfs import names
from recfs.emulators.base import BytesBlob, PatternBlob
from recfs.emulators.eightbyeight import EightByEight, demo, source_table
from tests.conftest import toml_config
from tests.e2e import tree_files

pytestmark = pytest.mark.e2e

UTC = dt.timezone.utc
BIG_DAY = "us-east/callcenterrecording/2024/10/01"
LONG_CALL = "us-east/meeting/2024/12/24/all-hands.mp4"


@pytest.fixture
def emu():
    emu = demo(seed=3)
    rng = random.Random(9)
    day = dt.datetime(2024, 10, 1, 8, tzinfo=UTC)
    for i in range(200):
        emu.add_object("us-east", "callcenterrecording",
                       f"int-{i:03d}-phone-00-supertenantcsm01.mp3",
                       BytesBlob(rng.randbytes(rng.randint(1_000, 30_000))),
                       day + dt.timedelta(seconds=120 * i), tags={"callId": f"int-{i:03d}"})
    emu.add_object("us-east", "meeting", "all-hands.mp4", PatternBlob(77, 9 * 1024 * 1024 + 5),
                   dt.datetime(2024, 12, 24, 17, tzinfo=UTC), tags={"sessionId": "s-1"})
    with emu:
        yield emu


def mount(emu, recfs_mount, **opts) -> Path:
    table = source_table(emu, "8x8")
    table.update(poll_interval=0.02, poll_max_interval=0.1, batch_window=0.05)
    table.update(opts)
    return recfs_mount(toml_config([table])) / "8x8"


@pytest.fixture
def mnt(emu, recfs_mount):
    return mount(emu, recfs_mount)


def expected_tree(emu: EightByEight) -> dict[str, object]:
    """path -> object, with names made safe and distinct the way the tree does."""
    folders = defaultdict(list)
    for o in emu.objects.values():
        if o.objectState == "AVAILABLE":
            t = dt.datetime.fromtimestamp(o.created, UTC)
            folders[f"{o.region}/{o.type}/{t:%Y/%m/%d}"].append(o)
    out = {}
    for folder, objs in folders.items():
        for name, o in zip(names.unique_names([(o.objectName, o.id) for o in objs]), objs):
            out[f"{folder}/{name}"] = o
    return out


def jobs(emu: EightByEight) -> int:
    return emu.jobs_started


def test_tree_over_regions_types_and_days(emu, mnt):
    expected = expected_tree(emu)
    assert sorted(tree_files(mnt)) == sorted(expected)
    assert sorted(os.listdir(mnt)) == ["uk", "us-east"]
    assert sorted(os.listdir(mnt / "us-east")) == ["agentnotes", "callcenterrecording", "callrecording",
                                                   "meeting", "transcription"]
    assert sorted(os.listdir(mnt / "us-east/callrecording")) == ["2024", "2025"]
    for path, obj in expected.items():
        st = (mnt / path).stat()
        assert st.st_size == obj.size and int(st.st_mtime) == int(obj.created), path
    # both recordings named voicemail-greeting.mp3 are there, under distinct names
    assert len(os.listdir(mnt / "us-east/callcenterrecording/2024/09/04")) == 2
    assert jobs(emu) == 0                     # listing never starts a job


def test_metadata_as_xattrs(emu, mnt):
    path, obj = next((p, o) for p, o in expected_tree(emu).items() if o.type == "callrecording")
    assert os.getxattr(mnt / path, "user.8x8.callId").decode() == obj.tags["callId"]
    assert os.getxattr(mnt / path, "user.8x8.id").decode() == obj.id
    assert os.getxattr(mnt / path, "user.8x8.checksum").decode() == obj.checksum
    assert os.getxattr(mnt / path, "user.8x8.mimeType").decode() == obj.mimeType == "audio/wav"


def test_every_file_is_byte_equal(emu, mnt, tmp_path):
    expected_file = tmp_path / "expected"
    for path, obj in expected_tree(emu).items():
        if path.startswith(BIG_DAY):
            continue                          # the copy test covers those 200
        expected_file.write_bytes(obj.blob.all_bytes())
        subprocess.run(["cmp", str(expected_file), str(mnt / path)], check=True)


def test_cp_r_of_a_200_file_day_takes_a_handful_of_jobs(emu, mnt, tmp_path):
    expected = {p: o for p, o in expected_tree(emu).items() if p.startswith(BIG_DAY)}
    assert len(expected) == 200
    subprocess.run(["cp", "-r", str(mnt / BIG_DAY), str(tmp_path / "day")], check=True)
    assert 1 <= jobs(emu) <= 5
    assert all(len(j.ids) <= 50 for j in emu.jobs.values())
    for path, obj in expected.items():
        assert (tmp_path / "day" / Path(path).name).read_bytes() == obj.blob.all_bytes(), path
    # rsync afterwards is served from the cache
    before = (jobs(emu), emu.count("content"), emu.count("bulk_download"))
    subprocess.run(["rsync", "-a", f"{mnt / BIG_DAY}/", str(tmp_path / "rsync")], check=True)
    assert (jobs(emu), emu.count("content"), emu.count("bulk_download")) == before
    assert sorted(os.listdir(tmp_path / "rsync")) == sorted(Path(p).name for p in expected)


def test_random_access_on_one_file_never_waits_on_a_job(emu, mnt):
    blob = next(o for o in emu.objects.values() if o.objectName == "all-hands.mp4").blob
    with open(mnt / LONG_CALL, "rb", buffering=0) as f:
        f.seek(blob.size - 4096)
        tail = f.read(4096)
        f.seek(5_000_000)
        middle = f.read(10_000)
    assert tail == blob.read(blob.size - 4096, 4096)
    assert middle == blob.read(5_000_000, 10_000)
    assert jobs(emu) == 0 and emu.count("content") >= 1


def day_files(emu, mnt) -> list[tuple[Path, object]]:
    return sorted(((mnt / p, o) for p, o in expected_tree(emu).items() if p.startswith(BIG_DAY)),
                  key=lambda po: po[0].name)


@pytest.mark.parametrize("status", ["PARTIAL_DONE", "FAILED", "CANCELLED"])
def test_a_file_a_job_did_not_deliver_is_read_per_object(emu, recfs_mount, status):
    """A job that failed, or a zip that lacks a file, costs time, never an error: the
    file is read through the per-object content endpoint (the others of a partial
    zip come from it)."""
    mnt = mount(emu, recfs_mount, bulk="always", bulk_readahead=False)
    files = day_files(emu, mnt)
    (missing_path, missing), (other_path, other) = files[10], files[11]
    emu.plan_job(status, missing={missing.id})
    emu.reset_stats()
    assert missing_path.read_bytes() == missing.blob.all_bytes()
    assert jobs(emu) == 1 and other.id in emu.jobs[next(iter(emu.jobs))].ids
    assert emu.count("content") >= 1
    assert other_path.read_bytes() == other.blob.all_bytes()
    if status == "PARTIAL_DONE":
        assert jobs(emu) == 1                 # the other file came with the partial zip


def test_md5_mismatch_gives_eio_and_is_not_cached(emu, recfs_mount):
    mnt = mount(emu, recfs_mount, bulk="always", bulk_readahead=False)
    (bad_path, bad), (good_path, good) = day_files(emu, mnt)[20:22]
    emu.corrupt_ids = {bad.id}
    with pytest.raises(OSError) as exc:
        bad_path.read_bytes()
    assert exc.value.errno == errno.EIO
    assert good_path.read_bytes() == good.blob.all_bytes()
    started = jobs(emu)
    emu.corrupt_ids = set()
    assert bad_path.read_bytes() == bad.blob.all_bytes()
    assert jobs(emu) == started + 1           # nothing of the bad member was kept


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="needs ffprobe")
def test_ffprobe_reads_a_recording_without_a_job(emu, mnt):
    path, obj = next((p, o) for p, o in sorted(expected_tree(emu).items())
                     if o.type == "callrecording" and p.endswith(".wav"))
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration:stream=codec_name",
                            "-of", "default=noprint_wrappers=1", str(mnt / path)],
                           capture_output=True, text=True, check=True).stdout
    assert "codec_name=pcm_s16le" in probe
    seconds = float(probe.split("duration=")[1].split()[0])
    assert seconds * 1000 == pytest.approx(int(obj.tags["duration"]), abs=50)
    assert jobs(emu) == 0
