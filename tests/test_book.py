"""The book's chapter 5 experiment end to end: GPT-2 124M (context 256) trained 10 epochs on "The Verdict"
with the book's settings memorizes its training text and overfits, as the book's run does.

How far it gets by epoch 10 depends on the seed more than on anything else: over seeds 1, 2, 3, 4, 5, 123
and 1337, train/eval_loss at epoch 10 spread over 0.21-1.01 with gptlit's resumable shuffle and over
0.41-1.22 with the plain shuffled DataLoader it replaced (fp32, docs/training.md has the table). The
book's 0.39-0.41 is one draw. So the bounds below hold for every seed measured, with a margin: they catch
a run that stops learning or stops overfitting, not a one-epoch shift, which one seed cannot tell from luck.

The text (Edith Wharton, 1908, in the public domain) is committed as tests/fixtures/the-verdict.txt, the
file `data=verdict` downloads (same SHA-256), so the test runs offline. About 5 minutes on 2 cores."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from test_train import cli, scalars

VERDICT = Path(__file__).parent / "fixtures" / "the-verdict.txt"


def test_fixture_is_the_books_text():
    from omegaconf import OmegaConf

    sha = OmegaConf.load(Path(__file__).parents[1] / "conf" / "data" / "verdict.yaml").sha256
    assert hashlib.sha256(VERDICT.read_bytes()).hexdigest() == sha


@pytest.mark.slow
def test_book_experiment_memorizes_the_text_by_epoch_10(tmp_path):
    run = tmp_path / "run"
    r = cli("experiment=book_ch05", f"data.path={VERDICT}", "trainer.precision=32-true",
            "trainer.enable_progress_bar=false", f"hydra.run.dir={run}", timeout=3600)
    assert r.returncode == 0, r.stderr[-2000:]
    s = scalars(run)
    train = [v for _, v in s["train/eval_loss"]]  # training windows, dropout off, once an epoch (9 steps)
    val = [v for _, v in s["val/loss"]]
    assert len(train) == len(val) == 10
    shown = f"train/eval_loss by epoch: {[round(v, 2) for v in train]}, val/loss: {[round(v, 2) for v in val]}"
    assert 10.5 < s["train/loss"][0][1] < 11.5, shown  # PyTorch's default init: 10.99 at step 0, as in the book
    assert train[-1] < 1.5 and train[-1] < train[0] / 5, shown  # memorized (seeds measured: 0.21-1.22)
    assert all(b < a for a, b in zip(train[1:], train[2:])), shown  # falling every epoch after the first
    best = val.index(min(val))
    assert 3 <= best <= 7 and val[-1] > min(val) + 0.05, shown  # val/loss bottoms out (epochs 5-8), then rises
