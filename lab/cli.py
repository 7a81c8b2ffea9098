"""`jit-lab`: run the local Azure lab in the foreground, and get tokens and settings from it.

    jit-lab up [--scenario FILE] [--port-base N] [--state-dir DIR] [--no-broker]
    jit-lab token USER [--scenario FILE] [--issuer URL] [--ca-bundle FILE] [--resource URI] [--state-dir DIR]
    jit-lab env [--for all|broker|cli] [--user USER] [--state-dir DIR]

`up` starts the lab CA, the token issuer, the ARM emulator, Azurite and the broker, prints every endpoint
and the broker's settings (never a token; the managed-identity header masked), writes them to
`{state-dir}/state.json` (mode 0600) for `token` and `env`, and stops everything on Ctrl-C or SIGTERM.
With `--port-base N` the parts listen on N (issuer, HTTPS), N+1 (managed identity, HTTP), N+2 (ARM),
N+3 (Azurite), N+4 (broker); without it, on free ports. The state folder defaults to `$JIT_LAB_STATE_DIR`
or `./.lab`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_NO_LAB = 3
EXIT_REFUSED = 4


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `jit-lab` console script."""
    args = _parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("JIT_LAB_STATE_DIR", ".lab")),
        help="where a running lab keeps its CA and state.json (default: $JIT_LAB_STATE_DIR or ./.lab)",
    )
    parser = argparse.ArgumentParser(prog="jit-lab", description="The local Azure lab for jit-broker.")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", parents=[common], help="start the lab in the foreground; Ctrl-C stops it")
    up.add_argument("--scenario", type=Path, help="scenario file (default: the demo scenario)")
    up.add_argument("--port-base", type=int, default=0, help="listen on N..N+4 instead of free ports")
    up.add_argument("--no-broker", action="store_true", help="start the Azure stand-ins only")
    up.set_defaults(handler=_up)

    token = commands.add_parser("token", parents=[common], help="print an access token for a scenario user")
    token.add_argument("user", help="a scenario user's name (alice, bob, …) or UPN")
    token.add_argument("--scenario", type=Path, help="scenario file (default: the running lab's)")
    token.add_argument("--issuer", help="the issuer's base URL (default: the running lab's)")
    token.add_argument("--ca-bundle", type=Path, help="CA bundle to trust (default: the running lab's)")
    token.add_argument("--resource", help="token audience resource (default: the broker's app ID URI)")
    token.set_defaults(handler=_token)

    env = commands.add_parser(
        "env", parents=[common], help="print `export` lines for a shell that talks to the running lab"
    )
    env.add_argument("--for", dest="target", choices=("all", "broker", "cli"), default="all")
    env.add_argument("--user", default="alice", help="the scenario user the `jit` CLI signs in as")
    env.set_defaults(handler=_env)
    return parser


# -- up ------------------------------------------------------------------------------------------------------


def _up(args: argparse.Namespace) -> int:
    from lab.azurite import AzuriteError

    try:
        return _run_lab(args)
    except AzuriteError as exc:
        return _fail(str(exc), EXIT_NO_LAB)


def _run_lab(args: argparse.Namespace) -> int:
    from lab.scenario import DEMO_SCENARIO

    scenario_path = Path(args.scenario or DEMO_SCENARIO).resolve()
    state_dir: Path = args.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    with contextlib.ExitStack() as parts:
        state = _start_parts(parts, scenario_path, state_dir, args.port_base, with_broker=not args.no_broker)
        state_path = _write_state(state_dir, state)
        parts.callback(state_path.unlink, missing_ok=True)
        _print_summary(state, state_path)
        stop.wait()
        _say("stopping the lab")
    _say("lab stopped")
    return EXIT_OK


def _start_parts(
    parts: contextlib.ExitStack, scenario_path: Path, state_dir: Path, base: int, *, with_broker: bool
) -> dict[str, Any]:
    """Start every part in dependency order, each one's stop registered on `parts`; returns the state."""
    from lab.azurite import Azurite
    from lab.issuer import TokenIssuer
    from lab.scenario import load_scenario
    from lab.settings import lab_broker_settings
    from lab.tls import LabCA

    def port(offset: int) -> int:
        return base + offset if base else 0

    scenario = load_scenario(scenario_path)
    ca = LabCA(state_dir / "ca")
    issuer = TokenIssuer(scenario, ca, port=port(0), identity_port=port(1)).start()
    parts.callback(issuer.stop)
    arm = _start_arm(scenario, ca, issuer, port(2))
    if arm is not None:
        parts.callback(arm.stop)
    azurite = Azurite(state_dir / "azurite", port=port(3)).start()
    parts.callback(azurite.stop)

    arm_url = str(arm.url) if arm is not None else ""
    settings = lab_broker_settings(scenario, ca=ca, issuer=issuer, arm_url=arm_url, azurite=azurite)
    broker_url = None
    if not with_broker:
        _say("broker: not started (--no-broker)")
    elif arm is None:
        _say("broker: not started (it needs the ARM emulator)")
    else:
        broker = _start_broker(settings, port(4))
        if broker is not None:
            parts.callback(broker.stop)
            broker_url = str(broker.url)
            issuer.register_redirect_uri(f"{broker_url}/")  # the web page signs in there (docs/web.md)
    return {
        "pid": os.getpid(),
        "scenario": str(scenario_path),
        "ca_bundle": str(ca.ca_bundle),
        "issuer": issuer.url,
        "discovery": issuer.discovery_url,
        "jwks": issuer.jwks_uri,
        "token_endpoint": issuer.token_endpoint,
        "identity_endpoint": issuer.identity_endpoint,
        "arm": arm_url or None,
        "azurite": azurite.table_endpoint,
        "broker": broker_url,
        "tenant_id": scenario.tenant.tenant_id,
        "scope": f"{scenario.tenant.app_id_uri}/.default",
        "settings": settings,
    }


