"""minigpt: transformers in NumPy (GPT-2), every residual-stream step under its TransformerLens hook name."""

from __future__ import annotations

import os

from .backend import Backend, BackendError
from .config import ConfigError, GPT2Config
from .generate import Generation, Sampling, generate, stream
from .gpt2 import GPT2
from .model import HookPoint, KVCache, Transformer, hook_names
from .sources import CheckpointError
from .tokenizer import Tokenizer, TokenizerError

__all__ = ["GPT2", "GPT2Config", "Transformer", "Tokenizer", "load", "generate", "stream", "Generation", "Sampling",
           "HookPoint", "KVCache", "Backend", "ConfigError", "CheckpointError", "TokenizerError",
           "BackendError", "hook_names"]


def load(name_or_path: str | os.PathLike, revision: str | None = None,
         backend: str | Backend = "numpy") -> tuple[GPT2, Tokenizer]:
    """The model and its tokenizer from one folder or hub id (e.g. `model, tok = load("gpt2")`);
    backend="cupy" puts the model on the current CUDA device."""
    model = GPT2.from_pretrained(name_or_path, revision=revision, backend=backend)
    tokenizer = Tokenizer.from_pretrained(name_or_path, revision=revision)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise CheckpointError(
            f"{name_or_path}: the tokenizer has {tokenizer.vocab_size} tokens but the model's "
            f"vocab_size is {model.config.vocab_size}; ids past it would have no embedding"
        )
    return model, tokenizer
