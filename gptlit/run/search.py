"""Hyperparameter search with Optuna (>= 4): the sweeper behind `hparams_search=optuna`
(hydra_plugins/gptlit_optuna_sweeper.py is its Hydra face), the trials' side of pruning, and the
study's part of the sweep summary.

  the study    lives in <sweep dir>/optuna.journal (Optuna's JournalStorage: an append-only file,
               no database), so running the same command with hydra.sweep.dir=<that sweep> continues
               it: finished trials are kept, a trial that was running when the process died is marked
               failed and its parameters are asked again, and n_trials counts the whole study.
  each trial   is a job of the sweep (a Hydra launch); its job number is its trial number. It reports
               val/loss at every validation (gptlit.training.pruning.Pruning, reaching the trial through
               the journal, so any launcher and DDP work) and stops when the pruner says it is hopeless.
  the answer   (best trial, its command line, best_params.yaml, parameter importances) is part of
               sweep_summary.md (gptlit.run.report calls study_summary).

Optuna is imported inside functions: Hydra imports the plugin at every start, and report.py reads
sweeps without a study.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from gptlit.core.errors import EXIT_USER_ERROR, UserError
from gptlit.core.job_record import RESULT_FILE, JobRecord, mark_failed, one_line
from gptlit.core.file_lock import ProcessLock
from gptlit.core.launch_env import restore_environ, saved_environ
from gptlit.core.settings import plain

JOURNAL_FILE = "optuna.journal"
LOCK_FILE = "optuna.lock"
BEST_FILE = "best_params.yaml"
# The study a trial belongs to ({"journal", "study", "pruner"}), set by the sweeper for the processes it
# starts, and the trial's number, set per job (hydra.job.env_set): Hydra passes both to a launcher's jobs
# and Lightning's DDP ranks inherit them.
STUDY_ENV = "GPTLIT_OPTUNA_STUDY"
TRIAL_ENV = "GPTLIT_OPTUNA_TRIAL"
SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "cmaes": "CmaEsSampler", "gp": "GPSampler"}
SAMPLER_NEEDS = {"cmaes": "cmaes", "gp": "scipy"}  # module a sampler imports when it samples
PRUNERS = ("median", "hyperband", "none")
MIN_TRIALS_FOR_IMPORTANCE = 5


# ---- the search space ----------------------------------------------------------------------------

@dataclass
class Space:
    """What each trial varies (Optuna distributions by config key) and the overrides every trial gets."""

    params: dict = field(default_factory=dict)  # key -> optuna distribution
    fixed: list = field(default_factory=list)  # overrides that are not searched (model=nano, ...)
    written: dict = field(default_factory=dict)  # key -> the sweep as written (for messages)

    def overrides(self, values: dict) -> list[str]:
        return [*self.fixed, *(f"{k}={override_value(values[k])}" for k in self.params)]

    def describe(self) -> dict:
        from optuna.distributions import distribution_to_json

        return {k: json.loads(distribution_to_json(d)) for k, d in self.params.items()}


def parse_space(params: dict | None, arguments: list[str]) -> Space:
    """The search space from hydra.sweeper.params and the command line (a sweep there, `optim.lr=1e-3,3e-4`
    or `optim.lr=interval(...)`, searches that key too; a plain value fixes it). A bad one: UserError."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    space = Space()
    for key, value in (params or {}).items():
        where = f"hydra.sweeper.params.{key}={value}"
        o = _parse(parser, f"{key}={_as_override_text(value)}", where)
        if o.is_sweep_override():
            space.params[key] = distribution(o, where)
            space.written[key] = where
        else:
            space.fixed.append(o.input_line)
    for arg in arguments:
        o = _parse(parser, arg, arg)
        key = o.key_or_group
        space.fixed = [f for f in space.fixed if _key(parser, f) != key]  # the command line wins
        space.params.pop(key, None)
        if o.is_sweep_override():
            space.params[key] = distribution(o, arg)
            space.written[key] = arg
        else:
            space.fixed.append(arg)
    if not space.params:
        raise UserError("hparams_search=optuna has nothing to search: give hydra.sweeper.params "
                        "(e.g. 'hydra.sweeper.params.optim.lr=tag(log, interval(1e-4, 1e-2))')")
    return space


