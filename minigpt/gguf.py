"""GGUF model files, llama.cpp's format: the header read and checked here, before anything is
allocated in proportion to it; tensors as views of the memory-mapped file; quantized blocks made
float32 by gguf-py (llama.cpp's own Python package, the `gguf` extra).

    "GGUF", version (2 or 3), tensor count, metadata count     little-endian throughout
    metadata: key, value type, value                          general.architecture, llama.*, tokenizer.ggml.*
    tensor infos: name, dimensions (fastest first), type, offset
    padding to general.alignment (32 bytes), then each tensor's bytes at data start + its offset

A matrix of torch's [out, in] layout is stored with dimensions [in, out]: each output row is a
run of whole quantized blocks (32 or 256 numbers), so NumPy's shape is the dimensions reversed
and a slab of output rows, the unit `weights.matmul` multiplies by, is a contiguous run of bytes.
A family names the tensors it reads and builds its config from the metadata (llama.py:
`LlamaConfig.from_gguf`, `gguf_name`); this module knows the format, not the models.

We read the header ourselves instead of with gguf-py's `GGUFReader`, which builds a NumPy object
for every array element before it can be checked (1.85 s and 167 MB for SmolLM2's header, where
this reader takes 0.011 s): a hostile count or length is refused here in one line, before
anything is allocated in proportion to it.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .sources import CheckpointError
from .weights import HalfTensor, LazyTensor, check_policy, choose_policy


class GGUFError(CheckpointError):
    """A GGUF file that is not one minigpt can run: malformed, hostile, or of another kind."""


MAGIC = b"GGUF"
VERSIONS = (2, 3)                 # 1 had 32-bit counts; no current writer makes it
DEFAULT_ALIGNMENT = 32
# Limits no real file comes near, so that a hostile count costs a bounded time and memory: the
# largest vocabularies have 262,144 tokens and 500,000 merges; llama.cpp's names are < 64 bytes.
MAX_ITEMS = 1 << 16               # metadata entries, and tensors
MAX_STRINGS = 1 << 21             # strings in all metadata arrays together (walked one by one)
MAX_ARRAY = 1 << 26               # numbers in one metadata array (a view, never copied)
MAX_STRING_BYTES = 1 << 24        # one metadata string (a chat template is a few kB)
MAX_NAME_BYTES = 63               # a tensor name (ggml's GGML_MAX_NAME, 64 with its NUL)
MAX_DIMS = 4                      # ggml's GGML_MAX_DIMS

# GGUF's value types: id -> (name, struct format of a scalar; None for string and array).
VALUE_TYPES = {0: ("UINT8", "<B"), 1: ("INT8", "<b"), 2: ("UINT16", "<H"), 3: ("INT16", "<h"),
               4: ("UINT32", "<I"), 5: ("INT32", "<i"), 6: ("FLOAT32", "<f"), 7: ("BOOL", "<B"),
               8: ("STRING", None), 9: ("ARRAY", None), 10: ("UINT64", "<Q"), 11: ("INT64", "<q"),
               12: ("FLOAT64", "<d")}
STRING, ARRAY, BOOL = 8, 9, 7
INTEGERS = {0, 1, 2, 3, 4, 5, 10, 11}
FLOATS = {6, 12}
NATIVE = ("F32", "F16", "BF16")   # read here without gguf-py


def _gguf():
    try:
        import gguf
    except ImportError:
        raise GGUFError("GGUF files need the gguf package (llama.cpp's gguf-py): "
                        "pip install 'minigpt-actadd[gguf]'") from None
    return gguf


def ggml_types() -> dict[int, tuple[str, int, int]]:
    """ggml's tensor types as gguf-py knows them: id -> (name, numbers a block, bytes a block)."""
    gguf = _gguf()
    return {int(t): (t.name, *gguf.GGML_QUANT_SIZES[t]) for t in gguf.GGMLQuantizationType
            if t in gguf.GGML_QUANT_SIZES}


def dequantizable(kind: str) -> bool:
    """Whether minigpt can make float32 of a tensor of this ggml type: F32, F16 and BF16 here,
    the quantized types gguf-py dequantizes (Q4_0 ... Q8_0, Q2_K ... Q6_K, IQ*, TQ*, MXFP4).
    Not Q8_1 or Q8_K (intermediate formats gguf-py has no dequantizer for), nor the integer
    types and F64 (never weights of a model minigpt runs)."""
    if kind in NATIVE:
        return True
    cls = getattr(_gguf().quants, kind, None)
    return isinstance(cls, type) and callable(getattr(cls, "dequantize", None))


