"""A run resolved once: the composed Hydra config (+ the checkpoint or pretrained weights it names, and the
machine) -> a typed RunPlan, which gptlit.run.build builds without looking at the config again.

  resolve(cfg)   every value checked that can be checked before the corpus is read, in this order: the task,
                 the `trainer.*` values (precision resolved), compile, keep_freed_memory, the model config
                 (from the files it names: gptlit.run.model_source, passed in), `optim.*`, `sampling.*`, data.max_length,
                 `data.*`, the memory plan (task=train: plan_memory), the loggers' packages
  RunPlan        what a run is: task, GPTConfig, OptimConfig, sampling, data node, Lightning's trainer
                 arguments, callbacks and loggers nodes, paths, resume source, seed, the tokenizer
  after_rollback the plan that goes on from a loss guard's rollback (gptlit.training.guard.GuardRollback)
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from gptlit.core.errors import UserError
from gptlit.data.config import DataConfig
from gptlit.model.config import GPTConfig
from gptlit.model.tokenizer import Tokenizer
from gptlit.training import memory
from gptlit.training.callbacks.sampling import SampleText
from gptlit.training.limits import resolve_max_epochs
from gptlit.training.optim import OptimConfig
from gptlit.run.trackers import prepare_loggers
from gptlit.run.trainer_args import check_trainer_args, cpu_processes_warning

TASKS = ("train", "validate", "prepare")


@dataclass(frozen=True)
class RunPlan:
    """A run, resolved and checked (see resolve). Built by gptlit.run.build.build; a rollback replaces fields."""

    task: str  # train | validate | prepare
    model: GPTConfig | None  # checked once, here (None for task=prepare)
    model_label: str  # how the log names it: the preset, or `<preset> from <file>`
    optim: OptimConfig | None
    sampling: dict  # SampleText's settings (the `sampling` group), checked
    data: dict  # the `data` node, resolved (its _target_ makes the GPTDataModule)
    trainer: dict  # Lightning's Trainer arguments: precision and max_epochs resolved, gradient_clip_val refused
    callbacks: dict = field(default_factory=dict)  # the `callbacks` nodes, built last (after the corpus is read)
    loggers: dict = field(default_factory=dict)  # the `logger` nodes
    compile: bool = False
    compile_how: str = ""  # why compile is on: "compile=auto on CUDA" or "compile=true"
    keep_freed_memory: bool = True
    output_dir: str = "."
    ckpt_path: str | None = None  # the checkpoint Lightning resumes from (train) or validates (task=validate)
    init_state: dict | None = None  # pretrained weights loaded before training (model.init_from)
    resume_inexact: bool = False
    seed: int | None = None
    dist_timeout_s: float | None = None
    # a Tokenizer (gpt2, file, a checkpoint's or the weights'), or the `tokenizer` group's settings of a
    # tokenizer=bpe still to be trained on the corpus (gptlit.run.build.run_tokenizer)
    tokenizer: Tokenizer | dict | None = None
    device_type: str = "cpu"  # what the accelerator is: cpu | cuda | mps (gptlit.training.memory.device_type_for)
    # task=train: data.batch_size per optimizer step in micro-batches that fit this machine (plan_memory)
    micro_batches: memory.MicroBatchPlan | None = None
    notes: tuple[str, ...] = ()  # warnings printed when the run is built (cpu_processes_warning)

    @property
    def precision(self) -> str:
        return str(self.trainer["precision"])

    @property
    def accelerator(self) -> str:
        return str(self.trainer.get("accelerator", "auto"))

    def model_line(self, num_params: int) -> str:
        return f"model: {self.model_label}, {num_params:,} parameters"

    def compile_line(self) -> str | None:
        if not self.compile:
            return None
        return (f"compile: on ({self.compile_how}); the first steps compile the model and are "
                f"left out of the step time and train/tokens_per_sec")

    def precision_line(self) -> str:
        return f"precision: {self.precision}, output: {self.output_dir}"

    def after_rollback(self, ckpt_path: str, skip_steps, rollbacks: int) -> "RunPlan":
        """The run going on from a loss guard's rollback: resume from its good checkpoint, with its skips."""
        guard = {**self.callbacks.get("guard", {}), "skip_steps": list(skip_steps), "rollbacks": rollbacks}
        return dataclasses.replace(self, ckpt_path=ckpt_path, callbacks={**self.callbacks, "guard": guard})


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


def plain(node):
    """A Hydra node as plain Python (resolved); None as it is."""
    return OmegaConf.to_container(node, resolve=True) if node is not None else None


