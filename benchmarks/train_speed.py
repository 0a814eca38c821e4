#!/usr/bin/env python
"""Training tokens/s: the book's GPTModel (llms-from-scratch) against gptlit's train.py machinery.

Reference: llms_from_scratch.ch04.GPTModel, GPT-2 124M with context 256 (dropout 0.1, no
qkv bias), AdamW(lr 4e-4, weight_decay 0.1) in fp32, stepped as ch05.train_model_simple
does: zero_grad, calc_loss_batch (cross-entropy of the flattened logits), backward, step.
gptlit: `experiment=book_ch05` (the same shape and optimizer) on the built-in pydocs corpus,
run through gptlit.run.runner.build_run and Trainer.fit with no logger, callbacks or samples.
Both take batches of 2 x 256 tokens from the same loader and alternate step by step in one
process, so both see the same machine load; tokens/s come from the median step time after
the warm-up steps.

  pip install --no-deps llms-from-scratch==1.0.19   # (its declared deps pull tensorflow and an old numpy)
  python benchmarks/train_speed.py                   # gptlit as configured vs the reference
  python benchmarks/train_speed.py --separate        # each side alone in its own process, alternating
  python benchmarks/train_speed.py compile=true      # extra Hydra overrides apply to gptlit
  python benchmarks/train_speed.py --levers          # one run per lever (long: about 15-30 min)
  python benchmarks/train_speed.py --matmul          # one matmul in fp32 and bf16: is bf16 fast on this CPU?
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from common import QUIET, Interleave, batches, compose, machine, median_tps, table

BOOK = ["experiment=book_ch05", "data=pydocs"]
GPT_CONFIG_124M = dict(vocab_size=50257, context_length=256, emb_dim=768, n_heads=12, n_layers=12,
                       drop_rate=0.1, qkv_bias=False)

# name: (gptlit overrides, environment for both models, extra flags)
LEVERS = {
    "gptlit as configured (eager, fused AdamW)": ([], {}, []),
    "optim.fused=false (for-loop AdamW, as the reference)": (["optim.fused=false"], {}, []),
    "compile=true": (["compile=true"], {}, []),
    "THP_MEM_ALLOC_ENABLE=1: huge pages for tensors (both)": ([], {"THP_MEM_ALLOC_ENABLE": "1"}, []),
    "1 thread (both)": ([], {}, ["--threads", "1"]),
}
SLOW_LEVERS = {"trainer.precision=bf16-mixed (gptlit only)": (["trainer.precision=bf16-mixed"], {}, [])}


def reference_step(loader, seed: int = 123):
    """One train_model_simple step of the book's model per call."""
    try:
        from llms_from_scratch.ch04 import GPTModel
        from llms_from_scratch.ch05 import calc_loss_batch
    except ImportError:
        sys.exit("the reference needs llms-from-scratch: pip install --no-deps llms-from-scratch==1.0.19")

    torch.manual_seed(seed)
    model = GPTModel(GPT_CONFIG_124M)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
    data = batches(loader)

    def step():
        x, y = next(data)
        opt.zero_grad()
        loss = calc_loss_batch(x, y, model, "cpu")
        loss.backward()
        opt.step()

    return step


def measure(overrides: list[str], steps: int, warmup: int) -> dict:
    from gptlit.run.runner import build_run

    cfg = compose([*BOOK, *QUIET, "trainer.accelerator=cpu", f"trainer.max_steps={warmup + steps + 1}", *overrides])
    dm, module, trainer, _ = build_run(cfg)
    cb = Interleave(reference_step(dm.train_dataloader()))
    trainer.callbacks.append(cb)
    trainer.fit(module, datamodule=dm)
    tokens = cfg.data.batch_size * cfg.data.max_length
    ref, lit = median_tps(cb.other, tokens, warmup), median_tps(cb.lit, tokens, warmup)
    cpu_ratio = median_tps(cb.lit_cpu, tokens, warmup) / median_tps(cb.other_cpu, tokens, warmup)
    return dict(reference=ref, gptlit=lit, ratio=lit / ref, cpu_ratio=cpu_ratio, steps=len(cb.lit[warmup:]),
                precision=trainer.precision, threads=torch.get_num_threads())


def measure_one(side: str, overrides: list[str], steps: int, warmup: int) -> dict:
    """Step times of one side alone in this process ("reference" or "gptlit") and its tokens per step."""
    from gptlit.run.build import make
    from gptlit.run.runner import build_run

    cfg = compose([*BOOK, *QUIET, "trainer.accelerator=cpu", f"trainer.max_steps={warmup + steps + 1}", *overrides])
    tokens = cfg.data.batch_size * cfg.data.max_length
    if side == "reference":  # only the data: no gptlit model in this process
        dm = make(cfg.data)
        dm.setup("fit")
        step, times = reference_step(dm.train_dataloader()), []
        for _ in range(warmup + steps):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        return dict(times=times[warmup:], tokens=tokens)
    dm, module, trainer, _ = build_run(cfg)
    cb = Interleave(None)
    trainer.callbacks.append(cb)
    trainer.fit(module, datamodule=dm)
    return dict(times=cb.lit[warmup:], tokens=tokens)


