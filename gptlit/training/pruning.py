"""Pruning: a search trial reports its val/loss at every validation and stops when the search says
it is hopeless. The search itself (which trial, which pruner) is the caller's: gptlit.run.search
passes `connect`, which returns a reporter with `report(step, value) -> bool` (True: stop)."""

from __future__ import annotations

import math
from typing import Callable, Protocol

import lightning as L

from gptlit.training.contracts import Outcome


class Reporter(Protocol):
    def report(self, step: int, value: float) -> bool: ...


class Pruning(L.Callback):
    """At each validation, global rank 0 reports `monitor` at the optimizer step to the trial and learns
    whether to stop; every rank gets that answer (a broadcast), so all of them stop at the same step.
    A stopped trial's `pruned` ({"step", "value"}) is what JobResult records (status `pruned`): its `outcome`
    (an `EndsRuns`, gptlit.training.contracts), which outranks the other reasons a run ended."""

    def __init__(self, connect: Callable[[], Reporter | None], monitor: str = "val/loss"):
        self.connect, self.monitor = connect, monitor
        self.reporter: Reporter | None = None
        self.pruned: dict | None = None

    def outcome(self) -> Outcome | None:
        return None if self.pruned is None else Outcome("pruned", rank=3, extra={"pruned": dict(self.pruned)})

    def setup(self, trainer, pl_module, stage):
        if trainer.is_global_zero and self.reporter is None:  # one process talks to the study
            self.reporter = self.connect()

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or trainer.state.fn != "fit" or self.pruned is not None:
            return
        decision = None
        if trainer.is_global_zero and self.reporter is not None:
            v = trainer.callback_metrics.get(self.monitor)
            if v is not None and math.isfinite(float(v)):  # a NaN ends the trial as failed, not pruned
                step, value = int(trainer.global_step), float(v)
                if self.reporter.report(step, value):
                    decision = {"step": step, "value": value}
        decision = trainer.strategy.broadcast(decision, src=0)
        if decision is not None:
            self.pruned = decision
            trainer.should_stop = True
