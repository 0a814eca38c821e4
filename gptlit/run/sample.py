"""sample.py's work: text from a checkpoint or pretrained weights, streamed to stdout.

  sample(cfg)   the composed conf/sample.yaml in, samples printed: a header line, then each sample
                streamed as it is generated; a long generation reports tokens/s and the time left on
                stderr (Progress); Ctrl-C keeps the text printed so far and ends with one line, exit 130.

The decoding keys are read at the top level of the config (temperature, top_k, top_p, max_new_tokens,
prompt, seed), which conf/sample.yaml fills from the `sampling` group: `temperature=0.7` and
`sampling.temperature=0.7` say the same.
"""

from __future__ import annotations

import secrets
import sys
import time
from pathlib import Path
from typing import TextIO

from omegaconf import DictConfig, OmegaConf

from gptlit.core.errors import UserError
from gptlit.core.files import user_path
from gptlit.interop.checkpoints import find_checkpoint, model_from_checkpoint, pick_device
from gptlit.model.generate import SamplingConfig, generate_text

EXIT_INTERRUPTED = 130  # as train.py: 128 + SIGINT

DECODING_KEYS = ("temperature", "top_k", "top_p", "max_new_tokens")


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
        return str(path.relative_to(user_path(".")))
    except ValueError:
        return str(path)


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """Tokens/s and the time left of one sample, on `stream` (stderr), only for a generation that will
    take more than `min_total` seconds, at most once every `every` seconds. On a terminal whose text
    goes elsewhere (stdout redirected) it is one line rewritten in place; else plain lines, so that a
    log file or the streamed text on the same terminal stays readable."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None, clock=time.monotonic,
                 first_after: float = 2.0, min_total: float = 5.0, every: float | None = None):
        self.total, self.label = total, label
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.start = clock()
        self.first_after, self.min_total = first_after, min_total
        self.in_place = _isatty(self.stream) and not _isatty(sys.stdout)
        self.every = every if every is not None else (0.5 if self.in_place else 10.0)
        self.last_shown: float | None = None
        self.done = 0
        self.wrote_in_place = False

    def line(self, n: int, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = n / elapsed
        left = (self.total - n) / rate if rate > 0 else float("inf")
        return (f"{self.label}: {n:,}/{self.total:,} tokens, {rate:,.1f} tokens/s, "
                f"about {_duration(left)} left")

    def __call__(self, n: int) -> None:
        self.done = n
        now = self.clock()
        elapsed = now - self.start
        if elapsed < self.first_after or n >= self.total:
            return
        if self.last_shown is None and elapsed * self.total / n < self.min_total:
            return  # a short generation: no report
        if self.last_shown is not None and now - self.last_shown < self.every:
            return
        self.last_shown = now
        text = self.line(n, now)
        if self.in_place:
            self.stream.write("\r" + text + "\033[K")
            self.wrote_in_place = True
        else:
            self.stream.write(("\n" if _isatty(self.stream) else "") + text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.wrote_in_place:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def decoding(cfg: DictConfig) -> SamplingConfig:
    """The checked decoding settings: each key from the top level of the config (see the module docstring)."""
    return SamplingConfig.from_dict({k: OmegaConf.select(cfg, k) for k in DECODING_KEYS})


def load_model(cfg: DictConfig, device: str):
    """The model (fp32, eval mode) and the path it came from: init_from= weights or ckpt='s checkpoint."""
    if cfg.get("init_from") is not None:
        from gptlit.interop.hf import load_pretrained

        path = user_path(cfg.init_from)
        return load_pretrained(path).to(device), path  # config from config.json / the shapes
    path = find_checkpoint(cfg.ckpt, prefer="best")
    model, _ = model_from_checkpoint(path, device)  # config from the checkpoint
    return model, path


def sample(cfg: DictConfig) -> None:
    """Print the samples that `cfg` (conf/sample.yaml) asks for. Bad values raise UserError before any
    text; Ctrl-C keeps what was printed and ends with one line on stderr and SystemExit(130)."""
    if cfg.get("init_from") is None and (OmegaConf.is_missing(cfg, "ckpt") or not cfg.ckpt):
        raise UserError(
            "ckpt is required: ckpt=<a .ckpt file, or a run directory such as outputs/2026-01-01/12-00-00>, "
            "or init_from=<a Hugging Face GPT-2 folder or a book .pth file>"
        )
    scfg = decoding(cfg)
    n = cfg.num_samples
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise UserError(f"num_samples={n} must be an integer >= 1")
    seed = cfg.seed if cfg.seed is not None else secrets.randbelow(2**31)
    if not isinstance(seed, int):
        raise UserError(f"seed={seed} must be an integer, or null for a random one")
    prompts = read_prompts(cfg)
    where = "loading the model"
    progress: Progress | None = None
    try:
        model, path = load_model(cfg, pick_device(cfg.device))

        def warn(msg: str) -> None:
            print(f"warning: {msg}", file=sys.stderr, flush=True)

        def stream(text: str) -> None:
            print(text, end="", flush=True)

        print(f"=== temperature={scfg.temperature} top_k={scfg.top_k} top_p={scfg.top_p} seed={seed} "
              f"ckpt={shown(path)} ===", flush=True)
        for j, prompt in enumerate(prompts):
            for i in range(n):
                label = f"sample {i + 1}/{n}" if len(prompts) == 1 else f"prompt {j + 1}/{len(prompts)}, sample {i + 1}/{n}"
                print(f"--- {label} ---", flush=True)
                stream(prompt)
                where, progress = label, Progress(scfg.max_new_tokens, label)
                # sample i draws with seed + i: sample 0 is the text SampleText logs while training
                generate_text(model, prompt, scfg, seed=seed + i, use_cache=bool(cfg.use_cache),
                              on_text=stream, warn=warn if i == 0 else None, on_token=progress)
                progress.close()
                print(flush=True)
    except KeyboardInterrupt:
        if progress is not None:
            progress.close()
            where = f"{where} after {progress.done:,} of {scfg.max_new_tokens:,} tokens"
        print(flush=True)  # the text printed so far stays, ended by a newline
        print(f"interrupted ({where}): the text above is what was generated", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
