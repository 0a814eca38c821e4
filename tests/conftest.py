"""Shared fixtures: compose the real Hydra config with test overrides and run tiny trainings in-process."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from gptlit.run.config_store import register_configs

register_configs()  # the model, optim and sampling groups, as train.py and sample.py register them

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# A tiny, fast run: nano model, short windows, few steps, no samples.
TINY = [
    "model=nano",
    "data.max_length=32",
    "data.batch_size=4",
    "trainer.max_steps=4",
    "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false",
    "sampling.every_n_steps=0",
    "callbacks.progress_bar=null",
]


def compose_cfg(overrides: list[str], output_dir: Path, config_name: str = "train"):
    """The train config as train.py would see it, with outputs under output_dir."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name, overrides=[*overrides, f"paths.output_dir={output_dir}"])


@pytest.fixture
def make_cfg(tmp_path):
    def make(*overrides: str, tiny: bool = True):
        return compose_cfg([*(TINY if tiny else []), *overrides], tmp_path / "run")

    return make


def write_corpus(folder: Path) -> Path:
    """A small English text file (about 4,000 tokens) made for the tests."""
    words = (
        "the quick brown fox jumps over the lazy dog while a painter named Jack studies his canvas "
        "and wonders whether every effort moves him closer to the picture he has in mind"
    ).split()
    lines = [" ".join(words[(i * 7) % len(words) :] + words[: (i * 7) % len(words)]) + "." for i in range(120)]
    p = folder / "corpus.txt"
    p.write_text("\n".join(lines), encoding="utf-8")
    return p


@pytest.fixture
def corpus(tmp_path) -> Path:
    """A small English text file (about 4,000 tokens) made for the tests."""
    return write_corpus(tmp_path)


@pytest.fixture(autouse=True, scope="session")
def private_token_cache(tmp_path_factory):
    """Token files (and downloads) go to a folder of the test session, never to ~/.cache/gptlit."""
    import os

    old = os.environ.get("GPTLIT_CACHE")
    os.environ["GPTLIT_CACHE"] = str(tmp_path_factory.mktemp("gptlit-cache"))
    yield
    if old is None:
        os.environ.pop("GPTLIT_CACHE", None)
    else:
        os.environ["GPTLIT_CACHE"] = old
