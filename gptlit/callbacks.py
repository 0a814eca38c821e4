"""Callbacks: a text sample every N steps, and the loss plot written when training ends.
(Checkpoints: gptlit/checkpoint_callbacks.py.)"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from gptlit.errors import UserError
from gptlit.generate import SampleTextConfig, generate_text


class SampleText(L.Callback):
    """Every `every_n_steps` optimizer steps, continue `prompt` and print and log the text.

    Sampling draws from its own torch.Generator (seeded with `seed` each time) and puts the
    model back in train mode, so a run's losses are the same with or without samples.
    """

    def __init__(self, config: SampleTextConfig | None = None, at_end: bool = True, **fields):
        """config's values (SampleTextConfig's defaults if None) with `fields` on top, e.g.
        SampleText(every_n_steps=10, temperature=0.0). At the end of training one more sample if at_end."""
        names = [f.name for f in dataclasses.fields(SampleTextConfig)]
        unknown = sorted(set(fields) - set(names))
        if unknown:
            raise UserError(f"sampling.{unknown[0]} is not a sampling setting: use one of {', '.join(names)}")
        c = dataclasses.replace(config or SampleTextConfig(), **fields)
        if not isinstance(c.every_n_steps, int) or isinstance(c.every_n_steps, bool) or c.every_n_steps < 0:
            raise UserError(f"sampling.every_n_steps={c.every_n_steps} must be an integer >= 0 (0 turns samples off)")
        self.every_n_steps, self.prompt, self.seed, self.at_end = c.every_n_steps, c.prompt, c.seed, at_end
        self.cfg = c.decoding()  # checks temperature, top_k, top_p, max_new_tokens
        self.samples: list[tuple[int, str]] = []
        self._last_step = -1

    def _sample(self, trainer: L.Trainer, pl_module: L.LightningModule):
        step = trainer.global_step
        if step == self._last_step or not trainer.is_global_zero:
            return
        self._last_step = step
        paused = getattr(pl_module, "clock_paused", contextlib.nullcontext)  # not counted as training time
        with paused():
            text = generate_text(pl_module.model, self.prompt, self.cfg, seed=self.seed)
        self.samples.append((step, text))
        msg = f"[step {step}] {self.prompt}{text}".replace("\n", " ")
        bar = trainer.progress_bar_callback
        if bar is not None and hasattr(bar, "print") and bar.is_enabled:
            bar.print(msg)
        else:
            print(msg, flush=True)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("samples", f"**{self.prompt}**{text}", step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        n = self.every_n_steps
        if n and trainer.global_step % n == 0 and trainer.global_step > 0:
            self._sample(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        if self.every_n_steps and self.at_end:
            self._sample(trainer, pl_module)


class LossPlot(L.Callback):
    """Collects train and val loss against steps and tokens seen; writes `loss_plot.png` at the end."""

    def __init__(self, dirpath: str, filename: str = "loss_plot.png"):
        self.dirpath, self.filename = dirpath, filename
        self.train: list[tuple[int, int, float]] = []  # (step, tokens seen, loss)
        self.val: list[tuple[int, int, float]] = []
        self.train_eval: list[tuple[int, int, float]] = []  # train windows evaluated with dropout off

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and trainer.is_global_zero:
            self.train.append((trainer.global_step, int(pl_module.tokens_seen), float(loss.detach())))

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        v = trainer.callback_metrics.get("val/loss")
        if v is not None:
            self.val.append((trainer.global_step, int(pl_module.tokens_seen), float(v)))
        t = trainer.callback_metrics.get("train/eval_loss")
        if t is not None:
            self.train_eval.append((trainer.global_step, int(pl_module.tokens_seen), float(t)))

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero and self.train:
            path = Path(self.dirpath) / self.filename
            plot_losses(self.train, self.val, path, self.train_eval)

    def state_dict(self):
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
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def _tokens_at(xlim, steps, tokens):
    """Map the step axis limits to tokens seen, by linear fit through the recorded points."""
    if len(steps) < 2 or steps[-1] == steps[0]:
        return (xlim[0] * tokens[-1] / max(steps[-1], 1), xlim[1] * tokens[-1] / max(steps[-1], 1))
    rate = (tokens[-1] - tokens[0]) / (steps[-1] - steps[0])
    off = tokens[0] - rate * steps[0]
    return (off + rate * xlim[0], off + rate * xlim[1])
