"""Hyperparameter search with Optuna (>= 4): the sweeper behind `hparams_search=optuna`
(hydra_plugins/gptlit_optuna_sweeper.py is its Hydra face), the trials' side of pruning, and the
study's part of the sweep summary. One job a file, imports going down the list:

  study.py     the study on disk: its files in the sweep directory (optuna.journal, optuna.lock,
               best_params.yaml), the journal storage, trial states and what n_trials counts
  space.py     the search space: hydra.sweeper.params and the command line's sweeps as Optuna
               distributions, sampled values written back as overrides
  samplers.py  the sampler (seeded per trial) and the pruner from the sweeper's settings
  sweeper.py   `OptunaSearch`: open or continue the study, ask, launch each trial as a job, tell
  trial.py     a trial's side: report val/loss to its study, learn whether to stop (the Pruning callback)
  summary.py   the study's part of sweep_summary.md: trials, the best one, best_params.yaml, importances

  the study    lives in <sweep dir>/optuna.journal (Optuna's JournalStorage: an append-only file,
               no database), so running the same command with hydra.sweep.dir=<that sweep> continues
               it: finished trials are kept, a trial that was running when the process died is marked
               failed and its parameters are asked again, and n_trials counts the whole study. Each trial is
               drawn by a sampler seeded from (seed, its place in the study), so a continued search draws
               what the uninterrupted one would have.
  each trial   is a job of the sweep (a Hydra launch); its job number is its trial number. It reports
               val/loss at every validation (gptlit.training.pruning.Pruning, reaching the trial through
               the journal, so any launcher and DDP work) and stops when the pruner says it is hopeless.
  the answer   (best trial, its command line, best_params.yaml, parameter importances) is part of
               sweep_summary.md (gptlit.run.report calls gptlit.run.search.summary.study_summary).

Optuna is imported inside functions: Hydra imports the plugin at every start, and report.py reads
sweeps without a study.
"""
