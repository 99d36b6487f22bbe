"""recfs.fsspec against the emulators: what the abstract suites do not cover.
Copies make the mount's requests, changes follow the mount's rules, one core per
config per process, and no pyfuse3 needed."""
from __future__ import annotations

import datetime as dt
import errno
import os
import pickle
import subprocess
import sys
import threading

import fsspec
import pytest

from recfs.emulators.alvaria import AlvariaEmulator, source_table as alvaria_table
from recfs.emulators.base import Fault, PatternBlob
from recfs.emulators.eightbyeight import EightByEight, source_table as eight_table
from recfs.fsspec import RecfsFileSystem
from tests.conftest import toml_config
from tests.fsspec.conftest import filesystem, write_config

T0 = 1_760_000_000.0
CALLS = "alv/exports/calls"


@pytest.fixture
def emu():
    emu = AlvariaEmulator()
    for d in range(2):
        for i in range(12):
            emu.put(f"exports/calls/d{d}/c{i:03d}.wav", PatternBlob(d * 100 + i + 1, 20_000 + 997 * i),
                    T0 + 60 * i)
    emu.put("imports/README.txt", b"files copied here are imported\n", T0)
    with emu:
        yield emu


def blob(emu, path: str) -> bytes:
    return emu.objects[path.split("/", 1)[1]].blob.all_bytes()


@pytest.fixture
def fs(emu, tmp_path):
    fs = filesystem(write_config([alvaria_table(emu, "alv")], tmp_path))
    yield fs
    fs.close()


@pytest.fixture
def fs_deletes(emu, tmp_path):
    fs = filesystem(write_config([dict(alvaria_table(emu, "alv"), allow_delete=True)], tmp_path))
    yield fs
    fs.close()


def test_registered_under_recfs_and_opened_by_url(emu, tmp_path):
    config = write_config([alvaria_table(emu, "alv")], tmp_path)
    assert fsspec.get_filesystem_class("recfs") is RecfsFileSystem
    with fsspec.open(f"recfs://{CALLS}/d1/c003.wav", "rb", config=str(config)) as f:
        assert f.read() == blob(emu, f"{CALLS}/d1/c003.wav")
    with fsspec.open("recfs://alv/imports/README.txt", "r", config=str(config)) as f:
        assert f.read() == "files copied here are imported\n"
    fsspec.filesystem("recfs", config=str(config)).close()


def test_listings_find_walk_and_glob_agree(fs, emu):
    names = [f"{CALLS}/d{d}/c{i:03d}.wav" for d in range(2) for i in range(12)]
    emu.reset_stats()
    assert fs.find(CALLS) == names
    assert emu.count("s3") == 0                 # names only: no size learnt (as find through the mount)
    assert fs.glob(f"{CALLS}/*/c00?.wav") == [n for n in names if n.rsplit("/", 1)[1] < "c010"]
    assert fs.glob(f"{CALLS}/**/c011.wav") == [f"{CALLS}/d0/c011.wav", f"{CALLS}/d1/c011.wav"]
    walked = list(fs.walk(CALLS))
    assert walked == [(CALLS, ["d0", "d1"], []),
                      (f"{CALLS}/d0", [], [f"c{i:03d}.wav" for i in range(12)]),
                      (f"{CALLS}/d1", [], [f"c{i:03d}.wav" for i in range(12)])]
    listed = fs.ls(f"{CALLS}/d0")                # details: exact sizes, as ls -l
    assert [i["size"] for i in listed] == [20_000 + 997 * i for i in range(12)]
    assert all(i["exact_size"] and i["type"] == "file" for i in listed)
    assert [i["mtime"] for i in listed] == [T0 + 60 * i for i in range(12)]
    assert listed[0]["metadata"]["alvaria.key"] == "exports/calls/d0/c000.wav"
    assert fs.ls(f"{CALLS}/d0", detail=False) == names[:12]
    assert fs.info(CALLS)["type"] == "directory"
    assert fs.du(f"{CALLS}/d1") == sum(20_000 + 997 * i for i in range(12))
    assert fs.ls("") == [fs.info("alv")] and fs.info("alv")["name"] == "alv"
    with pytest.raises(FileNotFoundError):
        fs.info(f"{CALLS}/d2")
    assert fs.find(f"{CALLS}/d9") == [] and not fs.exists(f"{CALLS}/d9")


