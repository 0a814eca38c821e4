#!/usr/bin/env python
"""keep_freed_memory (conf/train.yaml, on by default): CPU training with glibc's malloc told to keep the memory
a step frees, against glibc's default (each large block unmapped when freed and faulted in again next step).

Each round trains the same configuration through train.py's machinery (build + Trainer.fit, nothing logged,
no validation or checkpoints) once with keep_freed_memory=false and once with true, each in a fresh process
(mallopt is process-wide), in alternating order from round to round. Per side: the median optimizer-step
time after the warm-up steps, minor page faults per step, and the peak RSS; then the speed-up.

  python benchmarks/freed_memory.py                       # mini (16 x 128) and the 124M book shape (2 x 256)
  python benchmarks/freed_memory.py --models book --rounds 3 --steps 8
  python benchmarks/freed_memory.py trainer.precision=32-true     # extra Hydra overrides go to both sides
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

from common import QUIET, ROOT, machine, table

sys.path.insert(0, str(ROOT))  # this checkout's gptlit, whatever is installed

MODELS = {
    "mini": ["model=mini", "data.batch_size=16", "data.max_length=128"],
    "book": ["experiment=book_ch05", "data=pydocs"],
}


def measure_one(model: str, keep: bool, steps: int, warmup: int, extra: list[str]) -> dict:
    """In this process: train warmup + steps optimizer steps, return step times, faults and peak RSS."""
    import lightning as L

    from common import compose
    from gptlit.run.runner import build_run

    class Clock(L.Callback):
        def __init__(self):
            self.t, self.times, self.faults, self._f = None, [], [], None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            now, f = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            if self.t is not None:
                self.times.append(now - self.t)
                self.faults.append(f - self._f)
            self.t, self._f = now, f

    cfg = compose([*MODELS[model], *QUIET, f"keep_freed_memory={str(keep).lower()}",
                   f"trainer.max_steps={warmup + steps + 1}", *extra])
    dm, module, trainer, _ = build_run(cfg)
    clock = Clock()
    trainer.callbacks.append(clock)
    trainer.fit(module, datamodule=dm)
    return dict(seconds=statistics.median(clock.times[warmup:]), faults=statistics.median(clock.faults[warmup:]),
                peak=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, precision=str(trainer.precision))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--rounds", type=int, default=2, help="processes per side (default 2)")
    p.add_argument("--steps", type=int, default=6, help="timed optimizer steps per process (default 6)")
    p.add_argument("--warmup", type=int, default=2, help="steps left out at the start (default 2)")
    p.add_argument("--one", nargs=2, metavar=("MODEL", "KEEP"), help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for both sides (key=value, anywhere)")
    # key=value words are overrides wherever they stand (after --models too, which would take them)
    argv = sys.argv[1:]
    a = p.parse_args([w for w in argv if not ("=" in w and not w.startswith("-"))])
    a.overrides = [w for w in argv if "=" in w and not w.startswith("-")]
    if a.one:
        r = measure_one(a.one[0], a.one[1] == "true", a.steps, a.warmup, a.overrides)
        print("RESULT " + json.dumps(r))
        return
    rows = []
    for model in a.models:
        got = {True: [], False: []}
        for i in range(a.rounds):
            for keep in ((False, True) if i % 2 == 0 else (True, False)):
                cmd = [sys.executable, __file__, "--one", model, str(keep).lower(), "--steps", str(a.steps),
                       "--warmup", str(a.warmup), *a.overrides]
                out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if line is None:
                    raise SystemExit(f"{model} keep_freed_memory={keep} failed:\n{out.stderr[-3000:]}")
                got[keep].append(json.loads(line[len("RESULT "):]))
                print(f"{model} keep_freed_memory={str(keep).lower()}: {got[keep][-1]['seconds']:.3f} s/step", flush=True)
        med = {k: statistics.median(r["seconds"] for r in v) for k, v in got.items()}
        for keep in (False, True):
            rs = got[keep]
            rows.append([model, rs[0]["precision"], str(keep).lower(), f"{med[keep]:.3f}",
                         f"{statistics.median(r['faults'] for r in rs):,.0f}",
                         f"{max(r['peak'] for r in rs) / 2**30:.2f}",
                         f"{med[False] / med[True]:.2f}x" if keep else ""])
    print(f"\nmachine: {machine()}")
    print(table(rows, ["model", "precision", "keep_freed_memory", "s/step", "page faults/step", "peak RSS GiB",
                       "speed-up"]))


if __name__ == "__main__":
    main()
