"""A RunPlan (gptlit.run.plan) built: (datamodule, module, trainer, ckpt_path). Reads the plan only.

A bad value ends as a one-line UserError, raised by gptlit.run.plan.resolve or by the class it configures,
before any training. The order: the task, the `trainer.*` values, the model config, `optim.*`, `sampling.*`,
`data.*`, the memory plan (micro-batches that fit) and the loggers' packages (logger=wandb without wandb) are
checked while the plan is resolved, before the corpus is read; the corpus is then tokenized (or found in the token
cache: a corpus too short fails there) before the model is built; the callbacks and loggers are built last, so
a bad `callbacks.*` or `logger.*` value fails after tokenizing. gptlit.run.runner resolves the plan (gptlit.run.plan.resolve) and runs
what build returns; gptlit.run.runner.build_run does both steps for tests and benchmarks.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Checkpoint, LearningRateMonitor, ProgressBar
from lightning.pytorch.utilities import rank_zero_info

from gptlit.training import memory
from gptlit.training.callbacks.progress import ProgressLog
from gptlit.training.callbacks.sampling import SampleText
from gptlit.training.checkpointing import AtomicCheckpointIO
from gptlit.core.files import atomic_write
from gptlit.interop.checkpoints import load_checkpoint
from gptlit.model.tokenizer import Tokenizer
from gptlit.data.datamodule import GPTDataModule
from gptlit.data.tokenizer_cache import compression_line, resolve as resolve_tokenizer
from gptlit.core.errors import UserError
from gptlit.interop.hf import load_weights
from gptlit.training.lit_module import GPTLitModule
from gptlit.training.resume import setup_exact_resume
from gptlit.run.search.trial import trial_pruning_callback


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


def val_interval(tcfg: dict, batches_per_epoch: int):
    """trainer.val_check_interval as Lightning gets it (and check_val_every_n_epoch, set in tcfg).

    An integer N counts optimizer steps across epochs, as samples (sampling.every_n_steps), step
    checkpoints and EvalTask do: validation at global steps N, 2N, ... whatever the epoch, in a run budgeted
    in steps or in epochs and in a resumed one. Lightning counts it across epochs with
    check_val_every_n_epoch=None, in loader batches: with accumulation (data.batch_size in micro-batches,
    trainer.accumulate_grad_batches) it gets N x the batches of one step. Capped at the run's length
    (max_steps, max_epochs), so every run validates at least once. A fraction of an epoch, and null (each
    epoch, or at max_steps if that comes first), count within each epoch."""
    v = tcfg.get("val_check_interval")
    accumulate = int(tcfg.get("accumulate_grad_batches") or 1)
    steps, epochs = tcfg.get("max_steps") or -1, tcfg.get("max_epochs")
    if v is None:  # each epoch, or at max_steps if that comes first
        cap = min(batches_per_epoch, steps * accumulate) if steps > 0 else batches_per_epoch
        return cap if cap < batches_per_epoch else None
    if isinstance(v, float):
        return v
    if v < 1:
        raise UserError(f"trainer.val_check_interval={v} must be >= 1 optimizer steps (or a fraction of an epoch like 0.5)")
    every = tcfg.get("check_val_every_n_epoch")
    if every not in (None, 1):
        raise UserError(f"trainer.check_val_every_n_epoch={every} applies to a val_check_interval that is a fraction "
                        f"of an epoch or null; trainer.val_check_interval={v} counts optimizer steps across epochs: "
                        f"drop one of them")
    tcfg["check_val_every_n_epoch"] = None  # Lightning: count val_check_interval's batches across epochs
    total = [n for n in (steps * accumulate if steps > 0 else None,
                         epochs * batches_per_epoch if epochs is not None and epochs > 0 else None) if n]
    return max(1, min([v * accumulate, *total]))


def build(plan):
    """Build (datamodule, module, trainer, ckpt_path) from a gptlit.run.plan.RunPlan (this module reads nothing
    else, and does not import the plan's module: the runner holds both). Raises UserError before any training."""
    task, tcfg = plan.task, dict(plan.trainer)
    for line in plan.notes:
        rank_zero_info(line)
    if plan.device_type == "cpu":
        if plan.keep_freed_memory:
            memory.keep_freed_memory()  # steps reuse freed memory instead of faulting it in again
        elif memory.freed_memory_kept():  # an earlier job of this sweep, in this process: mallopt stays
            rank_zero_info("warning: keep_freed_memory=false has no effect in this process: an earlier run in it (a sweep's "
                           "job) set keep_freed_memory=true, which lasts until the process ends; compare the two "
                           "in separate commands (benchmarks/freed_memory.py does)")
    model_cfg = plan.model
    if plan.seed is not None:
        L.seed_everything(plan.seed, workers=True, verbose=False)

    dm = data_for(plan)
    tokenizer = dm.tokenizer
    sampler = SampleText(**plan.sampling)  # checked in the plan already
    dm.prepare_data()
    dm.setup("fit")  # tokenize now: a corpus too short fails before the model is built
    resume_from = load_checkpoint(plan.ckpt_path) if task == "train" and plan.ckpt_path else None  # memory-mapped
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise UserError(f"model.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size:,} "
                        f"ids ({tokenizer.describe()}); drop the model.vocab_size override (it follows the tokenizer)")
    rank_zero_info(compression_line(tokenizer, dm.corpus(), dm.config.val_fraction))
    rank_zero_info(dm.summary())

    if plan.micro_batches is not None:  # task=train: data.batch_size per optimizer step, in micro-batches that fit
        rank_zero_info(plan.micro_batches.line())
        dm.set_plan(micro_batch_size=plan.micro_batches.micro_batch_size)
        tcfg["accumulate_grad_batches"] = int(tcfg.get("accumulate_grad_batches") or 1) * plan.micro_batches.accumulate
    batches_per_epoch = len(dm.train_dataloader())  # loader batches (micro-batches) of one epoch, for val_interval

    module = GPTLitModule(model=model_cfg, optim=plan.optim, compile=plan.compile, tokenizer=tokenizer)
    if plan.compile_line():
        rank_zero_info(plan.compile_line())
    if plan.init_state is not None:
        load_weights(module.model, plan.init_state)
    rank_zero_info(plan.model_line(module.model.num_params()))

    callbacks = instantiate_dict(plan.callbacks, "callbacks")
    loggers = instantiate_dict(plan.loggers, "logger")
    tcfg["val_check_interval"] = val_interval(tcfg, batches_per_epoch)
    if sampler.every_n_steps:
        callbacks.append(sampler)
    pruning = trial_pruning_callback()  # a trial of hparams_search=optuna: report val/loss, stop when hopeless
    if pruning is not None:
        callbacks.append(pruning)

    plain = next((c for c in callbacks if isinstance(c, ProgressLog)), None)
    if plain is not None and plain.active:  # output to a file or pipe: plain lines instead of the bar
        tcfg["enable_progress_bar"] = False
    else:
        callbacks = [c for c in callbacks if not isinstance(c, ProgressLog)]
    if tcfg.get("enable_progress_bar") is False:  # one flag is enough: drop the configured bar callback too
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if not loggers:  # logger=null: nothing to log the learning rate to (Lightning would refuse the monitor)
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    # no checkpoint callback configured: no checkpoints (Lightning would otherwise add its own)
    tcfg["enable_checkpointing"] = any(isinstance(c, Checkpoint) for c in callbacks)
    trainer: L.Trainer = make_trainer(tcfg, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()])
    if task == "train":  # the data order and RNG states that make a resume exact (gptlit/training/resume.py)
        setup_exact_resume(dm, trainer, plan.seed, plan.ckpt_path, plan.resume_inexact, resume_from)
    if task == "train" and trainer.is_global_zero and tokenizer.kind != "gpt2":
        # a copy for the user and other tools: every checkpoint holds the tokenizer itself
        Path(plan.output_dir).mkdir(parents=True, exist_ok=True)
        atomic_write(Path(plan.output_dir) / "tokenizer.json", tokenizer.hf_json())
    rank_zero_info(plan.precision_line())
    return dm, module, trainer, plan.ckpt_path


