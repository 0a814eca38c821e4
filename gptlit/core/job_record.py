"""A job's record, `job_result.json` in its run directory, and which Hydra job this process runs.

One schema (JobRecord) for every writer and reader: the training callback keeps it up to date
(gptlit.training.callbacks.job_result.JobResult), a job that fails outside training marks it failed
(gptlit.run.runner), and the sweep summary reads it (gptlit.run.report).

status is one of: running, ok, stopped early, interrupted, pruned, failed: <reason>.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from gptlit.core.errors import one_line  # noqa: F401 - also read from here (a job's failure line)
from gptlit.core.files import atomic_write

RESULT_FILE = "job_result.json"


@dataclass
class JobRecord:
    """What one training job did: its status, its val/loss curve and how far it got."""

    status: str = "running"
    job: int | None = None  # the job's number in its sweep (None for a single run)
    overrides: list[str] = field(default_factory=list)  # its command-line overrides
    val_curve: list[list] = field(default_factory=list)  # [optimizer step, tokens seen, val/loss] per validation
    steps: int = 0
    tokens: int = 0
    wall_time_s: float | None = None
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    extra: dict = field(default_factory=dict)  # what a sweeper adds (e.g. a pruned trial's last value)

    @property
    def failed(self) -> bool:
        return self.status.startswith("failed")

    @property
    def best(self) -> tuple[float | None, int | None]:
        """(lowest finite val/loss, its step)."""
        finite = [(c[2], c[0]) for c in self.val_curve if isinstance(c[2], (int, float)) and math.isfinite(c[2])]
        return min(finite) if finite else (None, None)

    @property
    def final(self) -> float | None:
        return self.val_curve[-1][2] if self.val_curve else None

    def to_dict(self) -> dict:
        best, step = self.best
        final = self.final
        d = {
            "status": self.status,
            "job": self.job,
            "overrides": list(self.overrides),
            "best_val_loss": best,
            "best_step": step,
            "final_val_loss": final,
            "final_val_ppl": math.exp(final) if final is not None and final < 700 else None,
            "steps": self.steps,
            "tokens": self.tokens,
            "wall_time_s": self.wall_time_s,
            "val_curve": [list(c) for c in self.val_curve],
            "pid": self.pid,
            "host": self.host,
        }
        if self.extra:
            d["extra"] = dict(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "JobRecord":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def write(self, run_dir: str | os.PathLike) -> Path:
        """Rewrite run_dir/job_result.json (atomically: a running sweep's summary never reads half a file)."""
        d = Path(run_dir)
        d.mkdir(parents=True, exist_ok=True)
        return atomic_write(d / RESULT_FILE, self.to_dict())

    @classmethod
    def read(cls, run_dir: str | os.PathLike) -> "JobRecord | None":
        try:
            return cls.from_dict(json.loads((Path(run_dir) / RESULT_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None


def mark_failed(run_dir: str | os.PathLike, reason: str, job: dict | None = None, replace: bool = False) -> JobRecord:
    """Record a job that failed (outside training, or before its first validation); an earlier
    failure's reason is kept, unless replace (a clearer account of the same failure)."""
    job = job or {}
    r = JobRecord.read(run_dir) or JobRecord(job=job.get("num"), overrides=list(job.get("overrides", [])))
    if replace or not r.failed:
        r.status = "failed: " + one_line(reason, 1000 if replace else 200)
    r.write(run_dir)
    return r


# ---- which job this process runs -----------------------------------------------------------------


def hydra_job() -> dict:
    """This job's Hydra facts: {"multirun", "num", "overrides", "hydra_overrides", "swept"}; empty outside Hydra."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    return {
        "multirun": hc.mode == RunMode.MULTIRUN,
        "num": hc.job.get("num"),
        "overrides": list(hc.overrides.task),
        "hydra_overrides": [o for o in hc.overrides.hydra if not o.startswith("hydra.mode=")],  # as typed
        "swept": swept_keys(hc) if hc.mode == RunMode.MULTIRUN else [],
    }


def swept_keys(hc) -> list[str]:
    """The keys a multirun varies: its sweep overrides (`optim.lr=1e-3,3e-4`, saved by Hydra in the sweep's
    multirun.yaml) and the sweeper's search space (hydra.sweeper.params, e.g. Optuna's)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    keys = list((hc.sweeper.get("params") or {}).keys())
    saved = Path(hc.sweep.dir) / "multirun.yaml"
    if saved.is_file():
        task = OmegaConf.load(saved).hydra.overrides.task
        keys += [o.key_or_group for o in OverridesParser.create().parse_overrides(list(task)) if o.is_sweep_override()]
    return list(dict.fromkeys(keys))


def override_values(overrides: list[str]) -> dict:
    """{key: value} of `key=value` overrides, typed as Hydra parses them (a config group's choice is its
    name). Deletions, hydra.* keys and paths (ckpt_path, data.path, paths.*) are left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = {}
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        key = o.key_or_group
        if o.is_delete() or key.startswith(("hydra.", "paths.")) or key in ("ckpt_path", "data.path"):
            continue
        value = o.value()
        if not isinstance(value, (int, float, str, bool)) or value is None:
            value = o.get_value_element_as_str()
        out[key] = value
    return out