def _print_summary(state: dict[str, Any], state_path: Path) -> None:
    from lab.settings import redacted

    _say("")
    _say(f"issuer (OpenID):  {state['discovery']}")
    _say(f"issuer (JWKS):    {state['jwks']}")
    _say(f"issuer (token):   {state['token_endpoint']}")
    _say(f"managed identity: {state['identity_endpoint']}")
    _say(f"ARM emulator:     {state['arm'] or '-'}")
    _say(f"Azurite tables:   {state['azurite']}")
    _say(f"broker:           {state['broker'] or '-'}")
    if state["broker"]:
        _say(f"web page:         {state['broker']}/  (sign in as alice, or any scenario user)")
    _say(f"CA bundle:        {state['ca_bundle']}")
    _say(f"state:            {state_path}")
    _say("")
    _say("broker settings:")
    for name, value in redacted(state["settings"]).items():
        _say(f"  {name}={value}")
    _say("")
    _say("lab ready: `jit-lab token alice` prints a token, `jit-lab env` the shell exports; Ctrl-C stops")


def _start_arm(scenario: Any, ca: Any, issuer: Any, port: int) -> Any:
    try:
        from lab.arm import ArmEmulator
    except ImportError as exc:
        _say(f"ARM emulator: not available ({exc})")
        return None
    emulator = ArmEmulator(
        scenario,
        certfile=ca.certfile,
        keyfile=ca.keyfile,
        port=port,
        token_validator=issuer.arm_token_validator,
    )
    emulator.start()
    return emulator


def _start_broker(settings: dict[str, str], port: int) -> Any:
    try:
        from lab.broker import BrokerProcess
    except ImportError as exc:
        _say(f"broker: not available ({exc})")
        return None
    broker = BrokerProcess(settings, port=port)
    broker.start()
    return broker


def _write_state(state_dir: Path, state: dict[str, Any]) -> Path:
    path = state_dir / STATE_FILE
    # The state holds the managed-identity header: readable by its owner only.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(state, out, indent=2)
    return path


def _read_state(state_dir: Path) -> dict[str, Any] | None:
    path = state_dir / STATE_FILE
    try:
        state: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    return state


# -- token ---------------------------------------------------------------------------------------------------


def _token(args: argparse.Namespace) -> int:
    import requests

    from lab.scenario import load_scenario

    state = _read_state(args.state_dir) or {}
    issuer_url = args.issuer or state.get("issuer")
    if not issuer_url:
        return _fail(f"no running lab found in {args.state_dir} (start one with `jit-lab up`)", EXIT_NO_LAB)
    scenario = load_scenario(args.scenario or state.get("scenario"))
    resource = args.resource or scenario.tenant.app_id_uri
    ca_bundle = args.ca_bundle or state.get("ca_bundle")
    verify: str | bool = str(ca_bundle) if ca_bundle else True
    url = f"{issuer_url.rstrip('/')}/{scenario.tenant.tenant_id}/oauth2/v2.0/token"
    form = {"grant_type": "password", "username": args.user, "scope": f"{resource}/.default"}
    try:
        response = requests.post(url, data=form, timeout=10, verify=verify)
    except requests.RequestException as exc:
        return _fail(f"cannot reach the lab issuer at {issuer_url}: {exc}", EXIT_NO_LAB)
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    if response.status_code != 200 or "access_token" not in body:
        detail = body.get("error_description") or response.reason
        return _fail(f"the lab issuer refused a token for {args.user!r}: {detail}", EXIT_REFUSED)
    print(body["access_token"])
    return EXIT_OK


# -- env -----------------------------------------------------------------------------------------------------


def _env(args: argparse.Namespace) -> int:
    state = _read_state(args.state_dir)
    if state is None:
        return _fail(f"no running lab found in {args.state_dir} (start one with `jit-lab up`)", EXIT_NO_LAB)
    exports: dict[str, str] = {}
    if args.target in ("all", "broker"):
        exports |= state["settings"]
    if args.target in ("all", "cli"):
        exports |= {
            "JIT_BROKER_URL": state.get("broker") or "",
            "JIT_SCOPE": state["scope"],
            "JIT_TENANT_ID": state["tenant_id"],
            "JIT_AUTH": "lab",
            "JIT_LAB_ISSUER": state["issuer"],
            "JIT_LAB_USER": args.user,
            "REQUESTS_CA_BUNDLE": state["ca_bundle"],
            "SSL_CERT_FILE": state["ca_bundle"],
        }
    for name, value in exports.items():
        print(f"export {name}={shlex.quote(value)}")
    return EXIT_OK


def _say(line: str) -> None:
    print(line, flush=True)


def _fail(message: str, code: int) -> int:
    print(f"jit-lab: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
