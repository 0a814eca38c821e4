"""Helpers shared by the benchmark scripts: the composed config, interleaved timing, tables."""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]

# train.py's machinery with nothing but training: no logger, callbacks, checkpoints, samples or validation.
QUIET = [
    "~logger",
    "~callbacks",
    "+trainer.enable_checkpointing=false",
    "trainer.enable_progress_bar=false",
    "trainer.limit_val_batches=0",
    "sampling.every_n_steps=0",
]


def compose(overrides: list[str], output_dir: str | None = None):
    """conf/train.yaml with overrides, as train.py would compose it."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from gptlit.run.config_store import register_configs

    register_configs()  # the model, optim and sampling groups, as train.py registers them
    output_dir = output_dir or tempfile.mkdtemp(prefix="gptlit-bench-")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("train", overrides=[*overrides, f"paths.output_dir={output_dir}"])


def sync(device: torch.device | str = "cpu"):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def batches(loader):
    """Batches of a DataLoader forever, epoch after epoch."""
    while True:
        yield from loader


class Interleave(L.Callback):
    """Times each Lightning step, and runs one step of another loop (timed apart) after each.

    A Lightning step is the time from the end of the other loop's step to the next
    on_train_batch_end: the batch fetch, every hook, forward, backward and optimizer step.
    Alternating step by step lets both see the same load on a shared machine. Wall-clock
    and process CPU times are both kept: CPU time is less sensitive to other processes.
    """

    def __init__(self, other_step, device="cpu"):
        self.other_step, self.device = other_step, device
        self.lit: list[float] = []  # wall-clock seconds per step
        self.other: list[float] = []
        self.lit_cpu: list[float] = []  # process CPU seconds per step
        self.other_cpu: list[float] = []
        self._mark = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        sync(self.device)
        now, cpu = time.perf_counter(), time.process_time()
        if self._mark is not None:
            self.lit.append(now - self._mark[0])
            self.lit_cpu.append(cpu - self._mark[1])
        if self.other_step is not None:
            self.other_step()
            sync(self.device)
            self.other.append(time.perf_counter() - now)
            self.other_cpu.append(time.process_time() - cpu)
        self._mark = (time.perf_counter(), time.process_time())


def median_tps(times: list[float], tokens_per_step: int, skip: int) -> float:
    """Tokens per second from the median step time, leaving out the first `skip` (warm-up) steps."""
    kept = times[skip:]
    if not kept:
        raise SystemExit(f"no steps left after skipping {skip} warm-up steps; raise --steps")
    return tokens_per_step / statistics.median(kept)


def table(rows: list[list], header: list[str]) -> str:
    cells = [header, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(cells[0]), line(["-" * w for w in widths]), *map(line, cells[1:])])


def machine() -> str:
    import platform

    import lightning

    cpu, name, flags = platform.processor() or "cpu", None, None
    try:
        for ln in open("/proc/cpuinfo"):  # the first processor's model name and flags
            if ln.startswith("model name") and name is None:
                name = cpu = ln.split(":", 1)[1].strip()
            elif ln.startswith("flags") and flags is None:
                flags = ln.split(":", 1)[1].split()
            if name is not None and flags is not None:
                break
    except OSError:
        pass
    if flags is not None:  # bf16 matmuls are ~2.7x fp32 with it, ~60x slower without: say which this is
        cpu += " with avx512_bf16" if "avx512_bf16" in flags else " without avx512_bf16"
    return (f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"lightning {lightning.__version__}, python {sys.version.split()[0]}")
