"""Evaluate a model beyond perplexity.  python eval.py ckpt=<run dir or .ckpt> task=<task> [key=value ...]
(installed: gptlit-eval ...)

  python eval.py ckpt=outputs/2026-01-01/12-00-00 task=bpb data=text data.path=corpus.txt   # loss, ppl, bits per byte
  python eval.py ckpt=<run dir> task=hellaswag task.path=hellaswag_val.jsonl                  # acc, acc_norm
  python eval.py ckpt=<run dir> task=lambada task.path=lambada_test.jsonl                     # last-word accuracy
  python eval.py init_from=/models/gpt2 task=hellaswag task.path=hellaswag_val.jsonl          # Hugging Face GPT-2 weights
  python eval.py ckpt=<run A> compare=<run B> task=hellaswag task.path=...                    # paired difference A - B
  python eval.py -m ckpt=<run dir> task=hellaswag,lambada                                     # several tasks (eval_data/)
  python eval.py --help                                                                       # every value

Every score comes with n and a 95% interval; eval.json and TensorBoard scalars go to the output folder.
Benchmark files are never downloaded here (docs/evaluation.md: where to get them, once).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from gptlit.commands import CONF_DIR, hydra_argv_checked
from gptlit.core.errors import exit_on_user_error
from gptlit.core.launch_env import register_resolvers
from gptlit.evaluation.evaluate import register_task_configs
from gptlit.run.config_store import register_configs

register_resolvers()  # conf/hydra/job_logging/gptlit.yaml uses one
register_configs()  # the data group's base (gptlit.data.config.DataConfig): task=bpb's corpus
register_task_configs()  # task=bpb|hellaswag|lambada (gptlit.evaluation.evaluate.TASK_OPTIONS)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def evaluate(cfg: DictConfig) -> None:
    """A bad value or file ends with one line on stderr and exit code 2, as in train.py."""
    from hydra.core.hydra_config import HydraConfig

    from gptlit.evaluation.evaluate import evaluate as run_evaluate

    with exit_on_user_error():
        run_evaluate(cfg, Path(HydraConfig.get().runtime.output_dir))


def main() -> None:
    hydra_argv_checked()  # task.path=中文.jsonl quoted for Hydra; task=hellaswg: one line, exit 2
    evaluate()


if __name__ == "__main__":
    main()
