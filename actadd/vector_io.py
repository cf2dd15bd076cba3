"""Saving and loading steering vectors: one safetensors file, the activations as tensors and a
JSON manifest in its header, never a pickle. Direction vectors (the mean-difference reading of
contrast pairs) also travel as llama.cpp control vectors (GGUF, with the `gguf` extra).

The manifest records everything needed to apply the vector the way it was meant (the prompts,
tokens, coefficients, layers, the hook name, alignment and padding) and the model it was made
on (its config and a SHA-256 of its weights), so that a vector cannot silently run on another
model or at another site: loading against a different config is an error, and against different
weights too unless `allow_other_weights=True`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from minigpt import Transformer

from .direction import DirectionVector
from .output import atomic_write
from .provenance import library_version, model_config, weights_hash
from .steering import ALIGNMENTS, ActivationAddition, SteeringVector, residual_site, site

FORMAT = "actadd-steering-vector"
FORMAT_VERSION = 1
DIRECTION_FORMAT = "actadd-direction-vector"
DIRECTION_FORMAT_VERSION = 1


class VectorFileError(ValueError):
    """A steering vector file that is malformed, or made for another model."""


def save(vector: SteeringVector | DirectionVector, path: str | os.PathLike) -> Path:
    """Write `vector` to `path` atomically (a reader never sees half a file): a .safetensors
    file (the native format), or for a DirectionVector a .gguf llama.cpp control vector."""
    from safetensors.numpy import save_file

    path = Path(path)
    if path.suffix == ".gguf":
        return export_gguf(vector, path)
    if isinstance(vector, DirectionVector):
        manifest = {
            "format": DIRECTION_FORMAT, "format_version": DIRECTION_FORMAT_VERSION, "library_version": library_version(),
            "reading": vector.reading, "coeff": vector.coeff, "n_layer": vector.n_layer,
            "positions": vector.positions if isinstance(vector.positions, str) else list(vector.positions),
            "pairs": [list(p) for p in vector.pairs],
            "layers": [{"layer": L, "hook_name": vector.hook_name(L), "tensor": f"resid.{L}"} for L in vector.layers],
            "model": vector.fingerprint,
        }
        tensors = {f"resid.{L}": np.ascontiguousarray(d, dtype=np.float32) for L, d in zip(vector.layers, vector.directions)}
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"actadd": json.dumps(manifest)}))
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


def load(path: str | os.PathLike, model: Transformer, allow_other_weights: bool = False) -> SteeringVector | DirectionVector:
    """Read a vector saved by `save` (or a .gguf control vector), checked against `model`."""
    from safetensors import safe_open

    path = Path(path)
    if path.suffix == ".gguf":
        return import_gguf(path, model, allow_other_weights)
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
        if isinstance(manifest, dict) and manifest.get("format") == DIRECTION_FORMAT:
            return _load_directions(path, manifest, tensors, model, allow_other_weights)
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
    _check_made_on(path, made_on, model, allow_other_weights)
    return SteeringVector(additions, activations, alignment, padding, made_on)


def _check_made_on(path, made_on: dict, model: Transformer, allow_other_weights: bool) -> None:
    if made_on.get("config") != model_config(model):
        raise VectorFileError(f"{path}: made for a model with config {made_on.get('config')}, "
                              f"not this one ({model_config(model)})")
    if made_on.get("weights_sha256") != weights_hash(model) and not allow_other_weights:
        raise VectorFileError(f"{path}: made on weights with SHA-256 {made_on.get('weights_sha256')}, this model's "
                              f"are {weights_hash(model)}; pass allow_other_weights=True (--allow-other-weights) "
                              "to apply it anyway")


def _load_directions(path, manifest: dict, tensors: dict, model: Transformer, allow_other_weights: bool) -> DirectionVector:
    try:
        if manifest.get("format_version") != DIRECTION_FORMAT_VERSION:
            raise VectorFileError(f"{path}: {DIRECTION_FORMAT} version {manifest.get('format_version')!r}; expected "
                                  f"{DIRECTION_FORMAT_VERSION}")
        n = model.config.n_layer
        layers = [e["layer"] for e in manifest["layers"]]
        for e in manifest["layers"]:
            if e["hook_name"] != residual_site(e["layer"], n):
                raise VectorFileError(f"{path}: layer {e['layer']} is for hook {e['hook_name']!r}; this library "
                                      f"reads layer {e['layer']} as {residual_site(e['layer'], n)!r}")
            d = tensors[e["tensor"]]
            if d.dtype != np.float32 or d.shape != (model.config.n_embd,):
                raise VectorFileError(f"{path}: tensor {e['tensor']} is {d.dtype} {d.shape}; expected float32 "
                                      f"({model.config.n_embd},)")
        directions = [tensors[e["tensor"]] for e in manifest["layers"]]
        positions = manifest["positions"]
        vector = DirectionVector(tuple(layers), tuple(directions), n, manifest["coeff"], manifest["reading"],
                                 positions if isinstance(positions, str) else tuple(positions),
                                 tuple(tuple(p) for p in manifest["pairs"]), manifest["model"])
    except VectorFileError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise VectorFileError(f"{path}: malformed manifest ({type(e).__name__}: {e})") from None
    _check_made_on(path, vector.fingerprint, model, allow_other_weights)
    return vector


# ---------------------------------------------------------------------------------------------
# llama.cpp control vectors (GGUF)
#
# llama.cpp (common_control_vector_load, llama_adapter_cvec::apply) reads float32 tensors named
# direction.{i}, one [n_embd] vector each, i from 1, and adds direction.i to the output of its
# 0-based block i, at every token of the prompt and of the generation. Block 0's output cannot
# be steered. In our numbering the output of block i is the stream entering block i + 1:
#
#     direction.{i}  <->  layer i + 1 = blocks.{i+1}.hook_resid_pre  (i + 1 = n_layer: the last
#                         block's hook_resid_post)
#
# so layers 2 .. n_layer can be exported. general.architecture is "controlvector";
# controlvector.model_hint names the model family and controlvector.layer_count the number of
# directions, as llama.cpp's cvector-generator and repeng write them. Our own keys (actadd.*)
# keep the reading, coefficient, positions, pairs and the model's fingerprint; llama.cpp ignores
# them, and a file without them imports as a plain control vector (positions "all").

GGUF_ARCH = "controlvector"


def _gguf():
    try:
        import gguf
    except ImportError:
        raise VectorFileError("GGUF control vectors need the gguf package: pip install 'minigpt-actadd[gguf]'") from None
    return gguf


def export_gguf(vector: SteeringVector | DirectionVector, path: str | os.PathLike) -> Path:
    """Write a direction-per-layer vector as a llama.cpp control vector (atomically). The
    directions are written with the coefficient applied: llama.cpp's --control-vector FILE
    (scale 1) adds what our hooks add. An ActAdd matrix is refused, not collapsed."""
    import warnings

    path = Path(path)
    if isinstance(vector, SteeringVector):
        raise VectorFileError(
            f"{path}: this is ActAdd's per-position matrix ([positions, d_model] at layer(s) {vector.layers}, placed "
            f"over the prompt's {vector.alignment} positions); a llama.cpp control vector is one direction per layer "
            "added at every token, so the matrix cannot be one. Make the mean-difference direction instead "
            "(actadd.mean_of_pairs(..., reading='last' or 'mean'); --reading last on the command line)")
    if not isinstance(vector, DirectionVector):
        raise TypeError(f"export_gguf takes a DirectionVector, got {type(vector).__name__}")
    low = [L for L in vector.layers if L < 2]
    if low:
        raise VectorFileError(
            f"{path}: layer(s) {low} cannot be a llama.cpp control vector: direction.{{i}} goes after block i for i >= 1, "
            "which is our layer i + 1, so layers 0 and 1 (the embeddings, and block 0's output) have no name there")
    if vector.positions != "all":
        warnings.warn(f"{path}: this vector steers positions {vector.positions!r}; llama.cpp adds a control vector at "
                      "every token, generated ones included (our positions='all')", stacklevel=2)
    gguf = _gguf()
    made_on = vector.fingerprint or {}
    hint = made_on.get("model_type") or "unknown"

    def write(tmp):
        writer = gguf.GGUFWriter(tmp, GGUF_ARCH)
        writer.add_string("controlvector.model_hint", hint)
        writer.add_int32("controlvector.layer_count", len(vector.layers))
        writer.add_string("actadd.format", DIRECTION_FORMAT)
        writer.add_string("actadd.library_version", library_version())
        writer.add_string("actadd.reading", vector.reading)
        writer.add_float64("actadd.coeff", float(vector.coeff))
        writer.add_string("actadd.positions", json.dumps(vector.positions if isinstance(vector.positions, str)
                                                         else list(vector.positions)))
        writer.add_string("actadd.pairs", json.dumps([list(p) for p in vector.pairs]))
        writer.add_string("actadd.model", json.dumps(made_on))
        for L, d in sorted(zip(vector.layers, vector.directions)):
            writer.add_tensor(f"direction.{L - 1}", np.ascontiguousarray(d, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return atomic_write(path, write)


def _field(reader, name: str):
    f = reader.get_field(name)
    return None if f is None else f.contents()


def import_gguf(path: str | os.PathLike, model: Transformer, allow_other_weights: bool = False) -> DirectionVector:
    """Read a llama.cpp control vector as a DirectionVector for `model`: direction.{i} at layer
    i + 1. One written by export_gguf comes back with its reading, coefficient, positions and
    pairs, checked against the model it was made on; any other applies at every token, as in
    llama.cpp, with its model hint checked against `model`'s family."""
    gguf = _gguf()
    path = Path(path)
    if not path.is_file():
        raise VectorFileError(f"{path}: no such file")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # the reader raises ValueError, struct errors, ... on a malformed file
        raise VectorFileError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    arch = _field(reader, "general.architecture")
    if arch != GGUF_ARCH:
        raise VectorFileError(f"{path}: general.architecture is {arch!r}; a control vector has {GGUF_ARCH!r}")
    n, width = model.config.n_layer, model.config.n_embd
    layers, directions = [], []
    for t in reader.tensors:
        if not t.name.startswith("direction."):
            continue
        index = t.name.split(".", 1)[1]
        if not index.isdigit() or not 1 <= int(index) <= n - 1:
            raise VectorFileError(f"{path}: tensor {t.name}: expected direction.1 to direction.{n - 1} for a model of "
                                  f"{n} blocks (direction.i goes after block i)")
        if t.tensor_type != gguf.GGMLQuantizationType.F32 or int(t.n_elements) != width:
            raise VectorFileError(f"{path}: tensor {t.name} is {t.tensor_type.name} of {int(t.n_elements)} values; "
                                  f"expected F32 of n_embd = {width}")
        layers.append(int(index) + 1)
        directions.append(np.array(t.data, dtype=np.float32).reshape(width))   # a copy: the reader maps the file
    if not layers:
        raise VectorFileError(f"{path}: no direction.{{i}} tensors")
    order = np.argsort(layers)
    layers, directions = [layers[i] for i in order], [directions[i] for i in order]
    family = model.model_type
    if _field(reader, "actadd.format") == DIRECTION_FORMAT:
        made_on = json.loads(_field(reader, "actadd.model"))
        positions = json.loads(_field(reader, "actadd.positions"))
        vector = DirectionVector(tuple(layers), tuple(directions), n, float(_field(reader, "actadd.coeff")),
                                 _field(reader, "actadd.reading"), positions if isinstance(positions, str) else tuple(positions),
                                 tuple(tuple(p) for p in json.loads(_field(reader, "actadd.pairs"))), made_on)
        _check_made_on(path, made_on, model, allow_other_weights)
        return vector
    hint = _field(reader, "controlvector.model_hint")
    if hint != family and not allow_other_weights:
        raise VectorFileError(f"{path}: a control vector for {hint!r} models, and this is a {family!r} model; pass "
                              "allow_other_weights=True (--allow-other-weights) to apply it anyway")
    return DirectionVector(tuple(layers), tuple(directions), n, 1.0, "gguf", "all", (), {"model_type": hint})
