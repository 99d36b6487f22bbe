"""The pieces every front-end builds the core from, the same way: the HTTP toolkit,
the sources, the cache. The FUSE mount (mount.py) and the core thread behind the
fsspec filesystem (runtime.py) both use these, so a config means the same services,
retry policy and cache settings whichever way recfs is used. No pyfuse3 here."""
from __future__ import annotations

import errno
from pathlib import Path

from .config import Config, source_module
from .content.cache import Cache
from .http import Http, HttpError, RetryPolicy
from .sources.base import Source, SourceError


class StartError(Exception):
    """A source could not start (credentials refused, service unreachable)."""

    def __init__(self, message: str, errno_: int):
        super().__init__(message)
        self.errno = errno_


def make_http(cfg: Config) -> Http:
    t = cfg.tuning
    return Http(max_connections=t.max_connections, connect_timeout=t.connect_timeout,
                read_timeout=t.read_timeout,
                retry=RetryPolicy(attempts=t.retry_attempts, base_delay=t.retry_base_delay,
                                  max_delay=t.retry_max_delay, budget=t.retry_budget),
                ca_bundle=next((s.options.ca_bundle for s in cfg.sources if s.options.ca_bundle), None),
                threaded_content=t.threaded_content)


def make_sources(cfg: Config, http: Http) -> list[Source]:
    return [source_module(s.kind).Source(s.name, s.options, http) for s in cfg.sources]


def make_cache(cfg: Config, directory: Path | None = None, max_size: int | None = None) -> Cache:
    """The config's cache, or one in `directory` (the fsspec front-end's per-process
    cache) with the config's limits unless `max_size` says otherwise."""
    c = cfg.cache
    return Cache(directory or c.dir, c.max_size if max_size is None else max_size, c.min_free,
                 c.sync_after)


async def start_sources(sources: list[Source]) -> None:
    """Check every source's credentials and reachability; the first that fails is a
    StartError a user can read (it names the source, never a secret)."""
    for src in sources:
        try:
            await src.start()
        except (SourceError, HttpError) as exc:
            raise StartError(f"source {src.name!r}: {exc}", getattr(exc, "errno", None) or errno.EIO) from None
