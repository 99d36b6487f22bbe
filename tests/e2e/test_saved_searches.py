"""Saved searches as folders, through a real mount of all four services: a `[[searches]]`
table shows one caller's recordings under searches/{name}/{source}/{home path}, with
their home sizes and bytes (one cache entry: read at home, read there without a
request), a listing within the TTL asks nothing, `recfs refresh` runs it again with
the same inode numbers, and nothing there can be written or deleted."""
from __future__ import annotations

import errno
import filecmp
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import toml_config
from tests.e2e.test_search import CALLER, requests, services  # noqa: F401  (the fixture)

pytestmark = pytest.mark.e2e

HOLD = "legal-hold"


def saved_config(tables: list[dict], query: str = f"number={CALLER}") -> str:
    # deletes allowed at home, so that EROFS below searches/ is the view's own refusal
    tables = [dict(t, allow_delete=True) if t["kind"] == "alvaria" else t for t in tables]
    return toml_config(tables) + f'\n[[searches]]\nname = "{HOLD}"\nquery = "{query}"\n'


def files_under(top: Path) -> dict[str, os.stat_result]:
    out = subprocess.run(["find", str(top), "-type", "f"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return {os.path.relpath(p, top): os.stat(p) for p in out.stdout.splitlines()}


def test_a_saved_search_is_a_folder_of_the_matches(services, recfs_mount, tmp_path):  # noqa: F811
    emulators, tables, expected = services
    mnt = recfs_mount(saved_config(tables))
    hold = mnt / "searches" / HOLD
    for emu in emulators.values():
        emu.reset_stats()

    assert sorted(os.listdir(mnt)) == ["8x8", "alvaria", "kazoo", "oce", "searches"]
    assert os.listdir(mnt / "searches") == [HOLD]
    # find + stat (ls -l): exactly the caller's recordings, in all four services, each
    # at its home path below its source
    found = files_under(hold)
    assert set(found) == expected
    assert sorted(os.listdir(hold)) == ["8x8", "alvaria", "kazoo", "oce"]
    # the services that filter did so (as recfs search: Kazoo a listing per window and
    # side, 8x8 a page per region); OCE and Alvaria were walked (the config confirms it)
    assert emulators["kazoo"].count("list") == 3 * 2
    assert emulators["8x8"].count("objects") == 2
    assert emulators["oce"].count("data") == 0

    # a second listing within the TTL asks nothing
    for emu in emulators.values():
        emu.reset_stats()
    assert set(files_under(hold)) == expected
    assert requests(emulators) == {"kazoo": 0, "8x8": 0, "oce": 0, "alvaria": 0}

    # the sizes, times and metadata are the home paths'
    for rel, st in found.items():
        home = os.stat(mnt / rel)
        assert (st.st_size, st.st_mtime_ns) == (home.st_size, home.st_mtime_ns), rel
        assert st.st_size > 0 and st.st_mode & 0o222 == 0
        here = {a: os.getxattr(hold / rel, a) for a in os.listxattr(hold / rel)}
        assert here and here == {a: os.getxattr(mnt / rel, a) for a in os.listxattr(mnt / rel)}

    # one cache entry: a file read at home is read there without a request
    one_each = {rel.split("/")[0]: rel for rel in sorted(expected)}
    for rel in one_each.values():
        (mnt / rel).read_bytes()
    for emu in emulators.values():
        emu.reset_stats()
    for rel in one_each.values():
        assert (hold / rel).read_bytes() == (mnt / rel).read_bytes()
    assert requests(emulators) == {"kazoo": 0, "8x8": 0, "oce": 0, "alvaria": 0}

    # cp -r of the folder does the whole job: byte-identical to the home files
    dest = tmp_path / "evidence"
    cp = subprocess.run(["cp", "-r", str(hold), str(dest)], capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    copied = {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()}
    assert copied == expected
    for rel in expected:
        assert filecmp.cmp(dest / rel, mnt / rel, shallow=False), rel

    # read-only: no delete (it goes through the home path), no write, no rmdir
    alvaria_file = hold / next(r for r in expected if r.startswith("alvaria/"))
    with pytest.raises(OSError) as e:
        os.unlink(alvaria_file)
    assert e.value.errno == errno.EROFS
    assert alvaria_file.exists()
    with pytest.raises(OSError) as e:
        (alvaria_file.parent / "new.wav").write_bytes(b"x")
    assert e.value.errno == errno.EROFS
    rm = subprocess.run(["rm", "-r", str(hold / "kazoo")], capture_output=True, text=True, timeout=60)
    assert rm.returncode != 0 and "Read-only file system" in rm.stderr
    assert set(files_under(hold)) == expected
    assert emulators["alvaria"].count("delete") == 0


def test_refresh_runs_it_again_with_the_same_inode_numbers(services, recfs_mount):  # noqa: F811
    emulators, tables, expected = services
    mnt = recfs_mount(saved_config(tables, f"caller={CALLER} since=2000-01-01"))
    hold = mnt / "searches" / HOLD
    before = {rel: st.st_ino for rel, st in files_under(hold).items()}
    assert before and set(before) < expected        # caller= only: not the callee's calls
    for emu in emulators.values():
        emu.reset_stats()
    out = subprocess.run([sys.executable, "-m", "recfs", "refresh", str(hold)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    after = {rel: st.st_ino for rel, st in files_under(hold).items()}
    assert after == before
    assert emulators["kazoo"].count("list") > 0 and emulators["8x8"].count("objects") > 0


def test_no_searches_folder_without_saved_searches(services, recfs_mount):  # noqa: F811
    _, tables, _ = services
    mnt = recfs_mount(toml_config(tables))
    assert sorted(os.listdir(mnt)) == ["8x8", "alvaria", "kazoo", "oce"]
    assert not (mnt / "searches").exists()


def test_the_fsspec_front_end_shows_it_the_same_way(services, tmp_path):  # noqa: F811
    from recfs.fsspec import RecfsFileSystem
    emulators, tables, expected = services
    config = tmp_path / "recfs.toml"
    config.write_text(f'[cache]\ndir = "{tmp_path / "cache"}"\n\n' + saved_config(tables))
    os.chmod(config, 0o600)
    fs = RecfsFileSystem(config=str(config), skip_instance_cache=True)
    try:
        top = f"searches/{HOLD}"
        found = {os.path.relpath(p, top): info for p, info in fs.find(top, detail=True).items()}
        assert set(found) == expected
        for rel, info in found.items():
            assert info["size"] == fs.info(rel)["size"] > 0
            assert info["metadata"] == fs.info(rel)["metadata"]
        rel = sorted(expected)[0]
        assert fs.cat_file(f"{top}/{rel}") == fs.cat_file(rel)
    finally:
        fs.close()
