"""DDP for real: train.py with trainer=ddp on 2 CPU processes (gloo), launched as Lightning launches it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    out = tmp_path / "run"
    steps, batch, T = 4, 4, 32
    args = [
        "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "model=nano",
        f"data.max_length={T}", f"data.batch_size={batch}", f"trainer.max_steps={steps}",
        "trainer.limit_val_batches=2", "trainer.val_check_interval=2",
        "sampling.every_n_steps=2", "sampling.max_new_tokens=5",
        "trainer.enable_progress_bar=false", "callbacks.progress_bar=null",
        "+callbacks.probe._target_=ddp_probe.RankProbe", f"+callbacks.probe.dirpath={tmp_path}",
        f"hydra.run.dir={out}",
    ]
    # rank 1 is started by Lightning re-running this command line; the probe callback lives in tests/
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"probe_rank{i}.json").read_text()) for i in range(2)]

    # each rank reads its own shard of the windows
    for i, p in enumerate(ranks):
        assert p["rank"] == i and p["world_size"] == 2
        assert p["sampler"] == "ResumableDistributedSampler" and p["sampler_rank"] == i
    windows = [{tuple(w) for b in p["batches"] for w in b} for p in ranks]
    assert len(windows[0]) == len(windows[1]) == 4 * batch
    assert not windows[0] & windows[1]

    # the same weights on both ranks at the end; tokens counted over both
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert all(p["steps"] == steps and p["tokens_seen"] == steps * batch * T * 2 for p in ranks)

    # rank 0 alone writes samples, the plot, checkpoints and TensorBoard events
    for step in (2, 4):
        assert r.stdout.count(f"[step {step}] Every effort moves you") == 1, r.stdout
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("*.png")] == [Path("run/loss_plot.png")]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert len(list(tmp_path.rglob("events.out.tfevents.*"))) == 1
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == steps and ckpt["gptlit"]["tokens_seen"] == steps * batch * T * 2


@pytest.mark.slow
@pytest.mark.parametrize("failing_rank", [1, 0])
def test_ddp_failure_of_one_rank_leaves_a_resumable_last_ckpt(tmp_path, failing_rank):
    # under DDP no checkpoint was written when a rank failed (a collective could hang); now rank 0
    # writes the last finished step alone
    out = tmp_path / "run"
    common = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "model=nano", "data.max_length=32",
              "data.batch_size=4", "trainer.limit_val_batches=2", "sampling.every_n_steps=0",
              "trainer.enable_progress_bar=false", "callbacks.progress_bar=null", "dist_timeout_s=60"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), *common, "trainer.max_steps=6",
                        "+callbacks.fail._target_=ddp_probe.FailRank", f"+callbacks.fail.rank={failing_rank}",
                        f"hydra.run.dir={out}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "injected failure" in r.stderr + r.stdout
    last = out / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)  # the only last.ckpt: no validation before step 6
    assert ckpt["global_step"] == 3 and ckpt["gptlit_resume"]["batches"] == 3 and ckpt["gptlit_resume"]["exact"]
    assert "written by rank 0 after the failure" in r.stdout + r.stderr
    again = subprocess.run([sys.executable, str(ROOT / "train.py"), *common, "trainer.max_steps=5", f"ckpt_path={last}",
                            f"hydra.run.dir={tmp_path / 'resumed'}"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5
