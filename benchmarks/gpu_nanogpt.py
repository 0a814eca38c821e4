#!/usr/bin/env python
"""One GPU: GPT-2 124M, context 1024, bf16 autocast + torch.compile, fused AdamW, clip 1.0, at micro-batches
16, 32 and 64 in one call:

  nanoGPT         nanoGPT's train.py inner loop over its model.py (from the PyPI wheel `lightning-gpt`, not
                  copied here): TF32, its fused AdamW (wd 0.1, lr 6e-4, betas 0.9/0.95), zero_grad(set_to_none)
  gptlit plain    gptlit's GPT (model=small, dropout 0) in the same plain PyTorch loop, gptlit's AdamW groups
  gptlit fit      gptlit through train.py's machinery (gptlit.run.runner.build_run + Trainer.fit), nothing logged
  train.py e2e    last row, micro-batch 32: train.py's defaults with validation and samples every 50 steps,
                  TensorBoard + CSV and checkpoints on; tokens/s as logged (train/tokens_per_sec) and over
                  the wall clock from the end of compilation to the end of fit (validation, samples included)

Each row: tokens/s from the median step time after the warm-up steps (every step ends with a device
synchronize, in every loop), MFU (gptlit.model.flops' formula and peak table), peak GPU memory
(torch.cuda.max_memory_allocated, reset before each loop) and, for gptlit, the memory plan's estimate
(gptlit.training.memory), and the first step's seconds (torch.compile compiles then). Loops run one after
the other, so the GPU is never shared. The data is a synthetic corpus (the pydoc topics' paragraphs,
shuffled and repeated) large enough that no loop reaches the end of an epoch; it is tokenized once
into gptlit's token cache. Dynamo's automatic dynamic shapes are off for the micro-batch rows, so each
micro-batch gets a static graph, as a train.py run does.

  pip install --no-deps lightning-gpt==0.1.1       # nanoGPT's model.py (or --wheel <file>); then
  bash benchmarks/gpu_nanogpt.sh                     # installs nothing; the same as python benchmarks/gpu_nanogpt.py
  python benchmarks/gpu_nanogpt.py --batches 32 --steps 40
  python benchmarks/gpu_nanogpt.py --smoke           # every loop and row with a 2-layer model on CPU, uncompiled
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import importlib.util
import random
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

from common import QUIET, batches, compose, machine, sync, table

NANOGPT = "pip install --no-deps lightning-gpt==0.1.1, or pass --wheel <lightning_gpt .whl>"


def load_nanogpt(wheel: str | None):
    """nanoGPT's model module: read out of a wheel file, or the installed lightning-gpt; None if neither."""
    if wheel is None:
        try:
            import nanogpt.model as m

            return m
        except ImportError:
            return None
    with zipfile.ZipFile(wheel) as z:
        source = z.read("nanogpt/model.py").decode()
    spec = importlib.util.spec_from_loader("nanogpt_model", loader=None)
    m = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = m  # dataclasses look their module up here
    exec(compile(source, f"{wheel}/nanogpt/model.py", "exec"), m.__dict__)
    return m


# GPT-2 124M at context 1024 on the GPU; --smoke: a 2-layer model on CPU in fp32, uncompiled, small batches
FULL = dict(n_layer=12, n_head=12, n_embd=768, block=1024, device="cuda", bf16=True, compile=True,
            batches=(16, 32, 64), e2e_batch=32, e2e_steps=150, e2e_every=50, e2e_extra=[])
SMOKE = dict(n_layer=2, n_head=4, n_embd=64, block=32, device="cpu", bf16=False, compile=False,
             batches=(1, 2, 4), e2e_batch=2, e2e_steps=4, e2e_every=2,
             e2e_extra=["trainer.log_every_n_steps=1", "sampling.max_new_tokens=4", "data.max_val_windows=4"])


