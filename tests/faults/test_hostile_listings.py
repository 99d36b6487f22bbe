"""Hostile listings and size answers: malformed JSON, missing fields, wrong types,
absurd sizes and times. Each bad entry is skipped, or its folder fails with EIO and
a log line; the daemon keeps serving everything else."""
from __future__ import annotations

import errno
import json
import os
import re

import pytest

from recfs.emulators.alvaria import iso_ms, kb_string
from recfs.emulators.base import Response
from tests.faults import SOURCE, Mount, TamperingAlvaria, config_for, errno_name, read_or_errno

pytestmark = pytest.mark.e2e

GOOD = "good/ok.wav"
MTIME = 1_700_000_000.0


def _file(key: str, **over) -> dict:
    item = {"kind": "objectKey", "key": key, "keyName": key.rsplit("/", 1)[-1],
            "size": kb_string(100), "lastModifiedTime": iso_ms(MTIME), "keyType": "file"}
    item.update(over)
    return item


# folder -> raw objectKeys items; only "items/kept.wav" is well formed
MALFORMED_ITEMS = [5, None, "text", [], {}, {"key": 123}, {"key": None}, {"key": ["items/x"]},
                   {"keyType": "file"}, _file("items/kept.wav")]

# one folder per hostile value, each next to a well-formed sibling, each in a mount of its own
# (a value that kills the daemon must not hide the others)
SIZE_VALUES = {"negative-text": "-5 KB", "negative-int": -5, "huge-text": "1e30 KB",
               "huge-int": 10**30, "huge-float": 1e300, "infinite": float("inf"),
               "nan": float("nan"), "list": [1], "none": None, "bool": True}
TIME_VALUES = {"year1": "0001-01-01T00:00:00.000Z", "year9999": "9999-12-31T23:59:59.999Z",
               "int": 12, "garbage": "yesterday", "none": None}
OTHER_FIELDS = {"keytype-int": {"keyType": 7}, "keyname-evil": {"keyName": "../../x"},
                "keytype-none": {"keyType": None}}
# absurd exact sizes claimed by the storage's Content-Range to the size probe
PROBE_TOTALS = {"negative": "-5", "int64max": str(2**63), "enormous": str(2**70), "text": "lots"}

SOLO: dict[str, dict] = {}          # folder -> {"items": [...]} or {"probe": total}
for _name, _v in SIZE_VALUES.items():
    SOLO[f"size-{_name}/"] = {"items": [_file(f"size-{_name}/hostile.wav", size=_v)]}
for _name, _v in TIME_VALUES.items():
    SOLO[f"time-{_name}/"] = {"items": [_file(f"time-{_name}/hostile.wav", lastModifiedTime=_v)]}
for _name, _v in OTHER_FIELDS.items():
    SOLO[f"field-{_name}/"] = {"items": [_file(f"field-{_name}/hostile.wav", **_v)]}
for _name, _v in PROBE_TOTALS.items():
    SOLO[f"probe-{_name}/"] = {"probe": _v}

CONTENT = {"items/kept.wav": b"kept\n" * 30}
for _folder in SOLO:
    CONTENT[_folder + "hostile.wav"] = f"{_folder}hostile\n".encode() * 20
    CONTENT[_folder + "fine.wav"] = f"{_folder}fine\n".encode() * 20

# folder -> raw body of its listing answer
RAW_CASES = {
    "notjson/": b"<html><body>Bad Gateway</body></html>",
    "wrongshape/": json.dumps({"objectKeys": {"a": 1}}).encode(),
    "array/": b"[1, 2, 3]",
    "deep/": b"[" * 100_000 + b"]" * 100_000,
    "truncated/": b'{"kind": "objectKeys", "objectKeys": [{"key": "truncated/a.wav", "si',
    "pageloop/": json.dumps({"objectKeys": [_file("pageloop/a.wav")], "nextToken": "same"}).encode(),
    "nonutf8/": b'{"objectKeys": [{"key": "nonutf8/\xff\xfe.wav"}]}',
}

# the daemon dies of these (pyfuse3 propagates any exception but FUSEError out of main())
FATAL: dict[str, str] = {}     # hostile values that used to end the daemon: all fixed
WRONG: dict[str, str] = {}


def _lying_total(req, resp: Response) -> Response:
    key = req.match.group("key")
    case = SOLO.get(key.rsplit("/", 1)[0] + "/", {})
    if "probe" in case and key.endswith("hostile.wav") and req.header("range") == "bytes=0-0":
        resp.headers["Content-Range"] = f"bytes 0-0/{case['probe']}"
    return resp


