"""Sweeps: the summary (table, CSV, plot), each job's result file, HParams, failed jobs, loggers,
Optuna search and DDP inside a sweep."""

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gptlit.core.errors import UserError
from gptlit.commands.report import main as report_main
from gptlit.run.report import build_report, label, read_jobs
from gptlit.run.runner import build_run
from gptlit.run.runner import run

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def fake_job(sweep: Path, num: int, overrides: list[str], curve=(), status="ok", result=True, pid=None):
    """A job directory as train.py -m leaves it: .hydra/overrides.yaml and job_result.json."""
    d = sweep / f"{num}_{','.join(overrides)}"
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if result:
        finite = [c for c in curve if math.isfinite(c[2])]
        best = min(finite, key=lambda c: c[2]) if finite else None
        r = {"status": status, "job": num, "overrides": overrides, "best_val_loss": best and best[2],
             "best_step": best and best[0], "final_val_loss": curve[-1][2] if curve else None,
             "final_val_ppl": math.exp(curve[-1][2]) if curve else None, "steps": curve[-1][0] if curve else 0,
             "tokens": curve[-1][1] if curve else 0, "wall_time_s": 1.5, "val_curve": [list(c) for c in curve],
             "pid": pid or 1, "host": "elsewhere" if pid is None else os.uname().nodename}
        (d / "job_result.json").write_text(json.dumps(r))
    return d


def curve(*losses, every=10, tokens_per_step=100):
    return [(every * (i + 1), every * (i + 1) * tokens_per_step, v) for i, v in enumerate(losses)]


def grid_sweep(tmp_path) -> Path:
    """A 2x2 grid over optim.lr and model.drop_rate (model=nano is the same for every job)."""
    sweep = tmp_path / "sweep"
    fake_job(sweep, 0, ["model=nano", "optim.lr=0.001", "model.drop_rate=0.0"], curve(6.0, 5.2, 5.4))
    fake_job(sweep, 1, ["model=nano", "optim.lr=0.001", "model.drop_rate=0.1"], curve(6.1, 5.0, 4.9))
    fake_job(sweep, 2, ["model=nano", "optim.lr=0.0003", "model.drop_rate=0.0"], curve(6.5, 6.0, 5.9))
    fake_job(sweep, 3, ["model=nano", "optim.lr=0.0003", "model.drop_rate=0.1"], curve(6.6, 6.2, 6.1),
             status="stopped early")
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    return sweep


def test_summary_of_a_2x2_grid(tmp_path, capsys):
    sweep = grid_sweep(tmp_path)
    report = build_report(sweep, echo=True)
    # sorted by best val/loss; the columns are the overrides that vary (model=nano does not)
    assert [r["job"] for r in report.rows] == [1, 0, 2, 3]
    assert report.varying == ["optim.lr", "model.drop_rate"]
    assert [label(r, report.varying) for r in report.rows] == [
        "optim.lr=0.001 model.drop_rate=0.1", "optim.lr=0.001 model.drop_rate=0.0",
        "optim.lr=0.0003 model.drop_rate=0.0", "optim.lr=0.0003 model.drop_rate=0.1"]
    assert report.best["job"] == 1
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert [r["job"] for r in rows] == ["1", "0", "2", "3"]
    assert list(rows[0])[:3] == ["job", "optim.lr", "model.drop_rate"]
    first = rows[0]
    assert float(first["best val/loss"]) == 4.9 and first["best step"] == "30" and float(first["final val/loss"]) == 4.9
    assert math.isclose(float(first["final val/ppl"]), math.exp(4.9)) and first["tokens"] == "3000"
    assert rows[1]["best val/loss"] == "5.2" and rows[1]["best step"] == "20"  # best before the final 5.4
    assert rows[3]["status"] == "stopped early" and rows[0]["status"] == "ok"
    md = (sweep / "sweep_summary.md").read_text()
    assert md.splitlines()[0] == ("| job | optim.lr | model.drop_rate | best val/loss | best step | final val/loss "
                                  "| final val/ppl | steps | tokens | wall time (s) | status |")
    assert md.splitlines()[2].startswith("| 1 | 0.001 | 0.1 | 4.9000 | 30 | 4.9000 |")
    assert "best: job 1 (optim.lr=0.001 model.drop_rate=0.1): val/loss 4.9000 at step 30" in md
    assert (sweep / "sweep_val_loss.png").read_bytes()[:8] == PNG
    assert md in capsys.readouterr().out  # the same table is printed


