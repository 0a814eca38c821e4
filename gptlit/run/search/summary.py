"""The study's part of sweep_summary.md (gptlit.run.report calls study_summary): the trials, the best one's
parameters, value and command line (also written as best_params.yaml), the parameters' importances."""

from __future__ import annotations

import shlex
from pathlib import Path

from gptlit.core.errors import one_line
from gptlit.run.search.space import override_value
from gptlit.run.search.study import BEST_FILE, JOURNAL_FILE, finished, open_storage, quiet_optuna, state_counts

MIN_TRIALS_FOR_IMPORTANCE = 5


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
    quiet_optuna()
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
    c = state_counts(trials)
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
