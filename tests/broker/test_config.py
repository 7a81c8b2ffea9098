"""Settings come from the environment with the sample's names, validated once with every problem named."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import pytest

from jitbroker.config import ConfigError, Settings

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
LAB_VALUES = {
    **SAMPLE,
    "JIT_TENANT_ID": "7d3c2f6e-0a1b-4c5d-8e9f-0123456789ab",
    "JIT_API_CLIENT_ID": "0b8f5c4e-6d7a-4b3c-9e2f-a1b2c3d4e5f6",
    "JIT_API_APP_ID_URI": "api://jit-broker-lab",
    "JIT_ALLOWED_SCOPES": "/subscriptions/00000000-0000-4000-8000-0000000000a1",
    "JIT_TABLE_ENDPOINT": "https://account.table.core.windows.net",
    "AZURE_CLIENT_ID": "",
}


def test_every_setting_the_code_reads_is_in_the_sample_and_back() -> None:
    source = (ROOT / "jitbroker" / "config.py").read_text()
    read = {name for name in SAMPLE if f'"{name}"' in source}
    platform = {"FUNCTIONS_WORKER_RUNTIME", "AzureWebJobsStorage"}
    assert read == set(SAMPLE) - platform
    named = set(re.findall(r'"((?:JIT_|AZURE_)[A-Z0-9_]+)"', source))
    assert named <= set(SAMPLE)


def test_sample_values_with_placeholders_filled_make_valid_settings() -> None:
    settings = Settings.from_env(LAB_VALUES)
    assert settings.max_duration == timedelta(hours=4)
    assert settings.token_versions == frozenset({2})
    assert settings.allowed_scopes == ("/subscriptions/00000000-0000-4000-8000-0000000000a1",)
    assert settings.client_address_from == "x-forwarded-for"
    assert settings.azure_client_id is None


def test_the_untouched_sample_is_refused_naming_each_placeholder() -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(SAMPLE)
    message = str(raised.value)
    for name in ("JIT_TENANT_ID", "JIT_API_CLIENT_ID", "AZURE_CLIENT_ID"):
        assert f"{name} is still the placeholder" in message


@pytest.mark.parametrize(
    ("name", "value", "complaint"),
    [
        ("JIT_AUTHORITY_HOST", "http://login.example", "https://"),
        ("JIT_ARM_ENDPOINT", "http://127.0.0.1:1", "https://"),
        ("JIT_TOKEN_VERSIONS", "3", "1, 2 or 1,2"),
        ("JIT_PRIORITY_MIN", "50", "between 100 and 4096"),
        ("JIT_PRIORITY_MAX", "99", "between 100 and 4096"),
        ("JIT_MAX_DURATION", "forever", "not a duration"),
        ("JIT_MAX_DURATION", "PT10H", "JIT_MAX_DURATION <= JIT_MAX_TOTAL_DURATION"),
        ("JIT_ALLOWED_SCOPES", "/resourceGroups/x", "/subscriptions/<id>"),
        ("JIT_ALLOWED_SCOPES", "", "JIT_ALLOWED_SCOPES is required"),
        ("JIT_CLIENT_ADDRESS_FROM", "client-ip", "x-forwarded-for, peer"),
        ("JIT_TABLE_PREFIX", "jit-x", "letters and digits"),
        ("JIT_SWEEP_BATCH", "0", "between 1 and 5000"),
        ("JIT_TENANT_ID", "", "JIT_TENANT_ID is required"),
        ("JIT_API_SCOPE", "api://jit-broker-lab/user_impersonation", "scp claim"),
        ("JIT_API_SCOPE", "user_impersonation openid", "scp claim"),
        ("JIT_ALLOWED_CLIENT_APPS", "azure-cli", "not client ids"),
        ("JIT_KEY_REFRESH_COOLDOWN_SECONDS", "1", "between 10 and 3600"),
    ],
)
def test_a_bad_setting_is_named_with_what_is_wrong(name, value, complaint) -> None:
    with pytest.raises(ConfigError, match="invalid broker settings") as raised:
        Settings.from_env({**LAB_VALUES, name: value})
    assert name in str(raised.value) or "JIT_MAX_DURATION" in str(raised.value)
    assert complaint in str(raised.value)


def test_table_storage_must_be_configured_one_way_or_the_other() -> None:
    env = {**LAB_VALUES, "JIT_TABLE_ENDPOINT": "", "JIT_TABLE_CONNECTION_STRING": ""}
    with pytest.raises(ConfigError, match="JIT_TABLE_ENDPOINT"):
        Settings.from_env(env)


def test_settings_are_frozen() -> None:
    settings = Settings.from_env(LAB_VALUES)
    with pytest.raises(AttributeError):
        settings.max_duration = timedelta(days=1)  # type: ignore[misc]


def test_token_settings_default_to_delegated_tokens_from_any_client_and_a_five_minute_cooldown() -> None:
    env = {
        name: value
        for name, value in LAB_VALUES.items()
        if name not in ("JIT_API_SCOPE", "JIT_ALLOWED_CLIENT_APPS", "JIT_KEY_REFRESH_COOLDOWN_SECONDS")
    }
    settings = Settings.from_env(env)
    assert settings.api_scope == "user_impersonation"
    assert settings.allowed_client_apps == frozenset()
    assert settings.key_refresh_cooldown_seconds == 300
    assert Settings.from_env(LAB_VALUES).allowed_client_apps == frozenset()


def test_allowed_client_apps_are_a_comma_separated_list_of_client_ids() -> None:
    value = " 04B07795-8DDB-461A-BBEE-02F9E1BF7B46, 0a0a0a0a-1111-4222-8333-444444444444 ,"
    settings = Settings.from_env({**LAB_VALUES, "JIT_ALLOWED_CLIENT_APPS": value})
    assert settings.allowed_client_apps == {
        "04b07795-8ddb-461a-bbee-02f9e1bf7b46",
        "0a0a0a0a-1111-4222-8333-444444444444",
    }
