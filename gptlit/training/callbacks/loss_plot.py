"""`LossPlot`: train and val loss against steps and tokens seen, written as loss_plot.png when training ends."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from gptlit.core.files import atomic_file


class LossPlot(L.Callback):
    """Collects train and val loss against steps and tokens seen; writes `loss_plot.png` at the end."""

    def __init__(self, dirpath: str, filename: str = "loss_plot.png"):
        self.dirpath, self.filename = dirpath, filename
        self.train: list[tuple[int, int, float]] = []  # (step, tokens seen, loss)
        self.val: list[tuple[int, int, float]] = []
        self.train_eval: list[tuple[int, int, float]] = []  # train windows evaluated with dropout off
        self._pending: list[tuple[int, int, torch.Tensor]] = []  # train losses not read from the device yet

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._step_before = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # once per optimizer step, the loss of its whole batch (with micro-batches, Lightning's
        # `outputs` hold the last micro-batch's loss divided by the accumulation); kept on the device
        # and read in one go on the steps that log
        done = trainer.global_step > getattr(self, "_step_before", -1)
        loss = pl_module.step_loss
        if loss is None:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and done and trainer.is_global_zero:
            self._pending.append((trainer.global_step, int(pl_module.tokens_seen), torch.as_tensor(loss).detach()))
            if pl_module.logging_step or len(self._pending) >= 1000:
                self._read_pending()

    def _read_pending(self):
        if self._pending:
            values = torch.stack([t[2].float().reshape(()) for t in self._pending]).tolist()  # one read for all
            self.train += [(step, tokens, v) for (step, tokens, _), v in zip(self._pending, values)]
            self._pending = []

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self._read_pending()
        v = trainer.callback_metrics.get("val/loss")
        if v is not None:
            self.val.append((trainer.global_step, int(pl_module.tokens_seen), float(v)))
        t = trainer.callback_metrics.get("train/eval_loss")
        if t is not None:
            self.train_eval.append((trainer.global_step, int(pl_module.tokens_seen), float(t)))

    def on_train_end(self, trainer, pl_module):
        self._read_pending()
        if trainer.is_global_zero and self.train:
            path = Path(self.dirpath) / self.filename
            plot_losses(self.train, self.val, path, self.train_eval)

    def state_dict(self):
        self._read_pending()
        return {k: [list(t) for t in getattr(self, k)] for k in ("train", "val", "train_eval")}

    def load_state_dict(self, state):
        self.train = [tuple(t) for t in state.get("train", [])]
        self.val = [tuple(t) for t in state.get("val", [])]
        self.train_eval = [tuple(t) for t in state.get("train_eval", [])]


def plot_losses(train, val, path: Path, train_eval=()):
    """Train and val loss against steps, with tokens seen on a second x-axis (as the book plots it).

    `train` is the loss of every training batch (train mode, dropout on); `train_eval` the loss of
    the same train windows at each validation with dropout off, the book's "training loss".
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([t[0] for t in train], [t[2] for t in train], label="train loss (batches)", alpha=0.4 if train_eval else 0.8)
    if train_eval:
        ax.plot([t[0] for t in train_eval], [t[2] for t in train_eval], "s-", label="train loss (eval mode)")
    if val:
        ax.plot([v[0] for v in val], [v[2] for v in val], "o-", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss")
    ax.legend(loc="upper right")
    top = ax.twiny()  # second x-axis: tokens seen, aligned with steps
    steps = [t[0] for t in train]
    tokens = [t[1] for t in train]
    top.plot(tokens, [t[2] for t in train], alpha=0)
    top.set_xlim(*_tokens_at(ax.get_xlim(), steps, tokens))
    top.set_xlabel("tokens seen")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def _tokens_at(xlim, steps, tokens):
    """Map the step axis limits to tokens seen, by linear fit through the recorded points."""
    if len(steps) < 2 or steps[-1] == steps[0]:
        return (xlim[0] * tokens[-1] / max(steps[-1], 1), xlim[1] * tokens[-1] / max(steps[-1], 1))
    rate = (tokens[-1] - tokens[0]) / (steps[-1] - steps[0])
    off = tokens[0] - rate * steps[0]
    return (off + rate * xlim[0], off + rate * xlim[1])