def resolve(cfg: DictConfig, model_for_run) -> RunPlan:
    """The composed train config -> a checked RunPlan. Raises UserError before anything is read or built.
    model_for_run: cfg -> the model the run starts from (gptlit.run.model_source.model_for_run: it reads the
    checkpoint or pretrained weights the config names), called after the trainer values are checked."""
    task = cfg.get("task", "train")
    if task not in TASKS:
        raise UserError(f"task={cfg.task} is unknown: use task=train, task=validate or task=prepare")
    if task == "prepare":  # only the corpus and its tokenizer
        tokenizer = plain(cfg.get("tokenizer"))  # its settings (None: gpt2), made into a Tokenizer by gptlit.run.build
        return RunPlan(task=task, model=None, model_label="", optim=None, sampling={}, data=plain(cfg.data),
                       trainer={}, output_dir=str(cfg.paths.output_dir), tokenizer=tokenizer)
    tcfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    accelerator = str(tcfg.get("accelerator", "auto"))
    tcfg["precision"] = resolve_precision(tcfg.get("precision"), accelerator)
    check_trainer_args(tcfg)  # accelerator, precision, types: before the corpus is read or the model built
    tcfg["max_epochs"] = resolve_max_epochs(tcfg.get("max_epochs"), tcfg.get("max_steps"))  # max_steps alone: no epoch limit
    compiled = resolve_compile(cfg.get("compile", "auto"), accelerator)
    device_type = memory.device_type_for(accelerator)
    note = cpu_processes_warning(tcfg, device_type)
    keep = cfg.get("keep_freed_memory", True)
    if not isinstance(keep, bool):
        raise UserError(f"keep_freed_memory={keep} is not a choice: use keep_freed_memory=true or keep_freed_memory=false")
    if tcfg.get("gradient_clip_val"):
        raise UserError(
            f"trainer.gradient_clip_val={tcfg['gradient_clip_val']}: use optim.grad_clip instead "
            f"(it also works with fused AdamW)"
        )
    # the model config, from the config alone or from the files it names (checkpoint, pretrained weights)
    run_model = model_for_run(cfg)
    model_cfg, label = run_model.config, run_model.label
    optim = OptimConfig.of(plain(cfg.optim))
    sampling = dict(plain(cfg.sampling))
    SampleText(**sampling)  # checks temperature, top_k, top_p

    data = data_node(cfg, model_cfg)
    if data["max_length"] > model_cfg.context_length:
        raise UserError(
            f"data.max_length={data['max_length']} exceeds model.context_length={model_cfg.context_length}; "
            f"lower data.max_length or raise model.context_length"
        )
    mem = plan_memory(model_cfg, label, data, tcfg, compiled) if task == "train" else None
    loggers = plain(cfg.get("logger")) or {}
    prepare_loggers(loggers)  # logger=wandb without wandb: one line saying what to install
    return RunPlan(
        task=task, model=model_cfg, model_label=label, optim=optim, sampling=sampling, data=data, trainer=tcfg,
        callbacks=plain(cfg.get("callbacks")) or {}, loggers=loggers,
        compile=compiled, compile_how="compile=auto on CUDA" if cfg.get("compile", "auto") in (None, "auto") else "compile=true",
        keep_freed_memory=keep, output_dir=str(cfg.paths.output_dir), ckpt_path=run_model.ckpt_path,
        init_state=run_model.init_state, resume_inexact=bool(cfg.get("resume_inexact", False)), seed=cfg.get("seed"),
        dist_timeout_s=cfg.get("dist_timeout_s"), tokenizer=run_model.tokenizer, device_type=device_type,
        notes=(note,) if note and task != "prepare" else (), micro_batches=mem,
    )


def plan_memory(model_cfg: GPTConfig, label: str, data: dict, tcfg: dict, compiled: bool) -> memory.MicroBatchPlan:
    """gptlit.training.memory's micro-batch plan for a training run, made before the corpus is read (it needs only
    the model, the data settings and the machine): raises UserError when one sample does not fit."""
    dc = DataConfig.of(**{k: v for k, v in data.items() if k != "_target_"})
    devices, nodes = tcfg.get("devices", 1), int(tcfg.get("num_nodes") or 1)
    local = devices if isinstance(devices, int) and devices > 0 else 1
    return memory.plan_for_training(
        model_cfg, label, dc.batch_size, dc.max_length, dc.micro_batch_size, str(tcfg["precision"]),
        str(tcfg.get("accelerator", "auto")), processes_per_machine=local, fused_loss=not compiled,
        world_size=local * nodes, compiled=compiled,
    )


def data_node(cfg: DictConfig, model_cfg: GPTConfig) -> dict:
    """The `data` node resolved, with ${model.context_length} (data.max_length's default) following the model the
    run has, which a checkpoint or pretrained weights may have changed."""
    if cfg.model.get("context_length") == model_cfg.context_length:
        return plain(cfg.data)
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.model.context_length = model_cfg.context_length
    return plain(cfg.data)
