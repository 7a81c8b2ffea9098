"""The broker accepts exactly the token versions its app registration is configured for, v1 and v2 alike."""

from __future__ import annotations

import pytest

from jitbroker.api import Verifier
from jitbroker.config import Settings
from jitbroker.errors import NotAuthenticated
from jitbroker.runtime import build
from lab.issuer import TokenIssuer


def _verifier_for(env: dict[str, str], versions: str) -> Verifier:
    return build(Settings.from_env({**env, "JIT_TOKEN_VERSIONS": versions})).services.verifier


def test_a_v1_token_is_accepted_when_the_broker_is_configured_for_v1(
    api_broker_env: dict[str, str], issuer: TokenIssuer, lab_ca: object
) -> None:
    principal = _verifier_for(api_broker_env, "1,2").verify(issuer.token("alice", version="1"))
    assert principal.oid == issuer.user_claims("alice")["oid"]
    assert "JIT.Requester" in principal.roles


def test_a_v1_token_is_refused_when_the_broker_accepts_only_v2(
    api_broker_env: dict[str, str], issuer: TokenIssuer, lab_ca: object
) -> None:
    with pytest.raises(NotAuthenticated):
        _verifier_for(api_broker_env, "2").verify(issuer.token("alice", version="1"))


def test_a_v2_token_is_refused_when_the_broker_accepts_only_v1(
    api_broker_env: dict[str, str], issuer: TokenIssuer, lab_ca: object
) -> None:
    with pytest.raises(NotAuthenticated):
        _verifier_for(api_broker_env, "1").verify(issuer.token("alice"))
