"""TOML configuration: parsed, typed, validated, secrets resolved.

Every error names the key (`sources[1].api_url`) and what is wrong with it, and
never includes a secret's value. Secrets are `Secret` objects whose repr hides the
value; they come from the file itself, `{ env = "VAR" }`, `{ file = "/path" }` or
`{ credential = "name" }` (systemd's $CREDENTIALS_DIRECTORY).
"""
from __future__ import annotations

import datetime as dt
import importlib
import os
import re
import stat
import tomllib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import redact
from .search import QueryError, parse as parse_query

# seconds a cache entry stays dirty before the flusher records it (I2); defined here,
# not in content/cache.py, so that reading a config (every CLI command, `recfs search`
# among them) does not import trio and httpx
SYNC_AFTER = 30.0

KINDS = {
    "8x8": "recfs.sources.eightbyeight",
    "oce": "recfs.sources.oce",
    "alvaria": "recfs.sources.alvaria",
    "kazoo": "recfs.sources.kazoo",
}


class ConfigError(Exception):
    pass


class Secret:
    """A credential. Its repr and str never show the value."""

    __slots__ = ("_value", "origin")

    def __init__(self, value: str, origin: str):
        self._value = value
        self.origin = origin
        redact.register(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"<secret from {self.origin}>"

    __str__ = __repr__

    def __eq__(self, other):
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self):
        return hash(self._value)


@dataclass
class Key:
    type: str                        # str, url, int, float, bool, secret, size, date, list[str]
    required: bool = False
    default: Any = None
    check: Callable[[Any], str | None] | None = None   # returns a problem, or None
    doc: str = ""
    retired: bool = False            # accepted so that older configs load; a warning says it does nothing


def option(type_: str, default: Any = None, *, doc: str, required: bool = False,
           check: Callable[[Any], str | None] | None = None, retired: bool = False) -> Any:
    """A field of an options dataclass that is also a config key: its type, default,
    check and the line of documentation the configuration reference prints."""
    key = Key(type_, required=required, default=default, check=check, doc=doc, retired=retired)
    if required:
        return field(metadata={"key": key})
    return field(default=default, metadata={"key": key})


def keys_of(cls) -> dict[str, Key]:
    """The config keys of an options dataclass, in field order."""
    return {f.name: f.metadata["key"] for f in dataclasses.fields(cls) if "key" in f.metadata}


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.I)
_UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "KIB": 1024, "M": 1000**2, "MB": 1000**2,
          "MIB": 1024**2, "G": 1000**3, "GB": 1000**3, "GIB": 1024**3, "T": 1000**4,
          "TB": 1000**4, "TIB": 1024**4, "KI": 1024, "MI": 1024**2, "GI": 1024**3, "TI": 1024**4}


