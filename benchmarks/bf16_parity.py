#!/usr/bin/env python
"""Does bf16-mixed learn like fp32? Val loss after the same steps from the same seed, and the seed's own spread.

Three tiny runs through train.py's machinery on the built-in corpus: 32-true and bf16-mixed
from seed S, and 32-true from seed S+1. The bf16 difference should sit well inside the
tolerance (tests/test_perf.py asserts it). The seed-to-seed difference is printed beside it as
the yardstick: a change of precision should move the loss no more than a change of seed.

  python benchmarks/bf16_parity.py                 # nano, 40 steps (about 2-4 min on 2 CPU cores)
  python benchmarks/bf16_parity.py --steps 100 --model mini
"""

from __future__ import annotations

import argparse

from common import QUIET, compose, table

# |val loss bf16 - val loss fp32| in nats. bf16-mixed rounds only matmul inputs (8-bit mantissa,
# about 0.4% relative error) and keeps fp32 weights, optimizer state and loss, so it should move the
# val loss far less than changing the seed does (0.056 nats at 40 nano steps, see docs/performance.md).
# 0.02 is about a third of that spread and 0.3% of the loss.
TOLERANCE = 0.02


def val_loss(model: str, steps: int, precision: str, seed: int) -> float:
    from gptlit.run.runner import run

    cfg = compose([
        f"model={model}", "data.max_length=32", "data.batch_size=8", *QUIET,
        "trainer.limit_val_batches=16", "trainer.accelerator=cpu", f"trainer.max_steps={steps}",
        "optim.lr=3e-3", "optim.warmup_steps=5", f"trainer.precision={precision}", f"seed={seed}",
    ])
    return run(cfg)["val/loss"]


def parity(model: str = "nano", steps: int = 40, seed: int = 1337, seed_run: bool = True) -> dict:
    fp32 = val_loss(model, steps, "32-true", seed)
    bf16 = val_loss(model, steps, "bf16-mixed", seed)
    other = val_loss(model, steps, "32-true", seed + 1) if seed_run else float("nan")
    return dict(fp32=fp32, bf16=bf16, bf16_diff=abs(bf16 - fp32), seed_diff=abs(other - fp32))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="nano")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--seed", type=int, default=1337)
    a = p.parse_args()
    r = parity(a.model, a.steps, a.seed)
    print(table(
        [[f"{a.model}, {a.steps} steps, seed {a.seed}", f"{r['fp32']:.4f}", f"{r['bf16']:.4f}",
          f"{r['bf16_diff']:.4f}", f"{r['seed_diff']:.4f}", f"{TOLERANCE}"]],
        ["run", "val loss fp32", "val loss bf16", "|bf16 - fp32|", "|seed+1 - seed| (fp32)", "tolerance"],
    ))
    print("bf16 within tolerance" if r["bf16_diff"] <= TOLERANCE else "bf16 OUTSIDE tolerance")


if __name__ == "__main__":
    main()
