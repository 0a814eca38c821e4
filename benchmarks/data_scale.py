#!/usr/bin/env python
"""Corpora of any size: tokenizing into the token cache, memory, start-up time and training speed.

Generates single-file corpora of two sizes (default 50 MB and 500 MB of English from the pydoc
topics, paragraphs shuffled) in a temporary folder and prints, for each:
  - tokenization MB/s with 1 process and with all cores (each into an empty cache);
  - peak RSS of the preparation (the main process, and the largest tokenizing process);
  - time from `python train.py ...` starting to its first training step end on a cached rerun,
    and the peak RSS of that process at that point;
then, on the small corpus, training tokens/s reading windows from the token file against the
in-memory path gptlit had before the cache (the whole token tensor in memory), the two
alternating batch by batch in one Lightning run so that both see the same machine load.
Each measurement runs in its own process; peak RSS is resource.getrusage's ru_maxrss.
The corpora and caches are deleted at the end.

  python benchmarks/data_scale.py                       # 50 and 500 MB, about 5-10 min on 2 cores
  python benchmarks/data_scale.py --sizes 5,50 --keep   # smaller; keep the folder
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # the gptlit of this checkout, as the subprocesses (run from ROOT) see it

PREPARE = """
import json, resource, sys, time
from pathlib import Path
from gptlit.data.readers import Corpus
from gptlit.data.token_cache import ensure
f, cache, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
t = time.perf_counter()
u0 = resource.getrusage(resource.RUSAGE_SELF)
got = ensure(Corpus(f.name, files=(f,)), cache, num_proc=n)
s = time.perf_counter() - t
u, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps(dict(seconds=s, n_tokens=got.n_tokens, built=got.built,
                      cpu=u.ru_utime + u.ru_stime + c.ru_utime + c.ru_stime - u0.ru_utime - u0.ru_stime,
                      cpu_main=u.ru_utime + u.ru_stime - u0.ru_utime - u0.ru_stime,
                      rss_main=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      rss_workers=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)))
"""


class FirstStep(L.Callback):
    """Loaded by train.py from this file: at the first training step's end, writes the seconds since
    $BENCH_T0 and the peak RSS to $BENCH_OUT."""

    done = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.done:
            self.done = True
            Path(os.environ["BENCH_OUT"]).write_text(json.dumps(dict(
                seconds=time.time() - float(os.environ["BENCH_T0"]),
                rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))


def make_corpus(path: Path, mb: int, seed: int = 0):
    """mb MB of English: the pydoc topics' paragraphs, shuffled afresh for each block."""
    from pydoc_data.topics import topics

    paras = [p for t in topics.values() for p in t.split("\n\n") if p.strip()]
    rng, target, written = random.Random(seed), mb * 1_000_000, 0
    with open(path, "w", encoding="utf-8") as out:
        while written < target:
            rng.shuffle(paras)
            block = "\n\n".join(paras)[: target - written] + "\n\n"
            out.write(block)
            written += len(block.encode())


