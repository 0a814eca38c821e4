"""Exact resume: a run killed with SIGKILL and resumed from last.ckpt trains exactly the steps, batches and
losses of the uninterrupted run; checkpoint writes are atomic; a resume that cannot be exact is refused."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from gptlit.core.errors import UserError
from gptlit.data.sampler import ResumableDistributedSampler
from gptlit.run.runner import build_run
from gptlit.run.runner import run

ROOT = Path(__file__).resolve().parents[1]

# ---- the sampler ------------------------------------------------------------------------------------


def order(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_sampler_shards_and_resumes_mid_epoch():
    ds = list(range(103))
    full = [ResumableDistributedSampler(ds, 4, True, seed=5, num_replicas=2, rank=r) for r in (0, 1)]
    e0, e1 = [order(s, 0) for s in full], [order(s, 1) for s in full]
    # each rank its shard: 103 windows, so one is repeated to give both 52
    assert len(set(e0[0]) & set(e0[1])) == 1 and len(set(e0[0]) | set(e0[1])) == 103
    assert e0[0] != e1[0] and set(e1[0]) | set(e1[1]) == set(range(103))  # another order each epoch
    assert full[0].batches_per_epoch() == 52 // 4
    # made for epoch 1 with 3 batches done: the rest of epoch 1, then epoch 2 whole
    resumed = ResumableDistributedSampler(ds, 4, True, seed=5, num_replicas=2, rank=1, epoch=1, start_batch=3)
    assert len(resumed) == len(full[1])  # Lightning ends the epoch at len(): it counts restored batches too
    assert order(resumed, 1) == e1[1][12:]
    assert order(resumed, 2) == order(full[1], 2)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_iterated_before_set_epoch_resumes_right(workers):
    # Lightning calls iter() on the train loader (workers prefetch at once) before set_epoch() on resume
    ds = torch.arange(40)
    ref = ResumableDistributedSampler(ds, 4, True, seed=1)
    want = order(ref, 1)[8:]
    s = ResumableDistributedSampler(ds, 4, True, seed=1, epoch=1, start_batch=2)
    loader = DataLoader(ds, batch_size=4, sampler=s, drop_last=True, num_workers=workers)
    it = iter(loader)
    s.set_epoch(1)
    assert torch.cat(list(it)).tolist() == want


def test_global_order_is_shuffled_dataloaders_and_draws_what_it_draws():
    """data.order=global: the order of DataLoader(shuffle=True) seeded through torch.manual_seed, and the
    global generator left exactly where such a loader leaves it, epoch after epoch; a resume mid-epoch
    takes the drawn seed and draws nothing."""
    from gptlit.data.sampler import TrainOrder

    ds = torch.arange(19)
    torch.manual_seed(7)
    book = DataLoader(ds, batch_size=2, shuffle=True, drop_last=True)
    want = [torch.cat(list(book)).tolist() for _ in range(3)]
    after = torch.rand(4)

    torch.manual_seed(7)
    order = TrainOrder(mode="global")
    sampler = order.sampler(ds, 2, True)
    loader = DataLoader(ds, batch_size=2, sampler=sampler, drop_last=True, generator=torch.Generator())
    got = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        got.append(torch.cat(list(loader)).tolist())
        if epoch == 1:
            seed_1 = order.seed
    assert got == want and len(got[0]) == 18
    assert torch.equal(torch.rand(4), after)

    resumed_order = TrainOrder(seed_1, epoch=1, start_batch=3, mode="global")
    resumed = resumed_order.sampler(ds, 2, True)
    state = torch.get_rng_state()
    assert list(resumed) == want[1][6:] and torch.equal(torch.get_rng_state(), state)
    resumed.set_epoch(2)
    drawn = []
    resumed_order.before_draw = lambda: drawn.append(True)
    assert len(list(resumed)) == 18 and drawn == [True]  # the next epoch draws, after before_draw


def test_global_order_is_one_process_only():
    from gptlit.data.sampler import TrainOrder

    class Trainer:
        world_size, global_rank = 2, 0

    with pytest.raises(UserError, match="data.order=global runs on one process, this run has 2"):
        TrainOrder(mode="global").sampler(list(range(10)), 2, True, Trainer())


# ---- in-process: refusals, old checkpoints, cadence, checkpoint files ---------------------------------


def tiny(corpus, *extra):
    from conftest import TINY

    return [*TINY, "data=text", f"data.path={corpus}", *extra]


def test_inexact_resume_is_refused_or_overridden(corpus, tmp_path, caplog):
    from conftest import compose_cfg

    run(compose_cfg(tiny(corpus, "trainer.max_steps=3"), tmp_path / "first"))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    with pytest.raises(UserError, match=r"cannot continue its data order exactly: it was trained with "
                                          r"data.batch_size=4, this run has data.batch_size=8; set data.batch_size=4 .*resume_inexact=true"):
        build_run(compose_cfg(tiny(corpus, "data.batch_size=8", f"ckpt_path={last}"), tmp_path / "second"))
    with pytest.raises(UserError, match=r"data.stride=32, this run has data.stride=16"):
        build_run(compose_cfg(tiny(corpus, "data.stride=16", f"ckpt_path={last}"), tmp_path / "second"))
    other = tmp_path / "other.txt"
    other.write_text(corpus.read_text().replace("fox", "cat"))
    with pytest.raises(UserError, match=r"trained with the training corpus with token digest \w+, this run has"):
        build_run(compose_cfg(tiny(f"{other}", f"ckpt_path={last}"), tmp_path / "second"))
    assert not (tmp_path / "second" / "checkpoints").exists()
    with caplog.at_level("INFO"):
        dm, _, _, _ = build_run(compose_cfg(tiny(corpus, "data.batch_size=8", "resume_inexact=true", f"ckpt_path={last}"),
                                        tmp_path / "second"))
    assert (dm.order.epoch, dm.order.start_batch) == (0, 0)
    assert any("resume_inexact=true: epoch 0's data order starts afresh" in r.message for r in caplog.records)


@pytest.mark.slow  # long and rarely broken: moved out of the fast suite (issue 28)
def test_old_checkpoint_resumes_from_its_epoch_start(corpus, tmp_path, caplog):
    from conftest import compose_cfg

    run(compose_cfg(tiny(corpus, "trainer.max_steps=3"), tmp_path / "first"))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["gptlit_resume"]["batches"] == 3 and len(ckpt["gptlit_resume"]["rng"]) == 1
    del ckpt["gptlit_resume"]  # as written before exact resume
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    with caplog.at_level("INFO"):
        run(compose_cfg(tiny(corpus, "trainer.max_steps=5", f"ckpt_path={old}"), tmp_path / "second"))
    warnings = [r.message for r in caplog.records if "written before exact resume" in r.message]
    assert len(warnings) == 1 and "epoch 0 starts over from its first batch" in warnings[0]
    assert torch.load(tmp_path / "second" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5


def test_cadence_and_no_step_written_twice(corpus, tmp_path):
    from conftest import compose_cfg

    from gptlit.training.checkpointing import AtomicCheckpointIO

    saves = []
    real = AtomicCheckpointIO.save_checkpoint

    def spy(self, checkpoint, path, storage_options=None):
        saves.append((Path(path).name, checkpoint["global_step"]))
        return real(self, checkpoint, path, storage_options)

    AtomicCheckpointIO.save_checkpoint = spy
    try:
        run(compose_cfg(tiny(corpus, "trainer.max_steps=7", "trainer.val_check_interval=4",
                             "callbacks.last_checkpoint.every_n_train_steps=3"), tmp_path / "run"))
    finally:
        AtomicCheckpointIO.save_checkpoint = real
    # the loss guard's state to go back to (written at the start, unlinked at once), every 3 steps (3, 6),
    # each validation (4, 7 = max_steps) and nothing twice; best.ckpt is never written
    assert saves == [(f".start-{os.getpid()}.ckpt", 0), ("last.ckpt", 3), ("last.ckpt", 4), ("last.ckpt", 6),
                     ("last.ckpt", 7)]
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.ckpt", "last.ckpt"]
    best = torch.load(ckpts / "best.ckpt", weights_only=True)
    assert best["global_step"] in (4, 7) and "optimizer_states" in best  # a link to that validation's last.ckpt
    if best["global_step"] == 7:
        assert os.path.samefile(ckpts / "best.ckpt", ckpts / "last.ckpt")


def test_both_checkpoint_callbacks_off_means_no_checkpoints(corpus, tmp_path):
    from conftest import compose_cfg

    run(compose_cfg(tiny(corpus, "trainer.max_steps=2", "callbacks.model_checkpoint=null",
                         "callbacks.last_checkpoint=null"), tmp_path / "run"))
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("key, value, match", [
    ("every_n_train_steps", "-1", "every_n_train_steps=-1 must be an integer >= 0"),
    ("train_time_interval", "-5", "train_time_interval=-5 must be minutes >= 0"),
])
def test_bad_cadence(make_cfg, key, value, match):
    with pytest.raises(UserError, match=match):
        build_run(make_cfg(f"callbacks.last_checkpoint.{key}={value}"))


def _ctrl_c_run(cfg):
    """run(cfg), stopped by a Ctrl-C inside it: the SystemExit of the interrupt line, and Ctrl-C's handler
    as it was (Lightning ignores SIGINT during its shutdown, then its teardown puts the handler back)."""
    import signal

    handler = signal.getsignal(signal.SIGINT)
    # Ctrl-C's handler as in a terminal: a shell starts a background job (`pytest &`) with SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(SystemExit) as stopped:
            run(cfg)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, handler)
    assert stopped.value.code == 130


def _weights(ckpt: Path) -> dict:
    c = torch.load(ckpt, weights_only=True)
    return {**c["state_dict"], **{f"opt.{i}.{k}": v for i, s in c["optimizer_states"][0]["state"].items()
                                  for k, v in s.items()}}


@pytest.mark.parametrize("micro,ctrl_c,steps,probe", [
    ("2", 6, 6, "CtrlCAtMicroBatch"),  # 2 micro-batches a step: after the first of step 4
    ("1", 1, 4, "CtrlCAtMicroBatch"),  # 4 a step: after 2 of step 0 (the first: before, nothing was left to resume)
    ("1", 9, 4, "CtrlCAtMicroBatch"),  # 4 a step: after 2 of step 2
    ("1", 9, 4, "SigintInBackward"),  # a real SIGINT in the middle of micro-batch 9's backward: it completes first
])
def test_ctrl_c_inside_an_accumulation_resumes_as_the_uninterrupted_run(corpus, tmp_path, micro, ctrl_c, steps, probe):
    """Ctrl-C after micro-batch `ctrl_c` (inside an optimizer step) writes last.ckpt with the step's
    micro-batches done so far (their gradient, losses, tokens, RNG states and position); resumed, it goes
    on with the next micro-batch: the uninterrupted run's losses and final weights and AdamW moments, to
    the last bit (fp32, dropout on). Before, the micro-batches of the unfinished step were trained again
    (and a Ctrl-C in step 0 left nothing to resume)."""
    from conftest import compose_cfg

    args = tiny(corpus, f"data.micro_batch_size={micro}", "model.drop_rate=0.1", f"trainer.max_steps={steps}",
                "trainer.val_check_interval=5", "+callbacks.steps._target_=resume_probe.StepLog")
    run(compose_cfg([*args, f"+callbacks.steps.dirpath={tmp_path / 'log' / 'whole'}"], tmp_path / "whole"))
    _ctrl_c_run(compose_cfg([*args, f"+callbacks.steps.dirpath={tmp_path / 'log' / 'cut'}",
                             f"+callbacks.ctrl_c._target_=resume_probe.{probe}",
                             f"+callbacks.ctrl_c.batch={ctrl_c}"], tmp_path / "cut"))
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    every = 4 // int(micro)
    done = (ctrl_c + 1) % every
    assert saved["global_step"] == ctrl_c // every
    assert saved["gptlit_resume"]["partial"]["micro_batches"] == done
    run(compose_cfg([*args, f"+callbacks.steps.dirpath={tmp_path / 'log' / 'resumed'}", f"ckpt_path={last}"],
                    tmp_path / "resumed"))
    whole, cut, resumed = (_rows(tmp_path / "log" / n) for n in ("whole", "cut", "resumed"))
    # a SIGINT inside the backward: micro-batch ctrl_c is in the gradient kept, its on_train_batch_end never ran
    logged = ctrl_c + 1 if probe == "CtrlCAtMicroBatch" else ctrl_c
    assert len(whole) == steps * every and len(cut) == logged and cut == whole[:logged]
    assert resumed == whole[ctrl_c + 1:]  # no micro-batch trained twice, none skipped, every loss to the last bit
    a, b = _weights(tmp_path / "whole" / "checkpoints" / "last.ckpt"), _weights(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_partial_step_with_another_micro_batch_plan_restarts_that_step(corpus, tmp_path, caplog):
    """A partial step kept at a Ctrl-C, resumed with another micro-batch size (4 micro-batches of 1 -> 2 of
    2): its gradient is not used; one line says so and step 1 starts again from its first micro-batch, as
    a run with micro-batches of 2 trains it (the same losses and weights to the last bit)."""
    from conftest import compose_cfg

    args = tiny(corpus, "model.drop_rate=0.1", "trainer.max_steps=3", "trainer.val_check_interval=5",
                "+callbacks.steps._target_=resume_probe.StepLog")
    run(compose_cfg([*args, "data.micro_batch_size=2", f"+callbacks.steps.dirpath={tmp_path / 'log' / 'whole'}"],
                    tmp_path / "whole"))
    _ctrl_c_run(compose_cfg([*args, "data.micro_batch_size=1", f"+callbacks.steps.dirpath={tmp_path / 'log' / 'cut'}",
                             "+callbacks.ctrl_c._target_=resume_probe.CtrlCAtMicroBatch", "+callbacks.ctrl_c.batch=1"],
                            tmp_path / "cut"))
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    with caplog.at_level("INFO"):
        run(compose_cfg([*args, "data.micro_batch_size=2", f"+callbacks.steps.dirpath={tmp_path / 'log' / 'resumed'}",
                         f"ckpt_path={last}"], tmp_path / "resumed"))
    said = [r.getMessage() for r in caplog.records if "micro-batches of step" in r.getMessage()]
    assert said == ["warning: the checkpoint holds 2 of 4 micro-batches of step 1 (their gradient so far), but this "
                    "run has data.micro_batch_size=2 where it had data.micro_batch_size=1: step 1 starts again from "
                    "its first micro-batch"]
    assert _rows(tmp_path / "log" / "resumed") == _rows(tmp_path / "log" / "whole")
    a, b = _weights(tmp_path / "whole" / "checkpoints" / "last.ckpt"), _weights(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _whole_and_cut_at(corpus, tmp_path, batch: int):
    """A 3-step run of 4 micro-batches a step, whole (log/whole) and cut by Ctrl-C after micro-batch `batch`
    (log/cut); returns the runs' overrides and the cut run's last.ckpt."""
    from conftest import compose_cfg

    args = tiny(corpus, "data.micro_batch_size=1", "model.drop_rate=0.1", "trainer.max_steps=3",
                "trainer.val_check_interval=5", "+callbacks.steps._target_=resume_probe.StepLog")
    run(compose_cfg([*args, f"+callbacks.steps.dirpath={tmp_path / 'log' / 'whole'}"], tmp_path / "whole"))
    _ctrl_c_run(compose_cfg([*args, f"+callbacks.steps.dirpath={tmp_path / 'log' / 'cut'}",
                             "+callbacks.ctrl_c._target_=resume_probe.CtrlCAtMicroBatch",
                             f"+callbacks.ctrl_c.batch={batch}"], tmp_path / "cut"))
    return args, tmp_path / "cut" / "checkpoints" / "last.ckpt"


def test_ctrl_c_partial_gradient_that_does_not_fit_restarts_that_step(corpus, tmp_path, caplog):
    """A kept gradient whose shape is not its parameter's is never put into p.grad: one line, and the step
    starts again from its first micro-batch (the uninterrupted run's losses from there)."""
    from conftest import compose_cfg

    args, last = _whole_and_cut_at(corpus, tmp_path, 5)
    ckpt = torch.load(last, weights_only=True)
    grads = ckpt["gptlit_resume"]["partial"]["grads"]
    name = next(k for k, g in grads.items() if g is not None and g.dim() == 2)
    grads[name] = grads[name][:, :-1].clone()
    torch.save(ckpt, last)
    with caplog.at_level("INFO"):
        run(compose_cfg([*args, f"+callbacks.steps.dirpath={tmp_path / 'log' / 'resumed'}", f"ckpt_path={last}"],
                        tmp_path / "resumed"))
    said = [r.getMessage() for r in caplog.records if "micro-batches of step" in r.getMessage()]
    assert said == [f"warning: the checkpoint holds 2 of 4 micro-batches of step 2 (their gradient so far), but its "
                    f"gradient does not fit the model (parameter {name}): step 2 starts again from its first micro-batch"]
    whole, cut, resumed = (_rows(tmp_path / "log" / n) for n in ("whole", "cut", "resumed"))
    assert cut[:4] + resumed == whole  # micro-batches 4 and 5 trained again, from step 1's state


def test_ctrl_c_partial_step_is_not_carried_over_a_guard_rollback(corpus, tmp_path, caplog):
    """A resume that is the loss guard's rollback to a checkpoint with a partial step (its rollback count past
    the checkpoint's) drops the partial gradient: one line, and the step starts again from its first
    micro-batch (the same weights, so the uninterrupted run's losses for that step)."""
    from conftest import compose_cfg

    args, last = _whole_and_cut_at(corpus, tmp_path, 6)
    with caplog.at_level("INFO"):
        run(compose_cfg([*args, f"+callbacks.steps.dirpath={tmp_path / 'log' / 'resumed'}", f"ckpt_path={last}",
                         "+callbacks.guard.rollbacks=1"], tmp_path / "resumed"))
    said = [r.getMessage() for r in caplog.records if "micro-batches of step" in r.getMessage()]
    assert said == ["warning: the checkpoint holds 3 of 4 micro-batches of step 2 (their gradient so far), but the "
                    "loss guard rolls back to it (no partial gradient is carried over a rollback): step 2 starts "
                    "again from its first micro-batch"]
    whole, resumed = _rows(tmp_path / "log" / "whole"), _rows(tmp_path / "log" / "resumed")
    assert resumed[:4] == whole[4:8]  # step 1's 4 micro-batches again, from its start


# ---- kill -9 and resume, as a user would: train.py in a subprocess -----------------------------------

STEPS_PER_EPOCH = 14  # the corpus fixture: 115 train windows of 32 tokens, batches of 8


def run_args(corpus, logdir: Path) -> list[str]:
    return [
        "model=nano", "model.drop_rate=0.1", "data=text", f"data.path={corpus}", "data.max_length=32",
        "data.batch_size=8", "trainer.max_epochs=2", "trainer.val_check_interval=5", "trainer.limit_val_batches=2",
        "sampling.every_n_steps=0", "trainer.enable_progress_bar=false", "callbacks.progress_bar=null",
        "callbacks.last_checkpoint.every_n_train_steps=3", "logger.tensorboard=null", "callbacks.lr_monitor=null",
        "callbacks.loss_plot=null", "+callbacks.steps._target_=resume_probe.StepLog", f"+callbacks.steps.dirpath={logdir}",
    ]


def train(tmp_path, corpus, name, *extra, ckpt=None, timeout=120):
    """train.py in a subprocess in its own session (a kill takes its DDP ranks with it); steps logged to log/<name>."""
    args = [*run_args(corpus, tmp_path / "log" / name), f"hydra.run.dir={tmp_path / name}", *extra,
            *([f"ckpt_path={ckpt}"] if ckpt else [])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=timeout, start_new_session=True)
    return r, tmp_path / name / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run's steps (one process, dropout on, 2 epochs), trained in-process: the same
    code and settings as train.py's, without a third subprocess's start-up in each test."""
    from conftest import compose_cfg, write_corpus

    tmp = tmp_path_factory.mktemp("reference")
    run(compose_cfg(run_args(write_corpus(tmp), tmp / "log"), tmp / "run"))
    return _rows(tmp / "log")


def assert_same_run(reference: list, pieces: list, total: int, label=""):
    """Every step the killed and resumed runs logged has the uninterrupted run's loss (every digit) and batch."""
    want = {s: (loss, batch) for s, loss, batch in reference}
    assert sorted(want) == list(range(1, total + 1))
    for s, loss, batch in pieces:
        assert (loss, batch) == want[s], f"{label} step {s}: {float.fromhex(loss)} on {batch}, uninterrupted {want[s]}"
    assert {s for s, _, _ in pieces} == set(want), label  # and every step was trained


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_kill_anywhere_and_resume_is_the_same_run(tmp_path, corpus, workers, reference):
    rng = random.Random()
    k1 = rng.randrange(4, STEPS_PER_EPOCH)  # mid-epoch in the first epoch, after a checkpoint
    k2 = rng.randrange(STEPS_PER_EPOCH + 2, 2 * STEPS_PER_EPOCH)  # and in the second
    nw = f"data.num_workers={workers}"
    r, last = train(tmp_path, corpus, "a", nw, f"+callbacks.steps.kill_at_step={k1}")
    assert r.returncode == -9, r.stderr[-3000:]
    r, last = train(tmp_path, corpus, "b", nw, f"+callbacks.steps.kill_at_step={k2}", ckpt=last)
    assert r.returncode == -9, r.stderr[-3000:]
    assert torch.load(last, weights_only=True)["epoch"] == 1
    r, _ = train(tmp_path, corpus, "c", nw, ckpt=last)
    assert r.returncode == 0, r.stderr[-3000:]
    pieces = [row for name in "abc" for row in _rows(tmp_path / "log" / name)]
    assert_same_run(reference, pieces, 2 * STEPS_PER_EPOCH, f"killed at {k1} and {k2}:")


@pytest.mark.slow
def test_global_order_kill_and_resume_is_the_same_run(tmp_path, corpus):
    """data.order=global with the book's evaluation (both draw from torch's global generator): resumed at an
    epoch's end (last.ckpt of step 14's validation: the next epoch's order is drawn from its RNG states)
    and mid-epoch (step 21's: the drawn seed is the checkpoint's), every step is the uninterrupted run's."""
    glob = ["trainer.val_check_interval=7", "callbacks.last_checkpoint.every_n_train_steps=0", "data.order=global",
            "+callbacks.book_eval._target_=gptlit.training.callbacks.book.BookEval", "+callbacks.book_eval.eval_iter=2"]
    r, _ = train(tmp_path, corpus, "ref", *glob, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    r, last = train(tmp_path, corpus, "a", *glob, "+callbacks.steps.kill_at_step=15", timeout=600)
    assert r.returncode == -9, r.stderr[-3000:]
    assert torch.load(last, weights_only=True)["global_step"] == 14
    r, last = train(tmp_path, corpus, "b", *glob, "+callbacks.steps.kill_at_step=23", ckpt=last, timeout=600)
    assert r.returncode == -9, r.stderr[-3000:]
    r, _ = train(tmp_path, corpus, "c", *glob, ckpt=last, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    pieces = [row for name in "abc" for row in _rows(tmp_path / "log" / name)]
    assert_same_run(_rows(tmp_path / "log" / "ref"), pieces, 2 * STEPS_PER_EPOCH, "global order:")


def _rows(d: Path, rank: int = 0):
    f = d / f"steps_rank{rank}.csv"
    return [(int(s), loss, b) for s, loss, b in (line.split(",") for line in f.read_text().splitlines())]


@pytest.mark.slow
def test_kill_during_checkpoint_write_leaves_last_ckpt_whole(tmp_path, corpus, reference):
    # the 4th save is last.ckpt at step 6 (after the loss guard's start state, step 3 and the validation at 5):
    # killed while it is written
    r, last = train(tmp_path, corpus, "a", "+callbacks.steps.kill_during_save=4")
    assert r.returncode == -9, r.stderr[-3000:]
    assert (tmp_path / "log" / "a" / "killed_during").read_text().startswith(".last.ckpt.")
    assert list(last.parent.glob(".last.ckpt.*.partial"))  # the write was cut short
    assert torch.load(last, weights_only=True)["global_step"] == 5  # the previous last.ckpt, whole
    r, _ = train(tmp_path, corpus, "b", ckpt=last)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_run(reference, _rows(tmp_path / "log" / "a") + _rows(tmp_path / "log" / "b"), 2 * STEPS_PER_EPOCH)


@pytest.mark.slow
def test_ddp_kill_and_resume_is_the_same_run(tmp_path, corpus):
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    per_epoch = STEPS_PER_EPOCH // 2  # each rank trains its half of the windows
    k = random.Random().randrange(per_epoch + 2, 2 * per_epoch)  # mid-epoch in the second epoch
    r, _ = train(tmp_path, corpus, "ref", *ddp, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    r, last = train(tmp_path, corpus, "a", *ddp, f"+callbacks.steps.kill_at_step={k}", timeout=240)
    assert r.returncode == -9, r.stderr[-3000:]
    ckpt = torch.load(last, weights_only=True)
    assert len(ckpt["gptlit_resume"]["rng"]) == 2 and ckpt["gptlit_resume"]["data"]["world_size"] == 2
    r, _ = train(tmp_path, corpus, "b", *ddp, ckpt=last, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    for rank in (0, 1):
        ref = _rows(tmp_path / "log" / "ref", rank)
        pieces = [row for name in "ab" for row in _rows(tmp_path / "log" / name, rank)]
        assert_same_run(ref, pieces, 2 * per_epoch, f"rank {rank}, killed at {k}:")
    # and the ranks trained different windows
    assert {b for _, _, b in _rows(tmp_path / "log" / "ref", 0)}.isdisjoint(b for _, _, b in _rows(tmp_path / "log" / "ref", 1))


@pytest.mark.parametrize("n, world", [(50, 1), (50, 3), (7, 4), (2, 5)])
def test_sampler_order_is_distributed_samplers_without_its_python_list(n, world):
    from torch.utils.data import DistributedSampler

    from gptlit.data.sampler import ResumableDistributedSampler

    data = list(range(n))
    for rank in range(world):
        for epoch in (0, 3):
            ref = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=11, drop_last=False)
            ref.set_epoch(epoch)
            ours = ResumableDistributedSampler(data, 2, False, seed=11, num_replicas=world, rank=rank, epoch=epoch)
            assert list(ours) == list(ref)
            resumed = ResumableDistributedSampler(data, 2, False, seed=11, num_replicas=world, rank=rank,
                                                  epoch=epoch, start_batch=1)
            assert list(resumed) == list(ref)[2:]


# ---- the validation schedule across epochs -------------------------------------------------------------

def val_steps(run_dir: Path) -> list[int]:
    """The optimizer steps the run validated at, from its job_result.json (TensorBoard logs the step before)."""
    import json

    return [step for step, _, _ in json.loads((run_dir / "job_result.json").read_text())["val_curve"]]


@pytest.mark.slow
def test_integer_val_check_interval_counts_optimizer_steps_across_epochs_and_resumes(corpus, tmp_path):
    """trainer.val_check_interval=5 validates at steps 5, 10, ... whatever the epoch (an epoch here is 28
    steps of 2 micro-batches): before, Lightning counted it within each epoch (..., 25, 28, 33).
    A run stopped past the first epoch's end and resumed logs the same steps."""
    from conftest import compose_cfg

    args = tiny(corpus, "data.micro_batch_size=2", "trainer.val_check_interval=5")
    whole = tmp_path / "whole"
    run(compose_cfg([*args, "trainer.max_steps=35"], whole))
    assert val_steps(whole) == [5, 10, 15, 20, 25, 30, 35]
    cut = tmp_path / "cut"
    run(compose_cfg([*args, "trainer.max_steps=32"], cut))
    first = val_steps(cut)
    run(compose_cfg([*args, "trainer.max_steps=35", f"ckpt_path={cut / 'checkpoints' / 'last.ckpt'}"], cut))
    assert first == [5, 10, 15, 20, 25, 30] and val_steps(cut) == [*first, 35]
