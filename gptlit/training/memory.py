"""How much memory a training step needs, how much the device has, and the micro-batch that fits.

The estimate of a step's peak, in bytes:

  fixed       weights (fp32), their gradients, AdamW's two moments, the autocast copies of the
              weights, the fused head's weight gradient and one chunk of logits, and what the
              process allocates after the estimate (trainer, logger, first-step workspaces)
  per sample  the activations kept for backward, per token of the context: each block's
              tensors (a function of emb_dim, the compute dtype and dropout), the T x T
              attention probabilities where attention takes the math path (CPU with attention
              dropout), the head and the loss (a full row of logits per token on the plain
              path, next to nothing with the fused loss)

The per-token coefficients count the tensors autograd saves in gptlit's GPT (counted with
torch.autograd.graph.saved_tensors_hooks) times a factor for what backward holds at its peak,
calibrated against measured peak RSS: `python benchmarks/memory.py` prints estimate against
measurement for nano, mini and small.

The compiled model on CUDA (compile=auto there) is planned from GPU figures instead: what the
caching allocator held (torch.cuda.max_memory_allocated) for GPT-2 124M at context 1024 under
bf16 autocast with fused AdamW on one H200, 8.4 GiB at micro-batch 16 and 15.1 GiB at 32
(cuda_compiled_step_memory). Inductor keeps fewer block activations than eager autograd, and the
plain loss path it takes keeps the (tokens, padded vocabulary) logits.
"""

from __future__ import annotations

import dataclasses

import os
from dataclasses import dataclass
from pathlib import Path

from gptlit.model.config import GPTConfig
from gptlit.core.errors import UserError

GB = 1e9
MARGIN = 0.9  # plan with 90% of the available memory: the estimate may be up to ~10% low
OVERHEAD = 100e6  # bytes the process adds after the estimate besides the step: trainer, logger, allocator slack
BACKWARD_FACTOR = 1.25  # peak / activations saved for backward: gradients of activations live beside them
ADAMW_STATES = 2  # exp_avg and exp_avg_sq, fp32


# What each GPTConfig field does to the estimate. Parameters are counted on the model itself (num_params),
# so a field that only changes parameter shapes needs nothing here; the per-token activation formulas
# below read ACTIVATION_FIELDS. tests/test_memory.py fails on a field in neither tuple, so a new model
# field cannot leave the micro-batch plan silently wrong.
ACTIVATION_FIELDS = ("vocab_size", "pad_vocab_multiple", "emb_dim", "n_heads", "n_layers", "drop_rate",
                     "activation_checkpointing")
PARAMETERS_ONLY = ("context_length", "qkv_bias", "tie_embeddings", "init")  # seq_len, not context_length, sizes a step


@dataclass(frozen=True)
class StepMemory:
    """Peak bytes of one training step: fixed + micro_batch * per_sample, plus what grows with the
    batch up to a cap (the fused loss's chunk of logits): min(micro_batch * per_sample_capped, cap)."""

    fixed: float
    per_sample: float
    per_sample_capped: float = 0.0
    cap: float = 0.0

    def total(self, micro_batch: float) -> float:
        return self.fixed + micro_batch * self.per_sample + min(micro_batch * self.per_sample_capped, self.cap)


def num_params(cfg: GPTConfig) -> int:
    """Every parameter as allocated (vocabulary padding rows included, a tied matrix once), counted on
    the model itself (built on the meta device: gptlit.model.gpt.num_params)."""
    from gptlit.model import gpt

    return gpt.num_params(cfg)


def math_attention(cfg: GPTConfig, device_type: str) -> bool:
    """Whether training attention materializes T x T probabilities: on CPU, attention dropout sends
    scaled_dot_product_attention to its math path (CUDA's flash and memory-efficient kernels do dropout)."""
    return device_type == "cpu" and cfg.drop_rate > 0


