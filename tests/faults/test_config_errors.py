"""A user's mistakes in the config or the credentials: `recfs mount` exits non-zero
with a message that names the key (or says the credentials were refused), never a
traceback, and never prints a secret."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recfs.emulators.alvaria import AlvariaEmulator, source_table
from tests.conftest import _is_live_mount

pytestmark = pytest.mark.e2e

SECRET_VALUES = ("alvaria-demo-secret", "alvaria-demo-api-key", "alvaria-demo-client")


@pytest.fixture(scope="module")
def emu():
    emu = AlvariaEmulator()
    emu.put("a/b.wav", b"x" * 100)
    with emu:
        yield emu


def run_mount(config_text: str | bytes, tmp_path: Path, env: dict | None = None,
              timeout: float = 25.0) -> tuple[int | None, str]:
    """Run `recfs mount`; (exit status, output). A daemon still running after
    `timeout` (it mounted although it should not have) is unmounted: status None."""
    cfg = tmp_path / "recfs.toml"
    cfg.write_bytes(config_text if isinstance(config_text, bytes) else config_text.encode())
    os.chmod(cfg, 0o600)
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    out = tmp_path / "out.log"
    with open(out, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "recfs", "mount", str(cfg), str(mnt)],
                                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(os.environ, **(env or {})))
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if _is_live_mount(mnt):
                break
            time.sleep(0.05)
        status = proc.poll()
        if status is None:
            subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
            proc.wait(timeout=20)
    return status, out.read_text(errors="replace")


def assert_user_error(status, output: str, *needles: str) -> None:
    assert status is not None, f"recfs mounted instead of refusing:\n{output}"
    assert status != 0, output
    assert "Traceback" not in output, output
    for needle in needles:
        assert needle in output, f"{needle!r} not in:\n{output}"
    for secret in SECRET_VALUES:
        assert secret not in output, f"a secret was printed:\n{output}"


def good_table(emu) -> dict:
    return source_table(emu, "alv")


def _toml_value(v) -> str:
    if isinstance(v, dict):          # an inline table: { env = "VAR" }
        return "{ " + ", ".join(f"{k} = {json.dumps(x)}" for k, x in v.items()) + " }"
    return json.dumps(v)


def text_with(emu, tmp_path, **changes) -> str:
    table = good_table(emu)
    for k, v in changes.items():
        if v is None:
            table.pop(k)
        else:
            table[k] = v
    lines = ["[cache]", f"dir = {json.dumps(str(tmp_path / 'cache'))}", "", "[[sources]]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("changes, needle", [
    ({"colour": "red"}, "sources[0].colour: unknown key"),
    ({"page_size": "ten"}, "sources[0].page_size: expected an integer"),
    ({"page_size": 0}, "sources[0].page_size: must be 1..1000"),
    ({"listing_ttl": "soon"}, "sources[0].listing_ttl: expected a number"),
    ({"api_url": 5}, "sources[0].api_url: expected a string"),
    ({"api_url": "ftp://example.com/x"}, "sources[0].api_url"),
    ({"api_url": "https://example.com/no/organization"}, "sources[0].api_url"),
    ({"client_secret": None}, "sources[0].client_secret: missing required key"),
    ({"api_key": None}, "sources[0].api_key: missing required key"),
    ({"kind": None}, "sources[0].kind: missing required key"),
    ({"kind": "dropbox"}, "sources[0].kind: unknown kind"),
    ({"name": "a/b"}, "sources[0].name"),
    ({"client_secret": 12345}, "sources[0].client_secret"),
    ({"client_secret": ""}, "sources[0].client_secret: must not be empty"),
    ({"client_secret": {"env": "RECFS_TEST_UNSET_VARIABLE"}}, "RECFS_TEST_UNSET_VARIABLE is not set"),
    ({"client_secret": {"file": "/nonexistent/secret"}}, "sources[0].client_secret: cannot read"),
    ({"client_secret": {"credential": "alv-secret"}}, "sources[0].client_secret"),
    ({"client_secret": {"vault": "x"}}, "sources[0].client_secret"),
    ({"client_secret": {"env": "A", "file": "B"}}, "sources[0].client_secret"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_a_bad_source_key_is_named(emu, tmp_path, changes, needle):
    status, output = run_mount(text_with(emu, tmp_path, **changes), tmp_path,
                               env={"CREDENTIALS_DIRECTORY": ""})
    assert_user_error(status, output, needle)


@pytest.mark.parametrize("text, needle", [
    ('[cache]\nsize = "1GB"\n', "cache.size: unknown key"),
    ('[cache]\nmax_size = "lots"\n', "cache.max_size"),
    ('[cache]\nmax_size = true\n', "cache.max_size"),
    ('[cache]\ndir = 5\n', "cache.dir: expected a string"),
    ('cache = 5\n', "cache"),
    ('[colour]\nred = 1\n', "colour: unknown key"),
    ('[tuning]\nread_timeout = "fast"\n', "tuning.read_timeout: expected a number"),
    ('[tuning]\nretry_attempts = 0\n', "tuning.retry_attempts"),
    ('[tuning]\nretries = 3\n', "tuning.retries: unknown key"),
    ('sources = 5\n', "sources"),
    ('sources = [5]\n', "sources[0]"),
    ('[cache]\nmax_size = "1GB"\n', "sources"),
    ('this is not toml', "not valid TOML"),
], ids=["unknown-cache-key", "bad-size", "bool-size", "dir-type", "cache-not-table", "unknown-table",
        "tuning-type", "tuning-range", "tuning-unknown", "sources-not-list", "source-not-table",
        "no-sources", "not-toml"])
def test_a_bad_top_level_key_is_named(emu, tmp_path, text, needle):
    status, output = run_mount(text, tmp_path)
    assert_user_error(status, output, needle)


def test_a_config_that_is_not_utf8_is_reported(tmp_path):
    status, output = run_mount(b'[cache]\ndir = "\xff\xfe"\n', tmp_path)
    assert_user_error(status, output, "not valid TOML")


def test_a_missing_config_file_is_reported(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run([sys.executable, "-m", "recfs", "mount", str(tmp_path / "nope.toml"), str(mnt)],
                          capture_output=True, text=True, timeout=30)
    assert_user_error(proc.returncode, proc.stdout + proc.stderr, "cannot read config")


def test_a_missing_mount_point_is_reported(emu, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text_with(emu, tmp_path))
    os.chmod(cfg, 0o600)
    proc = subprocess.run([sys.executable, "-m", "recfs", "mount", str(cfg), str(tmp_path / "nowhere")],
                          capture_output=True, text=True, timeout=30)
    assert_user_error(proc.returncode, proc.stdout + proc.stderr, "nowhere")


def test_a_kind_of_the_wrong_type_is_named(emu, tmp_path):
    status, output = run_mount(text_with(emu, tmp_path, kind=["alvaria"]), tmp_path)
    assert_user_error(status, output, "sources[0].kind")


# ----------------------------------------------------------------- credentials

@pytest.mark.parametrize("key", ["client_secret", "client_id"])
def test_wrong_client_credentials_fail_at_start_with_an_authentication_error(emu, tmp_path, key):
    status, output = run_mount(text_with(emu, tmp_path, **{key: "wrong-" + key}), tmp_path)
    assert_user_error(status, output, "source 'alv'", "refused the client credentials", "HTTP 401")
    assert "wrong-" + key not in output


def test_a_wrong_api_key_fails_at_start_with_an_authentication_error(emu, tmp_path):
    status, output = run_mount(text_with(emu, tmp_path, api_key="wrong-api-key"), tmp_path)
    assert_user_error(status, output, "source 'alv'", "api_key")
    assert "wrong-api-key" not in output


def test_an_unreachable_token_service_fails_at_start(emu, tmp_path):
    import socket
    with socket.socket() as s:                 # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    status, output = run_mount(text_with(emu, tmp_path, token_url=f"http://127.0.0.1:{port}/token"),
                               tmp_path)
    assert_user_error(status, output, "source 'alv'", "ConnectError")
