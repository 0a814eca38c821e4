"""gptlit: pretrain GPT-2-style models with PyTorch Lightning and Hydra."""

from gptlit.config import ConfigError, GPTConfig, PRESETS
from gptlit.model import GPT

__all__ = ["GPT", "GPTConfig", "PRESETS", "ConfigError"]
__version__ = "0.1.0"
