"""Kazoo as real clusters behave (issue 21) and listing cost by folder (issue 20),
through real mounts: a lower crossbar.maximum_range, a year of history listed with
bounded probes, departed users, the Range rule, refused API keys, a recording saved in
the next month's database, and seed 003's soft delete and restore."""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recfs.emulators.base import PatternBlob
from recfs.emulators.kazoo import KazooEmulator, from_gregorian, source_table
from tests.conftest import _is_live_mount, toml_config
from tests.e2e import tree_files

pytestmark = pytest.mark.e2e

UTC = dt.timezone.utc
TODAY = dt.datetime.now(UTC).date()


def day_of(rec) -> str:
    return f"{dt.datetime.fromtimestamp(from_gregorian(rec.public['start']), UTC):%Y/%m/%d}"


def listing_requests(emu: KazooEmulator) -> int:
    return emu.count("list", "list_user", "users")


def requests(emu: KazooEmulator) -> int:
    return sum(emu.counts.values())


def year_of_history(**kw) -> KazooEmulator:
    """An account with two calls a day for the 365 days before today, owned in turn by
    three users and nobody."""
    emu = KazooEmulator(bucket_tokens=None, seed=21, **kw)
    emu.account = emu.add_account("A year")
    emu.demo_key = emu.add_api_key(emu.account)
    emu.demo_accounts = [emu.account]
    first = TODAY - dt.timedelta(days=365)
    emu.demo_since = first.isoformat()
    emu.people = [emu.add_user(emu.account, name, "Agent") for name in ("Ana", "Bram", "Chloé")]
    emu.generate(emu.account, first, 365, per_day=2, owners=[*emu.people, None])
    return emu


def expected(emu: KazooEmulator, owner: str | None = None) -> set[str]:
    """The account view's paths (or an owner's, below users/{owner}/)."""
    return {f"{day_of(r)}/{r.public['name']}" for r in emu.recordings.values()
            if not r.deleted and r.blob is not None
            and (owner is None or r.public.get("owner_id") == owner)}


def account_view(root: Path) -> set[str]:
    return {p for p in tree_files(root) if not p.startswith(("users/", "deleted/"))}


def mount(recfs_mount, emu, name="mnt", **table) -> Path:
    return recfs_mount(toml_config([{**source_table(emu, "kazoo"), **table}]), name=name) / "kazoo"


# ---------------------------------------------------------------- listing cost (issue 20)

def test_the_first_ls_of_an_account_with_a_year_of_history_is_a_few_requests(recfs_mount):
    with year_of_history() as emu:
        mnt = mount(recfs_mount, emu)
        emu.reset_stats()
        names = os.listdir(mnt / emu.account)
        first_ls = requests(emu)
        assert sorted(names) == sorted({f"{TODAY.year - 1}", f"{TODAY.year}", "users"})
        assert first_ls <= 40, dict(emu.counts)
        print(f"first ls of an account with a year of history: {first_ls} requests "
              f"{dict(emu.counts)}")
        # a year folder: one probe a month; a month: one page of it
        year = mnt / emu.account / f"{TODAY.year - 1}"
        before = requests(emu)
        months = sorted(os.listdir(year))
        assert requests(emu) - before <= 2 * len(months)
        before = requests(emu)
        assert os.listdir(year / months[-1])
        assert requests(emu) - before <= 3


def test_users_cost_no_request_per_user_per_day(recfs_mount):
    """users/{owner}/…/{day} comes from the account's listing of the day: walking every
    user's folders after the account's costs a few requests, not one per user and day."""
    with year_of_history() as emu:
        mnt = mount(recfs_mount, emu)
        root = mnt / emu.account
        assert {p for p in tree_files(root) if not p.startswith("users/")} == expected(emu)
        account_walk = listing_requests(emu)
        users = sorted(os.listdir(root / "users"))
        assert users == sorted(emu.people)
        assert os.getxattr(root / "users" / emu.people[0], "user.kazoo.user_name") == b"Ana Agent"
        for owner in users:
            got = set(tree_files(root / "users" / owner))
            assert got == expected(emu, owner), owner
        users_walk = listing_requests(emu) - account_walk
        days = 365
        print(f"account view: {account_walk} listing requests; users/ ({len(users)} users x "
              f"{days} days) after it: {users_walk}")
        # the users API, and at most the open year, month and day of each user
        assert users_walk <= 4 * len(users) + 2, dict(emu.counts)


