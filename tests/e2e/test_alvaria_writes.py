"""Writes through a real mount: Alvaria uploads into imports/, deletes behind allow_delete."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recfs.emulators.alvaria import AlvariaEmulator, populate_sample, source_table
from recfs.emulators.base import Fault
from tests.conftest import toml_config

pytestmark = pytest.mark.e2e
LIST_DIR = "imports/outreach/list-management"


@pytest.fixture
def emu():
    emu = AlvariaEmulator()
    populate_sample(emu, seed=9)
    with emu:
        yield emu


def config(emu, tmp_path, **extra) -> str:
    table = dict(source_table(emu, "alv"), **extra)
    return toml_config([table], cache_dir=tmp_path / "cache",
                       cache=None) + "\n[tuning]\nretry_attempts = 2\nretry_base_delay = 0.01\n"


def status(mnt: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "recfs", "status", str(mnt)], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)


def test_cp_into_imports_uploads_with_the_signed_headers_and_shows_the_exact_size(emu, recfs_mount, tmp_path):
    mnt = recfs_mount(config(emu, tmp_path))
    src = tmp_path / "contacts.csv"
    src.write_bytes(b"id,phone\n" + b"".join(b"%d,555%04d\n" % (i, i) for i in range(5000)))
    subprocess.run(["cp", str(src), str(mnt / "alv" / LIST_DIR) + "/"], check=True)
    key = f"{LIST_DIR}/contacts.csv"
    assert emu.objects[key].blob.all_bytes() == src.read_bytes()
    assert emu.puts == [key]                            # exactly once
    listed = subprocess.run(["ls", "-l", str(mnt / "alv" / LIST_DIR)], capture_output=True,
                            text=True, check=True).stdout
    assert f" {src.stat().st_size} " in listed
    subprocess.run(["cmp", str(src), str(mnt / "alv" / key)], check=True)
    subprocess.run([sys.executable, "-m", "recfs", "refresh", str(mnt / "alv" / LIST_DIR)], check=True)
    assert (mnt / "alv" / key).stat().st_size == src.stat().st_size    # as the service lists it


def test_exports_stay_read_only(emu, recfs_mount, tmp_path):
    mnt = recfs_mount(config(emu, tmp_path))
    with pytest.raises(OSError) as e:
        (mnt / "alv/exports/cxp/new.wav").write_bytes(b"x")
    assert e.value.errno == errno.EROFS
    with pytest.raises(OSError) as e:
        os.mkdir(mnt / "alv/exports/newdir")
    assert e.value.errno == errno.EROFS
    assert emu.puts == []


def test_mkdir_makes_a_folder_that_lasts_until_a_file_lands_in_it(emu, recfs_mount, tmp_path):
    mnt = recfs_mount(config(emu, tmp_path))
    base = mnt / "alv/imports/outreach"
    os.mkdir(base / "campaign-7")
    assert (base / "campaign-7").is_dir() and os.listdir(base / "campaign-7") == []
    os.mkdir(base / "scratch")
    os.rmdir(base / "scratch")
    assert not (base / "scratch").exists()
    (base / "campaign-7" / "list.csv").write_bytes(b"a,b\n")
    assert emu.objects["imports/outreach/campaign-7/list.csv"].blob.all_bytes() == b"a,b\n"
    subprocess.run([sys.executable, "-m", "recfs", "refresh", str(base)], check=True)
    assert os.listdir(base / "campaign-7") == ["list.csv"]


def test_a_failed_upload_fails_close_keeps_the_file_and_lands_once_on_the_next_close(emu, recfs_mount, tmp_path):
    mnt = recfs_mount(config(emu, tmp_path))
    emu.faults.add(Fault("status", route="s3_put", times=-1, status=503))
    first = tmp_path / "first.csv"
    first.write_bytes(b"first\n" * 1000)
    done = subprocess.run(["cp", str(first), str(mnt / "alv" / LIST_DIR) + "/"], capture_output=True, text=True)
    assert done.returncode != 0 and "Input/output error" in done.stderr
    pending = status(mnt)["uploads"]["pending"]
    assert [p["name"] for p in pending] == ["first.csv"] and "503" in pending[0]["last_error"]
    assert f"{LIST_DIR}/first.csv" not in emu.objects
    log = recfs_mount.mounts[-1].log_text()
    assert "upload of" in log and "kept for a retry" in log
    emu.faults.clear()
    (mnt / "alv" / LIST_DIR / "second.csv").write_bytes(b"second\n")     # the next close
    deadline = time.monotonic() + 20        # that close retries first.csv in the background
    while status(mnt)["uploads"]["pending"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status(mnt)["uploads"]["pending"] == []
    assert emu.objects[f"{LIST_DIR}/first.csv"].blob.all_bytes() == first.read_bytes()
    assert sorted(emu.puts) == sorted([f"{LIST_DIR}/first.csv", f"{LIST_DIR}/second.csv"])


def test_a_pending_upload_is_sent_at_the_next_mount(emu, recfs_mount, tmp_path):
    cfg = config(emu, tmp_path)
    mnt = recfs_mount(cfg, name="one")
    emu.faults.add(Fault("status", route="s3_put", times=-1, status=500))
    with pytest.raises(OSError):
        (mnt / "alv" / LIST_DIR / "later.csv").write_bytes(b"later\n")
    recfs_mount.mounts[-1].unmount()
    emu.faults.clear()
    recfs_mount(cfg, name="two")
    deadline = time.monotonic() + 20
    while f"{LIST_DIR}/later.csv" not in emu.objects and time.monotonic() < deadline:
        time.sleep(0.05)
    assert emu.objects[f"{LIST_DIR}/later.csv"].blob.all_bytes() == b"later\n"
    assert emu.puts == [f"{LIST_DIR}/later.csv"]


def test_an_expired_upload_url_is_renewed(emu, recfs_mount, tmp_path):
    mnt = recfs_mount(config(emu, tmp_path))
    emu.faults.add(Fault("status", route="s3_put", times=1, status=403,
                         body=b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"))
    (mnt / "alv" / LIST_DIR / "renewed.csv").write_bytes(b"ok\n")
    assert emu.objects[f"{LIST_DIR}/renewed.csv"].blob.all_bytes() == b"ok\n"
    assert emu.count("signedUploadUrl") == 2


def test_rm_is_erofs_without_allow_delete(emu, recfs_mount, tmp_path):
    mnt = recfs_mount(config(emu, tmp_path))
    victim = mnt / "alv" / LIST_DIR / "list-0001.csv"
    with pytest.raises(OSError) as e:
        victim.unlink()
    assert e.value.errno == errno.EROFS
    assert f"{LIST_DIR}/list-0001.csv" in emu.objects


def test_rm_deletes_on_the_service_with_allow_delete(emu, recfs_mount, tmp_path):
    mnt = recfs_mount(config(emu, tmp_path, allow_delete=True))
    folder = mnt / "alv/exports/cxp/recordings/2025-10-10"
    victim = sorted(os.listdir(folder))[0]
    subprocess.run(["rm", str(folder / victim)], check=True)
    assert f"exports/cxp/recordings/2025-10-10/{victim}" not in emu.objects
    assert victim not in os.listdir(folder)
    assert emu.count("delete") == 1


def test_rm_r_of_a_folder_with_allow_delete_removes_it_whole(emu, recfs_mount, tmp_path):
    """A folder is only the prefix of its objects: `rm -r` deletes the files, and the
    folder, empty on the service, goes with them; a folder that still holds objects is
    ENOTEMPTY, and without allow_delete rmdir stays EROFS."""
    mnt = recfs_mount(config(emu, tmp_path, allow_delete=True))
    folder = mnt / "alv/exports/cxp/recordings/2025-10-10"
    names = os.listdir(folder)
    with pytest.raises(OSError) as e:
        os.rmdir(folder)
    assert e.value.errno == errno.ENOTEMPTY
    subprocess.run(["rm", "-r", str(folder)], check=True)
    assert not folder.exists()
    assert not any(k.startswith("exports/cxp/recordings/2025-10-10/") for k in emu.objects)
    assert emu.count("delete") == len(names)
    assert "2025-10-10" not in os.listdir(folder.parent)


def test_rename_chmod_and_utimens_are_refused(emu, recfs_mount, tmp_path):
    mnt = recfs_mount(config(emu, tmp_path, allow_delete=True))
    f = mnt / "alv" / LIST_DIR / "list-0001.csv"
    for op in (lambda: os.rename(f, f.with_name("x.csv")), lambda: os.chmod(f, 0o600),
               lambda: os.utime(f, (1, 1))):
        with pytest.raises(OSError) as e:
            op()
        assert e.value.errno in (errno.EROFS, errno.EPERM)
