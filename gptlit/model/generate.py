"""Decoding: greedy, temperature, top-k and top-p (nucleus) sampling, with a KV cache.

One implementation for the training callback and for sample.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from gptlit.core.errors import UserError
from gptlit.model.tokenizer import EOT_ID


@dataclass
class SamplingConfig:
    """How to pick each next token. These are the decoding defaults of sample.py, of the samples
    printed while training (SampleTextConfig) and of Python callers."""

    temperature: float = 1.0  # 0 = greedy (argmax); <1 sharper, >1 flatter
    top_k: int | None = 50  # keep the k most likely tokens; None = all
    top_p: float | None = None  # keep the smallest set whose probability reaches p; None = all
    max_new_tokens: int = 50
    eos_id: int | None = EOT_ID  # stop a row when it emits this id; None = never stop early. GPT-2's
    # <|endoftext|> (50256), which generate_text reads as the end-of-text id of the model's tokenizer

    def validate(self) -> "SamplingConfig":
        if not _is_number(self.temperature) or self.temperature < 0:
            raise UserError(f"sampling.temperature={self.temperature} must be a number >= 0 (0 = greedy)")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            raise UserError(f"sampling.top_k={self.top_k} must be an integer >= 1, or null to keep every token")
        if self.top_p is not None and (not _is_number(self.top_p) or not 0.0 < self.top_p <= 1.0):
            raise UserError(f"sampling.top_p={self.top_p} must be in (0, 1], or null to keep every token")
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 0:
            raise UserError(f"max_new_tokens={self.max_new_tokens} must be an integer >= 0")
        if self.eos_id is not None and not _is_int(self.eos_id):
            raise UserError(f"eos_id={self.eos_id} must be a token id, or null to never stop early")
        return self

    @classmethod
    def from_dict(cls, d) -> "SamplingConfig":
        keys = cls.__dataclass_fields__
        return cls(**{k: v for k, v in dict(d).items() if k in keys}).validate()


@dataclass
class SampleTextConfig:
    """The `sampling` config group: decoding (SamplingConfig's fields and defaults) plus what to
    continue and with which seed. Training prints a sample every `every_n_steps` steps
    (gptlit.training.callbacks.sampling.SampleText); sample.py takes its prompt, seed and decoding from here."""

    every_n_steps: int = 100  # 0 turns samples off during training
    prompt: str = "Every effort moves you"
    temperature: float = SamplingConfig.temperature
    top_k: int | None = SamplingConfig.top_k
    top_p: float | None = SamplingConfig.top_p
    max_new_tokens: int = SamplingConfig.max_new_tokens
    seed: int = 123  # the sampler's own generator; training randomness is untouched

    def decoding(self) -> SamplingConfig:
        """The checked SamplingConfig of these values."""
        return SamplingConfig(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                              max_new_tokens=self.max_new_tokens).validate()


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x  # rejects NaN


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits in the last dimension; the rest become -inf."""
    k = min(k, logits.size(-1))
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the most likely tokens whose cumulative probability first reaches p; the rest become -inf."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    drop = probs.cumsum(-1) - probs >= p  # probability mass before this token already reaches p
    drop[..., 0] = False  # always keep the most likely token
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def next_token_probs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Distribution that sampling draws from, for logits (..., V). Greedy gives a one-hot."""
    logits = logits.float()
    if cfg.temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.size(-1)).float()
    if cfg.top_k is not None:
        logits = top_k_filter(logits, cfg.top_k)
    # shift so the largest logit is 0: a tiny temperature then gives -inf, never inf - inf = nan
    logits = (logits - logits.max(-1, keepdim=True).values) / cfg.temperature
    if cfg.top_p is not None and cfg.top_p < 1.0:
        logits = top_p_filter(logits, cfg.top_p)
    return logits.softmax(-1)


def pick(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Choose the next token for each row of logits (B, V) -> (B, 1)."""
    if cfg.temperature == 0:
        return logits.argmax(-1, keepdim=True)
    probs = next_token_probs(logits, cfg)
    return torch.multinomial(probs, 1, generator=generator)


@torch.no_grad()
def generate_stream(
    model,
    idx: torch.Tensor,
    cfg: SamplingConfig,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield the next token ids (B, 1) one step at a time for prompts idx (B, T).

    Rows that have emitted eos keep emitting eos; the stream ends when every row has, or
    after max_new_tokens. With the cache only the new token runs through the model;
    once the sequence outgrows the context, the window slides by one token per step
    and is recomputed, exactly as without the cache.
    """
    cfg.validate()
    L = model.cfg.context_length
    cache = None
    done = torch.zeros(idx.size(0), 1, dtype=torch.bool, device=idx.device)
    for _ in range(cfg.max_new_tokens):
        if not use_cache:
            logits = model(idx[:, -L:], last_only=True)
        elif cache is None or cache[0].pos >= L:  # (re)fill the cache from the last L tokens
            cache = model.new_cache(idx.size(0))
            logits = model(idx[:, -L:], cache=cache, last_only=True)
        else:
            logits = model(idx[:, -1:], cache=cache)
        nxt = pick(logits[:, -1, :], cfg, generator)  # (B, 1)
        if cfg.eos_id is not None:
            nxt = nxt.masked_fill(done, cfg.eos_id)
            done = done | (nxt == cfg.eos_id)
        idx = torch.cat([idx, nxt], dim=1)
        yield nxt
        if cfg.eos_id is not None and bool(done.all()):
            return


def generate(model, idx: torch.Tensor, cfg: SamplingConfig, generator=None, use_cache: bool = True) -> torch.Tensor:
    """Prompts idx (B, T) -> (B, T + n) with n <= max_new_tokens new ids."""
    new = list(generate_stream(model, idx, cfg, generator, use_cache))
    return torch.cat([idx, *new], dim=1) if new else idx


def generate_text(
    model,
    prompt: str,
    cfg: SamplingConfig,
    seed: int | None = None,
    use_cache: bool = True,
    on_text: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
    on_token: Callable[[int], None] | None = None,
) -> str:
    """Continue `prompt` and return the new text (without the prompt), streaming pieces to on_text;
    on_token(n) is called after each new token with the number generated so far (progress reports).

    An empty prompt starts from <|endoftext|>; a prompt longer than the context keeps its
    last context_length tokens. Both are reported through `warn`. The tokenizer is the model's
    (model.tokenizer, set by the loaders; GPT-2's when none).
    """
    from gptlit.model.tokenizer import tokenizer_of

    tok = tokenizer_of(model)
    encode, decode = tok.encode, tok.decode
    if cfg.eos_id == EOT_ID and tok.eot_id != EOT_ID:  # the default: this tokenizer's end of text
        cfg = dataclasses.replace(cfg, eos_id=tok.eot_id)
    ids = encode(prompt)
    L = model.cfg.context_length
    if not ids:
        ids = [tok.eot_id]
        if warn:
            warn("empty prompt: starting from <|endoftext|>")
    elif len(ids) > L:
        if warn:
            warn(f"prompt has {len(ids)} tokens, more than model.context_length={L}: keeping its last {L}")
        ids = ids[-L:]
    device = next(model.parameters()).device
    gen = None
    if seed is not None:
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        out: list[int] = []
        shown = ""
        idx = torch.tensor([ids], device=device)
        for nxt in generate_stream(model, idx, cfg, gen, use_cache):
            t = int(nxt[0, 0])
            if cfg.eos_id is not None and t == cfg.eos_id:
                break
            out.append(t)
            if on_token:
                on_token(len(out))
            text = decode(out)
            if on_text and not text.endswith("\ufffd"):  # wait for multi-byte characters to complete
                on_text(text[len(shown) :])
                shown = text
        text = decode(out)
        if on_text and len(text) > len(shown):
            on_text(text[len(shown) :])
        return text
    finally:
        model.train(was_training)