def synthetic_corpus(n_tokens: int) -> Path:
    """A text file of about n_tokens GPT-2 tokens or more: the pydoc topics' paragraphs in a seeded shuffled
    order, repeated (their tokens are ~4 characters each; 5 are written per token asked)."""
    from pydoc_data.topics import topics

    path = Path(tempfile.gettempdir()) / f"gptlit-bench-corpus-{n_tokens}.txt"
    if path.is_file():
        return path
    paras = [p.strip() for t in sorted(topics) for p in topics[t].split("\n\n") if p.strip()]
    rng, out, size = random.Random(0), [], 0
    while size < 5 * n_tokens:
        rng.shuffle(paras)
        out.extend(paras)
        size += sum(len(p) + 2 for p in paras)
    tmp = path.with_suffix(f".tmp{id(out)}")
    tmp.write_text("\n\n".join(out), encoding="utf-8")
    tmp.replace(path)  # whole or absent: another call may read it
    return path


def gptlit_cfg(shape: dict, corpus: Path, batch: int, steps: int, extra: list[str], e2e: bool = False, out: str | None = None):
    device = ["trainer=gpu"] if shape["device"] == "cuda" else ["trainer.accelerator=cpu"]
    common = [
        "model=small", f"model.n_layers={shape['n_layer']}", f"model.n_heads={shape['n_head']}",
        f"model.emb_dim={shape['n_embd']}", f"model.context_length={shape['block']}", "model.drop_rate=0.0",
        "data=text", f"data.path={corpus}", f"data.max_length={shape['block']}", f"data.batch_size={batch}",
        f"data.micro_batch_size={batch}", *device,
        f"trainer.precision={'bf16-mixed' if shape['bf16'] else '32-true'}", f"compile={str(shape['compile']).lower()}",
        f"trainer.max_steps={steps}", "trainer.max_epochs=-1",
        "optim.lr=6e-4", "optim.weight_decay=0.1", "optim.betas=[0.9,0.95]", "optim.grad_clip=1.0",
    ]
    if e2e:  # train.py's defaults: callbacks (checkpoints, loss plot, step time...), validation, samples, loggers
        every = shape["e2e_every"]
        return compose([*common, f"trainer.val_check_interval={every}", f"sampling.every_n_steps={every}",
                        "logger=[tensorboard,csv]", "trainer.enable_progress_bar=false", *shape["e2e_extra"], *extra], out)
    return compose([*common, *QUIET, *extra], out)


def free_memory(device: str):
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() if device == "cuda" else None


def timed_loop(step, steps: int, device: str) -> list[float]:
    """Seconds of each of `steps` calls of step(), each ended by a device synchronize."""
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t)
    return times


def nanogpt_loop(ng, shape: dict, loader, steps: int) -> tuple[list[float], int]:
    """nanoGPT's train.py inner loop; the seconds of each step and the parameters that enter a matmul."""
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
    data = batches(loader)

    def step():
        x, y = (b.to(dev, non_blocking=True) for b in next(data))
        with ctx:
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return timed_loop(step, steps, dev), n


def gptlit_plain_loop(module, shape: dict, loader, steps: int) -> list[float]:
    """gptlit's GPT, compiled as train.py compiles it, with its AdamW groups, in nanoGPT's loop."""
    dev = shape["device"]
    twin = type(module)(model=module.hparams.model, optim=module.hparams.optim).to(dev)
    model = twin.model
    if shape["compile"]:
        model.compile()
    conf = twin.configure_optimizers()  # gptlit's parameter groups and fused AdamW (its lr schedule is left out)
    opt = conf["optimizer"] if isinstance(conf, dict) else conf
    ctx = torch.autocast(dev, dtype=torch.bfloat16) if shape["bf16"] else contextlib.nullcontext()
    data = batches(loader)

    def step():
        x, y = (b.to(dev, non_blocking=True) for b in next(data))
        with ctx:
            loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return timed_loop(step, steps, dev)


