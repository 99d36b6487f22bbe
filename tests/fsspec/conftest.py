"""An fsspec filesystem over one loopback emulator, for the tests of this folder."""
from __future__ import annotations

import os
from pathlib import Path

from recfs.fsspec import RecfsFileSystem
from tests.conftest import toml_config

FAST_RETRIES = "\n[tuning]\nretry_attempts = 2\nretry_base_delay = 0.01\n"


def write_config(tables: list[dict], directory: Path, name: str = "recfs.toml") -> Path:
    """A private config file (0600) for `tables`, its cache in `directory`/cache."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(toml_config(tables, cache_dir=directory / "cache") + FAST_RETRIES)
    os.chmod(path, 0o600)
    return path


def filesystem(config: Path) -> RecfsFileSystem:
    """A filesystem of its own (no instance shared with another test)."""
    return RecfsFileSystem(config=str(config), skip_instance_cache=True)
