"""Private names of torch, Lightning, Hydra and Optuna: only behind gptlit.core.private_api's adapters.

test_each_adapter_s_private_name_still_exists fails on the day a release renames one (then fix the
adapter, the one place); test_no_private_name_outside_the_adapters fails when code elsewhere uses one.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from gptlit.core import private_api

ROOT = Path(__file__).resolve().parents[1]
# the private names gptlit used before they went behind public APIs or the adapters
PRIVATE = re.compile(r'_is_mkldnn_bf16_supported|torch\._foreach_norm|\._trainer\b|optimizer\._optimizer|'
                     r'"_optimizer"|\._trial_id|\._return_value')


def _resolve(dotted: str):
    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for p in parts[1:]:
        obj = getattr(obj, p)  # AttributeError (or torch's RuntimeError for an unknown op): the name is gone
    return obj


def test_the_adapters_are_listed():
    public = sorted(n for n, v in vars(private_api).items() if callable(v) and not n.startswith("_")
                    and getattr(v, "__module__", "") == private_api.__name__)
    assert public == sorted(private_api.ADAPTERS) == ["cpu_bf16_supported"]


@pytest.mark.parametrize("adapter,name", sorted(private_api.ADAPTERS.items()))
def test_each_adapter_s_private_name_still_exists(adapter, name):
    assert callable(_resolve(name)), name
    assert isinstance(getattr(private_api, adapter)(), bool)


def test_no_private_name_outside_the_adapters():
    files = [*ROOT.glob("*.py"), *(ROOT / "gptlit").rglob("*.py"), *(ROOT / "hydra_plugins").rglob("*.py"),
             *(ROOT / "benchmarks").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]
    own = {ROOT / "gptlit/core/private_api.py", Path(__file__).resolve()}
    hits = [f"{f.relative_to(ROOT)}:{n}: {line.strip()}" for f in files if f.resolve() not in own
            for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1) if PRIVATE.search(line)]
    assert not hits, "private names outside gptlit/core/private_api.py:\n" + "\n".join(hits)