def prepare(plan) -> dict:
    """task=prepare: tokenize the corpus into the token cache (or find it there) and say where it is."""
    dm = data_for(plan)
    got = dm.prepare_tokens()
    how = "tokenized in" if got.built else "already in the cache; checked in"
    docs = f"{got.n_documents:,} document{'s' if got.n_documents != 1 else ''}"
    print(f"token file: {got.path}\ntokens: {got.n_tokens:,} ({docs})\n{how} {got.seconds:.1f} s")
    return {}


def data_for(plan) -> GPTDataModule:
    """The run's datamodule, given the run's tokenizer (dm.tokenizer); nothing read yet but what tokenizer=bpe
    trains on (once; cached).
    task=validate reads the whole corpus; a rank waiting for another's token file gives up after dist_timeout_s."""
    dm: GPTDataModule = make(plan.data, val_all=plan.task == "validate", prepare_wait_s=plan.dist_timeout_s)
    run_tokenizer(plan.tokenizer, dm)
    return dm


def run_tokenizer(tokenizer: Tokenizer | dict, dm: GPTDataModule) -> Tokenizer:
    """The run's tokenizer, given to the datamodule: a Tokenizer as it is, or a `tokenizer` group node made into
    one (tokenizer=bpe: trained on dm's corpus, or found in the cache beside its token file)."""
    if not isinstance(tokenizer, Tokenizer):
        tokenizer = resolve_tokenizer(tokenizer, dm.corpus, dm.config.val_fraction, dm.token_cache_dir())
    dm.use_tokenizer(tokenizer)
    return tokenizer
