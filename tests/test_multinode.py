"""Two machines simulated on one: two torchrun launches with --nnodes 2, one per "node", each in its own
working directory, meeting on 127.0.0.1 over gloo (the commands of docs/multi-node.md)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from ddp_probe import weights_hash  # noqa: E402

STEPS, BATCH, T = 4, 4, 32
ARGS = [
    "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_nodes=2", "model=nano",
    f"data.max_length={T}", f"data.batch_size={BATCH}", "trainer.limit_val_batches=2",
    "trainer.val_check_interval=2", "sampling.every_n_steps=0", "trainer.enable_progress_bar=false",
    "callbacks.progress_bar=null",
    "data.prepare_per_node=true",  # each simulated node has its own GPTLIT_CACHE, as on node-local disks
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(node_rank: int, rendezvous: list[str], args: list[str], cwd: Path) -> subprocess.Popen:
    """`torchrun --nnodes 2 --nproc-per-node 1 --node-rank N <rendezvous> train.py <args>` in cwd."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GPTLIT_CACHE": str(cwd / "cache"),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--node-rank", str(node_rank), *rendezvous, str(ROOT / "train.py"), *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=open(cwd / "stdout.txt", "w"),
                            stderr=open(cwd / "stderr.txt", "w"), start_new_session=True)


def run_two_nodes(rendezvous: list[str], args: list[str], tmp_path: Path) -> list[Path]:
    nodes = [tmp_path / f"node{i}" for i in range(2)]
    procs = [launch(i, rendezvous, args, node) for i, node in enumerate(nodes)]
    try:
        rcs = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    for node, rc in zip(nodes, rcs):
        assert rc == 0, (node / "stderr.txt").read_text()[-3000:]
    return nodes


def probes(tmp_path: Path) -> list[dict]:
    return [json.loads((tmp_path / f"probe_rank{i}.json").read_text()) for i in range(2)]


