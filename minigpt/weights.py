"""Finding a checkpoint's weight files and reading its tensors, safetensors only.

The flow is `resolve_checkpoint` (which files, via sources.py) -> `read_headers` (every tensor's
name, dtype, shape and place in the file; nothing read) -> `canonical_state_dict` /
`select_tensors` (names and shapes checked against the config, on the headers, before any array
exists) -> `read_tensors` (the arrays, float32, or half-precision left in the file) ->
`matmul` (a model's products with its weights, a slab of columns at a time). A config that asks
for more than the files hold is refused before anything is allocated in proportion to it
(`check_blocks`).

We parse safetensors ourselves instead of calling `safetensors.numpy`: the format is a JSON
header and raw little-endian bytes, so each float32 tensor is a zero-copy view of a read-only
memory map, and bfloat16 (which NumPy lacks, and `safetensors.numpy` refuses) is widened from
its raw bits. Pickled checkpoints (.bin, .pt, .ckpt, .pth) are never opened: unpickling runs
arbitrary code.
"""

from __future__ import annotations

import math
import mmap
import os
import re
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import GPT2Config
from .sources import PICKLE_SUFFIXES, PICKLE_WHY, CheckpointError, Source, locate
from .textfiles import describe, parse_json, read_json


SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# safetensors dtype -> NumPy dtype of the stored bytes. bfloat16 is read as its raw uint16 bits.
# Only the three float types can be parameters; the rest are read so that buffers stored in them
# (old files keep the causal mask `attn.bias` as U8 or BOOL) can be recognised and dropped.
_STORED_DTYPES = {
    "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "F64": np.dtype("<f8"), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
PARAMETER_DTYPES = ("F32", "F16", "BF16")
MAX_HEADER_BYTES = 100_000_000     # as the safetensors library: a header is JSON, not data


# ---------------------------------------------------------------------------------------------
# Which files


@dataclass(frozen=True)
class CheckpointFiles:
    config: Path
    weights: tuple[Path, ...]  # one model.safetensors, or the shards named by the index


def resolve_checkpoint(name_or_path: str | os.PathLike, revision: str | None = None) -> CheckpointFiles:
    """config.json and the safetensors file(s) of a local folder or hub id."""
    return checkpoint_files(locate(name_or_path, revision))


def checkpoint_files(source: Source) -> CheckpointFiles:
    if source.folder is not None and not (source.folder / "config.json").is_file():
        raise CheckpointError(f"{source}: no config.json (expected the Hugging Face folder layout)")
    config = source.file("config.json")
    single = source.file(SINGLE_FILE, required=False)
    if single is not None:
        return CheckpointFiles(config, (single,))
    index = source.file(INDEX_FILE, required=False)
    if index is not None:
        shards = []
        for name in _shard_names(index):
            shard = source.file(name, required=False)
            if shard is None:
                raise CheckpointError(f"{index} names shard {name!r}, which is missing")
            shards.append(shard)
        return CheckpointFiles(config, tuple(shards))
    if source.folder is not None:
        pickles = sorted(p for p in source.folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(f"refusing to load {pickles[0]}: {PICKLE_WHY}")
        raise CheckpointError(f"{source}: no {SINGLE_FILE} and no {INDEX_FILE}")
    where = "has, in the local cache," if source.uncached else "has"
    raise CheckpointError(f"{source} {where} neither {SINGLE_FILE} nor {INDEX_FILE}. "
                          f"minigpt reads safetensors only: {PICKLE_WHY}")


def _shard_names(index_path: Path) -> list[str]:
    try:
        index = read_json(index_path, CheckpointError, MAX_HEADER_BYTES, "shard index")
    except CheckpointError as e:
        raise CheckpointError(f"{e} (expected JSON with a 'weight_map' object)") from None
    if not isinstance(index, dict) or "weight_map" not in index:
        raise CheckpointError(f"{index_path}: {describe(index)} without 'weight_map' (expected JSON with a "
                              "'weight_map' object)")
    weight_map = index["weight_map"]
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path}: 'weight_map' is empty or not an object")
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        if not isinstance(shard, str) or Path(shard).name != shard or not shard.endswith(".safetensors"):
            raise CheckpointError(f"{index_path}: shard name {shard!r} is not a .safetensors file name")
    return shards


# ---------------------------------------------------------------------------------------------
# Reading safetensors


@dataclass(frozen=True)
class TensorHeader:
    """One tensor as its file's header describes it: what and where, none of its bytes read."""

    path: Path
    name: str
    dtype: str                 # safetensors' name: F32, F16, BF16, ...
    shape: tuple[int, ...]
    offset: int                # of its first byte in the file
    nbytes: int


def read_header(path: str | os.PathLike) -> dict[str, TensorHeader]:
    """The tensors one .safetensors file holds, checked (dtype known, shape of non-negative
    ints, data inside the file and of the shape's size), without reading any of their bytes."""
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise CheckpointError(f"{path}: {size} bytes; a safetensors file starts with an 8-byte header length")
        (header_len,) = struct.unpack("<Q", f.read(8))
        data_start = 8 + header_len
        if data_start > size:
            raise CheckpointError(f"{path}: header length {header_len} runs past the end of the file ({size} bytes)")
        if header_len > MAX_HEADER_BYTES:
            raise CheckpointError(f"{path}: header length {header_len:,} is more than {MAX_HEADER_BYTES:,} bytes "
                                  "(a safetensors header lists tensors; it holds no data)")
        raw_header = f.read(header_len)
    header = parse_json(raw_header, f"{path}: header", CheckpointError)
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header is not a JSON object")
    data_len = size - data_start

    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        where = f"{path}: tensor {name!r}"
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{where}: header entry needs dtype, shape and data_offsets") from None
        if not isinstance(dtype, str) or dtype not in _STORED_DTYPES:
            raise CheckpointError(
                f"{where} has dtype {dtype}, which minigpt cannot read "
                f"(parameters must be {', '.join(PARAMETER_DTYPES)})"
            )
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                for d in shape)):
            raise CheckpointError(f"{where}: shape {shape!r} is not a list of non-negative integers")
        count = math.prod(shape)
        nbytes = count * _STORED_DTYPES[dtype].itemsize
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= data_len):
            raise CheckpointError(f"{where}: data_offsets [{begin}, {end}] outside the {data_len} data bytes")
        if end - begin != nbytes:
            raise CheckpointError(
                f"{where}: shape {shape} of {dtype} needs {nbytes} bytes, data_offsets give {end - begin}"
            )
        tensors[name] = TensorHeader(path, name, dtype, tuple(shape), data_start + begin, nbytes)
    return tensors