def check_command_line(args: list[str]):
    """A search's command line, before Hydra reads it, so that a bad search space is one line: an override
    Hydra cannot parse (`x=choice()`), bad bounds (`x=interval(1, 0)`), or a sweep of
    hydra.sweeper.params.* (which Hydra refuses: it does not sweep its own config). Raises UserError."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for a in args:
        if a.startswith("-") or "=" not in a:  # Hydra's flags (-m, --cfg job, ...)
            continue
        o = _parse(parser, a, a)
        if not o.is_sweep_override():
            continue
        key = o.key_or_group
        if key.startswith("hydra.sweeper.params."):
            text = a.split("=", 1)[1]
            raise UserError(f"{a}: Hydra does not sweep its own config; give the search as "
                            f"'{key[len('hydra.sweeper.params.'):]}={text}' or quote the value: '{key}=\"{text}\"'")
        if not o.is_hydra_override():
            distribution(o, a)


def _as_override_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def _key(parser, line: str) -> str:
    return parser.parse_override(line).key_or_group


def _parse(parser, line: str, where: str):
    from hydra.errors import HydraException

    try:
        return parser.parse_override(line)
    except HydraException as e:
        msg = one_line(str(e).replace("\n", " "))
        hint = ("list at least one value, e.g. choice(0.0, 0.1)" if "empty choice" in msg else
                "write interval(low, high), choice(a, b, ...), range(start, stop[, step]) or tag(log, interval(...))")
        raise UserError(f"{where}: {msg}; {hint}") from None


def distribution(o, where: str):
    """An Optuna distribution for Hydra's interval / choice / range sweep (tag(log, ...): log scale)."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    v = o.value()
    log = "log" in (getattr(v, "tags", None) or ())
    if isinstance(v, ChoiceSweep):
        if log:
            raise UserError(f"{where}: log applies to interval(...) or range(...), not to choice(...); drop tag(log, ...)")
        bad = [c for c in v.list if not (c is None or isinstance(c, (bool, int, float, str)))]
        if bad:
            raise UserError(f"{where}: choice values must be numbers, strings, booleans or null, not {bad[0]!r}")
        if len(set(map(repr, v.list))) != len(v.list):
            raise UserError(f"{where}: a value is listed twice; list each value once")
        return CategoricalDistribution(list(v.list))
    if isinstance(v, IntervalSweep):  # Hydra reads interval bounds as floats: integers are range(...)'s
        low, high = float(v.start), float(v.end)
        if not low < high:
            raise UserError(f"{where}: low {low:g} >= high {high:g}; write interval(low, high) with low < high")
        if log and low <= 0:
            raise UserError(f"{where}: a log scale needs low > 0 (got {low:g}); raise low or drop tag(log, ...)")
        return FloatDistribution(low, high, log=log)
    if isinstance(v, RangeSweep):
        start, stop, step = v.start, v.stop, v.step
        if step is None or step <= 0:
            raise UserError(f"{where}: step must be > 0; write range(start, stop, step) with start < stop")
        n = math.ceil((stop - start) / step)
        if n < 1:
            raise UserError(f"{where}: the range is empty (start {start} >= stop {stop}; stop is excluded); "
                            f"write range(start, stop) with start < stop")
        if all(isinstance(x, int) for x in (start, stop, step)):
            if log and (step != 1 or start < 1):
                raise UserError(f"{where}: tag(log, range(...)) needs start >= 1 and step 1; drop tag(log, ...) "
                                f"or use tag(log, interval(...))")
            return IntDistribution(start, start + (n - 1) * step, step=step, log=log)
        if log:
            raise UserError(f"{where}: tag(log, range(...)) needs integers; use tag(log, interval(low, high))")
        return CategoricalDistribution([round(start + i * step, 12) for i in range(n)])
    raise UserError(f"{where}: {type(v).__name__.lower()} cannot be searched; use interval(...), choice(...) "
                    f"or range(...)")


