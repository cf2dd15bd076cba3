"""What every model family shares: the primitives of a forward pass, the hook points under
TransformerLens's names, the KV cache, and `Transformer`, the entry points (run_with_cache,
run_with_hooks), input checks and pass set-up that each family's class inherits. Each family's
forward pass reads top to bottom in its own file (gpt2.py, opt.py, llama.py, gemma3.py);
none imports another.

Array code gets its namespace from the arrays (`array_namespace(x)`) or from `self.xp`, never
from a bare `np.` call on an activation, so that CuPy runs the same code (see backend.py).
Token ids, masks and position ids are checked and made on the host with NumPy, then moved.
"""

from __future__ import annotations

import math
import os
import re
from typing import Callable, Iterable

import numpy as np

from .backend import Backend, array_namespace, get_backend
from .weights import (CheckpointError, LazyTensor, check_dtypes, check_policy, choose_policy, matmul, read_headers,
                      read_tensors, resolve_checkpoint, stack_rows)

# ---------------------------------------------------------------------------------------------
# Primitives (pure functions; float32 in, float32 out: constants are Python floats, which
# NumPy 2 does not let promote a float32 array).

_GELU_C = math.sqrt(2.0 / math.pi)


def linear(x, weight, bias=None):
    """x @ weight + bias, with HF Conv1D's [in, out] weight (float32, or a LazyTensor left in its
    file). As one 2-D product: a stacked one ([batch, 1, in] while decoding) would read the
    whole weight once per batch row; by slabs of columns, see weights.matmul."""
    flat = matmul(x.reshape(-1, x.shape[-1]), weight)
    if bias is not None:
        flat += bias
    return flat.reshape(*x.shape[:-1], weight.shape[-1])


def linear_t(x, weight, bias=None):
    """x @ weight.T + bias for torch Linear's [out, in] weight (OPT's and LLaMA's checkpoints,
    and every tied unembedding), as linear; the transposed view costs no copy."""
    flat = matmul(x.reshape(-1, x.shape[-1]), weight, transposed=True)
    if bias is not None:
        flat += bias
    return flat.reshape(*x.shape[:-1], weight.shape[0])