# ---------------------------------------------------------------- issue 21

def test_an_eight_day_maximum_range_lists_a_year_of_history_completely(recfs_mount):
    """crossbar.maximum_range set to 8 days: the first window wider than that is
    answered 400 date_range; the mount learns the limit, says so once, and lists on."""
    eight_days = 8 * 86400
    with year_of_history(max_range=eight_days) as emu:
        mnt = mount(recfs_mount, emu)
        assert account_view(mnt / emu.account) == expected(emu)
        refused = [q for q in emu.listings if q["status"] == 400]
        assert 1 <= len(refused) <= 2                   # (years are probed together)
        assert all(int(q["created_to"]) - int(q["created_from"]) <= eight_days
                   for q in emu.listings if q["status"] == 200)
        log = recfs_mount.mounts[-1].log_text()
        told = [line for line in log.splitlines() if "crossbar.maximum_range" in line]
        assert len(told) == 1 and str(eight_days) in told[0], told


def test_a_departed_users_folder_lists_all_their_recordings(recfs_mount):
    """A user whose document was deleted: /users/{U}/recordings answers 404, their
    recordings stay in the account. Their folder appears once a listing met them, and
    lists every one of their recordings (from the account's listing, filtered)."""
    with year_of_history() as emu:
        gone = emu.people[2]
        emu.delete_user(gone)
        mnt = mount(recfs_mount, emu)
        root = mnt / emu.account
        assert sorted(os.listdir(root / "users")) == sorted(emu.people[:2])   # the users API
        some = next(r for r in emu.recordings.values() if r.public.get("owner_id") == gone)
        assert some.public["name"] in os.listdir(root / day_of(some))        # met in a day
        subprocess.run([sys.executable, "-m", "recfs", "refresh", str(root / "users")], check=True)
        assert sorted(os.listdir(root / "users")) == sorted(emu.people)
        assert os.getxattr(root / "users" / gone, "user.kazoo.user_status").startswith(b"not in")
        got = set(tree_files(root / "users" / gone))
        assert got == expected(emu, gone) and len(got) > 100
        refused = [q for q in emu.listings if q["owner"] == gone]
        assert len(refused) == 1 and refused[0]["status"] == 404     # asked once, remembered
        filtered = [q for q in emu.listings if q.get("filter_owner_id") == gone]
        assert filtered and all(q["status"] == 200 for q in filtered)
        path = root / "users" / gone / sorted(got)[0]
        rec = next(r for r in emu.recordings.values()
                   if f"{day_of(r)}/{r.public['name']}" == sorted(got)[0])
        assert path.read_bytes() == rec.blob.all_bytes()


def test_a_read_whose_last_range_ends_past_the_file_gets_the_right_bytes(recfs_mount, tmp_path):
    """api_resource:get_range answers a range that ends past the file with the whole
    file from byte 0 (a 200), whatever byte the range starts at. A copy asks a short
    recording for its first 4 MiB (its size still unknown); when that body breaks, the
    rest is asked from where it broke to the same end, and the answer starts at 0."""
    with KazooEmulator(bucket_tokens=None, seed=3, cut_past_end=5000, cut_past_end_times=2) as emu:
        emu.account = emu.add_account("Ranges")
        emu.demo_key = emu.add_api_key(emu.account)
        emu.demo_accounts = [emu.account]
        day = TODAY - dt.timedelta(days=3)
        emu.demo_since = day.isoformat()
        base = dt.datetime(day.year, day.month, day.day, 9, tzinfo=UTC).timestamp()
        recs = [emu.add_recording(emu.account, base + 600 * i, duration_ms=20_000,
                                  name=f"r{i:02d}.mp3", blob=PatternBlob(40 + i % 8, 30_000 + 977 * i))
                for i in range(24)]
        mnt = mount(recfs_mount, emu)
        folder = mnt / emu.account / day_of(recs[0])
        subprocess.run(["cp", "-r", str(folder), str(tmp_path / "copy")], check=True)
        for rec in recs:
            assert (tmp_path / "copy" / rec.public["name"]).read_bytes() == rec.blob.all_bytes()
        sizes = {rec.id: rec.blob.size for rec in recs}
        past_end = [(rid, rng) for rid, rng, status in emu.media_requests
                    if rng and status == 200 and int(rng.split("=")[1].split("-")[0]) > 0
                    and int(rng.split("-")[1]) >= sizes[rid]]
        assert past_end, (emu.faults.fired, dict(emu.counts), "\n".join(map(str, emu.media_requests)))
        assert emu.faults.fired["reset"] >= len(past_end)
        for rec in recs:                              # and each reads the same again
            assert (folder / rec.public["name"]).read_bytes() == rec.blob.all_bytes()


