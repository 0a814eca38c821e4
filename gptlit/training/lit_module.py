"""The LightningModule: GPT + AdamW, logging cross-entropy, perplexity, tokens seen and throughput."""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
import warnings

import lightning as L
import torch

from gptlit.model.config import GPTConfig
from gptlit.training.optim import OptimConfig
from gptlit.model.flops import cuda_peak_flops, flops_per_token, matmul_params, mfu
from gptlit.model.gpt import GPT
from gptlit.training.resume import rng_state


COMPILE_STEPS = 2  # see GPTLitModule.compile_steps
# Lightning's advice for epoch-level metrics logged without sync_dist under DDP, for the ones gptlit reduces itself
SYNC_DIST_ADVICE = r"It is recommended to use `self\.log\('(val/loss|val/ppl|train/eval_loss|train/eval_ppl)', \.\.\., sync_dist=True\)`"
# clipping with a norm already computed (torch >= 2.6); older torch computes it again in clip_grad_norm_
_clip_with_norm = getattr(torch.nn.utils, "clip_grads_with_norm_", None)
_total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6: one fused norm of every gradient


def lr_factor(step: int, warmup: int, total: int, scheduler: str, min_ratio: float) -> float:
    """Multiplier of the base lr at optimizer step `step`: linear warmup, then constant or cosine to min_ratio."""
    if step < warmup:
        return (step + 1) / warmup
    if scheduler == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class GPTLitModule(L.LightningModule):
    """Wraps a GPT. Hyperparameters are plain dicts, so checkpoints load with weights_only=True."""

    def __init__(self, model: GPTConfig | dict, optim: OptimConfig | dict | None = None, compile: bool = False,
                 tokenizer=None):
        """model, optim: checked configs (gptlit.run.plan resolves them once); plain dicts are checked here (what
        Lightning's load_from_checkpoint passes: the saved hyperparameters). They are saved as plain dicts, so
        checkpoints load with weights_only=True.
        tokenizer: the run's (gptlit.model.tokenizer.Tokenizer; None = GPT-2's). Every checkpoint stores it
        (`checkpoint["tokenizer"]`, Tokenizer.spec: its tokenizer.json, or the name gpt2), and the model
        carries it (model.tokenizer) for the texts sampled while training."""
        super().__init__()
        if not isinstance(model, GPTConfig):
            model = GPTConfig.from_dict(model)
        if not isinstance(optim, OptimConfig):
            optim = OptimConfig.of(dict(optim or {}))
        self.save_hyperparameters({"model": model.to_dict(), "optim": optim.to_dict(), "compile": compile})
        self.model = GPT(model)
        self.model.tokenizer = tokenizer
        self.tokens_seen = 0  # training tokens over all ranks, kept in checkpoints
        self._val_sum = self._val_count = None
        self._t_last, self._window = None, 0  # tokens/s: start of the current window, tokens in it
        self._log_extras = True  # whether this step logs its metrics
        self._n_matmul = matmul_params(self.model)  # counted before any sharding; for MFU
        self._peak = None  # peak FLOP/s of the GPU (set on CUDA with a known peak)
        self._step_losses = None  # (optimizer step, losses of its micro-batches so far)
        # the micro-batches whose gradient p.grad holds since the last optimizer step: {"step", "n", "rng",
        # "tokens_seen"} as they were right after the n-th one's backward (what a Ctrl-C checkpoint keeps)
        self.accumulated: dict | None = None
        self._grad_norm = None  # this optimizer step's gradient norm, once computed (grad_norm)
        self.paused_seconds = 0.0  # time spent in clock_paused() so far (text samples)
        self.step_loss = None  # their mean: the batch's loss once the step's last micro-batch ran

    def setup(self, stage):
        # val/* and train/eval_* are summed over the ranks in on_validation_epoch_end (strategy.reduce) before
        # they are logged, so Lightning's advice to log them with sync_dist=True (a second reduction) does
        # not apply; only its message for these four names is silenced, in every process of the run
        warnings.filterwarnings("ignore", message=SYNC_DIST_ADVICE)
        if self.trainer.strategy.root_device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 for fp32 matmuls; bf16/fp16 autocast is unaffected

    def on_fit_start(self):
        self._peak = cuda_peak_flops(self.trainer.precision) if self.device.type == "cuda" else None

    def on_train_start(self):
        self._first_step = self.global_step  # a resumed run compiles again too

    @property
    def compile_steps(self) -> int:
        """Optimizer steps at the start of training that torch.compile may spend compiling (the first builds
        the graphs; the second may build them again, e.g. when a guard sees a changed value), left out of
        train/tokens_per_sec and of the step-time estimate (gptlit.training.callbacks.progress.StepTime)."""
        return COMPILE_STEPS if self.hparams.compile else 0

    def configure_model(self):
        if self.hparams.compile and not getattr(self, "_compiled", False):
            self.model.compile()  # compiles forward in place: state-dict keys keep their names
            self._compiled = True

    def forward(self, idx):
        return self.model(idx)

    @property
    def logging_step(self) -> bool:
        """Whether the current optimizer step logs its metrics: callbacks read device values back to the
        host (a wait for the GPU) only on these steps."""
        return self._log_extras

    # training -----------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.model(x, y)
        self.tokens_seen += y.numel() * self.trainer.world_size
        if self._step_losses is None or self._step_losses[0] != self.global_step:
            self._step_losses = (self.global_step, [])
        self._step_losses[1].append(loss.detach())
        self.step_loss = torch.stack(self._step_losses[1]).mean()  # a device tensor: nothing waits for it here
        # The metrics are logged only on the steps the logger writes (every trainer.log_every_n_steps) and on
        # the last, each self.log costing Python time. None is a prog_bar metric: Lightning reads those back
        # to the host (a wait for the GPU) after every batch, logged then or not; gptlit's progress bar
        # (callbacks.LogStepProgressBar) shows them, read on the steps that log. train/loss is the mean over the micro-batches of
        # this optimizer step (Lightning writes the value of the step's last one): the loss of the whole batch.
        step, n = self.global_step + 1, self.trainer.log_every_n_steps
        # the run's last step logs too (max_steps or the last batch of max_epochs): the end lines read these values
        self._log_extras = bool(n and step % n == 0) or step == self.trainer.max_steps or step >= self.trainer.estimated_stepping_batches
        if self._log_extras:
            self.log("train/loss", self.step_loss)
            self.log("train/ppl", torch.exp(self.step_loss.float()))
            self.log("train/tokens_seen", float(self.tokens_seen))
        return loss

    def backward(self, loss, *args, **kwargs):
        # A Ctrl-C during the backward waits until it and the count of the micro-batches in p.grad are both
        # done: a checkpoint written at the interrupt never holds a gradient its count does not say. (About
        # 0.13 ms a micro-batch on a CPU; nothing without gradient accumulation, where no step is partial.)
        trainer = self._attached_trainer()
        if trainer is None or int(trainer.accumulate_grad_batches or 1) < 2:
            super().backward(loss, *args, **kwargs)
            return
        with _sigint_deferred():
            super().backward(loss, *args, **kwargs)
            acc = self.accumulated
            n = acc["n"] + 1 if acc is not None and acc["step"] == self.global_step else 1
            self.accumulated = {"step": self.global_step, "n": n, "rng": rng_state(), "tokens_seen": int(self.tokens_seen)}

    def step_losses_so_far(self, n: int) -> list:
        """The losses of this optimizer step's first n micro-batches."""
        if self._step_losses is None or self._step_losses[0] != self.global_step:
            return []
        return list(self._step_losses[1][:n])

    def restore_step_losses(self, losses: list) -> None:
        """After a resume inside an accumulation: the losses of the micro-batches already done (train/loss
        is their mean with the rest)."""
        self._step_losses = (self.global_step, [v.to(self.device) for v in losses])

    def on_train_batch_end(self, outputs, batch, batch_idx):
        # tokens/s (and MFU) averaged over the batches since the last logged step
        now = time.perf_counter()
        if self.global_step - getattr(self, "_first_step", 0) < self.compile_steps:
            return  # torch.compile is still compiling: not training speed
        if self._t_last is None:  # the first batch (or the first after validation) starts the clock
            self._t_last, self._window = now, 0
            return
        self._window += batch[1].numel() * self.trainer.world_size
        stepped = self.global_step > self._step_losses[0]  # the last micro-batch of an optimizer step
        if self._log_extras and stepped:
            tps = self._window / max(now - self._t_last, 1e-9)
            self.log("train/tokens_per_sec", tps)
            if self._peak:  # model FLOPs utilization, on GPUs whose peak is known
                c = self.model.cfg
                fpt = flops_per_token(self._n_matmul, c.n_layers, c.n_heads, c.head_dim, batch[1].size(1))
                self.log("train/mfu", mfu(tps, fpt, self._peak * self.trainer.world_size))
            self._t_last, self._window = now, 0

    @contextlib.contextmanager
    def clock_paused(self):
        """Time spent inside (sampling text, say) is left out of train/tokens_per_sec (and of the plain
        progress lines' tokens/s, which read paused_seconds)."""
        t = time.perf_counter()
        try:
            yield
        finally:
            took = time.perf_counter() - t
            self.paused_seconds += took
            if self._t_last is not None:
                self._t_last += took

    def _attached_trainer(self):
        """The Trainer, or None for a module used on its own (Lightning's `trainer` raises when there is none)."""
        try:
            return self.trainer
        except RuntimeError:
            return None

    def grad_norm(self) -> torch.Tensor:
        """The global L2 norm of this optimizer step's gradients before clipping, a device tensor (nothing
        waits for it). Computed once a step: the loss guard (callbacks.guard, whose hook runs first) and
        clipping both read it, and each computation reads every gradient again (on the CPU, nano on 1 x 16
        tokens: about 1.5 ms a step)."""
        if self._grad_norm is None:
            trainer = self._attached_trainer()
            root = trainer.model if trainer is not None else None
            if hasattr(root, "clip_grad_norm_"):
                # FSDP: each rank holds a shard of the gradients, whose own norm is not the model's (PyTorch's
                # FSDP docs, "Gradient Clipping"). The root module's clip_grad_norm_ reduces the shards' norms
                # over the ranks (hybrid sharding included); max_norm=inf leaves the gradients as they are.
                self._grad_norm = root.clip_grad_norm_(float("inf"))
            else:
                grads = [p.grad for p in self.parameters() if p.grad is not None]
                if not grads:
                    self._grad_norm = torch.zeros((), device=self.device)
                elif _total_norm is not None:
                    self._grad_norm = _total_norm(grads, 2.0).float()
                else:  # torch < 2.6
                    self._grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g).float() for g in grads]))
        return self._grad_norm

    def on_before_optimizer_step(self, optimizer):
        # Clip here rather than through Trainer(gradient_clip_val): it works with fused AdamW and any precision.
        clip = self.hparams.optim["grad_clip"]
        if clip:
            if _clip_with_norm is not None:
                norm = self.grad_norm()  # under FSDP the model's norm: every rank scales its shard alike
                _clip_with_norm(self.parameters(), clip, norm)
            elif hasattr(getattr(self._attached_trainer(), "model", None), "clip_grad_norm_"):  # FSDP, torch < 2.6
                norm = self.trainer.model.clip_grad_norm_(clip)
            else:
                norm = torch.nn.utils.clip_grad_norm_(self.parameters(), clip)
            if self._log_extras:
                self.log("train/grad_norm", norm)
        self._grad_norm = None  # the next step's gradients are new

    # validation ---------------------------------------------------------------------------------
    def on_validation_epoch_start(self):
        # token-weighted loss sums and token counts per val loader: [val windows, train windows in eval mode]
        self._val_sum = torch.zeros(2, device=self.device, dtype=torch.float64)
        self._val_count = torch.zeros(2, device=self.device, dtype=torch.float64)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        loss = self.model(x, y)
        self._val_sum[dataloader_idx] += loss.double() * y.numel()
        self._val_count[dataloader_idx] += y.numel()
        return loss

    def on_validation_epoch_end(self):
        total = self.trainer.strategy.reduce(self._val_sum, reduce_op="sum")
        count = self.trainer.strategy.reduce(self._val_count, reduce_op="sum")
        loss = (total / count.clamp_min(1)).float()  # token-weighted mean over every evaluated batch
        self.log("val/loss", loss[0], prog_bar=True, sync_dist=False)
        self.log("val/ppl", torch.exp(loss[0]), prog_bar=True, sync_dist=False)
        if count[1] > 0:  # the same train windows, dropout off: comparable with val/loss (the book's train loss)
            self.log("train/eval_loss", loss[1], prog_bar=True, sync_dist=False)
            self.log("train/eval_ppl", torch.exp(loss[1]), sync_dist=False)
        self._t_last = None  # do not count validation time as a training step

    # optimizer ----------------------------------------------------------------------------------
    def configure_optimizers(self):
        o = self.hparams.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        if o.get("decay_all"):  # every parameter decays, as the book's AdamW(model.parameters()) does
            groups = [{"params": params, "weight_decay": o["weight_decay"]}]
        else:  # matrices (linear and embedding weights) decay; biases and LayerNorm parameters never
            groups = [
                {"params": [p for p in params if p.dim() >= 2], "weight_decay": o["weight_decay"]},
                {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
            ]
        fused = o["fused"] if o["fused"] is not None else self.device.type in ("cuda", "cpu")
        opt = torch.optim.AdamW(
            groups, lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"], **({"fused": True} if fused else {})
        )
        if o["scheduler"] == "constant" and not o["warmup_steps"]:
            return opt
        total = int(self.trainer.estimated_stepping_batches) if self._attached_trainer() is not None else 0
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, o["warmup_steps"], total, o["scheduler"], o["min_lr_ratio"])
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # checkpoints --------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint):
        checkpoint["gptlit"] = {"tokens_seen": int(self.tokens_seen), "format": 1}
        checkpoint["tokenizer"] = self.tokenizer_spec

    @property
    def tokenizer_spec(self) -> dict:
        from gptlit.model.tokenizer import tokenizer_of

        return _spec(tokenizer_of(self.model))

    def on_load_checkpoint(self, checkpoint):
        self.tokens_seen = int(checkpoint.get("gptlit", {}).get("tokens_seen", 0))


_SPECS: dict = {}


def _spec(tokenizer) -> dict:
    """tokenizer.spec(), computed once per tokenizer (a trained BPE's is its whole tokenizer.json)."""
    key = id(tokenizer)
    if key not in _SPECS:
        _SPECS.clear()
        _SPECS[key] = (tokenizer, tokenizer.spec())
    return _SPECS[key][1]


@contextlib.contextmanager
def _sigint_deferred():
    """SIGINT (Ctrl-C) held back inside the block and delivered right after it (in the main thread only,
    where Python handles signals; elsewhere nothing changes)."""
    prev = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if not callable(prev):
        yield
        return
    got = []
    signal.signal(signal.SIGINT, lambda signum, frame: got.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, prev)
    if got:
        prev(signal.SIGINT, got[0])