def read_tensors(headers: dict[str, TensorHeader], widen: bool = True) -> dict[str, np.ndarray]:
    """The tensors the headers describe; F32, F16 and BF16 as float32 arrays.

    float32 tensors are read-only views of a memory map (no copy, page cache shared between
    processes); float16 and bfloat16 are converted to float32 once, or with `widen=False` kept
    as `HalfTensor`s, views of the map that a model widens when it uses them. Other dtypes keep
    theirs (the model refuses them as parameters, naming the tensor).
    """
    maps: dict[Path, mmap.mmap] = {}
    tensors = {}
    for name, h in headers.items():
        if h.path not in maps:
            with open(h.path, "rb") as f:
                maps[h.path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        stored = _STORED_DTYPES[h.dtype]
        raw = np.frombuffer(maps[h.path], dtype=stored, count=math.prod(h.shape), offset=h.offset).reshape(h.shape)
        tensors[name] = _as_float32(raw, h.dtype) if widen or h.dtype not in ("BF16", "F16") else HalfTensor(raw, h.dtype)
    return tensors


def read_safetensors(path: str | os.PathLike, widen: bool = True) -> dict[str, np.ndarray]:
    """Every tensor of one .safetensors file (read_header, then read_tensors)."""
    return read_tensors(read_header(path), widen)


# How a model holds a float16/bfloat16 checkpoint's matrices: widened to float32 at load, left in
# the mapped file, or chosen by size ("auto": lazy on the host above LAZY_ABOVE_BYTES of float32).
WEIGHT_POLICIES = ("auto", "float32", "lazy")
LAZY_ABOVE_BYTES = 12e9


def check_policy(weights: str) -> None:
    if weights not in WEIGHT_POLICIES:
        raise ValueError(f"weights={weights!r}: expected one of {WEIGHT_POLICIES}")


def choose_policy(weights: str, shapes, backend) -> str:
    """"float32" or "lazy": `weights` itself, or for "auto", lazy on the host when the parameters
    of these shapes would take more than LAZY_ABOVE_BYTES as float32."""
    if weights != "auto":
        return weights
    float32_bytes = 4 * sum(math.prod(shape) for shape in shapes)
    return "lazy" if backend.name == "numpy" and float32_bytes > LAZY_ABOVE_BYTES else "float32"


class LazyTensor:
    """A weight left in its memory-mapped file and widened to float32 where it is used: a slab
    of rows at a time (`widen_into`), the rows an index takes (`[...]`, an embedding lookup), or
    all at once (`widen`), always the floats that loading it whole would have made. `order`, when
    given, says which stored row each row is (a GGUF file's Q/K rows, stored permuted); `kind`
    names the stored type ("F16", "BF16", "Q4_1", ...). HalfTensor here, GGUFTensor in gguf.py."""

    kind: str
    shape: tuple[int, ...]
    nbytes: int                # as stored
    order: np.ndarray | None = None

    def widen(self) -> np.ndarray:
        return self[:]

    def __getitem__(self, index) -> np.ndarray:
        raise NotImplementedError

    def widen_into(self, out: np.ndarray, index) -> np.ndarray:
        raise NotImplementedError

    def _stored(self, raw: np.ndarray, index):
        """raw[index] in this tensor's row order."""
        if self.order is None:
            return raw[index]
        if isinstance(index, tuple):
            raise IndexError(f"{self!r}: rows in another order are taken by a row index, not {index!r}")
        return raw[self.order[index]]

    def __repr__(self):
        return f"{type(self).__name__}({self.kind}, shape={self.shape})"


class HalfTensor(LazyTensor):
    """A float16 or bfloat16 tensor left in the memory-mapped file: 2 bytes a number until
    `widen()` (or indexing, which widens only the rows taken, or `widen_into`) makes float32 of
    it, the floats that loading would have made."""

    def __init__(self, raw: np.ndarray, dtype: str, order: np.ndarray | None = None):
        self.raw, self.kind, self.order = raw, dtype, order
        self.shape, self.nbytes = raw.shape, raw.nbytes
        self._finite = None       # float16: no inf or NaN anywhere (found out on first use)

    def __getitem__(self, index) -> np.ndarray:
        return _as_float32(np.ascontiguousarray(self._stored(self.raw, index)), self.kind)

    def widen_into(self, out: np.ndarray, index) -> np.ndarray:
        """float32 of raw[index] written into `out` (float32, of that shape): no new memory."""
        part = self._stored(self.raw, index)
        if self.kind == "BF16":
            np.left_shift(part, 16, out=out.view(np.uint32), dtype=np.uint32)  # the 16 bits on top
        elif self._all_finite():
            # NumPy's float16 cast runs a number at a time (1-1.6 ns here); this is 3 vector passes
            # (0.7 ns). Shifted by 13 as int32, the sign smears over bits 31..28: keep bit 31, and
            # the exponent and mantissa land at 27..13, a float32 with exponent 15 -> 127 short of
            # its value; multiplying by 2^112 adds that back, exactly, subnormals included.
            bits = out.view(np.int32)
            np.left_shift(part.view(np.int16), 13, out=bits, dtype=np.int32)
            np.bitwise_and(bits, np.int32(-0x70000001), out=bits)               # 0x8FFFFFFF
            np.multiply(out, np.float32(2.0 ** 112), out=out)
        else:
            np.copyto(out, part)                                               # inf and NaN too
        return out

    def _all_finite(self) -> bool:
        """float16 exponent 31 (inf, NaN) nowhere in the tensor: read once, a chunk at a time."""
        if self._finite is None:
            flat, chunk = self.raw.reshape(-1).view(np.uint16), 1 << 22
            self._finite = all(not np.any(flat[i:i + chunk] & 0x7C00 == 0x7C00) for i in range(0, flat.size, chunk))
        return self._finite


class StackedTensor(LazyTensor):
    """Lazy matrices of one width stacked by rows without a copy (a block's q/k/v, or gate/up,
    multiplied as one matrix): a slab of rows is widened from the parts it spans."""

    def __init__(self, parts: list[LazyTensor]):
        self.parts = parts
        self.kind = "/".join(sorted({p.kind for p in parts}))
        self.shape = (sum(p.shape[0] for p in parts), parts[0].shape[1])
        self.nbytes = sum(p.nbytes for p in parts)
        self.starts = np.cumsum([0] + [p.shape[0] for p in parts])

    def __getitem__(self, index) -> np.ndarray:
        rows = range(self.shape[0])[index]
        if not isinstance(rows, range) or rows.step != 1:
            raise IndexError(f"{self!r} is read by a slice of rows, not {index!r}")
        return self.widen_into(np.empty((len(rows), self.shape[1]), np.float32), index)

    def widen_into(self, out: np.ndarray, index) -> np.ndarray:
        rows = range(self.shape[0])[index]
        for part, start in zip(self.parts, self.starts):
            lo, hi = max(rows.start, start), min(rows.stop, start + part.shape[0])
            if lo < hi:
                part.widen_into(out[lo - rows.start:hi - rows.start], slice(lo - start, hi - start))
        return out


def mapped(array) -> bool:
    """Whether a NumPy array's memory is a file's map (a float32 checkpoint, held as it is)."""
    if not isinstance(array, np.ndarray):
        return False                                      # a device array: copied there, owned
    while isinstance(array, np.ndarray):
        array = array.base
    return array is not None


def stack_rows(tensors: list, xp=np):
    """Matrices (or vectors) of one width as one, rows stacked, and each one's rows as a view of it:
    (stacked, [views]) for a block's projections to run as one product (a product of a few
    hundred rows runs on one thread of OpenBLAS, one of a thousand on all). Lazy tensors stack
    without a copy (StackedTensor); arrays are copied once, and their views replace them, so the
    memory stays one copy. A float32 file's mapped arrays are not copied: None then, and the
    projections run one by one."""
    if all(isinstance(t, LazyTensor) for t in tensors):
        return StackedTensor(list(tensors)), list(tensors)
    if any(isinstance(t, LazyTensor) or mapped(t) for t in tensors):
        return None, list(tensors)
    stacked = xp.concatenate(tensors, axis=0)
    bounds = np.cumsum([0] + [t.shape[0] for t in tensors])
    return stacked, [stacked[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


# Products with a weight go by slabs of its output columns, each slab a float32 block of about
# SLAB_BYTES: for a LazyTensor (half precision, or a GGUF file's quantized blocks), its slab is
# widened into a reused buffer and multiplied at once, so the weights are read once a pass and
# nothing of a matrix's size is allocated; for a float32 matrix the slab is a view. Both policies make the same BLAS calls on the same shapes, so lazy
# weights give the float32 policy's floats bit for bit, whatever the BLAS (a slab's product is
# not always bit-equal to the whole matrix's: OpenBLAS multiplies small products, m*n*k <= 10^6,
# with other kernels). 16 MiB: float32 slabs this size multiply as fast as whole matrices (measured
# here: 1-row products of 1 MiB slabs took twice as long; docs/models.md, Memory).
SLAB_BYTES = 16 << 20
FEW_ROWS = 64
_slab = threading.local()    # one buffer per thread: two threads may run one model


def matmul(flat: np.ndarray, weight, transposed: bool = False) -> np.ndarray:
    """flat @ weight, or flat @ weight.T with `transposed` (torch Linear's [out, in] layout),
    for float32 flat [rows, in] and a float32 matrix or LazyTensor: float32 [rows, out]."""
    # Below FEW_ROWS rows, [out, in] weights multiply as weight @ flat.T, the product transposed
    # back (copied, so that what follows reads rows as it always does): OpenBLAS runs that 1.3-1.5x
    # faster than flat @ weight.T at 8-32 rows (SmolLM2's shapes, weights not in cache, this
    # machine); at 128 rows the gain is a few percent, less than the copy costs. (On every
    # backend, so that a device's floats are the host's where its library computes as NumPy.)
    flip = transposed and flat.shape[0] < FEW_ROWS
    if not isinstance(flat, np.ndarray):  # a device array (CuPy): one product, weights widened at load
        return (weight @ flat.T).T.copy() if flip else flat @ (weight.T if transposed else weight)
    n_in, n_out = flat.shape[1], weight.shape[0 if transposed else 1]
    step = max(1, SLAB_BYTES // (4 * n_in))                                   # output columns a slab
    lazy = isinstance(weight, LazyTensor)
    if not lazy and n_out <= step:                                            # one slab: the plain product
        return np.ascontiguousarray((weight @ flat.T).T) if flip else flat @ (weight.T if transposed else weight)
    out = np.empty((n_out, flat.shape[0]) if flip else (flat.shape[0], n_out), np.float32)
    if lazy:
        buffer = getattr(_slab, "buffer", None)
        if buffer is None or buffer.size < min(step, n_out) * n_in:
            buffer = _slab.buffer = np.empty(min(step, n_out) * n_in, np.float32)
    for j in range(0, n_out, step):
        cols = slice(j, min(j + step, n_out))
        n = cols.stop - j
        if transposed:                                                        # w: [n, in]
            w = weight.widen_into(buffer[:n * n_in].reshape(n, n_in), cols) if lazy else weight[cols]
            if flip:
                np.matmul(w, flat.T, out=out[cols])                          # out: [out, rows]
            else:
                np.matmul(flat, w.T, out=out[:, cols])
        else:                                                                 # w: [in, n]
            w = weight.widen_into(buffer[:n * n_in].reshape(n_in, n), (slice(None), cols)) if lazy else weight[:, cols]
            np.matmul(flat, w, out=out[:, cols])
    return np.ascontiguousarray(out.T) if flip else out                       # [rows, out]


def _as_float32(raw: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        # bfloat16 is the top half of a float32: put its 16 bits there, zero the rest (in place,
        # so that the only new memory is the float32 result).
        wide = raw.astype(np.uint32)
        wide <<= 16
        return wide.view(np.float32)
    if dtype == "F16":
        return raw.astype(np.float32)
    if dtype != "F32":
        return raw
    if not raw.flags.aligned:  # a header length not a multiple of 4; BLAS wants aligned data
        return raw.astype(np.float32)
    return raw.view(np.float32)  # '<f4' -> native float32, still the zero-copy map


# ---------------------------------------------------------------------------------------------
# Checkpoint names -> the names the model uses


# Buffers some GPT-2 files carry that are not parameters: the causal mask and its fill value.
_IGNORED = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")


def expected_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    """Every parameter of GPT-2 under its bare checkpoint name (as in the hub's gpt2 file)."""
    D, V, P, F = config.n_embd, config.vocab_size, config.n_positions, config.d_mlp
    shapes = {"wte.weight": (V, D), "wpe.weight": (P, D)}
    for i in range(config.n_layer):
        h = f"h.{i}."
        shapes.update({
            h + "ln_1.weight": (D,), h + "ln_1.bias": (D,),
            # Conv1D layout: [in, out], so the forward pass is x @ weight + bias.
            h + "attn.c_attn.weight": (D, 3 * D), h + "attn.c_attn.bias": (3 * D,),
            h + "attn.c_proj.weight": (D, D), h + "attn.c_proj.bias": (D,),
            h + "ln_2.weight": (D,), h + "ln_2.bias": (D,),
            h + "mlp.c_fc.weight": (D, F), h + "mlp.c_fc.bias": (F,),
            h + "mlp.c_proj.weight": (F, D), h + "mlp.c_proj.bias": (D,),
        })
    shapes.update({"ln_f.weight": (D,), "ln_f.bias": (D,)})
    return shapes


def canonical_state_dict(tensors: dict[str, np.ndarray], config: GPT2Config,
                         source: str = "checkpoint") -> dict[str, np.ndarray]:
    """Bare names, every expected tensor present with its expected shape, nothing unknown.

    Accepts names with or without the `transformer.` prefix; drops the attention-mask buffers;
    `lm_head.weight` may be present (it must have wte's shape) but is ignored, because GPT-2
    ties the unembedding to `wte`, as transformers does when loading it.
    """
    check_blocks(tensors, config.n_layer, r"(?:^|\.)h\.(\d+)\.", "n_layer", source)
    expected = expected_shapes(config)

    def bare(name: str, tensor) -> str | None:
        name = name.removeprefix("transformer.")
        if _IGNORED.fullmatch(name):
            return None
        if name == "lm_head.weight":
            if tuple(tensor.shape) != expected["wte.weight"]:
                raise CheckpointError(
                    f"{source}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                    f"expected {expected['wte.weight']} (it is tied to wte.weight)"
                )
            return None
        return name
    return select_tensors(tensors, expected, bare, source, f"a GPT-2 with n_layer={config.n_layer}")


def select_tensors(tensors: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]], bare,
                   source: str, what: str) -> dict[str, np.ndarray]:
    """The tensors under their bare names (`bare(name, tensor)`: the name the family uses, or
    None to drop it), each expected one present once with its expected shape, nothing unknown:
    any other checkpoint is an error naming the tensors, for `what` (e.g. "a GPT-2 with
    n_layer=12")."""
    found: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    unknown = []
    for name, tensor in tensors.items():
        key = bare(name, tensor)
        if key is None:
            continue
        if key not in expected:
            unknown.append(name)
            continue
        if key in found:
            raise CheckpointError(f"{source}: tensor {key!r} appears twice, as {origin[key]!r} and {name!r}")
        if tuple(tensor.shape) != expected[key]:
            raise CheckpointError(
                f"{source}: tensor {name!r} has shape {tuple(tensor.shape)}, expected {expected[key]}"
            )
        found[key], origin[key] = tensor, name
    if unknown:
        raise CheckpointError(f"{source}: unexpected tensor(s) {_listing(unknown)} for {what}")
    missing = [n for n in expected if n not in found]
    if missing:
        raise CheckpointError(
            f"{source}: missing tensor(s) " + _listing([f"{n} {expected[n]}" for n in missing])
        )
    return found


def _listing(items, limit=5):
    shown = ", ".join(repr(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def read_headers(files: CheckpointFiles) -> dict[str, TensorHeader]:
    """The headers of every weight file, under the names stored; a name in two files is an error."""
    headers: dict[str, TensorHeader] = {}
    for path in files.weights:
        for name, h in read_header(path).items():
            if name in headers:
                raise CheckpointError(f"tensor {name!r} is in both {headers[name].path} and {path}")
            headers[name] = h
    return headers


def read_checkpoint(files: CheckpointFiles, widen: bool = True) -> dict[str, np.ndarray]:
    """The tensors of every weight file, under the names stored (see `canonical_state_dict`);
    `widen=False` keeps half-precision tensors as HalfTensors (see read_tensors)."""
    return read_tensors(read_headers(files), widen)


def check_blocks(names, n_layer: int, pattern: str, field: str, source: str) -> None:
    """A config whose blocks outnumber the checkpoint's tensors cannot describe it: refused here,
    before the expected names of n_layer blocks are listed (a hostile num_hidden_layers of 10^8
    would otherwise cost gigabytes). `pattern` finds a block's index in a tensor name."""
    names = list(names)
    if n_layer <= len(names):
        return
    found = sorted({int(m.group(1)) for n in names if (m := re.search(pattern, n))})
    held = f"blocks {found[0]} to {found[-1]}" if found else "no blocks"
    raise CheckpointError(f"{source}: the config's {field}={n_layer:,} blocks cannot be in a checkpoint of "
                          f"{len(names)} tensors ({held})")


def check_dtypes(headers: dict, source: str) -> None:
    """Every parameter stored as F32, F16 or BF16: another dtype is refused before it is read."""
    for name, h in headers.items():
        if getattr(h, "dtype", None) not in PARAMETER_DTYPES:
            raise CheckpointError(f"{source}: tensor {name!r} is {h.dtype}; expected {', '.join(PARAMETER_DTYPES)} "
                                  "(minigpt computes in float32 and never narrows F64 silently)")
