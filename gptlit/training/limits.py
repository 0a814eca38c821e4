"""When a run stops: the epoch limit that follows from trainer.max_steps, and the line that says which
limit ended the run.

Lightning's Trainer stops at whichever of max_epochs and max_steps comes first, and gptlit's old
default max_epochs=1 made `trainer.max_steps=400` stop after one epoch. As in nanoGPT and litgpt,
a step budget alone now trains that many steps: trainer.max_epochs is null by default, meaning one
epoch when no max_steps is set and no epoch limit when one is.
"""

from __future__ import annotations

from gptlit.training.contracts import run_outcome


def resolve_max_epochs(max_epochs, max_steps) -> int:
    """trainer.max_epochs as Lightning gets it: the user's value, else -1 (no epoch limit, epochs roll
    over) when max_steps is set, else 1 (`python train.py` trains one epoch)."""
    if max_epochs is not None:
        return int(max_epochs)
    return -1 if (max_steps or -1) > 0 else 1


def epoch_steps(trainer) -> int | None:
    """Optimizer steps in one epoch of this rank's train loader (None where unknown)."""
    n = trainer.num_training_batches
    if not isinstance(n, int) or n <= 0:
        return None
    return -(-n // max(1, trainer.accumulate_grad_batches))


def stop_reason(trainer) -> str:
    """One line saying which limit ended a finished fit (early stopping, max_steps, max_epochs, max_time)."""
    outcome = run_outcome(trainer, with_line=True)  # a callback ended it: early stopping, the loss guard
    if outcome is not None:
        return f"stopped{' early' if outcome.early else ''} at step {trainer.global_step}: {outcome.line}"
    if trainer.interrupted:
        return f"stopped at step {trainer.global_step}: interrupted"
    steps, epochs, epoch = trainer.max_steps, trainer.max_epochs, trainer.current_epoch
    if (steps or -1) > 0 and trainer.global_step >= steps:
        per_epoch = epoch_steps(trainer)
        return f"stopped: max_steps={steps} reached" + (f" ({steps / per_epoch:.2f} epochs)" if per_epoch else "")
    if (epochs or -1) > 0 and epoch >= epochs:
        return f"stopped: max_epochs={epochs} reached (step {trainer.global_step})"
    from lightning.pytorch.callbacks import Timer

    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)  # Lightning's, for trainer.max_time
    if timer is not None and (timer.time_remaining() or 0) <= 0:
        return f"stopped: max_time reached (step {trainer.global_step})"
    if trainer.should_stop:
        return f"stopped at step {trainer.global_step} (a callback asked to stop)"
    return f"stopped at step {trainer.global_step}"
