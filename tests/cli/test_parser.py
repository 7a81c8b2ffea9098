"""The command line: what `jit` accepts, and that `--help` stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest
from jitcli.main import _split_extra, build_parser, main


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_common_options_work_before_and_after_the_command() -> None:
    before = parse("--json", "--broker", "https://b.example", "ls")
    after = parse("ls", "--json", "--broker", "https://b.example")
    for args in (before, after):
        assert args.json is True
        assert args.broker == "https://b.example"


def test_ssh_options_and_client_arguments_after_double_dash() -> None:
    own, extra = _split_extra(
        ["ssh", "web-01", "-l", "root", "-p", "2222", "--", "-L", "8080:localhost:80", "uptime"]
    )
    args = parse(*own)
    assert (args.command, args.vm, args.user, args.port) == ("ssh", "web-01", "root", 2222)
    assert extra == ["-L", "8080:localhost:80", "uptime"]


def test_grant_needs_a_port() -> None:
    with pytest.raises(SystemExit) as caught:
        parse("grant", "db-01")
    assert caught.value.code == 2


def test_revoke_takes_an_id_or_mine_but_not_both() -> None:
    assert parse("revoke", "g-1").id == "g-1"
    assert parse("revoke", "--mine").mine is True
    for argv in (("revoke",), ("revoke", "g-1", "--mine")):
        with pytest.raises(SystemExit):
            parse(*argv)


def test_client_arguments_are_refused_for_other_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["ls", "--", "-v"])
    assert caught.value.code == 2
    assert "only for ssh and rdp" in capsys.readouterr().err


def test_help_lists_exit_codes_and_imports_neither_requests_nor_azure() -> None:
    probe = (
        "import sys\n"
        "from jitcli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', sorted(m for m in ('requests', 'azure.identity', 'urllib3') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert "exit codes:" in done.stdout
    assert "7    the port never answered" in done.stdout
    assert "HEAVY []" in done.stdout