@pytest.fixture(scope="module")
def emu():
    emu = TamperingAlvaria()
    emu.put(GOOD, b"good bytes\n" * 1000, MTIME)
    for key, data in CONTENT.items():
        emu.put(key, data, MTIME)
    emu.crafted["items/"] = MALFORMED_ITEMS
    for folder, case in SOLO.items():
        if "items" in case:
            emu.crafted[folder] = case["items"] + [_file(folder + "fine.wav", size=kb_string(100))]
    for folder, body in RAW_CASES.items():
        emu.put(folder + "placeholder", b"")      # so that the folder is listed at the root
        emu.raw_listing[folder] = body
    emu.tamper, emu.tamper_times = _lying_total, -1
    with emu:
        yield emu


@pytest.fixture(scope="module")
def mount(emu, tmp_path_factory):
    work = tmp_path_factory.mktemp("hostile-listings")
    m = Mount(config_for(emu, work / "cache"), work, "mnt")
    m.start()
    yield m
    m.unmount()


def still_serving(emu, mount) -> None:
    assert mount.proc.poll() is None, f"the daemon died:\n{mount.log_text()[-3000:]}"
    assert (mount.path / SOURCE / GOOD).read_bytes() == emu.objects[GOOD].blob.all_bytes()


def listing_outcome(path):
    try:
        return sorted(os.listdir(path))
    except OSError as exc:
        return exc.errno


def test_malformed_items_are_skipped_and_the_rest_listed(emu, mount):
    folder = mount.path / SOURCE / "items"
    mark = mount.log_mark()
    assert listing_outcome(folder) == ["kept.wav"]
    assert "skipping a malformed item in items/" in mount.log_since(mark)
    assert (folder / "kept.wav").read_bytes() == CONTENT["items/kept.wav"]
    still_serving(emu, mount)


@pytest.mark.parametrize("folder", sorted(RAW_CASES))
def test_a_malformed_listing_fails_its_folder_with_eio_and_a_log_line(emu, mount, folder):
    mark = mount.log_mark()
    got = listing_outcome(mount.path / SOURCE / folder.rstrip("/"))
    assert got == errno.EIO, got
    assert re.search(rf"ERROR recfs\.fs: listing /{SOURCE}/{folder.rstrip('/')}: ", mount.log_since(mark)), \
        mount.log_since(mark)
    still_serving(emu, mount)


def _error_names(m, name: str) -> bool:
    return any(" ERROR " in line and name in line for line in m.log_text().splitlines())


def _solo_params():
    for folder in sorted(SOLO):
        marks = []
        if folder in FATAL:
            marks.append(pytest.mark.xfail(strict=True, reason=FATAL[folder]))
        elif folder in WRONG:
            marks.append(pytest.mark.xfail(strict=True, reason=WRONG[folder]))
        yield pytest.param(folder, marks=marks, id=folder.rstrip("/"))


@pytest.mark.parametrize("folder", list(_solo_params()))
def test_a_hostile_value_is_skipped_or_fails_its_folder_never_the_daemon(emu, tmp_path, folder):
    m = Mount(config_for(emu, tmp_path / "cache"), tmp_path, "solo")
    m.start()
    try:
        path = m.path / SOURCE / folder.rstrip("/")
        got = listing_outcome(path)
        assert m.proc.poll() is None, f"the daemon died:\n{m.log_text()[-2500:]}"
        if got == errno.EIO:
            assert f"ERROR recfs.fs: listing /{SOURCE}/{folder.rstrip('/')}" in m.log_text()
        else:
            assert isinstance(got, list) and "fine.wav" in got, got
            for name in got:
                key = folder + name
                data = read_or_errno(path / name)
                if data == errno.EIO:
                    assert _error_names(m, name), f"{key}: EIO without a log line"
                else:
                    assert data == CONTENT[key], (key, errno_name(data))
                try:
                    size = (path / name).stat().st_size
                except OSError as exc:
                    assert exc.errno == errno.EIO, (name, errno_name(exc.errno))
                    assert _error_names(m, name), f"{key}: stat EIO without a log line"
                    continue
                assert 0 <= size < 2**63
                if data != errno.EIO:
                    assert size == len(CONTENT[key]), (key, size)
        assert (path.parent / "items" / "kept.wav").read_bytes() == CONTENT["items/kept.wav"]
        still_serving(emu, m)
    finally:
        m.unmount()
