"""Throughput bookkeeping (FLOPs, peaks, MFU), scale-out configs, gradient accumulation, compile and bf16."""

import math
import sys
from pathlib import Path

import pytest
import torch

from gptlit.run.runner import build_run
from gptlit.run.runner import run
from gptlit.model.config import GPTConfig
from gptlit.model.flops import (PEAK_TFLOPS, flops_per_token, math_type, matmul_params, mfu, model_flops_per_token,
                          peak_flops)
from gptlit.training.lit_module import GPTLitModule
from gptlit.model.gpt import GPT

ROOT = Path(__file__).resolve().parents[1]


def block_params(C: int) -> int:
    """One Block by hand: 2 LayerNorms, qkv (with bias), attention proj, MLP fc and proj."""
    return 2 * 2 * C + (3 * C * C + 3 * C) + (C * C + C) + (4 * C * C + 4 * C) + (4 * C * C + C)


@pytest.mark.parametrize("tied", [True, False])
def test_matmul_params_and_flops_by_hand(tied):
    cfg = GPTConfig.from_name("nano", tie_embeddings=tied)
    C, L, V = cfg.emb_dim, cfg.n_layers, cfg.vocab_size
    n = L * block_params(C) + 2 * C + V * C  # blocks, final LayerNorm, the head (tied or not: one V x C matmul)
    model = GPT(cfg)
    assert matmul_params(model) == n
    T = 48
    assert model_flops_per_token(model, T) == 6 * n + 12 * L * cfg.n_heads * cfg.head_dim * T


def test_gpt2_small_flops_per_token():
    # GPT-2 124M: 124,439,808 parameters, of which 1024 x 768 are position embeddings
    model = GPT(GPTConfig.from_name("small"))
    n = matmul_params(model)
    assert n == 124_439_808 - 1024 * 768
    assert flops_per_token(n, 12, 12, 64, 1024) == 6 * n + 12 * 12 * 12 * 64 * 1024
    assert model_flops_per_token(model, 1024) == pytest.approx(0.855e9, rel=1e-3)


@pytest.mark.parametrize(
    "name, precision, tf32, tflops",
    [
        ("NVIDIA H100 80GB HBM3", "bf16-mixed", False, 989),
        ("NVIDIA H100 PCIe", "bf16-mixed", False, 756),
        ("NVIDIA H200", "32-true", True, 494),
        ("NVIDIA H200 NVL", "bf16-mixed", False, 835),
        ("NVIDIA H200", "32-true", False, 67),
        ("NVIDIA A100-SXM4-80GB", "16-mixed", False, 312),
        ("NVIDIA A100 80GB PCIe", "32-true", True, 156),
        ("NVIDIA L4", "bf16-true", False, 121),
        ("NVIDIA L40S", "bf16-mixed", False, 362),
        ("Tesla V100-SXM2-16GB", "16-mixed", False, 125),
        ("Tesla V100-SXM2-16GB", "bf16-mixed", False, None),  # no bf16 tensor cores
        ("NVIDIA GeForce GTX 1080", "32-true", False, None),  # not in the table
        ("NVIDIA A100-SXM4-40GB", "64-true", False, None),
    ],
)
def test_peak_flops_lookup(name, precision, tf32, tflops):
    got = peak_flops(name, precision, tf32)
    assert got == (None if tflops is None else tflops * 1e12)


def test_math_types_and_mfu():
    assert [math_type(p) for p in ("bf16-mixed", "16-mixed", "32-true", "64-true")] == ["bf16", "fp16", "fp32", None]
    assert math_type("32-true", tf32=True) == "tf32"
    assert all(set(peaks) <= {"bf16", "fp16", "tf32", "fp32"} for _, peaks in PEAK_TFLOPS)
    # 100k tokens/s of a 1 GFLOP/token model on a 312 TFLOP/s GPU
    assert mfu(1e5, 1e9, 312e12) == pytest.approx(0.3205, rel=1e-3)


