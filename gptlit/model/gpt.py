"""The GPT-2 architecture in one file.

Shapes: B batch, T sequence length, C emb_dim, H n_heads, D head_dim = C // H, V vocab.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from gptlit.model.config import GPTConfig


class KVCache:
    """Keys and values of the tokens seen so far, one per block: (B, H, context_length, D) each."""

    def __init__(self, batch_size: int, cfg: GPTConfig, device, dtype):
        shape = (batch_size, cfg.n_heads, cfg.context_length, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0  # number of positions filled

    def append(self, k: torch.Tensor, v: torch.Tensor):
        t = k.size(2)
        self.k[:, :, self.pos : self.pos + t] = k
        self.v[:, :, self.pos : self.pos + t] = v
        self.pos += t
        return self.k[:, :, : self.pos], self.v[:, :, : self.pos]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_heads, self.drop_rate = cfg.n_heads, cfg.drop_rate
        self.qkv = nn.Linear(cfg.emb_dim, 3 * cfg.emb_dim, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.emb_dim, cfg.emb_dim)
        self.resid_drop = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        mask, causal = None, True
        if cache is not None:
            start = cache.pos
            k, v = cache.append(k, v)  # (B, H, start + T, D)
            if T == 1:
                causal = False  # one new query sees every cached key
            elif start > 0:  # queries start..start+T-1 against keys 0..start+T-1
                causal = False
                mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
        drop = self.drop_rate if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop, is_causal=causal)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.emb_dim, 4 * cfg.emb_dim)
        self.proj = nn.Linear(4 * cfg.emb_dim, cfg.emb_dim)
        self.drop = nn.Dropout(cfg.drop_rate)

    def forward(self, x):
        return self.drop(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.emb_dim)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.emb_dim)
        self.mlp = MLP(cfg)

    def forward(self, x, cache: KVCache | None = None):
        x = x + self.attn(self.ln1(x), cache)
        return x + self.mlp(self.ln2(x))


HEAD_CHUNK_BYTES = 1 << 27  # fp32 logits made at a time by the fused loss (128 MB: 640 rows of GPT-2's vocabulary)


def head_chunk_rows(padded_vocab: int) -> int:
    """Rows of logits made at a time by the fused loss, a multiple of 64."""
    return max(64, (HEAD_CHUNK_BYTES // (4 * padded_vocab)) // 64 * 64)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matmuls of x run in: the autocast dtype where autocast is on for x's device."""
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype


def chunked_head_loss(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, vocab: int, grads: bool = False):
    """Mean cross-entropy of x @ w.T over the first `vocab` columns, a chunk of rows at a time.

    x (N, C), w (padded V, C), y (N,). Only one chunk of (rows, padded V) logits exists at a
    time, so memory does not grow with the batch. The matmuls run in the autocast dtype where
    autocast is on (as the plain path's head does), the softmax in fp32. With `grads`, also
    returns d loss / d x (N, C) and d loss / d w (padded V, C, fp32): the softmax turns into
    the logits' gradient in place, chunk by chunk.
    """
    N = y.numel()
    dt = compute_dtype(x)
    with torch.autocast(x.device.type, enabled=False):  # explicit dtypes below
        xc, wc = x.to(dt), w.to(dt)
        total = torch.zeros((), device=x.device, dtype=torch.float32)
        gx = torch.empty(x.shape, device=x.device, dtype=x.dtype) if grads else None
        gw = torch.zeros(w.shape, device=w.device, dtype=torch.float32) if grads else None
        step = head_chunk_rows(w.size(0))
        for s in range(0, N, step):
            total += _head_chunk(xc[s : s + step], wc, y[s : s + step], vocab, N, gx[s : s + step] if grads else None, gw)
    return total / N, gx, gw


