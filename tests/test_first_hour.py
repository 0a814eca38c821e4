"""What a new user tried in a first hour and was told wrongly or nothing (issue 28, point 8): more CPU
processes than cores, Lightning's sync_dist advice for metrics gptlit reduces itself, a named pipe as
data.path, the end line's tokens against job_result.json, report.py on a single run, and the book's
experiment without its file."""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import pytest

from gptlit.core.errors import UserError


def test_more_cpu_processes_than_cores_is_said(make_cfg, caplog, monkeypatch):
    from gptlit.run import trainer_args
    from gptlit.run.runner import build_run

    monkeypatch.setattr(trainer_args, "cpu_cores", lambda: 2)
    with caplog.at_level(logging.INFO):
        build_run(make_cfg("trainer.accelerator=cpu", "trainer.devices=4"))
    said = [r.getMessage() for r in caplog.records if "trainer.devices=4" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("warning: trainer.devices=4 on the CPU starts 4 training processes "
                                                 "on this machine's 2 cores"), said
    caplog.clear()
    with caplog.at_level(logging.INFO):
        build_run(make_cfg("trainer.accelerator=cpu", "trainer.devices=2"))
    assert not [r for r in caplog.records if "training processes" in r.getMessage()]
    # a GPU's devices are chips: no warning however few the cores
    assert trainer_args.cpu_processes_warning({"devices": 8}, "cuda", cores=2) is None
    assert trainer_args.cpu_processes_warning({"devices": "auto"}, "cpu", cores=2) is None


def test_no_sync_dist_advice_for_the_metrics_gptlit_reduces(make_cfg, corpus):
    """Lightning advises sync_dist=True for every epoch-level metric logged while torch.distributed is
    initialized; val/* and train/eval_* are reduced by gptlit before they are logged. A process group of
    one process makes Lightning give the advice in a plain in-process run."""
    import torch.distributed as dist

    from gptlit.run.runner import run

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run(make_cfg("data=text", f"data.path={corpus}", "trainer.max_steps=2"))
    finally:
        dist.destroy_process_group()
    advice = [str(w.message) for w in caught if "sync_dist=True" in str(w.message)]
    assert not advice, advice


def test_the_filter_leaves_other_metrics_advised():
    import re

    from gptlit.training.lit_module import SYNC_DIST_ADVICE

    msg = "It is recommended to use `self.log({!r}, ..., sync_dist=True)` when logging on epoch level"
    assert re.match(SYNC_DIST_ADVICE, msg.format("val/loss")) and re.match(SYNC_DIST_ADVICE, msg.format("train/eval_ppl"))
    assert not re.match(SYNC_DIST_ADVICE, msg.format("val/my_metric"))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this system")
@pytest.mark.parametrize("data", ["text", "verdict"])
def test_a_named_pipe_is_named(make_cfg, tmp_path, data):
    from gptlit.run.runner import build_run

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    with pytest.raises(UserError, match=rf"^data.path={pipe}: {pipe} is a named pipe, not a regular file; .* "
                                        rf"write the text to a file first \(e.g. cat {pipe} > corpus.txt\)"):
        build_run(make_cfg(f"data={data}", f"data.path={pipe}"))


def test_the_book_experiment_without_its_file_names_the_fix(make_cfg, tmp_path):
    from gptlit.run.runner import build_run

    with pytest.raises(UserError, match=r"^data.path=missing.txt: no such file \(.*missing.txt\); give the path of "
                                        r"your copy of the-verdict.txt, or leave data.path out to download it once "
                                        r"from https://raw.githubusercontent.com/.*/the-verdict.txt$"):
        build_run(make_cfg("experiment=book_ch05", "data.path=missing.txt"))


def test_the_end_line_and_job_result_count_the_same_tokens(make_cfg, corpus, caplog):
    """A run that ends by max_epochs, its last step not a logging step: the end line showed the tokens of
    the last logged step (122,880 of the README's run) while job_result.json counted every step (124,928)."""
    from gptlit.run.runner import run

    cfg = make_cfg("data=text", f"data.path={corpus}", "trainer.max_steps=-1", "trainer.max_epochs=1",
                   "+trainer.limit_train_batches=7", "trainer.log_every_n_steps=5",
                   "trainer.val_check_interval=7")
    metrics = run(cfg)
    record = json.loads((Path(cfg.paths.output_dir) / "job_result.json").read_text())
    assert record["steps"] == 7
    assert record["tokens"] == 7 * 4 * 32 == metrics["train/tokens_seen"]


def test_report_on_a_single_run_says_so(tmp_path, capsys):
    from gptlit.commands.report import main

    sweep = tmp_path / "multirun"
    for job in ("0_lr=1", "1_lr=2"):
        (sweep / job / ".hydra").mkdir(parents=True)
        (sweep / job / "job_result.json").write_text("{}")
    single = tmp_path / "run"
    (single / ".hydra").mkdir(parents=True)
    with pytest.raises(SystemExit) as e:
        main([str(single)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"error: {single} is a single run, not a sweep: its results are its "
                                                "job_result.json"), err
    with pytest.raises(SystemExit):
        main([str(sweep / "0_lr=1")])
    assert capsys.readouterr().err.rstrip().endswith(f"it is a job of the sweep {sweep}: python report.py {sweep}")
