"""GPT-2's byte-pair encoding, built offline from ranks shipped in the package.

`tiktoken.get_encoding("gpt2")` downloads its BPE files on first use. We ship the
same 50,256 merge ranks (from the MIT-licensed openai-whisper package, whose
`gpt2.tiktoken` is identical to GPT-2's vocab.bpe/encoder.json) and add
`<|endoftext|>` = 50256, so tokenizing never touches the network.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from importlib import resources

import tiktoken

EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256
VOCAB_SIZE = 50257

# GPT-2's pre-tokenizer regex (tiktoken's r50k pattern).
_PAT_STR = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)


def _load_ranks() -> dict[bytes, int]:
    text = resources.files("gptlit").joinpath("assets/gpt2.tiktoken").read_text("ascii")
    ranks = {}
    for line in text.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> tiktoken.Encoding:
    """The GPT-2 tokenizer (vocabulary 50,257, `<|endoftext|>` = 50256)."""
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=_PAT_STR,
        mergeable_ranks=_load_ranks(),
        special_tokens={EOT_TOKEN: EOT_ID},
        explicit_n_vocab=VOCAB_SIZE,
    )


@functools.lru_cache(maxsize=1)
def fingerprint() -> str:
    """SHA-256 of what decides the ids of a text: the ranks, the pre-tokenizer regex and the special tokens."""
    h = hashlib.sha256(resources.files("gptlit").joinpath("assets/gpt2.tiktoken").read_bytes())
    h.update(f"\0{_PAT_STR}\0{EOT_TOKEN}={EOT_ID}".encode())
    return h.hexdigest()


def encode(text: str) -> list[int]:
    """Token ids of `text`; a literal `<|endoftext|>` in the text becomes id 50256."""
    return get_tokenizer().encode(text, allowed_special={EOT_TOKEN})


def decode(ids) -> str:
    return get_tokenizer().decode(list(ids))
