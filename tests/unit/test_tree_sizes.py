"""T4: exact sizes are learnt per folder in chunks; an open waits only for its own
chunk (the Alvaria source against its emulator, no mount)."""
from __future__ import annotations


from recfs.config import Secret
from recfs.content.cache import Cache
from recfs.emulators.alvaria import AlvariaEmulator
from recfs.emulators.base import PatternBlob
from recfs.http import Http, RetryPolicy
from recfs.sources.alvaria import AlvariaSource
from recfs.sources.base import SourceContext
from recfs.tree import SIZE_CHUNK, Tree

FILES = 100


async def rig(emu, tmp_path, nursery):
    http = Http(retry=RetryPolicy(attempts=4, base_delay=0.01), threaded_content=True)
    cache = Cache(tmp_path / "cache", max_size=1 << 30)
    opts = {"api_url": emu.api_url(), "token_url": emu.token_url,
            "client_id": Secret(emu.client_id, "t"), "client_secret": Secret(emu.client_secret, "t"),
            "api_key": Secret(emu.api_key, "t"), "root": "", "page_size": 1000,
            "size_concurrency": 8, "listing_ttl": None}
    source = AlvariaSource("alv", opts, SourceContext(http=http, cache=cache))
    tree = Tree([source], cache, nursery)
    folder = await tree.lookup(tree.root, "alv")
    calls = await tree.lookup(folder, "calls")
    files = [await tree.lookup(calls, f"c{i:03d}.wav") for i in range(FILES)]
    return http, tree, files


async def test_the_first_file_waits_for_its_chunk_only_and_the_rest_follow(tmp_path, nursery):
    emu = AlvariaEmulator()
    for i in range(FILES):
        emu.put(f"calls/c{i:03d}.wav", PatternBlob(i, 1000 + i))
    with emu:
        http, tree, files = await rig(emu, tmp_path, nursery)
        emu.reset_stats()
        await tree.ensure_size(files[0])
        assert files[0].entry.size == 1000
        assert emu.count("s3") == SIZE_CHUNK                # one chunk, not the folder
        # a file whose chunk has not started runs it itself, ahead of the queue
        await tree.ensure_size(files[-1])
        assert files[-1].entry.size == 1000 + FILES - 1
        for node in files:
            await tree.ensure_size(node)
        assert [n.entry.size for n in files] == [1000 + i for i in range(FILES)]
        assert emu.count("s3") == FILES                     # each size learnt once
        assert emu.count("signedUrl") == 0                  # the URLs came with the listing
        await http.aclose()
