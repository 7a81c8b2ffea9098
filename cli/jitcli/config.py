"""Settings: command-line flags, then `JIT_*` environment variables, then the config file, then defaults.

The config file is TOML at a platform-appropriate path (`jit config path` prints it): `$JIT_CONFIG` if set,
else `%APPDATA%\\jit\\config.toml` on Windows, else `$XDG_CONFIG_HOME/jit/config.toml` (default
`~/.config/jit/config.toml`).
"""

from __future__ import annotations

import json
import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from jitcli.errors import ConfigError


@dataclass(frozen=True)
class Key:
    """One setting: its name in the file, its environment variable, its default and what it is for."""

    name: str
    help: str
    default: str | None = None

    @property
    def env(self) -> str:
        """The environment variable that sets this key (`broker_url` -> `JIT_BROKER_URL`)."""
        return "JIT_" + self.name.upper()


KEYS: dict[str, Key] = {
    k.name: k
    for k in (
        Key("broker_url", "the broker's base URL, e.g. https://jit.contoso.com"),
        Key("scope", "the broker's app ID URI or scope (api://<app-id>); /.default is added when missing"),
        Key("tenant_id", "your Entra ID tenant (needed for browser and device-code sign-in)"),
        Key("client_id", "public client used for browser / device-code sign-in (default: the Azure CLI's)"),
        Key(
            "auth",
            "how to get a token: azure (CLI, azd, then browser/device code), azure-cli, device-code, "
            "browser, or lab",
            "azure",
        ),
        Key(
            "token_cache",
            "where browser / device-code sign-in is remembered: keyring (the OS's encrypted store; in memory "
            "when there is none), keyring-or-file (else an unencrypted file only you can read), or memory",
            "keyring",
        ),
        Key("lab_issuer", "lab only: the lab token issuer's base URL (with auth = lab)"),
        Key("lab_user", "lab only: the scenario user the lab issuer signs tokens for (with auth = lab)"),
        Key("resource_group", "default resource group of the VMs you ask for"),
        Key("subscription", "default subscription ID of the VMs you ask for"),
        Key("duration", "default grant duration (30m, 2h, PT1H, seconds); the broker's default when unset"),
        Key("source", "default source CIDR to open for, instead of the address the broker sees"),
        Key(
            "connect_host",
            "connect (probe and client) through this address instead of the VM's own, e.g. a "
            "bastion or tunnel endpoint that forwards to the VM",
        ),
        Key("connect_port", "the port to use at connect_host when it differs from the VM's port"),
        Key("wait", "how long to wait for the port to answer after the grant", "120s"),
        Key(
            "grant_wait",
            "how long to wait for a grant the broker accepted (202) but has not finished opening",
            "5m",
        ),
    )
}


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """Where the config file lives on this platform (see the module docstring)."""
    env = os.environ if env is None else env
    if env.get("JIT_CONFIG"):
        return Path(env["JIT_CONFIG"])
    if sys.platform == "win32" and env.get("APPDATA"):
        return Path(env["APPDATA"]) / "jit" / "config.toml"
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "jit" / "config.toml"


def read_file(path: Path) -> dict[str, str]:
    """The config file's settings as strings; empty when the file does not exist."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (tomllib.TOMLDecodeError, OSError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    values: dict[str, str] = {}
    for name, value in raw.items():
        if isinstance(value, bool | dict | list):
            raise ConfigError(f"config file {path}: {name} must be a string or a number")
        values[name] = str(value)
    return values


def write_file(path: Path, values: Mapping[str, str]) -> None:
    """Write settings as a flat TOML table (keys sorted), creating the folder; readable by the owner only."""
    lines = ["# jit settings: `jit config set KEY VALUE` edits this file.\n"]
    for name in sorted(values):
        lines.append(f"{name} = {json.dumps(values[name], ensure_ascii=False)}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    if sys.platform != "win32":
        tmp.chmod(0o600)
    tmp.replace(path)


@dataclass(frozen=True)
class Setting:
    """A resolved setting and where its value came from (flag, env, file or default)."""

    value: str | None
    source: str


class Settings:
    """Every setting resolved once: flags > environment > config file > defaults."""

    def __init__(
        self,
        flags: Mapping[str, str | None] | None = None,
        env: Mapping[str, str] | None = None,
        path: Path | None = None,
    ) -> None:
        env = os.environ if env is None else env
        self.path = path or config_path(env)
        file_values = read_file(self.path)
        unknown = sorted(set(file_values) - set(KEYS))
        if unknown:
            raise ConfigError(f"config file {self.path}: unknown setting(s) {', '.join(unknown)}")
        self._resolved: dict[str, Setting] = {}
        for key in KEYS.values():
            flag = (flags or {}).get(key.name)
            if flag is not None:
                self._resolved[key.name] = Setting(flag, "flag")
            elif env.get(key.env):
                self._resolved[key.name] = Setting(env[key.env], f"env {key.env}")
            elif key.name in file_values:
                self._resolved[key.name] = Setting(file_values[key.name], f"file {self.path}")
            else:
                self._resolved[key.name] = Setting(key.default, "default")

    def get(self, name: str) -> str | None:
        """The value of setting `name`, or None when nothing sets it."""
        return self.setting(name).value

    def setting(self, name: str) -> Setting:
        """The value of setting `name` with where it came from."""
        if name not in KEYS:
            raise ConfigError(f"unknown setting {name!r}; known: {', '.join(KEYS)}")
        return self._resolved[name]

    def require(self, name: str) -> str:
        """The value of setting `name`; a ConfigError saying how to set it when unset."""
        value = self.get(name)
        if not value:
            key = KEYS[name]
            raise ConfigError(
                f"{name} is not set",
                hint=f"set it with `jit config set {name} VALUE` or the {key.env} environment variable",
            )
        return value


def set_value(path: Path, name: str, value: str | None) -> None:
    """Set (or with None, remove) one key in the config file, keeping the others."""
    if name not in KEYS:
        raise ConfigError(f"unknown setting {name!r}; known: {', '.join(KEYS)}")
    values = read_file(path)
    if value is None:
        values.pop(name, None)
    else:
        values[name] = value
    write_file(path, values)
