"""Hydra config groups whose values live in Python: registered in Hydra's ConfigStore.

  model=<preset>   GPTConfig's defaults + gptlit.model.config.PRESETS[<preset>], plus `name` and `init_from`
  optim=adamw      gptlit.training.optim.OptimConfig
  sampling=default gptlit.model.generate.SampleTextConfig (conf/sampling/greedy.yaml extends it)
  data/base        gptlit.data.config.DataConfig, to instantiate GPTDataModule (conf/data/*.yaml extend it)

Each default is written once, in those dataclasses; conf/ only selects and overrides them, so
`python train.py --cfg job` shows the values Python callers get too. The command lines
(gptlit.commands) and tests/conftest.py call register_configs() before Hydra composes a config.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from gptlit.data.config import DataConfig
from gptlit.model.config import PRESETS, GPTConfig
from gptlit.training.optim import OptimConfig
from gptlit.model.generate import SampleTextConfig


def model_node(preset: str) -> dict:
    """The `model` group option for a preset: its name, every GPTConfig field, and init_from."""
    # init_from: pretrained weights to start from, a Hugging Face GPT-2 folder or a book .pth (docs/pretrained.md)
    return {"name": preset, **GPTConfig(**PRESETS[preset]).to_dict(), "init_from": None}


def data_node() -> dict:
    """The `data` group's base option: what instantiates GPTDataModule, every DataConfig field."""
    return {
        "_target_": "gptlit.data.datamodule.GPTDataModule",  # a name, so sample.py need not import Lightning
        **DataConfig().to_dict(),
        # Interpolations, resolved when the config is composed, so that each follows what it depends on
        # on the command line: a window is as long as the model's context (model=small gives 1024, and a
        # context taken from a checkpoint or pretrained weights is followed too: gptlit.run.plan.data_node), and windows do not overlap unless data.stride is given, also after
        # data.max_length=... is overridden. DataConfig's 128 and None mean the same for Python callers
        # of the default model (mini); a Python caller passes max_length to match another model.
        "max_length": "${model.context_length}",
        "stride": "${data.max_length}",
    }


def config_nodes() -> dict[tuple[str, str], dict]:
    """Every registered option: (group, name) -> its values."""
    nodes = {("model", name): model_node(name) for name in PRESETS}
    nodes[("optim", "adamw")] = OptimConfig().to_dict()
    nodes[("sampling", "default")] = dict(vars(SampleTextConfig()))
    nodes[("data", "base")] = data_node()
    return nodes


def register_configs() -> None:
    """Store the groups above in Hydra's ConfigStore (idempotent: a second call rewrites the same entries).

    They are stored as plain dicts rather than typed structured configs, so a wrong type on the
    command line reaches gptlit's own checks (one-line errors) instead of failing in Hydra's merge.
    """
    cs = ConfigStore.instance()
    for (group, name), node in config_nodes().items():
        cs.store(group=group, name=name, node=node)
