"""What a run tells on the console: the resume command after Ctrl-C, the sample at the end of training,
plain progress lines where the output is no terminal, and a first time estimate after one micro-batch."""

from __future__ import annotations

import signal
import sys

import lightning as L
import pytest

from conftest import ROOT, TINY, compose_cfg
from gptlit.run.runner import build_run
from gptlit.run.runner import run


def test_ctrl_c_says_where_last_ckpt_is_and_the_command_that_resumes(make_cfg, corpus, tmp_path, monkeypatch, caplog):
    # before: only Lightning's "Detected KeyboardInterrupt, attempting graceful shutdown ..."
    from gptlit.core.cli import hydra_argv
    from gptlit.run import runner

    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    typed = ["model=nano", "sampling.prompt=每一次 café", "ckpt_path=old/last.ckpt"]  # a resumed run, resumed again
    monkeypatch.setattr(sys, "argv", ["train.py", *typed])
    monkeypatch.setattr(runner, "hydra_job", lambda: {"overrides": hydra_argv(sys.argv)[1:],  # as Hydra has them
                                                      "hydra_overrides": ["hydra.run.dir=/data/run 1"]})
    cfg = make_cfg("data=text", f"data.path={corpus}", "trainer.max_steps=10", "trainer.val_check_interval=2",
                   "+callbacks.crash._target_=sweep_probe.CrashAt", "+callbacks.crash.step=3",
                   "+callbacks.crash.ctrl_c=true")
    handler = signal.getsignal(signal.SIGINT)
    try:
        with caplog.at_level("INFO"), pytest.raises(SystemExit) as stopped:
            run(cfg)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl-C
    assert stopped.value.code == 130  # SIGINT's exit code, not 1 (Lightning's, read as a failure)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("interrupted")]
    assert said == [f"interrupted at step 3. last.ckpt (step 3) is {last}; resume with: "
                    f"python train.py 'hydra.run.dir=/data/run 1' model=nano 'sampling.prompt=每一次 café' ckpt_path={last}"]


def test_ctrl_c_inside_an_accumulation_says_what_is_kept(corpus, tmp_path, caplog):
    # 2 micro-batches a step; Ctrl-C after the first micro-batch of step 4: last.ckpt of step 3 is written,
    # with that micro-batch (its gradient)
    cfg = compose_cfg([*TINY, "data=text", f"data.path={corpus}", "data.micro_batch_size=2", "trainer.max_steps=10",
                       "trainer.val_check_interval=2", "+callbacks.ctrl_c._target_=resume_probe.CtrlCAtMicroBatch",
                       "+callbacks.ctrl_c.batch=6"], tmp_path / "run")
    handler = signal.getsignal(signal.SIGINT)
    try:
        with caplog.at_level("INFO"), pytest.raises(SystemExit) as stopped:
            run(cfg)
    finally:
        signal.signal(signal.SIGINT, handler)
    assert stopped.value.code == 130
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("interrupted")]
    assert len(said) == 1 and said[0].startswith(
        "interrupted at step 3, 1 of 2 micro-batches into step 4 (kept: their gradient so far; a resume goes on "
        "with micro-batch 2). last.ckpt (step 3, and 1 micro-batch of step 4) is "), said


def with_bar(corpus, tmp_path, *more):
    """TINY with the progress bar on, as on a terminal."""
    keep = [o for o in TINY if not o.startswith(("trainer.enable_progress_bar", "callbacks.progress_bar"))]
    return compose_cfg([*keep, "data=text", f"data.path={corpus}", *more], tmp_path / "run")


def test_the_sample_at_the_end_is_printed_with_the_progress_bar_on(corpus, tmp_path, capsys, monkeypatch):
    # before: Lightning's bar, closed when training ends, swallowed it (only TensorBoard had it)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # a terminal: the bar stays on
    cfg = with_bar(corpus, tmp_path, "trainer.max_steps=2", "sampling.every_n_steps=1000", "sampling.max_new_tokens=3")
    dm, module, trainer, _ = build_run(cfg)
    assert trainer.progress_bar_callback is not None
    trainer.fit(module, datamodule=dm)
    assert "[step 2] Every effort moves you" in capsys.readouterr().out


