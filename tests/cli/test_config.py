"""Settings precedence: flags > JIT_* environment > config file > defaults; the file `jit config` writes."""

from __future__ import annotations

from pathlib import Path

import pytest
from jitcli.config import KEYS, Settings, config_path, read_file, set_value
from jitcli.errors import ConfigError


def test_flag_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    set_value(path, "broker_url", "https://from-file.example")
    set_value(path, "resource_group", "rg-file")
    set_value(path, "duration", "2h")
    env = {"JIT_RESOURCE_GROUP": "rg-env", "JIT_DURATION": "45m"}

    settings = Settings({"duration": "10m"}, env=env, path=path)

    assert settings.setting("duration").value == "10m"
    assert settings.setting("duration").source == "flag"
    assert settings.setting("resource_group").value == "rg-env"
    assert settings.setting("resource_group").source == "env JIT_RESOURCE_GROUP"
    assert settings.setting("broker_url").value == "https://from-file.example"
    assert settings.setting("broker_url").source.startswith("file ")
    assert settings.setting("wait").value == "120s"
    assert settings.setting("wait").source == "default"
    assert settings.get("subscription") is None


def test_empty_environment_variable_does_not_hide_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    set_value(path, "broker_url", "https://from-file.example")
    settings = Settings(env={"JIT_BROKER_URL": ""}, path=path)
    assert settings.get("broker_url") == "https://from-file.example"


def test_set_keeps_other_keys_and_unset_removes_one(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "config.toml"
    set_value(path, "broker_url", "https://jit.example")
    set_value(path, "tenant_id", 'odd "quoted" \\ value')
    set_value(path, "broker_url", None)
    assert read_file(path) == {"tenant_id": 'odd "quoted" \\ value'}
    assert path.stat().st_mode & 0o077 == 0


def test_unknown_keys_are_refused_in_the_file_and_on_set(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('broker_url = "https://x.example"\nbrokr_url = "typo"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="brokr_url"):
        Settings(env={}, path=path)
    with pytest.raises(ConfigError, match="unknown setting"):
        set_value(tmp_path / "other.toml", "nope", "1")


def test_broken_toml_is_reported_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("broker_url = \n", encoding="utf-8")
    with pytest.raises(ConfigError, match=str(path)):
        Settings(env={}, path=path)


def test_numbers_in_the_file_read_as_strings(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("connect_port = 2222\n", encoding="utf-8")
    assert Settings(env={}, path=path).get("connect_port") == "2222"


def test_require_names_the_key_and_how_to_set_it(tmp_path: Path) -> None:
    settings = Settings(env={}, path=tmp_path / "none.toml")
    with pytest.raises(ConfigError) as caught:
        settings.require("broker_url")
    assert caught.value.hint is not None
    assert "jit config set broker_url" in caught.value.hint
    assert "JIT_BROKER_URL" in caught.value.hint


def test_config_path_follows_jit_config_then_xdg(tmp_path: Path) -> None:
    assert config_path({"JIT_CONFIG": str(tmp_path / "x.toml")}) == tmp_path / "x.toml"
    assert config_path({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "jit" / "config.toml"
    assert config_path({}).parts[-3:] == (".config", "jit", "config.toml")


def test_every_key_has_an_environment_variable_named_after_it() -> None:
    assert KEYS["broker_url"].env == "JIT_BROKER_URL"
    assert all(key.env == "JIT_" + name.upper() for name, key in KEYS.items())
