"""Gemma 3's forward pass in NumPy (`Gemma3ForCausalLM`, config.json's model_type "gemma3_text":
the text-only Gemma 3 models, 270M and 1B), every residual-stream step under TransformerLens's
hook names, so that ActAdd is the same addition at blocks.{L}.hook_resid_pre.

    resid_pre_0 = embed_tokens[tokens] * sqrt(hidden_size)                    # scaled; no position embedding
    for each block L (local: a sliding window of keys; global: every key, every `pattern`-th block):
        x            = input_layernorm(resid_pre_L)                               # RMSNorm, weight (1 + w)
        q, k, v      = x W_q, x W_k, x W_v;  q, k = q_norm(q), k_norm(k)          # RMSNorm on each head
        rot_q, rot_k = rotary(q, k, positions; the local or the global base)     # rotate-half
        attn_out     = post_attention_layernorm(o_proj(attention(rot_q, rot_k, v)))   # / sqrt(query_pre_attn_scalar)
        resid_mid_L  = resid_pre_L + attn_out
        mlp_out      = post_feedforward_layernorm(down(gelu_tanh(gate(y)) * up(y)))   # y = pre_feedforward_layernorm(resid_mid_L)
        resid_post_L = resid_mid_L + mlp_out
    logits = lm_head(norm(resid_post_last))                                   # lm_head = embed_tokens when tied

Four norms a block: the one after attention and the one after the MLP sit inside the branch,
before the residual addition, so hook_attn_out and hook_mlp_out are what is added to the stream
(TransformerLens's ln1_post / ln2_post, placed before those hooks). Every RMSNorm multiplies by
(1 + weight): the checkpoint stores the offset from one. Its hooks are TransformerLens's: hook_scale
= sqrt(mean(x^2) + eps), hook_normalized = x / scale.

A local block's query sees the keys of the last `sliding_window` positions, itself included
(transformers' `kv_idx > q_idx - sliding_window`). The KV cache keeps every position; a local
block's mask hides the older ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import (ConfigError, check_header, config_fields, prefixed, read_json, require_bool, require_divides,
                     require_number, require_positive_int, show)
from .model import (HookPoints, KVCache, Transformer, gelu_new, linear_t, mean_last, project, rotate_half, stacked)
from .weights import CheckpointError, LazyTensor, check_blocks, select_tensors

LOCAL, GLOBAL = "sliding_attention", "full_attention"   # transformers' layer_types


def hook_names(n_layer: int) -> list[str]:
    """Every hook point of an n_layer Gemma 3, in the order the forward pass reaches them."""
    names = ["hook_embed"]
    for L in range(n_layer):
        b = f"blocks.{L}."
        names += [b + "hook_resid_pre", b + "ln1.hook_scale", b + "ln1.hook_normalized",
                  b + "attn.hook_q", b + "attn.hook_k", b + "attn.hook_v",
                  b + "attn.q_norm.hook_scale", b + "attn.q_norm.hook_normalized",
                  b + "attn.k_norm.hook_scale", b + "attn.k_norm.hook_normalized",
                  b + "attn.hook_rot_q", b + "attn.hook_rot_k", b + "attn.hook_attn_scores", b + "attn.hook_pattern",
                  b + "attn.hook_z", b + "ln1_post.hook_scale", b + "ln1_post.hook_normalized", b + "hook_attn_out",
                  b + "hook_resid_mid", b + "ln2.hook_scale", b + "ln2.hook_normalized",
                  b + "mlp.hook_pre", b + "mlp.hook_pre_linear", b + "mlp.hook_post",
                  b + "ln2_post.hook_scale", b + "ln2_post.hook_normalized", b + "hook_mlp_out",
                  b + "hook_resid_post"]
    return names + ["ln_final.hook_scale", "ln_final.hook_normalized"]


HOOK_NAME_HELP = (
    "valid names: hook_embed, blocks.{L}.hook_resid_pre, blocks.{L}.ln1.hook_{scale,normalized}, "
    "blocks.{L}.attn.hook_{q,k,v}, blocks.{L}.attn.{q,k}_norm.hook_{scale,normalized}, "
    "blocks.{L}.attn.hook_{rot_q,rot_k,attn_scores,pattern,z}, blocks.{L}.ln1_post.hook_{scale,normalized}, "
    "blocks.{L}.hook_attn_out, blocks.{L}.hook_resid_mid, blocks.{L}.ln2.hook_{scale,normalized}, "
    "blocks.{L}.mlp.hook_{pre,pre_linear,post}, blocks.{L}.ln2_post.hook_{scale,normalized}, "
    "blocks.{L}.hook_mlp_out, blocks.{L}.hook_resid_post, ln_final.hook_{scale,normalized}"
)


@dataclass(frozen=True)
class Gemma3Config:
    # Defaults are transformers' Gemma3TextConfig's: a config.json that leaves a field out means them.
    vocab_size: int = 262208
    hidden_size: int = 2304
    intermediate_size: int = 9216
    num_hidden_layers: int = 26
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    head_dim: int = 256
    max_position_embeddings: int = 131072
    rms_norm_eps: float = 1e-6
    query_pre_attn_scalar: float = 256
    sliding_window: int = 4096
    layer_types: tuple[str, ...] | None = None   # None: every sliding_window_pattern-th block global, the others local
    sliding_window_pattern: int = 6
    rope_theta: float = 1_000_000.0              # global blocks
    rope_scaling_factor: float = 1.0             # global blocks: "linear" rope scaling divides positions by it
    rope_local_base_freq: float = 10_000.0       # local blocks
    rope_local_scaling_factor: float = 1.0
    attention_bias: bool = False
    tie_word_embeddings: bool = True

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "max_position_embeddings", "sliding_window",
                     "sliding_window_pattern"):
            require_positive_int(name, getattr(self, name))
        require_divides("num_key_value_heads", self.num_key_value_heads, "num_attention_heads",
                        self.num_attention_heads, "each key/value head serves an equal group of query heads")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim: {self.head_dim} is odd (expected even: rotary embeddings rotate pairs)")
        require_number("rms_norm_eps", self.rms_norm_eps, 0, 1)
        for name in ("query_pre_attn_scalar", "rope_theta", "rope_scaling_factor", "rope_local_base_freq",
                     "rope_local_scaling_factor"):
            require_number(name, getattr(self, name), 0)
        for name in ("attention_bias", "tie_word_embeddings"):
            require_bool(name, getattr(self, name))
        types = self.layer_types
        if types is None:       # made per block when asked, not as a list: a hostile block count costs nothing here
            return
        if not isinstance(types, tuple) or len(types) != self.num_hidden_layers:
            raise ConfigError(f"layer_types: {len(types) if isinstance(types, tuple) else show(types)} entries "
                              f"(expected one per block: num_hidden_layers={self.num_hidden_layers})")
        for i, t in enumerate(types):
            if t not in (LOCAL, GLOBAL):
                raise ConfigError(f"layer_types[{i}]: {show(t)} (expected {show(LOCAL)} or {show(GLOBAL)})")

    n_layer = property(lambda self: self.num_hidden_layers)
    n_head = property(lambda self: self.num_attention_heads)
    n_kv_head = property(lambda self: self.num_key_value_heads)
    n_embd = property(lambda self: self.hidden_size)
    n_positions = property(lambda self: self.max_position_embeddings)
    d_head = property(lambda self: self.head_dim)
    d_mlp = property(lambda self: self.intermediate_size)

    def layer_type(self, L: int) -> str:
        """GLOBAL or LOCAL: block L's attention."""
        if self.layer_types is not None:
            return self.layer_types[L]
        return GLOBAL if (L + 1) % self.sliding_window_pattern == 0 else LOCAL

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config") -> Gemma3Config:
        """transformers 4.x writes rope_theta, rope_local_base_freq, rope_scaling (the global
        blocks') and sliding_window_pattern; 5.x writes rope_parameters per layer type
        ({"full_attention": {"rope_type", "rope_theta", ...}, "sliding_attention": {...}}) and
        layer_types. Rope types "default" and "linear" are computed; others are refused by name."""
        check_header(raw, source, "gemma3_text", {"hidden_activation": "gelu_pytorch_tanh"}, "Gemma 3")
        for field in ("final_logit_softcapping", "attn_logit_softcapping"):
            if raw.get(field) is not None:
                raise ConfigError(f"{source}: {field}: {show(raw[field])} is not supported (Gemma 3 has none: null)")
        if raw.get("use_bidirectional_attention"):
            raise ConfigError(f"{source}: use_bidirectional_attention: true is not supported (a causal language model)")
        params = raw.get("rope_parameters")
        if params is not None and not isinstance(params, dict):
            raise ConfigError(f"{source}: rope_parameters: {show(params)} (expected an object or null)")
        if params is not None and not {LOCAL, GLOBAL} & set(params):     # one set of parameters for every block
            params = {GLOBAL: params, LOCAL: params}
        params = params or {}
        legacy = raw.get("rope_scaling")
        if legacy is not None and not isinstance(legacy, dict):
            raise ConfigError(f"{source}: rope_scaling: {show(legacy)} (expected an object or null)")
        rope = {}
        for kind, theta_key, default in ((GLOBAL, "rope_theta", 1_000_000.0), (LOCAL, "rope_local_base_freq", 10_000.0)):
            key = f"rope_parameters.{kind}"
            p = params.get(kind)
            if p is None:
                p = dict(legacy or {}) if kind == GLOBAL else {}
                key = "rope_scaling" if kind == GLOBAL and legacy else key
            if not isinstance(p, dict):
                raise ConfigError(f"{source}: {key}: {show(p)} (expected an object or null)")
            rope_type = p.get("rope_type", p.get("type", "default"))
            if rope_type == "default":
                factor = 1.0
            elif rope_type == "linear":
                if "factor" not in p:
                    raise ConfigError(f"{source}: {key}: rope type \"linear\" needs factor")
                factor = p["factor"]
            else:
                raise ConfigError(f"{source}: {key}.rope_type: {show(rope_type)} is not supported "
                                  "(only \"default\" and \"linear\")")
            rope[kind] = (p.get("rope_theta", raw.get(theta_key, default)), factor)
        types = raw.get("layer_types")
        if types is not None and not isinstance(types, list):
            raise ConfigError(f"{source}: layer_types: {show(types)[:60]} (expected an array of layer types)")
        fields = config_fields(raw, source, required=("vocab_size", "hidden_size", "intermediate_size",
                                                      "num_hidden_layers", "num_attention_heads"),
                               optional=("num_key_value_heads", "max_position_embeddings", "rms_norm_eps",
                                         "query_pre_attn_scalar", "sliding_window", "attention_bias",
                                         "tie_word_embeddings"), nullable=("head_dim",))
        with prefixed(source):
            return cls(**fields, layer_types=None if types is None else tuple(types),
                       sliding_window_pattern=raw.get("sliding_window_pattern", 6),
                       rope_theta=rope[GLOBAL][0], rope_scaling_factor=rope[GLOBAL][1],
                       rope_local_base_freq=rope[LOCAL][0], rope_local_scaling_factor=rope[LOCAL][1])

    @classmethod
    def from_json(cls, path: str | Path) -> Gemma3Config:
        return cls.from_dict(read_json(path, "a Gemma 3"), source=str(path))

    @classmethod
    def from_gguf(cls, file) -> Gemma3Config:
        """The config of a GGUF file's `gemma3.*` metadata (llama.cpp's keys). The file stores
        neither the local rope base nor query_pre_attn_scalar nor the block pattern; this takes
        them as llama.cpp runs Gemma 3: 10,000, every 6th block global, and the scalar the head
        size (width / heads for the 62-block 27B), which is what each released model's
        config.json says. transformers' GGUF loader takes the scalar as 256, which agrees for
        head size 256 (270M, 1B, 4B, 12B)."""
        def key(name):
            return "gemma3." + name

        where = str(file.path)
        head_dim = file.integer(key("attention.key_length"))
        if file.integer(key("attention.value_length"), default=head_dim) != head_dim:
            raise ConfigError(f"{where}: {key('attention.value_length')} differs from {key('attention.key_length')}="
                              f"{head_dim} (Gemma's values and keys have one head size)")
        rotated = file.integer(key("rope.dimension_count"), default=head_dim)
        if rotated != head_dim:
            raise ConfigError(f"{where}: {key('rope.dimension_count')} is {rotated}, not the head size {head_dim} "
                              "(Gemma rotates every dimension of a head)")
        embed = file.tensors.get("token_embd.weight")
        if embed is None or len(embed.shape) != 2:
            raise ConfigError(f"{where}: no 2-D tensor token_embd.weight (the token embeddings)")
        vocab = file.integer(key("vocab_size"), default=embed.shape[0])
        if vocab != embed.shape[0]:
            raise ConfigError(f"{where}: {key('vocab_size')} is {vocab}, but token_embd.weight has {embed.shape[0]} rows")
        kind = file.string(key("rope.scaling.type"), default="none")
        if kind not in ("none", "linear"):
            raise ConfigError(f"{where}: {key('rope.scaling.type')} is {kind!r} (minigpt applies \"none\" and \"linear\")")
        factor = file.number(key("rope.scaling.factor")) if kind == "linear" else 1.0
        for softcap in ("final_logit_softcapping", "attn_logit_softcapping"):
            if file.number(key(softcap), default=None) is not None:
                raise ConfigError(f"{where}: {key(softcap)} is set; Gemma 3 has no soft-capping, and minigpt runs none")
        layers = file.integer(key("block_count"))
        width, heads = file.integer(key("embedding_length")), file.integer(key("attention.head_count"))
        pattern = file.integer(key("attention.sliding_window_pattern"), default=6)
        with prefixed(where):
            return cls(vocab_size=vocab, hidden_size=width,
                       intermediate_size=file.integer(key("feed_forward_length")), num_hidden_layers=layers,
                       num_attention_heads=heads,
                       num_key_value_heads=file.integer(key("attention.head_count_kv")), head_dim=head_dim,
                       max_position_embeddings=file.integer(key("context_length")),
                       rms_norm_eps=file.number(key("attention.layer_norm_rms_epsilon")),
                       query_pre_attn_scalar=(width // heads if layers == 62 else head_dim), sliding_window=file.integer(key("attention.sliding_window")),
                       sliding_window_pattern=pattern,
                       rope_theta=file.number(key("rope.freq_base"), default=1_000_000.0), rope_scaling_factor=factor,
                       attention_bias="blk.0.attn_q.bias" in file.tensors,
                       tie_word_embeddings="output.weight" not in file.tensors)


NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")


def expected_shapes(config: Gemma3Config) -> dict[str, tuple[int, ...]]:
    """Every parameter under its name inside `model.` (and `lm_head.weight` if untied)."""
    V, D, F, H = config.vocab_size, config.hidden_size, config.intermediate_size, config.head_dim
    Q, KV = config.num_attention_heads * H, config.num_key_value_heads * H
    shapes = {"embed_tokens.weight": (V, D), "norm.weight": (D,)}
    for i in range(config.num_hidden_layers):
        b = f"layers.{i}."
        shapes.update({b + n + ".weight": (D,) for n in NORMS})
        shapes.update({b + "self_attn.q_proj.weight": (Q, D), b + "self_attn.k_proj.weight": (KV, D),
                       b + "self_attn.v_proj.weight": (KV, D), b + "self_attn.o_proj.weight": (D, Q),
                       b + "self_attn.q_norm.weight": (H,), b + "self_attn.k_norm.weight": (H,),
                       b + "mlp.gate_proj.weight": (F, D), b + "mlp.up_proj.weight": (F, D),
                       b + "mlp.down_proj.weight": (D, F)})
        if config.attention_bias:
            shapes.update({b + "self_attn.q_proj.bias": (Q,), b + "self_attn.k_proj.bias": (KV,),
                           b + "self_attn.v_proj.bias": (KV,), b + "self_attn.o_proj.bias": (D,)})
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, D)
    return shapes