def parse_size(value: Any) -> int:
    """'10GiB' -> 10737418240; integers are bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size like \"10GiB\"")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("expected a size like \"10GiB\"")
    m = _SIZE_RE.match(value)
    unit = (m.group(2) or "").upper() if m else None
    if not m or unit not in _UNITS:
        raise ValueError(f"{value!r} is not a size like \"10GiB\" or \"500MB\"")
    return int(float(m.group(1)) * _UNITS[unit])


def _resolve_secret(value: Any, where: str, config_dir: Path) -> Secret:
    if isinstance(value, str):
        if not value:
            raise ConfigError(f"{where}: must not be empty")
        return Secret(value, "the config file")
    if isinstance(value, dict) and len(value) == 1:
        (how, ref), = value.items()
        if not isinstance(ref, str) or not ref:
            raise ConfigError(f"{where}.{how}: expected a non-empty string")
        if how == "env":
            if ref not in os.environ:
                raise ConfigError(f"{where}: environment variable {ref} is not set")
            return Secret(os.environ[ref], f"${ref}")
        if how in ("file", "credential"):
            if how == "credential":
                base = os.environ.get("CREDENTIALS_DIRECTORY")
                if not base:
                    raise ConfigError(f"{where}: {{ credential = {ref!r} }} needs systemd's "
                                      f"$CREDENTIALS_DIRECTORY (LoadCredential=)")
                path = Path(base) / ref
            else:
                path = Path(ref) if Path(ref).is_absolute() else config_dir / ref
            try:
                text = path.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
            if not text:
                raise ConfigError(f"{where}: {path} is empty")
            return Secret(text, str(path))
    raise ConfigError(f"{where}: expected a string, {{ env = \"VAR\" }}, {{ file = \"/path\" }} "
                      f"or {{ credential = \"name\" }}")


def _coerce(key: Key, value: Any, where: str, config_dir: Path) -> Any:
    t = key.type
    if t == "secret":
        return _resolve_secret(value, where, config_dir)
    if t in ("str", "url"):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__}")
        if t == "url":
            if not re.match(r"^https?://[^/\s]+", value):
                raise ConfigError(f"{where}: {value!r} is not an http(s) URL")
            value = value.rstrip("/")
        return value
    if t == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__}")
        return value
    if t == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__}")
        return float(value)
    if t == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {type(value).__name__}")
        return value
    if t == "size":
        try:
            return parse_size(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if t == "date":
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return value
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an ISO date like 2024-01-31")
    if t == "list[str]":
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{where}: expected a list of non-empty strings")
        return list(value)
    raise AssertionError(t)


def _apply_schema(table: dict, schema: dict[str, Key], where: str, config_dir: Path) -> dict:
    out: dict[str, Any] = {}
    for name in table:
        if name not in schema:
            known = ", ".join(sorted(schema))
            raise ConfigError(f"{where}.{name}: unknown key (known keys: {known})")
    for name, key in schema.items():
        kw = f"{where}.{name}"
        if name not in table:
            if key.required:
                raise ConfigError(f"{kw}: missing required key")
            out[name] = key.default
            continue
        value = _coerce(key, table[name], kw, config_dir)
        if key.check:
            problem = key.check(value)
            if problem:
                raise ConfigError(f"{kw}: {problem}")
        out[name] = value
    return out


def _positive(v) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _not_negative(v) -> str | None:
    return None if v >= 0 else "must be 0 or more"


@dataclass(kw_only=True)
class SourceOptions:
    """The keys of every `[[sources]]` table; each provider's `Options` adds its own."""
    name: str = option("str", required=True, doc="top-level folder of this source in the mount")
    kind: str = option("str", required=True, doc="8x8, oce, alvaria or kazoo")
    listing_ttl: float | None = option("float", doc="seconds a folder listing stays fresh (provider default)")
    ca_bundle: str | None = option("str", doc="CA bundle (PEM) to verify the service's TLS certificate")
    allow_delete: bool = option("bool", False,
                                doc="let rm delete objects on the service (where its API can); off: EROFS")

    def problem(self) -> str | None:
        """What is wrong between keys, as "key: why"; None when they fit together."""
        return None


COMMON_SOURCE_KEYS = keys_of(SourceOptions)

CACHE_KEYS = {
    "dir": Key("str", doc="cache directory"),
    "max_size": Key("size", default=10 * 1024**3, doc="bytes the cache may hold"),
    "min_free": Key("size", default=1024**3, doc="free space to leave on the cache's disk"),
    "sync_after": Key("float", default=SYNC_AFTER, check=_not_negative,
                      doc="seconds downloaded data may wait before it is synced to disk and recorded in the index (a crash costs at most this much refetching)"),
}


