"""Command-line values with non-ASCII characters reach the config as typed (gptlit/core/cli.py); commands
printed back to the user run again as they are shown."""

import shlex
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from gptlit.core.cli import check_group_options, command_line, hydra_argv, quote, shell_quote

ROOT = Path(__file__).resolve().parents[1]

PARSER = OverridesParser.create()


def parsed(args: list[str]) -> dict:
    """{key: value, or the list of swept values} as Hydra reads the overrides in args."""
    out = {}
    for o in PARSER.parse_overrides([a for a in args if "=" in a and not a.startswith("-")]):
        if o.is_sweep_override():  # each job gets `key=<element>`, as Hydra's basic sweeper writes it
            out[o.key_or_group] = [parsed([f"k={v}"])["k"] for v in o.sweep_string_iterator()]
        else:
            out[o.key_or_group] = o.value()
    return out


@pytest.mark.parametrize("value", [
    "café", "每一次努力都让你前进 🚀", "/data/中文.txt", "naïve, résumé", "l'été", 'un "été" d\'or',
    "C:\\données\\", "fin \\'é", "  é  ", "${sampling.prompt} 和更多",
])
def test_values_with_non_ascii_characters_arrive_as_typed(value):
    # before: Hydra's lexer stopped on the first non-ASCII character (LexerNoViableAltException, exit 1)
    argv = ["train.py", f"sampling.prompt={value}", "model=nano"]
    assert parsed(hydra_argv(argv)[1:]) == {"sampling.prompt": value, "model": "nano"}
    assert PARSER.parse_overrides([f"x={quote(value)}"])[0].value() == value


def test_sweeps_lists_functions_and_prefixes_keep_their_meaning():
    new = hydra_argv(["train.py", "-m", "sampling.prompt=café,naïve", "optim.lr=1e-3,3e-4", "+tags=[中文,b]",
                      "~data.path=é", "++y={k:ü}", "prompt_file='已经.txt'"])
    assert new[1] == "-m"
    assert parsed(new[1:]) == {"sampling.prompt": ["café", "naïve"], "optim.lr": [0.001, 0.0003],
                               "tags": ["中文", "b"], "data.path": "é", "y": {"k": "ü"},
                               "prompt_file": "已经.txt"}
    assert new[3] == "optim.lr=1e-3,3e-4" and new[-1] == "prompt_file='已经.txt'"  # ASCII and quoted: untouched
    # one run: the comma belongs to the value
    assert parsed(hydra_argv(["train.py", "sampling.prompt=你好, 世界"])[1:]) == {"sampling.prompt": "你好, 世界"}


def test_flags_and_their_values_are_left_alone():
    argv = ["train.py", "--config-dir", "/配置=1", "-cn", "训练", "--cfg", "job", "hydra.run.dir=/运行/run"]
    new = hydra_argv(argv)
    assert new[:7] == argv[:7] and parsed(new[7:]) == {"hydra.run.dir": "/运行/run"}


def test_rewriting_twice_changes_nothing():
    # a DDP rank started by Lightning gets the rewritten argv again
    once = hydra_argv(["train.py", "-m", "sampling.prompt=café,naïve", "data.path=/données/中文.txt"])
    assert hydra_argv(once) == once


@pytest.mark.parametrize("arg, fix", [
    ("+提示=1", "keys are ASCII only"),
    # Hydra's sweeper would hand each element to its job unquoted, where the lexer stops
    ("sampling.prompt=choice(é,b)", "as a list, sampling.prompt=a,b"),
    # a word without "=" (a prompt typed without its key): Hydra's four lines and exit code 1 before
    ("每一次努力", "every setting is key=value"),
    ("stray", "every setting is key=value"),
])
def test_a_value_that_cannot_be_read_is_one_line(capsys, arg, fix):
    with pytest.raises(SystemExit) as e:
        hydra_argv(["train.py", "-m", arg])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: cannot read the command-line value {arg!r}")
    assert fix in err


def test_commands_are_shown_as_typed_and_quoted_for_the_shell():
    new = hydra_argv(["train.py", "sampling.prompt=每一次 café", "model=nano"])
    line = command_line("train.py", [*new[1:], "ckpt_path=outputs/x/last.ckpt"])
    assert line == "python train.py 'sampling.prompt=每一次 café' model=nano ckpt_path=outputs/x/last.ckpt"
    assert shlex.split(line)[2] == "sampling.prompt=每一次 café"
    for arg in ["prompt=l'été", "prompt=it's $HOME", "a=b"]:
        assert shlex.split(shell_quote(arg)) == [arg]


@pytest.mark.parametrize("arg, shown", [("model=huge", "model=huge"), ("model=nano,huge", "model=huge"),
                                        ("+experiment=book", "experiment=book"), ("logger=[csv, huge]", "logger=huge"),
                                        ("callbacks=[defualt]", "callbacks=defualt"),
                                        (hydra_argv(["x", "model=小型"])[1], "model=小型")])
def test_an_option_a_group_lacks_is_one_line(capsys, arg, shown):
    with pytest.raises(SystemExit) as e:
        check_group_options([arg], ROOT / "conf")
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {shown} is not a ")
    assert any(name in err for name in ("nano", "book_ch05", "tensorboard", "default"))  # the options it has


def test_known_options_sweeps_and_other_values_pass():
    check_group_options(["model=nano,small", "data=text", "optim=adamw", "model.n_heads=4", "~logger",
                         "logger=[csv,tensorboard]", "logger=[]", "hparams_search=optuna", "callbacks=default",
                         "model@extra=nano", "model=${oc.env:M}", "-m", "hydra/launcher=basic",
                         "hydra/sweeper=gptlit_optuna"], ROOT / "conf")


@pytest.mark.parametrize("script, arg, options", [("sample.py", "sampling=greedyy", "default, greedy"),
                                                  ("eval.py", "bench=hellaswg", "bpb, hellaswag, lambada")])
def test_sample_and_eval_name_their_group_options(script, arg, options):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, script, arg], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    group, value = arg.split("=")
    assert p.stderr.strip().startswith(f"error: {arg} is not a {group} option: use one of {options}")  # a new task sorts after
