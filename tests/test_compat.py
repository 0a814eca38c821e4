"""Checkpoints written by an older gptlit still resume and sample as they did then.

tests/fixtures/nano_6df85dd.ckpt was written by commit 6df85dd (the last flat-folder layout);
tests/fixtures/nano_6df85dd.json holds how it was made and what 6df85dd gave from it: the losses of
a run resumed from it, and a seeded sample. Today's code must give the same numbers and text.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import compose_cfg, write_corpus

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]
OLD = json.loads((FIXTURES / "nano_6df85dd.json").read_text())


def metric(run_dir: Path, name: str) -> dict[str, float]:
    rows = csv.DictReader(open(run_dir / "csv" / "metrics.csv"))
    return {r["step"]: float(r[name]) for r in rows if r.get(name)}


def test_old_checkpoint_resumes_with_the_same_losses(tmp_path):
    from gptlit.run.runner import run

    corpus = write_corpus(tmp_path)
    ckpt = tmp_path / "old.ckpt"
    shutil.copy(FIXTURES / "nano_6df85dd.ckpt", ckpt)
    cfg = compose_cfg([*OLD["resume_overrides"], f"data.path={corpus}", f"ckpt_path={ckpt}"], tmp_path / "run")
    run(cfg)
    got = metric(tmp_path / "run", "train/loss")
    assert got.keys() == OLD["resumed_train_loss"].keys()  # it continued at step 3, as 6df85dd did
    for step, loss in OLD["resumed_train_loss"].items():
        assert got[step] == pytest.approx(loss, abs=1e-5), step
    for step, loss in OLD["resumed_val_loss"].items():
        assert metric(tmp_path / "run", "val/loss")[step] == pytest.approx(loss, abs=1e-5)


def test_old_checkpoint_samples_the_same_text(tmp_path):
    s = OLD["sample"]
    r = subprocess.run(
        [sys.executable, str(REPO / "sample.py"), f"ckpt={FIXTURES / 'nano_6df85dd.ckpt'}", f"prompt={s['prompt']}",
         f"seed={s['seed']}", f"max_new_tokens={s['max_new_tokens']}", f"hydra.run.dir={tmp_path / 's'}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert s["prompt"] + s["text"] in r.stdout