@pytest.mark.slow
def test_two_nodes_share_one_run_directory(tmp_path, corpus):
    # static rendezvous (--master-addr/--master-port, no id): rank 0 names the directory for all
    rendezvous = ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    args = [*ARGS, "data=text", f"data.path={corpus}", f"trainer.max_steps={STEPS}",
            "+callbacks.probe._target_=ddp_probe.RankProbe", f"+callbacks.probe.dirpath={tmp_path}"]
    node0, node1 = run_two_nodes(rendezvous, args, tmp_path)

    # one run directory, named the same on both nodes; rank 0 wrote everything in it once
    runs = [p.parent for p in node0.glob("outputs/*/*/.hydra")]
    assert len(runs) == 1, list(node0.rglob("*"))
    run = runs[0]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert len(list(run.glob("tb/events.out.tfevents.*"))) == 1
    assert (run / "loss_plot.png").is_file() and "Initializing distributed" in (run / "train.log").read_text()
    # node 1 (its own disk here) agreed on the name and wrote no file: no .hydra/, no train.log, nothing
    assert (node1 / run.relative_to(node0)).is_dir()
    # (but its token cache: each node tokenizes the corpus into a cache on its own disk)
    assert [p for p in node1.rglob("*") if p.is_file() and p.parent != node1 and p.relative_to(node1).parts[0] != "cache"] == []
    assert len(list((node1 / "cache" / "tokens").glob("*.bin"))) == 1

    # each rank read its own windows; both ended with the weights that last.ckpt holds
    p0, p1 = probes(tmp_path)
    assert (p0["rank"], p1["rank"]) == (0, 1) and p0["world_size"] == 2
    assert p0["sampler"] == "ResumableDistributedSampler" and (p0["sampler_rank"], p1["sampler_rank"]) == (0, 1)
    windows = [{tuple(w) for b in p["batches"] for w in b} for p in (p0, p1)]
    assert len(windows[0]) == len(windows[1]) == STEPS * BATCH and not windows[0] & windows[1]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    saved = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    assert p0["weights"] == p1["weights"] == weights_hash(saved)
    assert ckpt["global_step"] == STEPS and ckpt["gptlit"]["tokens_seen"] == STEPS * BATCH * T * 2

    # the multi-node checkpoint loads in sample.py on one process
    r = subprocess.run([sys.executable, str(ROOT / "sample.py"), f"ckpt={run}", "max_new_tokens=5", "device=cpu",
                        f"hydra.run.dir={tmp_path}/samples"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "Every effort moves you" in r.stdout, r.stderr[-2000:]


def stop_node_one(tmp_path, corpus, how: str, timeout: int, steps: int):
    """Two nodes (c10d rendezvous, id t14); rank 1 gets `how` (SIGSTOP/SIGKILL) after 3 steps.
    Returns node 0's exit code, seconds from the stop to node 0's exit, node 0's stderr, the launch."""
    rendezvous = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "t14"]
    args = [*ARGS, "data=text", f"data.path={corpus}", f"trainer.max_steps={steps}", f"dist_timeout_s={timeout}"]
    stop = ["+callbacks.stop._target_=ddp_probe.StopRank", f"+callbacks.stop.dirpath={tmp_path}",
            "+callbacks.stop.at_step=3", f"+callbacks.stop.signal={how}"]
    nodes = [tmp_path / f"node{i}" for i in range(2)]
    procs = [launch(i, rendezvous, [*args, *stop], node) for i, node in enumerate(nodes)]
    stopped = tmp_path / "stopped_rank1.json"
    try:
        rc0 = procs[0].wait(timeout=300)
        exited = time.time()
    finally:
        if stopped.is_file() and how == "SIGSTOP":
            os.kill(json.loads(stopped.read_text())["pid"], signal.SIGKILL)  # torchrun gives it its own session
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    waited = exited - json.loads(stopped.read_text())["time"]
    print(f"rank 1 got {how}; node 0 exited {waited:.1f} s later with code {rc0} (dist_timeout_s={timeout})")
    return rc0, waited, (nodes[0] / "stderr.txt").read_text(), rendezvous, args


@pytest.mark.slow
def test_hung_node_stops_the_other_within_the_timeout_and_the_rerun_resumes(tmp_path, corpus):
    timeout, steps = 20, 8
    # rank 1 freezes (SIGSTOP): its sockets stay open, as a hung or unplugged machine's
    rc0, waited, err, rendezvous, args = stop_node_one(tmp_path, corpus, "SIGSTOP", timeout, steps)
    assert rc0 != 0
    # node 0 waited the configured timeout for the frozen rank, then stopped (60 s margin: 2 loaded cores)
    assert timeout - 1 <= waited <= timeout + 60, (waited, err[-3000:])
    run = tmp_path / "node0" / "outputs" / "torchrun-t14"  # named after the rendezvous id
    last = run / "checkpoints" / "last.ckpt"
    assert f"error: rank 0 of 2: lost contact with another process of the run (Timed out waiting {timeout * 1000}ms" in err
    assert f"ckpt_path={last}" in err and "Error executing job" not in err  # our one line, not Hydra's report
    saved_step = torch.load(last, weights_only=True)["global_step"]
    assert saved_step in (2, 3)  # the validation at step 2, or rank 0's state when the step failed

    # both nodes again, from last.ckpt: training goes on from there to max_steps
    rendezvous[3] = f"127.0.0.1:{free_port()}"
    args = [*args, f"ckpt_path={last}", "+callbacks.probe._target_=ddp_probe.RankProbe",
            f"+callbacks.probe.dirpath={tmp_path}"]
    run_two_nodes(rendezvous, args, tmp_path)
    p0, p1 = probes(tmp_path)
    assert p0["first_step"] == p1["first_step"] == saved_step
    assert p0["steps"] == p1["steps"] == steps and p0["weights"] == p1["weights"]
    assert torch.load(last, weights_only=True)["global_step"] == steps


@pytest.mark.slow
def test_killed_node_stops_the_other_at_once(tmp_path, corpus):
    # rank 1's process dies (SIGKILL): its connections close, node 0 need not wait for the timeout
    rc0, waited, err, _, _ = stop_node_one(tmp_path, corpus, "SIGKILL", timeout=300, steps=8)
    assert rc0 != 0 and waited < 60, (waited, err[-3000:])
    assert "error: rank 0 of 2: lost contact with another process of the run" in err, err[-3000:]
