"""`recfs search` through a real mount of all four services: one caller's recordings
found exactly, with the services' own filters where their APIs have them (Kazoo
crossbar filters, 8x8 FIQL, OCE's search for the number in names), Alvaria by walking
its listings; a repeat asks nothing; a walk of a whole bucket asks first."""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys

import pytest

from recfs.emulators.base import PatternBlob
from tests.conftest import toml_config

pytestmark = pytest.mark.e2e

CALLER = "+15551230001"
OTHER = "+15559990002"
TODAY = dt.datetime.now(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
DAYS = [TODAY - dt.timedelta(days=d) for d in (9, 5, 2)]


def _blob(n: int) -> PatternBlob:
    return PatternBlob(n, 1000 + n)


@pytest.fixture(scope="module")
def services():
    """The four emulators, each with recordings of CALLER and of others; and the paths
    (below the mount) where CALLER's recordings must be found."""
    from recfs.emulators.alvaria import AlvariaEmulator, source_table as alvaria_table
    from recfs.emulators.eightbyeight import EightByEight, source_table as x8_table
    from recfs.emulators.kazoo import KazooEmulator, source_table as kazoo_table
    from recfs.emulators.oce import OceEmulator, source_table as oce_table
    expected: set[str] = set()
    n = 0

    kazoo = KazooEmulator(bucket_tokens=None).start()
    account = kazoo.add_account("Search")
    kazoo.demo_key = kazoo.add_api_key(account)
    for i, day in enumerate(DAYS):
        for k, (caller, callee) in enumerate([(CALLER, OTHER), (OTHER, CALLER.lstrip("+")),
                                              (OTHER, "+15550100"), ("+15550177", OTHER)]):
            n += 1
            start = day.timestamp() + 3600 * (8 + k)
            kazoo.add_recording(account, start, name=f"k{i}{k}.mp3", blob=_blob(n),
                                caller_id_number=caller, callee_id_number=callee)
            if CALLER.lstrip("+") in (caller.lstrip("+"), callee.lstrip("+")):
                expected.add(f"kazoo/{account}/{day:%Y/%m/%d}/k{i}{k}.mp3")

    x8 = EightByEight(regions=("us-east", "uk")).start()
    for i, day in enumerate(DAYS):
        for k, (region, type_, tags) in enumerate([
                ("us-east", "callrecording", {"callerId": CALLER}),
                ("uk", "callcenterrecording", {"callerId": OTHER, "calleeId": CALLER.lstrip("+")}),
                ("us-east", "callrecording", {"callerId": OTHER}),
                ("uk", "transcription", {"sourceObjectType": "callcenterrecording"})]):
            n += 1
            when = day + dt.timedelta(hours=8 + k)
            x8.add_object(region, type_, f"x{i}{k}.wav", _blob(n), when, tags=tags)
            if "callerId" in tags and CALLER.lstrip("+") in (tags["callerId"].lstrip("+"),
                                                            tags.get("calleeId", "").lstrip("+")):
                expected.add(f"8x8/{region}/{type_}/{when:%Y/%m/%d}/x{i}{k}.wav")

    oce = OceEmulator().start()
    top = oce.add_folder("self", "Recordings", modified=DAYS[0].timestamp())
    for i, day in enumerate(DAYS):
        folder = oce.add_folder(top, f"{day:%Y-%m-%d}", modified=day.timestamp())
        for k, name in enumerate([f"call-{CALLER}-{i}.wav", f"call-{OTHER}-{i}.wav"]):
            n += 1
            oce.add_file(folder, name, _blob(n), modified=day.timestamp() + 3600 * (8 + k))
        expected.add(f"oce/Recordings/{day:%Y-%m-%d}/call-{CALLER}-{i}.wav")

    alvaria = AlvariaEmulator().start()
    for i, day in enumerate(DAYS):
        for k, name in enumerate([f"{CALLER.lstrip('+')}_{i}.wav", f"{OTHER.lstrip('+')}_{i}.wav"]):
            n += 1
            alvaria.put(f"exports/cxp/recordings/{day:%Y-%m-%d}/{name}", _blob(n),
                        mtime=day.timestamp() + 3600 * (8 + k))
        expected.add(f"alvaria/exports/cxp/recordings/{day:%Y-%m-%d}/{CALLER.lstrip('+')}_{i}.wav")

    emulators = {"kazoo": kazoo, "8x8": x8, "oce": oce, "alvaria": alvaria}
    tables = [kazoo_table(kazoo, "kazoo"), x8_table(x8, "8x8"), oce_table(oce, "oce"),
              alvaria_table(alvaria, "alvaria")]
    yield emulators, tables, expected
    for emu in emulators.values():
        emu.stop()


def search(mnt, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recfs", "search", str(mnt), *args],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def requests(emulators) -> dict[str, int]:
    return {name: sum(emu.counts.values()) for name, emu in emulators.items()}


def test_one_callers_recordings_in_all_four_services(services, recfs_mount):
    emulators, tables, expected = services
    mnt = recfs_mount(toml_config(tables))
    for emu in emulators.values():
        emu.reset_stats()

    # Alvaria cannot filter: a walk of its whole bucket is said and not made
    asked = search(mnt, "number=+1 555 123-0001")
    assert asked.returncode == 3, asked.stderr
    assert "--yes" in asked.stderr and "since=" in asked.stderr and "alvaria" in asked.stderr
    assert "oce" not in asked.stderr
    assert asked.stdout == ""
    assert requests(emulators) == {"kazoo": 0, "8x8": 0, "oce": 0, "alvaria": 0}

    found = search(mnt, "number=+1 555 123-0001", "--yes")
    assert found.returncode == 0, found.stderr
    paths = found.stdout.splitlines()
    assert {os.path.relpath(p, mnt) for p in paths} == expected
    assert len(paths) == len(expected)
    # the services that filter did: Kazoo one listing per maximum_range window (31 days
    # and an hour) of the 90 days it shows, for each side (caller, callee): 3 x 2; 8x8 one
    # page per region; no day folder was listed, no recording read
    assert emulators["kazoo"].count("list") == 3 * 2
    assert emulators["8x8"].count("objects") == 2
    assert emulators["8x8"].count("content", "object") == 0 and emulators["kazoo"].count("doc") == 0
    assert emulators["oce"].count("data") == 0 and emulators["alvaria"].count("s3") == 0
    # OCE: one search below the root for the number's digits, and each folder of a hit
    # (Recordings, three days) read once to place it, as no listing had told of them
    assert emulators["oce"].count("search") == 1 and emulators["oce"].count("folder") == 1 + 3
    assert emulators["oce"].count("items") == 0
    # Alvaria walked: the prefixes down to the recordings and each day's
    assert emulators["alvaria"].count("objectKeys") == 4 + 3

    for emu in emulators.values():
        emu.reset_stats()
    again = search(mnt, "number=15551230001", "-0")          # the same number, another form
    assert again.returncode == 0, again.stderr
    assert again.stdout.split("\0")[:-1] == paths
    assert requests(emulators) == {"kazoo": 0, "8x8": 0, "oce": 0, "alvaria": 0}

    # the paths are the recordings' home paths, newest first
    times = [os.stat(p).st_mtime for p in paths]
    assert times == sorted(times, reverse=True)


def test_terms_narrow_and_json_carries_the_metadata(services, recfs_mount):
    emulators, tables, expected = services
    mnt = recfs_mount(toml_config(tables))
    for emu in emulators.values():
        emu.reset_stats()
    since = DAYS[1].strftime("%Y-%m-%d")
    out = search(mnt, f"caller={CALLER}", f"since={since}", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)

    def wanted(path: str) -> bool:
        if not any(f"{d:%Y/%m/%d}" in path or f"{d:%Y-%m-%d}" in path for d in DAYS[1:]):
            return False
        # Kazoo's and 8x8's k0{…} calls are CALLER's as caller, k1 as callee; a number in
        # a name (OCE, Alvaria) has no side, so caller= finds it
        return path.startswith(("oce/", "alvaria/")) or path.endswith(("0.mp3", "0.wav"))
    assert {os.path.relpath(r["path"], mnt) for r in rows} == {p for p in expected if wanted(p)}
    by_option = search(mnt, f"caller={CALLER}", "--since", since, "--json")   # the same, as an option
    assert by_option.returncode == 0 and json.loads(by_option.stdout) == rows
    kazoo_row = next(r for r in rows if r["source"] == "kazoo")
    assert kazoo_row["metadata"]["kazoo.caller_id_number"] == CALLER
    # OCE searched (a number in a name: no side, so caller= finds it) and listed nothing;
    # it read only the folders of the hits in the period (Recordings, two days)
    assert emulators["oce"].count("search") == 1 and emulators["oce"].count("items") == 0
    assert emulators["oce"].count("folder") == 1 + 2
    # a walk with since= looks only into the folders of those days: Alvaria's prefixes
    # down to recordings/, then two of its three days
    assert emulators["alvaria"].count("objectKeys") == 4 + 2


def test_a_bad_term_is_a_clear_error(tmp_path):
    out = search(tmp_path, "caller=+1555", "colour=blue")
    assert out.returncode == 2
    assert "unknown field 'colour'" in out.stderr