def test_failed_running_and_interrupted_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    fake_job(sweep, 0, ["optim.lr=0.01"], curve(4.0), status="failed: RuntimeError: out of memory")  # lowest loss
    fake_job(sweep, 1, ["optim.lr=0.001"], curve(6.0, 5.5))
    fake_job(sweep, 2, ["optim.lr=0.0003"], curve(6.2), status="running", pid=os.getpid())  # alive here
    fake_job(sweep, 3, ["optim.lr=0.0001"], curve(6.3), status="running", pid=2**22 + 12345)  # no such process
    fake_job(sweep, 4, ["optim.lr=0.00003"], result=False)  # started, nothing written yet
    report = build_report(sweep, echo=False)
    status = {r["job"]: r["status"] for r in report.rows}
    assert status == {0: "failed: RuntimeError: out of memory", 1: "ok", 2: "running", 3: "interrupted",
                      4: "incomplete"}
    # failed jobs and jobs without a val/loss come last; the best is a job that did not fail
    assert [r["job"] for r in report.rows] == [1, 2, 3, 0, 4]
    assert report.best["job"] == 1


def test_report_command_rebuilds_from_the_sweep_directory(tmp_path, capsys):
    sweep = grid_sweep(tmp_path)
    report_main([str(sweep)])
    out = capsys.readouterr().out
    assert "sweep summary (4 jobs, sorted by best val/loss)" in out
    assert sorted(p.name for p in sweep.glob("sweep_*")) == ["sweep_summary.csv", "sweep_summary.md",
                                                             "sweep_val_loss.png"]
    (tmp_path / "empty").mkdir()
    for bad, match in [(tmp_path / "nope", "no such directory"), (tmp_path / "sweep" / "0_model=nano,optim.lr=0.001,"
                                                                  "model.drop_rate=0.0", "is a single run, not a sweep: "),
                       (tmp_path / "empty", "holds no sweep jobs")]:
        with pytest.raises(SystemExit) as e:
            report_main([str(bad)])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {bad}") and match in err and "\n" not in err


