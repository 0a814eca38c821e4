"""The agreements between the training loop's parts, written as types:

- `TrainingModule`: what callbacks may read from the LightningModule (GPTLitModule has every name;
  tests/test_contracts.py checks that, and that the callbacks read no other name of the module).
- `LastState`: the callback that writes last.ckpt (gptlit.training.checkpointing.LastCheckpoint), as the
  loss guard (gptlit.training.guard) finds it, without importing the module that imports the guard.
- `DrawsAtStepEnd`: a callback whose random draws at a step's end belong to the step (ExactResume snapshots
  the RNGs after it: gptlit.training.resume).
- `Outcome` / `EndsRuns`: a callback that ends a run says why; `run_outcome` is the one place that
  turns those (and Lightning's early stopping) into a job's status and the `stopped: ...` line.
"""

from __future__ import annotations

import dataclasses
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Callable, Iterator, Protocol, runtime_checkable

import torch


@runtime_checkable
class TrainingModule(Protocol):
    """What callbacks read from the module being trained; nothing else (no getattr with a default)."""

    model: torch.nn.Module  # the GPT
    tokens_seen: int  # training tokens over all ranks so far
    step_loss: torch.Tensor | None  # the last optimizer step's batch loss (a device tensor), None before one
    paused_seconds: float  # time spent inside clock_paused() so far

    @property
    def device(self) -> torch.device: ...

    @property
    def logging_step(self) -> bool:
        """Whether the current optimizer step logs (device values are read back only then)."""

    @property
    def compile_steps(self) -> int:
        """Optimizer steps at the start that torch.compile may spend compiling."""

    def clock_paused(self) -> AbstractContextManager:
        """Time spent inside is not training time (tokens/s, progress lines)."""

    def grad_norm(self) -> torch.Tensor:
        """This optimizer step's global gradient norm before clipping, a device tensor."""

    # a step cut by Ctrl-C between its micro-batches (gptlit.training.resume.ExactResume keeps it)
    accumulated: dict | None  # {"step", "n" micro-batches in p.grad, "rng", "tokens_seen"}; None before a backward

    def named_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        """torch.nn.Module's: the parameters whose p.grad a partial step keeps."""

    def step_losses_so_far(self, n: int) -> list:
        """The losses of the current step's first n micro-batches (device tensors)."""

    def restore_step_losses(self, losses: list) -> None:
        """Put back the losses of a partial step's micro-batches on resume."""


MODULE_NAMES = frozenset({"model", "tokens_seen", "step_loss", "paused_seconds", "device", "logging_step",
                          "compile_steps", "clock_paused", "grad_norm", "accumulated", "named_parameters",
                          "step_losses_so_far", "restore_step_losses"})  # TrainingModule's names (the test checks)


class LastState:
    """Base of the callback that writes `<run dir>/last.ckpt`: the loss guard keeps the last good one open
    and puts it back. `path` is where it goes (written yet or not), `saved_step` the global step of the
    state on disk (None before the first write in this process), `writing_alone` True while global rank 0
    writes it by itself after a failure (the checkpoint hooks that run then must make no collective)."""

    path: Path
    saved_step: int | None = None
    writing_alone: bool = False  # while rank 0 writes it by itself after a failure: callbacks make no collective


def last_state(trainer) -> LastState | None:
    """The run's last.ckpt writer, None when last.ckpt is off."""
    return next((c for c in trainer.callbacks if isinstance(c, LastState)), None)


class DrawsAtStepEnd:
    """Base of a callback that draws from the global RNGs at an optimizer step's end as part of the step
    (gptlit.training.callbacks.book.BookEval): exact resume's RNG snapshot is taken after it."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """Why a callback ended a run. `status` is job_result.json's (`stopped early`, `failed: ...`,
    `pruned`; written on one line); `line` what the `stopped ... at step N: <line>` line says (None: the run's limits say it);
    `early` whether that line reads `stopped early`; `extra` goes into job_result.json beside the status.
    Where several callbacks ended the run, the highest `rank` is the status."""

    status: str
    rank: int
    line: str | None = None
    early: bool = False
    extra: dict = dataclasses.field(default_factory=dict)


@runtime_checkable
class EndsRuns(Protocol):
    """A callback that may end a run (the loss guard, a search's pruning) and says so."""

    def outcome(self) -> Outcome | None: ...


def _early_stopping(cb) -> Outcome | None:
    """Lightning's EarlyStopping, read through its public stopping_reason."""
    from lightning.pytorch.callbacks import EarlyStopping

    if not isinstance(cb, EarlyStopping) or cb.stopping_reason.name == "NOT_STOPPED":
        return None
    msg = cb.stopping_reason_message or cb.stopping_reason.name.lower().replace("_", " ")
    if cb.stopping_reason.name == "NON_FINITE_METRIC":
        return Outcome("failed: " + (cb.stopping_reason_message or "val/loss is not finite"), 1, msg, early=True)
    return Outcome("stopped early", 1, msg, early=True)


OUTCOME_READERS: tuple[Callable[[object], Outcome | None], ...] = (
    lambda cb: cb.outcome() if isinstance(cb, EndsRuns) else None,
    _early_stopping,
)


def run_outcome(trainer, with_line: bool = False) -> Outcome | None:
    """Why the run ended, if a callback ended it: the highest-ranked outcome (first in callback order on a
    tie); with_line: only among those that have a `stopped` line of their own."""
    found = [o for cb in trainer.callbacks for read in OUTCOME_READERS
             if (o := read(cb)) is not None and (o.line is not None or not with_line)]
    return max(found, key=lambda o: o.rank, default=None)
