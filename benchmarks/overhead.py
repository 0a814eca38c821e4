#!/usr/bin/env python
"""Lightning's overhead: train.py's machinery against a plain PyTorch loop doing the same work.

Both train the same gptlit GPT class from the same initial weights, on batches of the same
DataModule loader, at the same precision, with the same AdamW (gptlit's parameter groups,
fused setting, lr schedule and gradient clipping), and log nothing. The two loops alternate
step by step in one process, so both see the same machine load; the table gives tokens/s
from the median step time after the warm-up steps.

  python benchmarks/overhead.py                     # tiny (nano, 1 x 16 tokens), nano and the 124M book_ch05 shape
  python benchmarks/overhead.py --model nano --steps 200
  python benchmarks/overhead.py compile=true        # extra Hydra overrides go to both
  python benchmarks/overhead.py --model tiny --callbacks   # also a row with train.py's per-step callbacks on

With --callbacks, a second row per model keeps the callbacks of conf/callbacks/default.yaml that run
on every step (loss guard, step time, lr monitor, loss plot, job result, plain progress lines) and
leaves out only checkpoints, early stopping and the progress bar (validation is off in both rows):
the per-step cost a user's train.py run pays on top of the model.
"""

from __future__ import annotations

import argparse
import contextlib

import torch

from common import QUIET, Interleave, batches, compose, machine, median_tps, table

MODELS = {
    # nano on 1 x 16 tokens: steps of a few ms, the worst case for a fixed per-step cost
    "tiny": dict(overrides=["model=nano", "data.max_length=16", "data.batch_size=1"], steps=200, warmup=20),
    # nano: a small model, where per-step overhead shows most
    "nano": dict(overrides=["model=nano", "data.max_length=64", "data.batch_size=16"], steps=60, warmup=10),
    # the 124M GPT-2 shape of the book's chapter 5 (context 256, batch 2)
    "book": dict(overrides=["experiment=book_ch05", "data=pydocs"], steps=6, warmup=2),
}


def autocast(precision: str, device: torch.device):
    """The autocast Lightning's precision plugin applies around the forward pass."""
    if precision in ("bf16-mixed", "16-mixed"):
        dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
        return torch.autocast(device.type, dtype=dtype)
    if precision not in ("32-true", "32"):
        raise SystemExit(f"precision {precision}: this benchmark's plain loop covers 32-true and bf16-mixed")
    return contextlib.nullcontext()


def plain_loop(module, loader, precision: str, device: torch.device):
    """One step function of a hand-written loop over a copy of `module`'s model and optimizer."""
    from gptlit.training.lit_module import GPTLitModule

    twin = GPTLitModule(model=module.hparams.model, optim=module.hparams.optim).to(device)
    twin.model.load_state_dict(module.model.state_dict())
    conf = twin.configure_optimizers()  # gptlit's AdamW groups (and lr schedule, if any)
    opt, sched = (conf["optimizer"], conf["lr_scheduler"]["scheduler"]) if isinstance(conf, dict) else (conf, None)
    clip = module.hparams.optim["grad_clip"]
    model, data = twin.model, batches(loader)
    scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None

    def step():
        x, y = (t.to(device, non_blocking=True) for t in next(data))
        opt.zero_grad(set_to_none=True)
        with autocast(precision, device):
            loss = model(x, y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        if sched is not None:
            sched.step()

    return step


# train.py's default callbacks minus those that do not run every step (checkpoints, early stopping) and the
# progress bar (QUIET turns it off; ProgressLog prints its plain lines instead, as off a terminal)
WITH_CALLBACKS = [o for o in QUIET if o != "~callbacks"] + [
    "callbacks.model_checkpoint=null", "callbacks.last_checkpoint=null", "callbacks.early_stopping=null",
    "callbacks.progress_bar=null"]


def measure(name: str, steps: int, warmup: int, extra: list[str], callbacks: bool = False) -> list:
    from gptlit.run.runner import build_run

    spec = MODELS[name]
    quiet = WITH_CALLBACKS if callbacks else QUIET
    cfg = compose([*spec["overrides"], *quiet, f"trainer.max_steps={warmup + steps + 1}", *extra])
    dm, module, trainer, _ = build_run(cfg)
    device = trainer.strategy.root_device
    precision = trainer.precision
    cb = Interleave(plain_loop(module, dm.train_dataloader(), precision, device), device)
    trainer.callbacks.append(cb)
    trainer.fit(module, datamodule=dm)
    tokens = cfg.data.batch_size * cfg.data.max_length
    lit, plain = median_tps(cb.lit, tokens, warmup), median_tps(cb.other, tokens, warmup)
    slow = 100 * (plain - lit) / plain
    per_step = 1000 * tokens * (1 / lit - 1 / plain)
    cpu_slow = 100 * (1 - median_tps(cb.lit_cpu, tokens, warmup) / median_tps(cb.other_cpu, tokens, warmup))
    return [name + (" +callbacks" if callbacks else ""), precision, len(cb.lit[warmup:]), f"{plain:,.0f}",
            f"{lit:,.0f}", f"{slow:+.1f}%", f"{per_step:+.2f}", f"{cpu_slow:+.1f}%"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=[*MODELS, "all"], default="all")
    p.add_argument("--steps", type=int, help="timed steps per loop (default: 200 tiny, 60 nano, 6 book)")
    p.add_argument("--warmup", type=int, help="steps left out at the start (default: 20 tiny, 10 nano, 2 book)")
    p.add_argument("--callbacks", action="store_true",
                   help="also a row per model with train.py's per-step callbacks on (guard, step time, lr monitor, ...)")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for both loops, e.g. compile=true")
    a = p.parse_args()
    names = list(MODELS) if a.model == "all" else [a.model]
    rows = []
    for n in names:
        spec = MODELS[n]
        steps, warmup = a.steps or spec["steps"], spec["warmup"] if a.warmup is None else a.warmup
        rows.append(measure(n, steps, warmup, a.overrides))
        if a.callbacks:
            rows.append(measure(n, steps, warmup, a.overrides, callbacks=True))
    print(f"\nmachine: {machine()}")
    print(table(rows, ["model", "precision", "steps", "plain tok/s", "lightning tok/s", "slowdown",
                       "ms/step", "slowdown by CPU time"]))


if __name__ == "__main__":
    main()