def test_a_folder_that_cannot_be_listed_is_eio_or_left_out(fs, emu):
    fs.ls(CALLS, detail=False)
    emu.faults.add(Fault("status", route="objectKeys", times=-1, status=500))
    assert list(fs.walk(CALLS)) == [(CALLS, ["d0", "d1"], []), (f"{CALLS}/d0", [], []),
                                    (f"{CALLS}/d1", [], [])]
    with pytest.raises(OSError) as e:
        list(fs.walk(CALLS, on_error="raise"))
    assert e.value.errno == errno.EIO and "500" in str(e.value)
    with pytest.raises(OSError) as e:
        fs.ls(f"{CALLS}/d0")
    assert e.value.errno == errno.EIO


def test_a_new_recording_appears_after_invalidate_cache(fs, emu):
    assert not fs.exists(f"{CALLS}/d0/new.wav")
    emu.put("exports/calls/d0/new.wav", b"RIFF....", T0)
    assert not fs.exists(f"{CALLS}/d0/new.wav")        # the listing is a snapshot (listing_ttl)
    fs.invalidate_cache(CALLS)
    assert fs.cat_file(f"{CALLS}/d0/new.wav") == b"RIFF...."


def test_reads_through_open_files(fs, emu):
    path = f"{CALLS}/d0/c011.wav"
    want = blob(emu, path)
    with fs.open(path) as f:
        assert f.seekable() and f.readable() and f.size == len(want)
        assert f.read(10) == want[:10] and f.tell() == 10
        assert f.read(1) == want[10:11]
        f.seek(-5, os.SEEK_END)
        assert f.read(100) == want[-5:] and f.read(1) == b""
        f.seek(1000)
        buf = bytearray(3000)
        assert f.readinto(buf) == 3000 and bytes(buf) == want[1000:4000]
    assert fs.cat([f"{CALLS}/d0/c001.wav", path]) == {f"{CALLS}/d0/c001.wav": blob(emu, f"{CALLS}/d0/c001.wav"),
                                                      path: want}
    assert fs.head(path, 7) == want[:7] and fs.tail(path, 7) == want[-7:]
    with pytest.raises(IsADirectoryError):
        fs.open(CALLS)
    with pytest.raises(FileNotFoundError):
        fs.open(f"{CALLS}/d0/none.wav")


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["alvaria", "8x8"])
def test_get_makes_the_requests_cp_r_makes_through_the_mount(kind, recfs_mount, tmp_path):
    """The same folder copied by cp -r through a mount and by fs.get: the same requests
    (Alvaria: the listing, size probes that bring small files whole, files fetched
    ahead; 8x8: one bulk job for the folder), all bytes right."""
    if kind == "alvaria":
        emu = AlvariaEmulator()
        for i in range(40):
            emu.put(f"exports/calls/c{i:03d}.wav", PatternBlob(i + 1, 20_000 + 1000 * i), T0)
        folder, polls = "src/exports/calls", ()
    else:
        emu = EightByEight(regions=("us-east",))
        day = dt.datetime(2025, 10, 10, 9, tzinfo=dt.timezone.utc)
        for i in range(30):
            emu.add_object("us-east", "callrecording", f"call-{i:03d}.wav", PatternBlob(i + 1, 30_000 + 500 * i),
                           day + dt.timedelta(minutes=i))
        folder = "src/us-east/callrecording/2025/10/10"
        polls = ("bulk_status", "bulk_statuses")        # as many as the job's pace asks
    with emu:
        table = alvaria_table(emu, "src") if kind == "alvaria" else eight_table(emu, "src")
        mnt = recfs_mount(toml_config([table]))
        os.listdir(mnt / folder.rsplit("/", 1)[0])
        emu.reset_stats()
        subprocess.run(["cp", "-r", str(mnt / folder), str(tmp_path / "cp")], check=True)
        by_mount = {k: v for k, v in emu.counts.items() if k not in polls}
        fs = filesystem(write_config([table], tmp_path / "fsspec"))
        try:
            fs.ls(folder.rsplit("/", 1)[0], detail=False)
            emu.reset_stats()
            fs.get(folder, str(tmp_path / "get"), recursive=True)
            by_fsspec = {k: v for k, v in emu.counts.items() if k not in polls}
        finally:
            fs.close()
    assert by_fsspec == by_mount
    if kind == "8x8":
        assert by_fsspec["bulk_start"] == 1
    copied = sorted(os.listdir(tmp_path / "cp"))
    assert sorted(os.listdir(tmp_path / "get")) == copied and len(copied) in (30, 40)
    for name in copied:
        assert (tmp_path / "get" / name).read_bytes() == (tmp_path / "cp" / name).read_bytes()