def canonical_state_dict(tensors: dict, config: Gemma3Config, source: str = "checkpoint") -> dict:
    check_blocks(tensors, config.num_hidden_layers, r"(?:^|\.)layers\.(\d+)\.", "num_hidden_layers", source)
    expected = expected_shapes(config)

    def bare(name: str, tensor):
        if name == "lm_head.weight" and config.tie_word_embeddings:
            if tuple(tensor.shape) != expected["embed_tokens.weight"]:
                raise CheckpointError(f"{source}: {name!r} has shape {tuple(tensor.shape)}, expected "
                                      f"{expected['embed_tokens.weight']} (tied to embed_tokens)")
            return None
        return name if name == "lm_head.weight" else name.removeprefix("model.")
    return select_tensors(tensors, expected, bare, source,
                          f"a Gemma 3 with num_hidden_layers={config.num_hidden_layers}")


# llama.cpp's tensor names -> the checkpoint's (inside `model.`), block by block.
GGUF_NAMES = {"token_embd": "embed_tokens", "output_norm": "norm", "output": "lm_head",
              "attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
              "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
              "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
              "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
              "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def gguf_name(name: str) -> str:
    """blk.3.post_ffw_norm.weight -> layers.3.post_feedforward_layernorm.weight; a name not of
    Gemma 3's is kept, to be refused as unexpected by name."""
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in GGUF_NAMES and parts[1].isascii() and parts[1].isdigit():
        return f"layers.{int(parts[1])}.{GGUF_NAMES[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in GGUF_NAMES:
        return f"{GGUF_NAMES[parts[0]]}.{parts[1]}"
    return name


def gguf_tensor(name: str, tensor):
    """llama.cpp's converter stores each RMSNorm weight plus one (its Gemma norm multiplies by the
    weight); the checkpoint's offset is the stored value minus one, in float32 as transformers'
    GGUF loader computes it."""
    if not name.endswith("norm.weight"):
        return tensor
    stored = tensor.widen() if isinstance(tensor, LazyTensor) else tensor
    return np.asarray(stored, dtype=np.float32) - np.float32(1.0)


# ---------------------------------------------------------------------------------------------
# Primitives


def inverse_frequencies(theta: float, factor: float, d_head: int) -> np.ndarray:
    """float32 [d_head / 2]: theta^(-2i / d_head), divided by a "linear" scaling's factor."""
    inv = (1.0 / (theta ** (np.arange(0, d_head, 2, dtype=np.float64) / d_head))).astype(np.float32)
    return inv if factor == 1.0 else (inv / np.float32(factor)).astype(np.float32)


def parameter_count(config: Gemma3Config) -> int:
    return sum(math.prod(shape) for shape in expected_shapes(config).values())


# ---------------------------------------------------------------------------------------------
# The model


class Gemma3(Transformer):
    """Gemma 3 (text). Parameters keep their names inside the checkpoint's `model.`:

    self.embed_tokens                        # [vocab, d_model], scaled by sqrt(d_model) when read
    self.layers[L]["self_attn"]["q_proj"]    # {"weight": [n_head * d_head, d_model]}
    self.layers[L]["self_attn"]["k_proj"]    # [n_kv_head * d_head, d_model]: grouped-query attention
    self.layers[L]["self_attn"]["q_norm"], ["k_norm"]        # RMSNorm weights [d_head]
    self.layers[L]["input_layernorm"], ["post_attention_layernorm"],
                  ["pre_feedforward_layernorm"], ["post_feedforward_layernorm"]   # [d_model] each
    self.layers[L]["mlp"]["gate_proj"], ["up_proj"], ["down_proj"]
    self.norm, self.lm_head                  # lm_head: embed_tokens itself when tied
    """

    config_class = Gemma3Config
    model_type = "gemma3_text"     # config.json's model_type
    canonical_state_dict = staticmethod(canonical_state_dict)
    gguf_architecture = "gemma3"   # a GGUF file's general.architecture
    gguf_name = staticmethod(gguf_name)
    gguf_tensor = staticmethod(gguf_tensor)
    gguf_interleaved_heads = staticmethod(lambda config, name: None)   # stored in the checkpoint's own order
    gguf_config_tensors = ()
    repr_fields = ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "hidden_size", "vocab_size",
                   "sliding_window")
    hook_name_help = HOOK_NAME_HELP

    def __init__(self, config: Gemma3Config, state_dict: dict, source: str = "state_dict",
                 backend: str = "numpy"):
        tree = self._to_device(canonical_state_dict(state_dict, config, source=source), source, backend)
        self.config = config
        self.embed_tokens = tree["embed_tokens"]["weight"]
        self.layers = [tree["layers"][str(L)] for L in range(config.num_hidden_layers)]
        self.products = [{"attn": stacked([b["self_attn"][n] for n in ("q_proj", "k_proj", "v_proj")], self.xp),
                          "mlp": stacked([b["mlp"]["gate_proj"], b["mlp"]["up_proj"]], self.xp)} for b in self.layers]
        self.norm = tree["norm"]
        self.lm_head = self.embed_tokens if config.tie_word_embeddings else tree["lm_head"]["weight"]
        self.hook_names = hook_names(config.num_hidden_layers)
        self.embed_scale = np.float32(config.hidden_size ** 0.5)              # a float32, as transformers' buffer
        self.divisor = math.sqrt(config.query_pre_attn_scalar)                 # not sqrt(head_dim)
        self.inv_freq = {GLOBAL: inverse_frequencies(config.rope_theta, config.rope_scaling_factor, config.d_head),
                         LOCAL: inverse_frequencies(config.rope_local_base_freq, config.rope_local_scaling_factor,
                                                    config.d_head)}
        empty = self.backend.to_device(np.zeros((0, config.d_head), np.float32))
        self.tables = {kind: (empty, empty) for kind in self.inv_freq}
        self.kinds = {config.layer_type(L) for L in range(config.num_hidden_layers)}

    def rotary_table(self, kind: str, upto: int):
        """cos and sin of positions 0..upto-1 at least for local or global blocks, [rows, d_head]
        on the device, grown to a power of two as llama.py's is."""
        cos, sin = self.tables[kind]
        if upto > len(cos):
            rows = min(max(256, 1 << (upto - 1).bit_length()), self.config.max_position_embeddings)
            angles = np.arange(rows, dtype=np.float32)[:, None] * self.inv_freq[kind]   # [rows, d_head / 2]
            angles = np.concatenate([angles, angles], axis=-1)                         # [rows, d_head]
            self.tables[kind] = cos, sin = tuple(self.backend.to_device(f(angles)) for f in (np.cos, np.sin))
        return cos, sin

    def _tree(self) -> dict:
        tree = {"embed_tokens": {"weight": self.embed_tokens}, "norm": self.norm,
                "layers": {str(L): block for L, block in enumerate(self.layers)}}
        if not self.config.tie_word_embeddings:
            tree["lm_head"] = {"weight": self.lm_head}
        return tree

    # --- the forward pass ----------------------------------------------------------------------

    def forward(self, tokens, hook: HookPoints | None = None, *, attention_mask=None,
                cache: KVCache | None = None, last_only: bool = False,
                start_at_layer: int = 0, resid_pre=None, stop_at_layer: int | None = None):
        """Logits [batch, pos, vocab] (pos = 1 with `last_only`); arguments as GPT2.forward.
        Rotary positions count each row's real tokens, so a left-padded row computes what it
        would alone; the sliding window counts places in the sequence, which for a row's real
        tokens (padding only on the left) are the same distances."""
        hook = hook or HookPoints({}, None, set())
        self._check_stop(stop_at_layer, start_at_layer, cache, last_only)
        ids, positions, tokens, mask_bias, start, real = self._prepare(tokens, attention_mask, cache, hook)
        at = self.backend.to_device(np.maximum(positions, 0))                  # [batch, pos]
        rotary, masks = {}, {GLOBAL: mask_bias}
        for kind in self.kinds:                                                # only the kinds the blocks use
            cos, sin = self.rotary_table(kind, int(positions.max()) + 1)
            rotary[kind] = (cos[at][:, :, None], sin[at][:, :, None])          # [batch, pos, 1, d_head] each
        if LOCAL in self.kinds:
            masks[LOCAL] = self.window(mask_bias, start)

        if start_at_layer or resid_pre is not None:
            x = self._check_resid_pre(resid_pre, start_at_layer, ids.shape, cache)
        else:
            x = hook("hook_embed", self.embed_tokens[tokens] * self.embed_scale)  # [batch, pos, d_model]
        for L, block in enumerate(self.layers[start_at_layer:stop_at_layer], start_at_layer):
            kind = self.config.layer_type(L)
            kv = (cache.keys[L], cache.values[L]) if cache is not None else None
            x = self.block(L, block, self.products[L], x, hook, masks[kind], kv, start, rotary[kind])
        if stop_at_layer is not None:
            return x                                                           # [batch, pos, d_model]
        self._advance(cache, ids.shape[1], real)
        if last_only:
            x = x[:, -1:]
            hook.positions = positions[:, -1:]
        x = self.rms_norm("ln_final", x, self.norm, hook)
        return linear_t(x, self.lm_head)                                       # [batch, pos, vocab]

    def window(self, mask_bias, start: int):
        """The causal mask [batch, 1, query, key] of a local block: also -inf where the key is
        `sliding_window` or more places before the query."""
        xp = self.xp
        query, keys = mask_bias.shape[-2:]
        if start + query - 1 < self.config.sliding_window:
            return mask_bias                                                   # no key is that far back yet
        q_at = start + xp.arange(query)[:, None]                               # [query, 1]
        k_at = xp.arange(keys)[None, :]                                        # [1, key]
        return xp.where(k_at > q_at - self.config.sliding_window, mask_bias, xp.float32(-math.inf))

    def block(self, L: int, p: dict, products: dict, x, hook: HookPoints, mask_bias, kv, start: int, rotary):
        b = f"blocks.{L}."
        resid_pre = hook(b + "hook_resid_pre", x)                              # [batch, pos, d_model]
        ln1 = self.rms_norm(b + "ln1", resid_pre, p["input_layernorm"], hook)
        attn = self.attention(b + "attn", ln1, products["attn"], p["self_attn"], hook, mask_bias, kv, start, rotary)
        attn_out = hook(b + "hook_attn_out", self.rms_norm(b + "ln1_post", attn, p["post_attention_layernorm"], hook))
        resid_mid = hook(b + "hook_resid_mid", resid_pre + attn_out)
        ln2 = self.rms_norm(b + "ln2", resid_mid, p["pre_feedforward_layernorm"], hook)
        mlp = self.mlp(b + "mlp", ln2, products["mlp"], p["mlp"]["down_proj"], hook)
        mlp_out = hook(b + "hook_mlp_out", self.rms_norm(b + "ln2_post", mlp, p["post_feedforward_layernorm"], hook))
        return hook(b + "hook_resid_post", resid_mid + mlp_out)

    def rms_norm(self, name: str, x, p: dict, hook: HookPoints):
        scale = hook(name + ".hook_scale", (mean_last(x * x) + self.config.rms_norm_eps) ** 0.5)  # [..., 1]
        normalized = hook(name + ".hook_normalized", x / scale)               # before the weight
        return normalized * (1.0 + p["weight"])                                # Gemma's offset from one

    def attention(self, name: str, x, qkv: list, p: dict, hook: HookPoints, mask_bias, kv, start: int, rotary):
        c = self.config
        batch, seq, _ = x.shape
        q, k, v = project(x, qkv)                                              # q_proj, k_proj, v_proj
        q = hook(name + ".hook_q", q.reshape(batch, seq, c.n_head, c.d_head))
        k = hook(name + ".hook_k", k.reshape(batch, seq, c.n_kv_head, c.d_head))
        v = hook(name + ".hook_v", v.reshape(batch, seq, c.n_kv_head, c.d_head))
        q = self.rms_norm(name + ".q_norm", q, p["q_norm"], hook)             # each head's d_head
        k = self.rms_norm(name + ".k_norm", k, p["k_norm"], hook)
        cos, sin = rotary                                                      # [batch, pos, 1, d_head]
        q = hook(name + ".hook_rot_q", q * cos + rotate_half(q) * sin)         # [batch, pos, head, d_head]
        k = hook(name + ".hook_rot_k", k * cos + rotate_half(k) * sin)         # [batch, pos, kv_head, d_head]
        z = self.attend(name, q, k, v, hook, mask_bias, kv, start, divisor=self.divisor)   # [batch, pos, head, d_head]
        return linear_t(z.reshape(batch, seq, c.n_head * c.d_head), **p["o_proj"])   # [batch, pos, d_model]

    def mlp(self, name: str, x, gate_up: list, down_proj: dict, hook: HookPoints):
        gate, up = project(x, gate_up)                                         # gate_proj, up_proj
        gate = hook(name + ".hook_pre", gate)                                  # [batch, pos, d_mlp]
        up = hook(name + ".hook_pre_linear", up)
        post = gelu_new(gate)                                                  # the tanh GELU
        post *= up                                                             # gelu's own buffer
        post = hook(name + ".hook_post", post)
        return linear_t(post, **down_proj)                                     # [batch, pos, d_model]