@pytest.mark.parametrize("terminal", [True, False])
def test_plain_progress_lines_instead_of_the_bar_when_stdout_is_no_terminal(corpus, tmp_path, monkeypatch, terminal):
    from gptlit.training.callbacks.progress import ProgressLog

    monkeypatch.setattr(sys.stdout, "isatty", lambda: terminal)
    _, _, trainer, _ = build_run(with_bar(corpus, tmp_path, "trainer.max_steps=2"))
    plain = [c for c in trainer.callbacks if isinstance(c, ProgressLog)]
    assert (trainer.progress_bar_callback is not None, len(plain)) == ((True, 0) if terminal else (False, 1))


def test_first_time_estimate_after_the_first_micro_batch(make_cfg, corpus, capsys):
    # before: the first estimate came after two whole optimizer steps (minutes each for model=small on a CPU)
    from gptlit.training.callbacks.progress import StepTime

    class Mark(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            print(f"micro-batch {batch_idx} starts")

    cfg = make_cfg("data=text", f"data.path={corpus}", "data.batch_size=8", "data.micro_batch_size=2",
                   "trainer.max_steps=2", "trainer.precision=32-true")
    dm, module, trainer, _ = build_run(cfg)
    trainer.callbacks.append(Mark())
    trainer.fit(module, datamodule=dm)
    lines = capsys.readouterr().out.splitlines()
    first = next(i for i, l in enumerate(lines) if ", a first estimate from 4 micro-batches of " in l)
    assert lines[first - 1] == "micro-batch 0 starts" and lines[first + 1] == "micro-batch 1 starts"
    assert lines[first].startswith("time: ") and "; 2 more to max_steps=2: ~" in lines[first]
    timer = next(c for c in trainer.callbacks if isinstance(c, StepTime))
    assert timer.first_estimate > 0 and timer.per_step > 0  # and the measured one, after 1 skipped + 1 timed step


def test_no_first_estimate_on_request(make_cfg, corpus, capsys):
    cfg = make_cfg("data=text", f"data.path={corpus}", "trainer.max_steps=2", "+callbacks.step_time.first_batch=false")
    dm, module, trainer, _ = build_run(cfg)
    trainer.fit(module, datamodule=dm)
    out = capsys.readouterr().out
    assert "first estimate" not in out and out.count(" s per optimizer step; 0 more to max_steps=2") == 1


def test_progress_lines_leave_validation_and_samples_out_of_tokens_per_sec(monkeypatch, capsys):
    # before: the line after a validation counted its seconds, 1,690 tokens/s against 2,586 logged
    from types import SimpleNamespace

    from gptlit.training.callbacks import progress

    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    log = progress.ProgressLog(when="always", every_n_steps=10)
    module = SimpleNamespace(tokens_seen=0, paused_seconds=0.0, step_loss=None)
    trainer = SimpleNamespace(global_step=0, is_global_zero=True, log_every_n_steps=10, max_steps=100,
                              estimated_stepping_batches=100, max_epochs=None, current_epoch=0, optimizers=[],
                              sanity_checking=False, state=SimpleNamespace(fn="fit"), callback_metrics={})
    log.on_train_start(trainer, module)
    clock[0] += 6  # 6 s of training, 5 s of validation, 3 s of a text sample, 4 s of training
    log.on_validation_start(trainer, module)
    clock[0] += 5
    log.on_validation_end(trainer, module)
    clock[0] += 3 + 4
    module.paused_seconds += 3
    module.tokens_seen, trainer.global_step = 10_000, 10
    log.on_train_batch_end(trainer, module, None, None, 9)
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith("step 10/100 epoch 1 ") and " 1,000 tokens/s elapsed 18 s" in line
