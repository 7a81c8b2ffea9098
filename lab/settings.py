"""The app settings a broker needs to run against a lab: the same names as in Azure, with the lab's values.

The broker is configured, never switched: these are the names of `local.settings.sample.json` plus the
environment the platform provides in Azure Functions (`IDENTITY_ENDPOINT`, `IDENTITY_HEADER`) and the CA trust
the lab needs (`REQUESTS_CA_BUNDLE`, `SSL_CERT_FILE`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from lab.issuer import LAB_BROKER_IDENTITY
from lab.scenario import Scenario

if TYPE_CHECKING:
    from lab.azurite import Azurite
    from lab.issuer import TokenIssuer
    from lab.tls import LabCA

DEMO_SUBSCRIPTION = "00000000-0000-4000-8000-0000000000a1"
DEMO_ALLOWED_SCOPES = f"/subscriptions/{DEMO_SUBSCRIPTION}/resourceGroups/rg-jit-demo"
# The lab's callers are not on the internet: they call from loopback (`jit-lab up`, the CLI tests) or from the
# network lab's namespaces and the test suites' forwarded addresses in the documentation ranges, which the
# broker refuses as sources unless told otherwise. The lab names exactly those ranges; in Azure the setting is
# empty. The lab's VNets (192.0.2.0/24) stay out: a lab caller cannot open a door to a VM's private address.
LAB_SOURCE_RANGES = "127.0.0.0/8,::1/128,198.51.100.0/24,203.0.113.0/24,2001:db8::/32"


def broker_settings(
    scenario: Scenario,
    *,
    issuer_url: str,
    arm_url: str,
    table_connection_string: str,
    ca_bundle: Path | str,
    identity_endpoint: str,
    identity_header: str,
    managed_identity_client_id: str = LAB_BROKER_IDENTITY.client_id,
    allowed_scopes: str = DEMO_ALLOWED_SCOPES,
    token_versions: str = "2",  # noqa: S107 - versions, not a secret
    overrides: Mapping[str, str] | None = None,
    queue_connection_string: str | None = None,
) -> dict[str, str]:
    """The environment for a broker process in this lab; `overrides` replace or add names last.

    The events queue is reached with `queue_connection_string`, by default the table's (Azurite's string
    names both endpoints).
    """
    tenant = scenario.tenant
    settings = {
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "AzureWebJobsStorage": table_connection_string,
        "JIT_AUTHORITY_HOST": issuer_url.rstrip("/"),
        "JIT_TENANT_ID": tenant.tenant_id,
        "JIT_API_CLIENT_ID": tenant.api_client_id,
        "JIT_API_APP_ID_URI": tenant.app_id_uri,
        "JIT_TOKEN_VERSIONS": token_versions,
        # Entra's v1 issuer is https://sts.windows.net/{tenant}/; the lab's issuer serves its own v1 form.
        "JIT_V1_ISSUER": f"{issuer_url.rstrip('/')}/{tenant.tenant_id}/",
        "JIT_REQUESTER_ROLE": "JIT.Requester",
        "JIT_ADMIN_ROLE": "JIT.Admin",
        "JIT_AUDITOR_ROLE": "JIT.Auditor",
        "JIT_APPROVER_ROLE": "JIT.Approver",
        "JIT_APPROVAL_WAIT": "PT1H",
        "JIT_APPROVAL_USE_WINDOW": "PT15M",
        "JIT_EXPIRING_MINUTES": "10",
        "JIT_API_SCOPE": "user_impersonation",
        "JIT_ALLOWED_CLIENT_APPS": "",
        "JIT_KEY_REFRESH_COOLDOWN_SECONDS": "300",
        # The web page (docs/web.md) signs in as the broker's own app registration, as in Azure by default.
        "JIT_WEB_CLIENT_ID": "",
        "JIT_ALLOWED_SCOPES": allowed_scopes,
        "JIT_PRIORITY_MIN": "100",
        "JIT_PRIORITY_MAX": "199",
        "JIT_DEFAULT_DURATION": "PT1H",
        "JIT_MAX_DURATION": "PT4H",
        "JIT_MAX_TOTAL_DURATION": "PT8H",
        "JIT_MAX_SOURCE_PREFIX_V4": "32",
        "JIT_MAX_SOURCE_PREFIX_V6": "128",
        # uvicorn sees the caller's socket; in Azure the platform's X-Forwarded-For is used instead.
        "JIT_CLIENT_ADDRESS_FROM": "peer",
        "JIT_TOPOLOGY_CACHE_SECONDS": "60",
        "JIT_SOURCE_OVERRIDE_ROLE": "JIT.SourceOverride",
        "JIT_ALLOW_PRIVATE_SOURCES": "false",
        "JIT_EXTRA_SOURCE_RANGES": LAB_SOURCE_RANGES,
        "JIT_MAX_OPEN_GRANTS_PER_PRINCIPAL": "10",
        "JIT_MAX_SOURCES_PER_PRINCIPAL": "3",
        # The emulator answers on loopback: poll its long-running operations briskly.
        "JIT_ARM_POLL_SECONDS": "0.2",
        "JIT_ARM_TIMEOUT_SECONDS": "60",
        "JIT_ANSWER_BUDGET_SECONDS": "20",
        "JIT_ARM_ENDPOINT": arm_url.rstrip("/"),
        # Azurite takes the connection string (shared key); the endpoint form is Azure's identity-based one.
        "JIT_TABLE_ENDPOINT": "",
        "JIT_TABLE_CONNECTION_STRING": table_connection_string,
        "JIT_TABLE_PREFIX": "jit",
        "AZURE_CLIENT_ID": managed_identity_client_id,
        "JIT_SWEEP_SCHEDULE": "0 * * * * *",
        "JIT_SWEEP_BATCH": "200",
        "JIT_PENDING_GRACE": "PT2M",
        "JIT_SWEEP_BUDGET_SECONDS": "90",
        # Notifications (docs/notifications.md): Azurite's queue by connection string; no webhooks unless a
        # test or the demo names its receiver (lab.webhooks.WebhookReceiver.settings() as overrides).
        "JIT_EVENTS_QUEUE": "jit-events",
        "JIT_QUEUE_ENDPOINT": "",
        "JIT_QUEUE_CONNECTION_STRING": queue_connection_string or table_connection_string,
        "JIT_WEBHOOKS": "",
        "JIT_WEBHOOK_SECRET": "",
        "JIT_PUBLIC_URL": "",
        # What Azure Functions provides to a managed-identity app, served by the lab's token issuer.
        "IDENTITY_ENDPOINT": identity_endpoint,
        "IDENTITY_HEADER": identity_header,
        "REQUESTS_CA_BUNDLE": str(ca_bundle),
        "SSL_CERT_FILE": str(ca_bundle),
    }
    settings.update(overrides or {})
    return settings


def lab_broker_settings(
    scenario: Scenario,
    *,
    ca: LabCA,
    issuer: TokenIssuer,
    arm_url: str,
    azurite: Azurite,
    allowed_scopes: str = DEMO_ALLOWED_SCOPES,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """`broker_settings` read off the running lab parts themselves."""
    return broker_settings(
        scenario,
        issuer_url=issuer.url,
        arm_url=arm_url,
        table_connection_string=azurite.connection_string,
        ca_bundle=ca.ca_bundle,
        identity_endpoint=issuer.identity_endpoint,
        identity_header=issuer.identity_header,
        allowed_scopes=allowed_scopes,
        overrides=overrides,
    )


def redacted(settings: Mapping[str, str]) -> dict[str, str]:
    """The settings with the lab's one secret (the managed-identity header) masked, for printing.

    Azurite's account key stays: it is the public development key, the same on every machine.
    """
    masked = dict(settings)
    if masked.get("IDENTITY_HEADER"):
        masked["IDENTITY_HEADER"] = "***"
    if masked.get("JIT_WEBHOOK_SECRET"):  # set only when a test or the demo turns webhooks on
        masked["JIT_WEBHOOK_SECRET"] = "***"  # noqa: S105 - the mask, not a secret
    return masked
