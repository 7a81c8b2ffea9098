"""`jit`: argument parsing and dispatch only; heavy imports wait until after parsing, so `--help` is fast."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence

from jitcli.exitcodes import HELP_TEXT, ExitCode

DESCRIPTION = """Just-in-time access to Azure VMs through jit-broker: ask, get in, the port closes behind you.

  jit ssh web-01                     open SSH for your address, wait for it, run ssh, revoke on exit
  jit rdp win-01 -g prod             the same with your RDP client
  jit grant db-01 --port 5432        open only, print where to connect
  jit ls | jit revoke --mine         see and close your grants
  jit ssh prod-01                    a VM that needs approval: wait for an approver, then connect
  jit ls --awaiting                  what waits for you to approve: jit approve ID, jit deny ID --reason …
  jit audit --since 2h --vm web-01   who opened what, when (admins and auditors)"""

#: The audit trail's event kinds (docs/api.md, `GET /api/v1/audit`).
AUDIT_KINDS = (
    "requested",
    "approved",
    "granted",
    "denied",
    "withdrawn",
    "failed",
    "revoked",
    "expired",
    "extended",
    "orphan_removed",
)
#: The broker's longest approval or denial reason (docs/api.md).
REASON_MAX = 500
_OBJECT_ID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

SETTINGS_TEXT = """settings (flags > environment > config file; `jit config path` shows the file):
  broker_url JIT_BROKER_URL   scope JIT_SCOPE   tenant_id JIT_TENANT_ID   auth JIT_AUTH
  resource_group JIT_RESOURCE_GROUP   duration JIT_DURATION   connect_host JIT_CONNECT_HOST   wait JIT_WAIT
  (`jit config get` lists them all with their sources)"""


def _common() -> argparse.ArgumentParser:
    """Options every command accepts, before or after its name."""
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    common.add_argument("-v", "--verbose", action="store_true", help="trace HTTP requests (tokens redacted)")
    common.add_argument("--broker", metavar="URL", help="the broker's base URL (setting broker_url)")
    return common


def _request_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("vm", metavar="VM", help="the VM's name")
    parser.add_argument("-g", "--resource-group", metavar="RG", help="the VM's resource group")
    parser.add_argument("--subscription", metavar="ID", help="the VM's subscription ID")
    parser.add_argument("--duration", metavar="D", help="how long: 30m, 2h, PT1H (policy caps it)")
    parser.add_argument(
        "--source",
        metavar="CIDR",
        help="open for this address instead of the one the broker sees (policy permitting)",
    )
    parser.add_argument("--reason", metavar="TEXT", help="justification, recorded in the audit trail")


def _session_options(parser: argparse.ArgumentParser, default_client: str) -> None:
    _request_options(parser)
    parser.add_argument("-l", "--user", metavar="USER", help="log in as USER (default: the VM's admin user)")
    parser.add_argument(
        "-p", "--port", type=int, metavar="PORT", help=f"the VM's port (default: {default_client})"
    )
    parser.add_argument(
        "--connect-host",
        metavar="HOST",
        help="connect through this address instead of the VM's (a bastion or tunnel that forwards to it)",
    )
    parser.add_argument("--connect-port", type=int, metavar="PORT", help="the port at --connect-host")
    parser.add_argument("--wait", metavar="D", help="how long to wait for the port to answer (default 120s)")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    common = _common()
    parser = argparse.ArgumentParser(
        prog="jit",
        description=DESCRIPTION,
        epilog=SETTINGS_TEXT + "\n\n" + HELP_TEXT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version="%(prog)s " + _version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, parents=[common])

    ssh = add("ssh", "open SSH for you, wait until it answers, run ssh, revoke on exit")
    _session_options(ssh, "22")
    ssh.epilog = "arguments after -- go to ssh, e.g. jit ssh web-01 -- -L 8080:localhost:80"
    rdp = add("rdp", "open RDP for you, wait until it answers, run your RDP client, revoke on exit")
    _session_options(rdp, "3389")

    grant = add("grant", "open a port for you and print where to connect (no client, no revoke)")
    _request_options(grant)
    grant.add_argument("--port", type=int, required=True, metavar="N", help="the VM's port to open")

    ls = add("ls", "list your grants, or the requests waiting for you to approve (--awaiting)")
    whose = ls.add_mutually_exclusive_group()
    whose.add_argument("--all", action="store_true", help="everyone's grants (admins)")
    whose.add_argument(
        "--awaiting",
        action="store_true",
        help="the requests waiting for an approver that you may approve (approvers)",
    )
    ls.add_argument(
        "--status", help="only grants with this status (active, awaiting_approval, revoked, expired, …)"
    )

    revoke = add("revoke", "close a grant now")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", metavar="ID", help="the grant's id")
    which.add_argument("--mine", action="store_true", help="every active grant of yours")

    extend = add("extend", "keep a grant open longer (within policy)")
    extend.add_argument("id", metavar="ID", help="the grant's id")
    extend.add_argument(
        "--duration", metavar="D", help="new expiry = now + D (default: the duration setting, else 1h)"
    )

    _approval_commands(add)
    add("vms", "list the VMs you may ask for")
    add("whoami", "show who the broker thinks you are, your roles and address")

    audit = add("audit", "read the broker's audit trail, newest first (admins and auditors)")
    audit.add_argument(
        "--since",
        metavar="T",
        help="from this long ago (24h, PT2H) or this ISO 8601 time (default: 24h before --until)",
    )
    audit.add_argument(
        "--until", metavar="T", help="up to this long ago or this ISO 8601 time (default: now)"
    )
    audit.add_argument(
        "--kind",
        choices=AUDIT_KINDS,
        metavar="KIND",
        help="only events of this kind: " + ", ".join(AUDIT_KINDS),
    )
    audit.add_argument("--vm", metavar="VM", help="only events of this VM (name or resource id)")
    audit.add_argument(
        "--user", type=_principal, metavar="OID", help="only this person's events: their object id, or me"
    )
    audit.add_argument(
        "--limit", type=_positive, metavar="N", help="at most N events, the newest (default: every page)"
    )

    config = add("config", "read or change settings")
    actions = config.add_subparsers(dest="action", metavar="ACTION", required=True)
    get = actions.add_parser(
        "get", help="show one setting, or all with where each comes from", parents=[common]
    )
    get.add_argument("key", nargs="?", metavar="KEY")
    set_ = actions.add_parser("set", help="store a setting in the config file", parents=[common])
    set_.add_argument("key", metavar="KEY")
    set_.add_argument("value", metavar="VALUE")
    unset = actions.add_parser("unset", help="remove a setting from the config file", parents=[common])
    unset.add_argument("key", metavar="KEY")
    actions.add_parser("path", help="print the config file's path", parents=[common])

    completion = add("completion", "print a shell completion script (bash, zsh or fish; see cli/README.md)")
    completion.add_argument("shell", choices=("bash", "zsh", "fish"), help="the shell to complete for")
    return parser


def _approval_commands(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """`jit approve`, `jit deny` and `jit withdraw` (VMs tagged `jit-approval: required`)."""
    approve = add("approve", "approve a request waiting for you: its port opens now, for the duration asked")
    approve.add_argument("id", metavar="ID", help="the grant's id (jit ls --awaiting)")
    approve.add_argument("--reason", type=_text, metavar="TEXT", help="why, recorded in the audit trail")
    deny = add("deny", "deny a request waiting for you, saying why (the requester reads it)")
    deny.add_argument("id", metavar="ID", help="the grant's id (jit ls --awaiting)")
    deny.add_argument("--reason", type=_text, required=True, metavar="TEXT", help="why (required)")
    withdraw = add("withdraw", "withdraw your request while it waits for an approver")
    withdraw.add_argument("id", metavar="ID", help="the grant's id")


def _principal(text: str) -> str:
    """`--user`: an Entra object id (what the audit trail records) or `me`; anything else is a usage error
    that says so, rather than a query that silently matches nothing."""
    value = text.strip()
    if value.lower() == "me" or _OBJECT_ID.fullmatch(value):
        return value.lower()
    hint = f"; look it up with `az ad user show --id {value} --query id -o tsv`" if "@" in value else ""
    raise argparse.ArgumentTypeError(
        f"{value!r} is not an object id: the audit trail records people by their Entra object id "
        f"(a GUID such as 00000000-0000-0000-0000-000000000000), or say `me`{hint}"
    )


def _text(text: str) -> str:
    """A reason: not empty, at most the broker's 500 characters."""
    value = text.strip()
    if not value:
        raise argparse.ArgumentTypeError("say why: the reason must not be empty")
    if len(value) > REASON_MAX:
        raise argparse.ArgumentTypeError(f"at most {REASON_MAX} characters, not {len(value)}")
    return value