def estimate_step_memory(
    cfg: GPTConfig, seq_len: int, precision: str, device_type: str = "cpu", fused_loss: bool = True,
    compiled: bool = False,
) -> StepMemory:
    """Peak memory of one training step (forward, backward, AdamW) of a GPT on windows of seq_len tokens.

    precision: Lightning's precision string ("32-true", "bf16-mixed", "16-mixed", ...). compiled: the
    model runs under torch.compile (which takes the plain loss path, whatever fused_loss says).
    """
    if compiled and device_type == "cuda":
        return cuda_compiled_step_memory(cfg, seq_len, precision)
    C, L, H, V, T = cfg.emb_dim, cfg.n_layers, cfg.n_heads, cfg.padded_vocab_size, seq_len
    P = num_params(cfg)
    mixed = "mixed" in str(precision)
    half = mixed or str(precision).startswith(("bf16", "16"))  # matmuls in a 2-byte dtype
    fused = fused_loss and (
        (device_type == "cpu" and not half) or (mixed and str(precision).startswith("bf16"))
    )

    # fp32 weights, gradients and AdamW moments; under autocast a 2-byte copy of each weight for the step
    fixed = P * 4 * (2 + ADAMW_STATES) + (P * 2 if mixed else 0) + OVERHEAD
    capped = cap = 0.0
    if fused:
        from gptlit.model.gpt import head_chunk_rows

        # the head's fp32 weight gradient made in forward and its sum with the tied embedding's; one chunk
        # of logits: fp32, with the 2-byte matmul output or gradient beside it under autocast
        fixed += V * C * 4 * 2
        row = V * (4 + (2 if half else 0))
        capped, cap = T * row, head_chunk_rows(V) * row

    # bytes kept per token by one block (counted with saved_tensors_hooks): 36 C in bf16, 64 C in fp32,
    # 2 C more for the dropout masks, and with the math-path attention its T x T probabilities,
    # dropout mask and dropped probabilities (12 bytes each per head) plus 6 C of upcast inputs
    block = (36 if half else 64) * C
    if cfg.drop_rate > 0:
        block += 2 * C
    scores = 0  # T x T attention bytes per token of one block, kept for backward
    if math_attention(cfg, device_type):
        block += 6 * C
        scores = 12 * H * T
    kept = L if not cfg.activation_checkpointing else 1  # checkpointing: one block's activations at a time ...
    blocks = kept * block + (L * 4 * C if cfg.activation_checkpointing else 0)  # ... and each block's input
    # embeddings and final LayerNorm (fp32 residual stream); the head and loss
    rest = 3 * 4 * C
    if fused:
        rest += 4 * C  # the gradient of the head's input
    else:
        rest += (10 if half else 12) * V  # logits, their fp32 log-softmax kept for backward and its gradient
    # backward's gradients of activations live beside the kept ones: BACKWARD_FACTOR on the per-token
    # tensors; the T x T probabilities are taken as they are, plus the gradients of one block's (8 bytes)
    per_sample = T * (blocks + rest) * BACKWARD_FACTOR + T * (kept * scores + (8 * H * T if scores else 0))
    return StepMemory(fixed=fixed, per_sample=per_sample, per_sample_capped=capped, cap=cap)


# Compiled, on CUDA: bytes per token per block and per vocabulary entry, and the allocator's extra,
# fitted to the two H200 figures above (GPT-2 124M, bf16): 439 KB a token and 1.83 GB fixed, of which
# 14 bytes a parameter are the weights, AdamW's moments and the weights' bf16 copies. Per token, a
# block keeps ~26 bytes per channel (what inductor's partitioner saves: matmul inputs in bf16, the
# fp32 residual stream for the LayerNorms), the head 4 bytes per padded vocabulary entry (the bf16
# logits kept for backward and their bf16 gradient). fp32 (no autocast) doubles both, unmeasured.
CUDA_COMPILED_BLOCK = 26  # bytes per channel per token per block, bf16 autocast
CUDA_COMPILED_HEAD = 4  # bytes per padded vocabulary entry per token, bf16 autocast
CUDA_WORKSPACE = 80e6  # what the allocator holds besides weights, moments and activations (cuBLAS workspaces)


