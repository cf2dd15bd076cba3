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
import math
import os
from pathlib import Path

import numpy as np

from minigpt import Transformer
from minigpt.textfiles import describe, parse_json

from .direction import DirectionVector
from .methods import ABLATION_SITES, AblationVector
from .output import atomic_write
from .provenance import library_version, model_config, weights_hash
from .steering import ALIGNMENTS, ActivationAddition, SteeringVector, residual_site, site

FORMAT = "actadd-steering-vector"
FORMAT_VERSION = 1
DIRECTION_FORMAT = "actadd-direction-vector"
DIRECTION_FORMAT_VERSION = 1
ABLATION_FORMAT = "actadd-ablation-vector"
ABLATION_FORMAT_VERSION = 1


class VectorFileError(ValueError):
    """A steering vector file that is malformed, or made for another model."""


def save(vector: SteeringVector | DirectionVector | AblationVector, path: str | os.PathLike) -> Path:
    """Write `vector` to `path` atomically (a reader never sees half a file): a .safetensors
    file (the native format), or for a DirectionVector a .gguf llama.cpp control vector."""
    from safetensors.numpy import save_file

    path = Path(path)
    if path.suffix == ".gguf":
        return export_gguf(vector, path)
    _check_arrays(vector, path)
    if isinstance(vector, AblationVector):
        manifest = {
            "format": ABLATION_FORMAT, "format_version": ABLATION_FORMAT_VERSION, "library_version": library_version(),
            "operation": "x <- x - strength (x . u) u", "strength": vector.strength, "read_at": vector.read_at,
            "at": vector.at, "hook_names": [name for _, name in vector.sites()], "n_layer": vector.n_layer,
            "pairs": [list(p) for p in vector.pairs], "provenance": vector.provenance, "tensor": "direction",
            "model": vector.fingerprint,
        }
        tensors = {"direction": np.ascontiguousarray(vector.direction, dtype=np.float32)}
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"actadd": json.dumps(manifest)}))
    if isinstance(vector, DirectionVector):
        manifest = {
            "format": DIRECTION_FORMAT, "format_version": DIRECTION_FORMAT_VERSION, "library_version": library_version(),
            "reading": vector.reading, "coeff": vector.coeff, "n_layer": vector.n_layer,
            "positions": vector.positions if isinstance(vector.positions, str) else list(vector.positions),
            "pairs": [list(p) for p in vector.pairs], "provenance": vector.provenance,
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


def _check_arrays(vector: SteeringVector | DirectionVector, path) -> None:
    """What is about to be written: float32 of the right shape, finite (a NaN written is a column
    of <|endoftext|> for whoever loads it)."""
    if isinstance(vector, AblationVector):
        check_tensor(vector.direction, vector.direction.shape[:1], path, "direction")
    elif isinstance(vector, DirectionVector):
        for L, d in zip(vector.layers, vector.directions):
            check_tensor(d, d.shape[:1], path, f"resid.{L}")
    else:
        for i, (a, m) in enumerate(zip(vector.additions, vector.activations)):
            check_tensor(m, (len(a.tokens), getattr(m, "shape", (0, 0))[-1]), path, f"addition.{i}")


def load(path: str | os.PathLike, model: Transformer, allow_other_weights: bool = False) -> SteeringVector | DirectionVector:
    """Read a vector saved by `save` (or a .gguf control vector), checked against `model`:
    every manifest field by its JSON type, every tensor's dtype, shape and finiteness."""
    from safetensors import safe_open

    path = Path(path)
    if path.suffix == ".gguf":
        return import_gguf(path, model, allow_other_weights)
    if not path.is_file():
        raise VectorFileError(f"{path}: no such file" + (" (a folder)" if path.is_dir() else ""))
    try:
        with safe_open(str(path), framework="numpy") as f:
            header = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as e:  # safetensors raises its own error types for malformed files
        raise VectorFileError(f"{path}: not a readable safetensors file ({e})") from None
    if "actadd" not in header:
        raise VectorFileError(f"{path}: no actadd manifest in the header (not a steering vector saved by actadd)")
    manifest = parse_json(header["actadd"], f"{path}: actadd manifest", VectorFileError)
    check = _Fields(path)
    check.kind(manifest, "the actadd manifest", dict, "an object")
    if manifest.get("format") == DIRECTION_FORMAT:
        return _load_directions(path, manifest, tensors, model, allow_other_weights)
    if manifest.get("format") == ABLATION_FORMAT:
        return _load_ablation(path, manifest, tensors, model, allow_other_weights)
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise VectorFileError(f"{path}: format {manifest.get('format')!r} version "
                              f"{manifest.get('format_version')!r}; expected {FORMAT!r} {FORMAT_VERSION}")
    entries = check.field(manifest, "additions", list, "an array of additions")
    alignment = check.field(manifest, "alignment", str, f"one of {', '.join(ALIGNMENTS)}", choices=ALIGNMENTS)
    padding = check.field(manifest, "padding", str, "a padding name")
    made_on = check.field(manifest, "model", dict, "an object: the model's type, config and weights hash")
    if not entries:
        raise VectorFileError(f"{path}: additions: [] (expected at least one addition)")
    additions, activations = [], []
    for i, e in enumerate(entries):
        where = f"additions[{i}]"
        check.kind(e, where, dict, "an object")
        tokens = check.field(e, "tokens", list, "an array of token ids", where)
        if not tokens or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < model.config.vocab_size
                                 for t in tokens):
            raise VectorFileError(f"{path}: {where}.tokens: {_short(tokens)} (expected token ids in [0, "
                                  f"{model.config.vocab_size}), at least one)")
        coeff = check.field(e, "coeff", (int, float), "a finite number", where)
        layer = check.field(e, "layer", int, f"a block from 0 to {model.config.n_layer - 1}", where,
                            within=range(model.config.n_layer))
        prompt = check.field(e, "prompt", str, "the prompt's text", where)
        hook = check.field(e, "hook_name", str, f"{site(layer)!r}", where)
        if hook != site(layer):
            raise VectorFileError(f"{path}: addition {prompt!r} is for hook {hook!r}; "
                                  f"this library steers at {site(layer)!r}")
        name = check.field(e, "tensor", str, "the name of its tensor", where)
        m = check.tensor(tensors, name, (len(tokens), model.config.n_embd), f"{where}.tensor")
        try:
            additions.append(ActivationAddition(tuple(tokens), coeff, layer, prompt))
        except ValueError as error:
            raise VectorFileError(f"{path}: {where}: {error}") from None
        activations.append(m)
    _check_made_on(path, made_on, model, allow_other_weights)
    return SteeringVector(tuple(additions), tuple(activations), alignment, padding, made_on)


