"""Build everything from a composed Hydra config and run it (train.py is the command-line front)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf

from gptlit.callbacks import SampleText
from gptlit.config import ConfigError, GPTConfig
from gptlit.data import GPTDataModule, resolve_path
from gptlit.module import GPTLitModule, validate_optim


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


def instantiate_dict(node, kind: str) -> list:
    """Instantiate each non-null `_target_` entry of a config dict (callbacks, loggers)."""
    out = []
    for key, conf in (node or {}).items():
        if conf is None:
            continue
        if "_target_" not in conf:
            raise ConfigError(f"{kind}.{key} has no _target_: give a class path or set {kind}.{key}=null")
        out.append(instantiate(conf))
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


def build(cfg: DictConfig):
    """Validate the config and build (datamodule, module, trainer). Raises ConfigError before any training."""
    if cfg.get("task", "train") not in ("train", "validate"):
        raise ConfigError(f"task={cfg.task} is unknown: use task=train or task=validate")
    model_cfg = GPTConfig.from_dict(_plain(cfg.model))
    optim = validate_optim(_plain(cfg.optim))
    sampling = _plain(cfg.sampling)
    sampler = SampleText(**sampling)  # validates temperature, top_k, top_p

    if cfg.data.max_length > model_cfg.context_length:
        raise ConfigError(
            f"data.max_length={cfg.data.max_length} exceeds model.context_length={model_cfg.context_length}; "
            f"lower data.max_length or raise model.context_length"
        )
    ckpt_path = check_checkpoint(cfg.ckpt_path, model_cfg) if cfg.get("ckpt_path") else None

    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True, verbose=False)

    dm: GPTDataModule = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")  # tokenize now: a corpus too short fails before the model is built
    rank_zero_info(dm.summary())

    module = GPTLitModule(model=model_cfg.to_dict(), optim=optim, compile=bool(cfg.get("compile", False)))
    rank_zero_info(f"model: {cfg.model.get('name', 'custom')}, {module.model.num_params():,} parameters")

    callbacks = instantiate_dict(cfg.get("callbacks"), "callbacks")
    if sampler.every_n_steps:
        callbacks.append(sampler)
    loggers = instantiate_dict(cfg.get("logger"), "logger")

    tcfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    tcfg["precision"] = resolve_precision(tcfg.get("precision"), str(tcfg.get("accelerator", "auto")))
    if tcfg.get("gradient_clip_val"):
        raise ConfigError(
            f"trainer.gradient_clip_val={tcfg['gradient_clip_val']}: use optim.grad_clip instead "
            f"(it also works with fused AdamW)"
        )
    trainer: L.Trainer = instantiate(tcfg, callbacks=callbacks, logger=loggers or False)
    rank_zero_info(f"precision: {tcfg['precision']}, output: {cfg.paths.output_dir}")
    return dm, module, trainer, ckpt_path


def run(cfg: DictConfig) -> dict:
    """Train (or validate) as the config says; returns the final metrics."""
    dm, module, trainer, ckpt_path = build(cfg)
    if cfg.get("task", "train") == "validate":
        trainer.validate(module, datamodule=dm, ckpt_path=ckpt_path)
    else:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and ckpt.best_model_path:
            rank_zero_info(f"best checkpoint: {ckpt.best_model_path} (val/loss {float(ckpt.best_model_score):.4f})")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    rank_zero_info("final: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()) if "/" in k))
    return metrics


def _one_log_handler():
    """Lightning adds its own console handler; under Hydra the root logger prints already."""
    import logging

    root = logging.getLogger()
    if root.handlers:
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).handlers.clear()


def main(cfg: DictConfig) -> dict | None:
    """Entry point used by train.py: a bad value ends with one line on stderr and exit code 2."""
    _one_log_handler()
    try:
        return run(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
