"""Sign in once: browser and device-code sign-in remembered between runs (jitcli.signin), with
azure-identity's interactive credentials stood in by fakes that keep a "persistent cache" in the test (no
network, no keyring).

Each `run()` builds the token provider afresh from settings, as a new `jit` process does.
"""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import azure.identity
import pytest
from azure.core.credentials import AccessToken
from azure.identity import AuthenticationRecord, CredentialUnavailableError, TokenCachePersistenceOptions
from jitcli import auth, signin
from jitcli.config import Settings
from jitcli.errors import ConfigError

TENANT = "00000000-0000-4000-8000-00000000aaaa"
SCOPE = "api://jit-broker-test"
ACCESS_TOKEN = "eyJ.fake-access-token.sig"


@dataclass
class World:
    """What the fakes share across "runs": the persisted caches (name -> accounts) and every prompt."""

    persisted: dict[str, set[str]] = field(default_factory=dict)
    prompts: list[str] = field(default_factory=list)
    made: list[FakeInteractive] = field(default_factory=list)
    keyring: bool = True
    keyring_probes: int = 0


class FakeInteractive:
    """InteractiveBrowserCredential / DeviceCodeCredential as far as jit uses them."""

    world: World
    kind = "interactive"

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.options: TokenCachePersistenceOptions | None = kwargs.get("cache_persistence_options")
        self.record: AuthenticationRecord | None = kwargs.get("authentication_record")
        self.memory: set[str] = set()
        self.world.made.append(self)

    def _cache(self) -> set[str]:
        if self.options is None:
            return self.memory
        return self.world.persisted.setdefault(self.options.name, set())

    def _prompt(self) -> AuthenticationRecord:
        self.world.prompts.append(self.kind)
        client = self.kwargs.get("client_id") or "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
        self.record = AuthenticationRecord(
            TENANT, client, "login.microsoftonline.com", f"oid-alice.{TENANT}", "alice@contoso.test"
        )
        self._cache().add(self.record.home_account_id)
        return self.record

    def authenticate(self, *, scopes: list[str], **kwargs: Any) -> AuthenticationRecord:
        assert scopes == [SCOPE + "/.default"]
        return self._prompt()

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        if self.record is None or self.record.home_account_id not in self._cache():
            self._prompt()  # silent sign-in impossible: ask the user
        return AccessToken(ACCESS_TOKEN, int(time.time()) + 3600)


class FakeBrowser(FakeInteractive):
    kind = "browser"


class FakeDeviceCode(FakeInteractive):
    kind = "device-code"


class FakeCliUnavailable:
    def __init__(self, **_: Any) -> None:
        pass

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        raise CredentialUnavailableError(message="not signed in")


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> World:
    shared = World()
    FakeInteractive.world = shared
    monkeypatch.setattr(azure.identity, "InteractiveBrowserCredential", FakeBrowser)
    monkeypatch.setattr(azure.identity, "DeviceCodeCredential", FakeDeviceCode)
    monkeypatch.setattr(azure.identity, "AzureCliCredential", FakeCliUnavailable)
    monkeypatch.setattr(azure.identity, "AzureDeveloperCliCredential", FakeCliUnavailable)

    def probe() -> bool:
        shared.keyring_probes += 1
        return shared.keyring

    monkeypatch.setattr(signin, "keyring_usable_here", probe)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return shared


def runner(tmp_path: Path, **settings: str) -> Callable[[], str]:
    """A `jit` run with these settings (JIT_* names): a fresh provider, one token."""
    env = {"JIT_SCOPE": SCOPE, "JIT_TENANT_ID": TENANT, **settings}

    def run() -> str:
        return auth.provider_for(Settings(env=env, path=tmp_path / "config" / "config.toml")).token()

    return run


def record_file(tmp_path: Path) -> Path:
    return tmp_path / "config" / signin.RECORD_FILE


