"""ARM's wire protocol as the emulator speaks it: auth, api-version, LRO headers, etags, 429s, faults."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.network import NetworkManagementClient
from azure.mgmt.network.models import SecurityRule

from lab.arm import ArmEmulator
from lab.arm.admin import ArmAdmin
from lab.arm.versions import KNOWN
from lab.scenario import Scenario
from lab.tls import LabCA
from tests.arm.conftest import RG, SUB, FixedCredential, arm_code

API = "api-version=2026-03-01"
NSG_PATH = (
    f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network/networkSecurityGroups/web-01-nsg"
)
VM_PATH = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines/web-01"
RULE_BODY = {
    "properties": {
        "protocol": "Tcp",
        "sourceAddressPrefix": "203.0.113.10/32",
        "sourcePortRange": "*",
        "destinationAddressPrefix": "192.0.2.4",
        "destinationPortRange": "22",
        "access": "Allow",
        "priority": 110,
        "direction": "Inbound",
    }
}


class Raw:
    """Plain HTTPS calls to the emulator, as curl would make them."""

    def __init__(self, url: str, ca: LabCA) -> None:
        self.url, self.verify = url, str(ca.ca_bundle)

    def __call__(
        self, method: str, path: str, *, token: str | None = "t", **kwargs: Any
    ) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers.setdefault("Authorization", f"Bearer {token}")
        return requests.request(
            method, self.url + path, headers=headers, verify=self.verify, timeout=30, **kwargs
        )


@pytest.fixture
def raw(arm_emulator: ArmEmulator, lab_ca: LabCA, lab: ArmAdmin) -> Raw:
    return Raw(arm_emulator.url, lab_ca)


@pytest.fixture
def private_lab(demo: Scenario, lab_ca: LabCA) -> Iterator[ArmEmulator]:
    """An emulator of the test's own, accepting only the token 'good-token'."""
    with ArmEmulator(demo, lab_ca, token_validator=lambda token: token == "good-token") as emulator:
        yield emulator


def test_missing_bearer_token_is_401_authentication_failed(raw: Raw) -> None:
    response = raw("GET", f"{NSG_PATH}?{API}", token=None)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "AuthenticationFailed"
    assert "'Authorization' header is missing" in response.json()["error"]["message"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")


def test_malformed_authorization_header_is_401(raw: Raw) -> None:
    response = raw("GET", f"{NSG_PATH}?{API}", headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert response.status_code == 401
    assert "invalid format" in response.json()["error"]["message"]


def test_token_validator_decides_and_sdk_sees_client_authentication_error(
    private_lab: ArmEmulator, lab_ca: LabCA
) -> None:
    call = Raw(private_lab.url, lab_ca)
    assert call("GET", f"{NSG_PATH}?{API}", token="good-token").status_code == 200
    refused = call("GET", f"{NSG_PATH}?{API}", token="forged")
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "InvalidAuthenticationToken")
    client = NetworkManagementClient(
        FixedCredential(), SUB, base_url=private_lab.url, connection_verify=str(lab_ca.ca_bundle)
    )
    with pytest.raises(ClientAuthenticationError) as caught:
        client.network_security_groups.get(RG, "web-01-nsg")
    assert arm_code(caught.value) == "InvalidAuthenticationToken"


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("", "MissingApiVersionParameter"),
        ("?api-version=", "InvalidApiVersionParameter"),
        ("?api-version=latest", "InvalidApiVersionParameter"),
        ("?api-version=garbage", "InvalidApiVersionParameter"),
        ("?api-version=2026-13-01", "InvalidApiVersionParameter"),
        ("?api-version=2099-01-01", "NoRegisteredProviderFound"),
        ("?api-version=2026-04-01", "NoRegisteredProviderFound"),  # a Compute version, not a Network one
        ("?api-version=2024-07-01-preview", "NoRegisteredProviderFound"),
    ],
)
def test_api_version_is_required_and_must_be_one_the_provider_serves(raw: Raw, query: str, code: str) -> None:
    response = raw("GET", NSG_PATH + query)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code


def test_an_unknown_date_version_is_no_registered_provider_found_listing_the_supported_ones(raw: Raw) -> None:
    message = raw("GET", f"{NSG_PATH}?api-version=2099-01-01").json()["error"]["message"]
    assert message.startswith(
        "No registered resource provider found for location 'westeurope' and API version '2099-01-01' for "
        "type 'networkSecurityGroups'. The supported api-versions are '2014-12-01-preview, "
    )
    assert "2025-05-01, 2025-07-01, 2026-03-01'. The supported locations are 'westeurope'." in message
    rule = raw("GET", f"{NSG_PATH}/securityRules/allow-https-inbound?api-version=2099-01-01").json()
    assert "for type 'networkSecurityGroups/securityRules'" in rule["error"]["message"]


def test_a_value_that_is_no_date_gets_arms_own_invalid_api_version_answer(raw: Raw) -> None:
    message = raw("GET", f"{NSG_PATH}?api-version=latest").json()["error"]["message"]
    assert message.startswith("The api-version 'latest' is invalid. The supported versions are '2024-08-01,")


