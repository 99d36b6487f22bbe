"""Shared fixtures: real mounts of recfs in a subprocess, against loopback emulators."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

FUSE_OK = os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


def pytest_collection_modifyitems(config, items):
    if FUSE_OK:
        return
    skip = pytest.mark.skip(reason="needs /dev/fuse and fusermount3")
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)


def toml_config(tables: list[dict], cache_dir: Path | None = None, cache: dict | None = None) -> str:
    """A config file's text from [[sources]] tables (values as JSON, which TOML accepts)."""
    lines = []
    cache = dict(cache or {})
    if cache_dir is not None:
        cache.setdefault("dir", str(cache_dir))
    if cache:
        lines.append("[cache]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in cache.items()]
        lines.append("")
    for table in tables:
        lines.append("[[sources]]")
        for k, v in table.items():
            lines.append(f"{k} = {json.dumps(v)}")
        lines.append("")
    return "\n".join(lines)


class MountedRecfs:
    """One `recfs mount` subprocess."""

    def __init__(self, config_text: str, workdir: Path, name: str, env: dict | None = None,
                 args: tuple[str, ...] = ()):
        self.args = args            # extra `recfs mount` options (e.g. --allow-other)
        self.dir = workdir
        self.path = workdir / name
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError:   # a stale mount left there on purpose: recfs must clear it
            pass
        self.config = workdir / f"{name}.toml"
        self.config.write_text(config_text)
        os.chmod(self.config, 0o600)
        self.log = workdir / f"{name}.log"
        self.env = dict(os.environ, **(env or {}))
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> Path:
        self._log_file = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "recfs", "--log-level", "debug", "mount", *self.args,
             str(self.config), str(self.path)],
            stdout=self._log_file, stderr=subprocess.STDOUT, env=self.env, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"recfs exited with {self.proc.returncode}:\n{self.log_text()}")
            if _is_live_mount(self.path):
                return self.path
            time.sleep(0.05)
        raise RuntimeError(f"recfs did not mount within {timeout}s:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def unmount(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
        self._log_file.close()
        return self.proc.returncode

    def kill(self, sig=signal.SIGKILL) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(timeout=20)


def _is_live_mount(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        if not any(line.split()[4] == str(path) for line in f):
            return False
    try:
        os.statvfs(path)      # a stale mount answers ENOTCONN (stat may be cached)
    except OSError:
        return False
    return True


@pytest.fixture
def recfs_mount(tmp_path):
    """recfs_mount(config_toml_text, name="mnt", env=None) -> mount point Path.

    The MountedRecfs objects are in recfs_mount.mounts (the last one is
    recfs_mount.mounts[-1]); every mount is unmounted at teardown.
    """
    mounts: list[MountedRecfs] = []

    def mount(config_text: str, name: str = "mnt", env: dict | None = None) -> Path:
        if "[cache]" not in config_text:
            config_text = f'[cache]\ndir = "{tmp_path / (name + "-cache")}"\n\n' + config_text
        m = MountedRecfs(config_text, tmp_path, name, env)
        mounts.append(m)
        return m.start()

    mount.mounts = mounts
    yield mount
    for m in mounts:
        m.unmount()

