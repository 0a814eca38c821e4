"""Generate text from a trained checkpoint.  python sample.py ckpt=<run dir or .ckpt> [key=value ...]
(installed: gptlit-sample ...)

  python sample.py ckpt=outputs/2026-01-01/12-00-00                     # best (else last) checkpoint of a run
  python sample.py ckpt=<run dir> prompt="The meaning of" num_samples=3 max_new_tokens=80
  python sample.py ckpt=<run dir> sampling=greedy                       # argmax decoding
  python sample.py ckpt=<run dir> temperature=0.7 top_p=0.9 top_k=null  # or sampling.temperature=0.7 ...
  python sample.py ckpt=<run dir> prompt_file=prompts.txt               # one prompt per line
  python sample.py -m ckpt=<run dir> temperature=0.5,1.0,1.5 top_k=5,50
  python sample.py init_from=/models/gpt2 prompt="Every effort moves you"   # Hugging Face GPT-2 weights
  python sample.py --help                                               # every value
"""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig

from gptlit.commands import CONF_DIR, hydra_argv_checked
from gptlit.core.errors import exit_on_user_error
from gptlit.core.launch_env import register_resolvers
from gptlit.run.config_store import register_configs

register_resolvers()  # conf/hydra/job_logging/gptlit.yaml (train.log from rank 0 only) uses one
register_configs()  # the sampling group's values (gptlit.model.generate.SampleTextConfig)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="sample")
def sample(cfg: DictConfig) -> None:
    """A bad value ends with one line on stderr and exit code 2, as in train.py; Ctrl-C with one line, 130."""
    from gptlit.run.sample import sample as run_sample

    try:
        with exit_on_user_error():
            run_sample(cfg)
    except BrokenPipeError:  # stdout closed early, e.g. `python sample.py ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


def main() -> None:
    hydra_argv_checked()  # prompt="每一次努力" quoted for Hydra; sampling=greedyy: one line, exit 2
    sample()


if __name__ == "__main__":
    main()