@dataclass(kw_only=True)
class Tuning:
    """`[tuning]`: the defaults suit most uses."""
    connect_timeout: float = option("float", 10.0, check=_positive, doc="seconds to connect")
    read_timeout: float = option("float", 30.0, check=_positive,
                                 doc="seconds without a byte before a request counts as stalled")
    retry_attempts: int = option("int", 6, check=_positive, doc="tries per request, the first included")
    retry_base_delay: float = option("float", 0.2, check=_positive, doc="first backoff, doubled per try")
    retry_max_delay: float = option("float", 10.0, check=_positive, doc="longest single backoff")
    retry_budget: float = option("float", 60.0, check=_positive, doc="seconds of retrying per request")
    max_connections: int = option("int", 32, check=_positive,
                                  doc="HTTP connections for content and API calls "
                                      "(size probes: each source's size_concurrency)")
    first_window: int = option("size", 1 << 20, doc="first read-ahead window of a sequential reader")
    max_window: int = option("size", 64 << 20, doc="largest read-ahead window")
    max_request: int = option("size", 16 << 20, doc="largest single ranged GET (a window is split into parallel GETs of this size; an eighth of it once a file arrives slower than 100 MB/s per connection)")
    small_file: int = option("size", 4 << 20, doc="files up to this size are fetched whole")
    threaded_content: bool = option("bool", True,
                                    doc="receive file content in worker threads, straight into the cache, and small answers (signed URLs, size probes) with the same small client on the main thread (false: everything through httpx, on the main thread)")
    direct_io_min_size: int = option("size", 64 << 20,
                                     doc="files this big or bigger bypass the kernel's page cache: faster streaming and no second copy in RAM, but a shared mmap of them fails (ENODEV); 0: never")
    fuse_fast_wait: bool = option("bool", True,
                                  doc="take the next FUSE request without a trip through trio's scheduler when it is already waiting, which halves the daemon's CPU per metadata request (false: pyfuse3's own wait)")
    sibling_prefetch: int = option("int", 8, check=_not_negative,
                                   doc="small files fetched ahead when a folder is read file after file")
    entries_in_memory: int = option("int", 100_000, check=_positive,
                                    doc="files and folders whose listings the daemon keeps in RAM (about 1 KiB each); the folders used least recently are read back from the metadata index on disk when needed")


TUNING_KEYS = keys_of(Tuning)

SEARCHES_FOLDER = "searches"    # the root folder of the saved searches, when there are any


@dataclass(kw_only=True)
class SavedSearch:
    """A `[[searches]]` table: a search shown as a read-only folder of its matches."""
    name: str = option("str", required=True,
                       doc="folder of this search: searches/{name}/{source}/… holds its matches at their home paths")
    query: str = option("str", required=True,
                        doc='terms as `recfs search` takes them, e.g. "caller=+15551234567 since=2025-01-01"')
    listing_ttl: float | None = option("float", check=_positive,
                                       doc="seconds the folder's matches stay fresh before the search runs again (default: the shortest listing_ttl of the sources)")


SEARCH_KEYS = keys_of(SavedSearch)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "recfs"


@dataclass
class CacheConfig:
    dir: Path
    max_size: int
    min_free: int
    sync_after: float


@dataclass
class SourceConfig:
    name: str
    kind: str
    options: SourceOptions          # the kind's `Options`


@dataclass
class Config:
    cache: CacheConfig
    sources: list[SourceConfig]
    tuning: Tuning = field(default_factory=Tuning)
    searches: list[SavedSearch] = field(default_factory=list)
    path: Path | None = None
    warnings: list[str] = field(default_factory=list)


_NAME_RE = re.compile(r"^[^/\x00]{1,255}$")


def source_module(kind: str):
    return importlib.import_module(KINDS[kind])


def source_keys(kind: str) -> dict[str, Key]:
    """The keys a `[[sources]]` table of this kind takes besides the common ones."""
    return {k: v for k, v in keys_of(source_module(kind).Options).items() if k not in COMMON_SOURCE_KEYS}


def _retired(table: dict, schema: dict[str, Key], where: str) -> list[str]:
    return [f"{where}.{name}: no longer used ({key.doc})" for name, key in schema.items()
            if key.retired and name in table]