def _head_chunk(xs, wc, ys, vocab: int, N: int, gx, gw) -> torch.Tensor:
    """Summed cross-entropy of one chunk of rows; with gx, gw given, writes d loss / d xs into gx and adds
    d loss / d w into gw. A function of its own so that the chunk's logits are freed before the next."""
    z = (xs @ wc.t()).float()  # (rows, padded V) logits; no copy in fp32
    z[:, vocab:] = float("-inf")  # padding ids can never be predicted
    zy = z.gather(1, ys[:, None]).squeeze(1)  # logits of the targets
    # log-sum-exp in place (torch.logsumexp would allocate another chunk of logits)
    m = z.amax(dim=1, keepdim=True)
    e = z.sub_(m).exp_()  # exp(z - max)
    s = e.sum(dim=1, keepdim=True)
    loss = (m + s.log()).squeeze(1).sub_(zy).sum()
    if gx is None:
        return loss
    g = e.div_(s * N)  # softmax / N, in place: d loss / d logits ...
    g[torch.arange(len(ys), device=ys.device), ys] -= 1.0 / N  # ... minus one-hot / N
    del z, e
    g = g.to(wc.dtype)  # frees the fp32 chunk when it is a copy
    gx.copy_(g @ wc)
    if g.dtype == torch.float32:
        gw.addmm_(g.t(), xs)  # (padded V, C), accumulated in place
    else:
        gw += g.t() @ xs  # a 2-byte product (as the plain path's), summed in fp32
    return loss


class FusedHeadLoss(torch.autograd.Function):
    """Mean cross-entropy of x @ w.T over the first `vocab` columns, gradients formed in the forward pass.

    x (N, C), w (padded V, C), y (N,). The logits are made a chunk of rows at a time and turned
    into the softmax gradient in place (chunked_head_loss), instead of passing through
    log-softmax, the loss and both their backward passes: on CPUs, where these passes are
    memory-bound, that is faster, and no (N, V) logits are kept for backward, in fp32 or under
    bf16 autocast. The plain path is taken under fp16 autocast (a gradient formed before the
    loss scale is applied could underflow), on fp32 GPUs and inside torch.compile.
    """

    @staticmethod
    def forward(ctx, x, w, y, vocab: int):
        loss, gx, gw = chunked_head_loss(x, w, y, vocab, grads=True)
        ctx.save_for_backward(gx if ctx.needs_input_grad[0] else None, gw.to(w.dtype) if ctx.needs_input_grad[1] else None)
        return loss

    @staticmethod
    def backward(ctx, grad):
        gx, gw = ctx.saved_tensors
        # grad is 1 unless the loss was scaled (Lightning divides it by the micro-batches of a step). On the
        # CPU its value is read from host memory, and a multiply of the (padded V, C) gw is saved when it is 1;
        # on an accelerator reading it would make the host wait for the device every step, so it is applied
        if grad.device.type != "cpu" or not bool(grad == 1):
            gx, gw = (None if t is None else t * grad for t in (gx, gw))
        return gx, gw, None, None


