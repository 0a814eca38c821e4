"""Build everything from a composed Hydra config and run it (train.py is the command-line front)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Checkpoint, ProgressBar
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf

from gptlit.callbacks import SampleText
from gptlit.checkpoint_callbacks import AtomicCheckpointIO
from gptlit.config import ConfigError, GPTConfig
from gptlit.data import GPTDataModule, resolve_path
from gptlit.hf import adopt_checkpoint, adopt_pretrained, load_weights
from gptlit.module import GPTLitModule, validate_optim
from gptlit.resume import setup_exact_resume


def cpu_has_fast_bf16() -> bool:
    """True where the CPU computes bf16 matmuls natively (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # pragma: no cover
        return False


def resolve_precision(precision, accelerator: str) -> str:
    """`auto`: bf16-mixed on GPUs with bf16 and CPUs with native bf16, 16-mixed on older GPUs, else 32-true."""
    if precision not in (None, "auto"):
        return str(precision)
    use_cuda = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    if use_cuda:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_fast_bf16() else "32-true"


def _plain(node):
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def make(node, **kwargs):
    """hydra.utils.instantiate, but a ConfigError raised inside surfaces as itself."""
    from hydra.errors import InstantiationException

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def instantiate_dict(node, kind: str) -> list:
    """Instantiate each non-null `_target_` entry of a config dict (callbacks, loggers)."""
    out = []
    for key, conf in (node or {}).items():
        if conf is None:
            continue
        if "_target_" not in conf:
            raise ConfigError(f"{kind}.{key} has no _target_: give a class path or set {kind}.{key}=null")
        out.append(make(conf))
    return out


def check_checkpoint(path: str, model_cfg: GPTConfig) -> str:
    """Resolve ckpt_path and check that it is a gptlit checkpoint for this model config."""
    p = resolve_path(path)
    if p.is_dir():
        for name in ("last.ckpt", "checkpoints/last.ckpt"):
            if (p / name).is_file():
                p = p / name
                break
    if not p.is_file():
        raise ConfigError(f"ckpt_path={path}: no such checkpoint ({p}); give a .ckpt file or a run directory")
    from gptlit.checkpoint import load_checkpoint

    ckpt = load_checkpoint(p)
    saved = ckpt["hyper_parameters"]["model"]
    for k, v in model_cfg.to_dict().items():
        if k in saved and saved[k] != v:
            raise ConfigError(
                f"ckpt_path={path} was trained with model.{k}={saved[k]} but this run has model.{k}={v}; "
                f"pass model.{k}={saved[k]} (or the same model= preset) to resume"
            )
    return str(p)


def val_interval(tcfg: dict, batches_per_epoch: int):
    """An integer val_check_interval, capped at one epoch and at max_steps, so every run validates."""
    v = tcfg.get("val_check_interval")
    cap = batches_per_epoch
    if (tcfg.get("max_steps") or -1) > 0:
        cap = min(cap, tcfg["max_steps"] * int(tcfg.get("accumulate_grad_batches") or 1))
    if v is None:  # each epoch, or at max_steps if that comes first
        return cap if cap < batches_per_epoch else None
    if isinstance(v, float):
        return v
    if v < 1:
        raise ConfigError(f"trainer.val_check_interval={v} must be >= 1 batches (or a fraction like 0.5)")
    return max(1, min(v, cap))


def build(cfg: DictConfig):
    """Validate the config and build (datamodule, module, trainer). Raises ConfigError before any training."""
    task = cfg.get("task", "train")
    if task not in ("train", "validate"):
        raise ConfigError(f"task={cfg.task} is unknown: use task=train or task=validate")
    model_cfg = GPTConfig.from_dict(_plain(cfg.model))
    init_state, ckpt_path = None, None
    if task == "validate" and cfg.get("ckpt_path"):  # the model config comes from the checkpoint
        ckpt_path, model_cfg = adopt_checkpoint(cfg.model, cfg.ckpt_path)
    elif cfg.model.get("init_from"):  # pretrained weights, e.g. OpenAI's GPT-2 (docs/pretrained.md)
        model_cfg, init_state = adopt_pretrained(cfg.model, cfg.model.init_from)
    optim = validate_optim(_plain(cfg.optim))
    sampling = _plain(cfg.sampling)
    sampler = SampleText(**sampling)  # validates temperature, top_k, top_p

    if cfg.data.max_length > model_cfg.context_length:
        raise ConfigError(
            f"data.max_length={cfg.data.max_length} exceeds model.context_length={model_cfg.context_length}; "
            f"lower data.max_length or raise model.context_length"
        )
    if cfg.get("ckpt_path") and ckpt_path is None:
        ckpt_path = check_checkpoint(cfg.ckpt_path, model_cfg)

    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True, verbose=False)

    dm: GPTDataModule = make(cfg.data, val_all=task == "validate")  # validate: the whole corpus
    dm.prepare_data()
    dm.setup("fit")  # tokenize now: a corpus too short fails before the model is built
    rank_zero_info(dm.summary())

    module = GPTLitModule(model=model_cfg.to_dict(), optim=optim, compile=bool(cfg.get("compile", False)))
    if init_state is not None:
        load_weights(module.model, init_state)
    rank_zero_info(f"model: {cfg.model.get('name', 'custom')}, {module.model.num_params():,} parameters")

    callbacks = instantiate_dict(cfg.get("callbacks"), "callbacks")
    if sampler.every_n_steps:
        callbacks.append(sampler)
    loggers = instantiate_dict(cfg.get("logger"), "logger")

    tcfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    tcfg["val_check_interval"] = val_interval(tcfg, len(dm.train_dataloader()))
    tcfg["precision"] = resolve_precision(tcfg.get("precision"), str(tcfg.get("accelerator", "auto")))
    if tcfg.get("gradient_clip_val"):
        raise ConfigError(
            f"trainer.gradient_clip_val={tcfg['gradient_clip_val']}: use optim.grad_clip instead "
            f"(it also works with fused AdamW)"
        )
    if tcfg.get("enable_progress_bar") is False:  # one flag is enough: drop the configured bar callback too
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    # no checkpoint callback configured: no checkpoints (Lightning would otherwise add its own)
    tcfg["enable_checkpointing"] = any(isinstance(c, Checkpoint) for c in callbacks)
    trainer: L.Trainer = make(tcfg, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()])
    if task == "train":  # the data order and RNG states that make a resume exact (gptlit/resume.py)
        setup_exact_resume(dm, trainer, cfg.get("seed"), ckpt_path, bool(cfg.get("resume_inexact", False)))
    rank_zero_info(f"precision: {tcfg['precision']}, output: {cfg.paths.output_dir}")
    return dm, module, trainer, ckpt_path


def run(cfg: DictConfig) -> dict:
    """Train (or validate) as the config says; returns the final metrics."""
    dm, module, trainer, ckpt_path = build(cfg)
    if cfg.get("task", "train") == "validate":
        trainer.validate(module, datamodule=dm, ckpt_path=ckpt_path)
    else:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
        ckpt = next((c for c in trainer.callbacks if getattr(c, "best_model_path", "")), None)
        if ckpt is not None:
            score = f" ({ckpt.monitor} {float(ckpt.best_model_score):.4f})" if ckpt.best_model_score is not None else ""
            rank_zero_info(f"best checkpoint: {ckpt.best_model_path}{score}")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    rank_zero_info("final: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()) if "/" in k))
    return metrics


def _quiet_logs():
    """Print each message once (Lightning adds console handlers of its own; under Hydra the root
    logger prints already) and drop two messages that users cannot act on."""
    import logging
    import warnings

    if logging.getLogger().handlers:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in str(record.msg)
    )
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def main(cfg: DictConfig) -> dict | None:
    """Entry point used by train.py: a bad value ends with one line on stderr and exit code 2."""
    _quiet_logs()
    try:
        return run(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
