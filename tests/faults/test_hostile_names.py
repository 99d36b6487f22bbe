"""Hostile object names: every key a service may send becomes a safe, distinct file
name that is the same on every listing and every mount, and reads its own bytes."""
from __future__ import annotations

import errno
import os
import unicodedata

import pytest

from recfs import names
from recfs.emulators.alvaria import iso_ms, kb_string
from tests.faults import SOURCE, Mount, TamperingAlvaria, config_for, errno_name, read_or_errno

pytestmark = pytest.mark.e2e

P = "hostile/"
LONG = "x" * 300 + ".wav"
LONG_MB = "é" * 200 + ".wav"                    # 400+ bytes of two-byte characters
NFC = unicodedata.normalize("NFC", "café.wav")
NFD = unicodedata.normalize("NFD", "café.wav")

# key -> the name the mount must show (None: computed from names.py's documented rules)
KEYS = {
    P + "a/b.wav": "a\u2215b.wav",              # '/' inside a name
    P + "nul\x00here.wav": "nul\u2400here.wav",
    P + "x\u2215y.wav": None,                   # collides with the next one once cleaned
    P + "x/y.wav": None,
    P + LONG: None,
    P + LONG_MB: None,
    P + "Call.wav": "Call.wav",
    P + "call.wav": "call.wav",
    P + NFC: NFC,
    P + NFD: NFD,
    P + "what?#%2F.wav": "what?#%2F.wav",
    P + "same": None,                           # a file and a folder of one name
    P + "innocent.wav": "innocent.wav",         # its keyName says ../../etc/passwd
}
NEWLINE_KEY = P + "line\nbreak.wav"
FORGED = "2030-01-01 00:00:00,000 ERROR recfs.forged: this line was written by a file name"
FORGE_KEY = P + "gone\n" + FORGED + ".wav"         # listed, but not in the store: its stat fails
DOT_KEYS = {P + ".": "_.", P + "..": "_..", P + "../escape.wav": "..\u2215escape.wav"}
MTIME = 1_700_000_000.0


def _item(key: str, key_type: str = "file", key_name: str | None = None) -> dict:
    size = "" if key_type == "directory" else kb_string(len(_content(key)))
    return {"kind": "objectKey", "key": key, "keyName": key_name or key.rsplit("/", 1)[-1],
            "size": size, "lastModifiedTime": iso_ms(MTIME), "keyType": key_type}


def _content(key: str) -> bytes:
    return f"content of {key!r}\n".encode() * 3


def _crafted() -> list[dict]:
    items = [_item(k, key_name="../../etc/passwd" if k.endswith("innocent.wav") else None)
             for k in list(KEYS) + list(DOT_KEYS) + [NEWLINE_KEY, FORGE_KEY]]
    items.append(_item(P + "same/", "directory"))
    items.append(_item("elsewhere/escape.wav"))        # outside the folder: never shown
    items.append(dict(_item(P + "twice.wav")))
    items.append(dict(_item(P + "twice.wav")))         # one object listed twice
    return items


@pytest.fixture(scope="module")
def emu():
    emu = TamperingAlvaria()
    for key in list(KEYS) + list(DOT_KEYS) + [P + "twice.wav", "elsewhere/escape.wav", NEWLINE_KEY]:
        emu.put(key, _content(key), MTIME)
    emu.put(P + "same/inner.wav", b"inner\n", MTIME)
    emu.put("escape.wav", b"a different object at the bucket's root\n", MTIME)
    emu.crafted[P] = _crafted()
    with emu:
        yield emu


@pytest.fixture(scope="module")
def mount(emu, tmp_path_factory):
    work = tmp_path_factory.mktemp("hostile-names")
    m = Mount(config_for(emu, work / "cache"), work, "mnt")
    m.start()
    yield m
    m.unmount()


def _listed() -> list[tuple[str, str]]:
    """(name, object id) as the Alvaria source derives them from the crafted items."""
    return [(i["key"].rstrip("/")[len(P):],
             i["key"].rstrip("/") + ("/" if i["keyType"] == "directory" else ""))
            for i in _crafted() if i["key"].startswith(P)]


