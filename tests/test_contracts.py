"""The contracts between the training loop's parts (gptlit.training.contracts): the module has every name
callbacks read, callbacks read no other name of it, the loss guard finds last.ckpt's writer by its type,
and a job's status comes from one reading of the callbacks that ended the run."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

from gptlit.model.config import PRESETS
from gptlit.training.checkpointing import BestCheckpoint, LastCheckpoint
from gptlit.training.contracts import (MODULE_NAMES, EndsRuns, LastState, TrainingModule, last_state,
                                       run_outcome)
from gptlit.training.guard import LossGuard, gave_up_message
from gptlit.training.limits import stop_reason
from gptlit.training.lit_module import GPTLitModule
from gptlit.training.pruning import Pruning

ROOT = Path(__file__).resolve().parents[1]
# every module that holds callbacks (hooks receive the module as `pl_module`)
CALLBACK_FILES = sorted({*(ROOT / "gptlit/training").rglob("*.py"), ROOT / "gptlit/evaluation/callback.py"})
LIGHTNING_NAMES = {"automatic_optimization"}  # LightningModule's own API, read by ExactResume


def protocol_names(proto) -> set[str]:
    names = set(getattr(proto, "__annotations__", {}))
    names |= {k for k, v in vars(proto).items() if not k.startswith("_") and (callable(v) or isinstance(v, property))}
    return names


def module_reads(source: str) -> list[tuple[int, str]]:
    """(line, name) of every `pl_module.<name>` and every getattr/hasattr/setattr on pl_module."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "pl_module":
            found.append((node.lineno, node.attr))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr", "setattr")
                and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id == "pl_module"):
            found.append((node.lineno, f"{node.func.id}(pl_module, ...)"))
    return found


def tiny_module() -> GPTLitModule:
    return GPTLitModule(model={**PRESETS["nano"], "context_length": 32})


def test_the_protocol_lists_its_names_once():
    assert protocol_names(TrainingModule) == set(MODULE_NAMES)


def test_gpt_lit_module_has_every_name_callbacks_read():
    module = tiny_module()
    assert isinstance(module, TrainingModule)
    for name in MODULE_NAMES:
        assert hasattr(module, name), name
    assert module.step_loss is None and module.tokens_seen == 0 and module.compile_steps == 0
    with module.clock_paused():
        pass
    assert module.paused_seconds >= 0.0


def test_a_module_without_one_of_the_names_is_not_a_training_module():
    stub = SimpleNamespace(**{n: (lambda: None) for n in MODULE_NAMES})
    assert isinstance(stub, TrainingModule)
    for name in MODULE_NAMES:
        missing = SimpleNamespace(**{n: (lambda: None) for n in MODULE_NAMES if n != name})
        assert not isinstance(missing, TrainingModule), name


@pytest.mark.parametrize("path", CALLBACK_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_callbacks_read_only_the_protocols_names(path):
    bad = [(line, name) for line, name in module_reads(path.read_text())
           if name not in MODULE_NAMES | LIGHTNING_NAMES]
    assert not bad, f"{path.relative_to(ROOT)} reads names of the module outside TrainingModule: {bad}"


def test_the_check_catches_a_misspelled_name_and_a_defaulted_read():
    src = "def on_train_end(self, trainer, pl_module):\n    a = pl_module.tokens_sen\n    b = getattr(pl_module, 'step_loss', None)\n"
    assert [n for _, n in module_reads(src) if n not in MODULE_NAMES] == ["tokens_sen", "getattr(pl_module, ...)"]


def test_the_guard_finds_last_ckpt_by_its_type(tmp_path):
    last, best = LastCheckpoint(str(tmp_path)), BestCheckpoint(str(tmp_path))
    assert isinstance(last, LastState) and not isinstance(best, LastState)
    assert last_state(SimpleNamespace(callbacks=[best, last])) is last

    class LastCheckpoint_:  # a look-alike that is no LastState is not taken for last.ckpt's writer
        path, saved_step = tmp_path / "x.ckpt", 3

    LastCheckpoint_.__name__ = "LastCheckpoint"
    assert last_state(SimpleNamespace(callbacks=[LastCheckpoint_(), best])) is None


def _stopped(cb, reason: EarlyStoppingReason, message: str | None = None):
    cb.stopping_reason, cb.stopping_reason_message = reason, message
    return cb


def _trainer(*callbacks):
    return SimpleNamespace(callbacks=list(callbacks), global_step=7, interrupted=False, max_steps=-1, max_epochs=-1,
                           current_epoch=0, should_stop=True)


def test_run_outcome_is_the_one_reading_of_why_a_run_ended():
    early = _stopped(EarlyStopping(monitor="val/loss"), EarlyStoppingReason.PATIENCE_EXHAUSTED, "no improvement")
    nan = _stopped(EarlyStopping(monitor="val/loss"), EarlyStoppingReason.NON_FINITE_METRIC, "val/loss = nan")
    guard = LossGuard()
    pruning = Pruning(connect=lambda: None)
    assert isinstance(guard, EndsRuns) and isinstance(pruning, EndsRuns)
    assert run_outcome(_trainer(guard, pruning, EarlyStopping(monitor="val/loss"))) is None

    assert run_outcome(_trainer(early)).status == "stopped early"
    assert run_outcome(_trainer(nan)).status == "failed: val/loss = nan"
    assert stop_reason(_trainer(early)) == "stopped early at step 7: no improvement"

    guard.gave_up_message = "loss guard gave up: 3 bad steps"
    assert gave_up_message(_trainer(early, guard)) == "loss guard gave up: 3 bad steps"
    assert run_outcome(_trainer(early, guard)).status == "failed: loss guard gave up: 3 bad steps"  # outranks early stopping
    assert stop_reason(_trainer(guard)) == "stopped at step 7: loss guard gave up: 3 bad steps"

    pruning.pruned = {"step": 4, "value": 5.5}
    outcome = run_outcome(_trainer(early, guard, pruning))  # a pruned trial is pruned, not failed
    assert (outcome.status, outcome.extra) == ("pruned", {"pruned": {"step": 4, "value": 5.5}})
    # pruning has no line of its own: the stop line is the guard's
    assert stop_reason(_trainer(pruning, guard)) == "stopped at step 7: loss guard gave up: 3 bad steps"


def test_gave_up_message_reads_only_the_loss_guard():
    other = SimpleNamespace(gave_up_message="not a guard")
    assert gave_up_message(_trainer(other)) is None


def test_book_eval_draws_at_step_end():
    from gptlit.training.callbacks.book import BookEval
    from gptlit.training.contracts import DrawsAtStepEnd

    assert isinstance(BookEval(), DrawsAtStepEnd)


def test_the_guard_makes_no_collective_while_last_ckpt_is_written_alone(tmp_path, monkeypatch):
    last, guard, checked = LastCheckpoint(str(tmp_path)), LossGuard(), []
    monkeypatch.setattr(guard, "check", lambda *a, **k: checked.append(k))
    trainer = SimpleNamespace(callbacks=[guard, last], state=SimpleNamespace(fn="fit"))
    last.writing_alone = True  # as LastCheckpoint.save_alone sets it after a failure
    guard.on_save_checkpoint(trainer, None, {})
    assert checked == []
    last.writing_alone = False
    guard.on_save_checkpoint(trainer, None, {})
    assert checked == [{"final": True}]
