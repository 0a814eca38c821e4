"""Each default has one home: the Python dataclasses that Hydra's ConfigStore serves to train.py and sample.py.

These tests fail when a default is written a second time (a YAML copy of a registered group, a
YAML value that repeats what it inherits, a second literal default in the package), and check
that command-line users and Python callers start from the same values.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import yaml

from gptlit.data.config import DataConfig
from gptlit.model.config import PRESETS, GPTConfig
from gptlit.training.optim import OptimConfig, validate_optim
from gptlit.run.config_store import config_nodes
from gptlit.model.generate import SampleTextConfig, SamplingConfig

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
NODES = config_nodes()

# Literal defaults that share a name with a config key but mean something else (checked by hand).
OTHER_MEANING = {
    ("hf.py", "load_pretrained", "drop_rate"),  # pretrained weights loaded for inference: dropout off
    ("strategies.py", "fsdp_strategy", "activation_checkpointing"),  # FSDP's own wrapper (trainer.strategy.*), not the model's
}


def test_registered_groups_have_no_yaml_copy():
    for group, name in NODES:
        assert not (CONF / group / f"{name}.yaml").exists(), f"conf/{group}/{name}.yaml copies a registered default"


def _yaml_values(group: str, name: str) -> dict:
    """An option's own values, with what it inherits from same-group `defaults` entries underneath."""
    if (group, name) in NODES:
        return dict(NODES[(group, name)])
    d = yaml.safe_load((CONF / group / f"{name}.yaml").read_text()) or {}
    out = {}
    for entry in d.get("defaults", []):
        if isinstance(entry, str) and entry != "_self_":
            out.update(_yaml_values(group, entry))
    out.update({k: v for k, v in d.items() if k != "defaults"})
    return out


def test_yaml_options_do_not_repeat_what_they_inherit():
    repeats = []
    for f in sorted(CONF.glob("*/*.yaml")):
        group = f.parent.name
        if group in ("experiment", "hydra"):
            continue
        d = yaml.safe_load(f.read_text()) or {}
        for entry in d.get("defaults", []):
            if isinstance(entry, str) and entry != "_self_":
                parent = _yaml_values(group, entry)
                repeats += [f"{f.relative_to(ROOT)}: {k}={v!r}" for k, v in d.items() if k in parent and parent[k] == v]
    assert not repeats, f"values repeated from the option they extend: {repeats}"


def test_top_level_configs_do_not_set_registered_groups():
    for f in (CONF / "train.yaml", CONF / "sample.yaml"):
        d = yaml.safe_load(f.read_text())
        for group in {g for g, _ in NODES}:
            assert group not in d, f"{f.name} sets {group}: values belong to the registered dataclass"


def _field_default(value: ast.expr) -> ast.expr:
    """A dataclass field's default: the value itself, or the default inside field(default=...) and
    gptlit.model.config's _field(default, kind)."""
    if isinstance(value, ast.Call) and getattr(value.func, "id", None) in ("field", "_field"):
        given = [k.value for k in value.keywords if k.arg == "default"] or value.args[:1]
        return given[0] if given else value
    return value


def literal_defaults(source: str, filename: str, keys: set[str]) -> dict[str, list[str]]:
    """Literal defaults (not None) of parameters and class fields named like a config key, by name."""
    found: dict[str, list[str]] = {}
    for node in ast.walk(ast.parse(source)):
        pairs = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            pos = a.posonlyargs + a.args
            pairs += [(arg.arg, d) for arg, d in zip(pos[len(pos) - len(a.defaults):], a.defaults)]
            pairs += [(x.arg, d) for x, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None]
        elif isinstance(node, ast.ClassDef):
            pairs = [(st.target.id, _field_default(st.value)) for st in node.body
                     if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name) and st.value is not None]
        for name, d in pairs:
            # None means "not given" (the caller or another default decides); any other literal is a default
            if name in keys and isinstance(d, ast.Constant) and d.value is not None \
                    and (filename, node.name, name) not in OTHER_MEANING:
                found.setdefault(name, []).append(f"{filename}:{d.lineno} {node.name}.{name}={d.value!r}")
    return found


def test_each_config_key_has_one_literal_default_in_the_package():
    keys = {k for node in NODES.values() for k in node}
    found: dict[str, list[str]] = {}
    for f in sorted((ROOT / "gptlit").rglob("*.py")):
        for name, where in literal_defaults(f.read_text(), f.name, keys).items():
            found.setdefault(name, []).extend(where)
    twice = {k: v for k, v in found.items() if len(v) > 1}
    assert not twice, f"defaults written in two places: {twice}"
    assert {"lr", "top_k", "temperature", "emb_dim"} <= set(found)  # the scan sees the dataclasses
    # every data setting with a default has it once, in DataConfig
    data = {f.name: f.default for f in dataclasses.fields(DataConfig) if f.default is not None}
    assert {k: [w.split(" ", 1)[1].split(".", 1)[0] for w in found.get(k, [])] for k in data} == \
        {k: ["DataConfig"] for k in data}


