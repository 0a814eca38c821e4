#!/usr/bin/env python
"""gptlit.training.memory's estimate of a training step's peak memory against the measured peak RSS.

Each configuration trains 2 optimizer steps through train.py's machinery (build + Trainer.fit,
no validation, logger or checkpoints) in its own process, with data.micro_batch_size equal to
data.batch_size (no micro-batches). Reported per configuration:

  base      RSS of the process when the estimate is made (imports; before the corpus is read), measured
  estimate  gptlit.training.memory's estimate of what the step adds (StepMemory.total(batch))
  measured  peak RSS (ru_maxrss) of the whole process
  ratio     (base + estimate) / measured; target: within 0.9 .. 1.2
  growth    estimate / (measured - base): the same on what the step adds alone
  s/step    wall time of the second step (machine load makes it vary; compare rows of one run)

  python benchmarks/memory.py                  # nano, mini and small; 2 contexts, 2 batch sizes, dropout 0 / 0.1
  python benchmarks/memory.py --models nano mini
  python benchmarks/memory.py --max-gb 8       # skip configurations estimated above 8 GB (shared machines)
  python benchmarks/memory.py --models small --contexts 1024 --extra model.activation_checkpointing=true
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

from common import ROOT, machine, table

sys.path.insert(0, str(ROOT))  # this checkout's gptlit, whatever is installed

# model -> (contexts, batch sizes)
GRID = {
    "nano": ((32, 64), (4, 16)),
    "mini": ((64, 128), (4, 16)),
    "small": ((256, 1024), (1, 2)),
}


def rss_now() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) * 1024
    return 0.0


def measure_one(model: str, T: int, batch: int, drop: float, extra: list[str]) -> dict:
    """In this process: build the run, note RSS at the estimate, train 2 steps, return the figures."""
    from common import QUIET, compose

    import gptlit.run.plan as run_plan
    import gptlit.training.memory as memory
    from gptlit.run.runner import build_run

    seen = {}
    real, real_plan = memory.available_memory, run_plan.plan_memory

    def spy(*a, **k):  # the RSS at the moment the plan is made
        seen["base"] = rss_now()
        return real(*a, **k)

    def keep_plan(*a, **k):  # the run's micro-batch plan, for its memory estimate
        seen["plan"] = real_plan(*a, **k)
        return seen["plan"]

    memory.available_memory, run_plan.plan_memory = spy, keep_plan
    cfg = compose(
        [*QUIET, f"model={model}", f"data.max_length={T}", f"data.batch_size={batch}",
         f"data.micro_batch_size={batch}", f"model.drop_rate={drop}", "trainer.max_steps=2", *extra]
    )
    dm, module, trainer, _ = build_run(cfg)
    from gptlit.training.callbacks.progress import StepTime

    timer = StepTime(skip_steps=1, timed_steps=1)  # the second step's time
    trainer.callbacks.append(timer)
    trainer.fit(module, datamodule=dm)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    return dict(base=seen["base"], estimate=seen["plan"].memory.total(batch), measured=float(peak),
                precision=str(trainer.precision), seconds=timer.per_step)


def estimate_only(model: str, T: int, batch: int, drop: float, precision: str, extra: list[str]) -> float:
    import yaml

    from gptlit.model.config import GPTConfig
    from gptlit.training.memory import estimate_step_memory

    fields = {k[len("model."):]: yaml.safe_load(v) for k, v in (e.split("=", 1) for e in extra) if k.startswith("model.")}
    cfg = GPTConfig.from_name(model, **{**fields, "drop_rate": drop})
    return estimate_step_memory(cfg, T, precision, "cpu").total(batch)


def mem_available() -> float:
    from gptlit.training.memory import available_memory

    return available_memory("cpu")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(GRID), choices=list(GRID))
    p.add_argument("--contexts", nargs="+", type=int, help="only these contexts (default: two per model)")
    p.add_argument("--drops", nargs="+", type=float, default=[0.0, 0.1], help="model.drop_rate values (default 0 0.1)")
    p.add_argument("--max-gb", type=float, default=8.0, help="skip configurations estimated above this (default 8)")
    p.add_argument("--extra", nargs="*", default=[], help="more overrides for every run, e.g. model.activation_checkpointing=true")
    p.add_argument("--one", nargs=4, metavar=("MODEL", "T", "BATCH", "DROP"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        m, T, b, d = a.one
        print("RESULT " + json.dumps(measure_one(m, int(T), int(b), float(d), a.extra)), flush=True)
        return

    from gptlit.run.plan import resolve_precision

    precision = resolve_precision("auto", "cpu")
    rows, skipped = [], []
    header = ["model", "T", "batch", "drop", "base GB", "estimate GB", "measured GB", "ratio", "growth", "s/step"]
    env = {**os.environ, "GPTLIT_CACHE": os.environ.get("GPTLIT_CACHE") or tempfile.mkdtemp(prefix="gptlit-mem-")}
    for model in a.models:
        contexts, batches = GRID[model]
        for T in a.contexts or contexts:
            for b in batches:
                for d in a.drops:
                    name = f"{model} T={T} batch={b} drop={d}"
                    est = estimate_only(model, T, b, d, precision, a.extra) + 0.7e9  # + about the base RSS
                    avail = mem_available()
                    if est > a.max_gb * 1e9 or est > 0.8 * avail:
                        skipped.append(f"{name}: estimated {est / 1e9:.1f} GB > --max-gb {a.max_gb:g} "
                                       f"or 80% of the {avail / 1e9:.1f} GB available")
                        print("skip " + skipped[-1], flush=True)
                        continue
                    cmd = [sys.executable, __file__, "--one", model, str(T), str(b), str(d), "--extra", *a.extra]
                    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
                    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
                    if out.returncode or not line:
                        skipped.append(f"{name}: failed (exit {out.returncode}): {out.stderr.strip().splitlines()[-1:]}")
                        print("fail " + skipped[-1], flush=True)
                        continue
                    r = json.loads(line[0][7:])
                    ratio = (r["base"] + r["estimate"]) / r["measured"]
                    growth = r["estimate"] / max(r["measured"] - r["base"], 1)
                    rows.append([model, T, b, d, f"{r['base'] / 1e9:.2f}", f"{r['estimate'] / 1e9:.2f}",
                                 f"{r['measured'] / 1e9:.2f}", f"{ratio:.2f}", f"{growth:.2f}",
                                 f"{r.get('seconds') or float('nan'):.1f}"])
                    print(table(rows[-1:], header).splitlines()[-1], flush=True)
    print(f"\nmachine: {machine()}, precision {precision}, extra overrides: {' '.join(a.extra) or 'none'}")
    print(table(rows, header))
    ratios = [float(r[7]) for r in rows]
    if ratios:
        ok = sum(0.9 <= x <= 1.2 for x in ratios)
        print(f"\nratio within 0.9 .. 1.2: {ok} of {len(ratios)} (min {min(ratios):.2f}, max {max(ratios):.2f})")
    for s in skipped:
        print(f"skipped: {s}")


if __name__ == "__main__":
    main()
