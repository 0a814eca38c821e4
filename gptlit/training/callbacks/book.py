"""`BookEval`: the book's evaluate_model (chapter 5) every N optimizer steps (`callbacks=book`)."""

from __future__ import annotations

import lightning as L
import torch

from gptlit.core.errors import UserError
from gptlit.training.contracts import DrawsAtStepEnd


class BookEval(L.Callback, DrawsAtStepEnd):
    """The book's evaluate_model (chapter 5's train_model_simple): every `eval_freq` optimizer steps,
    counting from the first (after steps 1, 1 + eval_freq, ...), the model in eval mode averages the
    losses of the first `eval_iter` batches of a fresh `DataLoader(train windows, shuffle=True,
    drop_last=True)` and of `DataLoader(val windows)`, logged as book/train_loss and book/val_loss.

    The loaders are the book's, made here with no generator: their iter() draws from torch's global
    generator as the book's do (the train loader two int64s, the val loader one), so with
    data.order=global the next epochs' orders and the dropout masks stay the book script's. Unlike
    train/eval_loss (fixed train windows spread over the split) its train loss is a random half of the
    training windows, drawn anew each time; unlike val/loss it sees only the first eval_iter val batches."""

    def __init__(self, eval_freq: int = 5, eval_iter: int = 5):
        for name, v in (("eval_freq", eval_freq), ("eval_iter", eval_iter)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"callbacks.book_eval.{name}={v} must be a positive integer")
        self.eval_freq, self.eval_iter = eval_freq, eval_iter
        self._done_at = None

    def losses(self, trainer, pl_module) -> tuple[float, float]:
        from torch.utils.data import DataLoader

        dm, model = trainer.datamodule, pl_module.model
        b = dm.config.batch_size
        was_training = model.training
        model.eval()
        try:
            means = []
            for ds, shuffle in ((dm.train_set, True), (dm.val_set, False)):
                loader = DataLoader(ds, batch_size=b, shuffle=shuffle, drop_last=shuffle)  # the book's loaders
                n, total = min(self.eval_iter, len(loader)), 0.0
                with torch.no_grad(), trainer.precision_plugin.forward_context():
                    for i, (x, y) in enumerate(loader):
                        if i >= n:
                            break
                        total += pl_module.model(x.to(pl_module.device), y.to(pl_module.device)).item()
                means.append(total / n if n else float("nan"))
        finally:
            model.train(was_training)
        return means[0], means[1]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step  # optimizer steps done; the book's global_step is one less
        if step == self._done_at or (step - 1) % self.eval_freq:
            return
        self._done_at = step
        train, val = self.losses(trainer, pl_module)
        # straight to the loggers, once: a self.log here would be written again at every later step
        for logger in trainer.loggers:
            logger.log_metrics({"book/train_loss": train, "book/val_loss": val}, step=step)
