"""From a Hydra config to a finished job: config groups, checks, build, the runner, sweeps and their report, trackers."""
