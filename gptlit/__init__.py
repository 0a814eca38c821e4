"""gptlit: pretrain GPT-2-style models with PyTorch Lightning and Hydra."""

from gptlit.model.config import GPTConfig, PRESETS
from gptlit.core.errors import UserError
from gptlit.model.gpt import GPT

__all__ = ["GPT", "GPTConfig", "PRESETS", "UserError"]
__version__ = "0.1.0"
