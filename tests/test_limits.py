"""When a run stops and how a resume continues: max_steps alone is a step budget (epochs roll over),
the last lines say which limit ended the run, and the resume edge cases of issue 22 point 5."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TINY, compose_cfg
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from gptlit.core.errors import UserError
from gptlit.run.runner import build_run
from gptlit.run.runner import run
from gptlit.training.limits import resolve_max_epochs
from gptlit.training.resume import plan_resume

# 115 train windows of the test corpus in batches of 16: 7 optimizer steps an epoch (the last part batch is dropped)
PER_EPOCH = 7


def small(corpus, *extra):
    return [*TINY, "data=text", f"data.path={corpus}", "data.batch_size=16", "trainer.max_steps=-1", *extra]


def step_of(run_dir: Path) -> int:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]


def stop_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("stopped")]


def test_max_epochs_follows_max_steps():
    assert resolve_max_epochs(None, -1) == 1  # python train.py: one epoch, as the README says
    assert resolve_max_epochs(None, None) == 1
    assert resolve_max_epochs(None, 400) == -1  # a step budget alone: no epoch limit
    assert resolve_max_epochs(10, 400) == 10  # both set: whichever comes first
    assert resolve_max_epochs(10, -1) == 10


def test_default_config_trains_one_epoch(make_cfg):
    _, _, trainer, _ = build_run(make_cfg("trainer.max_steps=-1"))
    assert (trainer.max_epochs, trainer.max_steps) == (1, -1)


def test_max_steps_alone_trains_that_many_steps(corpus, tmp_path, caplog):
    # the old default max_epochs=1 stopped this at step 7 (one epoch)
    with caplog.at_level("INFO"):
        run(compose_cfg(small(corpus, "trainer.max_steps=10"), tmp_path / "steps"))
    assert step_of(tmp_path / "steps") == 10
    assert stop_lines(caplog) == [f"stopped: max_steps=10 reached ({10 / PER_EPOCH:.2f} epochs)"]


def test_max_epochs_and_early_stopping_are_said(corpus, tmp_path, caplog):
    with caplog.at_level("INFO"):
        run(compose_cfg(small(corpus, "trainer.max_epochs=2"), tmp_path / "epochs"))
    assert step_of(tmp_path / "epochs") == 2 * PER_EPOCH
    assert stop_lines(caplog) == [f"stopped: max_epochs=2 reached (step {2 * PER_EPOCH})"]
    caplog.clear()
    with caplog.at_level("INFO"):
        run(compose_cfg(small(corpus, "trainer.max_steps=50", "trainer.val_check_interval=2",
                              "callbacks.early_stopping.patience=1", "callbacks.early_stopping.min_delta=100"),
                        tmp_path / "early"))
    lines = stop_lines(caplog)
    assert len(lines) == 1 and lines[0].startswith("stopped early at step 4: ") and "val/loss" in lines[0]


def test_resume_of_finished_epoch_with_max_steps_trains_the_next_epoch(corpus, tmp_path, caplog):
    # one epoch whose last.ckpt is written when training ends (the last validation is at step 6);
    # Lightning restarted inside that finished epoch when max_steps was set: one step, then "max_epochs=2"
    run(compose_cfg(small(corpus, "trainer.max_epochs=1", "trainer.val_check_interval=3"), tmp_path / "first"))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert step_of(tmp_path / "first") == PER_EPOCH
    with caplog.at_level("INFO"):
        run(compose_cfg(small(corpus, "trainer.max_epochs=2", f"trainer.max_steps={PER_EPOCH + 2}",
                              "trainer.val_check_interval=3", f"ckpt_path={last}"), tmp_path / "second"))
    assert step_of(tmp_path / "second") == PER_EPOCH + 2
    assert stop_lines(caplog)[-1].startswith(f"stopped: max_steps={PER_EPOCH + 2} reached")
    caplog.clear()
    with caplog.at_level("INFO"):
        run(compose_cfg(small(corpus, "trainer.max_epochs=2", "trainer.max_steps=100", "trainer.val_check_interval=3",
                              f"ckpt_path={last}"), tmp_path / "third"))
    assert step_of(tmp_path / "third") == 2 * PER_EPOCH  # the whole second epoch
    assert stop_lines(caplog)[-1] == f"stopped: max_epochs=2 reached (step {2 * PER_EPOCH})"


def test_tokens_seen_after_resume_and_no_resumable_warning(corpus, tmp_path):
    from test_train import scalars

    common = [*TINY, "data=text", f"data.path={corpus}", "trainer.log_every_n_steps=1"]
    run(compose_cfg([*common, "trainer.max_steps=5"], tmp_path / "first"))  # last.ckpt at a validation (step 5)
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(compose_cfg([*common, "trainer.max_steps=9", f"ckpt_path={last}"], tmp_path / "second"))
        warnings.warn("another warning", PossibleUserWarning)  # the filter is for one message only
    texts = [str(w.message) for w in caught]
    assert not [t for t in texts if "not resumable" in t]
    assert "another warning" in texts
    # 4 windows of 32 tokens a step: after step s (logged at s - 1) 128 * s tokens; the resumed run
    # logged every value one step early (one batch too many at each step)
    for name in ("first", "second"):
        seen = scalars(tmp_path / name)["train/tokens_seen"]
        assert seen and all(v == 128 * (s + 1) for s, v in seen), (name, seen)
    assert [s for s, _ in scalars(tmp_path / "second")["train/tokens_seen"]] == [5, 6, 7, 8]


class InterruptFirstStep(L.Callback):
    """Ctrl-C during the first optimizer step (a test-only callback)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        raise KeyboardInterrupt


