"""`jit completion bash|zsh|fish`: a completion script generated from the argparse parser.

The script is static: it knows every command, every option (and which take a value) and the setting names, so
pressing Tab never starts Python. Words the broker alone knows (VM names, grant ids) are not completed. This
module is imported only by `jit completion`, so it adds nothing to the start-up of any other command.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

SHELLS = ("bash", "zsh", "fish")
#: Every word a script embeds unquoted must look like this (commands, options, setting names, choices).
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*|-{1,2}[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass(frozen=True)
class Option:
    """One option of a command: its spellings, what it is for, whether a value follows, and its choices."""

    strings: tuple[str, ...]
    help: str
    takes_value: bool
    choices: tuple[str, ...] = ()


@dataclass
class Command:
    """A command (the top level is the one with path ""): its options, and the words that may follow it."""

    path: str
    help: str
    options: list[Option] = field(default_factory=list)
    children: dict[str, Command] = field(default_factory=dict)
    #: Positional words with a description: allowed choices, or setting names.
    values: list[tuple[str, str]] = field(default_factory=list)

    def walk(self) -> Iterator[Command]:
        """This command, then every command below it."""
        yield self
        for child in self.children.values():
            yield from child.walk()

    def words(self) -> list[tuple[str, str]]:
        """What may follow as the next word: subcommands, then positional values."""
        return [(name, child.help) for name, child in self.children.items()] + self.values


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    """The completion script for `shell` (one of SHELLS)."""
    tree = describe(parser)
    writers: dict[str, Callable[[Command, str], str]] = {"bash": _bash, "zsh": _zsh, "fish": _fish}
    return writers[shell](tree, parser.prog)


def describe(parser: argparse.ArgumentParser, path: str = "", help_text: str = "") -> Command:
    """The command tree of `parser`, with the setting names as the values of `config get|set|unset`."""
    command = Command(path, _one_line(help_text or parser.description or ""))
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, child in action.choices.items():
                child_path = f"{path} {name}".strip()
                command.children[name] = describe(child, child_path, helps.get(name, ""))
        elif action.option_strings:
            if action.help == argparse.SUPPRESS:
                continue
            choices = tuple(str(c) for c in action.choices or ())
            command.options.append(
                Option(tuple(action.option_strings), _one_line(action.help or ""), action.nargs != 0, choices)
            )
        elif action.choices:
            command.values += [(str(c), "") for c in action.choices]
    if path in ("config get", "config set", "config unset"):
        from jitcli.config import KEYS

        command.values += [(key.name, _one_line(key.help)) for key in KEYS.values()]
    _check_words(command)
    return command


def _one_line(text: str) -> str:
    return " ".join(text.replace("%%", "%").split())


def _check_words(command: Command) -> None:
    """Refuse to embed anything that is not a plain word (the scripts put them in unquoted)."""
    words = [*command.children, *(v for v, _ in command.values)]
    words += [s for o in command.options for s in (*o.strings, *o.choices)]
    for word in words:
        if not _WORD.fullmatch(word):
            raise ValueError(f"cannot complete {word!r}: not a plain word")


def _value_options(tree: Command) -> list[tuple[str, str]]:
    """(command path, option) for every option that takes a value."""
    return [(c.path, s) for c in tree.walk() for o in c.options if o.takes_value for s in o.strings]


def _children(tree: Command) -> list[tuple[str, str]]:
    """(command path, subcommand) for every subcommand."""
    return [(c.path, name) for c in tree.walk() for name in c.children]


def _case_patterns(pairs: list[tuple[str, str]]) -> str:
    """`"path|word"|"path|word"` for a bash or zsh `case`."""
    return "|".join(f'"{path}|{word}"' for path, word in pairs) or '"|"'


# -- bash --------------------------------------------------------------------------------------------------


def _bash(tree: Command, prog: str) -> str:
    fn = "_" + prog.replace("-", "_")
    cases = []
    for command in tree.walk():
        opts = " ".join(s for o in command.options for s in o.strings)
        words = " ".join(w for w, _ in command.words())
        cases.append(f'        "{command.path}") opts="{opts}"; words="{words}" ;;')
        cases += [
            f'        "{command.path}|{s}") words="{" ".join(o.choices)}" ;;'
            for o in command.options
            if o.choices
            for s in o.strings
        ]
    return f"""# bash completion for {prog}, generated by `{prog} completion bash`.
# Try it:  source <({prog} completion bash)
# Keep it: {prog} completion bash > ~/.local/share/bash-completion/completions/{prog}

{fn}_takes_value() {{
    case "$1|$2" in
        {_case_patterns(_value_options(tree))}) return 0 ;;
    esac
    return 1
}}

{fn}_is_command() {{
    case "$1|$2" in
        {_case_patterns(_children(tree))}) return 0 ;;
    esac
    return 1
}}

