"""One style for every command line: the root scripts and the installed entry points run the same
gptlit.commands functions, and an installed wheel runs without the source tree (its configs inside)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["train", "sample", "eval", "export", "report", "compress"]


def test_every_command_line_is_an_installed_entry_point():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {f"gptlit-{c}": f"gptlit.commands.{c}:main" for c in COMMANDS}
    for target in scripts.values():
        module, name = target.split(":")
        assert callable(getattr(importlib.import_module(module), name))


def test_the_configs_are_read_from_the_package():
    """gptlit/conf is the top-level conf/ (a link in a checkout, a copy in the wheel): Hydra reads it there."""
    from gptlit.commands import CONF_DIR

    assert Path(CONF_DIR).resolve() == (ROOT / "conf").resolve() and (Path(CONF_DIR) / "train.yaml").is_file()
    packaged = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["gptlit"]
    assert "conf/*.yaml" in packaged and "conf/**/*.yaml" in packaged


def run(cmd: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ, **env})


def test_python_m_runs_the_command_from_anywhere(tmp_path):
    """No reliance on the cwd or the script's folder: the config is found from the package."""
    r = run([sys.executable, "-m", "gptlit.commands.train", "--cfg", "job", "model=nano"], tmp_path, PYTHONPATH=str(ROOT))
    assert r.returncode == 0, r.stderr
    assert "n_layers: 2" in r.stdout or "name: nano" in r.stdout


def test_report_and_export_share_one_parser(tmp_path):
    from gptlit.core.cli import parse_key_values
    from gptlit.core.errors import UserError

    keys = {"ckpt": "", "out": "", "overwrite": "false"}
    assert parse_key_values(["ckpt=a", "--out", "b"], keys, "usage") == {"ckpt": "a", "out": "b", "overwrite": False}
    assert parse_key_values(["ckpt=a", "out=b", "overwrite=TRUE"], keys, "usage")["overwrite"] is True
    for argv, msg in ((["ckpt=a"], "out= is missing; usage"), (["ckpt=a", "out=b", "dtype=fp16"], "unknown argument dtype"),
                      (["ckpt=a", "out=b", "overwrite=yes"], "overwrite=yes must be true or false"),
                      (["a"], "cannot read argument 'a'")):
        with pytest.raises(UserError, match=msg):
            parse_key_values(argv, keys, "usage")
    assert parse_key_values(["runs/x"], {"sweep_dir": ""}, "u", positional="sweep_dir") == {"sweep_dir": "runs/x"}
    job = "/runs/0_model=nano,optim.lr=0.001"  # a folder name with "=" is no key=value
    assert parse_key_values([job], {"sweep_dir": ""}, "u", positional="sweep_dir") == {"sweep_dir": job}
    with pytest.raises(UserError, match="unknown argument dtype"):
        parse_key_values(["runs/x", "dtype=x"], {"sweep_dir": ""}, "u", positional="sweep_dir")
    with pytest.raises(UserError, match="the sweep dir is missing"):
        parse_key_values([], {"sweep_dir": ""}, "u", positional="sweep_dir")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from this checkout, installed (without dependencies: they are here) into a folder."""
    d = tmp_path_factory.mktemp("wheel")
    r = run([sys.executable, "-m", "pip", "wheel", str(ROOT), "-w", str(d / "dist"), "--no-deps",
             "--no-build-isolation", "-q"], d)
    if r.returncode:
        pytest.skip(f"cannot build the wheel here: {r.stderr.strip()[-300:]}")
    wheel = next((d / "dist").glob("gptlit-*.whl"))
    r = run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(d / "site"), "-q", str(wheel)], d)
    assert r.returncode == 0, r.stderr
    return d / "site"


@pytest.mark.slow
def test_the_installed_entry_points_run_without_the_source_tree(installed, tmp_path):
    env = {"PYTHONPATH": str(installed)}  # this checkout is not on the path
    r = run([str(installed / "bin" / "gptlit-train"), "--cfg", "job", "model=nano"], tmp_path, **env)
    assert r.returncode == 0, r.stderr
    assert "name: nano" in r.stdout
    assert (installed / "gptlit" / "conf" / "train.yaml").is_file() and not (installed / "gptlit" / "conf").is_symlink()
    r = run([str(installed / "bin" / "gptlit-train"), "model=huge"], tmp_path, **env)
    assert r.returncode == 2 and r.stderr.startswith("error: model=huge is not a model option"), r.stderr
    r = run([str(installed / "bin" / "gptlit-train"), "model=nano", "data.max_length=32", "data.batch_size=4",
             "trainer.max_steps=2", "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false",
             "callbacks.progress_bar=null", "sampling.every_n_steps=0", f"hydra.run.dir={tmp_path / 'run'}"],
            tmp_path, **env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    r = run([str(installed / "bin" / "gptlit-sample"), f"ckpt={tmp_path / 'run'}", "max_new_tokens=3"], tmp_path, **env)
    assert r.returncode == 0 and "--- sample 1/1 ---" in r.stdout, r.stderr
    r = run([str(installed / "bin" / "gptlit-export"), f"ckpt={tmp_path / 'run'}", "out=exported"], tmp_path, **env)
    assert r.returncode == 0 and (tmp_path / "exported" / "config.json").is_file(), r.stderr
    for c in ("eval", "report"):
        r = run([str(installed / "bin" / f"gptlit-{c}"), "--help"], tmp_path, **env)
        assert r.returncode == 0 and r.stdout, r.stderr


@pytest.mark.slow
def test_ddp_ranks_start_from_the_installed_entry_point(installed, tmp_path):
    """Lightning starts rank 1 by running the same command again (`python <abs path of gptlit-train> ...`)."""
    r = run([str(installed / "bin" / "gptlit-train"), "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
             "model=nano", "data.max_length=32", "data.batch_size=4", "trainer.max_steps=2",
             "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false", "callbacks.progress_bar=null",
             "sampling.every_n_steps=0", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, PYTHONPATH=str(installed))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert "MEMBER: 2/2" in r.stdout + r.stderr  # rank 1 started and joined


def test_a_command_shown_back_names_the_installed_script_as_typed():
    from gptlit.core.cli import command_line

    assert command_line("gptlit-train", ["model=nano", "prompt=a b"]) == "gptlit-train model=nano 'prompt=a b'"
    assert command_line("train.py", ["model=nano"]) == "python train.py model=nano"
