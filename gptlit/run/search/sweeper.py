"""`OptunaSearch`, the sweeper: checks the search before any trial, opens (or continues) the study under the
sweep directory's lock, asks Optuna for trials, launches each as a job of the sweep and tells Optuna how
it ended."""

from __future__ import annotations

import json
import math
import os
import socket
import sys
from pathlib import Path

from gptlit.core.errors import EXIT_USER_ERROR, UserError
from gptlit.core.file_lock import ProcessLock
from gptlit.core.job_record import RESULT_FILE, JobRecord, mark_failed, one_line
from gptlit.core.launch_env import restore_environ, saved_environ
from gptlit.core.settings import plain
from gptlit.run.search.samplers import make_pruner, make_sampler
from gptlit.run.search.space import Space, first_value, parse_space, space_text
from gptlit.run.search.study import (JOURNAL_FILE, LOCK_FILE, STUDY_ENV, TRIAL_ENV, finished, open_storage,
                                     quiet_optuna, trial_id)


def _job_error(ret) -> str:
    """What ended a failed Hydra job: JobReturn.return_value raises it (after a line on stderr, kept out)."""
    import contextlib
    import io

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            ret.return_value
    except BaseException as e:  # noqa: BLE001 - the job's own exception, whatever it is
        return f"{type(e).__name__}: {e}"
    return "unknown failure"


def _lock_sweep(sweep_dir: Path) -> ProcessLock:
    """One process runs a search at a time: an exclusive lock on <sweep dir>/optuna.lock, held until the
    process ends (the system drops it when the process dies, however it dies)."""
    lock = ProcessLock(sweep_dir / LOCK_FILE, note=f"process {os.getpid()} on {socket.gethostname()}")
    if not lock.try_acquire():
        raise UserError(f"the search in {sweep_dir} is running now ({lock.holder() or 'another process'}); wait for "
                        f"it to end or stop it before continuing it")
    return lock


