"""The data settings and their defaults, written here once: DataConfig (the `data` config group).

gptlit.run.config_store registers DataConfig as Hydra's `data/base` node; conf/data/*.yaml extend
it with what differs per corpus (pydocs, text, verdict), and GPTDataModule takes a DataConfig, so
`python train.py` and Python callers start from the same values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from gptlit.core.errors import UserError, check_keys
from gptlit.core.files import user_path


@dataclass
class DataConfig:
    """Every `data.*` setting. What the run decides later (the micro-batch size of the memory plan,
    the data order of a resume, how long to wait for another process's token file) is not a
    setting: GPTDataModule takes those as arguments (see GPTDataModule.set_plan)."""

    # the corpus' label: the conf/data option it came from; source=hf: the dataset, a Hugging Face Hub
    # id in the local Hugging Face cache or a local folder (load_dataset's or save_to_disk's)
    name: str = "pydocs"
    source: str = "pydocs"  # where the text comes from: pydocs | files | url | hf (gptlit.data.sources)
    path: str | None = None  # files: a file, folder or glob; url: a local copy to use instead of downloading
    url: str | None = None  # url: the address of the text
    sha256: str | None = None  # url: the text's expected SHA-256 (None: not checked)
    # tokens per window (<= model.context_length); the command line ties it to model.context_length
    max_length: int = 128
    stride: int | None = None  # tokens between window starts; None = max_length (no overlap), smaller overlaps
    val_fraction: float = 0.1  # the last 10% of the tokens are the validation split
    batch_size: int = 16  # samples per optimizer step (what the learning sees)
    # samples per forward/backward: auto = the largest divisor of batch_size that fits in memory
    # (the rest is gradient accumulation), or a number
    micro_batch_size: int | str = "auto"
    # at each validation, also the loss (dropout off) on this many batches of fixed train windows
    # (train/eval_loss); 0 = off
    eval_train_batches: int = 5
    # the training order: sampler = gptlit's own shuffle of (seed, epoch), resumable on any number of
    # processes; global = DataLoader(shuffle=True)'s, drawn from torch's global generator at each
    # epoch's start (the book's; one process only; gptlit.data.sampler.GlobalOrderSampler)
    order: str = "sampler"
    num_workers: int = 0  # DataLoader worker processes
    max_val_windows: int | None = 1000  # validate on at most this many val windows, spread evenly; None = all
    text_key: str = "text"  # record formats (.jsonl, .parquet, source=hf): the key or column holding each document's text
    # source=hf, as datasets.load_dataset takes them: the split (slices too: train[:10%]), the
    # dataset's configuration (subset) and its data files (a path or glob, a list, or split -> files)
    split: str = "train"
    config: str | None = None
    data_files: Any = None
    num_proc: int | None = None  # processes that tokenize a new corpus; None = all cores
    cache_dir: str | None = None  # where token files go; None = $GPTLIT_CACHE/tokens, else ~/.cache/gptlit/tokens
    # several nodes: False = one shared cache_dir, global rank 0 tokenizes;
    # True = each node's own, its local rank 0 tokenizes
    prepare_per_node: bool = False

    @classmethod
    def of(cls, base: "DataConfig | None" = None, **settings) -> "DataConfig":
        """`base` (default: DataConfig()) with `settings` on top, checked; stride resolved (None -> max_length),
        cache_dir made absolute."""
        fields = {f.name for f in dataclasses.fields(cls)}
        check_keys(settings, fields, "data", "a data setting")
        cfg = dataclasses.replace(base or cls(), **settings)
        if cfg.stride is None:
            cfg.stride = cfg.max_length
        if cfg.cache_dir:  # as the user typed it (~, relative to where the command ran): resolved once, here
            cfg.cache_dir = str(user_path(cfg.cache_dir))
        return cfg.validate()

    def validate(self) -> "DataConfig":
        """The checks every source shares (gptlit.data.sources checks source, path and url)."""
        for name in ("max_length", "stride", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"data.{name}={v} must be a positive integer")
        m = self.micro_batch_size
        if m != "auto" and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise UserError(f"data.micro_batch_size={m} must be auto or a positive integer")
        if not isinstance(self.eval_train_batches, int) or self.eval_train_batches < 0:
            raise UserError(f"data.eval_train_batches={self.eval_train_batches} must be >= 0 (0 turns it off)")
        if self.order not in ("sampler", "global"):
            raise UserError(f"data.order={self.order} is unknown: use sampler or global")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise UserError(f"data.num_workers={self.num_workers} must be >= 0")
        for name in ("num_proc", "max_val_windows"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise UserError(f"data.{name}={v} must be a positive integer or null")
        if not isinstance(self.text_key, str) or not self.text_key:
            raise UserError(f"data.text_key={self.text_key} must be the key or column of the text (e.g. text)")
        if not isinstance(self.val_fraction, (int, float)) or not 0.0 < self.val_fraction < 1.0:
            raise UserError(f"data.val_fraction={self.val_fraction} must be between 0 and 1 (e.g. 0.1)")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
