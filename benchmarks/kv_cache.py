#!/usr/bin/env python
"""Generation speed with and without the KV cache (random weights, fp32, greedy).

    python benchmarks/kv_cache.py                      # 124M model, 200 new tokens
    python benchmarks/kv_cache.py --model nano --repeats 5
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from gptlit import GPT, GPTConfig
from gptlit.model.generate import SamplingConfig, generate


def tokens_per_sec(model: GPT, prompt: torch.Tensor, new_tokens: int, use_cache: bool, repeats: int) -> tuple[float, torch.Tensor]:
    """Best of `repeats` runs (new tokens / second) and the generated ids of the last run."""
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=new_tokens, eos_id=None)
    best, out = 0.0, prompt
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = generate(model, prompt, cfg, use_cache=use_cache)
        dt = time.perf_counter() - t0
        best = max(best, (out.size(1) - prompt.size(1)) / dt)
    return best, out


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="small", help="preset name (small = GPT-2 124M)")
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--prompt-tokens", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1, help="runs per mode; the best is reported")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name(args.model)).eval()
    prompt = torch.randint(0, model.cfg.vocab_size, (1, args.prompt_tokens))

    print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus, {platform.system()}".strip())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, python {platform.python_version()}")
    print(f"model: {args.model} ({model.num_params() / 1e6:.0f}M params), fp32, CPU, greedy, "
          f"{args.prompt_tokens} prompt tokens -> {args.new_tokens} new, best of {args.repeats}")

    with torch.no_grad():
        generate(model, prompt, SamplingConfig(temperature=0.0, max_new_tokens=2, eos_id=None))  # warm-up
        cached, a = tokens_per_sec(model, prompt, args.new_tokens, True, args.repeats)
        plain, b = tokens_per_sec(model, prompt, args.new_tokens, False, args.repeats)
    ratio = cached / plain
    print(f"with KV cache:    {cached:8.1f} tokens/s")
    print(f"without KV cache: {plain:8.1f} tokens/s")
    print(f"speed-up: {ratio:.1f}x  (same tokens: {torch.equal(a, b)})")
    return ratio


if __name__ == "__main__":
    main()
