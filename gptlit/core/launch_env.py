"""What the launcher says about this process (torchrun, srun or Lightning's own), and the one run
directory that every rank on every node agrees on.

Hydra picks a run directory in each process before any training code runs, and its default,
outputs/<date>/<time>, differs between processes that start a second apart (or on two nodes).
The resolvers registered here make the choice the same everywhere:

- torchrun with a rendezvous id (`--rdzv-id`, or the id torchrun makes up on one node):
  outputs/torchrun-<id>
- srun with several tasks: outputs/slurm-<job id> (outputs/slurm-<job id>.<step> for steps after the first)
- torchrun with a static rendezvous (`--master-addr/--master-port`, no id): global rank 0 picks
  outputs/<date>/<time> and hands it to the others through the torchrun agent's key-value store
- several nodes and none of the above: the user must name it (hydra.run.dir=...), the same on every node.

outputs/<date>/<time> is created exclusively by the process that picks it (claim_run_dir): two runs
started in the same second get outputs/<date>/<time> and outputs/<date>/<time>_2, never one directory.
A hydra.run.dir the user gives is the user's choice and used as it is (resuming into it is fine).

Only global rank 0 writes the .hydra/ folder and train.log; the other ranks log to their console
(torchrun and srun keep each rank's output apart).

Apart from creating the run directory, everything here reads environment variables only; torch and Lightning are imported when needed,
so `train.py --help` stays fast.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

# The name that Hydra configs use: ${gptlit.run_dir:...}, ${gptlit.on_rank_zero:...}
RUN_DIR_RESOLVER = "gptlit.run_dir"
ON_RANK_ZERO_RESOLVER = "gptlit.on_rank_zero"


@dataclass(frozen=True)
class LaunchEnv:
    """This process's place in the run, as the launcher set it in the environment."""

    launcher: str | None  # "torchrun", "slurm", "lightning" (a process Lightning started) or None
    global_rank: int | None = 0  # None: a process Lightning started, not rank 0, exact rank not known yet
    local_rank: int = 0
    node_rank: int = 0
    world_size: int = 1
    num_nodes: int = 1
    job_id: str | None = None  # torchrun's rendezvous id or SLURM's job id; None when there is none

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0


