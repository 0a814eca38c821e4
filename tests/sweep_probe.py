"""Callbacks for sweep tests (train.py loads them through PYTHONPATH): fail a job, or poison its weights."""

import math

import lightning as L
import torch


def _matches(pl_module, lr, drop_rate) -> bool:
    o, m = pl_module.hparams.optim, pl_module.hparams.model
    return (lr is None or math.isclose(o["lr"], lr)) and (drop_rate is None or math.isclose(m["drop_rate"], drop_rate))


class CrashAt(L.Callback):
    """Raise at optimizer step `step` in the jobs whose lr and drop_rate match (None matches any)."""

    def __init__(self, step=None, lr=None, drop_rate=None, ctrl_c=False):
        self.step, self.lr, self.drop_rate, self.ctrl_c = step, lr, drop_rate, ctrl_c

    def on_train_batch_end(self, trainer, pl_module, *args):
        if self.step is not None and trainer.global_step == self.step and _matches(pl_module, self.lr, self.drop_rate):
            if self.ctrl_c:
                raise KeyboardInterrupt
            raise RuntimeError(f"simulated crash at step {self.step}")


class NaNAt(L.Callback):
    """Turn the weights into NaN at step `step`: the next val/loss is NaN."""

    def __init__(self, step=2):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, *args):
        if trainer.global_step == self.step:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.fill_(float("nan"))