def override_value(v) -> str:
    """A sampled value as Hydra override text that reads back as the same value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    s = str(v)
    try:
        if OverridesParser.create().parse_override(f"k={s}").value() == s:
            return s
    except Exception:
        pass
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


# ---- sampler, pruner, storage --------------------------------------------------------------------

def _kwargs_for(cls, kwargs: dict, where: str) -> dict:
    import inspect

    accepted = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    for k in kwargs:
        if k not in accepted:
            raise UserError(f"{where}.{k}: {cls.__name__} takes no argument {k!r}; it takes {', '.join(accepted)}")
    return kwargs


def make_sampler(conf):
    """TPE (the default), random, CMA-ES or GP, seeded; `options` are the Optuna sampler's own arguments."""
    import optuna
    from importlib.util import find_spec

    conf = plain(conf) or {}  # the defaults: hydra_plugins/gptlit_optuna_sweeper.py (SamplerConf)
    name = str(conf.get("name")).lower()
    if name not in SAMPLERS:
        raise UserError(f"hydra.sweeper.sampler.name={name} is unknown: use one of {', '.join(SAMPLERS)}")
    needs = SAMPLER_NEEDS.get(name)
    if needs and find_spec(needs) is None:
        raise UserError(f"hydra.sweeper.sampler.name={name} needs the {needs} package, which is not installed: "
                        f"pip install {needs}")
    cls = getattr(optuna.samplers, SAMPLERS[name])
    kwargs = dict(conf.get("options") or {})
    kwargs["seed"] = conf.get("seed")
    if name != "random" and conf.get("n_startup_trials") is not None:  # random trials are all "startup"
        kwargs["n_startup_trials"] = int(conf["n_startup_trials"])
    return cls(**_kwargs_for(cls, kwargs, "hydra.sweeper.sampler.options"))


def make_pruner(conf):
    """median (the default: stop a trial whose val/loss is worse than the median of finished trials' at the
    same step), hyperband, or none."""
    import optuna

    conf = plain(conf) or {}  # the defaults: hydra_plugins/gptlit_optuna_sweeper.py (PrunerConf)
    name = str(conf.get("name")).lower()
    options = dict(conf.get("options") or {})
    where = "hydra.sweeper.pruner.options"
    if name == "median":
        kwargs = {**{k: int(conf[k]) for k in ("n_startup_trials", "n_warmup_steps") if conf.get(k) is not None}, **options}
        return optuna.pruners.MedianPruner(**_kwargs_for(optuna.pruners.MedianPruner, kwargs, where))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(**_kwargs_for(optuna.pruners.HyperbandPruner, options, where))
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UserError(f"hydra.sweeper.pruner.name={name} is unknown: use one of {', '.join(PRUNERS)}")


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


def _quiet_optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own one line per trial says more


def _state_counts(trials) -> dict:
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
    c = _state_counts(trials)
    return c["complete"] + c["pruned"] + c["failed"]


def _lock_sweep(sweep_dir: Path) -> ProcessLock:
    """One process runs a search at a time: an exclusive lock on <sweep dir>/optuna.lock, held until the
    process ends (the system drops it when the process dies, however it dies)."""
    lock = ProcessLock(sweep_dir / LOCK_FILE, note=f"process {os.getpid()} on {socket.gethostname()}")
    if not lock.try_acquire():
        raise UserError(f"the search in {sweep_dir} is running now ({lock.holder() or 'another process'}); wait for "
                        f"it to end or stop it before continuing it")
    return lock


# ---- the sweeper ---------------------------------------------------------------------------------

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
        sample = {k: _first_value(d) for k, d in space.params.items()}
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
                    was = " ".join(before[what]) if what == "overrides" else _space_text(before[what])
                    got = " ".join(now) if what == "overrides" else _space_text(now)
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
            _quiet_optuna()
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
                trials = [study.ask(space.params) for _ in range(min(self.n_jobs, self.n_trials - done))]
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


def _first_value(d):
    from optuna.distributions import CategoricalDistribution

    return d.choices[0] if isinstance(d, CategoricalDistribution) else d.low


def _space_text(described: dict) -> str:
    return ", ".join(f"{k}: {v.get('name', '')}{json.dumps(v.get('attributes', {}), sort_keys=True)}"
                     for k, v in described.items())


def _job_dirs(sweep_dir: Path) -> list[Path]:
    if not sweep_dir.is_dir():
        return []
    return [p for p in sweep_dir.iterdir() if p.is_dir() and ((p / RESULT_FILE).is_file() or (p / ".hydra").is_dir())]


# ---- a trial's side: report val/loss, learn whether to stop ---------------------------------------

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

        _quiet_optuna()
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


# ---- the study's part of the sweep summary --------------------------------------------------------

def study_summary(sweep_dir: Path) -> str | None:
    """Markdown for sweep_summary.md: the study's trials, the best trial's parameters, value and command
    line, and the parameters' importances; writes best_params.yaml. None when the sweep has no study."""
    journal = Path(sweep_dir) / JOURNAL_FILE
    if not journal.is_file():
        return None
    try:
        import optuna
    except ImportError:
        return (f"## Optuna study\n\n{JOURNAL_FILE} holds an Optuna study; install optuna to summarize it: "
                f'pip install -e ".[sweep]"\n')
    _quiet_optuna()
    storage = open_storage(journal)
    parts = []
    for name in optuna.study.get_all_study_names(storage):
        parts.append(_one_study(optuna.load_study(study_name=name, storage=storage), Path(sweep_dir)))
    return "\n".join(parts) if parts else None