class _Fields:
    """Checks of a vector file's fields, each error naming the file and the field."""

    def __init__(self, path: Path):
        self.path = path

    def kind(self, value, where: str, kind, expected: str):
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise VectorFileError(f"{self.path}: {where}: {_short(value)} is {describe(value)} (expected {expected})")
        return value

    def field(self, obj: dict, key: str, kind, expected: str, where: str = "", choices=None, within=None):
        name = f"{where}.{key}" if where else key
        if key not in obj:
            raise VectorFileError(f"{self.path}: {name}: missing (expected {expected})")
        value = self.kind(obj[key], name, kind, expected)
        if isinstance(value, float) and not math.isfinite(value) or choices is not None and value not in choices \
                or within is not None and value not in within:
            raise VectorFileError(f"{self.path}: {name}: {_short(value)} (expected {expected})")
        return value

    def tensor(self, tensors: dict, name: str, shape: tuple, where: str) -> np.ndarray:
        if name not in tensors:
            raise VectorFileError(f"{self.path}: {where}: {name!r} is not a tensor of the file (it has "
                                  f"{', '.join(sorted(tensors)) or 'none'})")
        return check_tensor(tensors[name], shape, self.path, name)


def check_tensor(array, shape: tuple, path, name: str) -> np.ndarray:
    """`array` float32 of `shape` with finite values, or a VectorFileError naming file and tensor."""
    if not isinstance(array, np.ndarray) or array.dtype != np.float32 or array.shape != tuple(shape):
        raise VectorFileError(f"{path}: tensor {name} is {getattr(array, 'dtype', type(array).__name__)} "
                              f"{getattr(array, 'shape', '')}; expected float32 {tuple(shape)}")
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise VectorFileError(f"{path}: tensor {name} holds {int(bad.sum())} non-finite values (NaN or inf), the "
                              f"first at {first}; a steering vector must be finite")
    return array