def cuda_compiled_step_memory(cfg: GPTConfig, seq_len: int, precision: str) -> StepMemory:
    """Peak bytes torch.cuda.max_memory_allocated reports for a compiled training step (see above).

    Gradients are left out of the fixed part: the optimizer sets them to None after each step and
    backward makes them as it frees the activations, so they are not all alive at the peak.
    """
    C, L, V, T = cfg.emb_dim, cfg.n_layers, cfg.padded_vocab_size, seq_len
    P = num_params(cfg)
    mixed = "mixed" in str(precision)
    half = mixed or str(precision).startswith(("bf16", "16"))
    scale = 1 if half else 2
    fixed = P * 4 * (1 + ADAMW_STATES) + (P * 2 if mixed else 0) + CUDA_WORKSPACE
    block = CUDA_COMPILED_BLOCK * scale * C + (2 * C if cfg.drop_rate > 0 else 0)  # + 1-byte masks of two dropouts
    kept = L if not cfg.activation_checkpointing else 1  # checkpointing: one block at a time and each block's input
    blocks = kept * block + (L * 4 * C if cfg.activation_checkpointing else 0)
    per_token = blocks + CUDA_COMPILED_HEAD * scale * V
    return StepMemory(fixed=fixed, per_sample=T * per_token)


def _meminfo_available() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_room() -> float | None:
    """Room left under a cgroup v2 memory limit (containers), if one is set."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return float(limit) - float(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None


def available_memory(device_type: str = "cpu", device_index: int | None = None) -> float:
    """Bytes a new allocation can use now: free GPU memory on CUDA; on CPU the kernel's MemAvailable
    (within a cgroup limit, where one is set).

    Read from /proc rather than through psutil, which is not a dependency and reads the same file.
    """
    if device_type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device_index)
        return float(free)
    room = [v for v in (_meminfo_available(), _cgroup_room()) if v is not None]
    if not room:  # not Linux: free physical pages
        room = [float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))]
    return min(room)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def gb(x: float) -> str:
    return f"{x / GB:.1f} GB" if x < 10 * GB else f"{x / GB:.0f} GB"


@dataclass(frozen=True)
class MicroBatchPlan:
    """data.batch_size samples per optimizer step, run as `accumulate` micro-batches of micro_batch_size."""

    batch_size: int
    micro_batch_size: int
    seq_len: int
    memory: StepMemory
    available: float
    note: str = ""

    @property
    def accumulate(self) -> int:
        return self.batch_size // self.micro_batch_size

    def line(self) -> str:
        need = self.memory.total(self.batch_size)
        head = f"memory: batch {self.batch_size} x {self.seq_len} needs ~{gb(need)}, {gb(self.available)} available"
        if self.accumulate == 1:
            out = f"{head}: one batch per step"
        else:
            out = (f"{head}: {self.accumulate} micro-batches of {self.micro_batch_size} "
                   f"(~{gb(self.memory.total(self.micro_batch_size))} each, same effective batch)")
        return out + (f"; {self.note}" if self.note else "")


def plan_micro_batches(
    batch_size: int,
    requested: int | str,
    memory: StepMemory,
    available: float,
    seq_len: int,
    what: str = "this model",
    fixes: str = "",
) -> MicroBatchPlan:
    """The micro-batch: `requested` if an integer (the nearest divisor of batch_size below it), else
    the largest divisor of batch_size whose step fits MARGIN of the available memory.

    Raises UserError when not even one sample fits, naming `what` (e.g. "model=small") and `fixes`.
    """
    usable = available * MARGIN
    if requested == "auto":
        fits = [d for d in divisors(batch_size) if memory.total(d) <= usable]
        if not fits:
            raise UserError(
                f"{what} at context {seq_len} needs ~{gb(memory.total(1))} for one sample; "
                f"{gb(available)} available" + (f": {fixes}" if fixes else "")
            )
        return MicroBatchPlan(batch_size, max(fits), seq_len, memory, available)
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise UserError(f"data.micro_batch_size={requested} must be auto or a positive integer")
    micro, note = min(requested, batch_size), ""
    if batch_size % micro:
        micro = max(d for d in divisors(batch_size) if d <= micro)
        note = f"data.micro_batch_size={requested} does not divide data.batch_size={batch_size}, using {micro}"
    if memory.total(micro) > usable:
        note = (note + "; " if note else "") + (
            f"data.micro_batch_size={micro} may not fit (~{gb(memory.total(micro))}): "
            f"data.micro_batch_size=auto picks one that does"
        )
    return MicroBatchPlan(batch_size, micro, seq_len, memory, available, note)


PLAN_ENV = "GPTLIT_MICRO_BATCH"  # the launching process's choice, read by the processes DDP starts


_freed_memory_kept = False  # whether keep_freed_memory() applied in this process (it cannot be undone)


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep the memory a training step frees for the next step. By default it serves
    each large block (activations, logits chunks, gradients) with its own mmap and unmaps it when freed, so
    every step faults its pages in again, zero-filled by the kernel: about 200,000 page faults a step for the
    124M model at 2 x 256. With mmap off for malloc and no trimming of the heap's top, freed blocks are
    reused: one step of that model took 1.52 s instead of 2.08 s (bf16-mixed, AMD EPYC with avx512_bf16;
    benchmarks/freed_memory.py, docs/performance.md). PyTorch's CPU tuning guide gets the same from
    jemalloc or tcmalloc through LD_PRELOAD, which a pip install cannot provide; these two mallopt calls
    are glibc's own switches (the MALLOC_MMAP_MAX_ and MALLOC_TRIM_THRESHOLD_ environment variables), set
    while running. Returns whether they applied (False off glibc, e.g. musl or macOS)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # glibc, whose mallopt takes these parameters
    except (OSError, AttributeError):
        return False
    global _freed_memory_kept
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    _freed_memory_kept = libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 2**31 - 1) == 1
    return _freed_memory_kept


def freed_memory_kept() -> bool:
    return _freed_memory_kept


def device_type_for(accelerator: str) -> str:
    import torch

    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def plan_for_training(
    model_cfg: GPTConfig,
    model_name: str,
    batch_size: int,
    seq_len: int,
    requested: int | str,
    precision: str,
    accelerator: str = "auto",
    processes_per_machine: int = 1,
    fused_loss: bool = True,
    world_size: int = 1,
    compiled: bool = False,
) -> MicroBatchPlan:
    """The micro-batch for a training run on this machine (see plan_micro_batches).

    On CPU, processes_per_machine (DDP ranks on one host) share its RAM. Processes that DDP
    starts reuse the launching process's choice, passed in PLAN_ENV, so every rank accumulates
    the same number of micro-batches whatever memory it sees when it starts.
    """
    device = device_type_for(str(accelerator))
    memory = estimate_step_memory(model_cfg, seq_len, precision, device, fused_loss, compiled)
    available = available_memory(device)
    if device == "cpu":
        available /= max(1, processes_per_machine)
    key = f"{batch_size}x{seq_len}:{requested}:{precision}:{sorted(model_cfg.to_dict().items())}"
    inherited = os.environ.get(PLAN_ENV, "") if world_size > 1 else ""
    if inherited.startswith(key + "="):
        return MicroBatchPlan(batch_size, int(inherited.rsplit("=", 1)[1]), seq_len, memory, available,
                              "as the launching process chose")

    def fits_one(**change) -> bool:
        cfg = dataclasses.replace(model_cfg, **change)  # smaller values of a valid config: valid (checked again on creation)
        T = change.get("context_length", seq_len)
        return estimate_step_memory(cfg, T, precision, device, fused_loss, compiled).total(1) <= available * MARGIN

    fixes = []
    if model_name not in ("nano", "mini"):
        fixes.append("model=mini")
    T = seq_len // 2
    while T >= 32 and not fits_one(context_length=T):
        T //= 2
    if T >= 32:
        fixes.append(f"data.max_length={T}")
    if not model_cfg.activation_checkpointing and fits_one(activation_checkpointing=True):
        fixes.append("model.activation_checkpointing=true")
    if math_attention(model_cfg, device) and fits_one(drop_rate=0.0):
        fixes.append("model.drop_rate=0.0")
    fix = "use " + (", ".join(fixes[:-1]) + " or " + fixes[-1] if len(fixes) > 1 else "".join(fixes)) if fixes else (
        "free some memory or use a machine with more"
    )
    plan = plan_micro_batches(batch_size, requested, memory, available, seq_len, f"model={model_name}", fix)
    if world_size > 1:
        os.environ[PLAN_ENV] = f"{key}={plan.micro_batch_size}"
    return plan
