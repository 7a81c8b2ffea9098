"""ARM's error responses: one exception carrying status, code, message and headers, and the ones we raise.

Codes and messages follow what Azure Resource Manager and the Network resource provider send
(`/work/shared/reference/arm-nsg-and-defender-jit.md` §2.6 and public error logs). Where no verbatim text was
found, the function says "assumed" in its docstring."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class ArmError(Exception):
    """An ARM error response: `{"error": {"code", "message", "details"}}` with an HTTP status and headers."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.details = details

    def body(self) -> dict[str, Any]:
        """The JSON body ARM sends for this error."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}


def missing_token() -> ArmError:
    """No Authorization header at all."""
    return ArmError(
        401,
        "AuthenticationFailed",
        "Authentication failed. The 'Authorization' header is missing.",
        headers={
            "WWW-Authenticate": _challenge(
                "The authentication failed because of missing 'Authorization' header."
            )
        },
    )


def malformed_authorization() -> ArmError:
    """An Authorization header that is not `Bearer <token>`."""
    return ArmError(
        401,
        "AuthenticationFailed",
        "Authentication failed. The 'Authorization' header is provided in an invalid format.",
        headers={
            "WWW-Authenticate": _challenge("The 'Authorization' header is provided in an invalid format.")
        },
    )


def invalid_token() -> ArmError:
    """A bearer token the configured validator rejected."""
    return ArmError(
        401,
        "InvalidAuthenticationToken",
        "The access token is invalid.",
        headers={"WWW-Authenticate": _challenge("The access token is invalid.")},
    )


def _challenge(description: str) -> str:
    # error="invalid_token" (not insufficient_claims) so azure-core's bearer policy does not treat it as a CAE
    # challenge and simply surfaces the 401.
    return (
        'Bearer authorization_uri="https://login.microsoftonline.com/", error="invalid_token", '
        f'error_description="{description}"'
    )


def missing_api_version() -> ArmError:
    """A request without `?api-version=`."""
    return ArmError(
        400,
        "MissingApiVersionParameter",
        "The api-version query parameter (?api-version=) is required for all requests.",
    )


def invalid_api_version(value: str, supported: Sequence[str]) -> ArmError:
    """An `api-version` that is not a date version: ARM's own answer, listing ARM's own versions.

    Recorded when ARM itself, not a resource provider, reads the version (e.g. "The api-version '2020-11-01'
    is invalid. The supported versions are '2023-03-01-preview,2022-12-01,…'":
    pulumi/pulumi-azure-native#2011, Azure/azure-sdk-for-go#803, ansible-collections/azure#1739). That ARM
    answers a non-date value on a provider's route the same way is assumed: it must parse the version before
    it can look it up.
    """
    return ArmError(
        400,
        "InvalidApiVersionParameter",
        f"The api-version '{value}' is invalid. The supported versions are '{','.join(supported)}'.",
    )


def no_registered_provider(
    value: str, rtype: str, location: str, supported: Sequence[str], locations: Sequence[str]
) -> ArmError:
    """A date `api-version` the resource provider has not registered for the resource type.

    ARM's wording, e.g. "No registered resource provider found for location 'westeurope' and API version
    '2022-05-01' for type 'networkSecurityGroups'. The supported api-versions are '2014-12-01-preview, …'. The
    supported locations are 'westus, …'." (AutomatedLab/AutomatedLab#1361, Azure/azure-cli#28496).
    """
    return ArmError(
        400,
        "NoRegisteredProviderFound",
        f"No registered resource provider found for location '{location}' and API version '{value}' for type "
        f"'{rtype}'. The supported api-versions are '{', '.join(supported)}'. The supported locations are "
        f"'{', '.join(locations)}'.",
    )


def resource_group_not_found(rg: str) -> ArmError:
    """The resource group in the path does not exist."""
    return ArmError(404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")


def resource_not_found(provider_type: str, name: str, rg: str) -> ArmError:
    """A top-level resource (VM, NIC, NSG, …) that does not exist: ARM's own wording."""
    return ArmError(
        404,
        "ResourceNotFound",
        f"The Resource '{provider_type}/{name}' under resource group '{rg}' was not found. For more details "
        "please go to https://aka.ms/ARMResourceNotFoundFix",
    )


def child_not_found(resource_id: str) -> ArmError:
    """A child resource (security rule, subnet) that does not exist: NRP's wording (assumed)."""
    return ArmError(404, "NotFound", f"Resource {resource_id} not found.", details=[])


def no_route(method: str, url: str) -> ArmError:
    """A path the emulator does not serve (ARM answers an unknown route this way)."""
    return ArmError(
        404,
        "NotFound",
        f"No HTTP resource was found that matches the request URI '{url}'. ({method})",
        details=[],
    )


def another_operation_in_progress(status_url: str) -> ArmError:
    """A write while another operation on the same NSG is still running."""
    return ArmError(
        409,
        "AnotherOperationInProgress",
        "Another operation on this or dependent resource is in progress. To retrieve status of the "
        "operation use "
        f"uri: {status_url}.",
        details=[],
    )


def weak_etag(value: str) -> str:
    """An If-Match value as NRP quotes it back: `invalid` and `"x"` become `W/"invalid"` and `W/"x"`."""
    value = value.strip()
    if value.startswith('W/"'):
        return value
    return f'W/"{value.strip(chr(34))}"'


def precondition_failed(given: str, current: str, resource_id: str) -> ArmError:
    """`If-Match` did not match the resource's etag: NRP's recorded answer.

    Recorded from ARM (api-version 2025-05-01) by kubernetes-sigs/cloud-provider-azure in
    `pkg/azclient/securitygroupclient/testdata/AZURECLOUD.yaml`: a PUT with `If-Match: invalid` answered
    `412` with `{"error": {"code": "PreconditionFailed", "message": "Precondition failed.", "details":
    [{"code": "PreconditionFailedEtagMismatch", "message": "Etag provided in if-match header W/\"invalid\"
    does not match etag W/\"…\" of resource /subscriptions/…/networkSecurityGroups/testResource in NRP data
    store."}]}}`. The header value comes back as a weak etag (`weak_etag`): NRP compares in that form.
    """
    return ArmError(
        412,
        "PreconditionFailed",
        "Precondition failed.",
        details=[
            {
                "code": "PreconditionFailedEtagMismatch",
                "message": f"Etag provided in if-match header {weak_etag(given)} does not match etag "
                f"{current} of resource {resource_id} in NRP data store.",
            }
        ],
    )


def already_exists(resource_id: str) -> ArmError:
    """`If-None-Match: *` on a resource that exists (assumed: no recorded NRP answer was found)."""
    return ArmError(
        412,
        "PreconditionFailed",
        f"Precondition failed. Resource {resource_id} already exists and If-None-Match is '*'.",
        details=[],
    )


def retryable_due_to_another_operation(
    op_name: str, op_id: str, resource_guid: str, retry_after_s: int
) -> ArmError:
    """`429` while another operation holds the resource: NRP's "try again later" answer.

    Microsoft's throttling page: the Network RP "returns 429 with the RetryableErrorDueToAnotherOperation
    error code when the target resource is locked by another operation"; a recorded body
    (cloudfoundry/bosh-azure-cpi-release#179) nests that code under `RetryableError` ("A retryable error
    occured." — ARM's spelling) with "Operation AllocateTenantNetworkResourcesOperation (…) is updating
    resource {guid}. The call can be retried in 14 seconds.", the guid being the resource's `resourceGuid`.
    """
    return ArmError(
        429,
        "RetryableError",
        "A retryable error occured.",
        headers={"Retry-After": str(retry_after_s)},
        details=[
            {
                "code": "RetryableErrorDueToAnotherOperation",
                "message": f"Operation {op_name} ({op_id}) is updating resource {resource_guid}. The call "
                f"can be retried in {retry_after_s} seconds.",
            }
        ],
    )


def throttled(kind: str, subscription: str, retry_after_s: int) -> ArmError:
    """The subscription's request budget for `kind` (read/write/delete) is spent."""
    return ArmError(
        429,
        "SubscriptionRequestsThrottled",
        f"Number of '{kind}' requests for subscription '{subscription}' actor 'jit-broker' exceeded. "
        "Please try "
        f"again after '{retry_after_s}' seconds after the first request.",
        headers={"Retry-After": str(retry_after_s)},
    )


def invalid_request_format(detail: str) -> ArmError:
    """A body that is not JSON or does not fit the schema (missing, mistyped or unknown-enum fields)."""
    return ArmError(
        400,
        "InvalidRequestFormat",
        "Cannot parse the request.",
        details=[{"code": "InvalidJson", "message": detail}],
    )


def injected(status: int, code: str, message: str | None, retry_after: int | None) -> ArmError:
    """A failure a test asked for through `/_lab/faults`."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return ArmError(status, code, message or f"Injected by the lab: {code}.", headers=headers, details=[])
