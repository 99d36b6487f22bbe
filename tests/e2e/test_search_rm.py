"""`recfs search … --rm`: the matches are listed, asked for, and deleted through the
mount, so each source's own rules apply (allow_delete, Kazoo's soft delete); one line
per file says what happened."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import toml_config
from tests.e2e.test_search import CALLER, DAYS, services  # noqa: F401 (the four emulators)

pytestmark = pytest.mark.e2e


def search(mnt, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recfs", "search", str(mnt), *args],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_rm_deletes_the_matches_where_deletes_are_on(services, recfs_mount):  # noqa: F811
    emulators, tables, expected = services
    # deletes on everywhere but OCE
    tables = [dict(t, allow_delete=True) if t["name"] != "oce" else t for t in tables]
    mnt = recfs_mount(toml_config(tables))
    terms = [f"number={CALLER}", f"since={DAYS[1]:%Y-%m-%d}"]
    wanted = {os.path.join(mnt, p) for p in expected
              if any(f"{d:%Y/%m/%d}" in p or f"{d:%Y-%m-%d}" in p for d in DAYS[1:])}

    # no terminal to ask and no --yes: said, and nothing deleted
    refused = search(mnt, *terms, "--rm")
    assert refused.returncode == 3, refused.stderr
    assert "--yes" in refused.stderr
    assert {line.strip() for line in refused.stderr.splitlines()} >= wanted
    assert all(os.path.exists(p) for p in wanted)

    done = search(mnt, *terms, "--rm", "--yes")
    assert done.returncode == 1, done.stderr        # OCE's could not be deleted
    lines = done.stdout.splitlines()
    assert len(lines) == len(wanted)
    deleted = {line[len("deleted "):] for line in lines if line.startswith("deleted ")}
    kept = {p for p in wanted if p.startswith(os.path.join(mnt, "oce"))}
    assert deleted == wanted - kept
    assert {line.split(": ")[0] for line in lines if not line.startswith("deleted ")} == kept
    assert all("deletes are off" in line for line in lines if not line.startswith("deleted "))
    assert f"{len(deleted)} of {len(wanted)} deleted" in done.stderr

    # the deleted ones are gone from the services (Kazoo's to its deleted/ folder)
    assert not any(os.path.exists(p) for p in deleted)
    assert all(os.path.exists(p) for p in kept)
    left = search(mnt, *terms)
    assert left.returncode == 0, left.stderr
    assert set(left.stdout.splitlines()) == kept
    # what the search did not match is untouched
    older = search(mnt, f"number={CALLER}", f"until={DAYS[0]:%Y-%m-%d}", "--yes")
    assert older.returncode == 0, older.stderr
    assert {os.path.relpath(p, mnt) for p in older.stdout.splitlines()} == \
        {p for p in expected if f"{DAYS[0]:%Y/%m/%d}" in p or f"{DAYS[0]:%Y-%m-%d}" in p}
