"""A response read whole through `Http.request` is freed as soon as nobody holds it,
without the cyclic collector (which the daemon runs rarely: mount.py): httpx's own
responses hold themselves through their stream, and a find over a million entries kept
dozens of 1 MB listing pages alive that way (issue 20)."""
from __future__ import annotations

import gc
import weakref

from recfs.emulators.alvaria import AlvariaEmulator
from recfs.http import Http


async def test_a_response_is_freed_when_its_last_user_lets_go():
    http = Http()
    enabled = gc.isenabled()
    gc.disable()
    try:
        with AlvariaEmulator() as emu:
            resp = await http.request("POST", emu.token_url, data={"grant_type": "client_credentials"},
                                      expect=None)
            assert resp.status_code in (200, 400, 401) and resp.content
            kept = weakref.ref(resp)
            del resp
            assert kept() is None
    finally:
        if enabled:
            gc.enable()
        await http.aclose()
