"""Config validation: every error names the key; secrets never appear in messages."""
from __future__ import annotations

import os

import pytest

from recfs.config import (COMMON_SOURCE_KEYS, KINDS, ConfigError, Secret, load_config, parse_config,
                          parse_size, source_keys)
from recfs.sources import alvaria

ALV = {"name": "alv", "kind": "alvaria", "api_url": "https://o.example/via/v3/organizations/o",
       "token_url": "https://id.example/token", "client_id": "id", "client_secret": "TOPSECRET",
       "api_key": "KEY"}


def test_a_good_config_is_typed_and_secrets_are_hidden():
    cfg = parse_config({"cache": {"max_size": "2GiB"}, "sources": [ALV]})
    assert cfg.cache.max_size == 2 * 1024**3
    assert cfg.cache.sync_after == 30.0
    assert parse_config({"cache": {"sync_after": 0}, "sources": [ALV]}).cache.sync_after == 0
    opts = cfg.sources[0].options
    assert isinstance(opts, alvaria.Options)
    assert isinstance(opts.client_secret, Secret)
    assert opts.client_secret.reveal() == "TOPSECRET"
    assert "TOPSECRET" not in repr(opts) and "TOPSECRET" not in str(opts)
    # keys not given take their defaults
    assert (opts.name, opts.kind, opts.root, opts.page_size, opts.listing_ttl, opts.allow_delete) == \
        ("alv", "alvaria", "", 1000, None, False)


def test_each_kind_declares_its_keys_on_its_options():
    assert {"api_url", "token_url", "client_secret", "page_size"} <= set(source_keys("alvaria"))
    for kind in KINDS:
        keys = source_keys(kind)
        assert keys and not set(keys) & set(COMMON_SOURCE_KEYS)      # the common keys apart
        assert all(k.doc for k in keys.values())
    assert {"name", "kind", "listing_ttl", "allow_delete"} <= set(COMMON_SOURCE_KEYS)


def test_options_can_be_built_directly_and_check_their_keys_together():
    good = alvaria.Options(name="alv", kind="alvaria", api_url=ALV["api_url"], token_url=ALV["token_url"],
                           client_id=Secret("id", "t"), client_secret=Secret("s", "t"), api_key=Secret("k", "t"))
    assert good.problem() is None and good.page_size == 1000
    bad = alvaria.Options(name="alv", kind="alvaria", api_url="https://o.example/v9", token_url=ALV["token_url"],
                          client_id=Secret("id", "t"), client_secret=Secret("s", "t"), api_key=Secret("k", "t"))
    assert bad.problem().startswith("api_url: must end in /via/v2")


@pytest.mark.parametrize("change,message", [
    ({"kind": "dropbox"}, "sources[0].kind: unknown kind 'dropbox'"),
    ({"api_url": None}, "sources[0].api_url: missing required key"),
    ({"api_url": 5}, "sources[0].api_url: expected a string"),
    ({"api_url": "ftp://x"}, "sources[0].api_url: 'ftp://x' is not an http(s) URL"),
    ({"api_url": "https://o.example/v9"}, "sources[0].api_url: must end in /via/v2"),
    ({"colour": "red"}, "sources[0].colour: unknown key"),
    ({"client_secret": {"env": "RECFS_NOPE_UNSET"}}, "sources[0].client_secret: environment variable RECFS_NOPE_UNSET is not set"),
    ({"client_secret": {"bogus": "x"}}, "sources[0].client_secret: expected a string"),
    ({"page_size": 5000}, "sources[0].page_size: must be 1..1000"),
    ({"name": "a/b"}, "sources[0].name: 'a/b' is not a usable folder name"),
])
def test_bad_source_tables_name_the_key(change, message):
    table = dict(ALV)
    for k, v in change.items():
        if v is None:
            table.pop(k)
        else:
            table[k] = v
    with pytest.raises(ConfigError) as e:
        parse_config({"sources": [table]})
    assert message in str(e.value)
    assert "TOPSECRET" not in str(e.value)


def test_top_level_problems():
    with pytest.raises(ConfigError, match="sources: at least one"):
        parse_config({})
    with pytest.raises(ConfigError, match="cache.max_size"):
        parse_config({"cache": {"max_size": "lots"}, "sources": [ALV]})
    with pytest.raises(ConfigError, match="cache.sync_after: must be 0 or more"):
        parse_config({"cache": {"sync_after": -1}, "sources": [ALV]})
    with pytest.raises(ConfigError, match="nonsense: unknown key"):
        parse_config({"nonsense": 1, "sources": [ALV]})
    with pytest.raises(ConfigError, match="sources\\[1\\].name: 'alv' is used by another source"):
        parse_config({"sources": [ALV, ALV]})


def test_secrets_from_env_and_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ALV_SECRET", "from-env")
    (tmp_path / "key").write_text("from-file\n")
    table = dict(ALV, client_secret={"env": "ALV_SECRET"}, api_key={"file": str(tmp_path / "key")})
    cfg = parse_config({"sources": [table]})
    assert cfg.sources[0].options.client_secret.reveal() == "from-env"
    assert cfg.sources[0].options.api_key.reveal() == "from-file"


def test_systemd_credentials(tmp_path, monkeypatch):
    (tmp_path / "alv-secret").write_text("cred")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    cfg = parse_config({"sources": [dict(ALV, client_secret={"credential": "alv-secret"})]})
    assert cfg.sources[0].options.client_secret.reveal() == "cred"


def test_world_readable_literal_secrets_warn(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[[sources]]\n' + "\n".join(f'{k} = "{v}"' for k, v in ALV.items()))
    os.chmod(path, 0o644)
    assert any("can be read by other users" in w for w in load_config(path).warnings)
    os.chmod(path, 0o600)
    assert not load_config(path).warnings


def test_invalid_toml_is_reported_without_traceback(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[[sources]\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


@pytest.mark.parametrize("text,value", [("10GiB", 10 * 1024**3), ("500MB", 500 * 1000**2),
                                        (1234, 1234), ("1.5 GiB", int(1.5 * 1024**3)), ("7", 7)])
def test_sizes(text, value):
    assert parse_size(text) == value