def test_mfu_logged_only_with_a_known_peak(make_cfg, corpus, monkeypatch):
    metrics = run(make_cfg("data=text", f"data.path={corpus}", "trainer.max_steps=3"))
    assert "train/tokens_per_sec" in metrics and "train/mfu" not in metrics  # CPU: no peak, no MFU
    assert torch.get_float32_matmul_precision() == "highest"  # TF32 is only switched on for CUDA

    # pretend to be a GPU with a 1 TFLOP/s peak: MFU = tokens/s x FLOPs per token / peak
    monkeypatch.setattr(GPTLitModule, "on_fit_start", lambda self: setattr(self, "_peak", 1e12))
    dm, module, trainer, _ = build_run(make_cfg("data=text", f"data.path={corpus}", "trainer.max_steps=3"))
    trainer.fit(module, datamodule=dm)
    m = trainer.callback_metrics
    fpt = model_flops_per_token(module.model, 32)
    assert float(m["train/mfu"]) == pytest.approx(float(m["train/tokens_per_sec"]) * fpt / 1e12, rel=1e-5)
    # not prog_bar metrics (Lightning would read them after every batch): gptlit's bar shows them as last logged
    from gptlit.training.callbacks.progress import LogStepProgressBar

    assert {"train/mfu", "train/tokens_per_sec"} <= set(LogStepProgressBar.SHOWN) & set(m)


@pytest.mark.slow  # long and rarely broken: moved out of the fast suite (issue 28)
def test_sampling_time_is_not_counted_as_training(make_cfg, corpus, monkeypatch):
    """A fake clock, so the check does not depend on the machine's speed: every reading of the
    clock advances it by 1 ms, and each text sample takes 1000 s of it."""
    import types

    import gptlit.training.callbacks.sampling
    import gptlit.training.lit_module

    clock = {"t": 0.0}

    def perf_counter():
        clock["t"] += 1e-3
        return clock["t"]

    def slow_sample(*args, **kwargs):
        clock["t"] += 1000.0
        return " sample"

    monkeypatch.setattr(gptlit.training.lit_module, "time", types.SimpleNamespace(perf_counter=perf_counter))
    monkeypatch.setattr(gptlit.training.callbacks.sampling, "generate_text", slow_sample)
    dm, module, trainer, _ = build_run(make_cfg("data=text", f"data.path={corpus}", "trainer.max_steps=4",
                                            "trainer.log_every_n_steps=1", "sampling.every_n_steps=1"))
    trainer.fit(module, datamodule=dm)
    # 4 x 32 tokens a step: a 1000 s sample counted as training would give about 0.1 tokens/s
    assert float(trainer.callback_metrics["train/tokens_per_sec"]) > 1000


def test_accumulate_grad_batches_counts_steps_and_tokens(make_cfg, corpus, tmp_path):
    run(make_cfg("data=text", f"data.path={corpus}", "trainer.max_steps=3", "trainer.accumulate_grad_batches=2"))
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3  # optimizer steps
    assert ckpt["gptlit"]["tokens_seen"] == 3 * 2 * 4 * 32  # every micro-batch's tokens


def test_scale_out_configs(make_cfg):
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    from gptlit.model.gpt import Block
    from gptlit.run.build import make

    ddp = make_cfg("trainer=ddp", tiny=False).trainer
    assert isinstance(make(ddp.strategy), DDPStrategy) and ddp.devices == "auto" and ddp.num_nodes == 1
    fsdp = make_cfg("trainer=fsdp", "trainer.strategy.activation_checkpointing=true", tiny=False).trainer
    s = make(fsdp.strategy)
    assert isinstance(s, FSDPStrategy)
    assert s.kwargs["auto_wrap_policy"]._module_classes == {Block}  # one FSDP unit per transformer block
    assert s._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {Block}  # recomputed per block
    assert not make(make_cfg("trainer=fsdp", tiny=False).trainer.strategy)._activation_checkpointing_kwargs
    assert str(s.sharding_strategy).endswith("FULL_SHARD") and s._state_dict_type == "full"


@pytest.mark.slow
def test_compile_true_trains_like_eager(corpus, tmp_path):
    from conftest import TINY, compose_cfg

    common = [*TINY, "data=text", f"data.path={corpus}", "trainer.max_steps=2", "trainer.limit_val_batches=1"]
    eager = run(compose_cfg(common, tmp_path / "eager"))
    compiled = run(compose_cfg([*common, "compile=true"], tmp_path / "compiled"))
    assert compiled["train/loss"] == pytest.approx(eager["train/loss"], rel=1e-3)
    assert compiled["val/loss"] == pytest.approx(eager["val/loss"], rel=1e-3)
    ckpt = torch.load(tmp_path / "compiled" / "checkpoints" / "last.ckpt", weights_only=True)
    assert not any("_orig_mod" in k for k in ckpt["state_dict"])  # loads into an uncompiled GPT


