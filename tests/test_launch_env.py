"""The launcher's environment -> one run directory for all ranks, .hydra/ and train.log from rank 0 only,
which process prepares data, and the one-line error when another process of the run is gone."""

from __future__ import annotations

import socket
from datetime import timedelta

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from conftest import CONF
from gptlit.core import launch_env
from gptlit.core.launch_env import detect, lost_peer_message, prepares_data, register_resolvers

LAUNCH_VARS = ["RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "GROUP_WORLD_SIZE",
               "TORCHELASTIC_RUN_ID", "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_RESTART_COUNT",
               "MASTER_ADDR", "MASTER_PORT", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID",
               "SLURM_NNODES", "SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_JOB_NAME", "SLURM_NTASKS_PER_NODE"]


@pytest.fixture
def launched(monkeypatch, tmp_path):
    """Set a launcher's variables (and nothing else of the kind) for this test; run directories that
    resolving hydra.run.dir creates go below tmp_path."""
    monkeypatch.chdir(tmp_path)
    for v in LAUNCH_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(launch_env, "_agreed", {})
    register_resolvers()

    def set_env(**env):
        for k, v in env.items():
            monkeypatch.setenv(k, str(v))

    return set_env


def torchrun(rank, world=2, nodes=2, run_id="job7", **more):
    return {**dict(RANK=rank, LOCAL_RANK=0, GROUP_RANK=rank, WORLD_SIZE=world, GROUP_WORLD_SIZE=nodes,
                   TORCHELASTIC_RUN_ID=run_id, MASTER_ADDR="127.0.0.1", MASTER_PORT=29500), **more}


def srun(rank, tasks=2, nodes=2, job=4242, **more):
    return dict(SLURM_NTASKS=tasks, SLURM_NTASKS_PER_NODE=tasks // nodes, SLURM_PROCID=rank, SLURM_LOCALID=0,
                SLURM_NODEID=rank, SLURM_NNODES=nodes, SLURM_JOB_ID=job, SLURM_JOB_NAME="train", **more)