def hparams_of(tb_dir: Path):
    """(hyperparameters, metric tags) of the HParams summary in a run's event files, and its scalars."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    params = {k: (v.string_value if v.HasField("string_value") else v.number_value) for k, v in start.hparams.items()}
    scalars = {t: [e.value for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    return params, [m.name.tag for m in exp.metric_infos], scalars


def job_result_callback(trainer):
    return next(cb for cb in trainer.callbacks if type(cb).__name__ == "JobResult")


def test_job_result_and_hparams(make_cfg, corpus, tmp_path):
    cfg = make_cfg("data=text", f"data.path={corpus}", "trainer.max_steps=6", "trainer.val_check_interval=2")
    dm, module, trainer, _ = build_run(cfg)
    cb = job_result_callback(trainer)
    cb.overrides = ["model=nano", "optim.lr=0.001", "data.path=x.txt"]  # as Hydra gives them to a job
    trainer.fit(module, datamodule=dm)
    r = json.loads((tmp_path / "run" / "job_result.json").read_text())
    assert r["status"] == "ok" and r["steps"] == 6 and r["tokens"] == 6 * 4 * 32
    assert [c[0] for c in r["val_curve"]] == [2, 4, 6] and [c[1] for c in r["val_curve"]] == [256, 512, 768]
    losses = [c[2] for c in r["val_curve"]]
    assert r["best_val_loss"] == min(losses) and r["final_val_loss"] == losses[-1]
    assert r["best_step"] == r["val_curve"][losses.index(min(losses))][0]
    assert math.isclose(r["final_val_ppl"], math.exp(losses[-1]))
    params, metric_tags, scalars = hparams_of(tmp_path / "run" / "tb")
    assert params == {"model": "nano", "optim.lr": 0.001}  # paths are not hyperparameters
    assert metric_tags == ["hparams/best_val_loss", "hparams/final_val_loss"]
    assert scalars["hparams/best_val_loss"] == [pytest.approx(min(losses))]
    assert scalars["hparams/final_val_loss"] == [pytest.approx(losses[-1])]


@pytest.mark.slow  # long and rarely broken: moved out of the fast suite (issue 28)
def test_resumed_job_keeps_its_val_curve(corpus, tmp_path):
    from conftest import TINY, compose_cfg

    common = [*TINY, "data=text", f"data.path={corpus}", "trainer.val_check_interval=2"]
    run(compose_cfg([*common, "trainer.max_steps=4"], tmp_path / "first"))
    first = json.loads((tmp_path / "first" / "job_result.json").read_text())
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    run(compose_cfg([*common, "trainer.max_steps=6", f"ckpt_path={last}"], tmp_path / "second"))
    second = json.loads((tmp_path / "second" / "job_result.json").read_text())
    assert [c[0] for c in second["val_curve"]] == [2, 4, 6]
    assert second["val_curve"][:2] == first["val_curve"] and second["tokens"] == 6 * 4 * 32


def test_nan_loss_is_a_failed_job(make_cfg, corpus, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    cfg = make_cfg("data=text", f"data.path={corpus}", "trainer.max_steps=10", "trainer.val_check_interval=2",
                   "+callbacks.nan._target_=sweep_probe.NaNAt", "+callbacks.nan.step=3")
    run(cfg)
    r = json.loads((tmp_path / "run" / "job_result.json").read_text())
    # early stopping's check_finite stops at the first NaN validation (step 4)
    assert r["status"].startswith("failed: Monitored metric val/loss = nan is not finite"), r["status"]
    assert r["steps"] == 4 and r["best_step"] == 2 and math.isnan(r["final_val_loss"])
    from gptlit.run.runner import best_val_loss

    assert math.isnan(best_val_loss(tmp_path / "run"))  # what Optuna is told: a failed trial


def test_exception_is_recorded(make_cfg, corpus, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    cfg = make_cfg("data=text", f"data.path={corpus}", "trainer.max_steps=10", "trainer.val_check_interval=2",
                   "+callbacks.crash._target_=sweep_probe.CrashAt", "+callbacks.crash.step=3")
    with pytest.raises(RuntimeError, match="simulated crash"):  # a single run still fails as before
        run(cfg)
    r = json.loads((tmp_path / "run" / "job_result.json").read_text())
    assert r["status"] == "failed: RuntimeError: simulated crash at step 3"
    assert r["steps"] == 3 and [c[0] for c in r["val_curve"]] == [2]


def test_ctrl_c_is_interrupted_not_failed(make_cfg, corpus, tmp_path, monkeypatch):
    import signal

    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    cfg = make_cfg("data=text", f"data.path={corpus}", "trainer.max_steps=10", "trainer.val_check_interval=2",
                   "+callbacks.crash._target_=sweep_probe.CrashAt", "+callbacks.crash.step=3",
                   "+callbacks.crash.ctrl_c=true")
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning's graceful shutdown on Ctrl-C
            run(cfg)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl-C
    r = json.loads((tmp_path / "run" / "job_result.json").read_text())
    assert r["status"] == "interrupted" and r["steps"] == 3 and r["best_step"] == 2


# ---- loggers ------------------------------------------------------------------------------------

@pytest.mark.slow  # long and rarely broken: moved out of the fast suite (issue 28)
def test_several_loggers_at_once(make_cfg, corpus, tmp_path):
    cfg = make_cfg("data=text", f"data.path={corpus}", "logger=[tensorboard,csv]", "trainer.max_steps=4",
                   "trainer.val_check_interval=2", "trainer.log_every_n_steps=1")
    assert sorted(cfg.logger) == ["csv", "tensorboard"]
    dm, module, trainer, _ = build_run(cfg)
    job_result_callback(trainer).overrides = ["optim.lr=0.001"]
    trainer.fit(module, datamodule=dm)
    assert [type(lg).__name__ for lg in trainer.loggers] == ["TensorBoardLogger", "CSVLogger"]
    rows = list(csv.DictReader((tmp_path / "run" / "csv" / "metrics.csv").open()))
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert len(val) == 2
    assert [float(r["hparams/best_val_loss"]) for r in rows if r.get("hparams/best_val_loss")] == [min(val)]
    assert yaml.safe_load((tmp_path / "run" / "csv" / "hparams.yaml").read_text())["optim.lr"] == 0.001
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))


def test_missing_tracker_package_is_one_line(make_cfg, monkeypatch):
    import gptlit.run.trackers

    monkeypatch.setattr(gptlit.run.trackers, "find_spec", lambda name: None)
    for choice, package in [("wandb", "wandb"), ("mlflow", "mlflow")]:
        with pytest.raises(UserError, match=rf"logger.{choice} \(\w+\) needs the {package} package, which is not "
                                              rf"installed: pip install {package}"):
            build_run(make_cfg(f"logger={choice}"))


@pytest.mark.slow  # long and rarely broken: moved out of the fast suite (issue 28)
@pytest.mark.skipif(not has_module("wandb"),
                    reason="wandb is not installed (pip install -e '.[trackers]')")
def test_wandb_offline(make_cfg, corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = make_cfg("data=text", f"data.path={corpus}", "logger=wandb", "trainer.max_steps=2",
                   "trainer.val_check_interval=2")
    dm, module, trainer, _ = build_run(cfg)
    job_result_callback(trainer).overrides = ["optim.lr=0.001"]
    trainer.fit(module, datamodule=dm)
    logger = trainer.loggers[0]
    assert type(logger).__name__ == "WandbLogger"
    summary = dict(logger.experiment.summary)
    config = dict(logger.experiment.config)
    import wandb

    wandb.finish()
    assert summary["hparams/best_val_loss"] == pytest.approx(trainer.callback_metrics["val/loss"].item())
    assert config["optim.lr"] == 0.001
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


@pytest.mark.skipif(not has_module("mlflow"),
                    reason="mlflow is not installed (pip install -e '.[trackers]')")
def test_mlflow_local_file_store(make_cfg, corpus, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # restored after the test
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = tmp_path / "mlruns"
    cfg = make_cfg("data=text", f"data.path={corpus}", "logger=mlflow", f"logger.mlflow.save_dir={store}",
                   "trainer.max_steps=2", "trainer.val_check_interval=2")
    dm, module, trainer, _ = build_run(cfg)
    job_result_callback(trainer).overrides = ["optim.lr=0.001"]
    trainer.fit(module, datamodule=dm)
    from mlflow.tracking import MlflowClient

    logger = trainer.loggers[0]
    got = MlflowClient(tracking_uri=f"file:{store}").get_run(logger.run_id).data
    assert got.params["optim.lr"] == "0.001"
    assert got.metrics["hparams/best_val_loss"] == pytest.approx(trainer.callback_metrics["val/loss"].item())
    assert "val/loss" in got.metrics


# ---- the command line ---------------------------------------------------------------------------

def cli(*args, cwd, python=sys.executable, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([python, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


FAST = ["model=nano", "data=text", "data.max_length=32", "data.batch_size=4", "trainer.limit_val_batches=2",
        "sampling.every_n_steps=0", "trainer.enable_progress_bar=false", "callbacks.progress_bar=null"]


def test_search_without_optuna_is_one_line(monkeypatch, capsys):
    import importlib.metadata as md
    import importlib.util as iu

    from gptlit.run.sweep import check_search_plugin

    real_find_spec = iu.find_spec
    monkeypatch.setattr(iu, "find_spec", lambda name: None if name == "optuna" else real_find_spec(name))
    with pytest.raises(SystemExit) as e:
        check_search_plugin(["-m", "hparams_search=optuna", "model=nano"])
    assert e.value.code == 2
    assert capsys.readouterr().err == ('error: hparams_search=optuna needs optuna>=4, which is not installed: '
                                       'pip install -e ".[sweep]"\n')
    # hydra-optuna-sweeper's optuna (2.10) is too old for gptlit's sweeper
    monkeypatch.setattr(iu, "find_spec", lambda name: object())
    monkeypatch.setattr(md, "version", lambda name: "2.10.1")
    with pytest.raises(SystemExit) as e:
        check_search_plugin(["-m", "hparams_search=optuna"])
    assert e.value.code == 2
    assert capsys.readouterr().err == ('error: hparams_search=optuna needs optuna>=4, optuna 2.10.1 is installed: '
                                       'pip install -e ".[sweep]"\n')
    check_search_plugin(["model=nano"])  # nothing to check


@pytest.mark.slow
def test_grid_sweep_with_a_failing_job(tmp_path, corpus):
    # a 2x2 grid; the job lr=3e-4, drop_rate=0.1 crashes at step 3: the others finish
    sweep = tmp_path / "sweep"
    r = cli("-m", *FAST, f"data.path={corpus}", "trainer.max_steps=4", "trainer.val_check_interval=2",
            "optim.lr=1e-3,3e-4", "model.drop_rate=0.0,0.1", "+callbacks.crash._target_=sweep_probe.CrashAt",
            "+callbacks.crash.step=3", "+callbacks.crash.lr=3e-4", "+callbacks.crash.drop_rate=0.1",
            f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "1 of 4 jobs failed: job 3 failed: RuntimeError: simulated crash at step 3" in r.stderr
    assert "Traceback" not in r.stdout  # the traceback is in the job's train.log
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert len(rows) == 4 and rows[-1]["job"] == "3" and rows[-1]["status"].startswith("failed: RuntimeError")
    assert [r_["status"] for r_ in rows[:3]] == ["ok"] * 3
    best = [float(r_["best val/loss"]) for r_ in rows[:3]]
    assert best == sorted(best)
    assert list(rows[0])[:3] == ["job", "optim.lr", "model.drop_rate"]  # the varying overrides only
    assert {(r_["optim.lr"], r_["model.drop_rate"]) for r_ in rows} == {
        ("0.001", "0.0"), ("0.001", "0.1"), ("0.0003", "0.0"), ("0.0003", "0.1")}
    assert "| job | optim.lr | model.drop_rate | best val/loss" in r.stdout  # the printed table
    assert (sweep / "sweep_val_loss.png").read_bytes()[:8] == PNG
    job3 = next(sweep.glob("3_*"))
    assert "simulated crash at step 3" in (job3 / "train.log").read_text()
    # HParams of each job: the swept values, with best and final val/loss
    for row in rows[:3]:
        params, _, scalars = hparams_of(sweep / row["dir"] / "tb")
        assert params == {"optim.lr": float(row["optim.lr"]), "model.drop_rate": float(row["model.drop_rate"])}
        assert scalars["hparams/best_val_loss"] == [pytest.approx(float(row["best val/loss"]))]
    # the report rebuilt from the directory alone is the same
    before = (sweep / "sweep_summary.md").read_text()
    for p in sweep.glob("sweep_*"):
        p.unlink()
    report_main([str(sweep)])
    assert (sweep / "sweep_summary.md").read_text() == before


@pytest.mark.slow
def test_config_errors_in_a_sweep(tmp_path, corpus):
    # an error in the first job stops the sweep at once with one line (every job would share it) ...
    r = cli("-m", *FAST, f"data.path={corpus}", "trainer.max_steps=1", "model.n_heads=5,4",
            f"hydra.sweep.dir={tmp_path}/a", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: model.emb_dim=64 is not divisible by model.n_heads=5")
    assert not list((tmp_path / "a").glob("1_*"))
    # ... one in a later job is that job's failure
    r = cli("-m", *FAST, f"data.path={corpus}", "trainer.max_steps=1", "model.n_heads=4,5",
            f"hydra.sweep.dir={tmp_path}/b", cwd=tmp_path)
    assert r.returncode == 1, r.stderr[-2000:]
    jobs = read_jobs(tmp_path / "b")
    assert [j["status"] for j in sorted(jobs, key=lambda j: j["job"])] == [
        "ok", "failed: model.emb_dim=64 is not divisible by model.n_heads=5: pick n_heads that divides emb_dim "
              "(e.g. model.n_heads=4)"]


@pytest.mark.slow
def test_ddp_jobs_in_a_sweep(tmp_path, corpus):
    # Lightning starts rank 1 by re-running the command line: left alone, each rank 1 would run the
    # whole sweep (-m and every value) as a sweep of its own, in a sweep directory of its own
    r = cli("-m", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "optim.lr=1e-3,3e-4",
            "trainer.max_steps=4", "trainer.val_check_interval=2", *FAST, f"data.path={corpus}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("Launching 2 jobs locally") == 1  # one sweep
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["multirun"]  # no single-run directory
    sweeps = list((tmp_path / "outputs").glob("multirun/*/*"))
    assert len(sweeps) == 1, sweeps
    sweep = sweeps[0]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name.split("_")[0] for p in jobs] == ["0", "1"]  # exactly one directory per job
    for job in jobs:
        assert len(list(job.rglob("events.out.tfevents.*"))) == 1
        res = json.loads((job / "job_result.json").read_text())
        assert res["status"] == "ok" and res["tokens"] == 4 * 4 * 32 * 2  # both ranks trained
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert sorted(r_["optim.lr"] for r_ in rows) == ["0.0003", "0.001"]
    assert r.stdout.count("All distributed processes registered. Starting with 2 processes") == 2


@pytest.mark.slow
@pytest.mark.skipif(not has_module("optuna"), reason="optuna is not installed (pip install -e '.[sweep]')")
def test_optuna_search(tmp_path, corpus):
    """The real thing on nano models: 4 trials of train.py, each reporting val/loss at steps 2, 4, 6 to its
    trial; one pruner start-up trial, so later trials worse than the first at a step are pruned."""
    import optuna

    sweep = tmp_path / "sweep"
    fast = [a for a in FAST if not a.startswith("data.batch_size")]  # the search picks it
    r = cli("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.pruner.n_startup_trials=1",
            *fast, f"data.path={corpus}", "trainer.max_steps=6", "trainer.val_check_interval=2",
            f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert sorted(int(row["job"]) for row in rows) == [0, 1, 2, 3]  # job number = trial number
    for row in rows:  # every trial inside the search space
        assert 1e-4 <= float(row["optim.lr"]) <= 3e-3 and 0 <= float(row["optim.weight_decay"]) <= 0.2
        assert row["model.drop_rate"] in ("0.0", "0.1") and row["data.batch_size"] in ("4", "8")
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(sweep / "optuna.journal")))
    study = optuna.load_study(study_name=str(sweep), storage=storage)
    states = {t.number: t.state.name for t in study.trials}
    status = {int(row["job"]): row["status"] for row in rows}
    assert status == {n: {"COMPLETE": "ok", "PRUNED": "pruned"}[s] for n, s in states.items()}
    for t in study.trials:  # every validation reported; a pruned trial stopped at its last report
        steps = [2, 4, 6] if t.state.name == "COMPLETE" else list(t.intermediate_values)
        assert list(t.intermediate_values) == steps and steps == [2, 4, 6][:len(steps)]
        row = next(row for row in rows if int(row["job"]) == t.number)
        assert int(row["steps"]) == steps[-1]
    best = yaml.safe_load((sweep / "best_params.yaml").read_text())
    assert best["trial"] == int(rows[0]["job"]) == study.best_trial.number
    assert best["value"] == pytest.approx(float(rows[0]["best val/loss"]))  # Optuna minimized the best val/loss
    assert best["params"]["optim.lr"] == pytest.approx(float(rows[0]["optim.lr"]))
    md = (sweep / "sweep_summary.md").read_text()
    assert f"### Best: trial {best['trial']}, val/loss {best['value']:.4f}" in md and best["command"] in md
    assert "hparams_search" not in best["command"] and "model=nano" in best["command"]
