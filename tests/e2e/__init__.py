"""End-to-end tests: real mounts, real programs, loopback emulators."""
from __future__ import annotations

import os
from pathlib import Path


def tree_files(root: Path) -> dict[str, Path]:
    """Every file below `root`, by its path relative to it."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = p
    return out