def _run_mount(config: str, tmp_path: Path, name: str) -> tuple[int | None, str]:
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(config)
    os.chmod(cfg, 0o600)
    mnt = tmp_path / name
    mnt.mkdir()
    proc = subprocess.run([sys.executable, "-m", "recfs", "mount", str(cfg), str(mnt)],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    if _is_live_mount(mnt):
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("key, status", [("f" * 64, 404), ("not-a-64-character-key", 400)],
                         ids=["unknown", "wrong-length"])
def test_a_refused_api_key_fails_the_mount_with_one_clear_line(tmp_path, key, status):
    with KazooEmulator(seed=2) as emu:        # its token bucket on: api_auth costs 35
        account = emu.add_account("Keys")
        emu.add_api_key(account)
        table = {"name": "kazoo", "kind": "kazoo", "api_url": emu.url + "/v2", "api_key": key,
                 "accounts": [account]}
        code, output = _run_mount(f'[cache]\ndir = "{tmp_path / "cache"}"\n\n' + toml_config([table]),
                                  tmp_path, "mnt")
        assert code not in (0, None), output
        assert emu.log[0][2] == status and emu.count("api_auth") == 1     # asked once
        lines = [line for line in output.splitlines() if " ERROR " in line or "WARNING" in line]
        assert len(lines) == 1, output
        assert "the API key was refused" in lines[0] and "source 'kazoo'" in lines[0]
        assert f"HTTP {status}" not in lines[0]
        assert key not in output and "Traceback" not in output


def test_a_key_revoked_while_mounted_is_not_offered_again_and_again(recfs_mount):
    with year_of_history() as emu:
        mnt = mount(recfs_mount, emu)
        root = mnt / emu.account
        year = sorted(os.listdir(root))[0]
        emu.api_keys.clear()                      # the key is deleted on the service
        emu.revoke_tokens()
        logins = emu.count("api_auth")
        for month in range(1, 8):
            with pytest.raises(OSError):
                os.listdir(root / year / f"{month:02d}")
        assert emu.count("api_auth") == logins + 1
        assert "the API key was refused" in recfs_mount.mounts[-1].log_text()


def test_a_recording_saved_in_the_next_months_database(recfs_mount):
    """Its id names the month its call started; it was stored after that month's end,
    in the next month's database: listed, but 404 by id. A read fails with EIO and a
    log line that says so; rm fails while a fresh listing still shows it."""
    with KazooEmulator(bucket_tokens=None, seed=8) as emu:
        emu.account = emu.add_account("Months")
        emu.demo_key = emu.add_api_key(emu.account)
        emu.demo_accounts = [emu.account]
        first = TODAY.replace(day=1)
        emu.demo_since = (first - dt.timedelta(days=5)).isoformat()
        boundary = dt.datetime(first.year, first.month, 1, tzinfo=UTC).timestamp()
        late = emu.add_recording(emu.account, boundary - 240, duration_ms=480_000, name="late.mp3")
        fine = emu.add_recording(emu.account, boundary - 7200, duration_ms=60_000, name="fine.mp3")
        assert late.id[:6] != late.modb
        mnt = mount(recfs_mount, emu, allow_delete=True)
        folder = mnt / emu.account / day_of(late)
        assert sorted(os.listdir(folder)) == ["fine.mp3", "late.mp3"]
        assert (folder / "fine.mp3").read_bytes() == fine.blob.all_bytes()
        with pytest.raises(OSError) as err:
            (folder / "late.mp3").read_bytes()
        assert err.value.errno == 5                    # EIO
        log = recfs_mount.mounts[-1].log_text()
        assert any("late.mp3" in line or late.id in line for line in log.splitlines()
                   if "next month's database" in line), log[-3000:]
        done = subprocess.run(["rm", str(folder / "late.mp3")], capture_output=True, text=True)
        assert done.returncode != 0, "rm reported success for a recording still listed"
        assert emu.deletes == []
        subprocess.run([sys.executable, "-m", "recfs", "refresh", str(folder)], check=True)
        assert "late.mp3" in os.listdir(folder)
        assert "still listed" in recfs_mount.mounts[-1].log_text()


def soft_delete_emulator(patch: bool) -> KazooEmulator:
    emu = KazooEmulator(bucket_tokens=None, seed=9, patch_soft_delete=patch)
    emu.account = emu.add_account("Soft")
    emu.demo_key = emu.add_api_key(emu.account)
    emu.demo_accounts = [emu.account]
    day = TODAY - dt.timedelta(days=40)
    emu.demo_since = (day - dt.timedelta(days=2)).isoformat()
    emu.user = emu.add_user(emu.account, "Dev", "Agent")
    base = dt.datetime(day.year, day.month, day.day, 10, tzinfo=UTC).timestamp()
    emu.victim = emu.add_recording(emu.account, base, owner_id=emu.user, name="victim.mp3",
                                   blob=PatternBlob(77, 41_000))
    emu.other = emu.add_recording(emu.account, base + 600, owner_id=emu.user, name="other.mp3")
    return emu


def test_soft_delete_the_deleted_view_and_restore_by_mv(recfs_mount):
    with soft_delete_emulator(patch=True) as emu:
        mnt = mount(recfs_mount, emu, allow_delete=True)
        root = mnt / emu.account
        assert "deleted" in os.listdir(root)
        day = day_of(emu.victim)
        assert sorted(os.listdir(root / day)) == ["other.mp3", "victim.mp3"]

        subprocess.run(["rm", str(root / day / "victim.mp3")], check=True)

        assert emu.deletes == [] and emu.victim.marked
        (rid, what, mark), = emu.patches
        assert (rid, what) == (emu.victim.id, "soft_delete")
        assert mark["deleted_by"]["account_id"] == emu.account
        assert os.listdir(root / day) == ["other.mp3"]
        deleted = root / "deleted" / day / "victim.mp3"
        assert os.listdir(root / "deleted" / day) == ["victim.mp3"]
        assert deleted.read_bytes() == emu.victim.blob.all_bytes()
        assert os.getxattr(deleted, "user.kazoo.deleted_by.account_id") == emu.account.encode()
        # anywhere but its own day folder: refused, nothing sent
        wrong = subprocess.run(["mv", str(deleted), str(root / "users")], capture_output=True, text=True)
        assert wrong.returncode != 0 and len(emu.patches) == 1

        subprocess.run(["mv", str(deleted), str(root / day) + "/"], check=True)

        assert not emu.victim.marked and emu.patches[-1][:2] == (emu.victim.id, "soft_restore")
        assert sorted(os.listdir(root / day)) == ["other.mp3", "victim.mp3"]
        assert (root / day / "victim.mp3").read_bytes() == emu.victim.blob.all_bytes()
        assert os.listdir(root / "deleted" / day) == []


def test_without_patch_soft_delete_rm_deletes_and_no_deleted_folder(recfs_mount):
    with soft_delete_emulator(patch=False) as emu:
        mnt = mount(recfs_mount, emu, allow_delete=True)
        root = mnt / emu.account
        assert "deleted" not in os.listdir(root)
        assert emu.count("method_not_allowed") == 1          # asked once: 405
        day = day_of(emu.victim)
        subprocess.run(["rm", str(root / day / "victim.mp3")], check=True)
        subprocess.run(["rm", str(root / day / "other.mp3")], check=True)
        assert emu.deletes == [(emu.victim.id, True), (emu.other.id, True)]
        assert emu.count("method_not_allowed") == 1 and emu.patches == []
        assert os.listdir(root / day) == []
