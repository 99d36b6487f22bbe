"""Security: secrets stay out of argv, the process title, logs and messages; a
world-readable config with literal secrets is warned about; the mount is private by
default; the cache is private; TLS is verified; emulators listen on loopback only."""
from __future__ import annotations

import importlib
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from recfs.config import COMMON_SOURCE_KEYS, KINDS, TUNING_KEYS, source_keys
from recfs.emulators.alvaria import AlvariaEmulator, source_table
from recfs.emulators.base import Fault, PatternBlob
from tests.faults import SOURCE, Mount, config_for, read_or_errno

pytestmark = pytest.mark.e2e

NOBODY = 65534
CLIENT_ID = "cid-7c1f0e5b2a"
CLIENT_SECRET = "csecret-41d9b7aa90f3"
API_KEY = "apikey-e38a1c55d0b2"


class RecordingAlvaria(AlvariaEmulator):
    """Remembers every bearer token and every signed-URL credential it handed out."""

    def __init__(self, **kw):
        super().__init__(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, api_key=API_KEY, **kw)
        self.issued: list[str] = []

    def _token(self, req):
        resp = super()._token(req)
        self.issued.extend(t for t in self.tokens if t not in self.issued)
        return resp

    def signed_url(self, key: str) -> str:
        url = super().signed_url(key)
        q = dict(p.split("=", 1) for p in url.split("?", 1)[1].split("&"))
        self.issued += [q["X-Amz-Signature"], q["X-Amz-Security-Token"]]
        return url


@pytest.fixture
def emu():
    emu = RecordingAlvaria(token_ttl=3600)
    emu.put("exports/a/one.wav", PatternBlob(1, 300_000))
    emu.put("exports/a/two.wav", PatternBlob(2, 5 * 1024 * 1024))
    emu.put("exports/b/three.wav", b"three\n" * 100)
    emu.put("imports/lists/list.csv", b"id\n1\n")
    with emu:
        yield emu


def secret_config(emu, tmp_path) -> tuple[str, dict]:
    """A config taking each secret another way: systemd credential, env, file."""
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "alv-client-id").write_text(CLIENT_ID + "\n")
    secret_file = tmp_path / "api-key"
    secret_file.write_text(API_KEY)
    os.chmod(secret_file, 0o600)
    table = source_table(emu, SOURCE)
    lines = ["[cache]", f'dir = "{tmp_path / "cache"}"', "", "[[sources]]"]
    for k, v in table.items():
        if k == "client_id":
            lines.append('client_id = { credential = "alv-client-id" }')
        elif k == "client_secret":
            lines.append('client_secret = { env = "RECFS_TEST_ALV_SECRET" }')
        elif k == "api_key":
            lines.append(f'api_key = {{ file = "{secret_file}" }}')
        else:
            lines.append(f'{k} = "{v}"')
    env = {"CREDENTIALS_DIRECTORY": str(creds), "RECFS_TEST_ALV_SECRET": CLIENT_SECRET}
    return "\n".join(lines) + "\n", env


def test_secrets_never_reach_argv_the_process_title_or_the_debug_log(emu, tmp_path):
    text, env = secret_config(emu, tmp_path)
    m = Mount(text, tmp_path, "mnt", env=env)
    m.start()
    try:
        root = m.path / SOURCE
        subprocess.run(["ls", "-lR", str(root)], check=True, capture_output=True)
        assert (root / "exports/a/one.wav").read_bytes() == emu.objects["exports/a/one.wav"].blob.all_bytes()
        with open(root / "exports/a/two.wav", "rb") as f:
            f.read(1000)
            emu.tokens.clear()                     # tokens refused, URLs expired: both renewed
            emu.advance(2 * 3600)
            f.seek(4 * 1024 * 1024)
            f.read(1000)
        fired = emu.faults.fired["status"]
        emu.faults.add(Fault("status", route="s3", status=503, times=-1))
        read_or_errno(root / "exports/b/three.wav")      # fails: error lines in the log
        emu.faults.clear()
        assert emu.faults.fired["status"] > fired
        status = os.getxattr(m.path, "user.recfs.status").decode()
        cmdline = Path(f"/proc/{m.pid}/cmdline").read_bytes().decode(errors="replace")
        comm = Path(f"/proc/{m.pid}/comm").read_text()
    finally:
        m.unmount()
    log = m.log_text()
    assert "Bearer" not in log and "X-Amz-Signature" not in log
    secrets = [CLIENT_ID, CLIENT_SECRET, API_KEY] + emu.issued
    assert len(emu.issued) >= 6                    # two tokens, two URLs or more
    for value in secrets:
        for where, text_ in (("argv", cmdline), ("process title", comm), ("log", log),
                             ("status", status)):
            assert value not in text_, f"a secret is in the {where}"


def test_a_service_echoing_a_secret_in_an_error_does_not_put_it_in_the_log(emu, tmp_path):
    m = Mount(config_for(emu, tmp_path / "cache"), tmp_path, "mnt")
    m.start()
    try:
        fired = emu.faults.fired["status"]
        emu.faults.add(Fault("status", route="objectKeys", status=400, times=-1,
                             body=f'{{"message": "invalid x-api-key {API_KEY}"}}'.encode()))
        with pytest.raises(OSError):
            os.listdir(m.path / SOURCE / "exports")
        assert emu.faults.fired["status"] > fired
    finally:
        emu.faults.clear()
        m.unmount()
    assert "invalid x-api-key" in m.log_text()
    assert API_KEY not in m.log_text()


