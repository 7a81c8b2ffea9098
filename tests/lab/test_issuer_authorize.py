"""The lab issuer's SPA sign-in (authorization code + PKCE), driven over HTTPS as MSAL.js drives Entra ID.

Plain HTTP clients play the browser: they read the sign-in page, submit its form, take the code from the
redirect and redeem it cross-origin (an `Origin` header), as msal-browser does. The tokens are then checked by
the broker's own `TokenVerifier`, configured as in the lab.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests

from jitbroker.identity import TokenVerifier
from lab.issuer import LAB_DAEMON_APP, TokenIssuer
from lab.issuer_authorize import AUTH_CODE_LIFETIME_S, check_redirect_uri, origin_of, s256
from lab.scenario import Scenario
from lab.tls import LabCA

PAGE_ORIGIN = "http://127.0.0.1:45678"


@pytest.fixture
def redirect_uri(issuer: TokenIssuer) -> Iterator[str]:
    """A redirect URI of the page, registered at run time for this test only (nothing listens there)."""
    uri = issuer.register_redirect_uri(f"{PAGE_ORIGIN}/app/{uuid.uuid4().hex[:8]}/")
    yield uri
    issuer.unregister_redirect_uri(uri)


@pytest.fixture
def verifier(issuer: TokenIssuer, scenario: Scenario) -> TokenVerifier:
    """The broker's verifier, configured from the lab the way the broker's runtime configures it."""
    return TokenVerifier(
        authority_host=issuer.url,
        tenant_id=scenario.tenant.tenant_id,
        api_client_id=scenario.tenant.api_client_id,
        app_id_uri=scenario.tenant.app_id_uri,
        token_versions=frozenset({"2"}),
        roles_instead_of_scope=("JIT.Requester", "JIT.Admin"),
    )


class PageParser(HTMLParser):
    """What a browser (and a screen reader) sees of the sign-in page: form, inputs, labels, buttons."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, str | None]] = []
        self.inputs: list[dict[str, str | None]] = []
        self.buttons: list[dict[str, str | None]] = []
        self.labels: dict[str, str] = {}
        self.scripts = 0
        self.alerts: list[str] = []
        self._label: str | None = None
        self._alert = False
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "form":
            self.forms.append(found)
        elif tag == "input":
            self.inputs.append(found)
        elif tag == "button":
            self.buttons.append(found)
        elif tag == "script":
            self.scripts += 1
        elif tag == "label":
            self._label, self._text = found.get("for") or "", []
        elif found.get("role") == "alert":
            self._alert, self._text = True, []

    def handle_endtag(self, tag: str) -> None:
        if tag == "label" and self._label is not None:
            self.labels[self._label] = " ".join("".join(self._text).split())
            self._label = None
        elif self._alert and tag == "p":
            self.alerts.append(" ".join("".join(self._text).split()))
            self._alert = False

    def handle_data(self, data: str) -> None:
        if self._label is not None or self._alert:
            self._text.append(data)

    def hidden(self) -> dict[str, str]:
        return {str(i["name"]): str(i["value"]) for i in self.inputs if i.get("type") == "hidden"}

    def radios(self) -> list[dict[str, str | None]]:
        return [i for i in self.inputs if i.get("type") == "radio"]


def parse_page(html: str) -> PageParser:
    parser = PageParser()
    parser.feed(html)
    return parser


@dataclass
class Pkce:
    verifier: str
    challenge: str

    @classmethod
    def new(cls) -> Pkce:
        verifier = secrets.token_urlsafe(48)
        return cls(verifier, s256(verifier))