class OptunaSearch:
    """Asks Optuna for trials, launches each as a job of the sweep, tells Optuna how it ended."""

    def __init__(self, *, direction, n_trials, n_jobs, study_name, sampler, pruner, params):
        """The sweeper's settings, their defaults in hydra_plugins/gptlit_optuna_sweeper.py (GptlitOptunaSweeperConf)."""
        self.direction, self.n_trials, self.n_jobs = str(direction), n_trials, n_jobs
        self.study_name = study_name
        self.sampler_conf, self.pruner_conf = plain(sampler) or {}, plain(pruner) or {}
        self.params = plain(params) or {}
        self._lock = None  # the sweep directory's lock, held while this process runs the search

    def setup(self, *, sweeper, hydra_context, task_function, config):
        from hydra.core.plugins import Plugins

        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)
        self.sweep_dir = Path(str(config.hydra.sweep.dir))

    # -- checks before any trial --

    def _check(self, arguments: list[str]):
        if self.direction not in ("minimize", "maximize"):
            raise UserError(f"hydra.sweeper.direction={self.direction} is unknown: use minimize or maximize")
        for name in ("n_trials", "n_jobs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"hydra.sweeper.{name}={v} must be an integer >= 1")
        space = parse_space(self.params, arguments)
        sampler, pruner = make_sampler(self.sampler_conf), make_pruner(self.pruner_conf)
        # a key that is not in the config fails here, once, instead of in every trial
        sample = {k: first_value(d) for k, d in space.params.items()}
        try:
            self.hydra_context.config_loader.load_sweep_config(self.config, space.overrides(sample))
        except Exception as e:
            raise UserError(f"the search space does not fit the config: {one_line(str(e), 300)}; "
                            f"check the keys of hydra.sweeper.params and the command line") from None
        return space, sampler, pruner

    def _open_study(self, space: Space, sampler, pruner):
        import optuna
        from optuna.trial import TrialState

        journal = self.sweep_dir / JOURNAL_FILE
        if not journal.is_file() and _job_dirs(self.sweep_dir):
            raise UserError(f"hydra.sweep.dir={self.sweep_dir} holds jobs of another sweep and no {JOURNAL_FILE}; "
                            f"give a new hydra.sweep.dir for a search")
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_sweep(self.sweep_dir)
        storage = open_storage(journal)
        names = optuna.study.get_all_study_names(storage)
        name = self.study_name
        if name is None:
            if len(names) > 1:
                raise UserError(f"{journal} holds studies {', '.join(names)}: pick one with hydra.sweeper.study_name=...")
            name = names[0] if names else str(self.sweep_dir)  # a new study is named after its sweep
        resumed = name in names
        study = optuna.create_study(storage=storage, sampler=sampler, pruner=pruner, study_name=name,
                                    direction=self.direction, load_if_exists=True)
        if study.direction.name.lower() != self.direction:
            raise UserError(f"study {name!r} in {journal} was run with direction {study.direction.name.lower()}; "
                            f"rerun with hydra.sweeper.direction={study.direction.name.lower()} to continue it")
        if resumed:
            before = study.user_attrs
            for what, now in (("overrides", sorted(space.fixed)), ("space", space.describe())):
                if what in before and before[what] != now:
                    was = " ".join(before[what]) if what == "overrides" else space_text(before[what])
                    got = " ".join(now) if what == "overrides" else space_text(now)
                    raise UserError(f"the search in {self.sweep_dir} was started with {what} [{was}], this command "
                                    f"gives [{got}]; rerun it with the same {what} to continue it, or give a new "
                                    f"hydra.sweep.dir for a new search")
        else:
            study.set_user_attr("overrides", sorted(space.fixed))
            study.set_user_attr("space", space.describe())
        study.set_user_attr("command", space.fixed)  # the trials' overrides, in the order given
        study.set_user_attr("n_trials", self.n_trials)
        study.set_user_attr("sampler", self.sampler_conf)
        study.set_user_attr("pruner", self.pruner_conf)
        # we hold the sweep's lock, so a trial still marked running belongs to a process that died:
        # failed, and asked again
        retried = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            tid = trial_id(storage, study.study_name, t.number)
            storage.set_trial_user_attr(tid, "interrupted", True)
            storage.set_trial_state_values(tid, TrialState.FAIL)
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            retried.append(t.number)
        return study, journal, resumed, retried

    # -- the loop --

    def sweep(self, arguments: list[str]):
        try:
            quiet_optuna()
            space, sampler, pruner = self._check(arguments)
            study, journal, resumed, retried = self._open_study(space, sampler, pruner)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)
        done = finished(study.get_trials(deepcopy=False))
        head = f"optuna study {study.study_name!r} ({journal}): "
        if resumed:
            head += f"continuing, {done} of {self.n_trials} trials finished"
            if retried:
                head += f"; trial{'s' if len(retried) > 1 else ''} {', '.join(map(str, retried))} " \
                        f"interrupted, asked again"
        else:
            head += f"{self.n_trials} trials"
        print(head + f"; sampler {self.sampler_conf['name']}, pruner {self.pruner_conf['name']}",
              flush=True)
        env = {STUDY_ENV: json.dumps({"journal": str(journal.resolve()), "study": study.study_name,
                                      "pruner": self.pruner_conf})}
        before = saved_environ(env)
        os.environ.update(env)
        try:
            while done < self.n_trials:
                trials = [self._ask(study, space) for _ in range(min(self.n_jobs, self.n_trials - done))]
                # job number = trial number (the job directories and the summary name trials by it); the
                # launcher numbers a batch consecutively, which trials asked one after another are
                for group in _consecutive(trials):
                    # the trial's number for its job (connect_trial finds the trial by it)
                    batch = [[*space.overrides(t.params), f"++hydra.job.env_set.{TRIAL_ENV}={t.number}"]
                             for t in group]
                    returns = self.launcher.launch(batch, initial_job_idx=group[0].number)
                    for t, ret in zip(group, returns):
                        self._tell(study, t, ret)
                done = finished(study.get_trials(deepcopy=False))
        finally:
            restore_environ(before)
            if self._lock is not None:
                self._lock.release()
        return study

    def _ask(self, study, space: Space):
        """The next trial, drawn by a sampler seeded from (seed, the trial's position): the trials before it
        that were not interrupted (an interrupted trial's retry, waiting in the queue, takes its place)."""
        from optuna.trial import TrialState

        position = sum(1 for t in study.get_trials(deepcopy=False)
                       if t.state != TrialState.WAITING and not t.user_attrs.get("interrupted"))
        study.sampler = make_sampler(self.sampler_conf, position)
        return study.ask(space.params)

    def _tell(self, study, trial, ret):
        from hydra.core.utils import JobStatus
        from optuna.trial import TrialState

        job_dir = None
        try:
            job_dir = Path(str(ret.hydra_cfg.hydra.runtime.output_dir))
        except Exception:
            pass
        rec = JobRecord.read(job_dir) if job_dir is not None else None
        frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
        pruned = frozen.user_attrs.get("pruned")
        value = None
        if ret.status == JobStatus.COMPLETED:
            value = ret.return_value
        if ret.status != JobStatus.COMPLETED:
            reason = one_line(_job_error(ret))
        elif pruned:
            study.tell(trial, state=TrialState.PRUNED)  # Optuna keeps the last reported val/loss as its value
            print(f"trial {trial.number}: pruned at step {pruned['step']} (val/loss {pruned['value']:.4f})", flush=True)
            return
        elif isinstance(value, (int, float)) and math.isfinite(value):
            study.tell(trial, float(value))
            best = study.best_trial
            print(f"trial {trial.number}: val/loss {value:.4f} (best: trial {best.number}, {best.value:.4f})", flush=True)
            return
        else:  # a NaN objective is a failure, never the best
            reason = rec.status[len("failed: "):] if rec is not None and rec.failed else f"objective {value!r}"
        trial.set_user_attr("failure", reason)
        study.tell(trial, state=TrialState.FAIL)
        if job_dir is not None and (rec is None or not rec.failed):  # the summary shows it failed, whatever the task wrote
            mark_failed(job_dir, reason, {"num": trial.number, "overrides": [
                o for o in ret.overrides or [] if not o.lstrip("+~").startswith("hydra.")]})
        print(f"trial {trial.number}: failed: {reason}; the search goes on", flush=True)


def _consecutive(trials: list) -> list[list]:
    groups = []
    for t in trials:
        if groups and groups[-1][-1].number + 1 == t.number:
            groups[-1].append(t)
        else:
            groups.append([t])
    return groups


def _job_dirs(sweep_dir: Path) -> list[Path]:
    if not sweep_dir.is_dir():
        return []
    return [p for p in sweep_dir.iterdir() if p.is_dir() and ((p / RESULT_FILE).is_file() or (p / ".hydra").is_dir())]
