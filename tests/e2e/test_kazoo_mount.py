"""Kazoo through a real mount: two accounts, the per-user view, exact sizes, cmp,
rsync, xattrs, and a 429 storm."""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import threading

import pytest

from recfs.emulators.kazoo import demo, from_gregorian, source_table
from tests.conftest import toml_config
from tests.e2e import tree_files

pytestmark = pytest.mark.e2e

SEED = 11


def expected_files(emu) -> dict[str, object]:
    """path below the source folder -> emulator Recording, for both views."""
    out = {}
    for rec in emu.recordings.values():
        if rec.blob is None or rec.deleted:
            continue
        ext = ".wav" if rec.attachment_type == "audio/wav" else ".mp3"
        name = rec.public["name"] if rec.public["name"].endswith(ext) else rec.public["name"] + ext
        day = dt.datetime.fromtimestamp(from_gregorian(rec.public["start"]), dt.timezone.utc)
        tail = f"{day:%Y/%m/%d}/{name}"
        out[f"{rec.account_id}/{tail}"] = rec
        if rec.public.get("owner_id"):
            out[f"{rec.account_id}/users/{rec.public['owner_id']}/{tail}"] = rec
    return out


@pytest.fixture
def emu():
    with demo(SEED, bucket_tokens=None) as e:
        yield e


@pytest.fixture
def mnt(emu, recfs_mount):
    table = source_table(emu, "kazoo")
    table["page_size"] = 3                 # several pages per window
    return recfs_mount(toml_config([table])) / "kazoo"


def test_tree_of_two_accounts_and_the_user_view(emu, mnt):
    assert sorted(os.listdir(mnt)) == sorted(emu.demo_accounts)
    for account in emu.demo_accounts:
        assert "users" in os.listdir(mnt / account)
        owners = {r.public["owner_id"] for r in emu.recordings.values()
                  if r.account_id == account and r.public.get("owner_id") and r.blob and not r.deleted}
        assert set(os.listdir(mnt / account / "users")) == owners
    assert sorted(tree_files(mnt)) == sorted(expected_files(emu))


def test_every_file_equals_the_recording_with_exact_size(emu, mnt, tmp_path):
    expected = tmp_path / "expected"
    for path, rec in expected_files(emu).items():
        st = os.stat(mnt / path)
        assert st.st_size == rec.blob.size, path                 # before open
        assert st.st_mtime == pytest.approx(from_gregorian(rec.public["start"]), abs=1)
        expected.write_bytes(rec.blob.all_bytes())
        subprocess.run(["cmp", str(expected), str(mnt / path)], check=True)
        assert os.stat(mnt / path).st_size == rec.blob.size       # and after


def test_ls_l_and_rsync(emu, mnt, tmp_path):
    out = subprocess.run(["ls", "-lR", str(mnt)], capture_output=True, text=True, check=True).stdout
    for rec in expected_files(emu).values():
        assert f" {rec.blob.size} " in out
    subprocess.run(["rsync", "-a", f"{mnt}/", str(tmp_path / "copy")], check=True)
    for path, rec in expected_files(emu).items():
        assert (tmp_path / "copy" / path).read_bytes() == rec.blob.all_bytes()


def test_metadata_as_xattrs(emu, mnt):
    path, rec = next((p, r) for p, r in sorted(expected_files(emu).items()) if "/users/" in p)
    def attr(name):
        return os.getxattr(mnt / path, f"user.kazoo.{name}").decode()
    assert attr("call_id") == rec.public["call_id"]
    assert attr("caller_id_name") == rec.public["caller_id_name"]
    assert attr("caller_id_number") == rec.public["caller_id_number"]
    assert attr("callee_id_name") == rec.public["callee_id_name"]
    assert attr("callee_id_number") == rec.public["callee_id_number"]
    assert attr("direction") == rec.public["direction"]
    assert attr("duration_ms") == str(rec.public["duration_ms"])
    assert attr("owner_id") == rec.public["owner_id"]


def test_a_429_storm_is_survived(recfs_mount):
    with demo(SEED, bucket_tokens=5, fill_rate=100, api_auth_tokens=5) as emu:
        mnt = recfs_mount(toml_config([source_table(emu, "kazoo")]), name="storm") / "kazoo"
        want = expected_files(emu)
        emu.drain_bucket()
        assert sorted(tree_files(mnt)) == sorted(want)
        errors = []
        paths = sorted(want)

        def read(chunk):
            for path in chunk:
                try:
                    if (mnt / path).read_bytes() != want[path].blob.all_bytes():
                        errors.append(f"{path}: wrong bytes")
                except OSError as exc:
                    errors.append(f"{path}: {exc}")

        emu.drain_bucket()
        threads = [threading.Thread(target=read, args=(paths[i::6],)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors
        assert emu.count("throttled") > 0
