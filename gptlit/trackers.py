"""Experiment trackers (conf/logger/): each needs its package only when chosen."""

from __future__ import annotations

from importlib.util import find_spec

from gptlit.config import ConfigError

# Lightning logger class -> (the module it imports, the package to install)
PACKAGES = {
    "WandbLogger": ("wandb", "wandb"),
    "MLFlowLogger": ("mlflow", "mlflow"),
    "NeptuneLogger": ("neptune", "neptune"),
    "CometLogger": ("comet_ml", "comet-ml"),
}


def check_logger_packages(loggers) -> None:
    """A chosen logger whose package is missing: one line saying what to install (before any training)."""
    for key, conf in (loggers or {}).items():
        if conf is None or "_target_" not in conf:
            continue
        cls = str(conf["_target_"]).rsplit(".", 1)[-1]
        if cls not in PACKAGES:
            continue
        module, package = PACKAGES[cls]
        if find_spec(module) is None:
            raise ConfigError(
                f"logger.{key} ({cls}) needs the {package} package, which is not installed: pip install {package} "
                f"(or pip install -e \".[trackers]\"), or choose another logger (e.g. logger=tensorboard)"
            )