def test_step_zero_checkpoint_resumes_with_another_micro_batch(corpus, tmp_path):
    common = [*TINY, "data=text", f"data.path={corpus}", "data.batch_size=8"]
    with pytest.raises(SystemExit):  # Lightning's graceful shutdown after Ctrl-C ends in exit 1
        run(compose_cfg([*common, "data.micro_batch_size=4", "+callbacks.stop._target_=test_limits.InterruptFirstStep"],
                        tmp_path / "first"))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 0 and ckpt["gptlit_resume"]["batches"] == 0
    run(compose_cfg([*common, "data.micro_batch_size=8", "trainer.max_steps=3", f"ckpt_path={last}"],
                    tmp_path / "second"))
    assert step_of(tmp_path / "second") == 3


def fingerprint(**changes):
    base = {"batch_size": 16, "micro_batch_size": 4, "world_size": 1, "max_length": 32, "stride": 32,
            "windows": 115, "corpus": "abc"}
    return {**base, **changes}


def ckpt_at(batches: int, **changes) -> dict:
    return {"epoch": 0, "gptlit_resume": {"seed": 7, "epoch": 1, "batches": batches, "exact": True,
                                          "data": fingerprint(**changes)}}


def test_plan_resume_at_batch_zero_takes_any_batch_layout():
    plan = plan_resume(ckpt_at(0), "last.ckpt", fingerprint(micro_batch_size=16, batch_size=32, world_size=2), 8, False)
    assert plan == {"seed": 7, "epoch": 1, "start_batch": 0}
    with pytest.raises(UserError, match=r"data.stride=16, this run has data.stride=32"):
        plan_resume(ckpt_at(0, stride=16), "last.ckpt", fingerprint(), 8, False)  # other windows: still refused


@pytest.mark.parametrize("key, saved, now, text", [
    ("micro_batch_size", 4, 16, "it was trained with data.micro_batch_size=4, this run has data.micro_batch_size=16; "
                                "set data.micro_batch_size=4 as the checkpoint has, or pass resume_inexact=true"),
    ("world_size", 2, 1, "it was trained with 2 processes (trainer.devices x trainer.num_nodes), this run has 1 "
                         "processes (trainer.devices x trainer.num_nodes); run on 2 processes as the checkpoint did"),
])
def test_plan_resume_message_reads_well(key, saved, now, text):
    with pytest.raises(UserError) as e:
        plan_resume(ckpt_at(3, **{key: saved}), "last.ckpt", fingerprint(**{key: now}), 8, False)
    assert text in str(e.value)


@pytest.mark.parametrize("mode", ["sampler", "global"])
def test_a_change_in_any_fingerprint_entry_is_refused_naming_its_setting(mode):
    # the data layer makes the fingerprint (gptlit.data.sampler), the resume check words its differences
    # (gptlit.training.resume): an entry without words there would let a changed setting resume silently
    from gptlit.data.sampler import order_fingerprint
    from gptlit.data.windows import WindowDataset
    from gptlit.training.resume import KEY, describe_setting

    now = order_fingerprint(WindowDataset(torch.arange(200), 8, 8), 4, 1, 2, mode)
    assert len(now) == (8 if mode == "global" else 7)
    for key in now:
        saved = {**now, key: 99}
        ckpt = {"epoch": 0, KEY: {"seed": 7, "epoch": 0, "batches": 3, "exact": True, "data": saved}}
        with pytest.raises(UserError) as e:
            plan_resume(ckpt, "last.ckpt", now, 8, False)
        assert f"it was trained with {describe_setting(key, 99)}, this run has {describe_setting(key, now[key])}" \
            in str(e.value)


def test_seed_null_gives_each_run_of_a_process_its_own_shuffle_seed(corpus, tmp_path, monkeypatch):
    from gptlit.data.sampler import default_seed

    monkeypatch.delenv("GPTLIT_SHUFFLE_SEED", raising=False)
    # two jobs of one sweep run in one process, one after the other; with seed=null they shared one seed
    seeds = [build_run(compose_cfg([*TINY, "data=text", f"data.path={corpus}", "seed=null"], tmp_path / f"job{i}"))[0].order.seed
             for i in range(2)]
    assert seeds[0] != seeds[1]
    # the DDP ranks of the second job (started with a copy of its environment) read its seed
    assert default_seed(None, run=str(tmp_path / "job1")) == seeds[1]
    assert default_seed(3, run=str(tmp_path / "job1")) == 3
