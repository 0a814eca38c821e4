"""From a composed Hydra config to (datamodule, module, trainer, ckpt_path).

A bad value ends as a one-line UserError, raised here or by the class it configures, before any
training. The order: the task, the `trainer.*` values, the model config, `optim.*`, `sampling.*` and
`data.max_length` are checked before the corpus is read; the corpus is then tokenized (or found in the
token cache: a corpus too short fails there), and the memory plan is made, before the model is built;
the callbacks and loggers are built last, so a bad `callbacks.*` or `logger.*` value (or logger=wandb
without wandb) fails after tokenizing. gptlit.run.runner runs what build returns.
The model config of a run comes from the config alone or from the files it names (model_for_run).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Checkpoint, LearningRateMonitor, ProgressBar
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf

from gptlit.training import memory
from gptlit.training.callbacks.progress import ProgressLog
from gptlit.training.callbacks.sampling import SampleText
from gptlit.training.checkpointing import AtomicCheckpointIO
from gptlit.core.files import atomic_write, user_path
from gptlit.interop.checkpoints import (check_resumable, checkpoint_tokenizer, find_checkpoint, load_checkpoint,
                                        saved_model_config)
from gptlit.model.tokenizer import Tokenizer, from_settings, pretrained_tokenizer
from gptlit.model.config import PRESETS, GPTConfig
from gptlit.training.optim import validate_optim
from gptlit.data.datamodule import GPTDataModule
from gptlit.data.tokenizer_cache import compression_line, resolve as resolve_tokenizer
from gptlit.core.errors import UserError
from gptlit.core.settings import plain as _plain  # build() has a local `plain`
from gptlit.interop.hf import load_weights, read_pretrained
from gptlit.training.limits import resolve_max_epochs
from gptlit.training.lit_module import GPTLitModule
from gptlit.training.resume import setup_exact_resume
from gptlit.run.trainer_args import check_trainer_args, cpu_processes_warning
from gptlit.run.search.trial import trial_pruning_callback
from gptlit.run.trackers import prepare_loggers


def cpu_has_fast_bf16() -> bool:
    """True where the CPU computes bf16 matmuls natively (AVX512-BF16 or AMX)."""
    from gptlit.core.private_api import cpu_bf16_supported

    try:
        return cpu_bf16_supported()
    except Exception:  # pragma: no cover - a torch built without oneDNN
        return False


def resolve_precision(precision, accelerator: str) -> str:
    """`auto`: bf16-mixed on GPUs with bf16 and CPUs with native bf16, 16-mixed on older GPUs, else 32-true."""
    if precision not in (None, "auto"):
        return str(precision)
    use_cuda = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    if use_cuda:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_fast_bf16() else "32-true"


def resolve_compile(value, accelerator: str) -> bool:
    """`compile=auto`: torch.compile on CUDA (nanoGPT's default; faster there), not on CPU, where it gained
    nothing measurable (docs/performance.md); true or false force it."""
    if value in (None, "auto"):
        return memory.device_type_for(str(accelerator)) == "cuda"
    if isinstance(value, bool):
        return value
    raise UserError(f"compile={value} is not a choice: use compile=auto (on CUDA only), compile=true or compile=false")


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


def plan_training_memory(cfg: DictConfig, model_cfg, dm: GPTDataModule, tcfg: dict, compiled: bool) -> memory.MicroBatchPlan:
    """gptlit.training.memory's micro-batch plan for this run (raises UserError when one sample does not fit)."""
    devices, nodes = tcfg.get("devices", 1), int(tcfg.get("num_nodes") or 1)
    local = devices if isinstance(devices, int) and devices > 0 else 1
    return memory.plan_for_training(
        model_cfg, str(cfg.model.get("name", "custom")), dm.config.batch_size, dm.config.max_length,
        dm.config.micro_batch_size,
        tcfg["precision"], str(tcfg.get("accelerator", "auto")), processes_per_machine=local,
        fused_loss=not compiled, world_size=local * nodes, compiled=compiled,
    )


def build(cfg: DictConfig):
    """Validate the config and build (datamodule, module, trainer, ckpt_path). Raises UserError before any training."""
    task = cfg.get("task", "train")
    if task not in ("train", "validate", "prepare"):
        raise UserError(f"task={cfg.task} is unknown: use task=train, task=validate or task=prepare")
    tcfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    tcfg["precision"] = resolve_precision(tcfg.get("precision"), str(tcfg.get("accelerator", "auto")))
    check_trainer_args(tcfg)  # accelerator, precision, types: before the corpus is read or the model built
    tcfg["max_epochs"] = resolve_max_epochs(tcfg.get("max_epochs"), tcfg.get("max_steps"))  # max_steps alone: no epoch limit
    compiled = resolve_compile(cfg.get("compile", "auto"), str(tcfg.get("accelerator", "auto")))
    if task != "prepare" and (line := cpu_processes_warning(tcfg, memory.device_type_for(str(tcfg.get("accelerator", "auto"))))):
        rank_zero_info(line)
    keep = cfg.get("keep_freed_memory", True)
    if not isinstance(keep, bool):
        raise UserError(f"keep_freed_memory={keep} is not a choice: use keep_freed_memory=true or keep_freed_memory=false")
    if task != "prepare" and memory.device_type_for(str(tcfg.get("accelerator", "auto"))) == "cpu":
        if keep:
            memory.keep_freed_memory()  # steps reuse freed memory instead of faulting it in again
        elif memory.freed_memory_kept():  # an earlier job of this sweep, in this process: mallopt stays
            rank_zero_info("warning: keep_freed_memory=false has no effect in this process: an earlier run in it (a sweep's "
                           "job) set keep_freed_memory=true, which lasts until the process ends; compare the two "
                           "in separate commands (benchmarks/freed_memory.py does)")
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

    # validate: the whole corpus; a rank waiting for another's token file gives up after dist_timeout_s
    dm: GPTDataModule = make(cfg.data, val_all=task == "validate", prepare_wait_s=cfg.get("dist_timeout_s"))
    tokenizer = run_tokenizer(run_model.tokenizer, dm)  # tokenizer=bpe: trained on the training text here (once; cached)
    dm.prepare_data()
    dm.setup("fit")  # tokenize now: a corpus too short fails before the model is built
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise UserError(f"model.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size:,} "
                        f"ids ({tokenizer.describe()}); drop the model.vocab_size override (it follows the tokenizer)")
    if "vocab_size" in cfg.model and cfg.model.vocab_size != model_cfg.vocab_size:
        cfg.model.vocab_size = model_cfg.vocab_size  # logged hyperparameters show the vocabulary the model has
    rank_zero_info(compression_line(tokenizer, dm.corpus(), dm.config.val_fraction))
    rank_zero_info(dm.summary())

    if task == "train":  # data.batch_size per optimizer step, in micro-batches that fit (checked before the model exists)
        plan = plan_training_memory(cfg, model_cfg, dm, tcfg, compiled)
        rank_zero_info(plan.line())
        dm.set_plan(micro_batch_size=plan.micro_batch_size)
        tcfg["accumulate_grad_batches"] = int(tcfg.get("accumulate_grad_batches") or 1) * plan.accumulate

    module = GPTLitModule(model=model_cfg.to_dict(), optim=optim, compile=compiled, tokenizer=tokenizer)
    if compiled:
        how = "compile=auto on CUDA" if cfg.get("compile", "auto") in (None, "auto") else "compile=true"
        rank_zero_info(f"compile: on ({how}); the first steps compile the model and are "
                       f"left out of the step time and train/tokens_per_sec")
    if init_state is not None:
        load_weights(module.model, init_state)
    rank_zero_info(f"model: {cfg.model.get('name', 'custom')}, {module.model.num_params():,} parameters")

    callbacks = instantiate_dict(cfg.get("callbacks"), "callbacks")
    if sampler.every_n_steps:
        callbacks.append(sampler)
    pruning = trial_pruning_callback()  # a trial of hparams_search=optuna: report val/loss, stop when hopeless
    if pruning is not None:
        callbacks.append(pruning)
    prepare_loggers(cfg.get("logger"))  # logger=wandb without wandb: one line saying what to install
    loggers = instantiate_dict(cfg.get("logger"), "logger")

    tcfg["val_check_interval"] = val_interval(tcfg, len(dm.train_dataloader()))
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
        ckpt = load_checkpoint(ckpt_path) if ckpt_path else None  # memory-mapped: reads no weights
        setup_exact_resume(dm, trainer, cfg.get("seed"), ckpt_path, bool(cfg.get("resume_inexact", False)), ckpt)
    if task == "train" and trainer.is_global_zero and tokenizer.kind != "gpt2":
        # a copy for the user and other tools: every checkpoint holds the tokenizer itself
        Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
        atomic_write(Path(cfg.paths.output_dir) / "tokenizer.json", tokenizer.hf_json())
    rank_zero_info(f"precision: {tcfg['precision']}, output: {cfg.paths.output_dir}")
    return dm, module, trainer, ckpt_path


def prepare(cfg: DictConfig) -> dict:
    """task=prepare: tokenize the corpus into the token cache (or find it there) and say where it is."""
    dm: GPTDataModule = make(cfg.data)
    run_tokenizer(tokenizer_settings(cfg), dm)
    got = dm.prepare_tokens()
    how = "tokenized in" if got.built else "already in the cache; checked in"
    docs = f"{got.n_documents:,} document{'s' if got.n_documents != 1 else ''}"
    print(f"token file: {got.path}\ntokens: {got.n_tokens:,} ({docs})\n{how} {got.seconds:.1f} s")
    return {}


def run_tokenizer(tokenizer: Tokenizer | dict, dm: GPTDataModule) -> Tokenizer:
    """The run's tokenizer, given to the datamodule: a Tokenizer as it is, or a `tokenizer` group node made into
    one (tokenizer=bpe: trained on dm's corpus, or found in the cache beside its token file)."""
    if not isinstance(tokenizer, Tokenizer):
        tokenizer = resolve_tokenizer(tokenizer, dm.corpus, dm.config.val_fraction, dm.token_cache_dir())
    dm.use_tokenizer(tokenizer)
    return tokenizer


# the model config of a run ----------------------------------------------------------------------
@dataclass
class RunModel:
    """What a training or validation run starts from (see model_for_run)."""

    config: GPTConfig
    ckpt_path: str | None = None  # the checkpoint Lightning resumes from (train) or validates (task=validate)
    init_state: dict[str, torch.Tensor] | None = None  # pretrained weights to load before training (model.init_from)
    source: str | None = None  # where the architecture came from, when not from the config alone
    # the run's tokenizer: a Tokenizer (gpt2, file, a checkpoint's), or the `tokenizer` group's settings of a
    # tokenizer=bpe still to be trained on the corpus (GPTDataModule.use_tokenizer)
    tokenizer: Tokenizer | dict | None = None


def model_for_run(cfg) -> RunModel:
    """A composed train config (Hydra node or dict with `model`, `task`, `ckpt_path`) and the files
    it names -> the checked model config, the checkpoint path and any initial weights.

      task=validate ckpt_path=X   architecture from the checkpoint (best of a run directory)
      model.init_from=X           architecture from the pretrained weights (gptlit.interop.hf reads them)
      ckpt_path=X (task=train)    resume from X (last of a run directory); its model config must match
    Model fields the user chose explicitly must agree with the weights (see reconcile).
    The tokenizer: a checkpoint's own (a different one chosen on purpose is refused, see tokenizer_for_run);
    model.init_from: the weights' (GPT-2's, or an export's tokenizer.json; another chosen on purpose is
    refused); else the `tokenizer` group's, and model.vocab_size follows it.
    """
    user = {k: cfg["model"][k] for k in cfg["model"]}
    task, ckpt = cfg.get("task", "train"), cfg.get("ckpt_path")
    settings = tokenizer_settings(cfg)
    model_cfg = GPTConfig.from_dict(user)  # the config's own values must be valid even where files replace them
    if task == "validate" and ckpt:
        path = find_checkpoint(ckpt, prefer="best", key="ckpt_path")
        merged = reconcile(user, saved_model_config(path), str(path), explicit_model_fields(user), checkpoint=True)
        return RunModel(merged, ckpt_path=str(path), source=str(path), tokenizer=tokenizer_for_run(cfg, settings, path))
    init_tok = None
    if user.get("init_from"):  # the weights read the ids of their own tokenizer (GPT-2's, or an export's)
        init_tok = pretrained_tokenizer(user_path(user["init_from"]))
        run_tok = from_settings(settings) if settings.get("kind", "gpt2") != "bpe" else None
        if tokenizer_chosen(settings) and (run_tok is None or run_tok.fingerprint != init_tok.fingerprint):
            raise UserError(
                f"model.init_from={user['init_from']} holds weights that read the ids of the tokenizer "
                f"{init_tok.describe()}, but this run has tokenizer={settings.get('kind', 'gpt2')}; drop the tokenizer "
                f"override (the weights' tokenizer is used), or drop model.init_from to train a model from scratch "
                f"with tokenizer={settings.get('kind', 'gpt2')}"
            )
    tokenizer = None if ckpt else init_tok or from_settings(settings)
    if ckpt is None and init_tok is None and settings.get("kind", "gpt2") != "gpt2":  # the vocabulary follows the tokenizer
        user["vocab_size"] = tokenizer.vocab_size if tokenizer is not None else settings["vocab_size"]
        model_cfg = GPTConfig.from_dict(user)
    init_state, source = None, None
    if user.get("init_from"):
        explicit = explicit_model_fields(user)
        src = user_path(user["init_from"])
        try:
            weights, init_state = read_pretrained(src, n_heads=user.get("n_heads") if "n_heads" in explicit else None)
        except UserError as e:
            raise UserError(f"model.init_from={user['init_from']}: {e}") from None
        model_cfg, source = reconcile(user, weights, str(src), explicit), str(src)
    path = None
    if ckpt:
        path = str(find_checkpoint(ckpt, prefer="last", key="ckpt_path"))
        tokenizer = tokenizer_for_run(cfg, settings, path)
        if tokenizer.kind != "gpt2":  # the vocabulary is the checkpoint's tokenizer's, as when it was trained
            model_cfg = dataclasses.replace(model_cfg, vocab_size=saved_model_config(path).vocab_size)
        check_resumable(path, model_cfg, ckpt)
    return RunModel(model_cfg, ckpt_path=path, init_state=init_state, source=source,
                    tokenizer=tokenizer if tokenizer is not None else settings)


def tokenizer_settings(cfg) -> dict:
    """The `tokenizer` group node as a dict (a config composed without the group: gpt2)."""
    node = cfg.get("tokenizer") if hasattr(cfg, "get") else None
    return dict(_plain(node) or {"kind": "gpt2"})


def tokenizer_chosen(settings: dict) -> bool:
    """Whether the run chose its tokenizer (tokenizer=... on the command line, or a tokenizer other than the
    default gpt2 in its config) rather than leaving it to a checkpoint."""
    if settings.get("kind", "gpt2") != "gpt2":
        return True
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return any(o.split("=", 1)[0].lstrip("+~").split(".")[0] == "tokenizer" for o in HydraConfig.get().overrides.task)
    except Exception:  # pragma: no cover - no Hydra run
        pass
    return False


def tokenizer_for_run(cfg, settings: dict, path) -> Tokenizer:
    """A run from a checkpoint reads its ids with the checkpoint's tokenizer; a tokenizer the run chose that is not
    that one is refused, naming both."""
    ckpt_tok = checkpoint_tokenizer(load_checkpoint(path), path)
    if not tokenizer_chosen(settings):
        return ckpt_tok
    kind = settings.get("kind", "gpt2")
    if kind == "bpe":
        same = ckpt_tok.kind == "bpe" and settings.get("vocab_size") == saved_model_config(path).vocab_size
        mine = f"tokenizer=bpe tokenizer.vocab_size={settings.get('vocab_size')}"
    else:
        run_tok = from_settings(settings)
        same, mine = run_tok.fingerprint == ckpt_tok.fingerprint, f"tokenizer={kind} ({run_tok.describe()})"
    if not same:
        raise UserError(
            f"ckpt_path={cfg.get('ckpt_path')} was trained with the tokenizer {ckpt_tok.describe()}, but this run has "
            f"{mine}; drop the tokenizer override (a run from a checkpoint uses the checkpoint's tokenizer) "
            f"or train a new model without ckpt_path"
        )
    return ckpt_tok


def preset_label(cfg: GPTConfig, source: str) -> str:
    """How the run's log names a model whose architecture came from `source`: `<preset or custom> from <source>`."""
    same = [n for n, p in PRESETS.items() if all(p[k] == getattr(cfg, k) for k in ("emb_dim", "n_heads", "n_layers"))]
    return f"{same[-1] if same else 'custom'} from {source}"


def explicit_model_fields(user: dict) -> dict[str, str]:
    """Model fields the user chose, each with where it was chosen; other fields may come from weights.

    A field counts as chosen when it is overridden on the command line (model.X=...), when
    the preset was picked on the command line (model=small), or when it differs from the
    preset's value (an experiment file, or overrides Hydra did not record, as with compose()).
    """
    cli, preset_picked = set(), False
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            for o in HydraConfig.get().overrides.task:
                key = o.split("=", 1)[0].lstrip("+~")
                preset_picked |= key == "model"
                if key.startswith("model."):
                    cli.add(key[len("model.") :])
    except Exception:  # pragma: no cover - no Hydra run
        pass
    name = user.get("name")
    base = {**GPTConfig().to_dict(), **PRESETS.get(name, {})}
    out = {}
    # context_length last: where a preset contradicts the weights, its shape is the mismatch to name first
    for f in sorted(GPTConfig.fields_of("arch"), key=lambda f: f == "context_length"):
        if f in cli:
            out[f] = "command line"
        elif user.get(f) != base[f]:
            out[f] = "config"
        elif preset_picked:
            out[f] = f"preset {name}"
    return out


def reconcile(user: dict, weights: GPTConfig, source: str, explicit: dict[str, str], checkpoint: bool = False) -> GPTConfig:
    """The model config for these weights: architecture from the weights, runtime and training fields from the user.

    A field the user chose (see explicit_model_fields) must agree with the weights, except
    context_length, which may be lower for pretrained weights (not for a checkpoint).
    """

    def fmt(v) -> str:
        return str(v).lower() if isinstance(v, bool) else str(v)

    match = [n for n, p in PRESETS.items() if all(p[k] == getattr(weights, k) for k in ("emb_dim", "n_heads", "n_layers"))]
    for f, origin in explicit.items():
        preset_field = f in ("emb_dim", "n_heads", "n_layers") or origin.startswith("preset")
        fix = f"use model={match[-1]} or drop the override" if match and preset_field else "drop the override"
        want, have = user.get(f), getattr(weights, f)
        if want == have or (f == "context_length" and not checkpoint and 0 < want < have):
            continue
        if f == "context_length" and not checkpoint:
            raise UserError(
                f"model.context_length={want} ({origin}) exceeds the {have} positions of the weights in {source}; "
                f"use model.context_length={have} or less"
            )
        raise UserError(f"model.{f}={fmt(want)} ({origin}) contradicts the weights in {source} ({fmt(have)}); {fix}")
    context = user["context_length"] if "context_length" in explicit else weights.context_length
    # a checkpoint's tensors hold its padded vocabulary rows; pretrained files are unpadded and take the run's padding
    pad = weights.pad_vocab_multiple if checkpoint else user.get("pad_vocab_multiple", weights.pad_vocab_multiple)
    # how a step runs is the run's choice (model.activation_checkpointing=true with model.init_from, say)
    runtime = {f: user[f] for f in GPTConfig.fields_of("runtime") if f in user}
    return dataclasses.replace(
        weights, context_length=context, drop_rate=user.get("drop_rate", weights.drop_rate), pad_vocab_multiple=pad,
        **runtime,
    ).validate()
