"""Sign-in: the default `azure` chain through azure-identity's real AzureCliCredential, with `az` stood in.

The `az` stand-in does what `az account get-access-token` does: it asks the (lab) identity provider for a
token for the requested resource and prints Azure CLI's JSON. It records its arguments so the test can check
what `jit` asked for.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests.cli.conftest import Jit

AZ_STANDIN = """#!{python}
import json, os, pathlib, sys, time, urllib.parse, urllib.request

args = sys.argv[1:]
pathlib.Path(os.environ["AZ_RECORD"]).write_text(json.dumps(args))
if os.environ.get("AZ_LOGGED_OUT"):
    print("ERROR: Please run 'az login' to setup account.", file=sys.stderr)
    sys.exit(1)
resource = args[args.index("--resource") + 1]
tenant = args[args.index("--tenant") + 1] if "--tenant" in args else os.environ["AZ_TENANT"]
form = urllib.parse.urlencode(
    {{"grant_type": "password", "username": os.environ["AZ_USER"], "scope": resource + "/.default"}}
).encode()
url = os.environ["AZ_ISSUER"] + "/" + tenant + "/oauth2/v2.0/token"
with urllib.request.urlopen(url, data=form, timeout=10) as response:
    body = json.load(response)
expires_on = int(time.time()) + int(body["expires_in"])
print(json.dumps({{"accessToken": body["access_token"], "expires_on": expires_on, "tokenType": "Bearer"}}))
"""


def install_az(jit: Jit, issuer: Any, scenario: Any, user: str) -> dict[str, str]:
    az = jit.bin_dir / "az"
    az.write_text(AZ_STANDIN.replace("{python}", sys.executable).replace("{{", "{").replace("}}", "}"))
    az.chmod(0o755)
    return {
        "AZ_RECORD": str(jit.home / "az-argv.json"),
        "AZ_ISSUER": issuer.url,
        "AZ_TENANT": scenario.tenant.tenant_id,
        "AZ_USER": user,
        "JIT_AUTH": "azure",
        "JIT_LAB_ISSUER": "",
    }


def test_the_default_chain_uses_the_azure_cli_for_the_brokers_scope(
    jit: Jit, issuer: Any, scenario: Any
) -> None:
    env = install_az(jit, issuer, scenario, "bob")
    done = jit.run("whoami", "--json", **env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["upn"] == "bob@contoso.test"
    asked = json.loads(Path(env["AZ_RECORD"]).read_text())
    assert asked[asked.index("--resource") + 1] == scenario.tenant.app_id_uri
    assert asked[asked.index("--tenant") + 1] == scenario.tenant.tenant_id


def test_a_signed_out_azure_cli_is_an_auth_error_with_a_hint(jit: Jit, issuer: Any, scenario: Any) -> None:
    env = install_az(jit, issuer, scenario, "bob")
    done = jit.run("whoami", **{**env, "JIT_AUTH": "azure-cli", "AZ_LOGGED_OUT": "1"})
    assert done.returncode == 3
    assert "could not sign in to Azure" in done.stderr
    assert "az login" in done.stderr