@pytest.mark.parametrize(
    ("path", "version"),
    [
        (NSG_PATH, "2026-03-01"),  # azure-mgmt-network 33.1.0
        (NSG_PATH, "2025-05-01"),  # what cloud-provider-azure's recordings used
        (NSG_PATH, "2018-10-01"),
        (VM_PATH, "2026-04-01"),  # azure-mgmt-compute 39.0.0
        (VM_PATH, "2024-07-01"),
    ],
)
def test_versions_the_providers_have_are_served(raw: Raw, path: str, version: str) -> None:
    assert raw("GET", f"{path}?api-version={version}").status_code == 200


def test_the_installed_sdks_default_api_versions_are_served(
    network: NetworkManagementClient, compute: ComputeManagementClient, lab: ArmAdmin
) -> None:
    network.network_security_groups.get(RG, "web-01-nsg")
    network.network_interfaces.get(RG, "web-01-nic")
    compute.virtual_machines.get(RG, "web-01")
    sent = {(r["op"].split("/")[0], r["query"]) for r in lab.requests()}
    assert all(r["status"] == 200 for r in lab.requests())
    for provider, query in sent:
        version = query.removeprefix("api-version=")
        assert version in KNOWN[provider.lower()], f"{provider} {version}: add it to lab/arm/versions.py"


def test_the_sdk_sees_no_registered_provider_found_for_a_version_azure_does_not_have(
    network: NetworkManagementClient,
) -> None:
    with pytest.raises(HttpResponseError) as caught:
        network.network_security_groups.get(RG, "web-01-nsg", api_version="2099-01-01")
    assert caught.value.status_code == 400
    assert arm_code(caught.value) == "NoRegisteredProviderFound"


def test_rule_put_answers_201_updating_with_async_operation_and_retry_after(raw: Raw, lab: ArmAdmin) -> None:
    lab.set_knobs(lro_ms=1500)
    created = raw("PUT", f"{NSG_PATH}/securityRules/jit-raw?{API}", json=RULE_BODY)
    assert created.status_code == 201
    body = created.json()
    assert body["properties"]["provisioningState"] == "Updating"
    assert (
        body["name"] == "jit-raw" and body["type"] == "Microsoft.Network/networkSecurityGroups/securityRules"
    )
    assert created.headers["ETag"] == body["etag"] and body["etag"].startswith('W/"')
    assert created.headers["Retry-After"] == "2"
    status_url = created.headers["Azure-AsyncOperation"]
    assert f"/subscriptions/{SUB}/providers/Microsoft.Network/locations/westeurope/operations/" in status_url
    assert status_url.endswith(f"?{API}")
    assert int(created.headers["x-ms-ratelimit-remaining-subscription-writes"]) > 0

    polled = raw("GET", status_url.removeprefix(raw.url))
    assert polled.json() == {"status": "InProgress"}
    assert int(polled.headers["Retry-After"]) in (1, 2)
    assert "x-ms-ratelimit-remaining-subscription-reads" in polled.headers


def test_rule_delete_answers_202_with_async_operation_and_location(raw: Raw, lab: ArmAdmin) -> None:
    raw("PUT", f"{NSG_PATH}/securityRules/jit-raw?{API}", json=RULE_BODY)
    lab.nsgs()  # settles the create
    deleted = raw("DELETE", f"{NSG_PATH}/securityRules/jit-raw?{API}")
    assert deleted.status_code == 202
    assert deleted.content == b""
    assert "/operations/" in deleted.headers["Azure-AsyncOperation"]
    assert "/operationResults/" in deleted.headers["Location"]
    assert "x-ms-ratelimit-remaining-subscription-deletes" in deleted.headers
    result = raw("GET", deleted.headers["Location"].removeprefix(raw.url))
    assert result.status_code == 204
    assert raw("DELETE", f"{NSG_PATH}/securityRules/jit-raw?{API}").status_code == 204  # already gone


def test_nsg_put_honours_if_match_and_changes_the_etag(raw: Raw) -> None:
    current = raw("GET", f"{NSG_PATH}?{API}")
    etag = current.headers["ETag"]
    nsg = current.json()
    body = {
        "location": nsg["location"],
        "properties": {
            "securityRules": [
                {"name": r["name"], "properties": r["properties"]} for r in nsg["properties"]["securityRules"]
            ]
        },
    }
    stale = raw(
        "PUT",
        f"{NSG_PATH}?{API}",
        json=body,
        headers={"If-Match": 'W/"00000000-0000-0000-0000-000000000000"'},
    )
    assert stale.status_code == 412
    assert stale.json()["error"]["code"] == "PreconditionFailed"
    assert stale.json()["error"]["message"] == "Precondition failed."
    [detail] = stale.json()["error"]["details"]
    assert detail == {
        "code": "PreconditionFailedEtagMismatch",
        "message": 'Etag provided in if-match header W/"00000000-0000-0000-0000-000000000000" does not match '
        f"etag {etag} of resource {NSG_PATH} in NRP data store.",
    }
    fresh = raw("PUT", f"{NSG_PATH}?{API}", json=body, headers={"If-Match": etag})
    assert fresh.status_code == 200
    assert fresh.json()["properties"]["provisioningState"] == "Updating"
    assert fresh.headers["ETag"] != etag
    again = raw("PUT", f"{NSG_PATH}?{API}", json=body, headers={"If-Match": etag})
    assert again.status_code == 412  # the old etag is stale now


