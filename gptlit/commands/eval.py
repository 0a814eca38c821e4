"""Evaluate a model beyond perplexity.  python eval.py ckpt=<run dir or .ckpt> bench=<task> [key=value ...]
(installed: gptlit-eval ...)

  python eval.py ckpt=outputs/2026-01-01/12-00-00 bench=bpb data=text data.path=corpus.txt   # loss, ppl, bits per byte
  python eval.py ckpt=<run dir> bench=hellaswag bench.path=hellaswag_val.jsonl                  # acc, acc_norm
  python eval.py ckpt=<run dir> bench=lambada bench.path=lambada_test.jsonl                     # last-word accuracy
  python eval.py init_from=/models/gpt2 bench=hellaswag bench.path=hellaswag_val.jsonl          # Hugging Face GPT-2 weights
  python eval.py ckpt=<run A> compare=<run B> bench=hellaswag bench.path=...                    # paired difference A - B
  python eval.py -m ckpt=<run dir> bench=hellaswag,lambada                                     # several tasks (eval_data/)
  python eval.py --help                                                                       # every value

The tasks: conf/bench/ (gptlit.evaluation.tasks.TASKS). The key was `task` before; task=... still works.
Every score comes with n and a 95% interval; eval.json and TensorBoard scalars go to the output folder.
Benchmark files are never downloaded here (docs/evaluation.md: where to get them, once).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from gptlit.commands import CONF_DIR, hydra_argv_checked
from gptlit.core.errors import exit_on_user_error
from gptlit.core.launch_env import register_resolvers
from gptlit.run.config_store import register_configs

register_resolvers()  # conf/hydra/job_logging/gptlit.yaml uses one
register_configs()  # the data group's base (gptlit.data.config.DataConfig): bench=bpb's corpus


def old_task_key(argv: list[str]) -> list[str]:
    """eval.py's `task` key, as it was spelled before it became `bench` (task=hellaswag, task.path=...), read as bench."""
    return [argv[0], *(re.sub(r"^([+~]*)task(?=[.=@]|$)", r"\1bench", a) for a in argv[1:])]


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def evaluate(cfg: DictConfig) -> None:
    """A bad value or file ends with one line on stderr and exit code 2, as in train.py."""
    from hydra.core.hydra_config import HydraConfig

    from gptlit.evaluation.evaluate import evaluate as run_evaluate

    with exit_on_user_error():
        run_evaluate(cfg, Path(HydraConfig.get().runtime.output_dir))


def main() -> None:
    sys.argv = old_task_key(sys.argv)  # task=hellaswag: the old spelling of bench=hellaswag
    hydra_argv_checked()  # bench.path=中文.jsonl quoted for Hydra; bench=hellaswg: one line, exit 2
    evaluate()


if __name__ == "__main__":
    main()