def parse_config(data: dict, config_dir: Path = Path(".")) -> Config:
    known_top = {"cache", "sources", "tuning", "searches"}
    for k in data:
        if k not in known_top:
            raise ConfigError(f"{k}: unknown key (known: cache, sources, tuning, searches)")
    tuning_tab = data.get("tuning", {})
    if not isinstance(tuning_tab, dict):
        raise ConfigError("tuning: expected a table [tuning]")
    tuning = Tuning(**_apply_schema(tuning_tab, TUNING_KEYS, "tuning", config_dir))
    cache_tab = data.get("cache", {})
    if not isinstance(cache_tab, dict):
        raise ConfigError("cache: expected a table [cache]")
    cache = _apply_schema(cache_tab, CACHE_KEYS, "cache", config_dir)
    cache_dir = Path(cache["dir"]).expanduser() if cache["dir"] else default_cache_dir()
    if not cache_dir.is_absolute():
        cache_dir = (config_dir / cache_dir).resolve()
    sources_tab = data.get("sources")
    if not isinstance(sources_tab, list) or not sources_tab:
        raise ConfigError("sources: at least one [[sources]] table is required")
    sources: list[SourceConfig] = []
    warnings: list[str] = []
    seen: set[str] = set()
    for i, tab in enumerate(sources_tab):
        where = f"sources[{i}]"
        if not isinstance(tab, dict):
            raise ConfigError(f"{where}: expected a table")
        kind = tab.get("kind")
        if kind is None:
            raise ConfigError(f"{where}.kind: missing required key")
        if not isinstance(kind, str) or kind not in KINDS:
            raise ConfigError(f"{where}.kind: unknown kind {kind!r} (expected one of "
                              f"{', '.join(KINDS)})")
        options_cls = source_module(kind).Options
        opts = options_cls(**_apply_schema(tab, keys_of(options_cls), where, config_dir))
        warnings += _retired(tab, keys_of(options_cls), where)
        name = opts.name
        if not _NAME_RE.match(name) or name in (".", ".."):
            raise ConfigError(f"{where}.name: {name!r} is not a usable folder name")
        if name in seen:
            raise ConfigError(f"{where}.name: {name!r} is used by another source")
        seen.add(name)
        problem = opts.problem()
        if problem:
            raise ConfigError(f"{where}.{problem}")
        sources.append(SourceConfig(name=name, kind=kind, options=opts))
    searches = _saved_searches(data.get("searches", []), config_dir)
    if searches and SEARCHES_FOLDER in seen:
        i = next(i for i, s in enumerate(sources) if s.name == SEARCHES_FOLDER)
        raise ConfigError(f"sources[{i}].name: {SEARCHES_FOLDER!r} is the folder of the saved searches "
                          f"([[searches]]); give this source another name")
    return Config(cache=CacheConfig(cache_dir, cache["max_size"], cache["min_free"], cache["sync_after"]),
                  sources=sources, tuning=tuning, searches=searches, warnings=warnings)


def _saved_searches(tables: Any, config_dir: Path) -> list[SavedSearch]:
    """The `[[searches]]` tables, each query read as `recfs search` reads its terms."""
    if not isinstance(tables, list):
        raise ConfigError("searches: expected [[searches]] tables")
    out: list[SavedSearch] = []
    for i, tab in enumerate(tables):
        where = f"searches[{i}]"
        if not isinstance(tab, dict):
            raise ConfigError(f"{where}: expected a table")
        saved = SavedSearch(**_apply_schema(tab, SEARCH_KEYS, where, config_dir))
        if not _NAME_RE.match(saved.name) or saved.name in (".", "..") or saved.name.strip() != saved.name:
            raise ConfigError(f"{where}.name: {saved.name!r} is not a usable folder name")
        if any(s.name == saved.name for s in out):
            raise ConfigError(f"{where}.name: {saved.name!r} is used by another saved search")
        try:
            parse_query(saved.query)
        except QueryError as exc:
            raise ConfigError(f"{where}.query: {exc}") from None
        out.append(saved)
    return out


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    cfg = parse_config(data, path.parent.resolve())
    cfg.path = path
    mode = path.stat().st_mode
    has_literal = any(isinstance(v, Secret) and v.origin == "the config file"
                      for s in cfg.sources for v in vars(s.options).values())
    if has_literal and mode & (stat.S_IRGRP | stat.S_IROTH):
        cfg.warnings.append(f"{path} holds secrets and can be read by other users "
                            f"(chmod 600 it, or use {{ env = ... }} / {{ file = ... }})")
    return cfg
