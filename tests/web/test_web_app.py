"""The page as the broker serves it (no browser): its files, its Content-Security-Policy, its sign-in settings
agreeing with what the lab's Entra ID stand-in expects of MSAL.js, and the files shipping in the package."""

from __future__ import annotations

import json
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from jitbroker.config import ConfigError, Settings
from jitbroker.web import MEDIA_TYPES, WebConfig, content_security_policy, install_web
from tests.broker.test_config import LAB_VALUES

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "web"


@pytest.fixture(scope="module")
def served(api_broker) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_broker.url, timeout=30) as client:
        yield client


def directives(policy: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for part in policy.split(";"):
        name, *values = part.split()
        found[name] = values
    return found


def test_the_page_is_served_at_the_root_with_a_strict_policy(served, issuer) -> None:
    page = served.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = directives(page.headers["content-security-policy"])
    issuer_origin = f"https://{urlsplit(issuer.url).netloc}"
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == ["'self'"] and policy["style-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'", issuer_origin]  # the broker and the sign-in authority only
    assert policy["frame-ancestors"] == ["'none'"] and policy["frame-src"] == ["'none'"]
    assert policy["object-src"] == ["'none'"] and policy["base-uri"] == ["'none'"]
    assert policy["form-action"] == ["'none'"]
    assert not any("unsafe" in value for values in policy.values() for value in values)
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "set-cookie" not in page.headers


def test_every_file_of_the_page_is_served_with_its_type_and_the_same_policy(served) -> None:
    for name, media_type in MEDIA_TYPES.items():
        answer = served.get(f"/web/{name}")
        assert answer.status_code == 200, name
        assert answer.headers["content-type"] == media_type
        assert answer.headers["content-security-policy"] == served.get("/").headers["content-security-policy"]


def test_nothing_else_is_served_under_web(served) -> None:
    for path in ("/web/index.html", "/web/../function_app.py", "/web/main.js", "/web/app.js.map"):
        answer = served.get(path)
        assert answer.status_code == 404, path
        assert answer.json()["error"]["code"] == "not_found"


def test_the_sign_in_settings_are_what_msal_needs_against_the_lab(
    served, issuer, scenario, api_broker
) -> None:
    config = served.get("/web/config.json").json()
    expected = issuer.msal_config(f"{api_broker.url}/")["auth"]
    assert config["authority"] == expected["authority"]
    assert config["clientId"] == expected["clientId"] == scenario.tenant.api_client_id
    assert config["knownAuthorities"] == expected["knownAuthorities"]
    assert config["scopes"] == [issuer.api_scope_uri]
    assert config["roles"] == {"admin": "JIT.Admin", "auditor": "JIT.Auditor", "approver": "JIT.Approver"}


def test_the_web_client_id_setting_names_another_app_registration() -> None:
    own = WebConfig.of(Settings.from_env(LAB_VALUES))
    assert own.client_id == LAB_VALUES["JIT_API_CLIENT_ID"]
    assert own.authority == f"https://login.microsoftonline.com/{LAB_VALUES['JIT_TENANT_ID']}"
    assert own.known_authority == "login.microsoftonline.com"
    assert own.scope == "api://jit-broker-lab/user_impersonation"
    spa = "5bd7c0e3-9a7e-4f0b-8c41-2d6e8f1a3b57"
    assert WebConfig.of(Settings.from_env({**LAB_VALUES, "JIT_WEB_CLIENT_ID": spa.upper()})).client_id == spa
    with pytest.raises(ConfigError, match="JIT_WEB_CLIENT_ID"):
        Settings.from_env({**LAB_VALUES, "JIT_WEB_CLIENT_ID": "my-spa"})


def test_connections_are_allowed_to_the_authoritys_origin_only() -> None:
    policy = directives(content_security_policy("https://login.microsoftonline.com"))
    assert policy["connect-src"] == ["'self'", "https://login.microsoftonline.com"]
    lab = directives(content_security_policy("https://127.0.0.1:8443"))
    assert lab["connect-src"] == ["'self'", "https://127.0.0.1:8443"]


def test_a_package_without_the_built_page_says_how_to_build_it(tmp_path: Path) -> None:
    app = FastAPI()
    install_web(app, lambda: Settings.from_env(LAB_VALUES), static_dir=tmp_path)
    answer = TestClient(app).get("/")
    assert answer.status_code == 503
    assert "make setup" in answer.text


class _Markup(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inline: list[str] = []
        self.links: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "style" or "style" in named or any(name.startswith("on") for name in named):
            self.inline.append(f"<{tag} {named}>")
        if tag == "script" and not named.get("src"):
            self.inline.append("<script> without src")
        self.links += [value for name, value in attrs if name in ("src", "href") and value]


def test_the_page_has_no_inline_script_or_style_and_links_only_to_itself() -> None:
    markup = _Markup()
    markup.feed((WEB / "index.html").read_text(encoding="utf-8"))
    assert markup.inline == []
    assert markup.links and all(
        link.startswith(("/", "#")) and not link.startswith("//") for link in markup.links
    )


def test_the_built_files_ship_in_the_functions_package_and_the_sources_do_not() -> None:
    lines = (ROOT / ".funcignore").read_text(encoding="utf-8").splitlines()
    ignored = {line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")}
    assert "web" in ignored
    shipped = ("jitbroker", "jitbroker/static", "static", "*.js", "*.css", "*.html", "*.svg")
    assert ignored.isdisjoint(shipped)
    built = ROOT / "jitbroker" / "static"
    assert sorted(p.name for p in built.iterdir()) == sorted(["index.html", *MEDIA_TYPES])


def test_msal_and_the_bundler_come_from_npm_pinned_exactly() -> None:
    package = json.loads((ROOT / "package.json").read_text(encoding="utf-8"))
    tools = package["devDependencies"]
    assert {"@azure/msal-browser", "esbuild", "azurite"} <= set(tools)
    assert all(version[0].isdigit() for version in tools.values()), "exact versions, no ranges"
    assert package["scripts"]["build"] == "node web/build.mjs"
