"""The infra for notifications: the events and poison queues, the queue trigger's identity-based connection,
the webhook secrets in Key Vault behind references the identity may read, and nothing in the clear."""

from __future__ import annotations

import json
from typing import Any

from tests.infra.bicep import INFRA, ROOT, parse

MAIN = INFRA / "main.bicep"
BROKER = INFRA / "app" / "broker.bicep"
RBAC = INFRA / "app" / "rbac.bicep"
VAULT = INFRA / "core" / "security" / "key-vault.bicep"
QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"


def broker_settings() -> dict[str, Any]:
    settings: dict[str, Any] = parse(MAIN)["variables"]["brokerSettings"]["value"]
    return settings


def variable(name: str) -> Any:
    return parse(MAIN)["variables"][name]["value"]


def test_the_events_queue_and_its_poison_queue_are_created_in_the_broker_storage() -> None:
    storage = parse(MAIN)["modules"]["storage"]["config"]["params"]
    assert storage["queues"] == ["eventsQueue", "${eventsQueue}-poison"]
    assert parse(MAIN)["parameters"]["eventsQueue"]["default"] == "jit-events"
    assert broker_settings()["JIT_EVENTS_QUEUE"] == "eventsQueue"  # the name %JIT_EVENTS_QUEUE% resolves to


def test_the_publisher_reaches_the_queue_by_identity_and_never_by_key() -> None:
    settings = broker_settings()
    assert (
        settings["JIT_QUEUE_ENDPOINT"]
        == "https://${storage.outputs.name}.queue.${environment().suffixes.storage}"
    )
    assert settings["JIT_QUEUE_CONNECTION_STRING"] == ""


def test_the_queue_trigger_connection_is_identity_based_as_the_user_assigned_identity() -> None:
    host = parse(BROKER)["variables"]["hostSettings"]["value"]
    assert host["JitEvents__queueServiceUri"] == "queueServiceUri"
    assert host["JitEvents__credential"] == "managedidentity"
    assert host["JitEvents__clientId"] == "identityClientId"
    roles = parse(RBAC)["variables"]["roleIds"]["value"]
    assert roles["storageQueueDataContributor"] == QUEUE_DATA_CONTRIBUTOR  # send, read, delete, poison


def test_webhooks_and_their_signing_key_are_key_vault_references_when_given() -> None:
    settings = broker_settings()
    for name, reference, secret in (
        ("JIT_WEBHOOKS", "webhooksReference", "webhooksSecretName"),
        ("JIT_WEBHOOK_SECRET", "webhookSecretReference", "webhookSecretName"),
    ):
        operands = settings[name]["operator"]["operands"]
        assert operands["true_value"] == ""  # not given: notifications off
        assert operands["false_value"] == reference
        assert (
            variable(reference)
            == f"@Microsoft.KeyVault(VaultName=${{keyVaultName}};SecretName=${{{secret}}})"
        )
    params = parse(MAIN)["parameters"]
    for name in ("webhooks", "webhookSecret"):
        assert {"type": "secure"} in params[name]["decorators"]


def test_the_app_resolves_references_as_its_identity_which_may_read_the_vault() -> None:
    site = parse(BROKER)["resources"]["site"]["config"]["properties"]
    assert site["keyVaultReferenceIdentity"] == "identityId"
    rbac = parse(RBAC)
    assert rbac["variables"]["roleIds"]["value"]["keyVaultSecretsUser"] == KEY_VAULT_SECRETS_USER
    assignment = rbac["resources"]["secretsUser"]["config"]
    assert assignment["scope"] == "keyVault"
    vault_name = parse(MAIN)["modules"]["rbac"]["config"]["params"]["keyVaultName"]
    assert "'keyVault'" in str(vault_name)  # keyVault.outputs.name: the vault main.bicep deploys


def test_the_vault_uses_azure_rbac_and_soft_delete() -> None:
    vault = parse(VAULT)["resources"]["vault"]["config"]["properties"]
    assert vault["enableRbacAuthorization"] is True
    assert vault["enableSoftDelete"] is True
    assert {"type": "secure"} in parse(VAULT)["parameters"]["secrets"]["decorators"]


def test_azd_passes_the_notification_settings_from_its_environment() -> None:
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert parameters["webhooks"]["value"] == "${JIT_WEBHOOKS=}"
    assert parameters["webhookSecret"]["value"] == "${JIT_WEBHOOK_SECRET=}"
    assert parameters["publicUrl"]["value"] == "${JIT_PUBLIC_URL=}"


def test_the_sample_settings_name_every_notification_setting() -> None:
    sample = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    names = {"JIT_EVENTS_QUEUE", "JIT_QUEUE_ENDPOINT", "JIT_QUEUE_CONNECTION_STRING"}
    names |= {"JIT_WEBHOOKS", "JIT_WEBHOOK_SECRET", "JIT_PUBLIC_URL"}
    assert names <= set(sample)
    assert sample["JIT_WEBHOOKS"] == "" and sample["JIT_WEBHOOK_SECRET"] == ""
