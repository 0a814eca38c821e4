"""The sampler and the pruner of a search, from the sweeper's settings (their defaults:
hydra_plugins/gptlit_optuna_sweeper.py); a sampler is made per trial, seeded from (seed, position)."""

from __future__ import annotations

from gptlit.core.errors import UserError
from gptlit.core.settings import plain

SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "cmaes": "CmaEsSampler", "gp": "GPSampler"}
SAMPLER_NEEDS = {"cmaes": "cmaes", "gp": "scipy"}  # module a sampler imports when it samples
PRUNERS = ("median", "hyperband", "none")


def _kwargs_for(cls, kwargs: dict, where: str) -> dict:
    import inspect

    accepted = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    for k in kwargs:
        if k not in accepted:
            raise UserError(f"{where}.{k}: {cls.__name__} takes no argument {k!r}; it takes {', '.join(accepted)}")
    return kwargs


def make_sampler(conf, position: int | None = None):
    """TPE (the default), random, CMA-ES or GP, seeded; `options` are the Optuna sampler's own arguments.

    With a seed and a `position` (the trial's place in the study, interrupted trials not counted), the
    sampler is seeded from (seed, position): the search makes one per trial, so what a trial draws
    depends only on the seed, its position and the trials before it, never on how many processes the
    study took (a sampler seeded once would start its random stream over in a continued search and
    draw the first trials' parameters again)."""
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
    seed = conf.get("seed")
    if seed is not None and position is not None:
        import numpy as np

        seed = int(np.random.SeedSequence([int(seed), int(position)]).generate_state(1)[0])
    kwargs["seed"] = seed
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
