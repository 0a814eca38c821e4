"""trainer.* values checked before any work, against lightning.pytorch.Trainer's own signature.

Lightning would refuse a wrong value only when the Trainer is built, after the corpus is
tokenized and the model built, and Hydra would wrap its message in a multi-line block. Here each
value is checked against the type annotation of the Trainer argument it sets (public API:
inspect.signature), so `trainer.precision=bf17` or `trainer.max_epochs=abc` is a one-line UserError
naming the key, and the accelerator asked for must exist on this machine.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing

from gptlit.core.errors import UserError

UNCHECKED = object()  # an annotation this module cannot check (a class such as Strategy or Logger)


@functools.lru_cache(maxsize=1)
def trainer_parameters() -> dict[str, inspect.Parameter]:
    import lightning as L

    return dict(inspect.signature(L.Trainer.__init__).parameters)


def _fits(value, ann) -> bool | object:
    """Whether value fits the annotation: True, False, or UNCHECKED where the annotation names a class."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if ann is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args and type(value) in {type(a) for a in args}
    if origin in (typing.Union, types.UnionType):
        results = [_fits(value, a) for a in args]
        if any(r is True for r in results):
            return True
        return UNCHECKED if any(r is UNCHECKED for r in results) else False
    if ann is bool:
        return isinstance(value, bool)
    if ann is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if ann is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if ann is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) is not False for v in value) if args else isinstance(value, list)
    if origin is dict:
        return isinstance(value, dict)
    return UNCHECKED


def _describe(ann) -> str:
    """The accepted values, in words, for an error message."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin in (typing.Union, types.UnionType):
        parts = []
        for a in args:
            d = _describe(a)
            if d and d not in parts:
                parts.append(d)
        return " or ".join(parts)
    if origin is typing.Literal:
        return ", ".join(str(a) for a in args)
    if ann is type(None):
        return "null"
    if origin is list:
        return "a list"
    if origin is dict:
        return "a mapping"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(ann, "")


ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")


def accelerator_available(name: str) -> bool:
    """Whether Lightning's accelerator `name` can run on this machine (Lightning's public is_available())."""
    from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator, MPSAccelerator, XLAAccelerator

    return {
        "auto": True,
        "cpu": CPUAccelerator.is_available(),
        "cuda": CUDAAccelerator.is_available(),
        "mps": MPSAccelerator.is_available(),
        "gpu": CUDAAccelerator.is_available() or MPSAccelerator.is_available(),
        "tpu": XLAAccelerator.is_available(),
    }[name]


def check_trainer_args(tcfg: dict) -> None:
    """Raise UserError for the first trainer.* value Lightning's Trainer would refuse.

    tcfg is the resolved `trainer` node (its `_target_` and nested `_target_` nodes, such as
    trainer=fsdp's strategy, are instantiated by Hydra and not checked here).
    """
    params = trainer_parameters()
    for key, value in tcfg.items():
        if key.startswith("_"):
            continue
        if key not in params or key == "self":
            raise UserError(
                f"trainer.{key} is not an argument of lightning.pytorch.Trainer; check the spelling "
                f"(see conf/trainer/default.yaml and Lightning's Trainer documentation)"
            )
        if isinstance(value, dict) and "_target_" in value:
            continue
        ann = params[key].annotation
        if _fits(value, ann) is False:
            if key == "precision":
                allowed = ", ".join(str(a) for a in _literals(ann) if isinstance(a, str))
                raise UserError(f"trainer.precision={value} is not a precision Lightning knows: use auto or one of {allowed}")
            raise UserError(f"trainer.{key}={_show(value)} must be {_describe(ann)}")
    acc = tcfg.get("accelerator", "auto")
    if isinstance(acc, str):
        if acc not in ACCELERATORS:
            raise UserError(f"trainer.accelerator={acc} is unknown: use one of {', '.join(ACCELERATORS)}")
        if not accelerator_available(acc):
            what = {"gpu": "GPU (CUDA or Apple MPS)", "cuda": "CUDA GPU", "mps": "Apple MPS device", "tpu": "TPU"}[acc]
            raise UserError(
                f"trainer.accelerator={acc} but this machine has no {what}: use trainer.accelerator=auto "
                f"(trainer=default) or trainer.accelerator=cpu"
            )


def cpu_cores() -> int:
    """The cores this process may run on."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_processes_warning(tcfg: dict, device_type: str, cores: int | None = None) -> str | None:
    """The warning for trainer.devices=N on the CPU with more processes than cores, else None.

    On the CPU, Lightning starts one DDP process per trainer.devices whatever the cores (devices are
    processes there, not chips), and each process computes with every core: N processes on fewer cores
    take turns, so the run is slower than trainer.devices=1, each holding its own copy of the model.
    """
    devices = tcfg.get("devices", 1)
    if device_type != "cpu" or isinstance(devices, bool) or not isinstance(devices, int):
        return None
    cores = cpu_cores() if cores is None else cores
    if devices <= cores:
        return None
    return (f"warning: trainer.devices={devices} on the CPU starts {devices} training processes on this machine's "
            f"{cores} cores: they take turns, so it is slower than trainer.devices=1 (one process uses every core); "
            f"more CPU processes help only on more machines (trainer.num_nodes)")


def _literals(ann) -> list:
    if typing.get_origin(ann) is typing.Literal:
        return list(typing.get_args(ann))
    return [x for a in typing.get_args(ann) for x in _literals(a)]


def _show(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