def _int(name: str, default: int = 0) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def _srun_started_this() -> bool:
    """Lightning's rule: srun started this process, not an interactive shell (job name bash/interactive)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect()


def detect() -> LaunchEnv:
    """Read the launcher's variables: torchrun's (RANK, GROUP_RANK, ...), srun's (SLURM_PROCID, ...),
    or the LOCAL_RANK/NODE_RANK that Lightning gives the processes it starts itself."""
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env and "RANK" in env:  # torchrun (also when torchrun runs under srun)
        run_id = env["TORCHELASTIC_RUN_ID"]
        job = None if run_id in ("", "none") else run_id  # "none": static rendezvous, no id given
        return LaunchEnv(
            "torchrun", _int("RANK"), _int("LOCAL_RANK"), _int("GROUP_RANK"),
            _int("WORLD_SIZE", 1), _int("GROUP_WORLD_SIZE", 1), job,
        )
    if "SLURM_NTASKS" in env and _srun_started_this():
        job = env.get("SLURM_JOB_ID")
        step = env.get("SLURM_STEP_ID")
        if job and step not in (None, "", "0"):
            job = f"{job}.{step}"
        nodes = _int("SLURM_NNODES", 0) or _int("SLURM_JOB_NUM_NODES", 1)
        return LaunchEnv(
            "slurm", _int("SLURM_PROCID"), _int("SLURM_LOCALID"), _int("SLURM_NODEID"),
            _int("SLURM_NTASKS", 1), nodes, job,
        )
    if "LOCAL_RANK" in env or "NODE_RANK" in env:  # Lightning's launcher, or nodes started by hand
        local, node = _int("LOCAL_RANK"), _int("NODE_RANK")
        # the global rank is known only once the strategy is set up; only "is it 0" matters here
        return LaunchEnv("lightning", 0 if local == node == 0 else None, local, node, _int("WORLD_SIZE", 1))
    return LaunchEnv(None)


def prepares_data(per_node: bool) -> bool:
    """Whether this process prepares data that all ranks then read (downloads, the token cache).

    per_node=False: global rank 0 alone, for a cache directory every node sees (a shared filesystem);
    per_node=True: local rank 0 of each node, for a cache directory on each node's own disk
    (Lightning's LightningDataModule.prepare_data_per_node). The token cache's `data.prepare_per_node`
    switch is meant to call this.
    """
    env = detect()
    return env.local_rank == 0 if per_node else env.global_rank == 0


def _fail(msg: str):
    # Called while Hydra resolves hydra.run.dir, before gptlit's own error handling runs: print the
    # one line here and exit 2 (SystemExit passes through Hydra's error reporting; nothing is written yet).
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


_agreed: dict[tuple, str] = {}  # Hydra resolves hydra.run.dir more than once; the answer must not change


def run_dir(base: str, stamped: str, num_nodes=1, timeout_s=300) -> str:
    """The run directory for this process: `base/stamped` (e.g. outputs/2026-01-01/12-00-00) for one
    process, or a directory every rank agrees on (see the module docstring)."""
    key = (base, stamped, str(num_nodes), str(timeout_s))
    if key not in _agreed:
        _agreed[key] = _choose_run_dir(base, stamped, int(num_nodes or 1), float(timeout_s), detect())
    return _agreed[key]


def _choose_run_dir(base: str, stamped: str, num_nodes: int, timeout_s: float, env: LaunchEnv) -> str:
    default = f"{base}/{stamped}"
    if env.launcher in ("torchrun", "slurm") and env.world_size > 1:
        if env.job_id:
            return f"{base}/{env.launcher}-{env.job_id}"
        if env.launcher == "torchrun" and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            return _share_from_rank_zero(default, env, timeout_s)
    if max(num_nodes, env.num_nodes) > 1:
        _fail(
            f"trainer.num_nodes={max(num_nodes, env.num_nodes)} but no launcher job id to name one run directory "
            f"for all nodes: pass the same hydra.run.dir=<dir> on every node, or launch with torchrun --rdzv-id or "
            f"srun (docs/multi-node.md)"
        )
    # One process, or rank 0 of Lightning's own launch (it hands the directory to the ranks it starts
    # as hydra.run.dir=...): the directory is this run's alone. In a sweep, jobs live in hydra.sweep.dir
    # and nothing may be claimed here: Lightning reads hydra.run.dir to start a DDP job's ranks (whose
    # command line gptlit replaces, gptlit.run.sweep.ddp_child_argv), which left an empty outputs/<date>/<time>.
    return claim_run_dir(default) if env.is_global_zero and not _in_multirun() else default


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def claim_run_dir(path: str) -> str:
    """Create `path` (or, when another run holds that name already, `path_2`, `path_3`, ...) and return
    the name created. Creation is exclusive (mkdir fails on an existing directory), so runs started in
    the same second, which get the same outputs/<date>/<time>, each own a directory and never write
    into another's. An unwritable location ends with one line, before anything runs."""
    parent, name = os.path.split(path)
    try:
        if parent:
            os.makedirs(parent, exist_ok=True)
        for n in range(1, 10_000):
            candidate = path if n == 1 else os.path.join(parent, f"{name}_{n}")
            try:
                os.mkdir(candidate)
                return candidate
            except FileExistsError:
                continue
    except OSError as e:
        from gptlit.core.files import describe_os_error

        _fail(f"cannot create the run directory {path}: {describe_os_error(e)}; run from a folder you can "
              f"write to, or choose one with hydra.run.dir=<dir>")
    _fail(f"{path}: 10,000 runs started in this second already hold its name; choose one with hydra.run.dir=<dir>")


def _share_from_rank_zero(default: str, env: LaunchEnv, timeout_s: float) -> str:
    """Rank 0's run directory, handed to the other ranks through the key-value store that torchrun's
    agent on node 0 serves at MASTER_ADDR:MASTER_PORT (the store torch.distributed itself joins later)."""
    from datetime import timedelta

    from torch.distributed import PrefixStore, TCPStore

    client = TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
        timeout=timedelta(seconds=timeout_s),
    )
    # a restarted worker group (torchrun --max-restarts) agrees anew
    store = PrefixStore(f"gptlit/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", client)
    if env.is_global_zero:
        mine = claim_run_dir(default)  # rank 0 alone creates it, so the others share rank 0's name
        store.set("run_dir", mine)
        return mine
    try:
        return store.get("run_dir").decode()  # waits for rank 0, at most timeout_s
    except Exception as e:  # the store's timeout error type differs between torch versions
        _fail(f"rank {env.global_rank} waited {timeout_s:.0f}s for rank 0 to name the run directory ({e}); "
              f"is node 0 up? Or pass the same hydra.run.dir=<dir> on every node")


