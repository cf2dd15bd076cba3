"""minigpt: GPT-2 in NumPy, every residual-stream step under its TransformerLens hook name."""

from .config import ConfigError, GPT2Config
from .model import GPT2, hook_names
from .sources import CheckpointError

__all__ = ["GPT2", "GPT2Config", "ConfigError", "CheckpointError", "hook_names"]
