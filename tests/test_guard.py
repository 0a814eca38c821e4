"""The loss guard (gptlit/training/guard.py): a NaN step is skipped without touching the weights or the
optimizer state; repeated spikes roll the run back to the last good last.ckpt, skip those batches, lower
the lr, and the run finishes; after max_rollbacks it stops with one line."""

from __future__ import annotations

import hashlib
import json

import lightning as L
import pytest
import torch
from conftest import TINY, compose_cfg

from gptlit.core.errors import UserError
from gptlit.run.runner import run
from gptlit.training.guard import GuardGaveUp, LossGuard

RECORD: dict = {}


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class Inject(L.Callback):
    """Test-only: multiplies the loss by NaN at step `nan_at` and by `factor` at steps `spike_at`; records
    the weights and optimizer state around each step and each batch's digest, per fit."""

    def __init__(self, nan_at=-1, spike_at: tuple = (), factor: float = 30.0):
        self.nan_at = set(nan_at) if not isinstance(nan_at, int) else {nan_at}  # a step or a list of steps
        self.spike_at, self.factor = tuple(spike_at), factor
        self.hook = None
        RECORD.setdefault("fits", []).append({})

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.global_step
        opt = trainer.optimizers[0]
        state = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        RECORD["fits"][-1][step] = {"weights": digest(pl_module.parameters()), "opt": digest(state),
                                    "batch": digest([batch[0]])}
        scale = float("nan") if step in self.nan_at else self.factor if step in self.spike_at else None
        if scale is not None:
            self.hook = pl_module.model.register_forward_hook(lambda m, i, out: out * scale)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.hook is not None:
            self.hook.remove()
            self.hook = None


def cfg(corpus, tmp_path, *extra):
    return compose_cfg([*TINY, "data=text", f"data.path={corpus}", "trainer.max_steps=16", "trainer.log_every_n_steps=2",
                        "callbacks.guard.window=5", "callbacks.last_checkpoint.every_n_train_steps=4",
                        "optim.grad_clip=null", "optim.scheduler=constant", "optim.warmup_steps=0",
                        "+callbacks.inject._target_=test_guard.Inject", *extra], tmp_path / "run")


def test_nan_step_skipped_and_spikes_rolled_back(corpus, tmp_path, caplog):
    RECORD.clear()
    with caplog.at_level("INFO"):
        run(cfg(corpus, tmp_path, "+callbacks.inject.nan_at=3", "+callbacks.inject.spike_at=[8,9,10]"))
    first, second = RECORD["fits"]  # one rollback: a second fit
    # the NaN step left weights and optimizer state as they were; the next step changed them
    assert first[4]["weights"] == first[3]["weights"] and first[4]["opt"] == first[3]["opt"]
    assert first[5]["weights"] != first[4]["weights"]
    # back to last.ckpt of step 8 (written before the spikes), which replays the same batches 8, 9, 10 and skips them
    assert min(second) == 8 and second[8]["weights"] == first[8]["weights"]
    assert [second[s]["batch"] for s in (8, 9, 10)] == [first[s]["batch"] for s in (8, 9, 10)]
    assert [second[s]["weights"] for s in (8, 9, 10, 11)] == [second[8]["weights"]] * 4  # skipped: unchanged
    messages = [r.getMessage() for r in caplog.records]
    assert "guard: step 3: loss or gradient norm not finite (loss nan): optimizer step skipped" in messages
    rollback = [m for m in messages if "back to last.ckpt" in m]
    assert rollback == ["guard: 3 bad steps in a row (steps 8-10): back to last.ckpt of step 8, skipping 8, 9, 10, "
                        "lr x0.5 (rollback 1 of 3)"]
    # the run finishes, at half the lr, and its checkpoint keeps what the guard did
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 16
    assert [g["lr"] for g in ckpt["optimizer_states"][0]["param_groups"]] == [pytest.approx(5e-4)] * 2
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("LossGuard"))
    assert state["rollbacks"] == 1 and state["skip_steps"] == [8, 9, 10] and state["lr_scale"] == 0.5
    assert [m for m in messages if m.startswith("stopped")] == ["stopped: max_steps=16 reached (0.57 epochs)"]
    from test_train import scalars

    assert "guard" in " ".join(scalars(tmp_path / "run")["_text"])  # the TensorBoard text entries


