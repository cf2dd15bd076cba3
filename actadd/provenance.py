"""Where a result came from: the model (its config, the SHA-256 of its weights, how to load it
again) and this library's version. Vector files, results files and Dask workers check these, so
that a vector or a record never silently meets another model."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from importlib import metadata

import numpy as np

import minigpt
from minigpt import Transformer


def library_version() -> str:
    try:
        return metadata.version("minigpt-actadd")
    except metadata.PackageNotFoundError:
        return "unknown"


def model_config(model: Transformer) -> dict:
    """The config as JSON holds it (a tuple, such as a GGUF file's rope_freq_factors, as a list),
    so that one read back from a file compares equal."""
    return json.loads(json.dumps(asdict(model.config)))


def weights_hash(model: Transformer) -> str:
    """SHA-256 over every parameter's name, shape and float32 bytes, by name. Computed once
    per model and remembered on it."""
    cached = getattr(model, "_weights_sha256", None)
    if cached is None:
        h = hashlib.sha256()
        params = model.state_dict()
        for name in sorted(params):
            t = params[name]
            t = t.widen() if hasattr(t, "widen") else t                    # a lazily widened matrix, one at a time
            t = np.ascontiguousarray(model.backend.to_host(t), dtype=np.float32)
            h.update(f"{name}{t.shape}".encode())
            h.update(t.data)
        cached = h.hexdigest()
        model._weights_sha256 = cached
    return cached


def fingerprint(model: Transformer) -> dict:
    """The model a vector or a run was made on: its family, config and weights hash."""
    return {"model_type": model.model_type, "config": model_config(model), "weights_sha256": weights_hash(model)}


class ModelSourceError(ValueError):
    """A model that cannot be loaded again elsewhere, or that loads as other weights."""


@dataclass(frozen=True)
class ModelSource:
    """How to load a model again in another process (a Dask worker): what minigpt.load was
    given, and the SHA-256 of the weights it gave, which the copy must match."""

    name_or_path: str
    revision: str | None
    options: tuple
    backend: str
    weights_sha256: str

    @classmethod
    def of(cls, model: Transformer, backend: str | None = None) -> ModelSource:
        """`backend`: the other process's ("numpy", "cupy"; default the model's own here)."""
        source = getattr(model, "loaded_from", None)
        if source is None:
            raise ModelSourceError("a distributed run loads the model again on each worker, so it must come from "
                                   "minigpt.load(name or folder) (this one was built from arrays in memory)")
        return cls(source["name_or_path"], source["revision"], tuple(sorted(source["options"].items())),
                   backend or model.backend.name, weights_hash(model))

    def load(self):
        """(model, tokenizer), checked to be the weights this source was made from."""
        model, tokenizer = minigpt.load(self.name_or_path, revision=self.revision, backend=self.backend,
                                        **dict(self.options))
        if weights_hash(model) != self.weights_sha256:
            raise ModelSourceError(f"worker {os.uname().nodename}: {self.name_or_path} (revision {self.revision}) has "
                                   f"weights with SHA-256 {weights_hash(model)}, not the client's "
                                   f"{self.weights_sha256}: the same name is another checkpoint on this machine")
        return model, tokenizer
