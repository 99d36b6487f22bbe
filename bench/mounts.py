"""The processes the benchmark drives: the server, recfs mounts and rclone mounts."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import MountedRecfs, _is_live_mount, toml_config

REPO = Path(__file__).resolve().parent.parent


class Trash:
    """Caches and copies are moved aside during the benchmark, their files cut to zero
    bytes at once, and deleted only at its end.

    Why not delete them between runs: this VM's root file system is ext4 without a
    journal, which, when it allocates an inode, passes over every inode freed in the
    last 60 s (360 s while its table block is dirty). After thousands of deletions
    every new file costs more for minutes: cp's copies under either mount, and recfs's
    cache files too, so recfs paid twice (figures: docs/BENCHMARKS.md, sixth round).
    Cutting a file to zero bytes frees its blocks but not its inode. At the end the
    trash is deleted and the time written down: a benchmark started within `RECENT`
    seconds of that, or of the end of scripts/test (whose tests delete thousands of
    files), first waits for those inodes to age."""
    dir: Path | None = None
    count = 0
    RECENT = 370.0

    @classmethod
    def discard(cls, path: Path) -> None:
        if not path.exists():
            return
        if cls.dir is None:
            shutil.rmtree(path, ignore_errors=True)
            return
        cls.dir.mkdir(parents=True, exist_ok=True)
        cls.count += 1
        dest = cls.dir / str(cls.count)
        path.rename(dest)
        for f in dest.rglob("*"):
            if f.is_file() and not f.is_symlink():
                os.truncate(f, 0)

    @classmethod
    def _stamp(cls) -> Path:
        assert cls.dir is not None
        return cls.dir.parent / "trash-emptied-at"

    @classmethod
    def empty(cls) -> None:
        """Delete the trash and note when."""
        if cls.dir is not None and cls.dir.exists():
            shutil.rmtree(cls.dir, ignore_errors=True)
            cls._stamp().write_text(f"{time.time()}\n")

    TESTS_STAMP = Path("/var/tmp/recfs-tests-ended-at")   # written by scripts/test

    @classmethod
    def wait_for_aged_inodes(cls, say=print) -> None:
        """Empty what a previous benchmark left, and wait until the inodes it freed, and
        those the test suite freed, are no longer recent."""
        cls.empty()
        for stamp, who in ((cls._stamp(), "a previous run"), (cls.TESTS_STAMP, "the test suite")):
            try:
                freed = float(stamp.read_text())
            except (OSError, ValueError):
                continue
            left = freed + cls.RECENT - time.time()
            if left > 0:
                say(f"waiting {left:.0f} s for the inodes {who} freed to age (see bench/mounts.py Trash)")
                time.sleep(left)


class Server:
    """bench/servers.py in a child process, driven over a pipe."""

    def __init__(self, spec: dict, log: Path):
        self._log = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.servers", json.dumps(spec)],
                                     cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True, bufsize=1)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the bench server did not start; see {log}")
        self.info = json.loads(line)

    def command(self, cmd: str, **kw) -> dict:
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stats(self) -> dict:
        return self.command("stats")

    def reset(self) -> None:
        self.command("reset")

    def wan(self, on: bool) -> None:
        self.command("wan", on=on)

    def listing_urls(self, on: bool) -> None:
        self.command("listing_urls", on=on)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.command("quit")
            except (BrokenPipeError, ValueError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of a live process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def access_token(client: httpx.Client, table: dict) -> str:
    """A bearer token for a served source's table (client credentials), as a plain
    script of its API gets one."""
    return client.post(table["token_url"], data={"grant_type": "client_credentials"},
                       auth=(table["client_id"], table["client_secret"])).json()["access_token"]


def peak_rss(pid: int) -> int:
    """VmHWM of a live process, in bytes (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class RecfsMount(MountedRecfs):
    """`python -m recfs mount` as a user runs it (info logging, not the tests' debug)."""

    def __init__(self, tables: list[dict], workdir: Path, name: str, cache_dir: Path):
        Trash.discard(cache_dir)
        super().__init__(toml_config(tables, cache_dir=cache_dir,
                                     cache={"max_size": "40GiB", "min_free": "2GiB"}),
                         workdir, name, env={"PYTHONPATH": f"{REPO / 'src'}:{REPO}"})
        self.cache_dir = cache_dir
        self.peak = 0
        self.module = ["-m", "recfs"]

    def start(self, timeout: float = 30.0) -> Path:
        self._log_file = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, *self.module, "--log-level", "info", "mount", str(self.config), str(self.path)],
            stdout=self._log_file, stderr=subprocess.STDOUT, env=self.env, stdin=subprocess.DEVNULL,
            cwd=REPO)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"recfs exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            if _is_live_mount(self.path):
                return self.path
            time.sleep(0.05)
        raise RuntimeError(f"recfs did not mount within {timeout}s:\n{self.log_text()[-3000:]}")

    def status(self) -> dict:
        return json.loads(os.getxattr(self.path, "user.recfs.status"))

    def rss_peak(self) -> int:
        self.peak = max(self.peak, peak_rss(self.proc.pid))
        return self.peak

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.rss_peak()
        self.unmount()
        Trash.discard(self.cache_dir)     # up to 1 GB each


class RcloneMount:
    """rclone's http backend over the plain directory: read-only, VFS cache off."""

    def __init__(self, url: str, path: Path, log: Path):
        self.url = url
        self.path = path
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.peak = 0

    def __enter__(self):
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
        self._log = open(self.log, "ab")
        self.proc = subprocess.Popen(
            ["rclone", "mount", ":http:", str(self.path), "--http-url", self.url, "--read-only",
             "--vfs-cache-mode", "off"], stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=dict(os.environ, RCLONE_CONFIG="/dev/null"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rclone exited with {self.proc.returncode}; see {self.log}")
            if _is_live_mount(self.path):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"rclone did not mount; see {self.log}")

    def rss_peak(self) -> int:
        self.peak = max(self.peak, peak_rss(self.proc.pid))
        return self.peak

    def __exit__(self, *exc):
        self.rss_peak()
        subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
        self._log.close()
