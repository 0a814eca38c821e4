#!/usr/bin/env python
"""Kill a training run with SIGKILL at random moments, resuming from last.ckpt each time, and compare
every step's loss and batch with those of the same run left alone.

    python benchmarks/resume_soak.py                      # 20 kills, nano model, the tests' corpus
    python benchmarks/resume_soak.py --kills 5 --data ../shared/data/the-verdict.txt

Each piece is train.py in a subprocess (its own session: the kill takes any DDP ranks with it),
writing last.ckpt after every optimizer step (callbacks.last_checkpoint.every_n_train_steps=1), so a
kill often lands in the middle of a checkpoint write. It is killed a random 0 to --window seconds
after it logs its first step; the next piece resumes from the newest last.ckpt. A piece "continued
exactly" when every step it logged has the uninterrupted run's loss, to the last bit, and batch.
Prints how many of the pieces did, the largest loss difference, and how many kills hit a write.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def args_for(data: Path, logdir: Path, run_dir: Path, steps: int, extra: list[str]) -> list[str]:
    return [
        "model=nano", "model.drop_rate=0.1", "data=text", f"data.path={data}", "data.max_length=32",
        "data.batch_size=8", "trainer.max_epochs=1000", f"trainer.max_steps={steps}", "trainer.val_check_interval=10",
        "trainer.limit_val_batches=2", "sampling.every_n_steps=0", "trainer.enable_progress_bar=false",
        "callbacks.progress_bar=null", "callbacks.last_checkpoint.every_n_train_steps=1", "logger.tensorboard=null",
        "callbacks.lr_monitor=null", "callbacks.loss_plot=null", "callbacks.early_stopping=null",
        "+callbacks.steps._target_=resume_probe.StepLog", f"+callbacks.steps.dirpath={logdir}",
        f"hydra.run.dir={run_dir}", *extra,
    ]


def start(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *argv], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def rows(logdir: Path) -> list[tuple[int, str, str]]:
    f = logdir / "steps_rank0.csv"
    if not f.exists():
        return []
    out = []
    for line in f.read_text().splitlines():
        parts = line.split(",")
        if len(parts) == 3 and parts[2]:  # a kill can cut the last line short
            out.append((int(parts[0]), parts[1], parts[2]))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--steps", type=int, default=160, help="optimizer steps of the whole run")
    p.add_argument("--window", type=float, default=0.6, help="seconds after a piece's first step within which it is killed")
    p.add_argument("--data", type=Path, default=None, help="a text file (default: the tests' corpus)")
    p.add_argument("--seed", type=int, default=None, help="for the kill moments (default: random)")
    p.add_argument("--workers", type=int, default=0, help="data.num_workers")
    a = p.parse_args()
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="gptlit-soak-"))
    if a.data is None:
        from conftest import write_corpus

        a.data = write_corpus(work)
    data = a.data.resolve()
    extra = [f"data.num_workers={a.workers}"]

    t0 = time.perf_counter()
    ref = subprocess.run([sys.executable, str(ROOT / "train.py"),
                          *args_for(data, work / "log" / "ref", work / "ref", a.steps, extra)],
                         env={**os.environ, "PYTHONPATH": str(ROOT / "tests")}, capture_output=True, text=True)
    if ref.returncode:
        sys.exit(f"the uninterrupted run failed:\n{ref.stderr[-3000:]}")
    want = {s: (loss, batch) for s, loss, batch in rows(work / "log" / "ref")}
    print(f"uninterrupted run: {len(want)} steps in {time.perf_counter() - t0:.0f} s; kill seed {seed}; in {work}")

    exact, kills, worst, in_write, ckpt, pieces = 0, 0, 0.0, 0, None, []
    for i in range(a.kills + 1):  # the kills, then one piece left to finish
        name = f"piece{i:02d}"
        argv = args_for(data, work / "log" / name, work / name, a.steps, extra) + ([f"ckpt_path={ckpt}"] if ckpt else [])
        proc = start(argv)
        killed = False
        if i < a.kills:
            while proc.poll() is None and not rows(work / "log" / name):  # until this piece trains
                time.sleep(0.01)
            time.sleep(rng.uniform(0, a.window))
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                killed, kills = True, kills + 1
        err = proc.communicate()[1]
        if not killed and proc.returncode:
            sys.exit(f"{name} failed:\n{err[-3000:]}")
        got = rows(work / "log" / name)
        diffs = [abs(float.fromhex(loss) - float.fromhex(want[s][0])) for s, loss, _ in got]
        same = all((loss, batch) == want[s] for s, loss, batch in got)
        exact += same and killed
        worst = max([worst, *diffs])
        partial = list((work / name / "checkpoints").glob(".*.partial"))
        in_write += bool(partial)
        last = work / name / "checkpoints" / "last.ckpt"
        ckpt = last if last.exists() else ckpt
        pieces.append(got)
        span = f"steps {got[0][0]}-{got[-1][0]}" if got else "no step"
        print(f"{name}: {'killed' if killed else 'finished'} after {span}"
              f"{', during a checkpoint write' if partial else ''}: {'exact' if same else 'DIFFERENT'}", flush=True)
        if not killed:
            break
    trained = {s for got in pieces for s, _, _ in got}
    print(f"\n{exact}/{kills} killed pieces continued exactly; every step trained: {trained == set(want)}; "
          f"largest loss difference from the uninterrupted run: {worst:.3g}; "
          f"kills during a checkpoint write: {in_write}; {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
