"""A run resolved once into a RunPlan (gptlit.run.plan), then built from the plan alone (gptlit.run.build)."""

import dataclasses

import pytest
import torch

import gptlit.model.config as model_config
import gptlit.training.optim as optim_module
from gptlit.core.errors import UserError
from gptlit.model.config import GPTConfig
from gptlit.run.build import build
from gptlit.run.model_source import model_for_run
from gptlit.run.plan import RunPlan, resolve
from gptlit.training.lit_module import GPTLitModule
from gptlit.training.optim import OptimConfig


def test_resolve_gives_typed_checked_configs(make_cfg, corpus):
    plan = resolve(make_cfg("data=text", f"data.path={corpus}", "optim.lr=0.002"), model_for_run)
    assert isinstance(plan, RunPlan) and plan.task == "train"
    assert isinstance(plan.model, GPTConfig) and plan.model.emb_dim == 64  # model=nano (conftest)
    assert isinstance(plan.optim, OptimConfig) and plan.optim.lr == 0.002
    assert plan.precision in ("32-true", "bf16-mixed") and plan.trainer["max_epochs"] is not None
    assert plan.model_label == "nano" and plan.model_line(123) == "model: nano, 123 parameters"
    assert plan.precision_line().startswith(f"precision: {plan.precision}, output: ")
    assert plan.compile_line() is None  # compile=auto on CPU: off


def test_a_bad_value_fails_while_resolving(make_cfg, corpus):
    with pytest.raises(UserError, match="optim.lr=-1"):
        resolve(make_cfg("data=text", f"data.path={corpus}", "optim.lr=-1"), model_for_run)
    with pytest.raises(UserError, match="data.max_length=64 exceeds model.context_length=32"):
        resolve(make_cfg("data=text", f"data.path={corpus}", "model.context_length=32", "data.max_length=64"),
                model_for_run)


def test_build_reads_the_plan_and_checks_the_configs_once(make_cfg, corpus, monkeypatch):
    cfg = make_cfg("data=text", f"data.path={corpus}", "trainer.max_steps=1", "optim.lr=0.002")
    plan = resolve(cfg, model_for_run)
    cfg.optim.lr, cfg.model.emb_dim = 0.5, 256  # the config is not read again: the plan is the run
    calls = {"optim": 0, "model": 0}
    real_optim, real_model = optim_module.validate_optim, GPTConfig.from_dict.__func__

    def count_optim(o):
        calls["optim"] += 1
        return real_optim(o)

    def count_model(cls, d):
        calls["model"] += 1
        return real_model(cls, d)

    monkeypatch.setattr(optim_module, "validate_optim", count_optim)
    monkeypatch.setattr(model_config.GPTConfig, "from_dict", classmethod(count_model))
    dm, module, trainer, ckpt_path = build(plan)
    assert calls == {"optim": 0, "model": 0}  # no dict -> GPTConfig -> dict round trip, no second optim check
    assert module.hparams.optim["lr"] == 0.002 and module.model.cfg.emb_dim == 64
    assert module.hparams.model == plan.model.to_dict()  # plain dicts in checkpoints (weights_only=True)
    assert ckpt_path is None and trainer.max_steps == 1


def test_module_from_saved_dicts_as_load_from_checkpoint_passes_them():
    model = GPTConfig.from_name("nano", vocab_size=512)
    a = GPTLitModule(model=model, optim=OptimConfig(lr=0.01))
    b = GPTLitModule(model=model.to_dict(), optim={"lr": 0.01})
    assert a.hparams == b.hparams
    with pytest.raises(UserError, match="optim.lr=0"):
        GPTLitModule(model=model.to_dict(), optim={"lr": 0})
    assert isinstance(a.hparams.model, dict) and isinstance(a.hparams.optim, dict)
    torch.save(dict(a.hparams), "/dev/null")  # plain values only


def test_after_rollback_resumes_with_the_skips(make_cfg, corpus):
    plan = resolve(make_cfg("data=text", f"data.path={corpus}"), model_for_run)
    later = plan.after_rollback("/x/last.ckpt", [5, 6], 1)
    assert later.ckpt_path == "/x/last.ckpt"
    assert later.callbacks["guard"]["skip_steps"] == [5, 6] and later.callbacks["guard"]["rollbacks"] == 1
    assert plan.ckpt_path is None and "skip_steps" not in plan.callbacks.get("guard", {})  # the plan is not edited
    assert dataclasses.replace(later, ckpt_path=None).model is plan.model
