"""gptlit's Optuna sweeper as a Hydra plugin: `hydra/sweeper=gptlit_optuna` (conf/hparams_search/optuna.yaml
selects it). Hydra finds sweepers only in the `hydra_plugins` namespace package and imports every module
there at each start, single runs included, so this module holds only the config schema and a thin
class; the search itself (Optuna, imported when a sweep starts) is gptlit.run.search."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class SamplerConf:
    name: str = "tpe"  # tpe | random | cmaes | gp
    seed: Optional[int] = None  # the same seed, the same trials (conf/hparams_search/optuna.yaml: ${seed})
    n_startup_trials: Optional[int] = None  # tpe, cmaes, gp: trials drawn at random first (null: Optuna's default)
    options: Dict[str, Any] = field(default_factory=dict)  # more keyword arguments of the Optuna sampler


@dataclass
class PrunerConf:
    name: str = "median"  # median | hyperband | none
    n_startup_trials: int = 2  # median: trials that finish before any is pruned
    n_warmup_steps: int = 0  # median: optimizer steps before a trial can be pruned
    options: Dict[str, Any] = field(default_factory=dict)  # more keyword arguments of the Optuna pruner


@dataclass
class GptlitOptunaSweeperConf:
    _target_: str = "hydra_plugins.gptlit_optuna_sweeper.GptlitOptunaSweeper"
    direction: str = "minimize"  # of what the task returns (train.py: the trial's best val/loss)
    n_trials: int = 8  # finished trials (complete, pruned or failed) of the whole study, over every run of it
    n_jobs: int = 1  # trials asked for at once and handed to the launcher together
    study_name: Optional[str] = None  # null: the study in the sweep's journal, or a new one named after the sweep
    sampler: SamplerConf = field(default_factory=SamplerConf)
    pruner: PrunerConf = field(default_factory=PrunerConf)
    params: Dict[str, Any] = field(default_factory=dict)  # key: interval(...) | choice(...) | range(...) | tag(log, ...) | value


ConfigStore.instance().store(group="hydra/sweeper", name="gptlit_optuna", node=GptlitOptunaSweeperConf,
                             provider="gptlit")


class GptlitOptunaSweeper(Sweeper):
    """Hydra's Sweeper interface around gptlit.run.search.sweeper.OptunaSearch."""

    def __init__(self, **conf: Any) -> None:
        from gptlit.run.search.sweeper import OptunaSearch

        self.search = OptunaSearch(**conf)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.search.setup(sweeper=self, hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> None:
        return self.search.sweep(arguments)