{fn}() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    local cmdpath="" word expect="" i opts="" words=""
    for (( i = 1; i < COMP_CWORD; i++ )); do
        word="${{COMP_WORDS[i]}}"
        if [[ -n $expect ]]; then expect=""; continue; fi
        case $word in
            --) return 0 ;;  # what follows belongs to ssh or the RDP client
            -*=*) ;;
            -*) {fn}_takes_value "$cmdpath" "$word" && expect=1 ;;
            *) {fn}_is_command "$cmdpath" "$word" && cmdpath="${{cmdpath:+$cmdpath }}$word" ;;
        esac
    done
    local key="$cmdpath"
    [[ -n $expect ]] && key="$cmdpath|$prev"
    case "$key" in
{chr(10).join(cases)}
        *) return 0 ;;  # a value jit cannot guess (a VM, a duration, an address)
    esac
    if [[ -z $expect && $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    else
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
    fi
    return 0
}}

complete -F {fn} {prog}
"""


# -- zsh ---------------------------------------------------------------------------------------------------


def _zsh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _zsh_entries(pairs: list[tuple[str, str]]) -> str:
    return " ".join(_zsh_quote(f"{name}:{desc}" if desc else name) for name, desc in pairs)


def _zsh(tree: Command, prog: str) -> str:
    fn = "_" + prog.replace("-", "_")
    cases = []
    for command in tree.walk():
        opts = [(s, o.help) for o in command.options for s in o.strings]
        values = _zsh_entries(command.words())
        cases.append(f'        "{command.path}") opts=({_zsh_entries(opts)}); values=({values}) ;;')
        cases += [
            f'        "{command.path}|{s}") values=({_zsh_entries([(c, "") for c in o.choices])}) ;;'
            for o in command.options
            if o.choices
            for s in o.strings
        ]
    return f"""#compdef {prog}
# zsh completion for {prog}, generated by `{prog} completion zsh`.
# Try it:  source <({prog} completion zsh)   (after compinit)
# Keep it: {prog} completion zsh > "${{fpath[1]}}/_{prog}"   (a directory on $fpath), then restart zsh

{fn}() {{
    local cmdpath="" word expect="" i key
    local -a opts values
    for (( i = 2; i < CURRENT; i++ )); do
        word="${{words[i]}}"
        if [[ -n $expect ]]; then expect=""; continue; fi
        case $word in
            --) return 0 ;;  # what follows belongs to ssh or the RDP client
            -*=*) ;;
            -*) case "$cmdpath|$word" in
                    {_case_patterns(_value_options(tree))}) expect=1 ;;
                esac ;;
            *) case "$cmdpath|$word" in
                   {_case_patterns(_children(tree))}) cmdpath="${{cmdpath:+$cmdpath }}$word" ;;
               esac ;;
        esac
    done
    key="$cmdpath"
    [[ -n $expect ]] && key="$cmdpath|${{words[CURRENT-1]}}"
    case "$key" in
{chr(10).join(cases)}
        *) _message 'a value {prog} cannot guess'; return 0 ;;
    esac
    if [[ -z $expect && ${{words[CURRENT]}} == -* ]]; then
        _describe -t options 'option' opts
    else
        _describe -t values 'argument' values
    fi
}}

if [[ "${{funcstack[1]}}" == "{fn}" ]]; then
    {fn} "$@"
else
    compdef {fn} {prog}
fi
"""


# -- fish --------------------------------------------------------------------------------------------------


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish_patterns(pairs: list[tuple[str, str]]) -> str:
    return " ".join(_fish_quote(f"{path}|{word}") for path, word in pairs) or "''"


def _fish(tree: Command, prog: str) -> str:
    fn = "__" + prog.replace("-", "_")
    lines = []
    for command in tree.walk():
        at = f"-n {_fish_quote(f'{fn}_at {_fish_quote(command.path)}')}"
        for name, desc in command.words():
            lines.append(f"complete -c {prog} {at} -a {name} -d {_fish_quote(desc)}")
        for option in command.options:
            spellings = " ".join(
                f"-l {s[2:]}" if s.startswith("--") else f"-s {s[1:]}" for s in option.strings
            )
            takes = ""
            if option.choices:
                takes = f" -x -a {_fish_quote(' '.join(option.choices))}"
            elif option.takes_value:
                takes = " -x"  # a value, but not a file name
            lines.append(f"complete -c {prog} {at} {spellings}{takes} -d {_fish_quote(option.help)}")
    return f"""# fish completion for {prog}, generated by `{prog} completion fish`.
# Try it:  {prog} completion fish | source
# Keep it: {prog} completion fish > ~/.config/fish/completions/{prog}.fish

# The command path typed so far ("", "ssh", "config get", ...), or "--" once the client's own arguments begin.
function {fn}_path
    set -l cmdpath
    set -l expect 0
    for word in (commandline -opc)[2..-1]
        if test $expect = 1
            set expect 0
            continue
        end
        switch $word
            case --
                echo --
                return
            case '-*=*'
            case '-*'
                switch "$cmdpath|$word"
                    case {_fish_patterns(_value_options(tree))}
                        set expect 1
                end
            case '*'
                switch "$cmdpath|$word"
                    case {_fish_patterns(_children(tree))}
                        set -a cmdpath $word
                end
        end
    end
    echo "$cmdpath"
end

function {fn}_at
    set -l here ({fn}_path)
    test "$here" = "$argv[1]"
end

complete -c {prog} -e
complete -c {prog} -f
{chr(10).join(lines)}
"""
