"""The settings a lab implies are the broker's own app settings, and the broker's config accepts them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jitbroker.config import Settings
from lab.scenario import Scenario
from lab.settings import DEMO_ALLOWED_SCOPES, broker_settings, redacted

REPO = Path(__file__).resolve().parents[2]
PLATFORM_AND_TRUST = {"IDENTITY_ENDPOINT", "IDENTITY_HEADER", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"}


def lab_settings(scenario: Scenario, **overrides: Any) -> dict[str, str]:
    return broker_settings(
        scenario,
        issuer_url="https://127.0.0.1:4001/",
        arm_url="https://127.0.0.1:4002",
        table_connection_string="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        "TableEndpoint=http://127.0.0.1:4003/devstoreaccount1;",
        ca_bundle="/tmp/lab/ca.pem",
        identity_endpoint="http://127.0.0.1:4005/msi/token",
        identity_header="lab-header",
        **overrides,
    )


def test_names_are_exactly_the_sample_app_settings_plus_what_the_platform_provides(scenario):
    sample = json.loads((REPO / "local.settings.sample.json").read_text())["Values"]

    assert set(lab_settings(scenario)) == set(sample) | PLATFORM_AND_TRUST


def test_the_broker_config_accepts_the_lab_settings(scenario):
    settings = Settings.from_env(lab_settings(scenario))

    assert settings.authority_host == "https://127.0.0.1:4001"
    assert settings.tenant_id == scenario.tenant.tenant_id
    assert settings.api_client_id == scenario.tenant.api_client_id
    assert settings.app_id_uri == scenario.tenant.app_id_uri
    assert settings.arm_endpoint == "https://127.0.0.1:4002"
    assert settings.client_address_from == "peer"
    assert settings.allowed_scopes == (DEMO_ALLOWED_SCOPES,)
    assert settings.table_connection_string is not None


def test_lab_values_leave_no_placeholder_behind(scenario):
    for name, value in lab_settings(scenario).items():
        assert "<" not in value, name


def test_overrides_come_last(scenario):
    assert lab_settings(scenario, overrides={"JIT_TOKEN_VERSIONS": "1,2"})["JIT_TOKEN_VERSIONS"] == "1,2"


def test_printing_masks_the_identity_header_only(scenario):
    settings = lab_settings(scenario)

    shown = redacted(settings)

    assert shown["IDENTITY_HEADER"] == "***"
    assert "lab-header" not in json.dumps(shown)
    assert {k: v for k, v in shown.items() if k != "IDENTITY_HEADER"} == {
        k: v for k, v in settings.items() if k != "IDENTITY_HEADER"
    }