def test_guard_gives_up_after_max_rollbacks(corpus, tmp_path, caplog):
    RECORD.clear()
    with caplog.at_level("INFO"), pytest.raises(GuardGaveUp, match="loss guard gave up"):  # a failed run: exit 1
        run(cfg(corpus, tmp_path, "callbacks.guard.max_rollbacks=0", "+callbacks.inject.spike_at=[8,9,10]"))
    assert len(RECORD["fits"]) == 1
    status = json.loads((tmp_path / "run" / "job_result.json").read_text())["status"]
    assert status.startswith("failed: loss guard gave up: 3 bad steps in a row")  # before: "ok"
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stopped")]
    assert len(lines) == 1 and lines[0].startswith("stopped at step 12: loss guard gave up: 3 bad steps in a row "
                                                   "(steps 8-10) after 0 rollbacks (callbacks.guard.max_rollbacks=0)")


def test_bad_steps_before_any_last_ckpt_roll_back_to_the_first_weights(corpus, tmp_path, caplog):
    """Before: 'no good last.ckpt to go back to; lower optim.lr ... and resume from last.ckpt', a give-up
    without any rollback. Now the run goes back to the weights it started from, at half the lr."""
    RECORD.clear()
    with caplog.at_level("INFO"):
        run(cfg(corpus, tmp_path, "+callbacks.inject.nan_at=[0,1,2]"))
    first, second = RECORD["fits"]
    assert min(second) == 0 and second[0]["weights"] == first[0]["weights"] and second[0]["batch"] == first[0]["batch"]
    assert [second[s]["weights"] for s in (0, 1, 2, 3)] == [first[0]["weights"]] * 4  # skipped: unchanged
    assert second[4]["weights"] != second[3]["weights"]
    messages = [r.getMessage() for r in caplog.records]
    assert [m for m in messages if "back to" in m] == [
        "guard: 3 bad steps in a row (steps 0-2): back to the first weights (step 0), skipping 0, 1, 2, lr x0.5 "
        "(rollback 1 of 3)"]
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 16
    assert [g["lr"] for g in ckpt["optimizer_states"][0]["param_groups"]] == [pytest.approx(5e-4)] * 2
    assert json.loads((tmp_path / "run" / "job_result.json").read_text())["status"] == "ok"
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_a_run_that_gave_up_keeps_its_last_good_state_and_says_it_diverged(corpus, tmp_path, caplog):
    RECORD.clear()
    with caplog.at_level("INFO"), pytest.raises(GuardGaveUp) as e:
        run(cfg(corpus, tmp_path, "callbacks.guard.max_rollbacks=1", "+callbacks.inject.spike_at=[8,9,10,11,12,13,14,15]"))
    assert len(RECORD["fits"]) == 2
    assert str(e.value) == ("loss guard gave up: 4 bad steps in a row (steps 12-15) after 1 rollback "
                            "(callbacks.guard.max_rollbacks=1) at lr x0.5; last.ckpt is step 12 again, the last good "
                            "state; train again with a lower optim.lr or more optim.warmup_steps")
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 12  # (steps 8-11 skipped after the rollback) not the diverged state of step 16
    messages = [r.getMessage() for r in caplog.records]
    best = [m for m in messages if m.startswith("best checkpoint")]
    assert len(best) == 1 and best[0].startswith("best checkpoint of a run that diverged (the loss guard gave up): ")


def test_guard_settings_are_checked():
    with pytest.raises(UserError, match=r"callbacks.guard.spike_factor=1 must be a number > 1"):
        LossGuard(spike_factor=1)
    with pytest.raises(UserError, match=r"callbacks.guard.lr_factor=0 must be a number in \(0, 1\]"):
        LossGuard(lr_factor=0)
