"""A write the disk refuses (no space left, a read-only folder) ends with one line naming the file, the
cause and the last.ckpt that survives, exit code 1, and the job record says the same; nothing half-written."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY

FAILS = {
    # torch's own report of a full disk: a RuntimeError raised while the file's OSError is handled
    "disk full": (errno.ENOSPC, "no space left on the device"),
    "read-only": (errno.EROFS, "read-only file system"),
}


@pytest.mark.parametrize("kind", list(FAILS))
def test_failed_checkpoint_write_is_one_line_and_the_previous_survives(make_cfg, corpus, tmp_path, monkeypatch,
                                                                      capsys, kind):
    from gptlit.run.runner import run, task_wrapper
    from gptlit.training import checkpointing

    code, cause = FAILS[kind]
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        if ".start-" in str(getattr(f, "name", f)):  # the loss guard's state at train start (its rollback target)
            return real_save(obj, f, *args, **kwargs)
        calls.append(obj["global_step"])
        if len(calls) < 2:
            return real_save(obj, f, *args, **kwargs)
        if hasattr(f, "write"):
            f.write(b"half a checkpoint")
        else:  # a path (torch opens the file itself)
            Path(f).write_bytes(b"half a checkpoint")
        try:
            raise OSError(code, os.strerror(code))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 29248 vs 29142")

    monkeypatch.setattr(checkpointing.torch, "save", save)
    cfg = make_cfg("data=text", f"data.path={corpus}", "trainer.max_steps=6", "trainer.val_check_interval=2")
    with pytest.raises(SystemExit) as e:
        task_wrapper(run)(cfg)
    assert e.value.code == 1 and calls == [2, 4]  # the write at step 4 failed, and was not tried again
    err = capsys.readouterr().err.strip()
    ckpts = tmp_path / "run" / "checkpoints"
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: cannot write {ckpts / 'last.ckpt'}: {cause}; the previous last.ckpt (step 2) survives")
    assert f"resume with: python train.py ckpt_path={ckpts / 'last.ckpt'}" in err
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 2  # whole, untouched
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.ckpt", "last.ckpt"]  # no partial file left
    assert json.loads((tmp_path / "run" / "job_result.json").read_text())["status"] == "failed: " + err[len("error: "):]


def mount(*args: str) -> None:
    r = subprocess.run(["mount", *args], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount here (mount {' '.join(args)}: {r.stderr.strip() or r.returncode}); "
                    f"needs root in a system that allows mounts")


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 60 MB: one nano last.ckpt (40 MB) fits, a second beside it (written before the rename) does not."""
    d = tmp_path / f"small-{uuid.uuid4().hex[:6]}"
    d.mkdir()
    mount("-t", "tmpfs", "-o", "size=60m", "tmpfs", str(d))
    yield d
    subprocess.run(["umount", str(d)])


def train(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *TINY, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_write(small_disk, tmp_path, corpus):
    # before: ~100 lines of three chained tracebacks ending in "RuntimeError: [enforce fail at inline_container.cc]"
    run = small_disk / "run"
    r = train(tmp_path, "data=text", f"data.path={corpus}", "trainer.max_steps=6", "trainer.val_check_interval=2",
              f"hydra.run.dir={run}")
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    err = r.stderr.strip()
    last = run / "checkpoints" / "last.ckpt"
    assert err.startswith(f"error: cannot write {last}: no space left on the device; "
                          f"the previous last.ckpt (step 2) survives"), err
    assert f"ckpt_path={last}" in err
    assert torch.load(last, weights_only=True)["global_step"] == 2
    assert json.loads((run / "job_result.json").read_text())["status"] == "failed: " + err[len("error: "):]


@pytest.mark.slow
def test_read_only_output_folder(tmp_path, corpus):
    # before: an OSError traceback from Hydra's mkdir
    ro = tmp_path / "ro"
    ro.mkdir()
    mount("-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(ro))
    try:
        r = train(tmp_path, "data=text", f"data.path={corpus}", f"hydra.run.dir={ro}/run")
    finally:
        subprocess.run(["umount", str(ro)])
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip() == (f"error: cannot write the run directory {ro}/run: read-only file system; "
                                f"nothing was written; choose another with hydra.run.dir=<dir>")
