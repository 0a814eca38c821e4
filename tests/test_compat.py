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
from gptlit.core.errors import UserError

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


def test_a_run_reads_the_old_checkpoint_once(tmp_path, monkeypatch):
    """model_for_run reads the checkpoint it resumes from or validates once (memory-mapped, no weights): its model
    config and tokenizer together (it was read two or three times: once for the tokenizer, once per config check)."""
    import gptlit.interop.checkpoints as checkpoints
    import gptlit.run.model_source as model_source

    ckpt = tmp_path / "old.ckpt"
    shutil.copy(FIXTURES / "nano_6df85dd.ckpt", ckpt)
    loads = []
    real = checkpoints.load_checkpoint

    def counted(path):
        loads.append(str(path))
        return real(path)

    monkeypatch.setattr(checkpoints, "load_checkpoint", counted)
    monkeypatch.setattr(model_source, "load_checkpoint", counted, raising=False)  # where the old code imported it
    resumed = model_source.model_for_run(compose_cfg([*OLD["resume_overrides"], f"ckpt_path={ckpt}"], tmp_path / "r"))
    assert loads == [str(ckpt)]
    assert resumed.ckpt_path == str(ckpt) and resumed.tokenizer.kind == "gpt2" and resumed.label == "nano"
    assert (resumed.config.emb_dim, resumed.config.n_layers, resumed.config.vocab_size) == (4, 1, 50257)

    loads.clear()
    validated = model_source.model_for_run(compose_cfg(["model=nano", "task=validate", f"ckpt_path={ckpt}"], tmp_path / "v"))
    assert loads == [str(ckpt)]
    assert validated.config.emb_dim == 4 and validated.label == f"custom from {ckpt}"  # its shape is no preset's
    with pytest.raises(UserError, match=rf"ckpt_path={ckpt} was trained with model.emb_dim=4 but this run has model.emb_dim=8"):
        model_source.model_for_run(compose_cfg([*OLD["resume_overrides"], "model.emb_dim=8", f"ckpt_path={ckpt}"], tmp_path / "b"))
