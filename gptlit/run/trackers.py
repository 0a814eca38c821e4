"""Experiment trackers (conf/logger/): each needs its package only when chosen."""

from __future__ import annotations

import os
from importlib.util import find_spec

from gptlit.core.errors import UserError

# Lightning logger class -> (the module it imports, the package to install)
PACKAGES = {
    "WandbLogger": ("wandb", "wandb"),
    "MLFlowLogger": ("mlflow", "mlflow"),
    "NeptuneLogger": ("neptune", "neptune"),
    "CometLogger": ("comet_ml", "comet-ml"),
}


def prepare_loggers(loggers) -> None:
    """Before any training: a chosen logger whose package is missing is one line saying what to install;
    MLflow gets its local file store allowed."""
    for key, conf in (loggers or {}).items():
        if conf is None or "_target_" not in conf:
            continue
        cls = str(conf["_target_"]).rsplit(".", 1)[-1]
        if cls not in PACKAGES:
            continue
        module, package = PACKAGES[cls]
        if find_spec(module) is None:
            raise UserError(
                f"logger.{key} ({cls}) needs the {package} package, which is not installed: pip install {package} "
                f"(or pip install -e \".[trackers]\"), or choose another logger (e.g. logger=tensorboard)"
            )
        if cls == "MLFlowLogger":
            allow_file_store(conf)


def allow_file_store(conf) -> None:
    """MLflow 3 refuses its file store (./mlruns) unless MLFLOW_ALLOW_FILE_STORE is set: it is in
    maintenance mode, not removed. A local store with no server and no database is what
    conf/logger/mlflow.yaml asks for, so allow it when no tracking URI (a server, sqlite:) is given."""
    uri = conf.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri or str(uri).startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
