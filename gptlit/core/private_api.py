"""The one place gptlit calls a private name of a library, because no public one does the job.

Each adapter is one small function; tests/test_private_api.py checks that each private name still
exists in the installed release (it fails on the day one is renamed) and that nothing else in the
package uses a private name of torch, Lightning, Hydra or Optuna.

  cpu_bf16_supported   torch.ops.mkldnn._is_mkldnn_bf16_supported: whether the CPU computes bf16 matmuls
                       natively (AVX512-BF16 or AMX); torch has no public query for it
"""

from __future__ import annotations

ADAPTERS = {  # adapter -> the private name it wraps (tests/test_private_api.py checks each still exists)
    "cpu_bf16_supported": "torch.ops.mkldnn._is_mkldnn_bf16_supported",
}


def cpu_bf16_supported() -> bool:
    """True where the CPU computes bf16 matmuls natively (oneDNN's own check: AVX512-BF16 or AMX)."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
