"""A benchmark while training: a small, fixed subset of an item task (HellaSwag, LAMBADA: any ItemTask of
gptlit.evaluation.tasks.TASKS) every N optimizer steps,
logged as eval/<task>/<metric> next to val/loss.

Off by default; one entry turns it on (conf/callbacks/eval_task/):

  python train.py +callbacks/eval_task=hellaswag callbacks.eval_task.path=hellaswag_val.jsonl
  python train.py +callbacks/eval_task=lambada callbacks.eval_task.path=lambada_test.jsonl callbacks.eval_task.every_n_steps=500

The file is read when the callback is built, so a bad one stops the run before training. The same
items are scored each time (`limit` of them, spread evenly over the file), with the model in eval
mode and no randomness, so the curve shows the model changing and nothing else; the training losses
are the same with or without it. Global rank 0 scores (as SampleText samples); with FSDP, where no
rank holds the whole model, leave it off and run eval.py on the checkpoints.
"""

from __future__ import annotations


import lightning as L
import torch

from gptlit.core.errors import UserError
from gptlit.evaluation import stats
from gptlit.evaluation.benchmarks import spread
from gptlit.evaluation.tasks import get_task
from gptlit.training.contracts import TrainingModule


class EvalTask(L.Callback):
    """Score `limit` items of the `task` file at `path` every `every_n_steps` optimizer steps (and at the end).
    Its defaults are in conf/callbacks/eval_task/."""

    def __init__(self, task: str, path: str | None, every_n_steps: int, limit: int | None = 200,
                 batch_size: int | None = None, at_end: bool = True, **options):
        """`options`: the task's own settings (gptlit.evaluation.tasks.TASKS[task].options)."""
        key = "callbacks.eval_task"
        self.bench = get_task(task, f"{key}.task", items_only=True)  # bits per byte: val/loss, or eval.py bench=bpb
        for name, v, low in (("every_n_steps", every_n_steps, 1), ("batch_size", batch_size, 1)):
            if (v is not None or name != "batch_size") and (isinstance(v, bool) or not isinstance(v, int) or v < low):
                raise UserError(f"{key}.{name}={v} must be an integer >= {low}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise UserError(f"{key}.limit={limit} must be an integer >= 1, or null for every item")
        bench = self.bench.read_file(path, f"{key}.path", **self.bench.check(options, key))
        self.task, self.every_n_steps, self.batch_size, self.at_end = task, every_n_steps, batch_size, at_end
        self.items = [bench.items[i] for i in spread(len(bench.items), limit)]
        self.history: list[tuple[int, dict[str, float]]] = []  # (step, metrics) of each evaluation
        self._last_step = -1
        self._warned = False

    def evaluate(self, model) -> tuple[dict[str, stats.Estimate], int]:
        """The subset's metrics for `model` (a GPT) and how many items had their context cut."""
        res = self.bench.score(model, self.items, self.batch_size, key="callbacks.eval_task.path")
        est = {m: stats.accuracy(right) for m, right in self.bench.correct(res).items()}
        return est, sum(r.cut > 0 for r in res)

    def _run(self, trainer: L.Trainer, pl_module: TrainingModule):
        step = trainer.global_step
        if step == self._last_step or not trainer.is_global_zero:
            return
        self._last_step = step
        # fp32, whatever the training precision; not counted as training time
        with pl_module.clock_paused(), torch.autocast(pl_module.device.type, enabled=False):
            est, cut = self.evaluate(pl_module.model)
        metrics = {f"eval/{self.task}/{m}": e.score for m, e in est.items()}
        self.history.append((step, metrics))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        for k, v in metrics.items():  # shown with the final metrics of the run
            trainer.callback_metrics[k] = torch.tensor(v)
        parts = ", ".join(f"{m} {e.score:.4f} [{e.low:.4f}, {e.high:.4f}]" for m, e in est.items())
        msg = f"[step {step}] {self.task} on {len(self.items)} items: {parts}"
        if cut and not self._warned:
            self._warned = True
            msg += f" ({cut} contexts cut from the left to the model's {pl_module.model.cfg.context_length} tokens)"
        bar = trainer.progress_bar_callback
        if bar is not None and hasattr(bar, "print") and bar.is_enabled:
            bar.print(msg)
        else:
            print(msg, flush=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0:
            self._run(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        if self.at_end:
            self._run(trainer, pl_module)
