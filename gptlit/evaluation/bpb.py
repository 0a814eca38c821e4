"""Loss, perplexity and bits per byte of a model on a corpus, over the windows training would use.

The corpus, its token cache and its windows are gptlit.data's (GPTDataModule with val_all: every
window of the whole corpus, at most data.max_val_windows of them spread evenly, as task=validate).
Every target token's loss is kept with the document it belongs to (documents are separated by
<|endoftext|>), so that the interval can resample documents.

  loss, ppl  the mean cross-entropy over every target token of those windows: task=validate's val/loss
  bpb        summed loss in nats / ln 2 / UTF-8 bytes of the target tokens. <|endoftext|> targets are
             left out of both sums: a document boundary is no byte of text (nanochat counts them the
             same way), so on a one-document corpus bpb = loss / ln 2 * tokens / bytes exactly.
Bits per byte does not depend on the tokenizer: models with other vocabularies compare on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gptlit.model.gpt import GPT
from gptlit.model.tokenizer import EOT_ID, Tokenizer, gpt2, tokenizer_of

LN2 = math.log(2)


def token_bytes(tokenizer: Tokenizer | None = None) -> np.ndarray:
    """UTF-8 bytes of each token id's text under the tokenizer (None: GPT-2's); 0 for special tokens such as
    <|endoftext|> (not text). The bytes, not the tokens, are what bits per byte divides by, so models with
    different tokenizers compare on it."""
    return (tokenizer or gpt2()).token_bytes()


def document_starts(tokens, chunk: int = 1 << 24, eot_id: int = EOT_ID) -> np.ndarray:
    """Positions of the end-of-text separators in a token file (read a chunk at a time)."""
    out = []
    for s in range(0, len(tokens), chunk):
        out.append(np.flatnonzero(np.asarray(tokens[s : s + chunk]) == eot_id) + s)
    return np.concatenate(out) if out else np.empty(0, np.int64)


@dataclass
class CorpusScores:
    """Sums over the evaluated windows; per-document and per-window arrays for the intervals."""

    nats: float  # loss summed over every target token
    tokens: int  # every target token
    text_nats: float  # loss summed over the target tokens that are text (not <|endoftext|>)
    text_tokens: int
    bytes: int  # UTF-8 bytes of those text tokens
    windows: int
    doc_nats: np.ndarray  # per document with target tokens in the windows: text tokens' loss
    doc_bytes: np.ndarray
    doc_all_nats: np.ndarray  # every target token's loss (a separator counts in the document it ends)
    doc_all_tokens: np.ndarray
    window_nats: np.ndarray  # per window, the same four
    window_bytes: np.ndarray
    window_all_nats: np.ndarray
    window_all_tokens: np.ndarray

    @property
    def loss(self) -> float:
        return self.nats / self.tokens

    @property
    def bpb(self) -> float:
        return self.text_nats / LN2 / self.bytes

    def units(self, min_documents: int = 2) -> tuple[str, dict[str, np.ndarray]]:
        """What the interval resamples: documents when there are at least `min_documents`, else windows
        (a one-document corpus; windows of one text are not independent, so that interval is narrower than it should be)."""
        if len(self.doc_all_tokens) >= min_documents:
            return "documents", dict(nats=self.doc_nats, bytes=self.doc_bytes, all_nats=self.doc_all_nats,
                                     all_tokens=self.doc_all_tokens)
        return "windows", dict(nats=self.window_nats, bytes=self.window_bytes, all_nats=self.window_all_nats,
                               all_tokens=self.window_all_tokens)


@torch.no_grad()
def score_corpus(model: GPT, dm: "gptlit.data.datamodule.GPTDataModule", batch_size: int | None = None) -> CorpusScores:
    """Per-token losses of `model` on dm's validation windows (dm built with val_all=True), `batch_size`
    windows per forward pass (None: 4). The text is tokenized with the model's tokenizer (tokenizer_of): a dm
    prepared with another one is rebuilt with the same data settings and the model's tokenizer."""
    batch_size = batch_size or 4
    tok = tokenizer_of(model)
    if dm.cached is not None and dm.tokenizer.fingerprint != tok.fingerprint:
        dm = type(dm)(dm.config, val_all=dm.val_all, prepare_wait_s=dm.prepare_wait_s)
    if dm.cached is None:
        dm.use_tokenizer(tok)
    dm.setup("validate")
    ds = dm.val_set
    idx = dm.val_indices()
    idx = list(range(len(ds))) if idx is None else idx
    eot = document_starts(ds.tokens, eot_id=tok.eot_id)
    n_docs = len(eot) + 1
    tb = torch.from_numpy(token_bytes(tok))
    was_training = model.training
    model.eval()
    device = model.pos_emb.weight.device
    doc_nats, doc_bytes, doc_tokens = np.zeros(n_docs), np.zeros(n_docs, np.int64), np.zeros(n_docs, np.int64)
    doc_all_nats, doc_all_tokens = np.zeros(n_docs), np.zeros(n_docs, np.int64)
    win_nats, win_bytes = np.zeros(len(idx)), np.zeros(len(idx), np.int64)
    win_all_nats, win_all_tokens = np.zeros(len(idx)), np.zeros(len(idx), np.int64)
    nats, tokens = 0.0, 0
    try:
        for b in range(0, len(idx), batch_size):
            ids = idx[b : b + batch_size]
            x, y = (torch.stack(t) for t in zip(*(ds[i] for i in ids)))
            logits = model(x.to(device))
            for r, i in enumerate(ids):  # one row at a time: the fp32 log-softmax of a whole batch is large
                losses = F.cross_entropy(logits[r].float(), y[r].to(device), reduction="none").double().cpu()
                nats += float(losses.sum())
                tokens += losses.numel()
                nb = tb[y[r]]
                text = nb > 0
                pos = i * ds.stride + 1 + np.arange(y.size(1))  # positions of the targets in the token file
                doc = np.searchsorted(eot, pos, side="left")  # separators before a target: its document
                lt, bt, t = losses.numpy(), nb.numpy(), text.numpy()
                np.add.at(doc_nats, doc[t], lt[t])
                np.add.at(doc_bytes, doc, bt)
                np.add.at(doc_tokens, doc[t], 1)
                np.add.at(doc_all_nats, doc, lt)
                np.add.at(doc_all_tokens, doc, 1)
                w = b + r
                win_nats[w], win_bytes[w], win_all_nats[w], win_all_tokens[w] = lt[t].sum(), bt.sum(), lt.sum(), lt.size
    finally:
        model.train(was_training)
    seen = doc_all_tokens > 0
    return CorpusScores(
        nats=nats, tokens=tokens, text_nats=float(doc_nats.sum()), text_tokens=int(doc_tokens.sum()),
        bytes=int(doc_bytes.sum()), windows=len(idx), doc_nats=doc_nats[seen], doc_bytes=doc_bytes[seen],
        doc_all_nats=doc_all_nats[seen], doc_all_tokens=doc_all_tokens[seen], window_nats=win_nats,
        window_bytes=win_bytes, window_all_nats=win_all_nats, window_all_tokens=win_all_tokens,
    )

