"""Memory bounded by configuration, through a real mount (tree.py T7, index.py): with
`entries_in_memory` far below the tree's size, `ls -lR` twice gives the same answer,
the daemon keeps at most the bound in RAM and the second walk asks the service
nothing; an inode the kernel holds is answered after its folder left RAM; a remount
within the listing's lifetime lists nothing and keeps every inode number."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from recfs.emulators.alvaria import AlvariaEmulator, source_table
from recfs.emulators.base import PatternBlob
from tests.conftest import toml_config

pytestmark = pytest.mark.e2e

SOURCE = "alv"
PREFIX = "exports/cxp/recordings"
DAYS, CALLS = 10, 30
BOUND = 60


@pytest.fixture
def emu():
    emu = AlvariaEmulator()
    for d in range(DAYS):
        for c in range(CALLS):
            emu.put(f"{PREFIX}/2025-10-{d + 1:02d}/call-{c:03d}.wav", PatternBlob(d * 100 + c, 3000 + 37 * c))
    with emu:
        yield emu


def config(emu, cache_dir: Path) -> str:
    return toml_config([source_table(emu, SOURCE)], cache_dir=cache_dir) + \
        f"\n[tuning]\nentries_in_memory = {BOUND}\nsibling_prefetch = 0\n"


def status(mnt: Path) -> dict:
    return json.loads(os.getxattr(mnt, "user.recfs.status"))


def ls_lR(mnt: Path) -> str:
    return subprocess.run(["ls", "-lRi", "--time-style=+%s", str(mnt / SOURCE)], check=True,
                          capture_output=True, text=True).stdout


def day(mnt: Path, d: int) -> Path:
    return mnt / SOURCE / PREFIX / f"2025-10-{d + 1:02d}"


def test_ls_lR_twice_within_the_bound_and_the_second_without_a_request(emu, recfs_mount, tmp_path):
    mnt = recfs_mount(config(emu, tmp_path / "cache"))
    first = ls_lR(mnt)
    assert first.count(".wav") == DAYS * CALLS
    for c in (0, 17, 29):
        assert f" {3000 + 37 * c} " in first
    s = status(mnt)
    assert s["entries"]["in_memory"] <= BOUND
    assert s["entries"]["in_index"] >= DAYS * CALLS + DAYS
    emu.reset_stats()
    assert ls_lR(mnt) == first
    assert sum(emu.counts.values()) == 0
    assert status(mnt)["entries"]["in_memory"] <= BOUND


def test_an_inode_the_kernel_holds_is_answered_after_its_folder_left_ram(emu, recfs_mount, tmp_path):
    mnt = recfs_mount(config(emu, tmp_path / "cache"))
    held = day(mnt, 0) / "call-007.wav"
    ino = os.stat(held).st_ino                      # the kernel keeps the dentry and its inode
    with open(held, "rb") as f:
        expected = f.read()
    for d in range(1, DAYS):                        # the other days push day 0 out of RAM
        os.listdir(day(mnt, d))
        for name in os.listdir(day(mnt, d)):
            os.stat(day(mnt, d) / name)
    assert status(mnt)["entries"]["in_memory"] <= BOUND
    emu.reset_stats()
    # answered by inode number, the kernel's dentry standing in for a lookup
    assert os.getxattr(held, "user.alvaria.key").decode() == f"{PREFIX}/2025-10-01/call-007.wav"
    assert "user.alvaria.key" in os.listxattr(held)
    with open(held, "rb") as f:
        assert os.fstat(f.fileno()).st_ino == ino
        assert f.read() == expected
    assert os.stat(held).st_ino == ino
    assert emu.count("objectKeys") == 0             # its folder came back from the index


def test_a_remount_within_the_listing_lifetime_asks_nothing_and_keeps_every_number(emu, recfs_mount,
                                                                                    tmp_path):
    mnt = recfs_mount(config(emu, tmp_path / "cache"))
    first = ls_lR(mnt)
    recfs_mount.mounts[-1].unmount()
    emu.reset_stats()
    mnt = recfs_mount(config(emu, tmp_path / "cache"), name="again")
    assert emu.count("objectKeys") == 1            # the access check every mount starts with
    assert ls_lR(mnt) == first.replace(str(tmp_path / "mnt"), str(tmp_path / "again"))
    assert emu.count("objectKeys") == 1
