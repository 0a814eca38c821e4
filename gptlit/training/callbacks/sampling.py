"""`SampleText`: a text sample every N optimizer steps, printed and logged (TensorBoard's text tab)."""

from __future__ import annotations

import dataclasses

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from gptlit.core.errors import UserError, check_keys
from gptlit.model.generate import SampleTextConfig, generate_text
from gptlit.training.callbacks.progress import say
from gptlit.training.contracts import TrainingModule


class SampleText(L.Callback):
    """Every `every_n_steps` optimizer steps, continue `prompt` and print and log the text.

    Sampling draws from its own torch.Generator (seeded with `seed` each time) and puts the
    model back in train mode, so a run's losses are the same with or without samples.
    """

    def __init__(self, config: SampleTextConfig | None = None, at_end: bool = True, **fields):
        """config's values (SampleTextConfig's defaults if None) with `fields` on top, e.g.
        SampleText(every_n_steps=10, temperature=0.0). At the end of training one more sample if at_end."""
        names = [f.name for f in dataclasses.fields(SampleTextConfig)]
        check_keys(fields, names, "sampling", "a sampling setting", sort=False)
        c = dataclasses.replace(config or SampleTextConfig(), **fields)
        if not isinstance(c.every_n_steps, int) or isinstance(c.every_n_steps, bool) or c.every_n_steps < 0:
            raise UserError(f"sampling.every_n_steps={c.every_n_steps} must be an integer >= 0 (0 turns samples off)")
        self.every_n_steps, self.prompt, self.seed, self.at_end = c.every_n_steps, c.prompt, c.seed, at_end
        self.cfg = c.decoding()  # checks temperature, top_k, top_p, max_new_tokens
        self.samples: list[tuple[int, str]] = []
        self._last_step = -1

    def _sample(self, trainer: L.Trainer, pl_module: TrainingModule, at_end: bool = False):
        step = trainer.global_step
        if step == self._last_step or not trainer.is_global_zero:
            return
        self._last_step = step
        with pl_module.clock_paused():  # not counted as training time
            text = generate_text(pl_module.model, self.prompt, self.cfg, seed=self.seed)
        self.samples.append((step, text))
        say(trainer, f"[step {step}] {self.prompt}{text}".replace("\n", " "))
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("samples", f"**{self.prompt}**{text}", step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        n = self.every_n_steps
        if n and trainer.global_step % n == 0 and trainer.global_step > 0:
            self._sample(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        if self.every_n_steps and self.at_end:
            self._sample(trainer, pl_module, at_end=True)
