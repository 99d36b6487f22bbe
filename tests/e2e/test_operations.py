"""Operating recfs: control commands, systemd notification and units, the demo."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recfs.emulators.alvaria import AlvariaEmulator, populate_sample, source_table
from tests.conftest import MountedRecfs, _is_live_mount, toml_config

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def emu():
    emu = AlvariaEmulator()
    populate_sample(emu, seed=5)
    with emu:
        yield emu


def recfs(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recfs", *args], capture_output=True, text=True, **kw)


def test_status_reports_sources_cache_and_requests(emu, recfs_mount):
    mnt = recfs_mount(toml_config([source_table(emu, "alv")]))
    subprocess.run(["cat", str(mnt / "alv/exports/cxp/utterances/utt-0001.json")], check=True,
                   capture_output=True)
    done = recfs("status", str(mnt))
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["sources"] == [{"name": "alv", "kind": "alvaria"}]
    assert status["http"]["requests"] > 0 and status["reads"]["fetches"] >= 1
    assert status["cache"]["bytes"] > 0
    # fetched a moment ago: recorded in the index only once it is sync_after (30 s) old
    assert status["cache"]["unsynced_files"] >= 1 and status["cache"]["sync_after_s"] == 30


def test_control_attributes_do_not_appear_as_files(emu, recfs_mount, tmp_path):
    mnt = recfs_mount(toml_config([source_table(emu, "alv")]))
    subprocess.run(["rsync", "-a", f"{mnt}/", str(tmp_path / "copy")], check=True)
    copied = sorted(str(p.relative_to(tmp_path / "copy" / "alv"))
                    for p in (tmp_path / "copy").rglob("*") if p.is_file())
    assert copied == sorted(emu.objects)


def test_refresh_drops_listing_snapshots(emu, recfs_mount):
    mnt = recfs_mount(toml_config([dict(source_table(emu, "alv"), listing_ttl=3600)]))
    folder = mnt / "alv/imports/outreach/list-management"
    before = sorted(os.listdir(folder))
    emu.put("imports/outreach/list-management/new-list.csv", b"id\n")
    assert sorted(os.listdir(folder)) == before          # the snapshot is still fresh
    done = recfs("refresh", str(mnt / "alv/imports"))
    assert done.returncode == 0, done.stderr
    assert "new-list.csv" in os.listdir(folder)


def test_prefetch_warms_the_cache_then_reads_fetch_nothing(emu, recfs_mount):
    mnt = recfs_mount(toml_config([source_table(emu, "alv")]))
    done = recfs("prefetch", str(mnt / "alv/exports/cxp"))
    assert done.returncode == 0, done.stderr
    assert "prefetched" in done.stdout
    emu.reset_stats()
    for key, obj in emu.objects.items():
        if key.startswith("exports/cxp/"):
            assert (mnt / "alv" / key).read_bytes() == obj.blob.all_bytes()
    assert emu.count("s3") == 0


def test_prefetch_outside_a_mount_is_a_clear_error(tmp_path):
    done = recfs("prefetch", str(tmp_path))
    assert done.returncode != 0 and "not inside a recfs mount" in done.stderr


def test_file_metadata_with_getfattr(emu, recfs_mount):
    if not shutil.which("getfattr"):
        pytest.skip("getfattr (Debian attr) not installed")
    mnt = recfs_mount(toml_config([source_table(emu, "alv")]))
    out = subprocess.run(["getfattr", "-d", str(mnt / "alv/exports/cxp/utterances/utt-0001.json")],
                         capture_output=True, text=True, check=True).stdout
    assert 'user.alvaria.key="exports/cxp/utterances/utt-0001.json"' in out


def test_sd_notify_ready_after_the_mount_is_live_and_stopping(emu, tmp_path):
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(20)
    m = MountedRecfs(toml_config([source_table(emu, "alv")], cache_dir=tmp_path / "c"), tmp_path, "mnt",
                     env={"NOTIFY_SOCKET": str(sock_path)})
    m._log_file = open(m.log, "ab")
    m.proc = subprocess.Popen([sys.executable, "-m", "recfs", "mount", str(m.config), str(m.path)],
                              stdout=m._log_file, stderr=subprocess.STDOUT, env=m.env)
    try:
        message = sock.recv(4096).decode()
        assert "READY=1" in message
        assert _is_live_mount(m.path)          # READY only once the mount answers
        m.proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in sock.recv(4096).decode()
        assert m.proc.wait(timeout=20) == 0
    finally:
        m.unmount()
        sock.close()


def test_sigusr1_dumps_tasks_to_the_log(emu, recfs_mount):
    mnt = recfs_mount(toml_config([source_table(emu, "alv")]))
    m = recfs_mount.mounts[-1]
    os.listdir(mnt / "alv")
    m.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while "SIGUSR1:" not in m.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert re.search(r"SIGUSR1: \d+ tasks", m.log_text())
    assert m.proc.poll() is None                # and it keeps serving
    assert os.listdir(mnt / "alv")


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
@pytest.mark.parametrize("unit", ["recfs@.service", "recfs-user@.service"])
def test_systemd_units_verify(unit, tmp_path):
    text = (REPO / "systemd" / unit).read_text()
    recfs_bin = shutil.which("recfs") or str(Path(sys.executable).parent / "recfs")
    text = text.replace("/usr/local/bin/recfs", recfs_bin).replace("%h/.local/bin/recfs", recfs_bin)
    target = tmp_path / unit.replace("@", "@demo")
    target.write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", str(target)], capture_output=True, text=True)
    problems = [l for l in (done.stdout + done.stderr).splitlines()
                if l.strip() and "ConditionPathExists" not in l]
    assert done.returncode == 0 and not problems, problems
    assert "Type=notify" in text
    if unit == "recfs@.service":
        for hardening in ("DeviceAllow=/dev/fuse", "ProtectSystem=strict", "NoNewPrivileges=yes",
                          "PrivateTmp=yes"):
            assert hardening in text


def test_demo_mounts_every_emulated_service_and_ctrl_c_stops_it(tmp_path):
    mnt = tmp_path / "demo"
    log = open(tmp_path / "demo.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "recfs", "demo", str(mnt), "--cache-dir",
                             str(tmp_path / "cache")], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not (mnt.exists() and _is_live_mount(mnt)) and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "demo.log").read_text()
            time.sleep(0.1)
        names = sorted(os.listdir(mnt))
        assert names == ["8x8", "alvaria", "kazoo", "oce"], names
        for provider in names:
            # every provider has playable recordings and their metadata as user.* xattrs
            wav = next(p for p in (mnt / provider).rglob("*.wav") if p.stat().st_size > 1000)
            assert wav.read_bytes()[:4] == b"RIFF", wav
            if shutil.which("getfattr"):
                attrs = subprocess.run(["getfattr", "-d", str(wav)], capture_output=True, text=True)
                assert "user." in attrs.stdout, (provider, attrs.stdout, attrs.stderr)
            if shutil.which("ffprobe"):
                probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration",
                                        "-of", "csv=p=0", str(wav)], capture_output=True, text=True)
                assert probe.returncode == 0 and float(probe.stdout) > 1.0, (provider, probe.stderr)
            if shutil.which("sox"):
                stat = subprocess.run(["sox", str(wav), "-n", "stat"], capture_output=True, text=True)
                assert stat.returncode == 0 and "Length (seconds)" in stat.stderr
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert not _is_live_mount(mnt)
    finally:
        if proc.poll() is None:
            proc.kill()
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        log.close()


def test_mount_helper_for_fstab_returns_once_live_and_umount_stops_it(emu, tmp_path):
    cfg = tmp_path / "fstab.toml"
    cfg.write_text(toml_config([source_table(emu, "alv")], cache_dir=tmp_path / "cache"))
    os.chmod(cfg, 0o600)
    mnt = tmp_path / "fstab-mnt"
    mnt.mkdir()
    helper = Path(sys.executable).parent / "mount.recfs"
    done = subprocess.run([str(helper), str(cfg), str(mnt), "-o",
                           f"defaults,_netdev,nofail,log={tmp_path / 'daemon.log'}"],
                          capture_output=True, text=True, timeout=90)
    try:
        assert done.returncode == 0, done.stderr
        assert _is_live_mount(mnt)                        # live when the helper returns
        assert "alv" in os.listdir(mnt)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
    deadline = time.monotonic() + 20
    while "unmounted" not in (tmp_path / "daemon.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "unmounted" in (tmp_path / "daemon.log").read_text()


def test_mount_helper_reports_a_bad_config(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[[sources]]\nname = "x"\nkind = "alvaria"\n')
    (tmp_path / "m").mkdir()
    helper = Path(sys.executable).parent / "mount.recfs"
    done = subprocess.run([str(helper), str(cfg), str(tmp_path / "m"), "-o", f"log={tmp_path / 'l.log'}"],
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 1
    assert "sources[0].api_url: missing required key" in done.stderr


def test_ls_l_asks_no_extended_attribute_per_file(emu, recfs_mount):
    for i in range(300):
        emu.put(f"exports/many/f{i:03d}.wav", b"x" * (i + 1))
    mnt = recfs_mount(toml_config([source_table(emu, "alv")]))
    folder = mnt / "alv/exports/many"
    subprocess.run(["ls", "-l", str(folder)], capture_output=True, check=True)

    def requests():
        return json.loads(recfs("status", str(mnt)).stdout)["fuse_requests"]
    before = requests()
    subprocess.run(["ls", "-l", str(folder)], capture_output=True, check=True)
    after = requests()
    # two status reads are getxattr calls themselves; ls -l adds a handful, not 2 per file
    assert after.get("getxattr", 0) - before.get("getxattr", 0) <= 10
    assert after.get("lookup", 0) - before.get("lookup", 0) <= 2


@pytest.mark.parametrize("fast", [True, False])
def test_requests_that_arrive_back_to_back_are_taken_without_sleeping(emu, recfs_mount, tmp_path, fast):
    for i in range(200):
        emu.put(f"exports/many/f{i:03d}.wav", bytes([i]) * (i + 1))
    mnt = recfs_mount(toml_config([source_table(emu, "alv")]) + f"\n[tuning]\nfuse_fast_wait = {str(fast).lower()}\n")
    folder = mnt / "alv/exports/many"
    subprocess.run(["ls", "-l", str(folder)], capture_output=True, check=True)
    subprocess.run(["cp", "-r", str(folder), str(tmp_path / "out")], check=True)
    for _ in range(3):
        subprocess.run(["find", str(folder), "-type", "f", "-size", "+1k"], capture_output=True, check=True)
    for i in range(200):
        assert (tmp_path / "out" / f"f{i:03d}.wav").read_bytes() == bytes([i]) * (i + 1)
    waits = json.loads(recfs("status", str(mnt)).stdout)["fuse_waits"]
    if fast:
        # find stats 200 files one after another: most of its requests are already
        # waiting when the one before is answered
        assert waits["immediate"] > 0 and waits["slept"] > 0
    else:
        assert waits is None


def test_a_folder_copied_file_after_file_is_fetched_ahead_once_per_file(emu, recfs_mount, tmp_path):
    from recfs.emulators.base import PatternBlob
    for i in range(40):
        emu.put(f"exports/zcopy/f{i:03d}.wav", PatternBlob(i, 30_000 + 7_919 * i))
    mnt = recfs_mount(toml_config([source_table(emu, "alv")]))
    folder = mnt / "alv/exports/zcopy"      # the last folder: nothing after it to look ahead into
    os.listdir(folder)
    [p.stat() for p in folder.iterdir()]            # sizes resolved (one probe per file)
    emu.reset_stats()
    subprocess.run(["cp", "-r", str(folder), str(tmp_path / "out")], check=True)
    for i in range(40):
        key = f"exports/zcopy/f{i:03d}.wav"
        assert (tmp_path / "out" / f"f{i:03d}.wav").read_bytes() == emu.objects[key].blob.all_bytes()
    status = json.loads(recfs("status", str(mnt)).stdout)
    assert status["reads"]["prefetched_files"] >= 30     # fetched ahead of cp
    assert emu.count("s3") == 40                          # still one GET per file, no duplicates
    assert emu.bytes_sent == sum(30_000 + 7_919 * i for i in range(40))
