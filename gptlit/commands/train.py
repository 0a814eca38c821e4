"""Pretrain a GPT.  python train.py [group=option ...] [key=value ...]   (installed: gptlit-train ...)

  python train.py                                   # mini model on the built-in corpus (CPU, minutes)
  python train.py model=small trainer.max_epochs=10 data=text data.path=my.txt
  python train.py experiment=book_ch05 data.path=the-verdict.txt
  python train.py -m model=nano optim.lr=1e-3,3e-4 trainer.max_steps=50     # a sweep, with its summary
  python train.py -m hparams_search=optuna model=nano                         # an Optuna search (pip install -e ".[sweep]")
  python train.py --help                            # config groups and every value
"""

import sys

import hydra
from omegaconf import DictConfig

from gptlit.commands import CONF_DIR, hydra_argv_checked
from gptlit.core.launch_env import register_resolvers
from gptlit.run.config_store import register_configs
from gptlit.run.sweep import register_sweep_resolvers

register_configs()  # the model, optim and sampling groups' values live in Python dataclasses
register_resolvers()  # ${gptlit.run_dir:...} in conf/train.yaml: known before Hydra composes
register_sweep_resolvers()  # ${gptlit.cut:...}: sweep job directory names kept short


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def train(cfg: DictConfig):
    from gptlit.run.runner import run_job

    return run_job(cfg)  # the best val/loss: what a sweeper minimizes


def main() -> None:
    """The command line: sys.argv checked (non-ASCII values, group options, the search plugin), a DDP
    rank inside a sweep given its own job's command line, then Hydra. Lightning starts the other ranks
    of a DDP run with the same command (`python train.py ...` or the `gptlit-train` script)."""
    from gptlit.run.sweep import check_search_plugin, ddp_child_argv

    hydra_argv_checked()  # prompt=café, data.path=中文.txt quoted for Hydra; model=huge: one line, exit 2
    check_search_plugin(sys.argv[1:])  # hparams_search=optuna without its plugin: one line, exit 2
    sys.argv = ddp_child_argv(sys.argv)  # a DDP rank started inside a sweep runs its own job only
    train()


if __name__ == "__main__":
    main()
