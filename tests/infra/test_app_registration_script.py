"""infra/scripts/app-registration.sh converges an Entra ID app registration to what the broker expects.

Run against `fake_az.py` (Entra ID cannot be reached here), which keeps the directory's state and rejects
malformed Graph bodies; the assertions are on that state, as Graph would hold it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.infra.bicep import INFRA, ROOT

SCRIPT = INFRA / "scripts" / "app-registration.sh"
AZURE_CLI = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"


def _run(tmp_path: Path, *args: str, web_url: str | None = None) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    az = bin_dir / "az"
    az.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).with_name("fake_az.py")}" "$@"\n')
    az.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",  # no azd here: the script must not need it
        "HOME": str(tmp_path),
        "FAKE_AZ_STATE": str(tmp_path / "directory.json"),
    }
    if web_url is not None:
        env["JIT_WEB_URL"] = web_url
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def _directory(tmp_path: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((tmp_path / "directory.json").read_text())
    return state


def _outputs(proc: subprocess.CompletedProcess[str]) -> dict[str, str]:
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


@pytest.fixture
def registered(tmp_path: Path) -> dict[str, Any]:
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stderr
    (app,) = _directory(tmp_path)["apps"]
    return {"app": app, "outputs": _outputs(proc), "directory": _directory(tmp_path)}


def test_the_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], check=False).returncode == 0


def test_the_app_is_single_tenant_with_an_api_uri_and_v2_tokens(registered):
    app = registered["app"]
    assert app["signInAudience"] == "AzureADMyOrg"
    assert app["identifierUris"] == [f"api://{app['appId']}"]
    assert app["api"]["requestedAccessTokenVersion"] == 2


def test_the_app_roles_are_the_ones_the_broker_checks(registered):
    sample = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    roles = {role["value"]: role for role in registered["app"]["appRoles"]}
    assert set(roles) == {
        sample["JIT_REQUESTER_ROLE"],
        sample["JIT_ADMIN_ROLE"],
        sample["JIT_AUDITOR_ROLE"],
        sample["JIT_SOURCE_OVERRIDE_ROLE"],
    }
    assert all(role["isEnabled"] and role["allowedMemberTypes"] == ["User"] for role in roles.values())
    assert len({role["id"] for role in roles.values()}) == 4


def test_the_azure_cli_is_pre_authorized_for_the_api_scope(registered):
    api = registered["app"]["api"]
    (scope,) = api["oauth2PermissionScopes"]
    assert scope["value"] == "user_impersonation" and scope["isEnabled"]
    assert api["preAuthorizedApplications"] == [{"appId": AZURE_CLI, "delegatedPermissionIds": [scope["id"]]}]


def test_only_people_assigned_a_role_get_tokens(registered):
    (sp,) = registered["directory"]["sps"]
    assert sp["appId"] == registered["app"]["appId"]
    assert sp["appRoleAssignmentRequired"] is True


def test_the_script_prints_what_the_deployment_needs(registered):
    app, outputs = registered["app"], registered["outputs"]
    assert outputs["JIT_API_CLIENT_ID"] == app["appId"]
    assert outputs["JIT_API_APP_ID_URI"] == f"api://{app['appId']}"
    assert outputs["JIT_TENANT_ID"]


def test_running_it_again_converges_on_the_same_app(tmp_path: Path):
    first = _run(tmp_path)
    before = _directory(tmp_path)
    second = _run(tmp_path)
    after = _directory(tmp_path)
    assert first.returncode == second.returncode == 0, second.stderr
    assert after["apps"] == before["apps"]
    assert after["sps"] == before["sps"]
    assert _outputs(first) == _outputs(second)


def test_a_custom_display_name_names_a_separate_app(tmp_path: Path):
    assert _run(tmp_path).returncode == 0
    assert _run(tmp_path, "jit-broker-staging").returncode == 0
    names = sorted(app["displayName"] for app in _directory(tmp_path)["apps"])
    assert names == ["jit-broker", "jit-broker-staging"]


def test_the_script_stops_when_az_is_missing(tmp_path: Path):
    env = {"PATH": "/nonexistent", "HOME": str(tmp_path)}
    proc = subprocess.run(["/bin/bash", str(SCRIPT)], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode != 0
    assert "az" in proc.stderr


SITE = "https://func-jit-abc123.azurewebsites.net"


def test_without_a_site_address_no_web_sign_in_is_registered_and_the_script_says_when_to_run_again(
    tmp_path: Path,
):
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stderr
    (app,) = _directory(tmp_path)["apps"]
    assert "spa" not in app
    assert "JIT_WEB_REDIRECT_URI" not in _outputs(proc)
    assert "run this again" in proc.stderr


def test_the_deployed_sites_root_becomes_the_web_pages_spa_redirect_uri(tmp_path: Path):
    proc = _run(tmp_path, web_url=SITE)
    assert proc.returncode == 0, proc.stderr
    (app,) = _directory(tmp_path)["apps"]
    assert app["spa"] == {"redirectUris": [f"{SITE}/"]}
    assert "web" not in app and "publicClient" not in app  # a SPA: code + PKCE, no secret, no implicit grant
    assert _outputs(proc)["JIT_WEB_REDIRECT_URI"] == f"{SITE}/"
    assert f"{SITE}/" in proc.stderr


def test_adding_the_site_again_converges_and_keeps_other_spa_redirect_uris(tmp_path: Path):
    assert _run(tmp_path, web_url="https://jit.contoso.test/").returncode == 0
    assert _run(tmp_path, web_url=SITE).returncode == 0
    assert _run(tmp_path, web_url=f"{SITE}/").returncode == 0
    assert _run(tmp_path).returncode == 0  # no address this time: what is registered stays
    (app,) = _directory(tmp_path)["apps"]
    assert app["spa"]["redirectUris"] == ["https://jit.contoso.test/", f"{SITE}/"]


def test_a_site_address_that_is_not_https_is_refused(tmp_path: Path):
    proc = _run(tmp_path, web_url="http://func-jit-abc123.azurewebsites.net")
    assert proc.returncode != 0
    assert "https://" in proc.stderr