def test_files_written_into_imports_are_uploaded_once_and_read_back(fs, emu, tmp_path):
    local = tmp_path / "contacts.csv"
    local.write_bytes(b"id,phone\n" + b"".join(b"%d,555%04d\n" % (i, i) for i in range(30_000)))
    fs.makedirs("alv/imports/outreach", exist_ok=True)
    fs.put(str(local), "alv/imports/outreach/contacts.csv")
    assert emu.objects["imports/outreach/contacts.csv"].blob.all_bytes() == local.read_bytes()
    assert emu.puts == ["imports/outreach/contacts.csv"]
    assert fs.cat_file("alv/imports/outreach/contacts.csv") == local.read_bytes()
    assert fs.info("alv/imports/outreach/contacts.csv")["size"] == local.stat().st_size
    with fs.open("alv/imports/outreach/note.txt", "w") as f:
        f.write("call back tomorrow\n")
    assert emu.objects["imports/outreach/note.txt"].blob.all_bytes() == b"call back tomorrow\n"
    fs.pipe_file("alv/imports/outreach/empty.txt", b"")
    assert emu.objects["imports/outreach/empty.txt"].blob.all_bytes() == b""
    assert fs.info("alv/imports")["mode"] & 0o777 == 0o755
    assert fs.info(CALLS)["mode"] & 0o777 == 0o555


def test_changes_are_refused_as_the_mount_refuses_them(fs, emu):
    def refused(code, call, *args, **kw):
        with pytest.raises(OSError) as e:
            call(*args, **kw)
        assert e.value.errno == code, (call, args, e.value)

    before = len(emu.objects)
    refused(errno.EROFS, fs.pipe_file, f"{CALLS}/d0/new.wav", b"x")          # outside imports/
    refused(errno.EROFS, fs.pipe_file, f"{CALLS}/d0/c000.wav", b"x")         # over a recording
    refused(errno.EROFS, fs.mkdir, f"{CALLS}/d3")
    refused(errno.EROFS, fs.rm, f"{CALLS}/d0/c000.wav")                      # no allow_delete
    refused(errno.EROFS, fs.rmdir, f"{CALLS}/d0")
    refused(errno.EROFS, fs.mv, f"{CALLS}/d0/c000.wav", "alv/imports/c000.wav")
    refused(errno.EROFS, fs.mkdir, "other-source")
    refused(errno.ENOENT, fs.pipe_file, "alv/imports/no-such-folder/x.csv", b"x")
    refused(errno.ENOENT, fs.rm, f"{CALLS}/d0/none.wav")
    fs.pipe_file("alv/imports/once.csv", b"1\n")
    refused(errno.EEXIST, fs.open, "alv/imports/once.csv", "xb")
    refused(errno.EEXIST, fs.pipe_file, "alv/imports/once.csv", b"2\n", mode="create")
    refused(errno.EROFS, fs.pipe_file, "alv/imports/once.csv", b"2\n")       # it reached the service
    refused(errno.EEXIST, fs.mkdir, "alv/imports")
    assert len(emu.objects) == before + 1
    assert fs.cat_file("alv/imports/once.csv") == b"1\n"


def test_rm_deletes_on_the_service_only_with_allow_delete(fs_deletes, emu):
    fs_deletes.rm(f"{CALLS}/d1/c005.wav")
    assert "exports/calls/d1/c005.wav" not in emu.objects
    assert not fs_deletes.exists(f"{CALLS}/d1/c005.wav")
    fs_deletes.makedirs("alv/imports/empty")
    fs_deletes.rmdir("alv/imports/empty")          # made here, nothing landed: it goes
    assert not fs_deletes.exists("alv/imports/empty")


def test_a_failed_upload_fails_close_and_stays_staged(fs, emu):
    emu.faults.add(Fault("status", route="s3_put", times=-1, status=503))
    f = fs.open("alv/imports/first.csv", "wb")
    f.write(b"first\n" * 1000)
    with pytest.raises(OSError) as e:
        f.close()
    assert e.value.errno == errno.EIO
    pending = fs.status()["uploads"]["pending"]
    assert [p["name"] for p in pending] == ["first.csv"] and "503" in pending[0]["last_error"]
    assert "imports/first.csv" not in emu.objects
    emu.faults.clear()
    fs.pipe_file("alv/imports/second.csv", b"second\n")       # a close sends what failed too
    for _ in range(200):
        if "imports/first.csv" in emu.objects:
            break
        threading.Event().wait(0.05)
    assert emu.objects["imports/first.csv"].blob.all_bytes() == b"first\n" * 1000


