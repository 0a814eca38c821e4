"""gptlit.interop.checkpoints: one rule for finding a run's checkpoint, one resolver for user paths."""

from __future__ import annotations

import os

import pytest

from gptlit.core.files import user_path
from gptlit.interop.checkpoints import find_checkpoint
from gptlit.core.errors import UserError


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run"
    (d / "checkpoints").mkdir(parents=True)
    (d / "checkpoints" / "best.ckpt").write_bytes(b"b")
    (d / "checkpoints" / "last.ckpt").write_bytes(b"l")
    return d


def test_run_directory_gives_the_preferred_checkpoint(run_dir):
    assert find_checkpoint(run_dir, prefer="last") == run_dir / "checkpoints" / "last.ckpt"  # resuming
    assert find_checkpoint(run_dir, prefer="best") == run_dir / "checkpoints" / "best.ckpt"  # sampling, validating
    assert find_checkpoint(run_dir) == run_dir / "checkpoints" / "best.ckpt"
    assert find_checkpoint(run_dir / "checkpoints", prefer="last") == run_dir / "checkpoints" / "last.ckpt"


def test_the_other_checkpoint_when_the_preferred_one_is_missing(run_dir):
    (run_dir / "checkpoints" / "best.ckpt").unlink()
    assert find_checkpoint(run_dir, prefer="best") == run_dir / "checkpoints" / "last.ckpt"
    (run_dir / "checkpoints" / "last.ckpt").rename(run_dir / "checkpoints" / "best.ckpt")
    assert find_checkpoint(run_dir, prefer="last") == run_dir / "checkpoints" / "best.ckpt"


def test_a_file_is_itself_and_errors_name_the_key(run_dir, tmp_path):
    f = run_dir / "checkpoints" / "last.ckpt"
    assert find_checkpoint(f, prefer="best") == f
    with pytest.raises(UserError, match=r"^ckpt_path=.*nowhere.ckpt: no such file or folder"):
        find_checkpoint(tmp_path / "nowhere.ckpt", key="ckpt_path")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"^ckpt=.*empty: the folder .* has no checkpoints/best.ckpt or last.ckpt"):
        find_checkpoint(tmp_path / "empty")
    with pytest.raises(ValueError, match="prefer='newest'"):
        find_checkpoint(run_dir, prefer="newest")


def test_user_path_is_relative_to_where_the_command_ran(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert user_path("a/b.txt") == tmp_path / "a" / "b.txt"
    assert user_path(tmp_path / "x") == tmp_path / "x"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_path("~/c.txt") == tmp_path / "home" / "c.txt"
    assert os.path.isabs(user_path("rel"))


def test_weights_fix_the_architecture_the_run_fixes_how_steps_run():
    """reconcile: arch fields (GPTConfig kind "arch") from the weights, runtime ones from the run."""
    from gptlit.model.config import GPTConfig
    from gptlit.model.config import reconcile

    weights = GPTConfig.from_name("nano", context_length=32)
    user = {**GPTConfig.from_name("mini").to_dict(), "activation_checkpointing": True, "drop_rate": 0.2}
    got = reconcile(user, weights, "w", explicit={})
    assert (got.emb_dim, got.n_layers, got.context_length) == (64, 2, 32)
    assert got.activation_checkpointing and got.drop_rate == 0.2
