"""Throughput bookkeeping: training FLOPs per token, GPU peak FLOP/s and model FLOPs utilization (MFU)."""

from __future__ import annotations

import re

# Dense (no sparsity) peak TFLOP/s of one GPU by math type, from NVIDIA's data sheets.
# Matched against torch.cuda.get_device_name() in order, so specific names come first.
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    (r"H100.*PCIe", dict(bf16=756.0, fp16=756.0, tf32=378.0, fp32=51.0)),
    (r"H[12]00.*NVL", dict(bf16=835.0, fp16=835.0, tf32=418.0, fp32=60.0)),
    (r"GH200|H200|H100", dict(bf16=989.0, fp16=989.0, tf32=494.0, fp32=67.0)),  # SXM / HBM3 parts
    (r"A100", dict(bf16=312.0, fp16=312.0, tf32=156.0, fp32=19.5)),
    (r"L40S", dict(bf16=362.0, fp16=362.0, tf32=183.0, fp32=91.6)),
    (r"\bL4\b", dict(bf16=121.0, fp16=121.0, tf32=60.0, fp32=30.3)),
    (r"V100", dict(fp16=125.0, fp32=15.7)),
    (r"RTX 4090", dict(bf16=165.2, fp16=165.2, tf32=82.6, fp32=82.6)),
]


def flops_per_token(n_params: int, n_layers: int, n_heads: int, head_dim: int, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token: 6N for the weight matmuls plus 12*L*H*Q*T for attention.

    N counts the parameters that enter a matmul (PaLM, appendix B; nanoGPT's estimate_mfu).
    """
    return 6 * n_params + 12 * n_layers * n_heads * head_dim * seq_len


def matmul_params(model) -> int:
    """Parameters of a gptlit GPT that enter a matmul: all but the embedding lookups (a tied matrix counts once, as the head)."""
    cfg = model.cfg
    n = model.num_params(non_embedding=True)  # without the position embedding
    if not cfg.tie_embeddings:
        n -= cfg.vocab_size * cfg.emb_dim  # the token embedding is a lookup; the separate head is a matmul
    return n


def model_flops_per_token(model, seq_len: int) -> float:
    """flops_per_token of a gptlit GPT trained on windows of seq_len tokens."""
    cfg = model.cfg
    return flops_per_token(matmul_params(model), cfg.n_layers, cfg.n_heads, cfg.head_dim, seq_len)


def math_type(precision: str, tf32: bool = False) -> str | None:
    """The matmul type a Lightning precision runs at: bf16, fp16, tf32 or fp32 (None for fp64)."""
    p = str(precision)
    if p.startswith("bf16"):
        return "bf16"
    if p.startswith("16") or p.startswith("transformer-engine"):
        return "fp16"
    if p.startswith("32"):
        return "tf32" if tf32 else "fp32"
    return None


def peak_flops(device_name: str, precision: str, tf32: bool = False) -> float | None:
    """Peak FLOP/s of one GPU named `device_name` at `precision`; None for a GPU or type not in the table."""
    kind = math_type(precision, tf32)
    for pattern, peaks in PEAK_TFLOPS:
        if re.search(pattern, device_name):
            return peaks[kind] * 1e12 if kind in peaks else None
    return None


def mfu(tokens_per_sec: float, flops_per_tok: float, peak: float) -> float:
    """Model FLOPs utilization: achieved model FLOP/s over the peak (same device count in both)."""
    return tokens_per_sec * flops_per_tok / peak


def cuda_peak_flops(precision: str) -> float | None:
    """peak_flops of the current CUDA device, or None off CUDA / for an unknown GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    tf32 = torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"
    return peak_flops(torch.cuda.get_device_name(), precision, tf32)
