"""Saving and loading steering vectors: one safetensors file, the activations as tensors and a
JSON manifest in its header, never a pickle.

The manifest records everything needed to apply the vector the way it was meant (the prompts,
tokens, coefficients, layers, the hook name, alignment and padding) and the model it was made
on (its config and a SHA-256 of its weights), so that a vector cannot silently run on another
model or at another site: loading against a different config is an error, and against different
weights too unless `allow_other_weights=True`.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

import numpy as np

from minigpt import Transformer

from .results import atomic_write
from .steering import ALIGNMENTS, ActivationAddition, SteeringVector, model_config_dict, site

FORMAT = "actadd-steering-vector"
FORMAT_VERSION = 1


class VectorFileError(ValueError):
    """A steering vector file that is malformed, or made for another model."""


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


def library_version() -> str:
    try:
        return metadata.version("minigpt-actadd")
    except metadata.PackageNotFoundError:
        return "unknown"


def save(vector: SteeringVector, path: str | os.PathLike) -> Path:
    """Write `vector` to `path` (a .safetensors file), atomically: a reader never sees half a file."""
    from safetensors.numpy import save_file

    path = Path(path)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "library_version": library_version(),
        "alignment": vector.alignment, "padding": vector.padding,
        "additions": [{"prompt": a.prompt, "tokens": list(a.tokens), "coeff": a.coeff, "layer": a.layer,
                       "hook_name": site(a.layer), "tensor": f"addition.{i}"}
                      for i, a in enumerate(vector.additions)],
        "model": vector.fingerprint,
    }
    tensors = {f"addition.{i}": np.ascontiguousarray(m, dtype=np.float32) for i, m in enumerate(vector.activations)}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"actadd": json.dumps(manifest)}))


def load(path: str | os.PathLike, model: Transformer, allow_other_weights: bool = False) -> SteeringVector:
    """Read a vector saved by `save`, checked against `model`."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            header = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except FileNotFoundError:
        raise VectorFileError(f"{path}: no such file") from None
    except Exception as e:  # safetensors raises its own error types for malformed files
        raise VectorFileError(f"{path}: not a readable safetensors file ({e})") from None
    if "actadd" not in header:
        raise VectorFileError(f"{path}: no actadd manifest in the header (not a steering vector saved by actadd)")
    try:
        manifest = json.loads(header["actadd"])
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise VectorFileError(f"{path}: format {manifest.get('format')!r} version "
                                  f"{manifest.get('format_version')!r}; expected {FORMAT!r} {FORMAT_VERSION}")
        entries, alignment, padding, made_on = (manifest["additions"], manifest["alignment"], manifest["padding"],
                                                manifest["model"])
        additions = tuple(ActivationAddition(tuple(e["tokens"]), e["coeff"], e["layer"], e["prompt"]) for e in entries)
        activations = tuple(tensors[e["tensor"]] for e in entries)
        for e in entries:
            if e["hook_name"] != site(e["layer"]):
                raise VectorFileError(f"{path}: addition {e['prompt']!r} is for hook {e['hook_name']!r}; "
                                      f"this library steers at {site(e['layer'])!r}")
    except VectorFileError:
        raise
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise VectorFileError(f"{path}: malformed manifest ({type(e).__name__}: {e})") from None
    if alignment not in ALIGNMENTS:
        raise VectorFileError(f"{path}: alignment {alignment!r} is not one of {ALIGNMENTS}")
    for a, m in zip(additions, activations):
        if m.dtype != np.float32 or m.shape != (len(a.tokens), model.config.n_embd):
            raise VectorFileError(f"{path}: tensor for {a.prompt!r} is {m.dtype} {m.shape}; expected float32 "
                                  f"({len(a.tokens)}, {model.config.n_embd})")
    if made_on.get("config") != model_config_dict(model):
        raise VectorFileError(f"{path}: made for a model with config {made_on.get('config')}, "
                              f"not this one ({model_config_dict(model)})")
    if made_on.get("weights_sha256") != weights_hash(model) and not allow_other_weights:
        raise VectorFileError(f"{path}: made on weights with SHA-256 {made_on.get('weights_sha256')}, this model's "
                              f"are {weights_hash(model)}; pass allow_other_weights=True (--allow-other-weights) "
                              "to apply it anyway")
    return SteeringVector(additions, activations, alignment, padding, made_on)