def test_one_core_per_config_per_process_started_lazily_and_closed(emu, tmp_path):
    config = write_config([alvaria_table(emu, "alv")], tmp_path)
    fs = RecfsFileSystem(config=str(config))
    assert not fs._core.running                     # nothing starts before the first call
    assert fs.cat_file(f"{CALLS}/d0/c000.wav") == blob(emu, f"{CALLS}/d0/c000.wav")
    others = []
    thread = threading.Thread(target=lambda: others.append(RecfsFileSystem(config=str(config))))
    thread.start()
    thread.join()
    assert others[0] is not fs and others[0]._core is fs._core     # fsspec: an instance per thread
    assert fs._core.cache_dir == tmp_path / "cache" / "fsspec" / "0"
    copy = pickle.loads(pickle.dumps(fs))
    assert copy._core is fs._core and copy.ls(CALLS, detail=False) == [f"{CALLS}/d0", f"{CALLS}/d1"]
    fs.close()
    assert not fs._core.running
    assert fs.cat_file(f"{CALLS}/d1/c000.wav") == blob(emu, f"{CALLS}/d1/c000.wav")   # starts again
    fs.close()


def test_files_open_when_the_filesystem_closes_fail_and_start_nothing(emu, tmp_path):
    fs = filesystem(write_config([alvaria_table(emu, "alv")], tmp_path))
    reader = fs.open(f"{CALLS}/d0/c005.wav", block_size=1024)
    assert reader.read(10) == blob(emu, f"{CALLS}/d0/c005.wav")[:10]
    writer = fs.open("alv/imports/late.csv", "wb")
    fs.close()
    with pytest.raises(OSError) as e:
        reader.read(5000)
    assert e.value.errno == errno.EBADF
    reader.close()
    with pytest.raises(OSError):
        writer.close()
    assert not fs._core.running and "imports/late.csv" not in emu.objects
    assert fs.cat_file(f"{CALLS}/d0/c005.wav") == blob(emu, f"{CALLS}/d0/c005.wav")   # a new start
    fs.close()


def test_a_second_process_takes_its_own_cache(emu, tmp_path):
    config = write_config([alvaria_table(emu, "alv")], tmp_path)
    fs = RecfsFileSystem(config=str(config))
    fs.ls("alv", detail=False)
    code = ("from recfs.fsspec import RecfsFileSystem\n"
            f"fs = RecfsFileSystem(config={str(config)!r})\n"
            f"assert fs.cat_file({CALLS + '/d0/c002.wav'!r})\n"
            "print(fs._core.cache_dir)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(tmp_path / "cache" / "fsspec" / "1")
    fs.close()


def test_a_wrong_secret_is_an_oserror_naming_the_source(emu, tmp_path):
    config = write_config([dict(alvaria_table(emu, "alv"), client_secret="not-the-secret")], tmp_path)
    fs = filesystem(config)
    with pytest.raises(OSError) as e:
        fs.ls("alv")
    assert "alv" in str(e.value) and "not-the-secret" not in str(e.value)


def test_it_works_without_pyfuse3(emu, tmp_path):
    config = write_config([alvaria_table(emu, "alv")], tmp_path)
    code = ("import sys\n"
            "class NoFuse:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'pyfuse3':\n"
            "            raise ImportError('pyfuse3 is not installed')\n"
            "sys.meta_path.insert(0, NoFuse())\n"
            "import fsspec\n"
            f"fs = fsspec.filesystem('recfs', config={str(config)!r})\n"
            f"sys.stdout.buffer.write(fs.cat_file({CALLS + '/d1/c004.wav'!r}))\n"
            "assert 'pyfuse3' not in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout
    assert out == blob(emu, f"{CALLS}/d1/c004.wav")
    done = subprocess.run([sys.executable, "-c", code.split("import fsspec")[0]
                           + "from recfs.cli import main\nsys.exit(main(['mount', 'x.toml', '/tmp']))\n"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "recfs[fuse]" in done.stderr
