#!/usr/bin/env python
"""Generate text from a trained checkpoint.  python sample.py ckpt=<run dir or .ckpt> [key=value ...]

  python sample.py ckpt=outputs/2026-01-01/12-00-00                     # best (else last) checkpoint of a run
  python sample.py ckpt=<run dir> prompt="The meaning of" num_samples=3 max_new_tokens=80
  python sample.py ckpt=<run dir> sampling=greedy                       # argmax decoding
  python sample.py ckpt=<run dir> sampling.temperature=0.7 sampling.top_p=0.9 sampling.top_k=null
  python sample.py ckpt=<run dir> prompt_file=prompts.txt               # one prompt per line
  python sample.py -m ckpt=<run dir> sampling.temperature=0.5,1.0,1.5 sampling.top_k=5,50
  python sample.py init_from=/models/gpt2 prompt="Every effort moves you"   # Hugging Face GPT-2 weights
  python sample.py --help                                               # every value
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from gptlit.core.files import user_path
from gptlit.interop.checkpoints import find_checkpoint, model_from_checkpoint, pick_device
from gptlit.run.config_store import register_configs
from gptlit.core.errors import UserError, exit_on_user_error
from gptlit.model.generate import SamplingConfig, generate_text
from gptlit.core.launch_env import register_resolvers

register_resolvers()  # conf/hydra/job_logging/gptlit.yaml (train.log from rank 0 only) uses one


def read_prompts(cfg: DictConfig) -> list[str]:
    """prompt_file's non-blank lines, else the single `prompt`."""
    if cfg.get("prompt_file") is None:
        return [str(cfg.prompt or "")]
    p = user_path(cfg.prompt_file)
    if not p.is_file():
        raise UserError(f"prompt_file={cfg.prompt_file}: no such file ({p})")
    prompts = [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"prompt_file={cfg.prompt_file} has no prompts (every line is blank)")
    return prompts


def shown(path: Path) -> str:
    """The checkpoint path, relative to where the user ran the command when it is below it."""
    try:
        return str(path.relative_to(hydra.utils.get_original_cwd()))
    except ValueError:
        return str(path)


def run(cfg: DictConfig) -> None:
    init_from = cfg.get("init_from")
    if init_from is None and (OmegaConf.is_missing(cfg, "ckpt") or not cfg.ckpt):
        raise UserError(
            "ckpt is required: ckpt=<a .ckpt file, or a run directory such as outputs/2026-01-01/12-00-00>, "
            "or init_from=<a Hugging Face GPT-2 folder or a book .pth file>"
        )
    sampling = OmegaConf.to_container(cfg.sampling, resolve=True)
    scfg = SamplingConfig.from_dict({**sampling, "max_new_tokens": cfg.max_new_tokens})
    n = cfg.num_samples
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise UserError(f"num_samples={n} must be an integer >= 1")
    seed = cfg.seed if cfg.seed is not None else secrets.randbelow(2**31)
    if not isinstance(seed, int):
        raise UserError(f"seed={seed} must be an integer, or null for a random one")
    prompts = read_prompts(cfg)
    device = pick_device(cfg.device)
    if init_from is not None:
        from gptlit.interop.hf import load_pretrained

        path = user_path(init_from)
        model = load_pretrained(path).to(device)  # fp32, eval mode, config from config.json / the shapes
    else:
        path = find_checkpoint(cfg.ckpt, prefer="best")
        model, _ = model_from_checkpoint(path, device)  # fp32, eval mode, config from the checkpoint

    def warn(msg: str) -> None:
        print(f"warning: {msg}", file=sys.stderr, flush=True)

    def stream(text: str) -> None:
        print(text, end="", flush=True)

    print(f"=== temperature={scfg.temperature} top_k={scfg.top_k} top_p={scfg.top_p} seed={seed} ckpt={shown(path)} ===", flush=True)
    for j, prompt in enumerate(prompts):
        for i in range(n):
            label = f"sample {i + 1}/{n}" if len(prompts) == 1 else f"prompt {j + 1}/{len(prompts)}, sample {i + 1}/{n}"
            print(f"--- {label} ---", flush=True)
            stream(prompt)
            # sample i draws with seed + i: sample 0 is the text SampleText logs while training
            generate_text(model, prompt, scfg, seed=seed + i, use_cache=bool(cfg.use_cache),
                          on_text=stream, warn=warn if i == 0 else None)
            print(flush=True)


register_configs()  # the sampling group's values (gptlit.model.generate.SampleTextConfig)


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    """A bad value ends with one line on stderr and exit code 2, as in train.py."""
    try:
        with exit_on_user_error():
            run(cfg)
    except BrokenPipeError:  # stdout closed early, e.g. `python sample.py ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    from gptlit.core.cli import check_group_options, hydra_argv

    sys.argv = hydra_argv(sys.argv)  # values with non-ASCII characters (prompt="每一次努力") quoted for Hydra
    check_group_options(sys.argv[1:], Path(__file__).parent / "conf")  # sampling=greedyy: one line, exit 2
    main()