def _expected_names() -> dict[str, str]:
    listed = _listed()
    return dict(zip([oid for _, oid in listed], names.unique_names(listed)))


def test_hostile_keys_become_safe_distinct_names(emu, mount):
    shown = os.listdir(mount.path / SOURCE / "hostile")
    assert len(shown) == len(set(shown)) == len(_crafted()) - 1      # all but the outsider
    for name in shown:
        assert "/" not in name and "\x00" not in name and name not in ("", ".", "..")
        assert len(os.fsencode(name)) <= 255
    for key, name in {**KEYS, **DOT_KEYS}.items():
        if name is not None:
            assert name in shown, (key, name, shown)
    assert "escape.wav" not in shown and "passwd" not in " ".join(shown)
    assert sorted(shown) == sorted(names.unique_names(_listed()))
    assert len([n for n in shown if n.startswith("twice")]) == 2
    expected = _expected_names()
    # the long names keep their extension; the colliding pair and the file/folder pair
    # both got tags, so that neither depends on which came first
    assert expected[P + LONG].endswith(".wav") and expected[P + LONG_MB].endswith(".wav")
    assert expected[P + "x/y.wav"] != expected[P + "x\u2215y.wav"]
    assert " ~" in expected[P + "x/y.wav"] and " ~" in expected[P + "x\u2215y.wav"]
    assert os.path.isdir(mount.path / SOURCE / "hostile" / expected[P + "same/"])
    assert os.path.isfile(mount.path / SOURCE / "hostile" / expected[P + "same"])


def test_every_hostile_named_file_reads_its_own_bytes(emu, mount):
    expected = _expected_names()
    folder = mount.path / SOURCE / "hostile"
    for key in KEYS:
        got = read_or_errno(folder / expected[key])
        assert got == _content(key), (key, errno_name(got))
    assert (folder / expected[P + "same/"] / "inner.wav").read_bytes() == b"inner\n"


def test_keys_with_dot_segments_read_their_own_bytes(emu, mount):
    folder = mount.path / SOURCE / "hostile"
    for key, name in DOT_KEYS.items():
        got = read_or_errno(folder / name)
        assert got == _content(key), (key, errno_name(got))


def test_a_key_with_dot_segments_never_serves_another_objects_bytes(emu, mount):
    got = read_or_errno(mount.path / SOURCE / "hostile" / DOT_KEYS[P + "../escape.wav"])
    assert got in (_content(P + "../escape.wav"), errno.EIO), got


def test_a_key_with_a_newline_reads_its_own_bytes(emu, mount):
    got = read_or_errno(mount.path / SOURCE / "hostile" / "line\nbreak.wav")
    assert got == _content(NEWLINE_KEY), errno_name(got)


def test_a_hostile_name_cannot_forge_a_log_line(emu, mount):
    path = mount.path / SOURCE / "hostile" / _expected_names()[FORGE_KEY]
    mark = mount.log_mark()
    assert read_or_errno(path) == errno.EIO
    log = mount.log_since(mark)
    assert "recfs.forged" in log                  # the name was logged
    assert not any(line.startswith(FORGED[:30]) for line in log.splitlines())


def test_names_are_stable_across_remounts_and_listing_order(emu, mount, tmp_path):
    first = sorted(os.listdir(mount.path / SOURCE / "hostile"))
    emu.crafted[P] = list(reversed(_crafted()))
    try:
        other = Mount(config_for(emu, tmp_path / "cache2"), tmp_path, "again")
        other.start()
        try:
            assert sorted(os.listdir(other.path / SOURCE / "hostile")) == first
        finally:
            other.unmount()
    finally:
        emu.crafted[P] = _crafted()


def test_name_rules_for_names_alvaria_cannot_produce():
    # an empty name cannot come from an S3 key (it would be the folder itself)
    assert names.clean("") == "_"
    assert names.unique_names([("", "a"), ("", "b")]) == names.unique_names([("", "a"), ("", "b")])
    a, b = names.unique_names([("", "a"), ("", "b")])
    assert a != b and a.startswith("_ ~") and b.startswith("_ ~")
