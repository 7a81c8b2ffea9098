"""The broker's one exception hierarchy; the API maps it to HTTP in exactly one place.

    JitError                      500 internal_error
    ├── InvalidRequest            400 invalid_request
    │   ├── PayloadTooLarge       413 payload_too_large
    │   └── SourceNotRoutable     400 source_not_routable
    ├── NotAuthenticated          401 unauthenticated
    ├── NotAllowed                403 forbidden
    │   ├── VmNotEligible         403 vm_not_eligible
    │   ├── UserTokenRequired     403 user_token_required
    │   ├── InsufficientScope     403 insufficient_scope
    │   ├── ClientAppNotAllowed   403 client_app_not_allowed
    │   └── SourceNotAllowed      403 source_not_allowed
    ├── NotFound                  404 not_found
    ├── Conflict                  409 conflict
    │   ├── VmNotRunning          409 vm_not_running
    │   ├── NoNetworkSecurityGroup 409 no_nsg
    │   ├── AddressFamilyMismatch 409 address_family_mismatch
    │   ├── AddressAmbiguous      409 address_ambiguous
    │   └── NsgLocked             409 nsg_locked
    ├── TooManyGrants             429 too_many_grants
    │   └── TooManySources        429 too_many_sources
    └── UpstreamError             502 upstream_error
        └── UpstreamThrottled     503 upstream_throttled

Nothing below the API knows about HTTP beyond these two class attributes (and `retry_after`, the seconds after
which asking again may succeed, which the API sends as `Retry-After`).
"""

from __future__ import annotations


class JitError(Exception):
    """Base of every error the broker reports to a caller; `message` is meant for a person."""

    status: int = 500
    code: str = "internal_error"
    retry_after: int | None = None  # seconds after which asking again may succeed, when waiting helps

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(JitError):
    """The request is malformed or asks for something policy can never allow in that form."""

    status = 400
    code = "invalid_request"


class PayloadTooLarge(InvalidRequest):
    """The request body is larger than the broker accepts."""

    status = 413
    code = "payload_too_large"


class NotAuthenticated(JitError):
    """No token, or a token that does not verify."""

    status = 401
    code = "unauthenticated"


class NotAllowed(JitError):
    """The caller is known but may not do this."""

    status = 403
    code = "forbidden"


class VmNotEligible(NotAllowed):
    """The VM is not opted in, is outside the configured scopes, or needs a role the caller lacks."""

    code = "vm_not_eligible"


class NotFound(JitError):
    """No such grant or VM (or none the caller may see)."""

    status = 404
    code = "not_found"


class Conflict(JitError):
    """The request is valid but the current state of the world refuses it."""

    status = 409
    code = "conflict"


class VmNotRunning(Conflict):
    """Opening a port to a stopped VM would only leave a door open for later."""

    code = "vm_not_running"


class NoNetworkSecurityGroup(Conflict):
    """Nothing filters the VM's traffic, so there is nothing to open and nothing protected."""

    code = "no_nsg"


class AddressFamilyMismatch(Conflict):
    """The caller's address family (say IPv6) cannot reach the VM (IPv4 only): retry over the other family."""

    code = "address_family_mismatch"


class AddressAmbiguous(Conflict):
    """Another VM behind the same NSG has this VM's private address: a rule could not tell them apart."""

    code = "address_ambiguous"


class NsgLocked(Conflict):
    """The VM's NSG carries a ReadOnly lock (ARM's `ScopeLocked`), so the broker cannot write to it."""

    code = "nsg_locked"


class UpstreamError(JitError):
    """Azure (ARM or Table Storage) failed in a way retries did not cure."""

    status = 502
    code = "upstream_error"


class UpstreamThrottled(UpstreamError):
    """Azure keeps throttling; the caller may retry later."""

    status = 503
    code = "upstream_throttled"


class UserTokenRequired(NotAllowed):
    """The token is an application's own (app-only, client credentials), not one a user delegated: 403."""

    code = "user_token_required"


class InsufficientScope(NotAllowed):
    """A user's token for the broker without its delegated scope or one of its app roles: 403."""

    code = "insufficient_scope"


class ClientAppNotAllowed(NotAllowed):
    """The token was obtained through a client application the broker is not configured to accept: 403."""

    code = "client_app_not_allowed"


class SourceNotRoutable(InvalidRequest):
    """The source is no internet address a rule should let in (loopback, private, link-local, reserved,
    Azure's platform address), whether the caller named it or it is the address the broker sees for them."""

    code = "source_not_routable"


class SourceNotAllowed(NotAllowed):
    """The caller named a source other than their own address without the permission to (the override role or
    the VM's `jit-sources` allow-list), or outside the VM's allow-list."""

    code = "source_not_allowed"


class TooManyGrants(JitError):
    """The caller already holds as many open grants as one person may: 429, asking again helps once one ends.

    `retry_after` is the number of seconds until that happens (the soonest of their grants expires)."""

    status = 429
    code = "too_many_grants"

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManySources(TooManyGrants):
    """The caller's open grants already let in as many distinct sources as one person may: 429."""

    code = "too_many_sources"
