"""Tiny trainings, in-process with the real Hydra config, and the train.py command line."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptlit.run.runner import build_run
from gptlit.run.plan import resolve_precision
from gptlit.run.runner import run
from gptlit.core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    out = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    out["_text"] = acc.Tags().get("tensors", [])
    return out


def test_tiny_run_writes_everything(make_cfg, corpus, tmp_path):
    cfg = make_cfg(
        "data=text", f"data.path={corpus}", "trainer.max_steps=6", "trainer.val_check_interval=3",
        "trainer.log_every_n_steps=1", "sampling.every_n_steps=3", "sampling.max_new_tokens=5",
    )
    metrics = run(cfg)
    out = tmp_path / "run"
    assert (out / "checkpoints" / "best.ckpt").is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "loss_plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    s = scalars(out)
    for tag in ("train/loss", "train/ppl", "val/loss", "val/ppl", "train/tokens_seen", "lr-AdamW/pg1"):
        assert tag in s, tag
    assert len(s["val/loss"]) == 2  # val_check_interval=3 over 6 steps
    assert any("samples" in t for t in s["_text"])
    # tokens seen: batch 4 x 32 tokens per step
    assert s["train/tokens_seen"][-1][1] == 6 * 4 * 32
    # perplexity is exp of the loss
    for (_, loss), (_, ppl) in zip(s["train/loss"], s["train/ppl"]):
        assert math.isclose(ppl, math.exp(loss), rel_tol=1e-4)
    assert math.isclose(metrics["val/ppl"], math.exp(metrics["val/loss"]), rel_tol=1e-5)


def test_val_ppl_is_token_weighted(make_cfg, corpus, tmp_path):
    # batch 3 over a val split whose last batch is smaller: a mean of per-batch values would differ
    cfg = make_cfg("data=text", f"data.path={corpus}", "data.batch_size=3", "data.val_fraction=0.3",
                   "trainer.max_steps=1", "trainer.limit_val_batches=null", "task=validate")
    dm, module, trainer, _ = build_run(cfg)
    assert len(dm.val_set) % 3 != 0
    trainer.validate(module, datamodule=dm)
    module.model.eval()
    total, count, per_batch = 0.0, 0, []
    with torch.no_grad():
        for x, y in dm.val_dataloader():
            logits = module.model(x)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
            total, count = total + loss, count + y.numel()
            per_batch.append(math.exp(loss / y.numel()))
    got = float(trainer.callback_metrics["val/ppl"])
    assert math.isclose(got, math.exp(total / count), rel_tol=1e-4)
    assert not math.isclose(got, sum(per_batch) / len(per_batch), rel_tol=1e-4)


def test_train_eval_loss_is_dropout_free_loss_on_fixed_train_windows(make_cfg, corpus, tmp_path):
    # the book's "training loss": the same train windows at each validation, dropout off
    cfg = make_cfg("data=text", f"data.path={corpus}", "model.drop_rate=0.5", "data.eval_train_batches=2",
                   "trainer.limit_val_batches=null", "trainer.max_steps=4", "trainer.val_check_interval=2",
                   "trainer.log_every_n_steps=1")
    dm, module, trainer, _ = build_run(cfg)
    trainer.fit(module, datamodule=dm)  # validates after steps 2 and 4: the last one sees the final weights
    windows = [dm.train_set[i] for i in dm.train_eval_indices()]  # 2 batches of 4, spread over the split
    assert len(windows) == 8
    x, y = torch.stack([w[0] for w in windows]), torch.stack([w[1] for w in windows])
    module.model.eval()
    with torch.no_grad():
        want = module.model(x, y).item()
        module.model.train()
        dropout_on = module.model(x, y).item()
    got = float(trainer.callback_metrics["train/eval_loss"])
    assert math.isclose(got, want, rel_tol=1e-5), (got, want)
    assert not math.isclose(got, dropout_on, rel_tol=1e-3)  # drop_rate 0.5 changes the loss
    assert math.isclose(float(trainer.callback_metrics["train/eval_ppl"]), math.exp(got), rel_tol=1e-5)
    s = scalars(tmp_path / "run")
    assert [step for step, _ in s["train/eval_loss"]] == [step for step, _ in s["val/loss"]]
    assert len(s["train/eval_loss"]) == 2
    plot = next(cb for cb in trainer.callbacks if type(cb).__name__ == "LossPlot")
    assert [round(v[2], 5) for v in plot.train_eval] == [round(v, 5) for _, v in s["train/eval_loss"]]


def test_train_eval_loss_off(make_cfg, corpus):
    cfg = make_cfg("data=text", f"data.path={corpus}", "data.eval_train_batches=0", "trainer.max_steps=2")
    dm, module, trainer, _ = build_run(cfg)
    trainer.fit(module, datamodule=dm)
    assert "val/loss" in trainer.callback_metrics and "train/eval_loss" not in trainer.callback_metrics
    assert isinstance(dm.val_dataloader(), torch.utils.data.DataLoader)


def losses(run_dir: Path) -> list[float]:
    return [v for _, v in scalars(run_dir)["train/loss"]]


def test_same_seed_same_losses_and_samples_do_not_perturb(corpus, tmp_path):
    from conftest import TINY, compose_cfg

    common = [*TINY, "data=text", f"data.path={corpus}", "model.drop_rate=0.2", "trainer.max_steps=5",
              "trainer.log_every_n_steps=1", "seed=7"]
    run(compose_cfg(common, tmp_path / "a"))
    run(compose_cfg(common, tmp_path / "b"))
    run(compose_cfg([*common, "sampling.every_n_steps=1", "sampling.max_new_tokens=4",
                     "sampling.temperature=1.0"], tmp_path / "c"))
    run(compose_cfg([*common, "seed=8"], tmp_path / "d"))
    a, b, c, d = (losses(tmp_path / k) for k in "abcd")
    assert len(a) == 5
    assert a == b  # same seed: identical losses
    assert a == c  # samples every step change nothing
    assert a != d  # and the seed matters


def test_checkpoint_is_plain_and_resumes(make_cfg, corpus, tmp_path):
    from conftest import TINY, compose_cfg

    run(compose_cfg([*TINY, "data=text", f"data.path={corpus}", "trainer.max_steps=3"], tmp_path / "first"))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)  # no DictConfig or other pickled objects
    assert ckpt["global_step"] == 3
    assert ckpt["hyper_parameters"]["model"]["emb_dim"] == 64
    assert ckpt["gptlit"]["tokens_seen"] == 3 * 4 * 32
    assert all(not k.startswith("model._orig_mod") for k in ckpt["state_dict"])
    cfg = compose_cfg([*TINY, "data=text", f"data.path={corpus}", "trainer.max_steps=5", f"ckpt_path={last}"],
                      tmp_path / "second")
    _, module, trainer, _ = build_run(cfg)
    run(cfg)
    ckpt2 = torch.load(tmp_path / "second" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt2["global_step"] == 5
    assert ckpt2["gptlit"]["tokens_seen"] == 5 * 4 * 32


def test_progress_bar_off_with_one_flag(corpus, tmp_path):
    from conftest import compose_cfg

    from lightning.pytorch.callbacks import ProgressBar

    # trainer.enable_progress_bar=false alone (the configured TQDM callback would otherwise clash)
    cfg = compose_cfg(["model=nano", "data=text", f"data.path={corpus}", "data.max_length=32", "trainer.max_steps=1",
                       "sampling.every_n_steps=0", "trainer.enable_progress_bar=false"], tmp_path / "run")
    _, _, trainer, _ = build_run(cfg)
    assert trainer.progress_bar_callback is None
    assert not any(isinstance(c, ProgressBar) for c in trainer.callbacks)


def test_last_sample_is_printed_with_the_progress_bar_on(corpus, tmp_path, capsys):
    from conftest import compose_cfg

    # the bar closes before SampleText's on_train_end, and its print() then drops the text: the last sample
    # (python train.py's default: the run's one sample when it has fewer than every_n_steps steps) went missing
    cfg = compose_cfg(["model=nano", "data=text", f"data.path={corpus}", "data.max_length=32", "data.batch_size=4",
                       "trainer.max_steps=2", "trainer.limit_val_batches=1", "sampling.max_new_tokens=3"],
                      tmp_path / "run")
    run(cfg)
    assert "[step 2] Every effort moves you" in capsys.readouterr().out


def test_last_checkpoint_follows_training_not_the_best(make_cfg, corpus, tmp_path):
    # mode=max makes the first validation the "best" for good: last.ckpt must still follow every validation
    run(make_cfg("data=text", f"data.path={corpus}", "trainer.max_steps=6", "trainer.val_check_interval=2",
                 "callbacks.model_checkpoint.mode=max", "callbacks.early_stopping=null"))
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert torch.load(ckpts / "best.ckpt", weights_only=True)["global_step"] == 2
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 6


def test_last_checkpoint_keeps_steps_after_the_last_validation(corpus, tmp_path):
    from conftest import TINY, compose_cfg

    common = [*TINY, "data=text", f"data.path={corpus}", "trainer.val_check_interval=3"]
    run(compose_cfg([*common, "trainer.max_steps=5"], tmp_path / "first"))  # validates at step 3 only
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 5
    # a resumed run too short to validate still leaves its own last.ckpt (written at max_steps, mid-epoch:
    # the resumed run goes on in the same epoch)
    run(compose_cfg([*common, "trainer.max_steps=7", "trainer.max_epochs=2", f"ckpt_path={last}"], tmp_path / "second"))
    assert torch.load(tmp_path / "second" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 7


def test_interrupted_run_leaves_a_last_checkpoint(make_cfg, corpus, tmp_path):
    import lightning as L

    class Crash(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 3:
                raise RuntimeError("out of memory (simulated)")

    dm, module, trainer, _ = build_run(make_cfg("data=text", f"data.path={corpus}", "trainer.max_steps=8",
                                            "trainer.val_check_interval=5"))
    trainer.callbacks.append(Crash())
    with pytest.raises(RuntimeError, match="simulated"):
        trainer.fit(module, datamodule=dm)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3  # no validation had run yet: the work up to the crash is kept


def test_resume_with_other_model_is_an_error(corpus, tmp_path):
    from conftest import TINY, compose_cfg

    run(compose_cfg([*TINY, "data=text", f"data.path={corpus}", "trainer.max_steps=1"], tmp_path / "first"))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    cfg = compose_cfg([*TINY, "data=text", f"data.path={corpus}", "model.emb_dim=128", f"ckpt_path={last}"],
                      tmp_path / "second")
    with pytest.raises(UserError, match="trained with model.emb_dim=64 but this run has model.emb_dim=128"):
        build_run(cfg)


def test_early_stopping_stops(make_cfg, corpus, tmp_path):
    # an improvement threshold no run can meet: stop after patience + 1 validation checks
    cfg = make_cfg("data=text", f"data.path={corpus}", "trainer.max_steps=50", "trainer.val_check_interval=2",
                   "callbacks.early_stopping.patience=2", "callbacks.early_stopping.min_delta=100")
    run(cfg)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6  # val at steps 2 (first), 4 and 6 (no improvement twice)


def test_lr_schedule_warmup_and_cosine(make_cfg, corpus, tmp_path):
    cfg = make_cfg("data=text", f"data.path={corpus}", "trainer.max_steps=10", "trainer.log_every_n_steps=1",
                   "optim.lr=0.01", "optim.warmup_steps=4", "optim.min_lr_ratio=0.1")
    run(cfg)
    lr = [v for _, v in scalars(tmp_path / "run")["lr-AdamW/pg1"]]
    assert lr[:4] == pytest.approx([0.0025, 0.005, 0.0075, 0.01])
    assert lr[-1] == pytest.approx(0.001 + 0.009 * 0.5 * (1 + math.cos(math.pi * 5 / 6)))
    assert all(a >= b for a, b in zip(lr[3:], lr[4:]))


def test_weight_decay_groups(make_cfg):
    _, module, _, _ = build_run(make_cfg())
    opt = module.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == sum(p.numel() for p in module.model.parameters())


def test_decay_all_decays_every_parameter(make_cfg):
    _, module, _, _ = build_run(make_cfg("optim.decay_all=true"))
    opt = module.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    (group,) = opt.param_groups  # the book's AdamW(model.parameters(), weight_decay=0.1)
    assert group["weight_decay"] == 0.1
    assert [id(p) for p in group["params"]] == [id(p) for p in module.model.parameters()]


def test_book_eval_logs_the_books_evaluation_every_eval_freq_steps(make_cfg, corpus, tmp_path):
    cfg = make_cfg("data=text", f"data.path={corpus}", "trainer.max_steps=7", "data.order=global",
                   "+callbacks.book_eval._target_=gptlit.training.callbacks.book.BookEval", "+callbacks.book_eval.eval_iter=2")
    run(cfg)
    s = scalars(tmp_path / "run")
    # after optimizer steps 1 and 6 (the book's global_step 0 and 5), once each
    assert [step for step, _ in s["book/train_loss"]] == [step for step, _ in s["book/val_loss"]] == [1, 6]
    assert all(0 < v < 20 for _, v in s["book/train_loss"] + s["book/val_loss"])


def test_gradient_clipping_with_fused_adamw(make_cfg, corpus, tmp_path):
    # fused AdamW runs on CPU in recent torch; clipping must work with it
    cfg = make_cfg("data=text", f"data.path={corpus}", "optim.fused=true", "optim.grad_clip=0.5",
                   "trainer.max_steps=2", "trainer.log_every_n_steps=1", "optim.lr=1.0")
    run(cfg)
    norms = [v for _, v in scalars(tmp_path / "run")["train/grad_norm"]]
    assert len(norms) == 2 and all(n > 0.5 for n in norms)  # pre-clip norms are logged; clipping applied


def test_precision_follows_device():
    assert resolve_precision("32-true", "cpu") == "32-true"
    p = resolve_precision("auto", "cpu")
    from gptlit.run.plan import cpu_has_fast_bf16

    assert p == ("bf16-mixed" if cpu_has_fast_bf16() else "32-true")


NO_CORPUS = ["data=text", "data.path=does/not/exist.txt"]


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["model.emb_dim=66"], r"model.emb_dim=66 is not divisible by model.n_heads=4"),
        (["sampling.temperature=-1"], r"sampling.temperature=-1"),
        (["sampling.top_k=0"], r"sampling.top_k=0 must be an integer >= 1"),
        (["sampling.top_p=1.5"], r"sampling.top_p=1.5"),
        (["data.max_length=128"], r"data.max_length=128 exceeds model.context_length=64"),
        (["data=text", "data.path=does/not/exist.txt"], r"data.path=does/not/exist.txt: no such file"),
        (["optim.lr=-1"], r"optim.lr=-1"),
        (["optim.scheduler=linear"], r"optim.scheduler=linear is unknown"),
        (["data.val_fraction=0"], r"data.val_fraction=0"),
        (["data.eval_train_batches=-1"], r"data.eval_train_batches=-1 must be >= 0"),
        (["ckpt_path=missing.ckpt"], r"ckpt_path=missing.ckpt: no such file or folder"),
        (["task=predict"], r"task=predict is unknown"),
        (["keep_freed_memory=maybe", *NO_CORPUS], r"keep_freed_memory=maybe is not a choice: use keep_freed_memory=true"),
        (["+trainer.gradient_clip_val=1.0"], r"use optim.grad_clip"),
        # trainer values are checked first: a missing corpus (checked later) does not hide them
        (["trainer.precision=bf17", *NO_CORPUS], r"trainer.precision=bf17 is not a precision Lightning knows: use auto or one of .*bf16-mixed"),
        (["trainer.max_epochs=abc", *NO_CORPUS], r"trainer.max_epochs=abc must be an integer or null"),
        (["trainer.max_steps=1.5", *NO_CORPUS], r"trainer.max_steps=1.5 must be an integer"),
        (["trainer.enable_model_summary=maybe", *NO_CORPUS], r"trainer.enable_model_summary=maybe must be true/false"),
        (["+trainer.max_epoch=3", *NO_CORPUS], r"trainer.max_epoch is not an argument of lightning.pytorch.Trainer"),
        (["trainer.accelerator=abacus", *NO_CORPUS], r"trainer.accelerator=abacus is unknown"),
        pytest.param(["trainer=gpu", *NO_CORPUS], r"trainer.accelerator=gpu but this machine has no GPU",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
        pytest.param(["trainer=fsdp", *NO_CORPUS], r"trainer.accelerator=gpu but this machine has no GPU",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
    ],
)
def test_bad_values_fail_before_training(make_cfg, overrides, match, tmp_path):
    with pytest.raises(UserError, match=match):
        build_run(make_cfg(*overrides))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_not_a_checkpoint(make_cfg, tmp_path):
    import random

    bad = tmp_path / "bad.ckpt"
    rng = random.Random(0)
    for _ in range(30):  # random bytes fail in many places of the unpickler: every one is a UserError
        bad.write_bytes(rng.randbytes(200))
        with pytest.raises(UserError, match="is not a readable checkpoint"):
            build_run(make_cfg(f"ckpt_path={bad}"))
    other = tmp_path / "other.ckpt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(UserError, match="is not a gptlit checkpoint"):
        build_run(make_cfg(f"ckpt_path={other}"))


def test_book_ch05_experiment(make_cfg):
    cfg = make_cfg("experiment=book_ch05", tiny=False)
    assert cfg.model.emb_dim == 768 and cfg.model.n_layers == 12 and cfg.model.context_length == 256
    assert cfg.model.drop_rate == 0.1 and cfg.model.qkv_bias is False
    assert cfg.optim.lr == 4e-4 and cfg.optim.weight_decay == 0.1 and cfg.optim.scheduler == "constant"
    assert cfg.data.batch_size == 2 and cfg.data.max_length == 256 and cfg.data.stride == 256
    assert cfg.data.val_fraction == 0.1 and cfg.trainer.max_epochs == 10
    assert cfg.trainer.val_check_interval is None  # once an epoch, as the book (an integer counts steps across epochs)
    assert cfg.data.sha256 == "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f"
    assert cfg.callbacks.early_stopping is None
    on = make_cfg("experiment=book_ch05", "callbacks=default", tiny=False)
    assert on.callbacks.early_stopping.monitor == "val/loss"


# ---- the command line ---------------------------------------------------------------------------

def cli(*args, cwd=ROOT, timeout=300):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


FAST = ["model=nano", "data.max_length=32", "data.batch_size=4", "trainer.limit_val_batches=2",
        "sampling.every_n_steps=0", "trainer.enable_progress_bar=false", "callbacks.progress_bar=null"]


@pytest.mark.parametrize(
    "args, match",
    [
        (["model.n_heads=5"], "error: model.emb_dim=256 is not divisible by model.n_heads=5"),
        # the same errors are checked in-process (test_bad_values_fail_before_training); each subprocess
        # costs ~10 s of imports on 2 cores, so the other command-line cases run in the slow suite
        pytest.param(["sampling.temperature=-0.5"], "error: sampling.temperature=-0.5 must be", marks=pytest.mark.slow),
        pytest.param(["data=text", "data.path=no_such_file.txt"],
                     "error: data.path=no_such_file.txt: no such file or folder", marks=pytest.mark.slow),
        # Lightning's own refusal would be Hydra's multi-line "Error in call to target" block and exit 1
        pytest.param(["trainer.max_epochs=abc"], "error: trainer.max_epochs=abc must be an integer", marks=pytest.mark.slow),
    ],
)
def test_cli_errors_are_one_line(args, match, tmp_path):
    r = cli(*args, f"hydra.run.dir={tmp_path}/out")
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert lines[-1].startswith(match) and "Traceback" not in r.stderr


def test_cli_unknown_model(tmp_path):
    # before: Hydra's "Could not find 'model/huge'" with the options and its search path, a dozen lines, exit 1
    r = cli("model=huge", f"hydra.run.dir={tmp_path}/out")
    assert r.returncode == 2
    assert r.stderr.strip() == "error: model=huge is not a model option: use one of large, medium, mini, nano, small, xl"
    assert not (tmp_path / "out").exists()


def test_cli_relative_data_path_from_another_directory(tmp_path, corpus):
    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "my.txt").write_text(corpus.read_text())
    r = cli(*FAST, "data=text", "data.path=my.txt", "trainer.max_steps=1", cwd=work)
    assert r.returncode == 0, r.stderr
    runs = list((work / "outputs").glob("*/*/checkpoints/last.ckpt"))
    assert len(runs) == 1  # outputs land under the directory the user ran from


def test_cli_chinese_data_path_and_plain_progress_lines(tmp_path, corpus):
    # a corpus whose folder and file names are Chinese, typed as is (before: Hydra's lexer stopped on them);
    # stdout is a pipe here: plain progress lines instead of the bar's carriage returns, and the sample at
    # the end of training on the console (before: the closed bar swallowed it)
    folder = tmp_path / "语料 été"
    folder.mkdir()
    (folder / "中文.txt").write_text(corpus.read_text(), encoding="utf-8")
    r = cli("model=nano", "data.max_length=32", "data.batch_size=4", "trainer.limit_val_batches=2",
            "data=text", f"data.path={folder / '中文.txt'}", "trainer.max_steps=2", "trainer.log_every_n_steps=1",
            "sampling.every_n_steps=1000", "sampling.max_new_tokens=3", "sampling.prompt=努力", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stdout and "\r" not in r.stderr
    lines = r.stdout.splitlines()
    # max_steps set and max_epochs left null: epochs roll over, so no "/<epochs>" after the epoch
    assert [l.split(" loss ")[0] for l in lines if l.startswith("step ") and " loss " in l] == \
        ["step 1/2 epoch 1", "step 2/2 epoch 1"]
    assert any(l.startswith("step 2 validation: val/loss ") for l in lines)
    assert any(l.startswith("[step 2] 努力") for l in lines)  # the sample at the end
    assert "中文.txt" in (next(tmp_path.glob("outputs/*/*/.hydra")) / "overrides.yaml").read_text(encoding="utf-8")


def test_cli_multirun_separate_dirs(tmp_path, corpus):
    r = cli("-m", *FAST, "data=text", f"data.path={corpus}", "optim.lr=1e-3,3e-4", "trainer.max_steps=2",
            f"hydra.sweep.dir={tmp_path}/sweep", timeout=600)
    assert r.returncode == 0, r.stderr
    jobs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(jobs) == 2 and "optim.lr=0.001" in jobs[0] and "optim.lr=0.0003" in jobs[1]
    for j in jobs:
        assert list((tmp_path / "sweep" / j / "tb").glob("events.out.tfevents.*"))
        assert (tmp_path / "sweep" / j / "checkpoints" / "last.ckpt").is_file()
    # the summary the sweep ends with (tests/test_sweep.py covers it in depth)
    summary = (tmp_path / "sweep" / "sweep_summary.csv").read_text().splitlines()
    assert summary[0].startswith("job,optim.lr,best val/loss") and len(summary) == 3
    assert "sweep summary (2 jobs, sorted by best val/loss)" in r.stdout


def test_no_logger_trains_without_the_lr_monitor(make_cfg, corpus, tmp_path):
    # ~logger (or every logger null) keeps the default callbacks working: the lr monitor has nothing to write to
    metrics = run(make_cfg("data=text", f"data.path={corpus}", "trainer.max_steps=2", "~logger"))
    assert "val/loss" in metrics and not (tmp_path / "run" / "tb").exists()
    metrics = run(make_cfg("data=text", f"data.path={corpus}", "trainer.max_steps=2", "logger.tensorboard=null"))
    assert "val/loss" in metrics