def _one_study(study, sweep_dir: Path) -> str:
    import yaml
    from optuna.trial import TrialState

    attrs = study.user_attrs
    trials = study.get_trials(deepcopy=False)
    c = _state_counts(trials)
    n_trials = attrs.get("n_trials")
    sampler, pruner = attrs.get("sampler") or {}, attrs.get("pruner") or {}
    lines = [f"## Optuna study `{study.study_name}`", ""]
    done = f"{finished(trials)} trials finished" + (f" of n_trials={n_trials}" if n_trials else "")
    kinds = ", ".join(f"{c[k]} {k}" for k in ("complete", "pruned", "failed") if c[k])
    lines.append(f"- {done}" + (f" ({kinds})" if kinds else ""))
    if c["interrupted"]:
        again = [f"{t.number} (as {r.number})" for t in trials if t.user_attrs.get("interrupted")
                 for r in trials if r.user_attrs.get("retry_of") == t.number]
        lines.append(f"- interrupted by a dead process and asked again: trial {', '.join(again) or c['interrupted']}")
    if c["running"]:
        lines.append(f"- running now: {c['running']}")
    seed = sampler.get("seed")
    lines.append(f"- {study.direction.name.lower()} the trial's best val/loss; sampler {sampler.get('name', 'tpe')}"
                 + (f" (seed {seed})" if seed is not None else "") + f", pruner {pruner.get('name', 'median')}; "
                 f"study in {JOURNAL_FILE} (to continue it: the same command with hydra.sweep.dir={sweep_dir})")
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    if pruned:
        lines.append("- pruned: " + ", ".join(
            f"trial {t.number} at step {t.last_step} (val/loss {t.intermediate_values[t.last_step]:.4f})"
            for t in pruned if t.last_step is not None))
    failed = [t for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get("interrupted")]
    if failed:
        lines.append("- failed: " + "; ".join(f"trial {t.number}: {t.user_attrs.get('failure', 'failed')}"
                                              for t in failed))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best_file = sweep_dir / BEST_FILE
    if not complete:
        lines += ["", "best: none yet (no trial completed)"]
        return "\n".join(lines) + "\n"
    best = study.best_trial
    command = "python train.py " + " ".join(
        shlex.quote(o) for o in [*_reproduce_overrides(attrs.get("command") or []),
                                 *(f"{k}={override_value(v)}" for k, v in best.params.items())])
    lines += ["", f"### Best: trial {best.number}, val/loss {best.value:.4f}", "", "| parameter | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt_param(v)} |" for k, v in best.params.items()]
    lines += ["", "Run it alone:", "", "```", command, "```", "", f"(also in {BEST_FILE})"]
    from gptlit.core.files import atomic_write

    atomic_write(best_file, yaml.safe_dump({"study": study.study_name, "trial": best.number, "value": best.value,
                                            "params": dict(best.params), "command": command}, sort_keys=False))
    lines += ["", "### Parameter importances", ""]
    lines += _importances(study, complete)
    return "\n".join(lines) + "\n"


def _reproduce_overrides(fixed: list[str]) -> list[str]:
    """The search's fixed overrides without hparams_search itself (a single run does not search)."""
    return [o for o in fixed if not o.lstrip("+~").startswith("hparams_search=")]


def _fmt_param(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _importances(study, complete) -> list[str]:
    """Optuna's PED-ANOVA importances (numpy only; fANOVA would need scikit-learn), from the complete trials."""
    import optuna

    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        return [f"not yet: {len(complete)} complete trial{'s' if len(complete) != 1 else ''}, "
                f"{MIN_TRIALS_FOR_IMPORTANCE} needed"]
    try:
        # the top quarter of trials against all: with a handful of trials, the default top tenth is one trial
        ev = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=0.25)
        imp = optuna.importance.get_param_importances(study, evaluator=ev)
    except Exception as e:  # e.g. every complete trial has the same parameters
        return [f"not computed: {one_line(str(e))}"]
    out = ["| parameter | importance |", "|---|---|"]
    out += [f"| {k} | {v:.3f} |" for k, v in imp.items()]
    out += ["", "(Optuna's PED-ANOVA over the complete trials: how much each parameter's values in the best "
                "quarter of trials differ from its values in all; sums to 1)"]
    return out