def test_the_datamodule_signature_restates_no_data_setting():
    import inspect

    from gptlit.data.datamodule import GPTDataModule

    # a data setting in GPTDataModule's signature would be a second default, even as None (the scan above
    # skips None): what once gave Python callers max_val_windows=None and the command line 1000
    params = set(inspect.signature(GPTDataModule.__init__).parameters)
    assert not params & {f.name for f in dataclasses.fields(DataConfig)}, params


def test_data_options_extend_the_registered_base():
    for f in sorted((CONF / "data").glob("*.yaml")):
        d = yaml.safe_load(f.read_text()) or {}
        assert "base" in d.get("defaults", []), f"{f.name} does not extend data/base (DataConfig)"
        assert "_target_" not in d and not {"max_length", "stride"} & set(d), f"{f.name} restates the base's wiring"


def test_the_scan_reports_a_second_default():
    # SampleText's old signature beside the sampling config: top_k written twice, with different values
    src = "class SampleTextConfig:\n    top_k: int = 50\n\nclass SampleText:\n    def __init__(self, top_k=None, temperature=1.0):\n        pass\n"
    assert literal_defaults(src, "x.py", {"top_k", "temperature"}) == {"top_k": ["x.py:2 SampleTextConfig.top_k=50"],
                                                                       "temperature": ["x.py:5 __init__.temperature=1.0"]}
    src2 = "class OptimConfig:\n    lr: float = 1e-3\n\nOPTIM = dict()\ndef f(lr=6e-4):\n    pass\n"
    assert len(literal_defaults(src2, "x.py", {"lr"})["lr"]) == 2


@pytest.mark.parametrize("name", list(PRESETS))
def test_model_presets_compose_to_the_python_config(make_cfg, name):
    cfg = make_cfg(f"model={name}", tiny=False)
    assert GPTConfig.from_dict(cfg.model) == GPTConfig.from_name(name)
    assert cfg.model.name == name and cfg.model.init_from is None


@pytest.mark.parametrize("option", ["pydocs", "text", "verdict"])
def test_command_line_and_python_get_the_same_data_settings(make_cfg, corpus, option):
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from gptlit.data.datamodule import GPTDataModule

    cfg = make_cfg(f"data={option}", *([f"data.path={corpus}"] if option == "text" else []), tiny=False)
    cli = OmegaConf.to_container(cfg.data, resolve=True)
    assert get_class(cli.pop("_target_")) is GPTDataModule
    # a Python caller passes what the option's YAML sets; every other value is DataConfig's on both sides
    own = {k: v for k, v in yaml.safe_load((CONF / "data" / f"{option}.yaml").read_text()).items() if k != "defaults"}
    if option == "text":
        own["path"] = str(corpus)
    python = GPTDataModule(**own).config
    assert GPTDataModule(**cli).config == python
    # DataConfig's max_length is the default model's (mini) context, which the command line follows
    assert python.max_length == cfg.model.context_length == 128 and python.stride == 128
    assert python.max_val_windows == 1000


def test_command_line_and_python_get_the_same_optimizer_and_sampling(make_cfg):
    from omegaconf import OmegaConf

    from gptlit.training.callbacks.sampling import SampleText
    from gptlit.training.lit_module import GPTLitModule

    cfg = make_cfg(tiny=False)
    cli_optim = validate_optim(OmegaConf.to_container(cfg.optim))
    python_optim = GPTLitModule(GPTConfig.from_name("nano").to_dict()).hparams.optim
    assert {**cli_optim, "betas": tuple(cli_optim["betas"])} == {**python_optim, "betas": tuple(python_optim["betas"])}
    assert python_optim["lr"] == 1e-3 and python_optim["warmup_steps"] == 20  # the defaults docs/training.md states
    assert OmegaConf.to_container(cfg.sampling) == dataclasses.asdict(SampleTextConfig())
    cli_sampler, py_sampler = SampleText(**OmegaConf.to_container(cfg.sampling)), SampleText()
    assert cli_sampler.cfg == py_sampler.cfg == SamplingConfig()
    assert SamplingConfig().top_k == 50 and (cli_sampler.every_n_steps, cli_sampler.prompt, cli_sampler.seed) == (
        py_sampler.every_n_steps, py_sampler.prompt, py_sampler.seed)
