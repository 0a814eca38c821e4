#!/usr/bin/env bash
# Runs benchmarks/gpu_nanogpt.py on one CUDA GPU (about 6 minutes on an H100-class GPU) and prints its table.
# Installs nothing: it uses the Python environment it is started in, where torch, lightning and gptlit's
# requirements are installed. nanoGPT's model.py comes from the lightning-gpt wheel: installed
# (pip install --no-deps lightning-gpt==0.1.1), or a wheel file named by NANOGPT_WHEEL; without either,
# the nanoGPT rows are left out and gptlit's rows still run.
#
#   bash benchmarks/gpu_nanogpt.sh                      # micro-batches 16, 32, 64 and the end-to-end row
#   NANOGPT_WHEEL=lightning_gpt-0.1.1-py3-none-any.whl bash benchmarks/gpu_nanogpt.sh --batches 32
#   bash benchmarks/gpu_nanogpt.sh --smoke              # on CPU: every loop and row with a tiny model
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
args=()
if [[ -n "${NANOGPT_WHEEL:-}" ]]; then
  args+=(--wheel "$NANOGPT_WHEEL")
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec python "$repo/benchmarks/gpu_nanogpt.py" ${args[@]+"${args[@]}"} "$@"
