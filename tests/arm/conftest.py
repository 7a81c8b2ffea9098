"""The ARM emulator under test, with real Azure SDK clients pointed at it over verified HTTPS.

One emulator per session (no token validation: a fixed-string credential stands in for Entra ID here);
`lab` resets its world, knobs, faults and request log before every test.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.network import NetworkManagementClient
from azure.mgmt.network.models import SecurityRule

from lab.arm import ArmEmulator
from lab.arm.admin import ArmAdmin
from lab.scenario import Scenario, load_scenario
from lab.tls import LabCA

SUB = "00000000-0000-4000-8000-0000000000a1"
RG = "rg-jit-demo"
NSG = "web-01-nsg"


class FixedCredential:
    """A TokenCredential that always returns the same opaque token."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("lab-arm-token", int(time.time()) + 3600)


@pytest.fixture(scope="session")
def demo() -> Scenario:
    return load_scenario()


@pytest.fixture(scope="session")
def arm_emulator(demo: Scenario, lab_ca: LabCA) -> Iterator[ArmEmulator]:
    with ArmEmulator(demo, lab_ca) as emulator:
        yield emulator


@pytest.fixture
def lab(arm_emulator: ArmEmulator, lab_ca: LabCA) -> ArmAdmin:
    admin = ArmAdmin(arm_emulator.url, verify=lab_ca.ca_bundle)
    admin.reset()
    return admin


@pytest.fixture
def network(arm_emulator: ArmEmulator, lab_ca: LabCA, lab: ArmAdmin) -> NetworkManagementClient:
    return NetworkManagementClient(
        FixedCredential(), SUB, base_url=arm_emulator.url, connection_verify=str(lab_ca.ca_bundle)
    )


@pytest.fixture
def compute(arm_emulator: ArmEmulator, lab_ca: LabCA, lab: ArmAdmin) -> ComputeManagementClient:
    return ComputeManagementClient(
        FixedCredential(), SUB, base_url=arm_emulator.url, connection_verify=str(lab_ca.ca_bundle)
    )


def arm_code(exc: HttpResponseError) -> str:
    """The ARM `error.code` of an SDK exception."""
    assert exc.error is not None, exc
    return str(exc.error.code)


def arm_message(exc: HttpResponseError) -> str:
    """The ARM `error.message` of an SDK exception."""
    assert exc.error is not None, exc
    return str(exc.error.message)


def jit_rule(priority: int = 110, **overrides: Any) -> SecurityRule:
    """A rule as the broker writes one (inbound SSH from one caller to one VM), with `overrides` applied."""
    fields: dict[str, Any] = {
        "protocol": "Tcp",
        "source_address_prefix": "203.0.113.10/32",
        "source_port_range": "*",
        "destination_address_prefix": "192.0.2.4",
        "destination_port_range": "22",
        "access": "Allow",
        "priority": priority,
        "direction": "Inbound",
        "description": "jit-broker grant",
    }
    fields.update(overrides)
    return SecurityRule(**fields)


def create(network: NetworkManagementClient, name: str, rule: SecurityRule, nsg: str = NSG) -> SecurityRule:
    """Write a rule through the SDK's poller and wait for it."""
    return network.security_rules.begin_create_or_update(RG, nsg, name, rule, polling_interval=0).result()