class GPT(nn.Module):
    tokenizer = None  # the tokenizer whose ids it reads, where a loader knows it (gptlit.model.tokenizer.tokenizer_of)

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg  # valid: a GPTConfig checks itself when it is made
        V = cfg.padded_vocab_size  # rows >= cfg.vocab_size are padding, masked out of every output
        self.tok_emb = nn.Embedding(V, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim)
        self.drop = nn.Dropout(cfg.drop_rate)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.emb_dim)
        self.head = nn.Linear(cfg.emb_dim, V, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.tok_emb.weight
        if cfg.init == "gpt2":
            self.apply(self._init_weights)
            # GPT-2: residual projections scaled down by sqrt(2 * n_layers)
            for name, p in self.named_parameters():
                if name.endswith("proj.weight"):
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))
        # "torch" keeps PyTorch's defaults, as the book's GPTModel does (embeddings N(0, 1))
        self.zero_padding_rows()
        self.fused_loss = True  # FusedHeadLoss where it applies (see fused_loss_applies)

    @staticmethod
    def _init_weights(m: nn.Module):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    @torch.no_grad()
    def zero_padding_rows(self):
        V = self.cfg.vocab_size
        self.tok_emb.weight[V:].zero_()
        self.head.weight[V:].zero_()

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, counting a tied matrix once and leaving out vocabulary padding rows."""
        n = sum(p.numel() for p in self.parameters())
        n -= (self.cfg.padded_vocab_size - self.cfg.vocab_size) * self.cfg.emb_dim * (1 if self.cfg.tie_embeddings else 2)
        if non_embedding:
            n -= self.pos_emb.weight.numel()
        return n

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: list[KVCache] | None = None,
        last_only: bool = False,
    ):
        """idx (B, T) token ids. Returns logits (B, T, vocab_size), or the mean cross-entropy if targets (B, T) are given.

        With `cache` (one KVCache per block) only the new tokens are passed and their
        positions continue from what the cache holds. `last_only` computes the logits of the
        last position alone (B, 1, vocab_size), which is all that generation needs.
        """
        B, T = idx.shape
        start = cache[0].pos if cache is not None else 0
        if start + T > self.cfg.context_length:
            raise ValueError(f"sequence of {start + T} tokens exceeds model.context_length={self.cfg.context_length}")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, C)
        recompute = self.cfg.activation_checkpointing and self.training and cache is None and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            if recompute:  # keep only each block's input; its activations are recomputed in backward
                x = checkpoint(block, x, use_reentrant=False)  # restores the RNG state: same dropout masks
            else:
                x = block(x, cache[i] if cache is not None else None)
        if last_only and targets is None:
            x = x[:, -1:, :]
        x = self.ln_f(x)
        if targets is None:
            return self.head(x)[..., : self.cfg.vocab_size]  # (B, T, V)
        if self.fused_loss_applies(x):
            return FusedHeadLoss.apply(x.flatten(0, 1), self.head.weight, targets.flatten(), self.cfg.vocab_size)
        if self.fused_loss and not torch.is_grad_enabled() and not torch.compiler.is_compiling():
            # evaluation: the same loss without the whole (B, T, V) logits in memory
            return chunked_head_loss(x.flatten(0, 1), self.head.weight, targets.flatten(), self.cfg.vocab_size)[0]
        logits = self.head(x)  # (B, T, padded V)
        if logits.size(-1) > self.cfg.vocab_size:
            logits[..., self.cfg.vocab_size :] = float("-inf")  # padding ids can never be predicted
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    def fused_loss_applies(self, x: torch.Tensor) -> bool:
        """Whether the training loss takes FusedHeadLoss: CPU training in fp32 or under bf16 autocast, GPU
        training under bf16 autocast, outside torch.compile."""
        dev = x.device.type
        autocast = torch.is_autocast_enabled(dev)
        return (
            self.fused_loss
            and torch.is_grad_enabled()
            and not torch.compiler.is_compiling()
            and (torch.get_autocast_dtype(dev) == torch.bfloat16 if autocast else (dev == "cpu" and x.dtype == torch.float32))
        )

    def new_cache(self, batch_size: int) -> list[KVCache]:
        p = self.pos_emb.weight
        dtype = torch.get_autocast_dtype(p.device.type) if torch.is_autocast_enabled(p.device.type) else p.dtype
        return [KVCache(batch_size, self.cfg, p.device, dtype) for _ in self.blocks]


def tensor_shapes(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor in GPT(cfg).state_dict() (a tied head under both names), read off a GPT
    built on the meta device: no memory, no initialization. What other modules need to know of the
    architecture's tensors (the memory plan, the Hugging Face converter) comes from here."""
    return dict(_meta_facts(_key(cfg))[0])


def num_params(cfg: GPTConfig) -> int:
    """Every parameter of GPT(cfg) as allocated: vocabulary padding rows included, a tied matrix once."""
    return _meta_facts(_key(cfg))[1]


def _key(cfg: GPTConfig) -> tuple:
    return tuple(sorted(cfg.to_dict().items()))


@functools.lru_cache(maxsize=64)
def _meta_facts(key: tuple) -> tuple[tuple[tuple[str, tuple[int, ...]], ...], int]:
    with torch.device("meta"):
        model = GPT(GPTConfig(**dict(key)))
    shapes = tuple((k, tuple(v.shape)) for k, v in model.state_dict(keep_vars=True).items())
    return shapes, sum(p.numel() for p in model.parameters())  # parameters() counts a tied matrix once