def _positive(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return number


def _version() -> str:
    from jitcli import __version__

    return __version__


def _split_extra(argv: list[str]) -> tuple[list[str], list[str]]:
    """Arguments after the first `--` belong to the client (ssh / RDP), not to `jit`."""
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1 :]
    return argv, []


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `jit` console script; returns the exit code."""
    own, extra = _split_extra(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(own)
    if extra and args.command not in ("ssh", "rdp"):
        parser.error(f"arguments after -- are only for ssh and rdp, not {args.command}")
    if args.command == "ls" and args.awaiting and args.status:
        parser.error("--awaiting lists requests awaiting approval; it takes no --status")
    args.extra = extra
    if args.command == "completion":
        # Needs no settings, broker or token: a broken config file must not break the shell's completion.
        from jitcli.completion import script

        sys.stdout.write(script(args.shell, parser))
        return 0
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    from jitcli import commands
    from jitcli.errors import CliError
    from jitcli.output import Output

    handlers = {
        "ssh": commands.cmd_session,
        "rdp": commands.cmd_session,
        "grant": commands.cmd_grant,
        "ls": commands.cmd_ls,
        "revoke": commands.cmd_revoke,
        "extend": commands.cmd_extend,
        "approve": commands.cmd_approve,
        "deny": commands.cmd_deny,
        "withdraw": commands.cmd_withdraw,
        "vms": commands.cmd_vms,
        "whoami": commands.cmd_whoami,
        "audit": commands.cmd_audit,
        "config": commands.cmd_config,
    }
    out = Output(json_mode=bool(getattr(args, "json", False)))
    try:
        ctx = commands.Context(args)
        return handlers[args.command](ctx)
    except CliError as exc:
        out.error(exc)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