def _short(value, width: int = 60) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list, str, int, float, bool, type(None))) else repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _check_made_on(path, made_on: dict, model: Transformer, allow_other_weights: bool) -> None:
    if not isinstance(made_on, dict):
        raise VectorFileError(f"{path}: model: {_short(made_on)} (expected an object: the model's type, config and "
                              "weights hash)")
    if made_on.get("config") != model_config(model):
        raise VectorFileError(f"{path}: made for a model with config {made_on.get('config')}, "
                              f"not this one ({model_config(model)})")
    if made_on.get("weights_sha256") != weights_hash(model) and not allow_other_weights:
        raise VectorFileError(f"{path}: made on weights with SHA-256 {made_on.get('weights_sha256')}, this model's "
                              f"are {weights_hash(model)}; pass allow_other_weights=True (--allow-other-weights) "
                              "to apply it anyway")


def _check_version(path, manifest: dict, fmt: str, version: int) -> None:
    if manifest.get("format_version") != version:
        raise VectorFileError(f"{path}: {fmt} version {manifest.get('format_version')!r}; expected {version}")


def _load_directions(path, manifest: dict, tensors: dict, model: Transformer, allow_other_weights: bool) -> DirectionVector:
    _check_version(path, manifest, DIRECTION_FORMAT, DIRECTION_FORMAT_VERSION)
    check = _Fields(path)
    n = model.config.n_layer
    entries = check.field(manifest, "layers", list, "an array of layers")
    layers, directions = [], []
    for i, e in enumerate(entries):
        where = f"layers[{i}]"
        check.kind(e, where, dict, "an object")
        layer = check.field(e, "layer", int, f"a layer from 0 to {n}", where, within=range(n + 1))
        hook = check.field(e, "hook_name", str, f"{residual_site(layer, n)!r}", where)
        if hook != residual_site(layer, n):
            raise VectorFileError(f"{path}: layer {layer} is for hook {hook!r}; this library "
                                  f"reads layer {layer} as {residual_site(layer, n)!r}")
        name = check.field(e, "tensor", str, "the name of its tensor", where)
        layers.append(layer)
        directions.append(check.tensor(tensors, name, (model.config.n_embd,), f"{where}.tensor"))
    coeff = check.field(manifest, "coeff", (int, float), "a finite number")
    reading = check.field(manifest, "reading", str, "how it was made")
    positions = _positions(check, manifest.get("positions"), "positions")
    pairs = _pairs(check, manifest.get("pairs"), "pairs")
    made_on = check.field(manifest, "model", dict, "an object: the model's type, config and weights hash")
    provenance = check.field(manifest, "provenance", dict, "an object") if "provenance" in manifest else {}
    vector = _direction(path, layers, directions, n, coeff, reading, positions, pairs, made_on)
    vector.provenance = provenance
    _check_made_on(path, made_on, model, allow_other_weights)
    return vector