def gelu_new(x):
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), step by step in one new buffer: the same
    floats as that formula written out (halving last is exact), without its eight temporaries."""
    xp = array_namespace(x)
    y = x * x
    y *= x                                   # x*x*x: x**3 is a slow pow
    y *= 0.044715
    y += x
    y *= _GELU_C
    xp.tanh(y, out=y)
    y += 1.0
    y *= x
    y *= 0.5
    return y


def softmax(x, out=None):
    """Softmax over the last axis, into a new array (or into `out`, which may be x itself)."""
    xp = array_namespace(x)
    e = xp.subtract(x, x.max(axis=-1, keepdims=True), out=out)
    xp.exp(e, out=e)
    e /= e.sum(axis=-1, keepdims=True)
    return e


def attention_scores(q, k, mask_bias, divisor=None):
    """q k^T / sqrt(d_head) + mask_bias (or q k^T / `divisor`: Gemma's sqrt(query_pre_attn_scalar)):
    q [batch, kv_head, group, query, d_head], k [batch, kv_head, key, d_head], mask_bias [batch, 1,
    query, key] (0, or -inf where the key is in the query's future or padding) -> [batch, kv_head,
    group, query, key]. `group`: the query heads that share
    a key/value head (grouped-query attention; 1 without): their query rows are stacked against
    it, one plain product per key/value head, where a product broadcast over the group costs
    twice as much at a decode step's single row."""
    batch, n_kv, group, seq, d_head = q.shape
    # Scaling q (d_head wide) costs less than scaling the scores (key wide); for GPT-2's
    # d_head = 64 the factor is 1/8 and both give the same floats. Into a new array in this
    # axis order, so that stacking the group's rows is a view, not a second copy.
    xp = array_namespace(q)
    rows = xp.divide(q, divisor or math.sqrt(d_head), out=xp.empty(q.shape, dtype=q.dtype)).reshape(batch, n_kv, group * seq, d_head)
    scores = (rows @ k.transpose(0, 1, 3, 2)).reshape(batch, n_kv, group, seq, -1)
    scores += mask_bias[:, :, None]
    return scores


def weighted_values(pattern, v):
    """pattern [batch, kv_head, group, query, key] @ v [batch, kv_head, key, d_head] -> [batch,
    kv_head, group, query, d_head], the group's rows stacked as in attention_scores."""
    batch, n_kv, group, seq, keys = pattern.shape
    return (pattern.reshape(batch, n_kv, group * seq, keys) @ v).reshape(batch, n_kv, group, seq, -1)


ATTENTION_BLOCK = 128  # query rows per block of `causal_attention`


def causal_attention(q, k, v, mask_bias, start, block=None, divisor=None):
    """weighted_values(softmax(attention_scores(q, k, mask_bias)), v), computed block by block of
    queries, each against only the keys it may see (those before the block's end): half the work
    of the full square on a long prompt, and blocks of scores small enough to stay in cache.

    q  [batch, kv_head, group, query, d_head] at sequence positions start, start+1, ...; k, v
    [batch, kv_head, key, d_head] with key = start + query; mask_bias as for attention_scores.
    Equal to the full computation up to float rounding (the tests hold it to that)."""
    block = block or ATTENTION_BLOCK
    seq = q.shape[-2]
    if seq <= block:
        scores = attention_scores(q, k, mask_bias, divisor)
        return weighted_values(softmax(scores, out=scores), v)
    xp = array_namespace(q)
    z = xp.empty(q.shape, dtype=q.dtype)                                       # [batch, kv_head, group, query, d_head]
    for i in range(0, seq, block):
        end = min(i + block, seq)
        seen = start + end                                                     # keys visible to this block
        scores = attention_scores(q[..., i:end, :], k[..., :seen, :], mask_bias[..., i:end, :seen], divisor)
        z[..., i:end, :] = weighted_values(softmax(scores, out=scores), v[..., :seen, :])
    return z


def rotate_half(x):
    """[..., d] -> [-x2, x1] of its halves x1, x2: the rotation of each pair (i, i + d/2)."""
    half = x.shape[-1] // 2
    xp = array_namespace(x)
    out = xp.empty(x.shape, dtype=x.dtype)
    out[..., :half] = -x[..., half:]
    out[..., half:] = x[..., :half]
    return out


def stacked(modules: list[dict], xp) -> list[tuple]:
    """Projections of one input (q, k, v; gate, up) as products to run: one, their weights'
    rows stacked (weights.stack_rows: the modules' weights become views of it), or one each
    where the weights stay in a mapped float32 file. Each product: (weight, bias, [out widths])."""
    weight, views = stack_rows([m["weight"] for m in modules], xp)
    if weight is None:
        return [(m["weight"], m.get("bias"), [m["weight"].shape[0]]) for m in modules]
    bias = None
    if "bias" in modules[0]:            # vectors: copied into one whatever they are views of
        bias = xp.concatenate([m["bias"] for m in modules])
        bounds = np.cumsum([0] + [w.shape[0] for w in views])
        for m, a, b in zip(modules, bounds[:-1], bounds[1:]):
            m["bias"] = bias[a:b]
    for m, w in zip(modules, views):
        m["weight"] = w
    return [(weight, bias, [w.shape[0] for w in views])]


def project(x, products: list[tuple]) -> list:
    """x through each product of `stacked`, each output split back into its projections'."""
    outs = []
    for weight, bias, widths in products:
        y = linear_t(x, weight, bias)                                          # [batch, pos, sum(widths)]
        start = 0
        for width in widths:
            outs.append(y[..., start:start + width])
            start += width
    return outs


def mean_last(x):
    """x.mean(axis=-1, keepdims=True), the same floats without `mean`'s Python-level overhead
    (tens of microseconds a call, 3% of a decode step)."""
    return x.sum(axis=-1, keepdims=True) / x.shape[-1]


def centre(x):
    return x - mean_last(x)


def rms_scale(centred, eps):
    """LayerNorm's divisor sqrt(var + eps), with the biased variance, of already-centred x."""
    return (mean_last(centred * centred) + eps) ** 0.5                       # [..., 1]


# ---------------------------------------------------------------------------------------------
# Hook points


def hook_names(n_layer: int) -> list[str]:
    """Every hook point of an n_layer model, in the order the forward pass reaches them."""
    names = ["hook_embed", "hook_pos_embed"]
    for L in range(n_layer):
        b = f"blocks.{L}."
        names += [b + "hook_resid_pre", b + "ln1.hook_scale", b + "ln1.hook_normalized",
                  b + "attn.hook_q", b + "attn.hook_k", b + "attn.hook_v",
                  b + "attn.hook_attn_scores", b + "attn.hook_pattern", b + "attn.hook_z",
                  b + "hook_attn_out", b + "hook_resid_mid",
                  b + "ln2.hook_scale", b + "ln2.hook_normalized",
                  b + "mlp.hook_pre", b + "mlp.hook_post", b + "hook_mlp_out", b + "hook_resid_post"]
    return names + ["ln_final.hook_scale", "ln_final.hook_normalized"]


_HOOK_PATTERN = re.compile(
    r"hook_embed|hook_pos_embed|ln_final\.hook_(scale|normalized)|blocks\.(\d+)\.("
    r"hook_(resid_pre|attn_out|resid_mid|mlp_out|resid_post)|ln[12]\.hook_(scale|normalized)|"
    r"attn\.hook_(q|k|v|attn_scores|pattern|z)|mlp\.hook_(pre|post))"
)
HOOK_NAME_HELP = (
    "valid names: hook_embed, hook_pos_embed, blocks.{L}.hook_resid_pre, blocks.{L}.ln1.hook_scale, "
    "blocks.{L}.ln1.hook_normalized, blocks.{L}.attn.hook_{q,k,v,attn_scores,pattern,z}, "
    "blocks.{L}.hook_attn_out, blocks.{L}.hook_resid_mid, blocks.{L}.ln2.hook_{scale,normalized}, "
    "blocks.{L}.mlp.hook_{pre,post}, blocks.{L}.hook_mlp_out, blocks.{L}.hook_resid_post, "
    "ln_final.hook_{scale,normalized}"
)

HookFn = Callable[[object, "HookPoint"], object]  # fn(activation, hook) -> replacement or None


class HookPoint(str):
    """The second argument of a hook: the hook's name (it *is* that str, so `hook == name` and
    `hook.name` both work, as in TransformerLens) plus where in the sequence this pass is.

    positions  int array [batch, pos], host NumPy whatever the backend: each row's token position
               at each place of this pass (0 = the row's first token, as fed to wpe); -1 at
               left padding.
    start      where this pass begins in the sequence: 0 on a pass over the whole prompt; with a
               KV cache, the number of positions already cached (n on the step that adds token n).

    A hook that must act on prompt positions only (as ActAdd does) selects with `positions`:
    those are the same whether the sequence is recomputed in full or decoded from a cache.
    """

    positions: object
    start: int

    def __new__(cls, name: str, positions, start: int):
        point = super().__new__(cls, name)
        point.positions, point.start = positions, start
        return point

    @property
    def name(self) -> str:
        return str(self)


class HookPoints:
    """What a forward pass does at each named point: run the user's hooks, then cache."""

    def __init__(self, hooks: dict[str, list[HookFn]], cache: dict | None, cache_names: set[str]):
        self.hooks, self.cache, self.cache_names = hooks, cache, cache_names
        self.positions, self.start = None, 0  # set by the forward pass

    def __call__(self, name: str, x):
        fns = self.hooks.get(name)
        if fns:
            point = HookPoint(name, self.positions, self.start)
            for fn in fns:
                out = fn(x, point)
                if out is not None:
                    _check_replacement(fn, name, x, out)
                    x = out
        if name in self.cache_names:
            self.cache[name] = x
        return x

    def observes(self, *names: str) -> bool:
        """Whether any of these points has a hook or is cached (else a pass may skip making it)."""
        return any(n in self.hooks or n in self.cache_names for n in names)


def _check_replacement(fn, name, x, out):
    if type(out) is not type(x) or out.shape != x.shape or out.dtype != x.dtype:
        got = f"{type(out).__name__} {getattr(out, 'dtype', '')} {getattr(out, 'shape', '')}".strip()
        raise ValueError(
            f"hook {getattr(fn, '__name__', fn)!r} on {name!r} returned {got}; expected "
            f"{type(x).__name__} {x.dtype} {x.shape} (return None to keep the activation)"
        )


# ---------------------------------------------------------------------------------------------
# KV cache


class KVCache:
    """Keys and values of every layer for the positions seen so far, in buffers allocated once
    for `max_len` positions and written in place; attention reads views of their filled part.

    keys[L], values[L]   [batch, head, max_len, d_head]
    mask                 [batch, max_len] True where a position holds a real token (not padding)
    seen                 [batch] real tokens per row so far (the next token's position id);
                         host NumPy, as position ids are made on the host
    length               positions filled, the same for every row (left padding aligns them)
    """

    def __init__(self, config, batch: int, max_len: int, xp=np):
        if max_len > config.n_positions:
            raise ValueError(f"a KV cache of {max_len} positions exceeds n_positions={config.n_positions}")
        shape = (batch, getattr(config, "n_kv_head", config.n_head), max_len, config.d_head)  # kv heads (GQA)
        self.keys = [xp.zeros(shape, dtype=xp.float32) for _ in range(config.n_layer)]
        self.values = [xp.zeros(shape, dtype=xp.float32) for _ in range(config.n_layer)]
        self.mask = xp.zeros((batch, max_len), dtype=bool)
        self.seen = np.zeros((batch,), dtype=np.int64)
        self.batch, self.max_len, self.length = batch, max_len, 0

    def take_rows(self, rows, seen: np.ndarray) -> None:
        """Keep rows `rows` (a device int array, repeats allowed) of every buffer, in that
        order: how several samples of one prompt share its prompt pass. `seen` is the same
        selection of `self.seen`, made on the host by the caller (no device sync here)."""
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]
        self.mask = self.mask[rows]
        self.seen, self.batch = seen, len(seen)


