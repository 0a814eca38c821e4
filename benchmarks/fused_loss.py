#!/usr/bin/env python
"""Training step time with gptlit's fused head + cross-entropy (FusedHeadLoss) against the plain path.

Both are gptlit GPTs with the same weights, batch and fused AdamW, stepped in a plain loop,
alternating step by step in one process; the plain path is the same model with
`model.fused_loss = False` (log-softmax over the whole logits, kept for backward).

  python benchmarks/fused_loss.py                 # mini (the CPU default, 16 x 128) and the 124M book shape (2 x 256)
  python benchmarks/fused_loss.py --steps 10
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from common import machine, table

from gptlit.model.config import GPTConfig
from gptlit.model.gpt import GPT

SHAPES = {
    "mini, batch 16 x 128 (python train.py)": (dict(name="mini"), 16, 128),
    "124M book_ch05, batch 2 x 256": (
        dict(name="small", context_length=256, drop_rate=0.1, qkv_bias=False, tie_embeddings=False, init="torch"), 2, 256
    ),
}


def compare(model_kw: dict, batch: int, length: int, steps: int) -> list[float]:
    torch.manual_seed(0)
    x, y = torch.randint(0, 50257, (batch, length)), torch.randint(0, 50257, (batch, length))
    cfg = GPTConfig.from_name(**model_kw)
    sides = {}
    for fused in (True, False):
        torch.manual_seed(0)
        m = GPT(cfg)
        m.fused_loss = fused
        sides[fused] = (m, torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True))
    times = {True: [], False: []}
    for i in range(steps + 1):  # the first round warms up
        for fused, (m, opt) in sides.items():
            t = time.perf_counter()
            opt.zero_grad()
            m(x, y).backward()
            opt.step()
            if i:
                times[fused].append(time.perf_counter() - t)
    return [statistics.median(times[False]), statistics.median(times[True])]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=6, help="timed steps of each (default 6)")
    a = p.parse_args()
    rows = []
    for name, (kw, b, t) in SHAPES.items():
        plain, fused = compare(kw, b, t, a.steps)
        rows.append([name, f"{plain:.3f}", f"{fused:.3f}", f"{plain / fused:.2f}x"])
        print(table(rows[-1:], ["shape", "plain s/step", "fused s/step", "speed-up"]).splitlines()[-1], flush=True)
    print(f"\nmachine: {machine()}")
    print(table(rows, ["shape", "plain s/step", "fused s/step", "speed-up"]))


if __name__ == "__main__":
    main()