def test_throttled_reads_get_429_and_azure_core_retries_after_retry_after(
    network: NetworkManagementClient, lab: ArmAdmin
) -> None:
    lab.set_knobs(read_budget=1, budget_window_s=1)
    network.network_security_groups.get(RG, "web-01-nsg")
    nsg = network.network_security_groups.get(RG, "web-01-nsg")  # 429, waits Retry-After: 1, retried
    assert nsg.name == "web-01-nsg"
    assert [r["status"] for r in lab.requests()] == [200, 429, 200]


def test_throttle_body_and_headers(raw: Raw, lab: ArmAdmin) -> None:
    lab.set_knobs(write_budget=0, budget_window_s=60)
    refused = raw("PUT", f"{NSG_PATH}/securityRules/jit-raw?{API}", json=RULE_BODY)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "SubscriptionRequestsThrottled"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["x-ms-ratelimit-remaining-subscription-writes"] == "0"
    assert raw("GET", f"{NSG_PATH}?{API}").status_code == 200  # reads have their own budget


def test_injected_500_is_retried_by_azure_core_and_counted(
    network: NetworkManagementClient, lab: ArmAdmin
) -> None:
    lab.add_fault(method="GET", match="/networkInterfaces/web-01-nic", status=500, code="InternalServerError")
    assert network.network_interfaces.get(RG, "web-01-nic").name == "web-01-nic"
    assert [r["status"] for r in lab.requests()] == [500, 200]
    assert lab.faults() == []


def test_injected_409_without_retry_after_surfaces_to_the_caller(
    network: NetworkManagementClient, lab: ArmAdmin
) -> None:
    lab.add_fault(method="PUT", match="web-01-nsg", status=409, code="AnotherOperationInProgress", count=2)
    with pytest.raises(HttpResponseError) as caught:
        network.security_rules.begin_create_or_update(RG, "web-01-nsg", "jit-x", SecurityRule(RULE_BODY))
    assert arm_code(caught.value) == "AnotherOperationInProgress"
    assert lab.faults()[0]["count"] == 1


def test_a_hanging_request_does_not_block_others(private_lab: ArmEmulator, lab_ca: LabCA) -> None:
    admin = ArmAdmin(private_lab.url, verify=lab_ca.ca_bundle)
    call = Raw(private_lab.url, lab_ca)
    admin.add_fault(method="GET", match="web-01-nic", hang_ms=120_000)
    nic_path = (
        f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network/networkInterfaces/web-01-nic"
    )
    hanging = threading.Thread(
        target=lambda: _swallow(lambda: call("GET", f"{nic_path}?{API}", token="good-token"))
    )
    hanging.start()
    _wait_until(lambda: admin.faults() == [])  # the hanging request has taken its fault
    assert call("GET", f"{NSG_PATH}?{API}", token="good-token").status_code == 200
    assert hanging.is_alive()
    assert [r["path"] for r in admin.requests()] == [NSG_PATH]
    private_lab.stop()  # releases the hang
    hanging.join(timeout=30)
    assert not hanging.is_alive()


def test_unknown_paths_are_404_and_logged_without_an_op(raw: Raw, lab: ArmAdmin) -> None:
    response = raw("GET", f"/subscriptions/{SUB}/providers/Microsoft.Storage/storageAccounts?{API}")
    assert response.status_code == 404
    assert lab.requests()[-1]["op"] is None


def test_admin_endpoint_rejects_unknown_knobs(raw: Raw) -> None:
    response = raw("PATCH", "/_lab/knobs", token=None, json={"lro_seconds": 3})
    assert response.status_code == 400


def _swallow(action: Any) -> None:
    with contextlib.suppress(requests.RequestException):
        action()


def _wait_until(condition: Any, attempts: int = 200) -> None:
    import time

    for _ in range(attempts):
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition never became true")


def test_knobs_and_faults_given_at_construction_come_back_on_reset(demo: Scenario, lab_ca: LabCA) -> None:
    fault = {"method": "GET", "match": "web-01-nic", "status": 503, "code": "ServerBusy", "count": 5}
    with ArmEmulator(demo, lab_ca, knobs={"page_size": 2, "lro_ms": 10}, faults=[fault]) as emulator:
        admin = ArmAdmin(emulator.url, verify=lab_ca.ca_bundle)
        assert admin.knobs()["page_size"] == 2 and admin.faults()[0]["count"] == 5
        admin.set_knobs(page_size=7)
        admin.clear_faults()
        admin.reset()
        assert admin.knobs()["page_size"] == 2 and admin.knobs()["lro_ms"] == 10
        assert admin.faults()[0]["code"] == "ServerBusy"
