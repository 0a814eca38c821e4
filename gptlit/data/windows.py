"""Sliding windows over tokens, and the train/val split.

Window i of a split with n tokens starts at i * stride: input = tokens[s : s + L],
target = tokens[s + 1 : s + L + 1]. A split holds (n - L - 1) // stride + 1 windows
when n >= L + 1, else none. Train is the first (1 - val_fraction) of the tokens,
val the rest, so no window crosses the split.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


def num_windows(n_tokens: int, max_length: int, stride: int) -> int:
    """Windows of max_length inputs (+1 target) every `stride` tokens in n_tokens tokens."""
    return (n_tokens - max_length - 1) // stride + 1 if n_tokens >= max_length + 1 else 0


def split_point(n_tokens: int, val_fraction: float) -> int:
    """Index of the first validation token."""
    return n_tokens - int(round(n_tokens * val_fraction))


class WindowDataset(Dataset):
    """Windows over `tokens`: a gptlit.data.token_cache.TokenFile (memory-mapped, opened in each worker)
    or a tensor: anything with len() and contiguous slices."""

    def __init__(self, tokens, max_length: int, stride: int):
        self.tokens, self.max_length, self.stride = tokens, max_length, stride
        self.n = num_windows(len(tokens), max_length, stride)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        s = i * self.stride
        chunk = self.tokens[s : s + self.max_length + 1]
        chunk = torch.from_numpy(chunk.astype(np.int64)) if isinstance(chunk, np.ndarray) else chunk.long()
        return chunk[:-1], chunk[1:]