def hydra_cfg(*overrides):
    """hydra.run.dir, hydra.output_subdir and the root log handlers as train.py would resolve them."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    h = cfg.hydra
    return h.run.dir, h.output_subdir, list(h.job_logging.root.handlers)


def test_one_process_keeps_date_and_time(launched):
    run_dir, subdir, handlers = hydra_cfg()
    assert run_dir.startswith("outputs/") and len(run_dir.split("/")) == 3  # outputs/<date>/<time>
    assert subdir == ".hydra" and handlers == ["console", "file"]


@pytest.mark.parametrize("rank", [0, 1])
def test_torchrun_ranks_agree_on_the_rendezvous_id(launched, rank):
    launched(**torchrun(rank))
    run_dir, subdir, handlers = hydra_cfg("trainer=ddp", "trainer.num_nodes=2")
    assert run_dir == "outputs/torchrun-job7"
    # rank 0 alone writes .hydra/ and train.log
    assert (subdir, handlers) == ((".hydra", ["console", "file"]) if rank == 0 else (None, ["console"]))


def test_srun_ranks_agree_on_the_job_id(launched):
    launched(**srun(1))
    env = detect()
    assert (env.launcher, env.global_rank, env.node_rank, env.world_size, env.num_nodes) == ("slurm", 1, 1, 2, 2)
    run_dir, subdir, _ = hydra_cfg("trainer=ddp", "trainer.num_nodes=2")
    assert run_dir == "outputs/slurm-4242" and subdir is None


def test_a_later_srun_step_gets_its_own_directory(launched):
    launched(**srun(0, SLURM_STEP_ID=1))
    assert hydra_cfg("trainer=ddp", "trainer.num_nodes=2")[0] == "outputs/slurm-4242.1"


def test_the_users_run_dir_wins(launched, tmp_path):
    launched(**torchrun(1))
    assert hydra_cfg(f"hydra.run.dir={tmp_path}/mine")[0] == f"{tmp_path}/mine"


def test_several_nodes_without_a_job_id_need_hydra_run_dir(launched, capsys):
    launched(NODE_RANK=1)  # nodes started by hand with Lightning's launcher
    with pytest.raises(SystemExit) as e:
        hydra_cfg("trainer=ddp", "trainer.num_nodes=2")
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: trainer.num_nodes=2 but no launcher job id") and "hydra.run.dir=" in err
    assert len(err.splitlines()) == 1


def test_static_rendezvous_takes_rank_zeros_directory_from_the_agent_store(launched, monkeypatch):
    from torch.distributed import TCPStore

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent = TCPStore("127.0.0.1", port, is_master=True, timeout=timedelta(seconds=10))  # torchrun's agent store
    launched(**torchrun(0, run_id="none", MASTER_PORT=port, TORCHELASTIC_USE_AGENT_STORE=True))
    mine = launch_env.run_dir("outputs", "2026-01-01/00-00-00", 2, 5)
    assert mine == "outputs/2026-01-01/00-00-00"
    monkeypatch.setattr(launch_env, "_agreed", {})
    launched(RANK=1, GROUP_RANK=1)  # node 1 starts a second later: its own clock says otherwise
    assert launch_env.run_dir("outputs", "2026-01-01/00-00-01", 2, 5) == mine
    del agent


@pytest.mark.parametrize(
    "env, per_node, expected",
    [
        (torchrun(0), False, True), (torchrun(0), True, True),
        (torchrun(1), False, False), (torchrun(1), True, True),  # local rank 0 of node 1
        (dict(torchrun(1), LOCAL_RANK=1, GROUP_RANK=0), True, False),
        (srun(1), True, True), (srun(1), False, False),
        ({}, False, True), (dict(LOCAL_RANK=1), True, False),
    ],
)
def test_which_process_prepares_data(launched, env, per_node, expected):
    launched(**env)
    assert prepares_data(per_node) is expected


def gloo_error(text):
    return RuntimeError(f"[/pytorch/third_party/gloo/gloo/transport/tcp/{text}")


def test_lost_peer_is_one_line_with_the_checkpoint_to_resume_from(launched):
    launched(**torchrun(0))
    try:
        try:
            raise gloo_error("unbound_buffer.cc:78] Timed out waiting 20000ms for recv operation to complete")
        except RuntimeError:
            raise RuntimeError("Application timeout caused pair closure")  # the barrier after saving
    except RuntimeError as e:
        msg = lost_peer_message(e, "outputs/torchrun-job7")
    assert msg == ("rank 0 of 2: lost contact with another process of the run (Timed out waiting 20000ms for recv "
                   "operation to complete); a node died or hangs. Resume by starting every node again with "
                   "ckpt_path=outputs/torchrun-job7/checkpoints/last.ckpt")


def test_other_errors_and_single_processes_keep_their_traceback(launched):
    launched(**torchrun(0))
    assert lost_peer_message(ValueError("bad"), "out") is None
    assert lost_peer_message(RuntimeError("CUDA out of memory"), "out") is None
    launched(WORLD_SIZE=1, RANK=0)
    assert lost_peer_message(gloo_error("pair.cc:1] Read error"), "out") is None


def test_strategies_take_the_timeout(make_cfg):
    from hydra.utils import instantiate
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    # that gloo then waits exactly this long is shown by tests/test_multinode.py ("Timed out waiting 20000ms")
    for trainer, kind in (("ddp", DDPStrategy), ("fsdp", FSDPStrategy)):
        node = OmegaConf.to_container(make_cfg(f"trainer={trainer}", "dist_timeout_s=42").trainer.strategy, resolve=True)
        assert instantiate(node["timeout"]) == timedelta(seconds=42)
        assert isinstance(instantiate(node), kind)


# --- a run owns its directory ----------------------------------------------------------------------


def test_a_taken_name_gets_a_suffix_and_the_answer_stays(launched, tmp_path):
    (tmp_path / "outputs" / "2026-01-01" / "12-00-00").mkdir(parents=True)  # another run's
    first = launch_env.run_dir("outputs", "2026-01-01/12-00-00")
    assert first == "outputs/2026-01-01/12-00-00_2" and (tmp_path / first).is_dir()
    # Hydra resolves hydra.run.dir more than once: the same answer, no third directory
    assert launch_env.run_dir("outputs", "2026-01-01/12-00-00") == first
    assert sorted(p.name for p in (tmp_path / "outputs" / "2026-01-01").iterdir()) == ["12-00-00", "12-00-00_2"]
    # another process (a fresh cache) that starts in the same second takes the next name
    launch_env._agreed.clear()
    assert launch_env.run_dir("outputs", "2026-01-01/12-00-00") == "outputs/2026-01-01/12-00-00_3"


def test_ranks_other_than_zero_create_nothing(launched, tmp_path):
    launched(LOCAL_RANK=1)  # a process Lightning's launcher started (it passes rank 0's hydra.run.dir anyway)
    assert launch_env.run_dir("outputs", "2026-01-01/12-00-00") == "outputs/2026-01-01/12-00-00"
    assert not (tmp_path / "outputs").exists()


def test_unwritable_place_for_the_run_directory_is_one_line(launched, tmp_path, capsys):
    (tmp_path / "outputs").write_text("a file where the folder would go")
    with pytest.raises(SystemExit) as e:
        launch_env.run_dir("outputs", "2026-01-01/12-00-00")
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: cannot create the run directory outputs/2026-01-01/")


@pytest.mark.slow  # long and rarely broken: moved out of the fast suite (issue 28)
def test_two_runs_started_in_the_same_second_get_two_directories(tmp_path, corpus):
    # two real train.py processes, started together, Hydra's clock stopped at one second for both
    # (tests/rundir_probe.py): before, both wrote into outputs/2026-01-01/12-00-00
    import os
    import subprocess
    import sys

    import torch
    from omegaconf import OmegaConf

    from conftest import ROOT, TINY

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [*TINY, "data=text", f"data.path={corpus}", "trainer.max_steps=1"]
    procs = {lr: subprocess.Popen([sys.executable, str(ROOT / "tests" / "rundir_probe.py"), *args, f"optim.lr={lr}"],
                                  cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for lr in ("0.001", "0.003")}
    for p in procs.values():
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    day = tmp_path / "outputs" / "2026-01-01"
    assert sorted(p.name for p in day.iterdir()) == ["12-00-00", "12-00-00_2"]
    seen = set()
    for run in day.iterdir():  # each directory holds one run only, all of its files agreeing
        overrides = OmegaConf.load(run / ".hydra" / "overrides.yaml")
        lr = next(o.split("=")[1] for o in overrides if o.startswith("optim.lr="))
        ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
        assert ckpt["hyper_parameters"]["optim"]["lr"] == float(lr)
        assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1
        assert (run / "train.log").read_text().count("model: nano") == 1
        seen.add(lr)
    assert seen == {"0.001", "0.003"}
