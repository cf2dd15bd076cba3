"""minigpt: transformers in NumPy (GPT-2, OPT, LLaMA, Gemma 3), every residual-stream step under its TransformerLens
hook name. `load` and `from_pretrained` pick the family from config.json's model_type, or from a GGUF
file's general.architecture."""

from __future__ import annotations

import os
from pathlib import Path

from .backend import Backend, BackendError
from .config import ConfigError, GPT2Config
from .generate import Generation, Sampling, generate, stream
from .gpt2 import GPT2
from .model import HookPoint, KVCache, Transformer, hook_names
from .gemma3 import Gemma3, Gemma3Config
from .llama import Llama, LlamaConfig
from .opt import OPT, OPTConfig
from .sources import CheckpointError, locate
from .tokenizer import Tokenizer, TokenizerError

FAMILIES = {cls.model_type: cls for cls in (GPT2, OPT, Llama, Gemma3)}     # config.json's model_type -> the family's class
GGUF_FAMILIES = {cls.gguf_architecture: cls for cls in (Llama, Gemma3)}    # a GGUF file's general.architecture -> the class

__all__ = ["GPT2", "GPT2Config", "OPT", "OPTConfig", "Llama", "LlamaConfig", "Gemma3", "Gemma3Config", "Transformer", "from_pretrained", "FAMILIES", "Tokenizer", "load", "generate", "stream", "Generation", "Sampling",
           "HookPoint", "KVCache", "Backend", "ConfigError", "CheckpointError", "TokenizerError",
           "BackendError", "hook_names"]


def from_pretrained(name_or_path: str | os.PathLike, revision: str | None = None,
                    backend: str | Backend = "numpy", **options) -> Transformer:
    """The model of a folder, GGUF file or hub id, of the family its config.json's model_type (a
    GGUF file's general.architecture) names; `options` go to that family's from_pretrained
    (weights="auto"|"float32"|"lazy")."""
    from .config import read_json, show

    source = locate(name_or_path, revision)
    if source.gguf is not None:
        from .backend import get_backend
        from .gguf import load_model, read_gguf

        unknown = set(options) - {"weights"}
        if unknown:
            raise TypeError(f"from_pretrained of a GGUF file takes weights=..., not {', '.join(sorted(unknown))}")
        model = load_model(read_gguf(source.gguf), GGUF_FAMILIES, get_backend(backend), **options)
    else:
        path = source.file("config.json")
        model_type = read_json(path, "a model").get("model_type")
        if not isinstance(model_type, str) or model_type not in FAMILIES:
            raise ConfigError(f"{path}: model_type: {show(model_type)} is not supported (minigpt runs "
                              f"{', '.join(show(t) for t in FAMILIES)})")
        model = FAMILIES[model_type].from_pretrained(name_or_path, revision=revision, backend=backend, **options)
    # Where it came from, so that another process can load it again (a Dask worker, actadd.experiments.dask).
    local = Path(name_or_path)
    model.loaded_from = {"name_or_path": str(local.resolve()) if local.exists() else str(name_or_path),
                         "revision": revision, "options": dict(options)}
    return model


def load(name_or_path: str | os.PathLike, revision: str | None = None,
         backend: str | Backend = "numpy", **options) -> tuple[Transformer, Tokenizer]:
    """The model and its tokenizer from one folder, GGUF file or hub id (e.g. `model, tok =
    load("gpt2")`, `load("smollm2-135m")`); backend="cupy" puts the model on the current CUDA device."""
    model = from_pretrained(name_or_path, revision=revision, backend=backend, **options)
    tokenizer = Tokenizer.from_pretrained(name_or_path, revision=revision)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise CheckpointError(
            f"{name_or_path}: the tokenizer has {tokenizer.vocab_size} tokens but the model's "
            f"vocab_size is {model.config.vocab_size}; ids past it would have no embedding"
        )
    return model, tokenizer