def authorize_params(
    issuer: TokenIssuer, redirect_uri: str, pkce: Pkce, **overrides: str | None
) -> dict[str, str]:
    """What msal-browser's loginRedirect sends (the library's extra `x-client-*` parameters included)."""
    params: dict[str, str | None] = {
        "client_id": issuer.spa_client_id,
        "scope": f"{issuer.api_scope_uri} openid profile offline_access",
        "redirect_uri": redirect_uri,
        "client-request-id": str(uuid.uuid4()),
        "response_mode": "fragment",
        "response_type": "code",
        "x-client-SKU": "msal.js.browser",
        "x-client-VER": "3.30.0",
        "client_info": "1",
        "code_challenge": pkce.challenge,
        "code_challenge_method": "S256",
        "nonce": str(uuid.uuid4()),
        "state": base64.urlsafe_b64encode(json.dumps({"id": str(uuid.uuid4())}).encode()).decode(),
        **overrides,
    }
    return {k: v for k, v in params.items() if v is not None}


def get_authorize(issuer: TokenIssuer, params: dict[str, str], **kwargs: Any) -> requests.Response:
    return requests.get(issuer.authorize_endpoint, params=params, allow_redirects=False, timeout=5, **kwargs)


def submit(issuer: TokenIssuer, page: requests.Response, **fields: str) -> requests.Response:
    """Submit the sign-in page's form as a browser would: its hidden fields plus the choice."""
    parsed = parse_page(page.text)
    action = parsed.forms[0]["action"]
    url = f"{issuer.url}{action}"
    return requests.post(url, data={**parsed.hidden(), **fields}, allow_redirects=False, timeout=5)


def response_params(location: str, mode: str = "fragment") -> dict[str, str]:
    parts = urlsplit(location)
    raw = parts.fragment if mode == "fragment" else parts.query
    return {k: v[0] for k, v in parse_qs(raw).items()}


def sign_in(
    issuer: TokenIssuer, redirect_uri: str, user: str = "alice", **overrides: str | None
) -> tuple[dict[str, str], dict[str, str], Pkce]:
    """The browser's part: page, choice, redirect. Returns (request params, response params, pkce)."""
    pkce = Pkce.new()
    params = authorize_params(issuer, redirect_uri, pkce, **overrides)
    page = get_authorize(issuer, params)
    assert page.status_code == 200, page.text
    answer = submit(issuer, page, user=user, action="sign_in")
    assert answer.status_code == 302
    location = answer.headers["Location"]
    assert location.startswith(redirect_uri)
    return params, response_params(location, params.get("response_mode", "query")), pkce


def redeem(issuer: TokenIssuer, *, origin: str | None = PAGE_ORIGIN, **form: str) -> requests.Response:
    headers = {"Origin": origin} if origin else {}
    return requests.post(issuer.token_endpoint, data=form, headers=headers, timeout=5)


def code_form(issuer: TokenIssuer, params: dict[str, str], code: str, pkce: Pkce) -> dict[str, str]:
    """What msal-browser posts to the token endpoint to redeem a code."""
    return {
        "client_id": params["client_id"],
        "redirect_uri": params["redirect_uri"],
        "scope": params["scope"],
        "code": code,
        "code_verifier": pkce.verifier,
        "grant_type": "authorization_code",
        "client_info": "1",
    }


