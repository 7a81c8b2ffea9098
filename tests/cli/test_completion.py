"""`jit completion bash|zsh|fish`: generated from the parser, valid for each shell, and free at start-up."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from jitcli.completion import SHELLS, describe, script
from jitcli.config import KEYS
from jitcli.main import AUDIT_KINDS, build_parser

from tests.cli.conftest import jit_command


def commands_and_options() -> list[tuple[str, list[str]]]:
    """(command path, its option strings) for every command the parser knows, nested ones included."""
    found: list[tuple[str, list[str]]] = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        found.append((path, [s for a in parser._actions for s in a.option_strings]))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, f"{path} {name}".strip())

    walk(build_parser(), "")
    return found


def run_jit(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "broken.toml"
    config.write_text("this is = = not toml\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8", "JIT_CONFIG": str(config)}
    return subprocess.run(
        [*jit_command(), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("completion")
    paths = {}
    for shell in SHELLS:
        paths[shell] = folder / f"jit.{shell}"
        paths[shell].write_text(script(shell, build_parser()))
    return paths


def need(shell: str) -> str:
    found = shutil.which(shell)
    if found is None:
        pytest.skip(f"{shell} is not installed")
    return found


# -- what every script contains ------------------------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
def test_the_script_names_every_command_and_every_option(shell: str, scripts: dict[str, Path]) -> None:
    text = scripts[shell].read_text()
    commands = commands_and_options()
    assert {path for path, _ in commands} >= {"ssh", "rdp", "grant", "ls", "revoke", "extend", "vms"}
    assert {path for path, _ in commands} >= {"whoami", "audit", "config get", "config set", "completion"}
    assert {path for path, _ in commands} >= {"approve", "deny", "withdraw"}
    for path, options in commands:
        for word in path.split():
            assert word in text, (shell, path)
        for option in options:
            spelled = f"-l {option[2:]}" if shell == "fish" and option.startswith("--") else option
            if shell == "fish" and not option.startswith("--"):
                spelled = f"-s {option[1:]}"
            assert spelled in text, (shell, path, option)


@pytest.mark.parametrize("shell", SHELLS)
def test_setting_names_and_shells_are_offered(shell: str, scripts: dict[str, Path]) -> None:
    text = scripts[shell].read_text()
    for name in [*KEYS, *SHELLS]:
        assert name in text


def test_a_word_a_script_cannot_carry_safely_is_refused() -> None:
    parser = argparse.ArgumentParser(prog="jit")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("ok$(reboot)")
    with pytest.raises(ValueError, match="not a plain word"):
        describe(parser)


# -- each shell accepts its script ---------------------------------------------------------------------------


def test_bash_accepts_the_bash_script(scripts: dict[str, Path]) -> None:
    done = subprocess.run(
        [need("bash"), "-n", str(scripts["bash"])], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_zsh_accepts_the_zsh_script(scripts: dict[str, Path]) -> None:
    done = subprocess.run(
        [need("zsh"), "-n", str(scripts["zsh"])], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_fish_accepts_the_fish_script(scripts: dict[str, Path]) -> None:
    done = subprocess.run(
        [need("fish"), "-n", str(scripts["fish"])], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


# -- and completes with it -----------------------------------------------------------------------------------

# the words typed, the last being completed -> exactly what must be offered
COMMANDS = {"ssh", "rdp", "grant", "ls", "revoke", "extend", "approve", "deny", "withdraw", "vms", "whoami"}
CASES: list[tuple[tuple[str, ...], set[str]]] = [
    (("jit", ""), COMMANDS | {"audit", "config", "completion"}),
    (("jit", "au"), {"audit"}),
    (("jit", "a"), {"approve", "audit"}),
    (("jit", "w"), {"whoami", "withdraw"}),
    (("jit", "deny", "g-1", "--re"), {"--reason"}),
    (("jit", "ls", "--aw"), {"--awaiting"}),
    (("jit", "audit", "--ki"), {"--kind"}),
    (("jit", "audit", "--kind", ""), set(AUDIT_KINDS)),
    (("jit", "audit", "--kind", "or"), {"orphan_removed"}),
    (("jit", "audit", "--since", ""), set()),  # a time or a duration: nothing to guess
    (("jit", "s"), {"ssh"}),
    (("jit", "ssh", "--dur"), {"--duration"}),
    (("jit", "--broker", "https://b.example", "s"), {"ssh"}),
    (("jit", "ssh", "-g", "rg-1", "web-01", "--wa"), {"--wait"}),
    (("jit", "config", ""), {"get", "set", "unset", "path"}),
    (("jit", "config", "get", "broker"), {"broker_url"}),
    (("jit", "completion", ""), {"bash", "zsh", "fish"}),
    (("jit", "ssh", "--duration", ""), set()),  # a duration: nothing to guess
    (("jit", "ssh", "web-01", "--", "-"), set()),  # ssh's own arguments
]


def bash_complete(path: Path, words: tuple[str, ...]) -> set[str]:
    program = (
        f"source {path}\n"
        f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
        "COMPREPLY=(); _jit; printf '%s\\n' \"${COMPREPLY[@]}\"\n"
    )
    done = subprocess.run([need("bash"), "-c", program], capture_output=True, text=True, check=True)
    return {line for line in done.stdout.splitlines() if line}


def fish_complete(path: Path, words: tuple[str, ...]) -> set[str]:
    line = " ".join(words)
    program = f"source {path}; complete -C {line!r}"
    done = subprocess.run([need("fish"), "-c", program], capture_output=True, text=True, check=True)
    return {entry.split("\t")[0] for entry in done.stdout.splitlines() if entry}


def zsh_complete(path: Path, words: tuple[str, ...]) -> set[str]:
    """The zsh function run with compsys' `_describe` and `compdef` stood in, printing what it offers."""
    program = (
        "compdef() { :; }\n"
        "_message() { :; }\n"
        '_describe() { local -a offered; offered=("${(@P)4}"); print -rl -- "${offered[@]%%:*}"; }\n'
        f"source {path}\n"
        f"words=({' '.join(repr(w) for w in words)}); CURRENT={len(words)}\n"
        "_jit\n"
    )
    done = subprocess.run([need("zsh"), "-f", "-c", program], capture_output=True, text=True, check=True)
    typed = words[-1]
    return {w for w in done.stdout.splitlines() if w and w.startswith(typed)}


