"""A trial's side of a search: the job reports val/loss to its trial through the study's journal and learns
whether the pruner stops it (gptlit.training.pruning.Pruning calls the reporter)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from gptlit.core.errors import one_line
from gptlit.run.search.samplers import make_pruner
from gptlit.run.search.study import STUDY_ENV, TRIAL_ENV, open_storage, quiet_optuna, trial_id


class TrialReporter:
    """Reports a trial's val/loss to its study (through the journal) and asks the study's pruner whether
    to stop; on a stop it leaves the step and value on the trial, where the sweeper reads them."""

    def __init__(self, study, trial_id: int):
        import optuna

        self.trial = optuna.trial.Trial(study, trial_id)

    def report(self, step: int, value: float) -> bool:
        self.trial.report(value, step)
        if self.trial.should_prune():
            self.trial.set_user_attr("pruned", {"step": int(step), "value": float(value)})
            return True
        return False


def connect_trial(environ=os.environ) -> TrialReporter | None:
    """The reporter of the trial this job runs (STUDY_ENV and TRIAL_ENV set by the sweeper), else None.
    A job that cannot reach its study trains on without pruning (and says so)."""
    import logging

    if not environ.get(TRIAL_ENV) or not environ.get(STUDY_ENV):
        return None
    try:
        import optuna

        quiet_optuna()
        where = json.loads(environ[STUDY_ENV])
        storage = open_storage(Path(where["journal"]))
        study = optuna.load_study(study_name=where["study"], storage=storage,
                                  sampler=optuna.samplers.RandomSampler(), pruner=make_pruner(where.get("pruner")))
        return TrialReporter(study, trial_id(storage, where["study"], int(environ[TRIAL_ENV])))
    except Exception as e:  # pragma: no cover - the sweeper made the journal and the pruner moments ago
        logging.getLogger(__name__).warning(f"pruning is off for this trial: {one_line(str(e))}")
        return None


def trial_pruning_callback():
    """The Pruning callback for a job that is an Optuna trial, else None (gptlit.run.build adds it)."""
    if not os.environ.get(TRIAL_ENV) or not os.environ.get(STUDY_ENV):
        return None
    from gptlit.training.pruning import Pruning

    return Pruning(connect=connect_trial)