def measure_separate(overrides: list[str], steps: int, warmup: int, rounds: int) -> dict:
    """Each side alone in a fresh process, reference and gptlit alternating `rounds` times.

    Interleaving two 124M models step by step in one process makes each evict the other's
    memory from the caches and the allocator; this is the setting a user actually runs.
    """
    times, tokens = {"reference": [], "gptlit": []}, {}
    for _ in range(rounds):
        for side in times:
            cmd = [sys.executable, __file__, "--only", side, "--steps", str(steps), "--warmup", str(warmup), *overrides]
            p = subprocess.run(cmd, capture_output=True, text=True)
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
            if p.returncode or not line:
                sys.exit(f"{side} failed:\n{p.stderr[-2000:]}")
            r = json.loads(line[-1])
            times[side] += r["times"]
            tokens[side] = r["tokens"]
    ref, lit = (median_tps(times[k], tokens[k], 0) for k in ("reference", "gptlit"))
    return dict(reference=ref, gptlit=lit, ratio=lit / ref, cpu_ratio=float("nan"), steps=len(times["gptlit"]),
                threads=torch.get_num_threads())


def row(name: str, r: dict) -> list:
    return [name, r["steps"], f"{r['reference']:,.1f}", f"{r['gptlit']:,.1f}", f"{r['ratio']:.2f}x",
            "-" if r["cpu_ratio"] != r["cpu_ratio"] else f"{r['cpu_ratio']:.2f}x"]  # NaN: not measured


HEADER = ["gptlit run", "steps", "reference tok/s", "gptlit tok/s", "gptlit/reference", "by CPU time"]


def levers(names: dict, steps: int, warmup: int):
    """Each lever in a fresh process (environment variables act at start-up), printed as one table."""
    rows = []
    for name, (over, env, flags) in names.items():
        warm = max(warmup, 2) if "compile=true" in over else warmup  # compiling takes the first step
        cmd = [sys.executable, __file__, "--json", "--steps", str(steps), "--warmup", str(warm), *flags, *over]
        print(f"... {name}", flush=True)
        p = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
        if p.returncode or not line:
            print(p.stderr[-2000:], file=sys.stderr)
            rows.append([name, "failed", "", "", "", ""])
            continue
        rows.append(row(name, json.loads(line[-1])))
        print(table(rows[-1:], HEADER).splitlines()[-1], flush=True)
    return rows


def matmul_micro(repeats: int = 3):
    """One MLP-sized matmul (512 x 768 by 768 x 3072) in fp32 and bf16: does this CPU have fast bf16?"""
    import time

    a, b = torch.randn(512, 768), torch.randn(768, 3072)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), b.to(dtype)
        x @ y  # warm-up
        t = time.perf_counter()
        for _ in range(repeats):
            x @ y
        s = (time.perf_counter() - t) / repeats
        rows.append([str(dtype).removeprefix("torch."), f"{1000 * s:.1f}", f"{2 * 512 * 768 * 3072 / s / 1e9:.1f}"])
    print(table(rows, ["matmul 512x768 @ 768x3072", "ms", "GFLOP/s"]))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=4, help="timed steps of each (default 4)")
    p.add_argument("--warmup", type=int, default=1, help="steps left out at the start (default 1; compile needs 2)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads for both")
    p.add_argument("--levers", action="store_true", help="one run per lever, in fresh processes")
    p.add_argument("--bf16", action="store_true", help="with --levers: add bf16-mixed (very slow without AVX512-BF16/AMX)")
    p.add_argument("--matmul", action="store_true", help="only time one matmul in fp32 and bf16")
    p.add_argument("--separate", action="store_true",
                   help="each side alone in its own process, alternating (--rounds times) instead of step by step")
    p.add_argument("--rounds", type=int, default=2, help="with --separate: reference/gptlit process pairs (default 2)")
    p.add_argument("--only", choices=["reference", "gptlit"], help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for gptlit, e.g. compile=true")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.matmul:
        return matmul_micro()
    if a.only:
        return print(json.dumps(measure_one(a.only, a.overrides, a.steps, a.warmup)))
    if a.separate:
        r = measure_separate(a.overrides, a.steps, a.warmup, a.rounds)
        rows = [row(" ".join(["experiment=book_ch05", *a.overrides]) + " (separate processes)", r)]
    elif a.levers:
        rows = levers({**LEVERS, **(SLOW_LEVERS if a.bf16 else {})}, a.steps, a.warmup)
    else:
        r = measure(a.overrides, a.steps, a.warmup)
        if a.json:
            print(json.dumps(r))
            return
        rows = [row(" ".join(["experiment=book_ch05", *a.overrides]) + f" ({r['precision']})", r)]
    print(f"\nmachine: {machine()}")
    print(table(rows, HEADER))


if __name__ == "__main__":
    main()