@pytest.mark.parametrize(("words", "offered"), CASES, ids=[" ".join(c[0]) for c in CASES])
@pytest.mark.parametrize("shell", SHELLS)
def test_the_shell_offers_the_right_words(
    shell: str, scripts: dict[str, Path], words: tuple[str, ...], offered: set[str]
) -> None:
    complete = {"bash": bash_complete, "zsh": zsh_complete, "fish": fish_complete}[shell]
    got = complete(scripts[shell], words)
    assert got == offered


# -- no cost to anyone else ----------------------------------------------------------------------------------


def test_jit_completion_needs_no_settings_broker_or_token(tmp_path: Path) -> None:
    done = run_jit("completion", "bash", tmp_path=tmp_path)  # with a config file that does not parse
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("# bash completion for jit")
    assert "complete -F _jit jit" in done.stdout


def test_an_unknown_shell_is_a_usage_error(tmp_path: Path) -> None:
    done = run_jit("completion", "powershell", tmp_path=tmp_path)
    assert done.returncode == 2
    assert "bash" in done.stderr


def test_help_and_parsing_import_no_completion_sign_in_or_http_code() -> None:
    probe = (
        "import sys\n"
        "from jitcli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = ('jitcli.completion', 'jitcli.auth', 'jitcli.signin', 'requests', 'azure.identity',"
        " 'msal')\n"
        "print('HEAVY', sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert "HEAVY []" in done.stdout