# ---------------------------------------------------------------------------------------------
# The shared part of every model


class Transformer:
    """The part of a model that is not its arithmetic. A family's class sets `config` (with
    n_layer, n_head, n_embd, d_head, n_positions, vocab_size), `backend`, `xp` and
    `hook_names`, and defines `forward(tokens, hook, *, attention_mask, cache, last_only,
    start_at_layer, resid_pre)` and `_tree()` (its parameters under checkpoint names, nested)."""

    config: object
    config_class: type        # the family's config, with from_json
    model_type: str           # the family's name in config.json ("gpt2", "opt", "llama")
    canonical_state_dict: Callable  # (tensors or headers, config, source) -> the parameters by name, checked
    repr_fields: tuple        # the config fields repr() shows
    hook_names: list[str]

    def _to_device(self, params: dict, source: str, backend: str | Backend) -> dict:
        """The checked float32 host tensors, moved to `backend` once, nested by name. Matrices
        read lazily (LazyTensor: float16/bfloat16 or a GGUF file's quantized blocks left in the
        mapped file) stay so on the host backend and are widened where they are used; lazy vectors
        and anything lazy bound for a device are widened now."""
        self.backend = get_backend(backend)
        self.xp = self.backend.xp  # the array namespace of every parameter and activation
        params = dict(params)
        for name, tensor in params.items():
            if isinstance(tensor, LazyTensor) and (self.backend.name != "numpy" or len(tensor.shape) < 2):
                params[name] = tensor = tensor.widen()     # on a device (widened once there), and vectors
            if isinstance(tensor, LazyTensor):
                continue
            if not isinstance(tensor, np.ndarray) or tensor.dtype != np.float32:
                raise CheckpointError(
                    f"{source}: tensor {name!r} is {type(tensor).__name__} "
                    f"{getattr(tensor, 'dtype', '')}; expected float32 (checkpoints may store "
                    "F32, F16 or BF16; minigpt never narrows float64 silently)"
                )
        device = {name: t if isinstance(t, LazyTensor) else self.backend.to_device(t) for name, t in params.items()}
        self._array_type = type(next(t for t in device.values() if not isinstance(t, LazyTensor)))
        self.lazy_weights = any(isinstance(t, LazyTensor) for t in device.values())
        return _nest(device)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, revision: str | None = None,
                        backend: str | Backend = "numpy", weights: str = "auto"):
        """Load a local Hugging Face folder or a hub id of this family (`gpt2`, `facebook/opt-125m`,
        `meta-llama/Llama-3.2-1B`, ...) onto `backend`: "numpy" (the host) or "cupy" (the
        current CUDA device).

        `weights`, the memory policy for float16/bfloat16 files: "float32" widens every matrix
        once at load (4 bytes a parameter), "lazy" leaves the matrices in the mapped file and
        widens a slab at a time where they are used (2 bytes a parameter; the same floats),
        "auto" is lazy on the host when the float32 weights would exceed LAZY_ABOVE_BYTES
        (Llama-3-8B: 32 GB, opt-6.7b: 26.8 GB) and float32 otherwise. float32 files are
        mapped as they are under every policy."""
        check_policy(weights)
        backend = get_backend(backend)  # before reading gigabytes: a missing CuPy fails fast
        files, config, headers, source = cls._checked_files(name_or_path, revision)
        weights = choose_policy(weights, [h.shape for h in headers.values()], backend)
        return cls(config, read_tensors(headers, widen=weights == "float32"), source=source, backend=backend)

    @classmethod
    def _checked_files(cls, name_or_path, revision):
        """(files, config, headers, source): the config read and checked field by field, then
        against the weight files' headers (names, shapes, dtypes), before any array is made."""
        files = resolve_checkpoint(name_or_path, revision)
        config = cls.config_class.from_json(files.config)
        headers = read_headers(files)
        source = str(files.weights[0] if len(files.weights) == 1 else files.weights[0].parent)
        check_dtypes(cls.canonical_state_dict(headers, config, source), source)
        return files, config, headers, source

    def __repr__(self):
        on = "" if self.backend.name == "numpy" else f", backend={self.backend.name!r}"
        on += ", weights='lazy'" if self.lazy_weights else ""
        shown = ", ".join(f"{f}={getattr(self.config, f)}" for f in self.repr_fields)
        return f"{type(self).__name__}({shown}{on})"

    def memory_report(self) -> str:
        """The weight policy and what it holds, and this process's peak resident memory so far
        (which counts the pages of a mapped file it has touched)."""
        lazy = [t for t in self.state_dict().values() if isinstance(t, LazyTensor)]
        kinds = sorted({t.kind for t in lazy})
        kinds = "float16/bfloat16" if set(kinds) <= {"F16", "BF16"} else "/".join(kinds)   # or GGUF's: Q4_1/Q8_0
        held = (f"weights lazy: {_size(sum(t.nbytes for t in lazy))} of {kinds} matrices read from the mapped file "
                "a slab at a time" if lazy else "weights float32")
        peak = peak_memory_bytes()
        return held + (f"; peak resident memory {_size(peak)}" if peak is not None else "")

    def state_dict(self) -> dict[str, np.ndarray]:
        """Every parameter under its bare checkpoint name (the inverse of loading), as arrays of
        the model's backend."""
        def flatten(prefix, node):
            for key, value in node.items():
                if isinstance(value, dict):
                    yield from flatten(f"{prefix}{key}.", value)
                else:
                    yield f"{prefix}{key}", value
        return dict(flatten("", self._tree()))

    # --- public entry points -----------------------------------------------------------------

    def __call__(self, tokens, **kwargs):
        """Logits, float32 [batch, pos, vocab], for token ids of shape [pos] or [batch, pos].
        Keyword arguments as in `forward` (attention_mask, cache, last_only)."""
        return self.forward(tokens, **kwargs)

    def run_with_cache(self, tokens, names=None, **kwargs):
        """(logits, cache): cache maps hook name -> activation, in forward order.

        `names` filters what is kept: None (all), one name, a list of names, or a predicate.
        Keyword arguments as in `forward`.
        """
        wanted = set(self._select(names)) if names is not None else set(self.hook_names)
        cache: dict = {}
        logits = self.forward(tokens, HookPoints({}, cache, wanted), **kwargs)
        return logits, {n: cache[n] for n in self.hook_names if n in cache}

    def run_with_hooks(self, tokens, fwd_hooks: Iterable[tuple[str | Callable, HookFn]] = (), **kwargs):
        """Logits with fn(activation, hook) called at each named point (`hook` is a HookPoint:
        the name, with the pass's positions).

        fn returns a replacement (same type, shape and dtype) or None to keep the activation;
        several hooks on one name run in the order given. A name may also be a predicate on
        hook names, as in TransformerLens. Keyword arguments as in `forward`.
        """
        return self.forward(tokens, self.hook_points(fwd_hooks), **kwargs)

    def logit_lens(self, resid):
        """Logits [batch, pos, vocab] of residual-stream vectors [batch, pos, d_model] (host or
        device, float32) read as if they left the last block: the model's own final norm and
        unembedding, nothing before (start_at_layer = n_layer). The logit lens; a heuristic."""
        resid = self.backend.to_device(resid) if isinstance(resid, np.ndarray) else resid
        if resid.ndim != 3:
            raise ValueError(f"logit_lens takes [batch, pos, d_model]; got shape {resid.shape}")
        return self.forward(np.zeros(resid.shape[:2], np.int64), start_at_layer=self.config.n_layer, resid_pre=resid)

    def hook_points(self, fwd_hooks: Iterable[tuple[str | Callable, HookFn]] = ()) -> HookPoints:
        """The hooks of `fwd_hooks`, checked and grouped by point, ready for `forward`."""
        hooks: dict[str, list[HookFn]] = {}
        for name, fn in fwd_hooks:
            if not callable(fn):
                raise TypeError(f"hook for {name!r} is {type(fn).__name__}, not a function")
            for n in self._select(name):
                hooks.setdefault(n, []).append(fn)
        return HookPoints(hooks, None, set())

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty KV cache for `batch` rows of up to `max_len` positions (padding included)."""
        return KVCache(self.config, batch, max_len, self.xp)

    def _select(self, names) -> list[str]:
        if callable(names):
            return [n for n in self.hook_names if names(n)]
        for n in [names] if isinstance(names, str) else names:
            self.check_hook_name(n)
        return [names] if isinstance(names, str) else list(names)

    hook_name_help = HOOK_NAME_HELP   # a family with other points says its own

    def check_hook_name(self, name: str) -> None:
        names = set(self.hook_names)                     # a check when hooks are given, not per pass
        if isinstance(name, str) and name in names:
            return
        block = re.fullmatch(r"blocks\.(\d+)\.(.+)", name) if isinstance(name, str) else None
        if block and int(block.group(1)) >= self.config.n_layer and f"blocks.0.{block.group(2)}" in names:
            raise ValueError(f"hook name {name!r}: this model has blocks 0 to {self.config.n_layer - 1}")
        if isinstance(name, str) and _HOOK_PATTERN.fullmatch(name) and not block:
            # e.g. ln_final in a post-LayerNorm OPT, which has none
            raise ValueError(f"hook name {name!r}: this model has no such point ({type(self).__name__} "
                             f"{'' if getattr(self.config, 'do_layer_norm_before', True) else 'post-LayerNorm '}model)")
        raise ValueError(f"unknown hook name {name!r}; {self.hook_name_help}")

    # --- the pieces of a block that every family computes alike ----------------------------------

    def layer_norm(self, name: str, x, p: dict, hook: HookPoints, eps: float):
        """LayerNorm with TransformerLens's hooks: hook_scale is sqrt(var + eps), hook_normalized
        the centred input over it, before the gain and bias."""
        centred = centre(x)                                                    # [batch, pos, d_model]
        scale = hook(name + ".hook_scale", rms_scale(centred, eps))           # [batch, pos, 1]
        centred /= scale                         # centred is this function's own: reuse it
        normalized = hook(name + ".hook_normalized", centred)
        out = normalized * p["weight"]
        out += p["bias"]
        return out

    def attend(self, name: str, q, k, v, hook: HookPoints, mask_bias, kv, start: int, divisor=None):
        """Causal attention of hooked q, k, v [batch, pos, head, d_head]: with a KV cache, this
        pass's keys and values are appended to it and everything in it is attended to (scores
        divided by sqrt(d_head), or by `divisor`). Returns
        hook_z [batch, pos, head, d_head], before the output projection."""
        batch, seq, n_head, d_head = q.shape
        q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))                 # [batch, head, pos, d_head]
        if kv is not None:  # append to the cache, attend to everything in it
            keys, values = kv
            keys[:, :, start:start + seq] = k
            values[:, :, start:start + seq] = v
            k, v = keys[:, :, :start + seq], values[:, :, :start + seq]        # [batch, head, key, d_head]
        # Grouped-query attention: query heads g*group..(g+1)*group-1 share key/value head g;
        # viewed as [batch, kv_head, group, ...] (group 1 without), every key and value head is
        # read where it is (a copy per query head would cost group x the cache each pass)
        n_kv_head = k.shape[1]
        q = q.reshape(batch, n_kv_head, n_head // n_kv_head, seq, d_head)

        def heads(t):    # [batch, kv_head, group, ., .] -> [batch, head, ., .], a view
            return t.reshape(batch, n_head, *t.shape[-2:])

        if hook.observes(name + ".hook_attn_scores", name + ".hook_pattern"):
            scores = hook(name + ".hook_attn_scores", heads(attention_scores(q, k, mask_bias, divisor)))  # [batch, head, query, key]
            pattern = hook(name + ".hook_pattern", softmax(scores))            # [batch, head, query, key]
            z = weighted_values(pattern.reshape(*q.shape[:-1], -1), v)         # [batch, kv_head, group, pos, d_head]
        else:
            z = causal_attention(q, k, v, mask_bias, start, divisor=divisor)   # the same, by query blocks
        return hook(name + ".hook_z", heads(z).transpose(0, 2, 1, 3))          # [batch, pos, head, d_head]

    # --- the pass's bookkeeping, on the host ---------------------------------------------------

    def _prepare(self, tokens, attention_mask, cache, hook):
        """Checked ids, each position's id, and the attention mask bias of a pass: host ids
        [batch, pos], host positions [batch, pos] (-1 at padding), device tokens, mask_bias
        [batch, 1, query, key] (0 or -inf), and where the pass starts. Writes the pass's mask
        into `cache` and its positions into `hook`."""
        xp, to_device = self.xp, self.backend.to_device
        ids = self.check_tokens(tokens)                                        # host [batch, pos]
        batch, seq = ids.shape
        real = self._check_mask(attention_mask, ids.shape)                     # host bool [batch, pos]
        start, seen = 0, np.zeros((batch,), dtype=np.int64)
        if cache is not None:
            if cache.batch != batch or cache.length + seq > cache.max_len:
                raise ValueError(f"{seq} positions for {batch} rows do not fit a KV cache of {cache.batch} "
                                 f"rows holding {cache.length} of {cache.max_len} positions")
            start, seen = cache.length, cache.seen
        # Position ids are bookkeeping, made and checked on the host: no device sync for them.
        positions = np.where(real, seen[:, None] + real.cumsum(axis=1) - 1, -1)  # host [batch, pos]
        if positions.max() >= self.config.n_positions:
            raise ValueError(f"position {int(positions.max())} is past n_positions={self.config.n_positions}")
        device_tokens, real_here = to_device(ids), to_device(real)             # the pass's only inputs
        if cache is not None:
            cache.mask[:, start:start + seq] = real_here
            real_keys = cache.mask[:, :start + seq]                            # [batch, key]
        else:
            real_keys = real_here
        # Query i sees key j <= i that is a real token; a padding position sees itself only, so
        # that no row of scores is all -inf (a NaN there would reach real rows through 0 * NaN).
        q_at = start + xp.arange(seq)[:, None]                                 # [query, 1]
        k_at = xp.arange(start + seq)[None, :]                                 # [1, key]
        visible = (k_at <= q_at) & (real_keys[:, None, :] | (k_at == q_at))   # [batch, query, key]
        # float32 scalars: Python floats would make where() build a float64 array
        mask_bias = xp.where(visible, xp.float32(0.0), xp.float32(-math.inf))[:, None]  # [batch, 1, query, key]
        hook.positions, hook.start = positions, start
        return ids, positions, device_tokens, mask_bias, start, real

    def _advance(self, cache, seq: int, real) -> None:
        """After a pass: the cache holds `seq` more positions, each row `real` more tokens."""
        if cache is not None:
            cache.length += seq
            cache.seen = cache.seen + real.sum(axis=1)

    # --- input checks --------------------------------------------------------------------------

    def check_tokens(self, tokens) -> np.ndarray:
        """Token ids as a host NumPy integer array [batch, pos], or an error saying what is wrong.

        Checked on the host, where ids come from, before they index anything: an out-of-range
        index must be an error here, not a wrap-around (as in CuPy) or an IndexError deep inside.
        Ids given as an array of the model's backend are copied to the host for that.
        """
        try:
            ids = self._host(tokens)
        except ValueError as e:  # ragged nested lists
            raise ValueError(f"tokens must be a rectangular [seq] or [batch, seq] array of ids ({e})") from None
        if ids.ndim not in (1, 2):
            raise ValueError(f"tokens must have shape [seq] or [batch, seq], got shape {ids.shape}")
        if ids.size == 0:
            raise ValueError(f"tokens is empty (shape {ids.shape}); give at least one token id")
        if ids.dtype.kind not in "iu":
            raise TypeError(f"tokens must be integer ids, got dtype {ids.dtype}")
        ids = ids.reshape(-1, ids.shape[-1])
        V, P = self.config.vocab_size, self.config.n_positions
        if ids.shape[1] > P:
            raise ValueError(f"sequence of {ids.shape[1]} tokens is longer than n_positions={P}")
        bad = (ids < 0) | (ids >= V)
        if bad.any():
            b, t = (int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"token id {int(ids[b, t])} at batch row {b}, position {t} is outside the vocabulary [0, {V})"
            )
        return ids.astype(np.intp, copy=False)

    def _check_stop(self, stop, start, cache, last_only):
        if stop is None:
            return
        if isinstance(stop, bool) or not isinstance(stop, (int, np.integer)) or not start <= stop <= self.config.n_layer:
            raise ValueError(f"stop_at_layer={stop!r}: expected {start} (start_at_layer) to {self.config.n_layer} "
                             "(after the last block)")
        if cache is not None or last_only:
            raise ValueError("stop_at_layer returns the residual stream of every position; it cannot fill a KV cache "
                             "(the later blocks would have no keys) or unembed the last position")

    def _check_resid_pre(self, resid_pre, layer, shape, cache):
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer <= self.config.n_layer:
            raise ValueError(f"start_at_layer={layer!r}: this model has blocks 0 to {self.config.n_layer - 1} "
                             f"({self.config.n_layer}: the final norm and unembedding only)")
        if cache is not None:
            raise ValueError("start_at_layer cannot fill a KV cache: the blocks before it would have no keys")
        want = (*shape, self.config.n_embd)
        if resid_pre is None:
            at = (f"blocks.{layer}.hook_resid_pre" if layer < self.config.n_layer
                  else f"blocks.{layer - 1}.hook_resid_post (after the last block)")
            raise ValueError(f"start_at_layer={layer} needs resid_pre, the activation at {at} of these tokens")
        if type(resid_pre) is not self._array_type or resid_pre.dtype != np.float32 or resid_pre.shape != want:
            raise ValueError(f"resid_pre is {type(resid_pre).__name__} {getattr(resid_pre, 'dtype', '')} "
                             f"{getattr(resid_pre, 'shape', '')}; expected {self._array_type.__name__} float32 {want}")
        return resid_pre

    def _host(self, x) -> np.ndarray:
        """x (a list, a NumPy array, or an array of the model's backend) as a host NumPy array."""
        try:
            return np.asarray(x)
        except TypeError:  # a device array refuses implicit conversion: copy it explicitly
            return self.backend.to_host(x)

    def _check_mask(self, attention_mask, shape) -> np.ndarray:
        """The attention mask as host bool [batch, pos] (all True when None): 1/True = real
        token. Only left padding is supported: once a row's real tokens begin, they do not stop."""
        if attention_mask is None:
            return np.ones(shape, dtype=bool)
        mask = self._host(attention_mask)
        if mask.ndim == 1:
            mask = mask[None]
        if mask.shape != shape:
            raise ValueError(f"attention_mask has shape {mask.shape}, tokens {shape}")
        if mask.dtype != bool:
            if mask.dtype.kind not in "iu" or not np.isin(mask, (0, 1)).all():
                raise ValueError(f"attention_mask must hold 0/1 or bools, got dtype {mask.dtype}")
            mask = mask.astype(bool)
        if (mask[:, :-1] & ~mask[:, 1:]).any():
            row = int(np.argwhere(mask[:, :-1] & ~mask[:, 1:])[0, 0])
            raise ValueError(f"attention_mask row {row} has padding after a real token; "
                             "pad on the left (real tokens last)")
        return mask




def _size(nbytes: int) -> str:
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.0f} MB"


def peak_memory_bytes() -> int | None:
    """This process's peak resident set (getrusage: kilobytes on Linux, bytes on macOS); None
    where there is no getrusage (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _nest(flat: dict) -> dict:
    """{"h.0.ln_1.weight": w} -> {"h": {"0": {"ln_1": {"weight": w}}}}."""
    tree: dict = {}
    for name, value in flat.items():
        *path, leaf = name.split(".")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree
