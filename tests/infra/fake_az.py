"""A stand-in for the `az` commands of infra/scripts/app-registration.sh, keeping Entra ID state in a file.

It knows only those commands (anything else exits 2, so a script change that calls something new is noticed),
and it rejects what Microsoft Graph rejects that a script could get wrong: a body that is not JSON, and a
pre-authorization naming a scope the app does not have.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

TENANT = "7d3c2f6e-0a1b-4c5d-8e9f-0123456789ab"


def _option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def _load() -> dict[str, Any]:
    path = Path(os.environ["FAKE_AZ_STATE"])
    state: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"apps": [], "sps": []}
    return state


def _save(state: dict[str, Any]) -> None:
    Path(os.environ["FAKE_AZ_STATE"]).write_text(json.dumps(state, indent=1))


def _app(state: dict[str, Any], key: str, value: str) -> dict[str, Any]:
    for app in state["apps"]:
        if app[key] == value:
            return dict(app)
    raise SystemExit(f"no application with {key} {value}")


def _patch(state: dict[str, Any], object_id: str, body: dict[str, Any]) -> None:
    app = _app(state, "id", object_id)
    app.update(body)
    scopes = {s["id"] for s in app.get("api", {}).get("oauth2PermissionScopes", [])}
    for pre in app.get("api", {}).get("preAuthorizedApplications", []):
        if not set(pre["delegatedPermissionIds"]) <= scopes:
            raise SystemExit("Graph: pre-authorized permission ids must name scopes of this app")
    state["apps"] = [app if a["id"] == object_id else a for a in state["apps"]]


def main(args: list[str]) -> int:
    state = _load()
    command = " ".join(a for a in args[:3] if not a.startswith("-"))
    state.setdefault("calls", []).append(args)
    out = ""
    if command.startswith("account show"):
        out = TENANT
    elif command.startswith("cloud show"):
        out = "https://graph.microsoft.com/"
    elif command == "ad app list":
        name = _option(args, "--filter").split("'")[1]
        out = next((a["appId"] for a in state["apps"] if a["displayName"] == name), "")
    elif command == "ad app create":
        app = {
            "id": str(uuid.uuid4()),
            "appId": str(uuid.uuid4()),
            "displayName": _option(args, "--display-name"),
            "signInAudience": _option(args, "--sign-in-audience"),
        }
        state["apps"].append(app)
        out = app["appId"]
    elif command == "ad app show":
        app = _app(state, "appId", _option(args, "--id"))
        if _option(args, "--query") == "spa.redirectUris[]":  # -o tsv: one per line
            spa: Any = app.get("spa") or {}
            out = "\n".join(spa.get("redirectUris", []))
        else:
            out = app["id"]
    elif command.startswith("rest"):
        assert _option(args, "--method") == "PATCH", args
        object_id = _option(args, "--uri").rsplit("/applications/", 1)[1]
        _patch(state, object_id, json.loads(_option(args, "--body")))
    elif command == "ad sp show":
        sp = next((s for s in state["sps"] if s["appId"] == _option(args, "--id")), None)
        if sp is None:
            _save(state)
            return 3
        out = sp["id"]
    elif command == "ad sp create":
        state["sps"].append({"id": str(uuid.uuid4()), "appId": _option(args, "--id")})
    elif command == "ad sp update":
        key, value = _option(args, "--set").split("=", 1)
        for sp in state["sps"]:
            if sp["appId"] == _option(args, "--id"):
                sp[key] = value == "true"
    else:
        print(f"fake az: unexpected command {args}", file=sys.stderr)
        _save(state)
        return 2
    _save(state)
    if out:
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