@pytest.mark.parametrize("mode", ["browser", "device-code"])
def test_the_second_run_signs_in_silently_with_the_first_runs_record(
    world: World, tmp_path: Path, mode: str
) -> None:
    run = runner(tmp_path, JIT_AUTH=mode)
    assert run() == ACCESS_TOKEN
    assert world.prompts == [mode]
    first = world.made[0].kwargs
    assert first["cache_persistence_options"].name == "jit-broker"
    assert first["cache_persistence_options"].allow_unencrypted_storage is False
    assert "authentication_record" not in first

    path = record_file(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ACCESS_TOKEN not in path.read_text()  # who signed in, never a token

    assert run() == ACCESS_TOKEN
    assert world.prompts == [mode]  # not asked again
    again = world.made[1].kwargs["authentication_record"]
    assert (again.username, again.home_account_id) == ("alice@contoso.test", f"oid-alice.{TENANT}")
    assert again.client_id == world.made[0].record.client_id  # type: ignore[union-attr]


def test_the_default_chain_falls_back_to_a_remembered_device_code_sign_in(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "_has_browser", lambda: False)
    run = runner(tmp_path, JIT_AUTH="azure")
    run()
    run()
    assert world.prompts == ["device-code"]
    assert "authentication_record" in world.made[1].kwargs


def test_nothing_interactive_is_built_while_the_azure_cli_answers(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class SignedInCli(FakeCliUnavailable):
        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            return AccessToken("from-az", int(time.time()) + 3600)

    monkeypatch.setattr(azure.identity, "AzureCliCredential", SignedInCli)
    assert runner(tmp_path, JIT_AUTH="azure")() == "from-az"
    assert world.made == []
    assert world.keyring_probes == 0
    assert not record_file(tmp_path).exists()


def test_without_a_keyring_sign_in_stays_in_memory_and_jit_says_so_once(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world.keyring = False
    run = runner(tmp_path, JIT_AUTH="browser")
    run()
    run()
    assert world.prompts == ["browser", "browser"]  # as before: asked every run
    assert all("cache_persistence_options" not in made.kwargs for made in world.made)
    assert not record_file(tmp_path).exists()
    err = capsys.readouterr().err
    assert err.count("sign-in is kept in memory only") == 1
    assert "token_cache keyring-or-file" in err


def test_opting_in_keeps_sign_in_in_an_owner_only_file_without_a_keyring(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world.keyring = False
    cache = tmp_path / "home" / ".IdentityService" / "jit-broker.nocae"
    cache.parent.mkdir(parents=True)
    cache.write_text("{}")
    cache.chmod(0o644)
    run = runner(tmp_path, JIT_AUTH="device-code", JIT_TOKEN_CACHE="keyring-or-file")
    run()
    run()
    assert world.prompts == ["device-code"]
    assert world.made[0].kwargs["cache_persistence_options"].allow_unencrypted_storage is True
    assert stat.S_IMODE(record_file(tmp_path).stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert "memory only" not in capsys.readouterr().err


def test_memory_mode_never_persists_nor_probes_the_keyring(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = runner(tmp_path, JIT_AUTH="browser", JIT_TOKEN_CACHE="memory")
    run()
    run()
    assert world.prompts == ["browser", "browser"]
    assert world.keyring_probes == 0
    assert not record_file(tmp_path).exists()
    assert capsys.readouterr().err == ""


def test_a_record_made_for_another_client_is_not_used(world: World, tmp_path: Path) -> None:
    runner(tmp_path, JIT_AUTH="browser", JIT_CLIENT_ID="11111111-1111-4111-8111-111111111111")()
    run = runner(tmp_path, JIT_AUTH="browser", JIT_CLIENT_ID="22222222-2222-4222-8222-222222222222")
    run()
    assert "authentication_record" not in world.made[1].kwargs
    assert len(world.prompts) == 2
    saved = json.loads(record_file(tmp_path).read_text())
    assert saved["client_id"] == "22222222-2222-4222-8222-222222222222"
    run()
    assert len(world.prompts) == 2


def test_a_record_for_another_tenant_setting_is_not_used(world: World, tmp_path: Path) -> None:
    runner(tmp_path, JIT_AUTH="browser")()
    runner(tmp_path, JIT_AUTH="browser", JIT_TENANT_ID="contoso.onmicrosoft.com")()
    assert "authentication_record" not in world.made[1].kwargs


def test_a_damaged_record_means_signing_in_again(world: World, tmp_path: Path) -> None:
    path = record_file(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    run = runner(tmp_path, JIT_AUTH="browser")
    run()
    run()
    assert world.prompts == ["browser"]
    assert json.loads(path.read_text())["record"]


def test_an_unknown_token_cache_mode_is_a_config_error(world: World, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="token_cache"):
        runner(tmp_path, JIT_AUTH="browser", JIT_TOKEN_CACHE="disk")()