def _load_ablation(path, manifest: dict, tensors: dict, model: Transformer, allow_other_weights: bool) -> AblationVector:
    _check_version(path, manifest, ABLATION_FORMAT, ABLATION_FORMAT_VERSION)
    check = _Fields(path)
    n = model.config.n_layer
    if check.field(manifest, "n_layer", int, f"{n} (this model's blocks)") != n:
        raise VectorFileError(f"{path}: n_layer: {manifest['n_layer']} (made for a model of that many blocks; this one "
                              f"has {n})")
    strength = check.field(manifest, "strength", (int, float), "a finite number")
    at = check.field(manifest, "at", str, f"one of {', '.join(ABLATION_SITES)}", choices=ABLATION_SITES)
    read_at = manifest.get("read_at")
    if read_at is not None:
        check.field(manifest, "read_at", int, f"a layer from 0 to {n}", within=range(n + 1))
    name = check.field(manifest, "tensor", str, "the name of its tensor")
    direction = check.tensor(tensors, name, (model.config.n_embd,), "tensor")
    pairs = _pairs(check, manifest.get("pairs"), "pairs")
    provenance = check.field(manifest, "provenance", dict, "an object")
    made_on = check.field(manifest, "model", dict, "an object: the model's type, config and weights hash")
    try:
        vector = AblationVector(direction, n, float(strength), read_at, pairs, made_on, provenance, at=at)
    except ValueError as e:
        raise VectorFileError(f"{path}: {e}") from None
    hooks = check.field(manifest, "hook_names", list, "the hook names it acts at")
    if hooks != [h for _, h in vector.sites()]:
        raise VectorFileError(f"{path}: hook_names {_short(hooks)} are not where this library ablates ({at!r}: "
                              f"{_short([h for _, h in vector.sites()])})")
    _check_made_on(path, made_on, model, allow_other_weights)
    return vector


def _positions(check: _Fields, value, where: str):
    if isinstance(value, str):
        return value
    check.kind(value, where, list, '"prompt", "all" or a list of positions')
    if not all(isinstance(p, int) and not isinstance(p, bool) for p in value):
        raise VectorFileError(f"{check.path}: {where}: {_short(value)} (expected \"prompt\", \"all\" or a list of "
                              "positions)")
    return tuple(value)


def _pairs(check: _Fields, value, where: str) -> tuple:
    check.kind(value, where, list, "an array of [plus, minus] pairs")
    if not all(isinstance(p, list) and len(p) == 2 and all(isinstance(t, str) for t in p) for p in value):
        raise VectorFileError(f"{check.path}: {where}: {_short(value)} (expected an array of [plus, minus] pairs)")
    return tuple(tuple(p) for p in value)