# ---------------------------------------------------------------------------------------------
# The header


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the header describes it; none of its bytes read."""

    name: str
    kind: str                  # ggml's type name: F32, F16, Q4_1, Q6_K, ...
    shape: tuple[int, ...]     # NumPy's order: the stored dimensions reversed, [out, in] for a matrix
    offset: int                # of its first byte in the file
    nbytes: int


@dataclass(frozen=True)
class Array:
    """A metadata array, as a place in the file: read when asked for (`GGUFFile.numbers`,
    `GGUFFile.strings`), so that a model load never decodes 49,152 tokens it does not need."""

    kind: int                  # the element's value type
    offset: int                # of the first element
    count: int


REQUIRED = object()       # a metadata key without a default: its absence is an error


class GGUFFile:
    """A GGUF file's header, checked: `metadata` (key -> a Python value, or an Array) and
    `tensors` (name -> TensorInfo), the file mapped read-only for the tensors' bytes."""

    def __init__(self, path: Path, version: int, metadata: dict, types: dict, tensors: dict, data: mmap.mmap):
        self.path, self.version, self.metadata, self.types, self.tensors = path, version, metadata, types, tensors
        self._data = data

    def __repr__(self):
        return f"GGUFFile({str(self.path)!r}, {len(self.metadata)} metadata keys, {len(self.tensors)} tensors)"

    # --- metadata, by the type each key must have ------------------------------------------

    def _get(self, key: str, accepted: set[int], expected: str, default):
        if key not in self.metadata:
            if default is REQUIRED:
                raise GGUFError(f"{self.path}: no metadata key {key} ({expected})")
            return default
        value, kind = self.metadata[key], self.types[key]
        if kind not in accepted:
            raise GGUFError(f"{self.path}: {key} is {_type_name(kind, value)} (expected {expected})")
        return value

    # Each is required unless a default is given (None: absent is allowed).

    def integer(self, key: str, default=REQUIRED, minimum: int = 1) -> int:
        value = self._get(key, INTEGERS, f"an integer >= {minimum}", default)
        if key in self.metadata and not value >= minimum:
            raise GGUFError(f"{self.path}: {key} is {value} (expected an integer >= {minimum})")
        return value

    def number(self, key: str, default=REQUIRED) -> float:
        value = self._get(key, INTEGERS | FLOATS, "a number", default)
        if key in self.metadata and not math.isfinite(value):
            raise GGUFError(f"{self.path}: {key} is {value} (expected a finite number)")
        return value

    def string(self, key: str, default=REQUIRED) -> str:
        return self._get(key, {STRING}, "a string", default)

    def boolean(self, key: str, default=REQUIRED) -> bool:
        return self._get(key, {BOOL}, "true or false", default)

    def numbers(self, key: str, default=REQUIRED) -> np.ndarray | None:
        """A numeric array as a read-only NumPy view of the file."""
        array = self._get(key, {ARRAY}, "an array", default)
        if not isinstance(array, Array):
            return array
        if array.kind not in INTEGERS | FLOATS | {BOOL}:
            raise GGUFError(f"{self.path}: {key} is an array of {VALUE_TYPES[array.kind][0]} (expected numbers)")
        dtype = np.dtype(VALUE_TYPES[array.kind][1])
        return np.frombuffer(self._data, dtype=dtype, count=array.count, offset=array.offset)

    def strings(self, key: str, default=REQUIRED) -> list[str] | None:
        """A string array, decoded; an element that is not UTF-8 is an error naming its index."""
        array = self._get(key, {ARRAY}, "an array of strings", default)
        if not isinstance(array, Array):
            return array
        if array.kind != STRING:
            raise GGUFError(f"{self.path}: {key} is an array of {VALUE_TYPES[array.kind][0]} (expected strings)")
        out, data, pos, unpack = [], self._data, array.offset, _U64.unpack_from
        for i in range(array.count):
            (n,) = unpack(data, pos)                       # lengths were checked by read_gguf
            try:
                out.append(data[pos + 8:pos + 8 + n].decode("utf-8"))
            except UnicodeDecodeError as e:
                raise GGUFError(f"{self.path}: {key}[{i}] is not UTF-8 ({e.reason} at byte {e.start})") from None
            pos += 8 + n
        return out

    # --- tensors -------------------------------------------------------------------------------

    def check_kinds(self, names) -> None:
        """Every tensor named has a type minigpt can make float32 of: refused by name, before
        anything is read."""
        for name in names:
            info = self.tensors[name]
            if not dequantizable(info.kind):
                raise GGUFError(f"{self.path}: tensor {name!r} is {info.kind}, which gguf-py cannot dequantize "
                                f"(minigpt reads F32, F16, BF16 and the quantized types gguf-py dequantizes: "
                                "Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K to Q6_K, IQ*, TQ*)")

    def tensor(self, name: str, lazy: bool, order: np.ndarray | None = None):
        """The tensor's float32 numbers, rows in `order` (None: as stored): a read-only view of
        the map for F32 in its stored order, else a new array; with `lazy`, a LazyTensor that
        leaves F16, BF16 and quantized blocks in the file."""
        info = self.tensors[name]
        rows = math.prod(info.shape[:-1])
        if info.kind == "F32":
            array = np.frombuffer(self._data, np.float32, count=math.prod(info.shape), offset=info.offset)
            array = array.reshape(info.shape)
            return array if order is None else array[order]
        if info.kind in ("F16", "BF16"):
            raw = np.frombuffer(self._data, np.uint16 if info.kind == "BF16" else np.float16,
                                count=math.prod(info.shape), offset=info.offset).reshape(info.shape)
            half = HalfTensor(raw, info.kind, order)
            return half if lazy else half.widen()
        raw = np.frombuffer(self._data, np.uint8, count=info.nbytes, offset=info.offset)
        quantized = GGUFTensor(raw.reshape(rows, info.nbytes // rows), info.kind, info.shape, order)
        return quantized if lazy else quantized.widen()


_U64 = struct.Struct("<Q")


def _type_name(kind: int, value) -> str:
    if kind == ARRAY and isinstance(value, Array):
        return f"an array of {value.count} {VALUE_TYPES[value.kind][0]}"
    return f"{VALUE_TYPES[kind][0]} {value!r}"[:80]


class _Cursor:
    """Reads the header front to back, every length checked against the bytes left."""

    def __init__(self, data, path: Path):
        self.data, self.path, self.pos, self.size = data, path, 0, len(data)
        self.strings_walked = 0

    def fail(self, what: str):
        raise GGUFError(f"{self.path}: {what}")

    def take(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        if self.pos + n > self.size:
            self.fail(f"{what} at byte {self.pos} runs past the end of the file ({self.size} bytes)")
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += n
        return value

    def string(self, what: str, limit: int = MAX_STRING_BYTES) -> str:
        n = self.take("<Q", f"the length of {what}")
        if n > limit:
            self.fail(f"{what} at byte {self.pos - 8} is {n:,} bytes long (at most {limit:,})")
        if self.pos + n > self.size:
            self.fail(f"{what} at byte {self.pos - 8} ({n:,} bytes) runs past the end of the file ({self.size} bytes)")
        raw = self.data[self.pos:self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self.fail(f"{what} is not UTF-8 ({e.reason} at byte {e.start})")

    def value(self, kind: int, key: str):
        if kind == STRING:
            return self.string(f"the value of {key}")
        if kind == ARRAY:
            return self.array(key)
        if kind not in VALUE_TYPES:
            self.fail(f"{key} has value type {kind}, which is not a GGUF type (0 to 12)")
        value = self.take(VALUE_TYPES[kind][1], f"the value of {key}")
        if kind == BOOL:
            if value > 1:
                self.fail(f"{key} is a BOOL of byte {value} (expected 0 or 1)")
            value = bool(value)
        return value

    def array(self, key: str) -> Array:
        kind = self.take("<I", f"the element type of {key}")
        count = self.take("<Q", f"the length of {key}")
        if kind == ARRAY:
            self.fail(f"{key} is an array of arrays (minigpt reads arrays of numbers or strings, as llama.cpp)")
        if kind not in VALUE_TYPES:
            self.fail(f"{key} has element type {kind}, which is not a GGUF type (0 to 12)")
        start = self.pos
        if kind == STRING:
            if count > MAX_STRINGS - self.strings_walked:
                self.fail(f"{key} holds {count:,} strings (at most {MAX_STRINGS:,} in all metadata arrays)")
            data, pos, size, unpack = self.data, self.pos, self.size, _U64.unpack_from
            for i in range(count):                          # lengths only; decoded when asked for
                if pos + 8 > size:
                    self.fail(f"{key}[{i}] at byte {pos} runs past the end of the file ({size} bytes)")
                (n,) = unpack(data, pos)
                pos += 8 + n
                if pos > size or n > MAX_STRING_BYTES:
                    self.fail(f"{key}[{i}] at byte {pos - 8 - n} ({n:,} bytes) runs past the end of the file "
                              f"({size} bytes)")
            self.pos = pos
            self.strings_walked += count
        else:
            itemsize = struct.calcsize(VALUE_TYPES[kind][1])
            if count > MAX_ARRAY or self.pos + count * itemsize > self.size:
                self.fail(f"{key} holds {count:,} {VALUE_TYPES[kind][0]} ({count * itemsize:,} bytes), past the end "
                          f"of the file ({self.size} bytes)" if count <= MAX_ARRAY else
                          f"{key} holds {count:,} numbers (at most {MAX_ARRAY:,})")
            self.pos += count * itemsize
        return Array(kind, start, count)


def read_gguf(path: str | os.PathLike) -> GGUFFile:
    """The header of a GGUF file, checked: magic and version; counts, lengths and types of every
    metadata entry and tensor; each tensor's bytes aligned, inside the file and overlapping no
    other. No tensor is read; a malformed or hostile file is refused in one line naming the file,
    the key or tensor, and what was expected."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size < 24:
            raise GGUFError(f"{path}: {size} bytes; a GGUF file starts with 24 bytes of magic, version and counts")
        with open(path, "rb") as f:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise GGUFError(f"{path}: cannot be read ({e.strerror or e})") from None
    cur = _Cursor(data, path)
    if data[:4] != MAGIC:
        cur.fail(f"starts with {bytes(data[:4])!r}, not a GGUF file (expected {MAGIC!r})")
    cur.pos = 4
    version = cur.take("<I", "the version")
    if version not in VERSIONS:
        if struct.unpack_from(">I", data, 4)[0] in VERSIONS:
            cur.fail("is a big-endian GGUF file (minigpt reads little-endian ones, as llama.cpp writes them)")
        cur.fail(f"GGUF version {version} (minigpt reads versions {' and '.join(map(str, VERSIONS))})")
    n_tensors = cur.take("<Q", "the tensor count")
    n_metadata = cur.take("<Q", "the metadata count")
    for count, what in ((n_tensors, "tensors"), (n_metadata, "metadata entries")):
        if count > MAX_ITEMS:
            cur.fail(f"claims {count:,} {what} (at most {MAX_ITEMS:,})")

    metadata, types = {}, {}
    for i in range(n_metadata):
        key = cur.string(f"metadata key #{i}", limit=65535)
        if key in metadata:
            cur.fail(f"metadata key {key} appears twice")
        kind = cur.take("<I", f"the value type of {key}")
        metadata[key], types[key] = cur.value(kind, key), kind

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if types.get("general.alignment", 4) not in INTEGERS or not isinstance(alignment, int) or alignment <= 0 \
            or alignment & (alignment - 1):
        cur.fail(f"general.alignment is {alignment!r} (expected a power of two)")

    known = ggml_types()
    infos = []
    for i in range(n_tensors):
        name = cur.string(f"the name of tensor #{i}", limit=MAX_NAME_BYTES)
        n_dims = cur.take("<I", f"the dimension count of tensor {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            cur.fail(f"tensor {name!r} has {n_dims} dimensions (expected 1 to {MAX_DIMS})")
        dims = [cur.take("<Q", f"a dimension of tensor {name!r}") for _ in range(n_dims)]
        kind_id = cur.take("<I", f"the type of tensor {name!r}")
        offset = cur.take("<Q", f"the offset of tensor {name!r}")
        if kind_id not in known:
            cur.fail(f"tensor {name!r} has type {kind_id}, which is not a ggml type gguf-py knows")
        kind, block, block_bytes = known[kind_id]
        if any(d < 1 for d in dims):
            cur.fail(f"tensor {name!r} has dimensions {dims} (expected each at least 1)")
        if dims[0] % block:
            cur.fail(f"tensor {name!r} of {kind} has rows of {dims[0]} numbers, not a multiple of its "
                     f"{block}-number blocks")
        nbytes = math.prod(dims) // block * block_bytes
        if nbytes > size:
            cur.fail(f"tensor {name!r} ({kind} {dims}) needs {nbytes:,} bytes, more than the whole file ({size:,})")
        if offset % alignment:
            cur.fail(f"tensor {name!r} starts at offset {offset}, not a multiple of general.alignment={alignment}")
        infos.append((name, kind, tuple(reversed(dims)), offset, nbytes))

    data_start = -(-cur.pos // alignment) * alignment
    tensors, end_of = {}, None
    for name, kind, shape, offset, nbytes in sorted(infos, key=lambda t: t[3]):
        if name in tensors:
            cur.fail(f"tensor {name!r} appears twice")
        begin = data_start + offset
        if begin + nbytes > size:
            cur.fail(f"tensor {name!r} ({kind} {list(reversed(shape))}, {nbytes:,} bytes at byte {begin:,}) runs past "
                     f"the end of the file ({size:,} bytes)")
        if end_of is not None and begin < end_of[1]:
            cur.fail(f"tensor {name!r} overlaps tensor {end_of[0]!r} (bytes {begin:,} and {end_of[1]:,})")
        end_of = (name, begin + nbytes)
        tensors[name] = TensorInfo(name, kind, shape, begin, nbytes)
    return GGUFFile(path, version, metadata, types, {n: tensors[n] for n, *_ in infos}, data)


# ---------------------------------------------------------------------------------------------
# Quantized tensors


def dequantize(raw: np.ndarray, kind: str, width: int) -> np.ndarray:
    """float32 [rows, width] of quantized rows (uint8 [rows, bytes a row]), by gguf-py: the floats
    llama.cpp's own dequantization gives, a block at a time."""
    gguf = _gguf()
    out = gguf.quants.dequantize(np.ascontiguousarray(raw), gguf.GGMLQuantizationType[kind])
    return out.reshape(raw.shape[0], width)


class GGUFTensor(LazyTensor):
    """A quantized GGUF tensor left in the memory-mapped file: its blocks (about 4.5 bits a
    number for Q4_1) are dequantized where they are used, a slab of rows at a time; the floats
    are those that dequantizing it whole gives (gguf-py's, a block at a time)."""

    def __init__(self, raw: np.ndarray, kind: str, shape: tuple[int, ...], order: np.ndarray | None = None):
        self.raw, self.kind, self.shape, self.order = raw, kind, tuple(shape), order   # raw: uint8 [rows, bytes a row]
        self.nbytes = raw.nbytes

    def __getitem__(self, index) -> np.ndarray:
        rows = self._stored(self.raw, index)                                   # [..., bytes a row]
        flat = dequantize(rows.reshape(-1, self.raw.shape[1]), self.kind, self.shape[-1])
        return flat.reshape(*rows.shape[:-1], self.shape[-1])

    def widen(self) -> np.ndarray:
        return self[:].reshape(self.shape)

    def widen_into(self, out: np.ndarray, index) -> np.ndarray:
        if isinstance(index, tuple):
            raise IndexError(f"{self!r} is read by rows (torch's [out, in] layout), not by {index!r}")
        out[...] = self[index]
        return out


# ---------------------------------------------------------------------------------------------
# Models


def interleaved_rows(heads: int, d_head: int) -> np.ndarray:
    """Which stored row each of a q or k projection's rows is. llama.cpp's converter reorders
    each head's rows from the rotate-half layout of Hugging Face checkpoints, (i, i + d/2)
    rotating together, to interleaved pairs (2i, 2i + 1): row h*d + half*(d/2) + i is stored at
    h*d + 2i + half. These indices undo it."""
    return np.arange(heads * d_head).reshape(heads, d_head // 2, 2).transpose(0, 2, 1).reshape(-1)


def load_model(file: GGUFFile, families: dict, backend, weights: str = "auto"):
    """The model a GGUF file holds, of the family its general.architecture names (`families`:
    architecture -> the family's class, which reads its config and names from the file).
    Everything is checked on the header (names, shapes, types) before a tensor is read."""
    check_policy(weights)
    architecture = file.string("general.architecture")
    if architecture not in families:
        raise GGUFError(f"{file.path}: general.architecture is {architecture!r}, which minigpt does not run "
                        f"(it runs {', '.join(repr(a) for a in families)})")
    family = families[architecture]
    config = family.config_class.from_gguf(file)
    source = str(file.path)
    # the family's names for the tensors (those it read into the config aside), checked as a
    # checkpoint's are: each expected one present once with its shape, nothing unknown
    renamed = {family.gguf_name(name): name for name in file.tensors if name not in family.gguf_config_tensors}
    checked = family.canonical_state_dict({hf: file.tensors[name] for hf, name in renamed.items()}, config, source)
    wanted = {hf: renamed[hf] for hf in checked}
    file.check_kinds(wanted.values())
    weights = choose_policy(weights, [file.tensors[n].shape for n in wanted.values()], backend)
    state = {}
    for hf, name in wanted.items():
        heads = family.gguf_interleaved_heads(config, hf)
        order = interleaved_rows(heads, config.d_head) if heads else None
        state[hf] = file.tensor(name, lazy=weights == "lazy", order=order)
        if hasattr(family, "gguf_tensor"):      # a family whose converter changed values (gemma3.py: norms + 1)
            state[hf] = family.gguf_tensor(hf, state[hf])
    return family(config, state, source=source, backend=backend)


