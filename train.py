#!/usr/bin/env python
"""Pretrain a GPT.  python train.py [group=option ...] [key=value ...]

  python train.py                                   # mini model on the built-in corpus (CPU, minutes)
  python train.py model=small trainer.max_epochs=10 data=text data.path=my.txt
  python train.py experiment=book_ch05 data.path=the-verdict.txt
  python train.py -m model=nano optim.lr=1e-3,3e-4 trainer.max_steps=50     # a sweep, with its summary
  python train.py -m hparams_search=optuna model=nano                         # an Optuna search (pip install -e ".[sweep]")
  python train.py --help                            # config groups and every value
"""

import os
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

# A sweep job's directory is named after its overrides (conf/train.yaml, hydra.sweep.subdir): cut the
# name short of the file system's 255-byte limit (the job number in front keeps names unique).
OmegaConf.register_new_resolver("gptlit.cut", lambda s, n=120: s if len(s) <= n else s[:n] + "...", replace=True)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig):
    from gptlit.sweep import run_job

    return run_job(cfg)  # the best val/loss: what a sweeper minimizes


if __name__ == "__main__":
    if any("hparams_search=" in a for a in sys.argv[1:]):
        from gptlit.sweep import check_search_plugin

        check_search_plugin(sys.argv[1:])  # hparams_search=optuna without its plugin: one line, exit 2
    if os.environ.get("GPTLIT_SWEEP_DDP_JOB"):
        from gptlit.sweep import ddp_child_argv

        sys.argv = ddp_child_argv(sys.argv)  # a DDP rank started inside a sweep runs its own job only
    main()