def prepare(f: Path, cache: Path, n: int) -> dict:
    r = subprocess.run([sys.executable, "-c", PREPARE, str(f), str(cache), str(n)], cwd=ROOT,
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def first_step(f: Path, cache: Path, work: Path) -> dict:
    """train.py on a corpus already in the cache: seconds from launch to the first step's end, peak RSS."""
    out = work / "first_step.json"
    env = {**os.environ, "BENCH_OUT": str(out), "GPTLIT_CACHE": str(cache),
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    args = ["model=nano", "data=text", f"data.path={f}", f"data.cache_dir={cache}", "trainer.max_steps=1",
            "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false", "sampling.every_n_steps=0",
            "~logger", "~callbacks", "+callbacks.first._target_=data_scale.FirstStep",
            "+trainer.enable_checkpointing=false", f"hydra.run.dir={work / 'run'}"]
    env["BENCH_T0"] = repr(time.time())
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    if r.returncode or not out.exists():
        raise SystemExit(r.stderr[-3000:])
    got = json.loads(out.read_text())
    if "token cache: tokenized" in r.stdout + r.stderr:
        raise SystemExit("the rerun tokenized again: the cache missed")
    return got


def training_speed(f: Path, cache: Path, steps: int, warmup: int) -> tuple[float, float, float, float]:
    """(tok/s from the token file, tok/s in memory, ms per batch fetch of each, ms per step) on corpus f."""
    import torch

    sys.path.insert(0, str(HERE))
    from common import QUIET, compose

    from gptlit.data.windows import WindowDataset
    from gptlit.run.runner import build_run

    B, T = 16, 64  # nano: context 64
    cfg = compose([*QUIET, "model=nano", "data=text", f"data.path={f}", f"data.cache_dir={cache}",
                   f"data.batch_size={B}", f"data.max_length={T}", f"trainer.max_steps={2 * steps}"])
    dm, module, trainer, _ = build_run(cfg)
    disk = dm.train_set
    tokens = torch.from_numpy(disk.tokens[:].astype("int32"))  # what setup() held before the cache
    memory = WindowDataset(tokens, T, dm.config.stride)
    loaders = [dm._loader(disk, shuffle=True), dm._loader(memory, shuffle=True)]

    class Alternate:
        """Batches from the token file and from memory, in turn."""

        def __len__(self):
            return 2 * min(len(x) for x in loaders)

        def __iter__(self):
            for a, b in zip(*loaders):
                yield a
                yield b

    times: list[float] = []

    class Timer(L.Callback):
        mark = None

        def on_train_batch_end(self, *args):
            now = time.perf_counter()
            if self.mark is not None:
                times.append(now - self.mark)
            self.mark = now

    dm.train_dataloader = lambda: Alternate()
    trainer.callbacks.append(Timer())
    trainer.fit(module, datamodule=dm)
    # times[i] is the step of batch i+1: odd i -> a batch from memory, even i -> from the token file
    d = [t for i, t in enumerate(times) if i % 2 == 0][warmup:]
    m = [t for i, t in enumerate(times) if i % 2 == 1][warmup:]

    def fetch_ms(ds, n=400):
        loader = iter(dm._loader(ds, shuffle=True))
        t = time.perf_counter()
        for _ in range(min(n, len(dm._loader(ds, shuffle=True)))):
            next(loader)
        return (time.perf_counter() - t) * 1000 / n

    fetch = [(fetch_ms(disk), fetch_ms(memory)) for _ in range(3)]
    return (B * T / statistics.median(d), B * T / statistics.median(m),
            statistics.median(x for x, _ in fetch), statistics.median(y for _, y in fetch), statistics.median(d + m) * 1000)


def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def data_startup(f: Path, cache: Path) -> float:
    """Seconds, in this process, from a new datamodule to its first train batch, the corpus being cached."""
    from gptlit.data.datamodule import GPTDataModule

    t = time.perf_counter()
    dm = GPTDataModule(source="files", path=str(f), cache_dir=str(cache), max_length=64, batch_size=16)
    dm.prepare_data()
    dm.setup("fit")
    next(iter(dm.train_dataloader()))
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="50,500", help="corpus sizes in MB (two, comma-separated)")
    ap.add_argument("--dir", default=None, help="work folder (default: a new temporary folder)")
    ap.add_argument("--steps", type=int, default=20, help="training steps of each kind for tokens/s")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds for the speed-up and the reruns")
    ap.add_argument("--keep", action="store_true", help="keep the corpora and caches")
    a = ap.parse_args()
    sizes = sorted(int(s) for s in a.sizes.split(","))
    work = Path(a.dir or tempfile.mkdtemp(prefix="gptlit-data-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    need = sum(sizes) * 2.2e6  # the text, and two token files of about half its size
    free = shutil.disk_usage(work).free
    if free < need:
        raise SystemExit(f"{work}: {free / 1e9:.1f} GB free, need {need / 1e9:.1f} GB; use --dir or smaller --sizes")
    from gptlit.data.token_cache import default_num_proc

    cores = default_num_proc()
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"CPU: {cpu}, {cores} cores; {load()}; work folder {work}", flush=True)
    rows = {}
    med = statistics.median
    try:
        for mb in sizes:
            f = work / f"corpus_{mb}MB.txt"
            make_corpus(f, mb)
            size = f.stat().st_size / 1e6
            one = prepare(f, work / f"cache1_{mb}", 1)
            many = prepare(f, work / f"cacheN_{mb}", cores)
            rows[mb] = dict(f=f, size=size, one=one, many=many)
            print(f"{mb} MB ({one['n_tokens']:,} tokens): 1 process {size / one['seconds']:.1f} MB/s, {cores} processes "
                  f"{size / many['seconds']:.1f} MB/s ({one['seconds'] / many['seconds']:.2f}x); CPU s/MB "
                  f"{one['cpu'] / size:.3f} / {many['cpu'] / size:.3f} (of which main process {many['cpu_main'] / size:.3f}); "
                  f"peak RSS: main {many['rss_main']:.0f} MB, tokenizer processes {many['rss_workers']:.0f} MB "
                  f"(1-process run: {one['rss_main']:.0f} MB); {load()}", flush=True)
        lo, hi = rows[sizes[0]], rows[sizes[-1]]
        # the speed-up, with 1 and all processes alternating on the small corpus (the load drifts)
        speed = {1: [], cores: []}
        for r in range(a.rounds):
            for n in (1, cores):
                got = prepare(lo["f"], work / f"speed_{n}_{r}", n)
                speed[n].append(lo["size"] / got["seconds"])
                shutil.rmtree(work / f"speed_{n}_{r}")
        print(f"{sizes[0]} MB, {a.rounds} alternating rounds: 1 process {[round(x, 1) for x in speed[1]]} MB/s, "
              f"{cores} processes {[round(x, 1) for x in speed[cores]]} MB/s; {load()}", flush=True)
        # cached reruns, small and large alternating: launch -> first step, and the data part alone in this process
        for mb in sizes:
            rows[mb]["rerun"], rows[mb]["startup"] = [], []
        for _ in range(a.rounds):
            for mb in sizes:
                rows[mb]["rerun"].append(first_step(rows[mb]["f"], work / f"cacheN_{mb}", work))
                rows[mb]["startup"].append(data_startup(rows[mb]["f"], work / f"cacheN_{mb}"))
        for mb in sizes:
            x = rows[mb]
            print(f"{mb} MB cached rerun: first step after {[round(r['seconds'], 1) for r in x['rerun']]} s, peak RSS "
                  f"{[round(r['rss']) for r in x['rerun']]} MB; datamodule to first batch {[round(t, 2) for t in x['startup']]} s",
                  flush=True)
        small = sizes[0]
        tps_disk, tps_mem, f_disk, f_mem, step_ms = training_speed(lo["f"], work / f"cacheN_{small}", a.steps, warmup=3)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)

    first = {mb: med(r["seconds"] for r in rows[mb]["rerun"]) for mb in sizes}
    rss = {mb: med(r["rss"] for r in rows[mb]["rerun"]) for mb in sizes}
    startup = {mb: med(rows[mb]["startup"]) for mb in sizes}
    up = med(speed[cores]) / med(speed[1])
    checks = [
        ("prepare peak RSS growth, small -> large (main / tokenizer processes)",
         f"{hi['many']['rss_main'] - lo['many']['rss_main']:+.0f} / {hi['many']['rss_workers'] - lo['many']['rss_workers']:+.0f} MB",
         "< 300 MB", max(hi['many']['rss_main'] - lo['many']['rss_main'], hi['many']['rss_workers'] - lo['many']['rss_workers']) < 300),
        ("first-step peak RSS growth, small -> large (medians)", f"{rss[sizes[-1]] - rss[sizes[0]]:+.0f} MB", "< 300 MB",
         rss[sizes[-1]] - rss[sizes[0]] < 300),
        (f"tokenizing speed-up, {cores} processes vs 1 (median MB/s, {sizes[0]} MB)", f"{up:.2f}x", ">= 1.6x", up >= 1.6),
        (f"tokenizing MB/s, {cores} processes ({sizes[-1]} MB)", f"{hi['size'] / hi['many']['seconds']:.1f}", ">= 10",
         hi['size'] / hi['many']['seconds'] >= 10),
        ("tokenizing CPU s/MB, 1 process / all (large)", f"{hi['one']['cpu'] / hi['size']:.3f} / {hi['many']['cpu'] / hi['size']:.3f}",
         "(info)", True),
        ("cached rerun, launch to first step: large - small (medians)", f"{first[sizes[-1]] - first[sizes[0]]:+.1f} s", "< 5 s",
         first[sizes[-1]] - first[sizes[0]] < 5),
        ("cached datamodule to first batch: small / large (medians)", f"{startup[sizes[0]]:.2f} / {startup[sizes[-1]]:.2f} s",
         "(info)", True),
        (f"training tok/s, token file / in memory ({small} MB corpus, nano 16x64)",
         f"{tps_disk:,.0f} / {tps_mem:,.0f} = {tps_disk / tps_mem:.3f}", ">= 0.97", tps_disk / tps_mem >= 0.97),
        ("batch fetch ms, token file / in memory; extra per step", f"{f_disk:.2f} / {f_mem:.2f}; {100 * (f_disk - f_mem) / step_ms:+.2f}%",
         "(info)", True),
    ]
    width = max(len(c[0]) for c in checks)
    print(f"\n{'measure':{width}}  {'value':>28}  target    met")
    for name, value, target, ok in checks:
        print(f"{name:{width}}  {value:>28}  {target:8}  {'yes' if ok else 'NO'}")
    print(load())


if __name__ == "__main__":
    main()
