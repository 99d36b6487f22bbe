"""Alvaria through a real mount: real programs (ls, find, cat, cp, rsync, cmp) on it."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import threading
import time

import pytest

from recfs.emulators.alvaria import AlvariaEmulator, populate_sample, source_table
from recfs.emulators.base import PatternBlob
from tests.conftest import toml_config
from tests.e2e import tree_files

pytestmark = pytest.mark.e2e

BIG = "exports/cxp/recordings/big/long-call.wav"


@pytest.fixture
def emu():
    emu = AlvariaEmulator()
    populate_sample(emu, seed=3)
    emu.put(BIG, PatternBlob(99, 9 * 1024 * 1024 + 123))
    emu.put("exports/cxp/recordings/odd names/a b+c é.wav", b"odd name content\n")
    with emu:
        yield emu


@pytest.fixture(params=["v3", "v2"])
def mnt(request, emu, recfs_mount):
    table = source_table(emu, "alvaria", version=request.param)
    table["page_size"] = 3            # many pages even for small folders
    return recfs_mount(toml_config([table])) / "alvaria"


def test_tree_matches_the_emulator(emu, mnt):
    assert sorted(tree_files(mnt)) == sorted(emu.objects)
    found = subprocess.run(["find", str(mnt), "-type", "f"], capture_output=True, text=True, check=True)
    assert len(found.stdout.split("\n")) - 1 == len(emu.objects)


def test_every_file_equals_the_source_with_exact_size_and_stable_mtime(emu, mnt, tmp_path):
    for key, obj in emu.objects.items():
        path = mnt / key
        st = path.stat()
        assert st.st_size == obj.blob.size, key          # exact before open
        assert st.st_mtime == pytest.approx(obj.mtime, abs=0.001)
        expected = tmp_path / "expected"
        expected.write_bytes(obj.blob.all_bytes())
        subprocess.run(["cmp", str(expected), str(path)], check=True)
        assert path.stat().st_size == obj.blob.size       # and after
        assert path.stat().st_mtime == st.st_mtime


def test_ls_lR_shows_exact_sizes(emu, mnt):
    out = subprocess.run(["ls", "-lR", str(mnt)], capture_output=True, text=True, check=True).stdout
    assert f" {emu.objects[BIG].blob.size} " in out


def test_cp_r_and_rsync_twice(emu, mnt, tmp_path):
    subprocess.run(["cp", "-r", str(mnt / "exports"), str(tmp_path / "cp")], check=True)
    for key, obj in emu.objects.items():
        if key.startswith("exports/"):
            assert (tmp_path / "cp" / key[len("exports/"):]).read_bytes() == obj.blob.all_bytes()
    dest = tmp_path / "rsync"
    subprocess.run(["rsync", "-a", f"{mnt}/", str(dest)], check=True)
    before = emu.count("s3")
    out = subprocess.run(["rsync", "-a", "--stats", f"{mnt}/", str(dest)], check=True,
                         capture_output=True, text=True).stdout
    assert "Number of regular files transferred: 0" in out
    assert emu.count("s3") == before                  # no content fetched the second time
    for key, obj in emu.objects.items():
        assert (dest / key).read_bytes() == obj.blob.all_bytes()


def test_four_parallel_readers(emu, mnt):
    keys = [BIG, BIG] + [k for k in emu.objects if k.endswith(".wav")][:6]
    errors = []

    def read(key):
        try:
            data = (mnt / key).read_bytes()
            if data != emu.objects[key].blob.all_bytes():
                errors.append(f"{key}: wrong bytes")
        except OSError as exc:
            errors.append(f"{key}: {exc}")

    threads = [threading.Thread(target=read, args=(k,)) for k in keys[:4]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors


def test_signed_url_and_token_expiring_mid_read_are_recovered(emu, mnt):
    expected = emu.objects[BIG].blob.all_bytes()
    with open(mnt / BIG, "rb", buffering=0) as f:
        first = f.read(256 * 1024)
        issued = emu.count("signedUrl")
        emu.advance(2 * 3600)                  # every URL and token issued so far expires
        f.seek(6 * 1024 * 1024)                # a region not fetched yet
        rest = f.read(1024 * 1024)
    assert first == expected[:256 * 1024]
    assert rest == expected[6 * 1024 * 1024: 7 * 1024 * 1024]
    assert emu.count("signedUrl") > issued     # the lease was renewed
    assert emu.count("token") >= 2             # and the bearer token refreshed on 401


def test_reread_comes_from_the_cache(emu, mnt):
    data = (mnt / BIG).read_bytes()
    before = emu.bytes_sent
    subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], check=False)
    assert (mnt / BIG).read_bytes() == data
    assert emu.bytes_sent == before


def test_writes_outside_imports_are_refused_with_erofs(mnt):
    with pytest.raises(OSError) as e:
        (mnt / "exports" / "new.txt").write_bytes(b"x")
    assert e.value.errno == errno.EROFS
    with pytest.raises(OSError) as e:
        os.mkdir(mnt / "exports" / "newdir")
    assert e.value.errno == errno.EROFS
    with pytest.raises(OSError) as e:
        os.unlink(next(iter(tree_files(mnt).values())))
    assert e.value.errno == errno.EROFS


def test_metadata_as_xattrs(emu, mnt):
    value = os.getxattr(mnt / BIG, "user.alvaria.key")
    assert value.decode() == BIG


@pytest.mark.parametrize("urls_in_listing", [True, False])
def test_ls_l_of_a_thousand_files_costs_listing_plus_one_batch(emu, recfs_mount, urls_in_listing):
    emu.urls_in_listing = urls_in_listing
    for i in range(1000):
        emu.put(f"exports/cxp/recordings/busy/r{i:04d}.wav", f"recording {i}\n".encode() * (i % 7 + 1))
    mnt = recfs_mount(toml_config([source_table(emu, "alv")])) / "alv"
    folder = mnt / "exports/cxp/recordings/busy"
    os.listdir(mnt / "exports/cxp/recordings")
    emu.reset_stats()
    out = subprocess.run(["ls", "-l", str(folder)], capture_output=True, text=True, check=True).stdout
    assert len(out.strip().split("\n")) == 1001
    assert emu.count("objectKeys") == 1                 # one page of 1000
    # size probes: one 1-byte GET per file, concurrently, with the signed URL that came
    # with the listing, or else one asked for per file
    assert emu.count("signedUrl") == (0 if urls_in_listing else 1000)
    assert emu.count("s3") == 1000
    sizes = {line.split()[-1]: int(line.split()[4]) for line in out.strip().split("\n")[1:]}
    assert sizes["r0006.wav"] == len(b"recording 6\n" * 7)
    emu.reset_stats()
    subprocess.run(["ls", "-l", str(folder)], capture_output=True, text=True, check=True)
    assert sum(emu.counts.values()) == 0                # the second ls -l asks nothing


def test_during_a_copy_the_size_probe_brings_the_whole_file(emu, recfs_mount, tmp_path):
    """Once the access policy sees files opened one after another, learning a size
    fetches the (small) file whole: one request per file, but for the first file and
    the first chunk learnt ahead (AHEAD_FIRST), whose sizes were asked for before the
    copy showed (a probe and a GET each); all of it served from the cache afterwards."""
    from recfs.tree import AHEAD_FIRST
    for i in range(40):
        emu.put(f"exports/copy/a/r{i:02d}.wav", os.urandom(10_000 + 1000 * i))
    mnt = recfs_mount(toml_config([source_table(emu, "alv")])) / "alv"
    emu.reset_stats()
    subprocess.run(["cp", "-r", str(mnt / "exports/copy/a"), str(tmp_path / "a")], check=True)
    assert emu.count("s3") == 40 + 1 + AHEAD_FIRST and emu.count("signedUrl") == 0
    assert emu.bytes_sent < sum(10_000 + 1000 * i for i in range(40)) + 100_000   # each byte once
    for i in range(40):
        key = f"exports/copy/a/r{i:02d}.wav"
        assert (tmp_path / "a" / f"r{i:02d}.wav").read_bytes() == emu.objects[key].blob.all_bytes()
    emu.reset_stats()
    subprocess.run(["cp", "-r", str(mnt / "exports/copy/a"), str(tmp_path / "a2")], check=True)
    assert sum(emu.counts.values()) == 0


def test_a_whole_file_probe_that_fails_during_a_copy_is_made_again_on_its_own(emu, recfs_mount, tmp_path):
    """During a copy the whole-file GETs of a chunk go out together
    (`Http.get_heads`); one that fails (reset mid-body, HTTP 500) is made again the
    usual way, with its retries, and the copy gets every byte right."""
    from recfs.tree import AHEAD_FIRST
    for i in range(40):
        emu.put(f"exports/retry/a/r{i:02d}.wav", os.urandom(10_000 + 1000 * i))
    mnt = recfs_mount(toml_config([source_table(emu, "alv")])) / "alv"
    emu.reset_stats()
    # the first file and the first chunk are probed before the copy shows (see above):
    # the faults hit the whole-file GETs of the chunks after them
    emu.faults.add(kind="reset", route="s3", after_bytes=3000, times=2, skip=2 * (1 + AHEAD_FIRST))
    emu.faults.add(kind="status", route="s3", status=500, times=2, skip=2 * (1 + AHEAD_FIRST))
    subprocess.run(["cp", "-r", str(mnt / "exports/retry/a"), str(tmp_path / "a")], check=True)
    assert emu.faults.fired["reset"] == 2 and emu.faults.fired["status"] == 2
    assert emu.count("s3") == 40 + 1 + AHEAD_FIRST + 4      # the four failed ones once more each
    status = json.loads(os.getxattr(mnt.parent, "user.recfs.status"))
    assert status["http"]["batched_requests"] >= 40 - 1 - AHEAD_FIRST
    for i in range(40):
        key = f"exports/retry/a/r{i:02d}.wav"
        assert (tmp_path / "a" / f"r{i:02d}.wav").read_bytes() == emu.objects[key].blob.all_bytes()


def test_a_copy_brings_the_next_folders_first_files_once_it_came_from_the_one_before(
        emu, recfs_mount, tmp_path):
    """T5: a copy of a alone fetches nothing outside a; copying b after it, recfs lists
    c and fetches its first SIZE_CHUNK files (small: whole) before anyone asks; a copy
    of c then fetches only the rest."""
    from recfs.tree import SIZE_CHUNK
    folders = ("a", "b", "c")
    for folder in folders:
        for i in range(40):
            emu.put(f"exports/copy/{folder}/r{i:02d}.wav", os.urandom(10_000 + 1000 * i))
    mnt = recfs_mount(toml_config([source_table(emu, "alv")])) / "alv"

    def copy(folder: str) -> dict[str, int]:
        """cp -r of `folder`: per folder, the objects whose content (or size) it fetched,
        look-ahead included."""
        emu.reset_stats()
        subprocess.run(["cp", "-r", str(mnt / "exports/copy" / folder), str(tmp_path / folder)],
                       check=True)
        seen, deadline = -1, time.monotonic() + 10
        while seen != emu.count("s3") and time.monotonic() < deadline:   # a look-ahead is done
            seen = emu.count("s3")
            time.sleep(0.3)
        objects = {path for _, path, _ in emu.log if "/exports/copy/" in path}
        counts = {f: sum(f"/exports/copy/{f}/" in path for path in objects) for f in folders}
        return {f: n for f, n in counts.items() if n}

    assert copy("a") == {"a": 40}                   # nothing outside a
    assert copy("b") == {"b": 40, "c": SIZE_CHUNK}  # b, and the first files of c
    assert copy("c") == {"c": 40 - SIZE_CHUNK}      # the rest of c
    assert emu.count("s3") == 40 - SIZE_CHUNK
    for folder in folders:
        for i in range(40):
            key = f"exports/copy/{folder}/r{i:02d}.wav"
            assert (tmp_path / folder / f"r{i:02d}.wav").read_bytes() == emu.objects[key].blob.all_bytes()


def test_ls_l_probes_one_byte_per_file(emu, recfs_mount):
    for i in range(40):
        emu.put(f"exports/list/r{i:02d}.wav", os.urandom(50_000))
    mnt = recfs_mount(toml_config([source_table(emu, "alv")])) / "alv"
    out = subprocess.run(["ls", "-l", str(mnt / "exports/list")], capture_output=True, text=True,
                         check=True).stdout
    assert emu.count("s3") == 40 and emu.bytes_sent < 40 * 2000
    assert out.count(" 50000 ") == 40
    # the chunks' probes went out together (Source.probe_many), none on its own
    status = json.loads(os.getxattr(mnt.parent, "user.recfs.status"))
    assert status["http"]["batched_requests"] == 40


def test_ls_l_without_urls_in_the_listing_asks_one_url_and_one_probe_per_file(emu, recfs_mount):
    """A listing without signed URLs: each file's job asks for its URL and then probes
    it (Target.pending), two requests per file, all of them batched, none again."""
    for i in range(40):
        emu.put(f"exports/nourl/r{i:02d}.wav", os.urandom(50_000 + i))
    emu.urls_in_listing = False
    mnt = recfs_mount(toml_config([source_table(emu, "alv")])) / "alv"
    emu.reset_stats()
    out = subprocess.run(["ls", "-l", str(mnt / "exports/nourl")], capture_output=True, text=True,
                         check=True).stdout
    assert all(f" {50_000 + i} " in out for i in range(40))
    assert emu.count("signedUrl") == 40 and emu.count("s3") == 40
    status = json.loads(os.getxattr(mnt.parent, "user.recfs.status"))
    assert status["http"]["batched_requests"] == 2 * 40


def test_sizes_are_remembered_across_remounts(emu, recfs_mount, tmp_path):
    cfg = toml_config([source_table(emu, "alv")], cache_dir=tmp_path / "shared-cache")
    mnt = recfs_mount(cfg, name="first") / "alv"
    subprocess.run(["ls", "-lR", str(mnt)], capture_output=True, check=True)
    recfs_mount.mounts[-1].unmount()
    emu.reset_stats()
    mnt = recfs_mount(cfg, name="second") / "alv"
    subprocess.run(["ls", "-lR", str(mnt)], capture_output=True, check=True)
    assert emu.count("s3") == 0 and emu.count("signedUrl") == 0


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "fusermount3"])
def test_unmount_and_exit_status(emu, recfs_mount, how):
    mnt = recfs_mount(toml_config([source_table(emu, "alv")]))
    m = recfs_mount.mounts[-1]
    os.listdir(mnt / "alv")
    if how == "fusermount3":
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
    else:
        m.proc.send_signal(getattr(signal, how))
    assert m.proc.wait(timeout=20) == 0
    assert not os.path.ismount(mnt)


def test_a_stale_mount_is_cleared_at_start(emu, recfs_mount):
    cfg = toml_config([source_table(emu, "alv")])
    mnt = recfs_mount(cfg, name="stale")
    m = recfs_mount.mounts[-1]
    m.kill(signal.SIGKILL)
    with pytest.raises(OSError) as e:
        os.listdir(mnt)
    assert e.value.errno == errno.ENOTCONN
    again = recfs_mount(cfg, name="stale")
    assert again == mnt
    assert sorted(tree_files(mnt / "alv")) == sorted(emu.objects)
    assert "stale mount" in recfs_mount.mounts[-1].log_text()
