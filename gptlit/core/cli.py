"""Command-line values as the user typed them, before Hydra's override parser sees them.

Hydra's grammar takes only ASCII in an unquoted value: `prompt=café`, `prompt=每一次努力` or
`data.path=/data/中文.txt` stop in its lexer with a LexerNoViableAltException. Inside quotes any
character is fine, so hydra_argv() quotes, for Hydra, each value (or each element of an `a,b` sweep,
a list or a dict) that holds a non-ASCII character. ASCII arguments, flags
(-m, --cfg job, --config-name x), `+`/`~`/`++` prefixes and values already in quotes pass unchanged,
so the rewrite is idempotent: a command printed from Hydra's recorded overrides runs again as is.

train.py, sample.py and eval.py (every Hydra command line: gptlit.commands) call hydra_argv, then
check_group_options, on sys.argv before @hydra.main. export.py and report.py, which have no config,
read their key=value arguments with parse_key_values.
"""

from __future__ import annotations

import re
import sys

# Hydra's flags that take the next argument as their value (that argument is no override)
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                     "--config-dir", "-cd", "--experimental-rerun", "--info", "-i"}
_MULTIRUN = {"-m", "--multirun"}
_STRUCTURE = set("[]{}(),:=")  # separators inside a list, dict or function call
_FUNCTION = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_]*\s*\(")

# the typed argument of each one rewritten here, to show commands as the user wrote them
_typed: dict[str, str] = {}


def _non_ascii(s: str) -> bool:
    return any(ord(c) > 127 for c in s)


def quote(value: str) -> str:
    """`value` as one quoted string of Hydra's grammar: single quotes (double where the value holds a
    single quote and no double one), the enclosing quote escaped inside, and backslashes that precede
    a quote or the end doubled (Hydra's rule for backslashes in quoted values)."""
    q = '"' if "'" in value and '"' not in value else "'"

    def esc(m: re.Match) -> str:
        return m.group(1) * 2 + ("\\" + q if m.group(2) else "")

    return q + re.sub(r"(\\*)(" + re.escape(q) + r"|$)", esc, value) + q


def _pieces(value: str, separators: set[str]) -> list[tuple[bool, str]]:
    """Split `value` into (is_separator, text) pieces at `separators` outside quoted sections; quoted
    sections stay inside the text they belong to."""
    out: list[tuple[bool, str]] = []
    cur, quote_ch, i = "", None, 0
    while i < len(value):
        c = value[i]
        if quote_ch:
            cur += c
            if c == "\\" and i + 1 < len(value):
                cur += value[i + 1]
                i += 1
            elif c == quote_ch:
                quote_ch = None
        elif c in "'\"" and not cur.strip():
            quote_ch, cur = c, cur + c
        elif c in separators:
            out += [(False, cur), (True, c)]
            cur = ""
        else:
            cur += c
        i += 1
    out.append((False, cur))
    return out


def _quote_atom(text: str) -> str:
    """An element with a non-ASCII character, quoted; its surrounding spaces stay outside the quotes
    (Hydra drops them around elements too). An element already quoted stays as it is."""
    core = text.strip()
    if not _non_ascii(core) or core[:1] in ("'", '"'):
        return text
    lead = text[: len(text) - len(text.lstrip())]
    trail = text[len(text.rstrip()):]
    return lead + quote(core) + trail


def hydra_value(value: str, multirun: bool) -> str:
    """A typed override value in Hydra's grammar (unchanged when it is ASCII or already quoted)."""
    if not _non_ascii(value):
        return value
    s = value.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"" and len(_pieces(s, {","})) == 1:
        return value  # one quoted string already
    if s[:1] in "[{":  # a list or dict: quote the elements that need it
        return "".join(t if sep else _quote_atom(t) for sep, t in _pieces(value, _STRUCTURE))
    if multirun:  # `a,b` sweeps: each element its own string
        return "".join(t if sep else _quote_atom(t) for sep, t in _pieces(value, {","}))
    return quote(value)  # one run: the value as typed, commas and spaces included


def hydra_argv(argv: list[str]) -> list[str]:
    """sys.argv with every override value holding non-ASCII characters quoted for Hydra (see the module
    docstring). Ends the program with one line and exit code 2 where such an override still cannot be
    read (e.g. a non-ASCII key), saying how to write it instead."""
    multirun = any(a in _MULTIRUN for a in argv[1:])
    out, skip_next = list(argv[:1]), False
    for arg in argv[1:]:
        if not skip_next and not arg.startswith(("-", "~")) and "=" not in arg:
            # Hydra would stop on it with four lines ("missing EQUAL at '<EOF>'") and exit code 1
            _fail_value(arg, "every setting is key=value (e.g. prompt=..., trainer.max_steps=100), or ~key to drop one")
        if skip_next or arg.startswith("-") or "=" not in arg or not _non_ascii(arg):
            skip_next = arg in _FLAGS_WITH_VALUE and "=" not in arg
            out.append(arg)
            continue
        key, value = arg.split("=", 1)
        if _FUNCTION.match(value):
            # Hydra's sweeper hands each element of choice(...)/range(...) to the job unquoted again,
            # where the lexer stops on it: only the plain `a,b` sweep carries such values through
            _fail_value(arg, f"sweep values with non-ASCII characters as a list, {key}=a,b (no choice(...) around them)")
        new = f"{key}={hydra_value(value, multirun)}"
        _check(new, arg)
        if new != arg:
            _typed[new] = arg
        out.append(new)
    return out


def _check(override: str, typed: str) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        OverridesParser.create().parse_overrides([override])
    except HydraException:
        key = typed.split("=", 1)[0]
        if _non_ascii(key):
            _fail_value(typed, "config keys are ASCII only; put non-ASCII text in the value")
        _fail_value(typed, f"quote the value for Hydra inside the shell's quotes, e.g. \"{key}='...'\" "
                           f"(a quote inside it as \\' )")


def _fail_value(typed: str, fix: str):
    print(f"error: cannot read the command-line value {typed!r}: {fix}", file=sys.stderr, flush=True)
    sys.exit(2)


def typed(override: str) -> str:
    """The argument as the user typed it, for an override that hydra_argv rewrote in this process."""
    return _typed.get(override, override)


_SHELL_SAFE = re.compile(r"^[A-Za-z0-9_@%+=:,./~-]+$")


def shell_quote(arg: str) -> str:
    """`arg` as one shell word: unchanged when safe, else in single quotes (double where it holds a
    single quote and nothing the shell expands inside double quotes)."""
    if _SHELL_SAFE.match(arg) and not arg.startswith("~"):
        return arg
    if "'" not in arg:
        return f"'{arg}'"
    if not any(c in arg for c in '"$`\\!'):
        return f'"{arg}"'
    return "'" + arg.replace("'", "'\"'\"'") + "'"


def command_line(script: str, overrides: list[str]) -> str:
    """`python <script> <overrides>` (an installed entry point, `gptlit-train`, without `python`), each
    override as typed and quoted for a POSIX shell."""
    head = ["python", script] if script.endswith(".py") else [script]
    return " ".join([*head, *(shell_quote(typed(o)) for o in overrides)])


_OPTION_NAME = re.compile(r"[\w.\-]+")


def _group_options(group: str, conf_dir) -> set[str] | None:
    """The options of config group `group`: conf_dir/<group>/*.yaml and those registered in Hydra's
    ConfigStore (model presets, task=..., ...); None where `group` is no group."""
    from pathlib import Path

    from hydra.core.config_store import ConfigStore

    folder = Path(conf_dir) / group
    names = {p.stem for p in folder.glob("*.yaml")} if folder.is_dir() else None
    try:
        stored = ConfigStore.instance().list(group)
    except OSError:  # no such group in the store
        return names
    return (names or set()) | {n.removesuffix(".yaml") for n in stored if n.endswith(".yaml")}


def _unquoted(text: str) -> str:
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"" else text


def check_group_options(args: list[str], conf_dir) -> None:
    """`model=huge`, `model=nano,huge` or `logger=[csv,huge]` (a config group given an option it lacks)
    as one line naming the options, exit 2, before Hydra's composition error (a dozen lines, exit 1).
    Plain names (quoted ones too: hydra_argv quotes non-ASCII values), `a,b` sweeps and `[a,b]` lists are
    checked; Hydra's own groups (hydra/...), whose options plugins add later, and any other value
    (interpolations, choice(...)) are left to Hydra."""
    for a in args:
        if a.startswith(("-", "~")) or "=" not in a:
            continue
        key, value = a.lstrip("+").split("=", 1)
        group = key.split("@", 1)[0]  # model@pkg=nano: the group is model
        value = value.strip()
        if group.startswith("hydra/") or not group:
            continue
        elements = value[1:-1].split(",") if value[:1] == "[" and value[-1:] == "]" else value.split(",")
        elements = [_unquoted(e.strip()) for e in elements if e.strip()]  # hydra_argv quoted non-ASCII ones
        if not all(_OPTION_NAME.fullmatch(e) for e in elements):
            continue
        options = _group_options(group, conf_dir)
        bad = [e for e in elements if options and e not in options and e != "null"]
        if bad:
            print(f"error: {group}={bad[0]} is not a {group} option: use one of {', '.join(sorted(options))}",
                  file=sys.stderr, flush=True)
            sys.exit(2)


# ---- the command lines that are no Hydra app (export.py, report.py): one small parser ----------------

_KEY = re.compile(r"-{0,2}[A-Za-z_][\w.]*")


def parse_key_values(argv: list[str], keys: dict[str, str], usage: str, doc: str = "",
                     positional: str | None = None) -> dict:
    """`key=value` arguments (also `--key=value` and `--key value`), as the Hydra command lines take them,
    for a command line without a config (export.py, report.py). `keys` maps each key to its default (""
    = required; "false" = a flag taking true or false, returned as a bool). `positional` names the key a
    bare argument fills (report.py's sweep directory). -h/--help prints `doc` and exits 0; a bad argument
    is a UserError naming it with `usage`."""
    from gptlit.core.errors import UserError

    if any(a in ("-h", "--help", "help") for a in argv):
        print((doc or usage).strip())
        sys.exit(0)
    args: dict[str, str] = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        named = "=" in a and (a.lstrip("-").split("=", 1)[0] in keys or _KEY.fullmatch(a.split("=", 1)[0]))
        if named:  # not a path that holds "=" (a sweep job's folder, 0_model=nano,...): that is positional
            key, value = a.lstrip("-").split("=", 1)
        elif a.startswith("--") and i + 1 < len(argv):
            key, value = a[2:], argv[i + 1]
            i += 1
        elif positional and not a.startswith("-") and positional not in args:
            key, value = positional, a
        else:
            raise UserError(f"cannot read argument {a!r}; {usage}")
        if key not in keys:
            raise UserError(f"unknown argument {key}; {usage}")
        args[key] = value
        i += 1
    out: dict = {}
    for key, default in keys.items():
        value = args.get(key, default)
        if default in ("false", "true"):
            if value.lower() not in ("true", "false"):
                raise UserError(f"{key}={value} must be true or false")
            out[key] = value.lower() == "true"
        elif not value:
            what = f"the {key.replace('_', ' ')}" if key == positional else f"{key}="
            raise UserError(f"{what} is missing; {usage}")
        else:
            out[key] = value
    return out