def _direction(path, layers, directions, n, coeff, reading, positions, pairs, made_on) -> DirectionVector:
    """The DirectionVector a file describes; what its constructor refuses names the file."""
    try:
        return DirectionVector(tuple(layers), tuple(directions), n, float(coeff), reading, positions, pairs, made_on)
    except ValueError as e:
        raise VectorFileError(f"{path}: {e}") from None


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
    if isinstance(vector, AblationVector):
        raise VectorFileError(f"{path}: a llama.cpp control vector is added at every token; an ablation projects a "
                              "direction out, which llama.cpp cannot do with one. Save it as .safetensors")
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
    _check_arrays(vector, path)
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
        writer.add_string("actadd.provenance", json.dumps(vector.provenance))
        for L, d in sorted(zip(vector.layers, vector.directions)):
            writer.add_tensor(f"direction.{L - 1}", np.ascontiguousarray(d, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return atomic_write(path, write)


def _metadata(reader, path: Path, name: str, kind=str, default=None):
    """A GGUF metadata value of `kind`, or `default` when absent; unreadable (bad UTF-8, a
    truncated array) or of another type is an error naming the file and the key."""
    f = reader.get_field(name)
    if f is None:
        return default
    try:
        value = f.contents()
    except Exception as e:  # the reader's decoding of a malformed field
        raise VectorFileError(f"{path}: metadata {name}: not readable ({type(e).__name__}: {e})") from None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise VectorFileError(f"{path}: metadata {name}: {_short(value)} is {describe(value)} (expected "
                              f"{'a string' if kind is str else 'a number'})")
    return value


def _metadata_json(reader, path: Path, name: str):
    return parse_json(_metadata(reader, path, name, default="null"), f"{path}: metadata {name}", VectorFileError)


def import_gguf(path: str | os.PathLike, model: Transformer, allow_other_weights: bool = False) -> DirectionVector:
    """Read a llama.cpp control vector as a DirectionVector for `model`: direction.{i} at layer
    i + 1. One written by export_gguf comes back with its reading, coefficient, positions and
    pairs, checked against the model it was made on; any other applies at every token, as in
    llama.cpp, with its model hint checked against `model`'s family. Each direction must be one
    finite F32 vector of n_embd values (llama.cpp refuses any other shape)."""
    gguf = _gguf()
    path = Path(path)
    if not path.is_file():
        raise VectorFileError(f"{path}: no such file" + (" (a folder)" if path.is_dir() else ""))
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # the reader raises ValueError, struct errors, ... on a malformed file
        raise VectorFileError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    arch = _metadata(reader, path, "general.architecture")
    if arch != GGUF_ARCH:
        raise VectorFileError(f"{path}: general.architecture is {arch!r}; a control vector has {GGUF_ARCH!r}")
    n, width = model.config.n_layer, model.config.n_embd
    layers, directions = [], []
    for t in reader.tensors:
        if not t.name.startswith("direction."):
            continue
        index = t.name.split(".", 1)[1]
        if not (index.isascii() and index.isdigit()) or not 1 <= int(index) <= n - 1:
            raise VectorFileError(f"{path}: tensor {t.name}: expected direction.1 to direction.{n - 1} for a model of "
                                  f"{n} blocks (direction.i goes after block i)")
        dims = [int(d) for d in t.shape]
        if t.tensor_type != gguf.GGMLQuantizationType.F32 or dims != [width]:
            raise VectorFileError(f"{path}: tensor {t.name} is {t.tensor_type.name} of shape {dims}; expected F32 of "
                                  f"shape [{width}] (n_embd: one direction, as llama.cpp requires)")
        layers.append(int(index) + 1)
        data = np.array(t.data, dtype=np.float32).reshape(width)                # a copy: the reader maps the file
        directions.append(check_tensor(data, (width,), path, t.name))
    if not layers:
        raise VectorFileError(f"{path}: no direction.{{i}} tensors")
    order = np.argsort(layers)
    layers, directions = [layers[i] for i in order], [directions[i] for i in order]
    family = model.model_type
    if _metadata(reader, path, "actadd.format") == DIRECTION_FORMAT:
        check = _Fields(path)
        made_on = check.kind(_metadata_json(reader, path, "actadd.model"), "metadata actadd.model", dict,
                             "an object: the model's type, config and weights hash")
        positions = _positions(check, _metadata_json(reader, path, "actadd.positions"), "metadata actadd.positions")
        pairs = _pairs(check, _metadata_json(reader, path, "actadd.pairs"), "metadata actadd.pairs")
        coeff = _metadata(reader, path, "actadd.coeff", (int, float))
        if coeff is None or not math.isfinite(coeff):
            raise VectorFileError(f"{path}: metadata actadd.coeff: {_short(coeff)} (expected a finite number)")
        reading = _metadata(reader, path, "actadd.reading")
        provenance = _metadata_json(reader, path, "actadd.provenance")
        vector = _direction(path, layers, directions, n, coeff, reading, positions, pairs, made_on)
        vector.provenance = check.kind(provenance, "metadata actadd.provenance", dict, "an object") \
            if provenance is not None else {}
        _check_made_on(path, made_on, model, allow_other_weights)
        return vector
    hint = _metadata(reader, path, "controlvector.model_hint")
    if hint != family and not allow_other_weights:
        raise VectorFileError(f"{path}: a control vector for {hint!r} models, and this is a {family!r} model; pass "
                              "allow_other_weights=True (--allow-other-weights) to apply it anyway")
    return _direction(path, layers, directions, n, 1.0, "gguf", "all", (), {"model_type": hint})
