"""An Optuna study on disk: its files in the sweep directory, the journal storage, the environment that
tells a trial's processes where their study is, and the trials' states (what n_trials counts)."""

from __future__ import annotations

from pathlib import Path

JOURNAL_FILE = "optuna.journal"
LOCK_FILE = "optuna.lock"
BEST_FILE = "best_params.yaml"
# The study a trial belongs to ({"journal", "study", "pruner"}), set by the sweeper for the processes it
# starts, and the trial's number, set per job (hydra.job.env_set): Hydra passes both to a launcher's jobs
# and Lightning's DDP ranks inherit them.
STUDY_ENV = "GPTLIT_OPTUNA_STUDY"
TRIAL_ENV = "GPTLIT_OPTUNA_TRIAL"


def open_storage(path: Path):
    """Optuna's journal storage in one file: appends under a lock, so the sweeper and its trials' processes
    write to it together, and a killed process leaves every record it finished writing."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


def trial_id(storage, study_name: str, number: int) -> int:
    """The storage's id of a study's trial `number`, through Optuna's public storage API (a Trial object
    is built from it; Trial and FrozenTrial keep it private)."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)


def quiet_optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own one line per trial says more


def state_counts(trials) -> dict:
    from optuna.trial import TrialState

    c = {"complete": 0, "pruned": 0, "failed": 0, "interrupted": 0, "running": 0, "waiting": 0}
    for t in trials:
        if t.state == TrialState.COMPLETE:
            c["complete"] += 1
        elif t.state == TrialState.PRUNED:
            c["pruned"] += 1
        elif t.state == TrialState.FAIL:
            c["interrupted" if t.user_attrs.get("interrupted") else "failed"] += 1
        elif t.state == TrialState.RUNNING:
            c["running"] += 1
        else:
            c["waiting"] += 1
    return c


def finished(trials) -> int:
    """What n_trials counts: complete, pruned and failed trials; a trial interrupted by a dead process is
    asked again, so it does not count."""
    c = state_counts(trials)
    return c["complete"] + c["pruned"] + c["failed"]
