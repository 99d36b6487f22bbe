"""Deletes through a real mount (issue 9): with `allow_delete = true`, `rm` deletes
the object on the service (Kazoo: soft delete; 8x8: DELETE /bulk) and it leaves
`ls`; without it, `rm` fails with EROFS and nothing reaches the service."""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from recfs.emulators import kazoo
from recfs.emulators.base import BytesBlob
from recfs.emulators.eightbyeight import EightByEight
from recfs.emulators.eightbyeight import source_table as e8_table
from tests.conftest import toml_config

pytestmark = pytest.mark.e2e

UTC = dt.timezone.utc


def rm(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(["rm", *map(str, args)], capture_output=True, text=True)


def refresh(path: Path) -> None:
    subprocess.run([sys.executable, "-m", "recfs", "refresh", str(path)], check=True)


# ---------------------------------------------------------------- Kazoo

@pytest.fixture
def kemu():
    with kazoo.demo(5, bucket_tokens=None) as e:
        yield e


def kazoo_paths(emu, rec) -> tuple[Path, Path]:
    """(account view, user view) folder of `rec`, relative to the source folder."""
    day = dt.datetime.fromtimestamp(kazoo.from_gregorian(rec.public["start"]), UTC)
    tail = Path(f"{day:%Y/%m/%d}")
    return (Path(rec.account_id) / tail,
            Path(rec.account_id) / "users" / rec.public["owner_id"] / tail)


def kazoo_file_name(rec) -> str:
    ext = ".wav" if rec.attachment_type == "audio/wav" else ".mp3"
    name = rec.public["name"]
    return name if name.endswith(ext) else name + ext


def kazoo_victim(emu):
    return next(r for r in emu.recordings.values()
                if r.blob is not None and not r.deleted and r.public.get("owner_id")
                and r.attachment_type == "audio/mpeg" and r.public["name"].endswith(".mp3"))


def test_kazoo_rm_soft_deletes_and_both_views_forget(kemu, recfs_mount):
    table = kazoo.source_table(kemu, "kazoo")
    table["allow_delete"] = True
    src = recfs_mount(toml_config([table])) / "kazoo"
    rec = kazoo_victim(kemu)
    account_dir, user_dir = (src / p for p in kazoo_paths(kemu, rec))
    name = kazoo_file_name(rec)
    assert name in os.listdir(account_dir) and name in os.listdir(user_dir)

    done = rm(account_dir / name)

    assert done.returncode == 0, done.stderr
    assert kemu.recordings[rec.id].deleted and kemu.deletes == [(rec.id, True)]
    assert name not in os.listdir(account_dir)
    assert not (account_dir / name).exists()
    # the other view's folder snapshot is the tree's; once re-listed it is gone too
    refresh(user_dir)
    assert name not in os.listdir(user_dir)


def test_kazoo_rm_without_allow_delete_is_erofs(kemu, recfs_mount):
    src = recfs_mount(toml_config([kazoo.source_table(kemu, "kazoo")])) / "kazoo"
    rec = kazoo_victim(kemu)
    account_dir, _ = (src / p for p in kazoo_paths(kemu, rec))
    name = kazoo_file_name(rec)

    done = rm("-f", account_dir / name)

    assert done.returncode != 0 and "Read-only file system" in done.stderr
    assert kemu.counts["delete"] == 0 and not kemu.recordings[rec.id].deleted
    assert name in os.listdir(account_dir)


# ---------------------------------------------------------------- 8x8

DAY_A = "us-east/callrecording/2024/09/03"
DAY_B = "us-east/callrecording/2024/09/04"


@pytest.fixture
def eemu():
    e = EightByEight(regions=("us-east", "uk"))
    for day in (3, 4):
        for i in range(12):
            e.add_object("us-east", "callrecording", f"call-{day}-{i:02d}.mp3",
                         BytesBlob(bytes([i]) * (500 + i)), dt.datetime(2024, 9, day, 8, i, tzinfo=UTC))
    e.add_object("uk", "voicemail", "vm.wav", BytesBlob(b"v" * 300), dt.datetime(2024, 9, 3, 9, tzinfo=UTC))
    with e:
        yield e


def mount_8x8(emu, recfs_mount, **opts) -> Path:
    table = e8_table(emu, "8x8")
    table.update(opts)
    return recfs_mount(toml_config([table])) / "8x8"


def test_8x8_rm_revokes_the_object_and_it_leaves_ls(eemu, recfs_mount):
    src = mount_8x8(eemu, recfs_mount, allow_delete=True)
    day = src / DAY_A
    assert len(os.listdir(day)) == 12
    victim = next(o for o in eemu.objects.values() if o.objectName == "call-3-05.mp3")

    done = rm(day / "call-3-05.mp3")

    assert done.returncode == 0, done.stderr
    assert eemu.objects[victim.id].objectState == "REVOKED"
    assert eemu.deletes == [("us-east", [victim.id])]
    assert "call-3-05.mp3" not in os.listdir(day) and len(os.listdir(day)) == 11
    refresh(day)                                    # listed again from the service
    assert "call-3-05.mp3" not in os.listdir(day) and len(os.listdir(day)) == 11


def test_8x8_rm_r_of_a_day_folder_deletes_its_files(eemu, recfs_mount):
    src = mount_8x8(eemu, recfs_mount, allow_delete=True)
    day = src / DAY_A
    ids = {o.id for o in eemu.objects.values() if o.objectName.startswith("call-3-")}

    done = rm("-r", day)

    # every file goes, then the folder: a date is only the place of its objects, so
    # once it lists empty on the service its rmdir sends nothing (SEMANTICS §1)
    assert done.returncode == 0 and done.stderr == ""
    assert eemu.deleted_ids == ids
    assert {eemu.objects[i].objectState for i in ids} == {"REVOKED"}
    assert not day.exists()
    # rm unlinks one file after the other, each waiting for its answer: the kernel
    # serialises unlinks in one folder, so nothing arrives together to be coalesced
    assert eemu.counts["bulk_delete"] <= len(ids)


def test_8x8_parallel_deletes_across_folders_share_requests(eemu, recfs_mount):
    from recfs.emulators.base import Fault
    for day in range(10, 18):                      # eight more day folders of three files
        for i in range(3):
            eemu.add_object("us-east", "callrecording", f"p-{day}-{i}.mp3", BytesBlob(b"p" * 99),
                            dt.datetime(2024, 9, day, 8, i, tzinfo=UTC))
    src = mount_8x8(eemu, recfs_mount, allow_delete=True)
    folders = [src / f"us-east/callrecording/2024/09/{day}" for day in range(10, 18)]
    files = [[folder / f for f in sorted(os.listdir(folder))] for folder in folders]
    # a slow service keeps requests in flight long enough for the others to pile up
    eemu.faults.add(Fault("delay", route="bulk_delete", seconds=0.2, times=-1))

    # one thread per folder, as parallel tools (xargs -P, file managers) delete: the
    # kernel passes on unlinks of different folders together
    def delete_folder(folder_files):
        for f in folder_files:
            os.unlink(f)
    with ThreadPoolExecutor(len(files)) as pool:
        list(pool.map(delete_folder, files))

    assert len(eemu.deleted_ids) == 24
    assert all(os.listdir(folder) == [] for folder in folders)
    # at most four requests are out at once; the deletes waiting meanwhile share one
    assert eemu.counts["bulk_delete"] < 24
    assert max(len(ids) for _, ids in eemu.deletes) >= 2


def test_8x8_rm_without_allow_delete_is_erofs(eemu, recfs_mount):
    src = mount_8x8(eemu, recfs_mount)
    day = src / DAY_A

    done = rm(day / "call-3-00.mp3")

    assert done.returncode != 0 and "Read-only file system" in done.stderr
    assert eemu.counts["bulk_delete"] == 0 and eemu.deletes == []
    assert "call-3-00.mp3" in os.listdir(day)
