"""The Alvaria emulator's `urls_in_listing` setting: with it off, listing items carry
no signed URLs, and a signed URL can still be asked for per key (both ways the API
offers), so clients are tested against listings with and without them."""
from __future__ import annotations

import httpx
import pytest

from recfs.emulators.alvaria import AlvariaEmulator

FOLDER = "exports/cxp/recordings/2025-10-10"
FILES = {f"{FOLDER}/call-{i}.wav": f"recording {i}\n".encode() * (i + 1) for i in range(3)}
URL_FIELDS = {"signedDownloadUrl", "nativeSignedDownloadUrl", "signedUploadUrl"}


def make_emulator(**kw) -> AlvariaEmulator:
    emu = AlvariaEmulator(**kw)
    for key, data in FILES.items():
        emu.put(key, data)
    emu.put(f"{FOLDER}/sub/inner.wav", b"inner\n")
    return emu


def client(emu: AlvariaEmulator) -> httpx.Client:
    token = httpx.post(emu.token_url, data={"grant_type": "client_credentials"},
                       auth=(emu.client_id, emu.client_secret), trust_env=False).json()["access_token"]
    return httpx.Client(base_url=emu.api_url("v3") + "/mediaStorage/data", trust_env=False,
                        headers={"Authorization": f"Bearer {token}", "x-api-key": emu.api_key})


def listing(api: httpx.Client) -> dict[str, dict]:
    resp = api.get("/objectKeys", params={"key": FOLDER + "/", "keyType": "file:directory"})
    resp.raise_for_status()
    return {item["key"].rstrip("/"): item for item in resp.json()["objectKeys"]}


def fetch(url: str) -> bytes:
    resp = httpx.get(url, trust_env=False)
    resp.raise_for_status()
    return resp.content


@pytest.mark.parametrize("urls_in_listing", [True, False])
def test_listing_items_carry_signed_urls_only_when_set(urls_in_listing):
    with make_emulator(urls_in_listing=urls_in_listing) as emu, client(emu) as api:
        assert emu.urls_in_listing is urls_in_listing
        items = listing(api)
        assert set(items) == set(FILES) | {f"{FOLDER}/sub"}
        assert items[f"{FOLDER}/sub"]["keyType"] == "directory"
        assert not URL_FIELDS & set(items[f"{FOLDER}/sub"])
        for key, data in FILES.items():
            item = items[key]
            assert {"key", "keyName", "size", "lastModifiedTime", "keyType"} <= set(item)
            assert item["keyType"] == "file"
            assert item["size"] == f"{len(data) / 1024:.1f} KB"
            if urls_in_listing:
                assert URL_FIELDS <= set(item)
                assert item["signedUploadUrl"].strip() == ""
                assert item["signedDownloadUrl"] == item["nativeSignedDownloadUrl"]
                assert fetch(item["signedDownloadUrl"]) == data
            else:
                assert not URL_FIELDS & set(item)
        assert emu.count("objectKeys") == 1
        assert emu.count("signedUrl") == 0


@pytest.mark.parametrize("urls_in_listing", [True, False])
def test_signed_url_per_key_works_either_way(urls_in_listing):
    key, data = next(iter(FILES.items()))
    with make_emulator(urls_in_listing=urls_in_listing) as emu, client(emu) as api:
        answers = [api.get("/objectKeys", params={"key": key, "keyType": "signedDownloadUrl"}),
                   api.get("/signedDownloadUrl", params={"key": key})]
        for resp in answers:
            resp.raise_for_status()
            body = resp.json()
            assert body["key"] == key
            assert fetch(body["signedDownloadUrl"]) == data
        assert emu.count("signedUrl") == 2
        assert emu.count("s3") == 2
        missing = api.get("/signedDownloadUrl", params={"key": f"{FOLDER}/nope.wav"})
        assert missing.status_code == 404


def test_setting_can_be_switched_on_a_running_emulator():
    with make_emulator() as emu, client(emu) as api:
        assert all(URL_FIELDS <= set(listing(api)[key]) for key in FILES)
        emu.urls_in_listing = False
        assert not any(URL_FIELDS & set(listing(api)[key]) for key in FILES)
        emu.urls_in_listing = True
        assert all(URL_FIELDS <= set(listing(api)[key]) for key in FILES)
