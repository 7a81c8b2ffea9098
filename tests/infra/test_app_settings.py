"""The function app gets every setting the broker reads, named as in local.settings.sample.json, and reaches
storage by identity only."""

from __future__ import annotations

import json
import re

import pytest

from jitbroker.config import ConfigError, Settings
from tests.infra.bicep import INFRA, ROOT, parse

# Sample settings deliberately absent in Azure, each for a reason the deploy guide repeats:
NOT_IN_AZURE = {
    "FUNCTIONS_WORKER_RUNTIME": "Flex Consumption takes the runtime from functionAppConfig.runtime",
    "AzureWebJobsStorage": "replaced by the identity-based AzureWebJobsStorage__* settings",
    "JIT_TABLE_CONNECTION_STRING": "no keys in Azure: the broker reaches its tables by identity",
}


def _broker_settings() -> dict[str, object]:
    settings: dict[str, object] = parse(INFRA / "main.bicep")["variables"]["brokerSettings"]["value"]
    return settings


def _host_settings() -> dict[str, object]:
    settings: dict[str, object] = parse(INFRA / "app" / "broker.bicep")["variables"]["hostSettings"]["value"]
    return settings


def _sample_names() -> set[str]:
    sample = json.loads((ROOT / "local.settings.sample.json").read_text(encoding="utf-8"))
    return set(sample["Values"])


def test_every_sample_setting_is_an_app_setting_unless_azure_replaces_it():
    missing = _sample_names() - set(NOT_IN_AZURE) - set(_broker_settings()) - set(_host_settings())
    assert missing == set()


def test_the_replaced_settings_are_really_absent():
    present = set(NOT_IN_AZURE) & (set(_broker_settings()) | set(_host_settings()))
    assert present == set()


def test_no_app_setting_is_unknown_to_the_sample_or_the_host():
    host_prefixes = ("AzureWebJobsStorage__", "APPLICATIONINSIGHTS_")
    unknown = {n for n in _broker_settings() if n not in _sample_names() and not n.startswith(host_prefixes)}
    assert unknown == set()


def test_every_setting_the_broker_requires_is_set():
    with pytest.raises(ConfigError) as err:
        Settings.from_env({})
    required = set(re.findall(r"\b([A-Z][A-Z0-9_]+) is required", str(err.value)))
    assert required, "the broker's config no longer names required settings; update this test"
    assert required - set(_broker_settings()) == set()


def test_the_broker_sees_callers_through_the_platform_forwarded_for_header():
    assert _broker_settings()["JIT_CLIENT_ADDRESS_FROM"] == "x-forwarded-for"


def test_the_broker_reaches_its_tables_by_endpoint_and_identity():
    settings = _broker_settings()
    assert "JIT_TABLE_ENDPOINT" in settings
    assert "AZURE_CLIENT_ID" in settings


def test_host_storage_is_identity_based_with_the_user_assigned_identity():
    host = _host_settings()
    assert host["AzureWebJobsStorage__credential"] == "managedidentity"
    assert {
        "AzureWebJobsStorage__clientId",
        "AzureWebJobsStorage__blobServiceUri",
        "AzureWebJobsStorage__queueServiceUri",
        "AzureWebJobsStorage__tableServiceUri",
    } <= set(host)
    assert "APPLICATIONINSIGHTS_AUTHENTICATION_STRING" in host


def test_no_storage_key_or_connection_string_appears_anywhere_in_infra():
    for path in INFRA.rglob("*.bicep"):
        text = path.read_text(encoding="utf-8")
        assert "listKeys(" not in text, path
        assert "AccountKey=" not in text, path


def test_storage_refuses_shared_keys_and_public_blobs():
    storage = parse(INFRA / "core" / "storage" / "storage-account.bicep")["resources"]["storage"]
    props = storage["config"]["properties"]
    assert props["allowSharedKeyAccess"] is False
    assert props["allowBlobPublicAccess"] is False
    assert props["minimumTlsVersion"] == "TLS1_2"


def test_the_broker_tables_are_created_with_the_configured_prefix():
    tables = parse(INFRA / "main.bicep")["modules"]["storage"]["config"]["params"]["tables"]
    assert tables == ["${tablePrefix}grants", "${tablePrefix}expiry", "${tablePrefix}audit"]


def test_the_app_runs_python_311_on_flex_consumption():
    site = parse(INFRA / "app" / "broker.bicep")["resources"]["site"]["config"]
    assert site["kind"] == "functionapp,linux"
    assert site["properties"]["functionAppConfig"]["runtime"] == {"name": "python", "version": "3.11"}
    assert site["properties"]["httpsOnly"] is True
    plan = parse(INFRA / "core" / "host" / "flex-consumption-plan.bicep")["resources"]["plan"]["config"]
    assert plan["sku"] == {"tier": "FlexConsumption", "name": "FC1"}