def claims_of(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def assert_entra_error(response: requests.Response, error: str, code: int | None = None) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == error
    assert body["error_description"].startswith("AADSTS")
    if code is not None:
        assert body["error_codes"] == [code]
        assert body["error_description"].startswith(f"AADSTS{code}:")
    assert "access_token" not in body
    assert "id_token" not in body


# -- discovery and configuration ---------------------------------------------------------------------------


def test_v2_discovery_advertises_the_authorize_and_end_session_endpoints(issuer: TokenIssuer) -> None:
    meta = requests.get(issuer.discovery_url, timeout=5).json()

    assert meta["authorization_endpoint"] == issuer.authorize_endpoint
    assert meta["authorization_endpoint"] == f"{issuer.url}/{issuer.tenant_id}/oauth2/v2.0/authorize"
    assert meta["end_session_endpoint"] == issuer.end_session_endpoint
    assert meta["token_endpoint"] == issuer.token_endpoint
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert {"query", "fragment"} <= set(meta["response_modes_supported"])
    assert "nonce" in meta["claims_supported"]


def test_msal_config_names_the_authority_msal_discovers_from(issuer: TokenIssuer, redirect_uri: str) -> None:
    config = issuer.msal_config(redirect_uri)
    auth = config["auth"]

    assert auth["clientId"] == issuer.spa_client_id == issuer.scenario.tenant.api_client_id
    assert auth["authority"] == f"{issuer.url}/{issuer.tenant_id}"
    assert auth["knownAuthorities"] == [urlsplit(issuer.url).netloc]
    assert auth["redirectUri"] == auth["postLogoutRedirectUri"] == redirect_uri
    # protocolMode "AAD" (MSAL's default) reads {authority}/v2.0/.well-known/openid-configuration
    meta = requests.get(f"{auth['authority']}/v2.0/.well-known/openid-configuration", timeout=5).json()
    assert meta["issuer"] == issuer.issuer_v2
    assert {"authorization_endpoint", "token_endpoint", "issuer", "jwks_uri"} <= set(meta)


# -- the sign-in page --------------------------------------------------------------------------------------


def test_sign_in_page_lists_every_scenario_user_with_a_label(
    issuer: TokenIssuer, scenario: Scenario, redirect_uri: str
) -> None:
    params = authorize_params(issuer, redirect_uri, Pkce.new())
    response = get_authorize(issuer, params)

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    page = parse_page(response.text)
    assert page.scripts == 0
    assert page.forms == [{"method": "post", "action": f"/{issuer.tenant_id}/oauth2/v2.0/authorize"}]
    radios = page.radios()
    assert [r["value"] for r in radios] == [u.name for u in scenario.users]
    for radio, user in zip(radios, scenario.users, strict=True):
        label = page.labels[str(radio["id"])]
        assert user.display_name in label
        assert user.upn in label
        for role in user.roles:
            assert role in label
        assert "required" in radio
        assert "checked" not in radio
    assert page.labels[str(radios[3]["id"])].endswith("Roles: none")  # dave holds no role
    assert [b["value"] for b in page.buttons] == ["sign_in", "cancel"]
    assert page.hidden()["code_challenge"] == params["code_challenge"]
    assert page.hidden()["nonce"] == params["nonce"]
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp
    assert f"form-action 'self' {PAGE_ORIGIN}" in csp
    assert "frame-ancestors 'none'" in csp


def test_login_hint_preselects_that_user(issuer: TokenIssuer, redirect_uri: str) -> None:
    params = authorize_params(issuer, redirect_uri, Pkce.new(), login_hint="carol@contoso.test")
    page = parse_page(get_authorize(issuer, params).text)

    assert [r["value"] for r in page.radios() if "checked" in r] == ["carol"]


def test_submitting_without_a_user_shows_the_page_again_with_the_problem(
    issuer: TokenIssuer, redirect_uri: str
) -> None:
    page = get_authorize(issuer, authorize_params(issuer, redirect_uri, Pkce.new()))

    for fields in ({"action": "sign_in"}, {"action": "sign_in", "user": "eve"}):
        again = submit(issuer, page, **fields)
        assert again.status_code == 400
        assert "Location" not in again.headers
        assert parse_page(again.text).alerts == ["Choose a user to sign in as."]


# -- the round trip ----------------------------------------------------------------------------------------


def test_code_and_pkce_round_trip_yields_tokens_the_broker_accepts(
    issuer: TokenIssuer, scenario: Scenario, redirect_uri: str, verifier: TokenVerifier
) -> None:
    params, answer, pkce = sign_in(issuer, redirect_uri, "alice")
    alice = scenario.user("alice")

    assert answer["state"] == params["state"]
    assert answer["session_state"]
    assert json.loads(base64.urlsafe_b64decode(answer["client_info"] + "==")) == {
        "uid": alice.oid,
        "utid": scenario.tenant.tenant_id,
    }
    response = redeem(issuer, **code_form(issuer, params, answer["code"], pkce))

    assert response.status_code == 200, response.text
    assert response.headers["Access-Control-Allow-Origin"] == PAGE_ORIGIN
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["scope"] == issuer.api_scope_uri
    assert body["expires_in"] > 0 and body["ext_expires_in"] > 0
    assert body["refresh_token"] and body["refresh_token_expires_in"] > 3600
    principal = verifier.verify(body["access_token"])
    assert principal.oid == alice.oid
    assert principal.upn == alice.upn
    assert principal.roles == frozenset(alice.roles)
    access = claims_of(body["access_token"])
    assert access["azp"] == issuer.spa_client_id
    assert access["aud"] == scenario.tenant.api_client_id
    assert access["scp"] == "user_impersonation"
    assert access["iss"] == issuer.issuer_v2
    # the ID token is for the page, not the broker
    id_claims = jwt.decode(
        body["id_token"],
        jwt.PyJWKClient(issuer.jwks_uri).get_signing_key_from_jwt(body["id_token"]).key,
        algorithms=["RS256"],
        audience=issuer.spa_client_id,
        issuer=issuer.issuer_v2,
    )
    assert id_claims["nonce"] == params["nonce"]
    assert id_claims["oid"] == alice.oid
    assert id_claims["preferred_username"] == alice.upn
    assert id_claims["name"] == alice.display_name
    assert id_claims["tid"] == scenario.tenant.tenant_id
    assert "scp" not in id_claims and "azp" not in id_claims
    assert json.loads(base64.urlsafe_b64decode(body["client_info"] + "==")) == {
        "uid": alice.oid,
        "utid": scenario.tenant.tenant_id,
    }


def test_id_token_is_no_access_token_for_the_broker(
    issuer: TokenIssuer, redirect_uri: str, verifier: TokenVerifier
) -> None:
    params, answer, pkce = sign_in(issuer, redirect_uri, "carol")
    body = redeem(issuer, **code_form(issuer, params, answer["code"], pkce)).json()

    from jitbroker.errors import NotAuthenticated

    with pytest.raises(NotAuthenticated):
        verifier.verify(body["id_token"])


def test_query_response_mode_and_default_scope(
    issuer: TokenIssuer, scenario: Scenario, redirect_uri: str
) -> None:
    params, answer, pkce = sign_in(
        issuer,
        redirect_uri,
        "bob",
        response_mode="query",
        scope=f"{scenario.tenant.api_client_id}/.default openid",
        client_info=None,
    )

    assert "client_info" not in answer
    body = redeem(issuer, **code_form(issuer, params, answer["code"], pkce)).json()
    assert body["scope"] == issuer.api_scope_uri
    assert "refresh_token" not in body  # no offline_access asked for
    assert claims_of(body["access_token"])["oid"] == scenario.user("bob").oid
    assert "client_info" in body


def test_refresh_token_gives_fresh_tokens_to_the_same_client_only(
    issuer: TokenIssuer, scenario: Scenario, redirect_uri: str, verifier: TokenVerifier
) -> None:
    params, answer, pkce = sign_in(issuer, redirect_uri, "alice")
    first = redeem(issuer, **code_form(issuer, params, answer["code"], pkce)).json()
    form = {
        "client_id": issuer.spa_client_id,
        "scope": params["scope"],
        "refresh_token": first["refresh_token"],
        "grant_type": "refresh_token",
        "client_info": "1",
    }

    response = redeem(issuer, **form)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["refresh_token"] != first["refresh_token"]
    assert body["refresh_token_expires_in"] <= first["refresh_token_expires_in"]  # not extended
    assert verifier.verify(body["access_token"]).oid == scenario.user("alice").oid
    assert "nonce" not in claims_of(body["id_token"])
    assert_entra_error(
        redeem(issuer, **{**form, "client_id": LAB_DAEMON_APP.client_id}), "unauthorized_client"
    )
    assert_entra_error(redeem(issuer, **form, origin=None), "invalid_request", 9002327)
    assert_entra_error(redeem(issuer, **{**form, "refresh_token": "nope"}), "invalid_grant")
    assert_entra_error(
        redeem(issuer, **{**form, "scope": "https://management.azure.com/.default"}), "invalid_scope"
    )


# -- refusals at the token endpoint ------------------------------------------------------------------------


def test_wrong_code_verifier_is_refused_and_spends_the_code(issuer: TokenIssuer, redirect_uri: str) -> None:
    params, answer, pkce = sign_in(issuer, redirect_uri)
    form = code_form(issuer, params, answer["code"], pkce)

    assert_entra_error(
        redeem(issuer, **{**form, "code_verifier": Pkce.new().verifier}), "invalid_grant", 501481
    )
    assert_entra_error(redeem(issuer, **form), "invalid_grant", 54005)


def test_missing_code_verifier_is_refused(issuer: TokenIssuer, redirect_uri: str) -> None:
    params, answer, pkce = sign_in(issuer, redirect_uri)
    form = code_form(issuer, params, answer["code"], pkce)
    del form["code_verifier"]

    assert_entra_error(redeem(issuer, **form), "invalid_request", 900144)


def test_a_code_redeems_once_and_a_replay_revokes_its_refresh_token(
    issuer: TokenIssuer, redirect_uri: str
) -> None:
    params, answer, pkce = sign_in(issuer, redirect_uri)
    form = code_form(issuer, params, answer["code"], pkce)
    first = redeem(issuer, **form)
    assert first.status_code == 200

    assert_entra_error(redeem(issuer, **form), "invalid_grant", 54005)
    refresh = {
        "client_id": issuer.spa_client_id,
        "scope": params["scope"],
        "refresh_token": first.json()["refresh_token"],
        "grant_type": "refresh_token",
    }
    assert_entra_error(redeem(issuer, **refresh), "invalid_grant")


def test_an_expired_code_is_refused(scenario: Scenario, lab_ca: LabCA) -> None:
    now = [time.time()]
    redirect = f"{PAGE_ORIGIN}/"
    with TokenIssuer(scenario, lab_ca, redirect_uris=[redirect], clock=lambda: now[0]) as issuer:
        params, answer, pkce = sign_in(issuer, redirect)
        now[0] += AUTH_CODE_LIFETIME_S + 1

        assert_entra_error(
            redeem(issuer, **code_form(issuer, params, answer["code"], pkce)), "invalid_grant", 70008
        )


def test_a_code_just_inside_its_lifetime_still_redeems(scenario: Scenario, lab_ca: LabCA) -> None:
    now = [time.time()]
    redirect = f"{PAGE_ORIGIN}/"
    with TokenIssuer(scenario, lab_ca, redirect_uris=[redirect], clock=lambda: now[0]) as issuer:
        params, answer, pkce = sign_in(issuer, redirect)
        now[0] += AUTH_CODE_LIFETIME_S - 1

        assert redeem(issuer, **code_form(issuer, params, answer["code"], pkce)).status_code == 200


def test_mismatched_redirect_uri_is_refused(issuer: TokenIssuer, redirect_uri: str) -> None:
    other = issuer.register_redirect_uri(f"{PAGE_ORIGIN}/other/")
    try:
        params, answer, pkce = sign_in(issuer, redirect_uri)
        form = {**code_form(issuer, params, answer["code"], pkce), "redirect_uri": other}

        assert_entra_error(redeem(issuer, **form), "invalid_grant", 500112)
    finally:
        issuer.unregister_redirect_uri(other)


@pytest.mark.parametrize("client_id", [LAB_DAEMON_APP.client_id, "c11e0000-0000-4000-8000-000000000001", ""])
def test_mismatched_client_id_is_refused(issuer: TokenIssuer, redirect_uri: str, client_id: str) -> None:
    params, answer, pkce = sign_in(issuer, redirect_uri)
    form = {**code_form(issuer, params, answer["code"], pkce), "client_id": client_id}

    response = redeem(issuer, **form)

    assert_entra_error(response, "unauthorized_client" if client_id else "invalid_request")


def test_a_code_redeemed_without_an_origin_is_refused_as_entra_refuses_spa_codes(
    issuer: TokenIssuer, redirect_uri: str
) -> None:
    params, answer, pkce = sign_in(issuer, redirect_uri)

    response = redeem(issuer, origin=None, **code_form(issuer, params, answer["code"], pkce))

    assert_entra_error(response, "invalid_request", 9002327)


def test_an_unknown_code_is_refused(issuer: TokenIssuer, redirect_uri: str) -> None:
    params = authorize_params(issuer, redirect_uri, Pkce.new())

    assert_entra_error(redeem(issuer, **code_form(issuer, params, "not-a-code", Pkce.new())), "invalid_grant")


# -- refusals at the authorize endpoint --------------------------------------------------------------------


def test_an_unregistered_redirect_uri_gets_an_error_page_never_a_redirect(issuer: TokenIssuer) -> None:
    evil = "https://evil.example/<script>alert(1)</script>"
    params = authorize_params(issuer, evil, Pkce.new())

    page = get_authorize(issuer, params)

    assert page.status_code == 400
    assert "Location" not in page.headers
    assert "AADSTS50011" in page.text
    assert "<script>" not in page.text
    assert "&lt;script&gt;" in page.text
    as_json = get_authorize(issuer, params, headers={"Accept": "application/json"})
    assert_entra_error(as_json, "invalid_request", 50011)
    # nor may the sign-in form be used to get a code sent there
    forged = requests.post(
        issuer.authorize_endpoint,
        data={**params, "user": "alice", "action": "sign_in"},
        allow_redirects=False,
        timeout=5,
    )
    assert forged.status_code == 400
    assert "Location" not in forged.headers


def test_an_unknown_client_gets_an_error_page(issuer: TokenIssuer, redirect_uri: str) -> None:
    params = authorize_params(issuer, redirect_uri, Pkce.new(), client_id=LAB_DAEMON_APP.client_id)

    page = get_authorize(issuer, params)

    assert page.status_code == 400
    assert "Location" not in page.headers
    assert "AADSTS700016" in page.text
    assert_entra_error(
        get_authorize(issuer, params, headers={"Accept": "application/json"}), "unauthorized_client"
    )


def test_an_unknown_tenant_gets_an_error_page(issuer: TokenIssuer, redirect_uri: str) -> None:
    params = authorize_params(issuer, redirect_uri, Pkce.new())
    url = issuer.authorize_endpoint.replace(issuer.tenant_id, "common")

    page = requests.get(url, params=params, allow_redirects=False, timeout=5)

    assert page.status_code == 400
    assert "Location" not in page.headers


@pytest.mark.parametrize(
    ("overrides", "error", "code"),
    [
        ({"code_challenge_method": "plain"}, "invalid_request", "AADSTS9002325"),
        ({"code_challenge_method": None}, "invalid_request", "AADSTS9002325"),
        ({"code_challenge": None, "code_challenge_method": None}, "invalid_request", "AADSTS9002325"),
        ({"code_challenge": "too-short"}, "invalid_request", "AADSTS9002325"),
        ({"response_type": "id_token"}, "unsupported_response_type", "AADSTS700054"),
        ({"scope": "openid https://management.azure.com/.default"}, "invalid_scope", "AADSTS70011"),
        ({"scope": "api://jit-broker-lab/Everything.Write"}, "invalid_scope", "AADSTS70011"),
        ({"scope": None}, "invalid_request", "AADSTS900144"),
        ({"prompt": "none"}, "login_required", "AADSTS50058"),
        ({"prompt": "sometimes"}, "invalid_request", "AADSTS90023"),
    ],
    ids=[
        "plain",
        "no-method-means-plain",
        "no-challenge",
        "malformed-challenge",
        "implicit",
        "foreign-scope",
        "unknown-api-scope",
        "no-scope",
        "prompt-none",
        "bad-prompt",
    ],
)
def test_bad_requests_go_back_to_the_page_as_entra_errors(
    issuer: TokenIssuer, redirect_uri: str, overrides: dict[str, str | None], error: str, code: str
) -> None:
    params = authorize_params(issuer, redirect_uri, Pkce.new(), **overrides)

    response = get_authorize(issuer, params)

    assert response.status_code == 302
    location = response.headers["Location"]
    assert location.startswith(f"{redirect_uri}#")
    answer = response_params(location)
    assert answer["error"] == error
    assert answer["error_description"].startswith(f"{code}:")
    assert answer["state"] == params["state"]
    assert "code" not in answer


def test_an_unsupported_response_mode_answers_in_the_query(issuer: TokenIssuer, redirect_uri: str) -> None:
    params = authorize_params(issuer, redirect_uri, Pkce.new(), response_mode="form_post")

    location = get_authorize(issuer, params).headers["Location"]

    assert response_params(location, "query")["error"] == "invalid_request"


def test_cancel_goes_back_with_access_denied(issuer: TokenIssuer, redirect_uri: str) -> None:
    params = authorize_params(issuer, redirect_uri, Pkce.new())
    page = get_authorize(issuer, params)

    answer = submit(issuer, page, action="cancel")

    assert answer.status_code == 302
    result = response_params(answer.headers["Location"])
    assert result["error"] == "access_denied"
    assert result["state"] == params["state"]
    assert "code" not in result


def test_a_tampered_form_is_checked_again(issuer: TokenIssuer, redirect_uri: str) -> None:
    page = get_authorize(issuer, authorize_params(issuer, redirect_uri, Pkce.new()))
    hidden = parse_page(page.text).hidden()

    answer = requests.post(
        issuer.authorize_endpoint,
        data={**hidden, "code_challenge_method": "plain", "user": "alice", "action": "sign_in"},
        allow_redirects=False,
        timeout=5,
    )

    assert response_params(answer.headers["Location"])["error"] == "invalid_request"


# -- CORS --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["discovery", "jwks", "token"])
def test_cors_answers_a_registered_origin_and_no_other(
    issuer: TokenIssuer, redirect_uri: str, which: str
) -> None:
    url = {"discovery": issuer.discovery_url, "jwks": issuer.jwks_uri, "token": issuer.token_endpoint}[which]
    preflight = {
        "Access-Control-Request-Method": "POST" if which == "token" else "GET",
        "Access-Control-Request-Headers": "content-type,x-anchormailbox",
    }

    allowed = requests.options(url, headers={"Origin": PAGE_ORIGIN, **preflight}, timeout=5)
    refused = requests.options(url, headers={"Origin": "https://evil.example", **preflight}, timeout=5)

    assert allowed.status_code == 204
    assert allowed.headers["Access-Control-Allow-Origin"] == PAGE_ORIGIN
    assert "POST" in allowed.headers["Access-Control-Allow-Methods"]
    assert allowed.headers["Access-Control-Allow-Headers"] == "content-type, x-anchormailbox"
    assert "Access-Control-Allow-Origin" not in refused.headers
    assert "Access-Control-Allow-Methods" not in refused.headers
    if which != "token":
        read = requests.get(url, headers={"Origin": PAGE_ORIGIN}, timeout=5)
        assert read.headers["Access-Control-Allow-Origin"] == PAGE_ORIGIN
        assert "Origin" in read.headers["Vary"]
        assert (
            "Access-Control-Allow-Origin"
            not in requests.get(url, headers={"Origin": "https://evil.example"}, timeout=5).headers
        )


def test_token_errors_are_readable_by_the_page_and_not_by_others(
    issuer: TokenIssuer, redirect_uri: str
) -> None:
    form = {"grant_type": "authorization_code", "client_id": issuer.spa_client_id, "code": "x"}

    mine = redeem(issuer, **form)
    theirs = redeem(issuer, origin="https://evil.example", **form)

    assert mine.headers["Access-Control-Allow-Origin"] == PAGE_ORIGIN
    assert "Access-Control-Allow-Origin" not in theirs.headers
    assert theirs.status_code == 400


def test_an_unregistered_origin_gets_no_cors_once_its_uri_is_gone(issuer: TokenIssuer) -> None:
    origin = "http://127.0.0.1:45999"
    uri = issuer.register_redirect_uri(f"{origin}/")
    assert issuer.allows_origin(origin)

    issuer.unregister_redirect_uri(uri)

    assert not issuer.allows_origin(origin)
    response = requests.get(issuer.discovery_url, headers={"Origin": origin}, timeout=5)
    assert "Access-Control-Allow-Origin" not in response.headers


# -- logout ------------------------------------------------------------------------------------------------


def test_logout_goes_back_to_a_registered_uri_with_its_state(issuer: TokenIssuer, redirect_uri: str) -> None:
    response = requests.get(
        issuer.end_session_endpoint,
        params={"post_logout_redirect_uri": redirect_uri, "state": "bye", "client-request-id": "x"},
        allow_redirects=False,
        timeout=5,
    )

    assert response.status_code == 302
    assert response.headers["Location"] == f"{redirect_uri}?state=bye"


def test_logout_never_redirects_to_an_unregistered_uri(issuer: TokenIssuer) -> None:
    for params in ({"post_logout_redirect_uri": "https://evil.example/"}, {}):
        response = requests.get(issuer.end_session_endpoint, params=params, allow_redirects=False, timeout=5)

        assert response.status_code == 200
        assert "Location" not in response.headers
        assert "signed out" in response.text


# -- redirect URI registration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        "http://example.com/",  # http only on loopback
        "http://10.0.0.1:8080/",
        "https://127.0.0.1:8443/#frag",
        "https://*.example.com/",
        "https://user@example.com/",
        "/relative",
        "ftp://127.0.0.1/",
        "https://example.com/" + "a" * 300,
        "https://127.0.0.1/a b",
        "https://127.0.0.1/\r\nX-Injected: 1",
    ],
)
def test_redirect_uris_entra_would_refuse_cannot_be_registered(issuer: TokenIssuer, uri: str) -> None:
    with pytest.raises(ValueError, match="redirect URI"):
        issuer.register_redirect_uri(uri)
    assert uri not in issuer.redirect_uris


@pytest.mark.parametrize(
    "uri",
    [
        "http://127.0.0.1:8080/",
        "http://localhost:3000/app",
        "http://[::1]:8080/",
        "https://198.51.100.1:8443/",
    ],
)
def test_https_and_loopback_http_redirect_uris_are_accepted(uri: str) -> None:
    assert check_redirect_uri(uri) == uri


def test_origins_are_written_as_browsers_write_them() -> None:
    assert origin_of("http://127.0.0.1:8080/app/") == "http://127.0.0.1:8080"
    assert origin_of("https://Example.COM:443/x") == "https://example.com"
    assert origin_of("http://[::1]:8080/") == "http://[::1]:8080"


def test_redirect_uris_given_at_construction_are_registered(scenario: Scenario, lab_ca: LabCA) -> None:
    issuer = TokenIssuer(
        scenario, lab_ca, redirect_uris=["http://127.0.0.1:1234/"], spa_client_id=LAB_DAEMON_APP.client_id
    )

    assert issuer.redirect_uris == ("http://127.0.0.1:1234/",)
    assert issuer.spa_client_id == LAB_DAEMON_APP.client_id
    assert issuer.allows_origin("http://127.0.0.1:1234")
    assert not issuer.allows_origin(None)
