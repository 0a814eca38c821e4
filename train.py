#!/usr/bin/env python
"""Pretrain a GPT.  python train.py [group=option ...] [key=value ...]

  python train.py                                   # mini model on the built-in corpus (CPU, minutes)
  python train.py model=small trainer.max_epochs=10 data=text data.path=my.txt
  python train.py experiment=book_ch05 data.path=the-verdict.txt
  python train.py -m model=nano optim.lr=1e-3,3e-4 trainer.max_steps=50
  python train.py --help                            # config groups and every value
"""

import hydra
from omegaconf import DictConfig

from gptlit.config_store import register_configs
from gptlit.launch_env import register_resolvers

register_configs()  # the model, optim and sampling groups' values live in Python dataclasses
register_resolvers()  # ${gptlit.run_dir:...} in conf/train.yaml: known before Hydra composes


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig):
    from gptlit.build import main as run

    metrics = run(cfg)
    return (metrics or {}).get("val/loss")  # the value a sweeper optimizes


if __name__ == "__main__":
    main()
