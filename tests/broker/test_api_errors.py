"""Every error leaves the broker as `{"error": {"code", "message"}}` with the right status, never a trace."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest


@pytest.fixture
def alice(as_user) -> httpx.Client:
    client: httpx.Client = as_user("alice")
    return client


def assert_error(response: httpx.Response, status: int, code: str, *, mentions: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert mentions.lower() in body["error"]["message"].lower()
    assert "Traceback" not in response.text


def test_health_needs_no_token_and_says_ok(api_broker) -> None:
    response = httpx.get(f"{api_broker.url}/api/health")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_the_openapi_document_and_docs_are_served(api_broker) -> None:
    document = httpx.get(f"{api_broker.url}/api/openapi.json").json()
    assert {"/api/v1/grants", "/api/v1/grants/{grant_id}", "/api/v1/grants/{grant_id}/extend"} <= set(
        document["paths"]
    )
    assert {"/api/v1/vms", "/api/v1/whoami", "/api/health"} <= set(document["paths"])
    assert document["components"]["schemas"]["GrantIn"]["additionalProperties"] is False
    assert "swagger" in httpx.get(f"{api_broker.url}/api/docs").text.lower()


@pytest.mark.parametrize(
    ("headers", "mentions"),
    [
        ({}, "no access token"),
        ({"Authorization": "Basic YWxpY2U6c2VjcmV0"}, "Bearer"),
        ({"Authorization": "Bearer not.a.token"}, ""),
    ],
)
def test_requests_without_a_valid_token_are_401(api_broker, headers, mentions) -> None:
    response = httpx.get(f"{api_broker.url}/api/v1/grants", headers=headers)
    assert_error(response, 401, "unauthenticated", mentions=mentions)
    assert response.headers["www-authenticate"] == "Bearer"


def test_an_expired_token_is_401(as_user, token_for) -> None:
    client = as_user("alice", token=token_for("alice", exp=1_000_000_000, nbf=999_999_000, iat=999_999_000))
    assert_error(client.get("/api/v1/whoami"), 401, "unauthenticated")


def test_unknown_routes_and_methods_use_the_error_shape(alice) -> None:
    assert_error(alice.get("/api/v1/nothing"), 404, "not_found")
    assert_error(alice.put("/api/v1/grants", json={}), 405, "method_not_allowed")


def test_bad_json_is_400(alice) -> None:
    response = alice.post(
        "/api/v1/grants", content=b'{"vm": "web-01",', headers={"Content-Type": "application/json"}
    )
    assert_error(response, 400, "invalid_request", mentions="not valid JSON")


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        ({"vm": "web-01", "sudo": True}, "unknown field 'sudo'"),
        ({}, "vm: required"),
        ({"vm": "web-01", "port": 70000}, "port"),
        ({"vm": "web-01", "port": 0}, "port"),
        ({"vm": "web-01", "port": "twenty-two"}, "port"),
        ({"vm": "web-01", "duration": 1.5}, "duration"),
        ({"vm": "web-01", "duration": True}, "duration"),
        ({"vm": ""}, "vm"),
        ([1, 2], "body"),
    ],
)
def test_malformed_bodies_are_422_naming_the_field(alice, body, mentions) -> None:
    assert_error(alice.post("/api/v1/grants", json=body), 422, "invalid_request", mentions=mentions)


@pytest.mark.parametrize(
    ("duration", "mentions"),
    [("soon", "not a duration"), ("PT0S", "longer than zero"), (-5, "longer than zero")],
)
def test_bad_durations_are_400_with_the_accepted_forms(alice, duration, mentions) -> None:
    response = alice.post("/api/v1/grants", json={"vm": "web-01", "duration": duration})
    assert_error(response, 400, "invalid_request", mentions=mentions)


def test_an_oversize_body_is_413_whether_announced_or_streamed(alice) -> None:
    big = b'{"vm": "web-01", "justification": "' + b"x" * 40_000 + b'"}'
    assert_error(
        alice.post("/api/v1/grants", content=big, headers={"Content-Type": "application/json"}),
        413,
        "payload_too_large",
    )

    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b"x" * 1024

    streamed = alice.post("/api/v1/grants", content=chunks(), headers={"Content-Type": "application/json"})
    assert_error(streamed, 413, "payload_too_large")


def test_extend_needs_a_duration_and_nothing_else(alice) -> None:
    assert_error(
        alice.post("/api/v1/grants/g-x/extend", json={}), 422, "invalid_request", mentions="duration"
    )
    assert_error(
        alice.post("/api/v1/grants/g-x/extend", json={"duration": "1h", "forever": 1}),
        422,
        "invalid_request",
        mentions="unknown field",
    )
    assert_error(alice.post("/api/v1/grants/g-x/extend", json={"duration": "1h"}), 404, "not_found")


def test_a_malformed_grant_id_is_422(alice) -> None:
    assert_error(alice.get("/api/v1/grants/" + "a" * 100), 422, "invalid_request")
    assert_error(alice.get("/api/v1/grants/bad%20id"), 422, "invalid_request")