@pytest.mark.slow
def test_bf16_learns_like_fp32():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bf16_parity import TOLERANCE, parity

    r = parity("nano", steps=40, seed_run=False)
    assert r["fp32"] < 10.0  # it learned something: the untrained loss is ln(50257) = 10.8
    assert math.isfinite(r["bf16"]) and r["bf16_diff"] <= TOLERANCE, r


# per-step host work ---------------------------------------------------------------------------
SYNC = "aten::_local_scalar_dense"  # a tensor's value read to the host (.item(), float(t), bool(t == x)): on a GPU, a wait
NORM = "aten::_foreach_norm"  # a pass over every gradient (the global norm, for clipping and the loss guard)


class _ProfileStep:
    """A callback that profiles one optimizer step of the Lightning loop: from the start of batch `at` to the
    start of the next, so every hook of that step (the module's, the callbacks', Lightning's own) is inside."""

    def __init__(self, at: int):
        import lightning as L

        class CB(L.Callback):
            def on_train_batch_start(cb, trainer, pl_module, batch, batch_idx):
                if batch_idx == at:
                    self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                    self.prof.__enter__()
                elif batch_idx == at + 1:
                    self.prof.__exit__(None, None, None)
                    self.count = sum(e.name == SYNC for e in self.prof.events())
                    self.norms = sum(e.name == NORM for e in self.prof.events())

        self.callback, self.count, self.norms = CB(), None, None


def _plain_step_syncs(module, batch) -> tuple[int, int]:
    """Host reads and gradient-norm passes of the same step in a plain PyTorch loop: gptlit's model and
    AdamW, no Lightning."""
    opt = module.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    x, y = batch
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.zero_grad(set_to_none=True)
        module.model(x, y).backward()
        torch.nn.utils.clip_grad_norm_(module.model.parameters(), module.hparams.optim["grad_clip"])
        opt.step()
    return sum(e.name == SYNC for e in prof.events()), sum(e.name == NORM for e in prof.events())


@pytest.mark.slow  # long and rarely broken: moved out of the fast suite (issue 28)
@pytest.mark.parametrize("at, logs", [(4, False), (3, True)])
def test_a_step_that_does_not_log_reads_no_more_values_than_a_plain_loop(make_cfg, corpus, at, logs):
    from gptlit.training.guard import LossGuard

    """train.py's machinery (default callbacks, progress bar, loggers) adds no read of a device value to the
    host in a step that does not log; the steps that log do read (the profiler sees them). The loss guard
    and clipping share one gradient-norm pass, as the plain loop's clipping makes."""
    cfg = make_cfg("data=text", f"data.path={corpus}", "trainer.max_steps=6", "trainer.log_every_n_steps=2",
                   "trainer.precision=32-true", "trainer.enable_progress_bar=true",
                   "callbacks.progress_bar={_target_:gptlit.training.callbacks.progress.LogStepProgressBar}",
                   "logger=[tensorboard,csv]")
    dm, module, trainer, _ = build_run(cfg)
    probe = _ProfileStep(at)
    trainer.callbacks.insert(0, probe.callback)
    trainer.fit(module, datamodule=dm)
    plain, plain_norms = _plain_step_syncs(module, next(iter(dm.train_dataloader())))
    assert any(isinstance(cb, LossGuard) for cb in trainer.callbacks) and module.hparams.optim["grad_clip"]
    assert probe.norms == plain_norms == 1
    assert probe.count is not None and plain > 0  # CPU fused AdamW reads its step counts; on a GPU it does not
    if logs:  # global step 4 logs (log_every_n_steps=2): the loss, the bar, the loss plot read their values
        assert probe.count > plain
    else:
        assert probe.count == plain