def step_clock(device: str):
    """A callback timing each optimizer step of Trainer.fit from the previous step's end (or the start of
    training) to its own end, after a device synchronize: every hook, the batch fetch, forward, backward and
    optimizer step. `times` holds the seconds; `start` the time the step after the compile steps began."""
    import lightning as L

    class StepClock(L.Callback):
        def __init__(self):
            self.times, self.start, self.start_step, self.seconds = [], None, None, None
            self._mark = None

        def on_train_start(self, trainer, pl_module):
            sync(device)
            self._mark = self._t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            sync(device)
            now = time.perf_counter()
            self.times.append(now - self._mark)
            self._mark = now
            if self.start is None and trainer.global_step >= max(1, getattr(pl_module, "compile_steps", 0)):
                self.start, self.start_step = now, trainer.global_step

        def on_train_end(self, trainer, pl_module):
            sync(device)
            if self.start is not None:
                self.seconds = time.perf_counter() - self.start

    return StepClock()


def logged(run_dir: Path, name: str) -> list[float]:
    """Every logged value of a metric in the CSV logger's metrics.csv under run_dir."""
    values = []
    for f in run_dir.rglob("metrics.csv"):
        with open(f, newline="") as fh:
            values += [float(r[name]) for r in csv.DictReader(fh) if r.get(name)]
    return values


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, nargs="+", help="micro-batches of 1024 tokens to measure (default 16 32 64)")
    p.add_argument("--steps", type=int, default=20, help="timed steps of each loop (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="steps left out first, compilation included (default 5)")
    p.add_argument("--e2e-steps", type=int, help="optimizer steps of the train.py end-to-end row (default 150; 0: no row)")
    p.add_argument("--wheel", help="a lightning-gpt wheel file to read nanoGPT's model.py from, instead of the installed one")
    p.add_argument("--smoke", action="store_true", help="every loop and row with a 2-layer model on CPU: checks the script, not speed")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for gptlit's rows")
    a = p.parse_args()
    shape = dict(SMOKE if a.smoke else FULL)
    if a.smoke:
        a.steps, a.warmup = min(a.steps, 2), min(a.warmup, 1)
    elif not torch.cuda.is_available():
        sys.exit("gpu_nanogpt.py needs a CUDA GPU and none is visible (torch.cuda.is_available() is False); "
                 "run it on a GPU machine, or pass --smoke to check the code paths on CPU")
    sizes = a.batches or list(shape["batches"])
    e2e_steps = shape["e2e_steps"] if a.e2e_steps is None else a.e2e_steps
    ng = load_nanogpt(a.wheel)
    if ng is None:
        print(f"nanoGPT not found, its rows are left out: {NANOGPT}", flush=True)

    import lightning as L  # noqa: F401 - imported before the builds below print anything
    from gptlit.model.flops import cuda_peak_flops, flops_per_token, matmul_params, mfu
    from gptlit.run.runner import build_run
    from gptlit.training.memory import estimate_step_memory

    if shape["compile"]:
        import torch._dynamo

        torch._dynamo.config.automatic_dynamic_shapes = False  # a static graph per micro-batch, as in a train.py run
    dev, T, total = shape["device"], shape["block"], a.warmup + a.steps
    corpus = synthetic_corpus(int(1.3 * max(max(sizes) * (total + 2), shape["e2e_batch"] * (e2e_steps + 2)) * T))
    peak = cuda_peak_flops("bf16-mixed") if dev == "cuda" else None
    L_, H, Q = shape["n_layer"], shape["n_head"], shape["n_embd"] // shape["n_head"]
    rows, started = [], time.perf_counter()

    def row(name, batch, times, n, mem, planned=None, tps=None):
        tps = batch * T / statistics.median(times[a.warmup:]) if tps is None else tps
        u = mfu(tps, flops_per_token(n, L_, H, Q, T), peak) if peak else None
        rows.append([name, batch, f"{tps:,.0f}" if tps == tps else "n/a", f"{100 * u:.1f}%" if u and u == u else "n/a",
                     f"{mem / 2**30:.1f}" if mem else "n/a", f"{planned / 2**30:.1f}" if planned else "",
                     f"{times[0]:.1f}" if times else ""])
        print(f"  {rows[-1]}", flush=True)
        return tps

    def fresh_compile():
        if shape["compile"]:  # compiled graphs of the last rows go: no recompile limit is reached, their memory is freed
            torch._dynamo.reset()

    ratios = []
    for batch in sizes:
        fresh_compile()
        with tempfile.TemporaryDirectory(prefix="gptlit-bench-") as out:
            dm, module, trainer, _ = build_run(gptlit_cfg(shape, corpus, batch, total + 1, a.overrides, out=out))
            cfg = module.model.cfg
            planned = estimate_step_memory(cfg, T, trainer.precision, dev, fused_loss=not shape["compile"],
                                           compiled=shape["compile"]).total(batch) if dev == "cuda" else None
            n = matmul_params(module.model)
            got = {}
            if ng is not None:
                free_memory(dev)
                times, n_ng = nanogpt_loop(ng, shape, dm.train_dataloader(), total)
                got["nanoGPT"] = row("nanoGPT", batch, times, n_ng, peak_memory(dev))
            free_memory(dev)
            times = gptlit_plain_loop(module, shape, dm.train_dataloader(), total)
            got["plain"] = row("gptlit plain loop", batch, times, n, peak_memory(dev), planned)
            free_memory(dev)
            clock = step_clock(dev)
            trainer.callbacks.append(clock)
            trainer.fit(module, datamodule=dm)
            got["fit"] = row("gptlit train.py machinery", batch, clock.times, n, peak_memory(dev), planned)
            ratios.append((batch, got))
            del dm, module, trainer
            free_memory(dev)

    if e2e_steps:
        fresh_compile()
        if shape["compile"]:
            torch._dynamo.config.automatic_dynamic_shapes = True  # train.py's setting: samples vary the length
        batch = shape["e2e_batch"]
        with tempfile.TemporaryDirectory(prefix="gptlit-bench-e2e-") as out:
            dm, module, trainer, _ = build_run(gptlit_cfg(shape, corpus, batch, e2e_steps, a.overrides, e2e=True, out=out))
            clock = step_clock(dev)
            trainer.callbacks.append(clock)
            free_memory(dev)
            trainer.fit(module, datamodule=dm)
            mem, n = peak_memory(dev), matmul_params(module.model)
            tps_logged = logged(Path(out), "train/tokens_per_sec")
            wall = (trainer.global_step - clock.start_step) * batch * T / clock.seconds if clock.seconds else float("nan")
            compile_s = [clock.start - clock._t0] if clock.start else []
            row("train.py end to end: logged train/tokens_per_sec", batch, compile_s, n, mem,
                tps=statistics.mean(tps_logged) if tps_logged else float("nan"))
            row("train.py end to end: wall clock, validation and samples in", batch, compile_s, n, mem, tps=wall)

    where = torch.cuda.get_device_name() if dev == "cuda" else "CPU smoke run"
    print(f"\nmachine: {where}, {machine()}")
    print(f"{'GPT-2 124M' if not a.smoke else 'smoke model (2 layers)'}, context {T}, "
          f"{'bf16 autocast + torch.compile' if shape['bf16'] else 'fp32, eager'}, fused AdamW, clip 1.0; "
          f"{a.steps} timed steps after {a.warmup}; end to end: {e2e_steps} steps, validation and samples "
          f"every {shape['e2e_every']}")
    print(table(rows, ["loop", "micro-batch", "tokens/s", "MFU", "peak GiB", "planned GiB", "first steps s"]))
    for batch, got in ratios:
        parts = [f"train.py machinery / plain loop {got['fit'] / got['plain']:.3f}"]
        if "nanoGPT" in got:
            parts += [f"plain loop / nanoGPT {got['plain'] / got['nanoGPT']:.3f}",
                      f"train.py machinery / nanoGPT {got['fit'] / got['nanoGPT']:.3f}"]
        print(f"micro-batch {batch}: " + ", ".join(parts))
    print(f"whole call: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
