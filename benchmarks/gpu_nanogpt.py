#!/usr/bin/env python
"""One GPU: GPT-2 124M, context 1024, bf16 + torch.compile, nanoGPT's training loop against gptlit's train.py.

nanoGPT: model.py as shipped inside the PyPI wheel `lightning-gpt` (not copied here), trained
the way its train.py does: TF32 on, fused AdamW from its configure_optimizers (wd 0.1,
lr 6e-4, betas 0.9/0.95), torch.compile, bf16 autocast, clip 1.0, zero_grad(set_to_none).
gptlit: model=small (the same shape, dropout 0) with compile=true and bf16-mixed through
gptlit.run.build.build and Trainer.fit, no logger, callbacks or samples.
Both read batches of the same loader (pydocs windows of 1024 tokens). They run one after the
other (the GPU is not shared); the step time is the median after the warm-up/compile steps,
with a device synchronize at each step end in both. MFU uses gptlit.model.flops's formula and peak table.

  pip install --no-deps lightning-gpt==0.1.1      # or: --wheel lightning_gpt-0.1.1-py3-none-any.whl
  python benchmarks/gpu_nanogpt.py                  # batch 12, 30 timed steps each
  python benchmarks/gpu_nanogpt.py --batch 16 --steps 50
  python benchmarks/gpu_nanogpt.py --smoke          # a 2-layer model on CPU, a few steps: checks the code paths
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import statistics
import sys
import time
import zipfile

import torch

from common import QUIET, Interleave, batches, compose, machine, sync, table

TARGET = 1.2  # gptlit / nanoGPT tokens/s the issue asks for


def load_nanogpt(wheel: str | None):
    """nanoGPT's model module: from the installed lightning-gpt wheel, or read out of a wheel file."""
    if wheel is None:
        try:
            import nanogpt.model as m

            return m
        except ImportError:
            sys.exit("nanoGPT not found: pip install --no-deps lightning-gpt==0.1.1, or pass --wheel <lightning_gpt .whl>")
    with zipfile.ZipFile(wheel) as z:
        source = z.read("nanogpt/model.py").decode()
    spec = importlib.util.spec_from_loader("nanogpt_model", loader=None)
    m = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = m  # dataclasses look their module up here
    exec(compile(source, f"{wheel}/nanogpt/model.py", "exec"), m.__dict__)
    return m


# GPT-2 124M at context 1024 on the GPU; --smoke: a 2-layer model on CPU in fp32, uncompiled
FULL = dict(n_layer=12, n_head=12, n_embd=768, block=1024, device="cuda", bf16=True, compile=True)
SMOKE = dict(n_layer=2, n_head=4, n_embd=64, block=64, device="cpu", bf16=False, compile=False)


def gptlit_cfg(shape: dict, batch: int, steps: int, extra: list[str]):
    device = ["trainer=gpu"] if shape["device"] == "cuda" else ["trainer.accelerator=cpu"]
    return compose([
        "model=small", f"model.n_layers={shape['n_layer']}", f"model.n_heads={shape['n_head']}",
        f"model.emb_dim={shape['n_embd']}", f"model.context_length={shape['block']}", "model.drop_rate=0.0",
        "data=pydocs", f"data.max_length={shape['block']}", f"data.batch_size={batch}", *device,
        f"trainer.precision={'bf16-mixed' if shape['bf16'] else '32-true'}", f"compile={str(shape['compile']).lower()}",
        *QUIET, f"trainer.max_steps={steps}",
        "optim.lr=6e-4", "optim.weight_decay=0.1", "optim.betas=[0.9,0.95]", "optim.grad_clip=1.0", *extra,
    ])


def run_nanogpt(ng, shape: dict, loader, steps: int) -> tuple[list[float], int]:
    """nanoGPT's train.py inner loop; returns the seconds of each step and the matmul parameter count."""
    dev = shape["device"]
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    conf = ng.GPTConfig(block_size=shape["block"], vocab_size=50304, n_layer=shape["n_layer"],
                        n_head=shape["n_head"], n_embd=shape["n_embd"], dropout=0.0, bias=True)
    model = ng.GPT(conf).to(dev)
    opt = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), dev)
    n = model.get_num_params()  # without position embeddings; the tied head counted once
    if shape["compile"]:
        model = torch.compile(model)
    ctx = torch.autocast(dev, dtype=torch.bfloat16) if shape["bf16"] else contextlib.nullcontext()
    data, times = batches(loader), []
    for _ in range(steps):
        t = time.perf_counter()
        x, y = (b.to(dev, non_blocking=True) for b in next(data))
        with ctx:
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(dev)
        times.append(time.perf_counter() - t)
    del model, opt
    if dev == "cuda":
        torch.cuda.empty_cache()
    return times, n


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=12, help="sequences of 1024 tokens per step (default 12)")
    p.add_argument("--steps", type=int, default=30, help="timed steps of each (default 30)")
    p.add_argument("--warmup", type=int, default=10, help="steps left out first: compilation and autotuning (default 10)")
    p.add_argument("--wheel", help="a lightning-gpt wheel file to read nanoGPT's model.py from, instead of the installed one")
    p.add_argument("--smoke", action="store_true", help="a 2-layer model on CPU for 3 steps: checks the script, not speed")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for gptlit")
    a = p.parse_args()
    shape = SMOKE if a.smoke else FULL
    if a.smoke:
        a.batch, a.steps, a.warmup = 2, 2, 1
    elif not torch.cuda.is_available():
        sys.exit("gpu_nanogpt.py needs a CUDA GPU and none is visible (torch.cuda.is_available() is False); "
                 "run it on a GPU machine, or pass --smoke to check the code paths on CPU")
    ng = load_nanogpt(a.wheel)

    from gptlit.model.flops import cuda_peak_flops, flops_per_token, matmul_params, mfu
    from gptlit.run.build import build

    total = a.warmup + a.steps
    dm, module, trainer, _ = build(gptlit_cfg(shape, a.batch, total + 1, a.overrides))
    T = shape["block"]
    tokens = a.batch * T

    ng_times, ng_params = run_nanogpt(ng, shape, dm.train_dataloader(), total)
    cb = Interleave(None, shape["device"])  # times gptlit's steps only
    trainer.callbacks.append(cb)
    trainer.fit(module, datamodule=dm)

    peak = cuda_peak_flops("bf16-mixed") if shape["device"] == "cuda" else None
    rows, tps = [], []
    for name, times, n in (("nanoGPT", ng_times, ng_params), ("gptlit", cb.lit, matmul_params(module.model))):
        tps.append(tokens / statistics.median(times[a.warmup:]))
        u = mfu(tps[-1], flops_per_token(n, shape["n_layer"], shape["n_head"], shape["n_embd"] // shape["n_head"], T), peak) if peak else None
        rows.append([name, f"{tps[-1]:,.0f}", f"{100 * u:.1f}%" if u else "n/a (no GPU peak known)"])
    ratio = tps[1] / tps[0]
    where = torch.cuda.get_device_name() if shape["device"] == "cuda" else "CPU smoke run"
    print(f"\nmachine: {where}, {machine()}")
    print(f"{'GPT-2 124M' if not a.smoke else 'smoke model'}, context {T}, batch {a.batch}, "
          f"{'bf16 + compile' if shape['bf16'] else 'fp32'}, {a.steps} timed steps after {a.warmup}")
    print(table(rows, ["loop", "tokens/s", "MFU"]))
    print(f"gptlit / nanoGPT: {ratio:.2f}x (target {TARGET}x: {'met' if ratio >= TARGET else 'not met'})")


if __name__ == "__main__":
    main()
