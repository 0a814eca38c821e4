"""Settings as the code takes them: a Hydra node as plain Python (`plain`). The check that names an unknown
key is gptlit.core.errors.check_keys."""

from __future__ import annotations

from collections.abc import Mapping


def plain(node):
    """A DictConfig/ListConfig resolved into dicts and lists; a mapping copied; anything else (None) as it is."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return dict(node) if isinstance(node, Mapping) else node
