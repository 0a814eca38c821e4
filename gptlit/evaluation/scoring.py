"""Log-likelihoods of continuations under a GPT: what multiple choice and last-word accuracy are scored by.

A request is (context ids, continuation ids). The model reads context + continuation once; the
log-probability of each continuation token is read at the position before it, and the greedy
match says whether the argmax at every one of those positions is the continuation token (which is
the same as: greedy decoding from the context produces exactly the continuation).

A sequence longer than the model's context is cut from the left (the oldest context tokens go);
the number cut is returned so that the caller can report it. A continuation that does not fit with
at least one context token is a UserError.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gptlit.core.errors import UserError
from gptlit.model.gpt import GPT
from gptlit.model.tokenizer import tokenizer_of
from gptlit.evaluation.benchmarks import Choice, LastWord

SEQUENCES_PER_PASS = 8  # sequences scored per forward pass when the caller does not say (eval.py's batch_size)


@dataclass
class Scored:
    """One continuation: its tokens' log-probabilities, whether greedy decoding gives it, and what greedy gives."""

    logprobs: list[float]
    greedy: bool
    greedy_ids: list[int]
    cut: int  # context tokens dropped from the left to fit the model

    @property
    def total(self) -> float:
        return float(sum(self.logprobs))

    @property
    def mean(self) -> float:
        return self.total / len(self.logprobs)


def fit(ctx: list[int], cont: list[int], context_length: int, where: str = "") -> tuple[list[int], int]:
    """context + continuation, cut from the left to the model's context_length + 1 tokens (the last is only a
    target). Returns the tokens and how many were cut."""
    if not cont:
        raise UserError(f"{where}: the continuation is empty")
    if len(cont) > context_length:
        raise UserError(f"{where}: the continuation alone is {len(cont)} tokens, more than the model's context of "
                        f"{context_length} allows; use a model with a longer context or drop the item")
    seq = ctx + cont
    cut = max(0, len(seq) - (context_length + 1))
    return seq[cut:], cut


@torch.no_grad()
def score_requests(model: GPT, requests: list[tuple[list[int], list[int]]], batch_size: int | None = None,
                   where: list[str] | None = None) -> list[Scored]:
    """Score each (context ids, continuation ids) with `model` (put in eval mode for the call, then back),
    `batch_size` sequences per forward pass (None: SEQUENCES_PER_PASS)."""
    batch_size = batch_size or SEQUENCES_PER_PASS
    was_training = model.training
    model.eval()
    device = model.pos_emb.weight.device
    out: list[Scored] = []
    try:
        for b in range(0, len(requests), batch_size):
            chunk = requests[b : b + batch_size]
            rows = [fit(c, k, model.cfg.context_length, where[b + i] if where else f"request {b + i}")
                    for i, (c, k) in enumerate(chunk)]
            width = max(len(seq) for seq, _ in rows) - 1
            x = torch.zeros(len(rows), width, dtype=torch.long)
            for i, (seq, _) in enumerate(rows):  # right-padded: causal attention keeps padding out of real positions
                x[i, : len(seq) - 1] = torch.tensor(seq[:-1])
            logits = model(x.to(device)).float()  # (B, T, V)
            for i, ((seq, cut), (_, cont)) in enumerate(zip(rows, chunk)):
                n = len(cont)
                pos = torch.arange(len(seq) - 1 - n, len(seq) - 1, device=device)  # positions that predict cont
                lp = F.log_softmax(logits[i, pos], dim=-1)
                target = torch.tensor(cont, device=device)
                picked = lp.gather(1, target[:, None]).squeeze(1)
                argmax = lp.argmax(dim=-1)
                out.append(Scored(picked.tolist(), bool((argmax == target).all()), argmax.tolist(), cut))
    finally:
        model.train(was_training)
    return out


@dataclass
class ChoiceResult:
    item: Choice
    totals: list[float]  # summed log-likelihood of each ending
    means: list[float]  # per-token mean log-likelihood of each ending
    pred: int  # argmax of totals: acc
    pred_norm: int  # argmax of means: acc_norm (llm.c's and build-nanogpt's normalisation, per token)
    cut: int


def score_choices(model: GPT, items: list[Choice], batch_size: int | None = None, key: str = "bench.path") -> list[ChoiceResult]:
    """Each ending is scored as " " + ending after the context (GPT-2's tokens carry the space before a word)."""
    requests, where = [], []
    encode = tokenizer_of(model).encode  # the model's tokenizer (GPT-2's unless its checkpoint names another)
    for it in items:
        ctx = encode(it.context)
        for e in it.endings:
            requests.append((ctx, encode(" " + e)))
            where.append(f"{key} line {it.line}")
    scored = score_requests(model, requests, batch_size, where)
    out, k = [], 0
    for it in items:
        s = scored[k : k + len(it.endings)]
        k += len(it.endings)
        totals, means = [x.total for x in s], [x.mean for x in s]
        out.append(ChoiceResult(it, totals, means, max(range(len(s)), key=totals.__getitem__),
                                max(range(len(s)), key=means.__getitem__), max(x.cut for x in s)))
    return out


@dataclass
class WordResult:
    item: LastWord
    logprob: float  # summed log-likelihood of the target word's tokens
    correct: bool  # greedy decoding from the context gives exactly the target word
    greedy: str  # what greedy decoding gives, as many tokens as the target has
    cut: int


def score_last_words(model: GPT, items: list[LastWord], batch_size: int | None = None, key: str = "bench.path") -> list[WordResult]:
    tok = tokenizer_of(model)
    encode, decode = tok.encode, tok.decode
    requests = [(encode(it.context), encode(it.target)) for it in items]
    scored = score_requests(model, requests, batch_size, [f"{key} line {it.line}" for it in items])
    return [WordResult(it, s.total, s.greedy, decode(s.greedy_ids), s.cut) for it, s in zip(items, scored)]
