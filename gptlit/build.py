"""From a composed Hydra config to (datamodule, module, trainer, ckpt_path), and the run itself.

Every value is checked here (or by the class it configures) before any data or model work,
so a bad one ends as a one-line UserError. train.py is the command-line front.
"""

from __future__ import annotations

import sys

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Checkpoint, LearningRateMonitor, ProgressBar
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf

from gptlit import memory
from gptlit.callbacks import SampleText
from gptlit.checkpoint_callbacks import AtomicCheckpointIO
from gptlit.checkpoints import model_for_run, preset_label
from gptlit.config import validate_optim
from gptlit.data import GPTDataModule
from gptlit.errors import UserError, exit_on_user_error
from gptlit.hf import load_weights
from gptlit.lit_module import GPTLitModule
from gptlit.resume import setup_exact_resume
from gptlit.trainer_args import check_trainer_args
from gptlit.trackers import prepare_loggers


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
    """hydra.utils.instantiate, but a UserError raised inside surfaces as itself."""
    from hydra.errors import InstantiationException

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def make_trainer(tcfg: dict, **kwargs) -> L.Trainer:
    """The Trainer; an argument Lightning refuses that check_trainer_args let through becomes a one-line UserError."""
    from hydra.errors import InstantiationException

    try:
        return make(tcfg, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__ or e
        first = next((line.strip() for line in str(cause).splitlines() if line.strip()), type(cause).__name__)
        raise UserError(f"trainer: {first} (Lightning refused a trainer.* value; see conf/trainer/default.yaml)") from None


def instantiate_dict(node, kind: str) -> list:
    """Instantiate each non-null `_target_` entry of a config dict (callbacks, loggers)."""
    out = []
    for key, conf in (node or {}).items():
        if conf is None:
            continue
        if "_target_" not in conf:
            raise UserError(f"{kind}.{key} has no _target_: give a class path or set {kind}.{key}=null")
        out.append(make(conf))
    return out


def val_interval(tcfg: dict, batches_per_epoch: int, micro_batches: int = 1):
    """An integer val_check_interval, capped at one epoch and at max_steps, so every run validates.

    The user's value counts batches of data.batch_size; with micro-batches the loader yields
    `micro_batches` per batch, so the interval Lightning gets is that many times larger."""
    v = tcfg.get("val_check_interval")
    cap = batches_per_epoch
    if (tcfg.get("max_steps") or -1) > 0:
        cap = min(cap, tcfg["max_steps"] * int(tcfg.get("accumulate_grad_batches") or 1))
    if v is None:  # each epoch, or at max_steps if that comes first
        return cap if cap < batches_per_epoch else None
    if isinstance(v, float):
        return v
    if v < 1:
        raise UserError(f"trainer.val_check_interval={v} must be >= 1 batches (or a fraction like 0.5)")
    return max(1, min(v * micro_batches, cap))


def plan_training_memory(cfg: DictConfig, model_cfg, dm: GPTDataModule, tcfg: dict) -> memory.MicroBatchPlan:
    """gptlit.memory's micro-batch plan for this run (raises UserError when one sample does not fit)."""
    devices, nodes = tcfg.get("devices", 1), int(tcfg.get("num_nodes") or 1)
    local = devices if isinstance(devices, int) and devices > 0 else 1
    return memory.plan_for_training(
        model_cfg, str(cfg.model.get("name", "custom")), dm.batch_size, dm.max_length, dm.micro_batch_size,
        tcfg["precision"], str(tcfg.get("accelerator", "auto")), processes_per_machine=local,
        fused_loss=not cfg.get("compile", False), world_size=local * nodes,
    )


def build(cfg: DictConfig):
    """Validate the config and build (datamodule, module, trainer, ckpt_path). Raises UserError before any training."""
    task = cfg.get("task", "train")
    if task not in ("train", "validate", "prepare"):
        raise UserError(f"task={cfg.task} is unknown: use task=train, task=validate or task=prepare")
    tcfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    tcfg["precision"] = resolve_precision(tcfg.get("precision"), str(tcfg.get("accelerator", "auto")))
    check_trainer_args(tcfg)  # accelerator, precision, types: before the corpus is read or the model built
    if tcfg.get("gradient_clip_val"):
        raise UserError(
            f"trainer.gradient_clip_val={tcfg['gradient_clip_val']}: use optim.grad_clip instead "
            f"(it also works with fused AdamW)"
        )
    # the model config, from the config alone or from the files it names (checkpoint, pretrained weights)
    run_model = model_for_run(cfg)
    model_cfg, ckpt_path, init_state = run_model.config, run_model.ckpt_path, run_model.init_state
    if run_model.source:  # write it back, so ${model.context_length} (data.max_length's default) follows the files
        for k, v in model_cfg.to_dict().items():
            cfg.model[k] = v
        if "name" in cfg.model:  # shown in the run's log
            cfg.model.name = preset_label(model_cfg, run_model.source)
    optim = validate_optim(_plain(cfg.optim))
    sampling = _plain(cfg.sampling)
    sampler = SampleText(**sampling)  # validates temperature, top_k, top_p

    if cfg.data.max_length > model_cfg.context_length:
        raise UserError(
            f"data.max_length={cfg.data.max_length} exceeds model.context_length={model_cfg.context_length}; "
            f"lower data.max_length or raise model.context_length"
        )
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True, verbose=False)

    dm: GPTDataModule = make(cfg.data, val_all=task == "validate")  # validate: the whole corpus
    dm.prepare_wait_s = cfg.get("dist_timeout_s")  # a rank waiting for another's token file gives up after it
    dm.prepare_data()
    dm.setup("fit")  # tokenize now: a corpus too short fails before the model is built
    rank_zero_info(dm.summary())

    micro = 1
    if task == "train":  # data.batch_size per optimizer step, in micro-batches that fit (checked before the model exists)
        dm.memory_plan = plan = plan_training_memory(cfg, model_cfg, dm, tcfg)
        rank_zero_info(plan.line())
        dm.loader_batch_size, micro = plan.micro_batch_size, plan.accumulate
        tcfg["accumulate_grad_batches"] = int(tcfg.get("accumulate_grad_batches") or 1) * micro

    module = GPTLitModule(model=model_cfg.to_dict(), optim=optim, compile=bool(cfg.get("compile", False)))
    if init_state is not None:
        load_weights(module.model, init_state)
    rank_zero_info(f"model: {cfg.model.get('name', 'custom')}, {module.model.num_params():,} parameters")

    callbacks = instantiate_dict(cfg.get("callbacks"), "callbacks")
    if sampler.every_n_steps:
        callbacks.append(sampler)
    prepare_loggers(cfg.get("logger"))  # logger=wandb without wandb: one line saying what to install
    loggers = instantiate_dict(cfg.get("logger"), "logger")

    tcfg["val_check_interval"] = val_interval(tcfg, len(dm.train_dataloader()), micro)
    if tcfg.get("enable_progress_bar") is False:  # one flag is enough: drop the configured bar callback too
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if not loggers:  # logger=null: nothing to log the learning rate to (Lightning would refuse the monitor)
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    # no checkpoint callback configured: no checkpoints (Lightning would otherwise add its own)
    tcfg["enable_checkpointing"] = any(isinstance(c, Checkpoint) for c in callbacks)
    trainer: L.Trainer = make_trainer(tcfg, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()])
    if task == "train":  # the data order and RNG states that make a resume exact (gptlit/resume.py)
        setup_exact_resume(dm, trainer, cfg.get("seed"), ckpt_path, bool(cfg.get("resume_inexact", False)))
    rank_zero_info(f"precision: {tcfg['precision']}, output: {cfg.paths.output_dir}")
    return dm, module, trainer, ckpt_path


def prepare(cfg: DictConfig) -> dict:
    """task=prepare: tokenize the corpus into the token cache (or find it there) and say where it is."""
    dm: GPTDataModule = make(cfg.data)
    got = dm.prepare_tokens()
    how = "tokenized in" if got.built else "already in the cache; checked in"
    docs = f"{got.n_documents:,} document{'s' if got.n_documents != 1 else ''}"
    print(f"token file: {got.path}\ntokens: {got.n_tokens:,} ({docs})\n{how} {got.seconds:.1f} s")
    return {}


def run(cfg: DictConfig) -> dict:
    """Train (or validate) as the config says; returns the final metrics."""
    if cfg.get("task", "train") == "prepare":
        return prepare(cfg)
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


@exit_on_user_error()
def main(cfg: DictConfig) -> dict | None:
    """Entry point used by train.py: a bad value ends with one line on stderr and exit code 2."""
    _quiet_logs()
    try:
        return run(cfg)
    except UserError:
        raise
    except Exception as e:  # another node gone: one line that says how to resume, not a traceback
        from gptlit.launch_env import lost_peer_message

        msg = lost_peer_message(e, cfg.paths.output_dir)
        if msg is None:
            raise
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(1)