@pytest.mark.slow
def test_gpu_benchmark_smoke_prints_every_row(tmp_path):
    """benchmarks/gpu_nanogpt.py --smoke runs every loop and row on CPU (nanoGPT's when lightning-gpt is installed)."""
    import importlib.util
    import os
    import re
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}  # the synthetic corpus goes to tmp_path
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_nanogpt.py"), "--smoke"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    loops = ["gptlit plain loop", "gptlit train.py machinery"]
    if importlib.util.find_spec("nanogpt") is not None:
        loops.append("nanoGPT")
    else:
        assert "nanoGPT not found, its rows are left out: pip install" in r.stdout
    for loop in loops:
        for batch in (1, 2, 4):
            assert re.search(rf"^{loop}\s+{batch}\s+[\d,]+\s", r.stdout, re.M), (loop, batch, r.stdout[-3000:])
    for what in ("logged train/tokens_per_sec", "wall clock, validation and samples in"):
        assert re.search(rf"^train.py end to end: {what}\s+2\s+[\d,]+\s", r.stdout, re.M), (what, r.stdout[-3000:])
    assert "micro-batch 4: train.py machinery / plain loop" in r.stdout


def test_compile_auto_is_on_for_cuda_only():
    from omegaconf import OmegaConf

    from gptlit.core.errors import UserError
    from gptlit.run.plan import resolve_compile

    assert OmegaConf.load(ROOT / "conf" / "train.yaml").compile == "auto"  # a GPU user's plain train.py compiles
    assert resolve_compile("auto", "cpu") is False
    assert resolve_compile("auto", "gpu") is True and resolve_compile(None, "cuda") is True
    assert resolve_compile("auto", "auto") is torch.cuda.is_available()
    assert resolve_compile(True, "cpu") is True and resolve_compile(False, "gpu") is False
    with pytest.raises(UserError, match="compile=yes is not a choice: use compile=auto"):
        resolve_compile("yes", "cpu")


def test_step_time_leaves_out_the_compile_steps():
    from types import SimpleNamespace

    from gptlit.training.callbacks.progress import StepTime

    def measured_after(compile_steps: int) -> int:
        st = StepTime(skip_steps=1, timed_steps=1, first_batch=False)
        module = SimpleNamespace(compile_steps=compile_steps, device=torch.device("cpu"))
        trainer = SimpleNamespace(global_step=0, estimated_stepping_batches=10, max_steps=10, progress_bar_callback=None,
                                  accumulate_grad_batches=1, is_global_zero=True)
        st.on_train_start(trainer, module)
        for i in range(5):
            st.on_train_batch_start(trainer, module, None, i)
            trainer.global_step += 1
            st.on_train_batch_end(trainer, module, None, None, i)
            if st.per_step is not None:
                return trainer.global_step

    assert measured_after(0) == 2  # skip_steps=1, then one timed step
    assert measured_after(2) == 3  # the two compile steps are left out


def test_clipping_under_fsdp_uses_the_norm_over_every_shard():
    """Under FSDP each rank holds a shard of the gradients: its own norm is not the model's, and clipping by
    it (torch.nn.utils.clip_grad_norm_ over the rank's parameters, as before) scaled each shard by another
    factor. The norm comes from the root module's clip_grad_norm_ (FSDP reduces it over the ranks), once a
    step for the loss guard and clipping, and every rank's shard is scaled by max_norm / that norm."""
    from types import SimpleNamespace

    from gptlit.model.config import GPTConfig
    from gptlit.training.lit_module import GPTLitModule

    torch.manual_seed(0)
    module = GPTLitModule(GPTConfig.from_name("nano").to_dict(), optim={"grad_clip": 1.0})
    x = torch.randint(0, 50257, (2, 16))
    module.model(x, x).backward()
    local = float(module.grad_norm())  # no trainer: this process's gradients
    module._grad_norm = None

    class Root:  # FullyShardedDataParallel's clip_grad_norm_: the norm over the ranks (here 4x this shard's)
        calls = []

        def clip_grad_norm_(self, max_norm):
            self.calls.append(max_norm)
            return torch.tensor(4 * local)

    module.trainer, module._log_extras = SimpleNamespace(model=Root()), False  # Lightning's public setter
    assert float(module.grad_norm()) == pytest.approx(4 * local)  # what the loss guard reads first
    module.on_before_optimizer_step(None)
    assert Root.calls == [float("inf")]  # one reduction a step, gradients left as they were by it
    clipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters() if p.grad is not None]))
    assert float(clipped) == pytest.approx(local / (4 * local), rel=1e-4)  # scaled by 1.0 / the model's norm