def on_rank_zero(value, otherwise=None):
    """`value` in global rank 0, `otherwise` in every other process (e.g. hydra.output_subdir: only
    rank 0 writes .hydra/; the log handlers: only rank 0 writes train.log)."""
    return value if detect().is_global_zero else otherwise


def register_resolvers() -> None:
    """Make ${gptlit.run_dir:...} and ${gptlit.on_rank_zero:...} known to OmegaConf; train.py calls
    this before Hydra composes its config."""
    OmegaConf.register_new_resolver(RUN_DIR_RESOLVER, run_dir, replace=True)
    OmegaConf.register_new_resolver(ON_RANK_ZERO_RESOLVER, on_rank_zero, replace=True)


def lost_peer_message(exc: BaseException, output_dir: str) -> str | None:
    """One line for an error that means another process of the run is gone (died, hung past
    dist_timeout_s, or its node went down); None for any other error or a single-process run."""
    import re

    import torch.distributed as dist

    def from_collective(e) -> bool:
        # gloo reports a dead or silent peer as a plain RuntimeError whose text starts with the gloo
        # source file ("[.../gloo/transport/tcp/pair.cc:537] Read error ..."); NCCL raises DistError
        return isinstance(e, dist.DistError) or (isinstance(e, RuntimeError) and "gloo/" in str(e))

    env = detect()
    chain = [exc]  # the error and the ones it was raised while handling, first failure last
    while chain[-1].__context__ is not None and len(chain) < 10:
        chain.append(chain[-1].__context__)
    failed = [e for e in chain if from_collective(e)]
    if env.world_size < 2 or not failed:
        return None
    exc = failed[-1]  # the first failure, not e.g. the barrier after saving last.ckpt that failed next
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    detail = re.sub(r"^\[[^\]]*\]\s*", "", lines[0])[:200]
    rank = "" if env.global_rank is None else f"rank {env.global_rank} of {env.world_size}: "
    return (
        f"{rank}lost contact with another process of the run ({detail}); a node died or hangs. "
        f"Resume by starting every node again with ckpt_path={output_dir}/checkpoints/last.ckpt"
    )


class WritableRunDir(Callback):
    """A Hydra callback (conf/train.yaml hydra.callbacks): before a single run starts, its run directory
    must take a write, else one line names the directory and the cause (read-only, no space, no
    permission) and the run stops with exit code 2, nothing written. Without it, Hydra's own mkdir or
    its .hydra/ write fails with a traceback. Rank 0 checks (the other ranks write nothing there)."""

    def on_run_start(self, config, **kwargs) -> None:
        if not detect().is_global_zero:
            return
        d = str(config.hydra.run.dir)  # resolving it claims outputs/<date>/<time> (claim_run_dir)
        try:
            os.makedirs(d, exist_ok=True)
            probe = os.path.join(d, f".write-check.{os.getpid()}")
            with open(probe, "wb") as f:
                f.write(b"0" * 4096)
                f.flush()
                os.fsync(f.fileno())
            os.remove(probe)
        except OSError as e:
            from gptlit.core.files import describe_os_error

            _fail(f"cannot write the run directory {d}: {describe_os_error(e)}; nothing was written; "
                  f"choose another with hydra.run.dir=<dir>")



def saved_environ(keys) -> dict:
    """os.environ's values of `keys` (None: absent), for restore_environ: the variables a sweep sets for its
    jobs (gptlit.run.search), or that Lightning leaves after a DDP job (gptlit.run.sweep)."""
    return {k: os.environ.get(k) for k in keys}


def restore_environ(saved: dict) -> None:
    """os.environ as saved_environ found it: each value put back, each absent variable removed."""
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
