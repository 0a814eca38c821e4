"""gptlit: pretrain GPT-2-style models with PyTorch Lightning and Hydra."""

from gptlit.config import GPTConfig, PRESETS
from gptlit.errors import UserError
from gptlit.model import GPT

__all__ = ["GPT", "GPTConfig", "PRESETS", "UserError"]
__version__ = "0.1.0"
