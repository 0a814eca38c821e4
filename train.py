#!/usr/bin/env python
"""Pretrain a GPT.  python train.py [group=option ...] [key=value ...]

  python train.py                                   # mini model on the built-in corpus (CPU, minutes)
  python train.py model=small trainer.max_epochs=10 data=text data.path=my.txt
  python train.py experiment=book_ch05 data.path=the-verdict.txt
  python train.py -m model=nano optim.lr=1e-3,3e-4 trainer.max_steps=50     # a sweep, with its summary
  python train.py -m hparams_search=optuna model=nano                         # an Optuna search (pip install -e ".[sweep]")
  python train.py --help                            # config groups and every value
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from gptlit.run.config_store import register_configs
from gptlit.core.launch_env import register_resolvers
from gptlit.run.sweep import register_sweep_resolvers

register_configs()  # the model, optim and sampling groups' values live in Python dataclasses
register_resolvers()  # ${gptlit.run_dir:...} in conf/train.yaml: known before Hydra composes
register_sweep_resolvers()  # ${gptlit.cut:...}: sweep job directory names kept short


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig):
    from gptlit.run.runner import run_job

    return run_job(cfg)  # the best val/loss: what a sweeper minimizes


if __name__ == "__main__":
    from gptlit.core.cli import check_group_options, hydra_argv
    from gptlit.run.sweep import check_search_plugin, ddp_child_argv

    sys.argv = hydra_argv(sys.argv)  # values with non-ASCII characters (prompt=café, data.path=中文.txt) quoted for Hydra
    check_group_options(sys.argv[1:], Path(__file__).parent / "conf")  # model=huge: one line, exit 2
    check_search_plugin(sys.argv[1:])  # hparams_search=optuna without its plugin: one line, exit 2
    sys.argv = ddp_child_argv(sys.argv)  # a DDP rank started inside a sweep runs its own job only
    main()