@pytest.mark.parametrize("mode, literal, warned", [(0o644, True, True), (0o640, True, True),
                                                   (0o600, True, False), (0o644, False, False)],
                         ids=["world-readable", "group-readable", "private", "no-literal-secrets"])
def test_a_readable_config_with_literal_secrets_is_warned_about(emu, tmp_path, mode, literal, warned):
    text, env = (config_for(emu, tmp_path / "cache"), None) if literal else secret_config(emu, tmp_path)
    m = Mount(text, tmp_path, "mnt", env=env)
    os.chmod(m.config, mode)
    m.start()
    m.unmount()
    warning = "holds secrets and can be read by other users"
    assert (warning in m.log_text()) == warned, m.log_text()
    for value in (CLIENT_ID, CLIENT_SECRET, API_KEY):
        assert value not in m.log_text()


def _mount_options(path: Path) -> set[str]:
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if fields[1] == str(path):
            return set(fields[3].split(","))
    raise AssertionError(f"{path} is not mounted")


def _as_nobody(*cmd) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), user=NOBODY, group=NOBODY, extra_groups=[],
                          capture_output=True, text=True, cwd="/")


@pytest.fixture
def open_dir():
    """A directory every user can traverse (pytest's tmp_path is 0700 all the way up),
    so that only the mount itself can keep another user out."""
    path = Path(tempfile.mkdtemp(prefix="recfs-sec-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_mount_is_private_by_default_with_read_only_modes_owned_by_the_user(emu, open_dir):
    m = Mount(config_for(emu, open_dir / "cache"), open_dir, "mnt")
    m.start()
    try:
        assert "allow_other" not in _mount_options(m.path)
        root = m.path / SOURCE
        assert _as_nobody("ls", str(open_dir)).returncode == 0
        for dirpath, dirs, files in os.walk(root / "exports"):
            for d in dirs:
                st = os.stat(Path(dirpath) / d)
                assert stat.S_IMODE(st.st_mode) == 0o555, d
                assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
            for f in files:
                st = os.stat(Path(dirpath) / f)
                assert stat.S_IMODE(st.st_mode) == 0o444, f
                assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
        denied = _as_nobody("ls", str(root / "exports"))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied
        denied = _as_nobody("cat", str(root / "exports/b/three.wav"))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied
    finally:
        m.unmount()


def test_with_allow_other_the_kernel_enforces_the_permission_bits(emu, open_dir):
    m = Mount(config_for(emu, open_dir / "cache"), open_dir, "mnt", args=("--allow-other",))
    m.start()
    try:
        opts = _mount_options(m.path)
        assert {"allow_other", "default_permissions"} <= opts, opts
        root = m.path / SOURCE
        ok = _as_nobody("cat", str(root / "exports/b/three.wav"))
        assert ok.returncode == 0 and ok.stdout == "three\n" * 100, ok
        # imports/ takes uploads from its owner (0755): another user is refused by the kernel
        folder = root / "imports/lists"
        assert stat.S_IMODE(folder.stat().st_mode) & 0o022 == 0
        refused = _as_nobody("sh", "-c", f"echo x > '{folder}/intruder.csv'")
        assert refused.returncode != 0 and "Permission denied" in refused.stderr, refused
        assert "imports/lists/intruder.csv" not in emu.objects
    finally:
        m.unmount()


def test_the_cache_directory_is_private(emu, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o755)
    os.chmod(cache, 0o755)                     # a pre-existing, too open cache directory
    m = Mount(config_for(emu, cache), tmp_path, "mnt")
    m.start()
    try:
        root = m.path / SOURCE
        subprocess.run(["cat", str(root / "exports/a/one.wav"), str(root / "exports/a/two.wav")],
                       check=True, capture_output=True)
    finally:
        m.unmount()
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    count = 0
    for dirpath, dirs, files in os.walk(cache):
        for d in dirs:
            assert stat.S_IMODE(os.stat(Path(dirpath) / d).st_mode) == 0o700, d
        for f in files:
            assert stat.S_IMODE(os.stat(Path(dirpath) / f).st_mode) == 0o600, f
            count += 1
    assert count >= 3                          # the index and the two data files at least


def test_tls_verification_cannot_be_switched_off():
    keys = set(COMMON_SOURCE_KEYS) | set(TUNING_KEYS)
    for kind in KINDS:
        keys |= set(source_keys(kind))
    for key in keys:
        assert not any(word in key.lower() for word in ("verify", "insecure", "tls", "ssl")), key
    assert "ca_bundle" in COMMON_SOURCE_KEYS


@pytest.mark.parametrize("kind", ["alvaria", "8x8", "oce", "kazoo"])
def test_emulators_listen_on_loopback_only(kind):
    from recfs.cli import EMULATORS
    emu = importlib.import_module(EMULATORS[kind]).demo()
    emu.start()
    try:
        listening = []
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local_ip, local_port = fields[1].rsplit(":", 1)
                if int(local_port, 16) == emu.port and fields[3] == "0A":
                    listening.append(local_ip)
        assert listening == ["0100007F"], listening     # 127.0.0.1, nothing else
    finally:
        emu.stop()
