"""Who is calling and from where: Entra ID token verification and the caller's network address.

    bearer_token(header) -> str            the token from `Authorization: Bearer …`
    TokenVerifier(...).verify(token)       -> Principal (oid, name, upn, tenant_id, roles)
    caller_address(headers, peer, mode)    -> IPv4Address | IPv6Address
    check_address_mode(mode)               validates `JIT_CLIENT_ADDRESS_FROM` at configuration time

Independent of FastAPI; the API wires these in as a dependency.
"""

from jitbroker.identity.address import ADDRESS_MODES, caller_address, check_address_mode, parse_address
from jitbroker.identity.principal import Principal
from jitbroker.identity.tokens import TOKEN_VERSIONS, TokenVerifier, bearer_token

__all__ = [
    "ADDRESS_MODES",
    "TOKEN_VERSIONS",
    "Principal",
    "TokenVerifier",
    "bearer_token",
    "caller_address",
    "check_address_mode",
    "parse_address",
]
