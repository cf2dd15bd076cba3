"""LLaMA's forward pass in NumPy (`LlamaForCausalLM`: Llama 2, Llama 3, 3.1, 3.2, 3.3), every
residual-stream step under the TransformerLens hook names for LLaMA, so that ActAdd is the same
addition at blocks.{L}.hook_resid_pre.

    resid_pre_0 = embed_tokens[tokens]                                        # no position embedding
    for each block L:
        q, k, v      = x W_q, x W_k, x W_v  of x = input_layernorm(resid_pre_L)      # RMSNorm
        rot_q, rot_k = rotary(q, positions), rotary(k, positions)                   # rotate-half
        resid_mid_L  = resid_pre_L + o_proj(attention(rot_q, rot_k, v))             # grouped-query
        resid_post_L = resid_mid_L + down_proj(silu(gate_proj(y)) * up_proj(y))     # y = post_attention_layernorm(resid_mid_L)
    logits = lm_head(norm(resid_post_last))                                   # lm_head = embed_tokens when tied

RMSNorm's hooks are TransformerLens's: hook_scale = sqrt(mean(x^2) + eps), hook_normalized =
x / scale, before the weight. Rotary embeddings use the rotate-half convention in which the hub's
q/k weights are stored (transformers permuted them from Meta's interleaved pairs), with
`rope_theta` and, for Llama 3.1 onward, `rope_scaling` of type "llama3". Weights are torch
Linear's [out, in]: products use weight.T.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backend import Backend, array_namespace
from .config import (ConfigError, check_header, config_fields, prefixed, read_json, require_bool, require_divides,
                     require_number, require_positive_int, show)
from .model import HookPoints, KVCache, Transformer, linear_t, mean_last, project, rotate_half, stacked
from .weights import CheckpointError, check_blocks, select_tensors


HOOK_NAME_HELP = (
    "valid names: hook_embed, blocks.{L}.hook_resid_pre, blocks.{L}.ln1.hook_{scale,normalized}, "
    "blocks.{L}.attn.hook_{q,k,v,rot_q,rot_k,attn_scores,pattern,z}, blocks.{L}.hook_attn_out, "
    "blocks.{L}.hook_resid_mid, blocks.{L}.ln2.hook_{scale,normalized}, "
    "blocks.{L}.mlp.hook_{pre,pre_linear,post}, blocks.{L}.hook_mlp_out, blocks.{L}.hook_resid_post, "
    "ln_final.hook_{scale,normalized}"
)


def hook_names(n_layer: int) -> list[str]:
    """Every hook point of an n_layer LLaMA, in the order the forward pass reaches them."""
    names = ["hook_embed"]
    for L in range(n_layer):
        b = f"blocks.{L}."
        names += [b + "hook_resid_pre", b + "ln1.hook_scale", b + "ln1.hook_normalized",
                  b + "attn.hook_q", b + "attn.hook_k", b + "attn.hook_v", b + "attn.hook_rot_q", b + "attn.hook_rot_k",
                  b + "attn.hook_attn_scores", b + "attn.hook_pattern", b + "attn.hook_z",
                  b + "hook_attn_out", b + "hook_resid_mid", b + "ln2.hook_scale", b + "ln2.hook_normalized",
                  b + "mlp.hook_pre", b + "mlp.hook_pre_linear", b + "mlp.hook_post", b + "hook_mlp_out",
                  b + "hook_resid_post"]
    return names + ["ln_final.hook_scale", "ln_final.hook_normalized"]


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1's "llama3" frequency scaling."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int

    def __post_init__(self):
        for name in ("factor", "low_freq_factor", "high_freq_factor"):
            require_number(f"rope_scaling.{name}", getattr(self, name), 0)
        require_positive_int("rope_scaling.original_max_position_embeddings", self.original_max_position_embeddings)
        if not self.high_freq_factor > self.low_freq_factor:          # they bound the smooth band: high / low
            raise ConfigError(f"rope_scaling.high_freq_factor: {show(self.high_freq_factor)} (expected more than "
                              f"low_freq_factor={show(self.low_freq_factor)})")


@dataclass(frozen=True)
class LlamaConfig:
    # Defaults are transformers' LlamaConfig's: a config.json that leaves a field out means them.
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    head_dim: int | None = None           # None: hidden_size / num_attention_heads
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    # Divisors of the rotary frequencies, one per pair of a head's dimensions: llama.cpp's
    # rope_freqs tensor, which GGUF files of Llama 3.1 onward carry instead of rope_scaling (the
    # "llama3" scaling, computed), and a linear scaling's factor for every frequency.
    rope_freq_factors: tuple[float, ...] | None = None

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "max_position_embeddings"):
            require_positive_int(name, getattr(self, name))
        require_divides("num_key_value_heads", self.num_key_value_heads, "num_attention_heads",
                        self.num_attention_heads, "each key/value head serves an equal group of query heads")
        if self.head_dim is not None:
            require_positive_int("head_dim", self.head_dim)
        else:
            require_divides("num_attention_heads", self.num_attention_heads, "hidden_size", self.hidden_size)
        if self.d_head % 2:
            raise ConfigError(f"head_dim: {self.d_head} is odd (expected even: rotary embeddings rotate pairs)")
        require_number("rms_norm_eps", self.rms_norm_eps, 0, 1)
        require_number("rope_theta", self.rope_theta, 0)
        for name in ("attention_bias", "mlp_bias", "tie_word_embeddings"):
            require_bool(name, getattr(self, name))
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            raise ConfigError(f"rope_scaling: {self.rope_scaling!r} (expected a RopeScaling or None)")
        factors = self.rope_freq_factors
        if factors is not None:
            if not isinstance(factors, tuple) or len(factors) != self.d_head // 2:
                raise ConfigError(f"rope_freq_factors: {len(factors) if isinstance(factors, tuple) else factors!r} "
                                  f"(expected a tuple of {self.d_head // 2} divisors, one per rotated pair)")
            for i, f in enumerate(factors):
                require_number(f"rope_freq_factors[{i}]", f, 0)

    n_layer = property(lambda self: self.num_hidden_layers)
    n_head = property(lambda self: self.num_attention_heads)
    n_kv_head = property(lambda self: self.num_key_value_heads)
    n_embd = property(lambda self: self.hidden_size)
    n_positions = property(lambda self: self.max_position_embeddings)
    d_head = property(lambda self: self.head_dim or self.hidden_size // self.num_attention_heads)
    d_mlp = property(lambda self: self.intermediate_size)

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config") -> LlamaConfig:
        """transformers 4.x writes rope_theta and rope_scaling ({"rope_type" or "type": "llama3",
        ...}); 5.x writes rope_parameters ({"rope_type": "default" or "llama3", "rope_theta", ...})."""
        check_header(raw, source, "llama", {"hidden_act": "silu"}, "LLaMA")
        key = "rope_parameters" if raw.get("rope_parameters") is not None else "rope_scaling"
        rope = raw.get(key)
        if rope is None:
            rope = {}
        if not isinstance(rope, dict):
            raise ConfigError(f"{source}: {key}: {show(rope)} (expected an object or null)")
        theta = rope.get("rope_theta", raw.get("rope_theta", 10000.0))
        kind = rope.get("rope_type", rope.get("type", "default"))
        with prefixed(source):
            if kind == "default":
                scaling = None
            elif kind == "llama3":
                needed = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
                absent = [n for n in needed if n not in rope]
                if absent:
                    raise ConfigError(f"{key}: rope type \"llama3\" needs {', '.join(absent)}")
                try:
                    scaling = RopeScaling(*(rope[n] for n in needed))
                except ConfigError as e:                         # named as the file names it
                    raise ConfigError(str(e).replace("rope_scaling.", f"{key}.", 1)) from None
            else:
                raise ConfigError(f"{key}.rope_type: {show(kind)} is not supported (only \"default\" and \"llama3\")")
        fields = config_fields(raw, source, required=("vocab_size", "hidden_size", "intermediate_size",
                                                      "num_hidden_layers", "num_attention_heads"),
                               optional=("max_position_embeddings", "rms_norm_eps", "attention_bias", "mlp_bias",
                                         "tie_word_embeddings"), nullable=("head_dim",))
        # null or left out: as many key/value heads as query heads (transformers' rule); 0 is no count
        kv = raw.get("num_key_value_heads")
        fields["num_key_value_heads"] = raw["num_attention_heads"] if kv is None else kv
        with prefixed(source):
            return cls(**fields, rope_theta=theta, rope_scaling=scaling)

    @classmethod
    def from_json(cls, path: str | Path) -> LlamaConfig:
        return cls.from_dict(read_json(path, "a LLaMA"), source=str(path))

    @classmethod
    def from_gguf(cls, file) -> LlamaConfig:
        """The config of a GGUF file's `llama.*` metadata (llama.cpp's keys, a minigpt.gguf.GGUFFile);
        the tensors say the vocabulary size, whether the embeddings are tied (no output.weight) and
        whether projections have biases. Rope scaling: "linear", and the rope_freqs tensor."""
        def key(name):
            return "llama." + name

        where = str(file.path)
        experts = file.integer(key("expert_count"), default=0, minimum=0)
        if experts:
            raise ConfigError(f"{where}: {key('expert_count')} is {experts}: a mixture of experts (Mixtral's kind), "
                              "which minigpt does not run (dense LLaMA only)")
        heads = file.integer(key("attention.head_count"))
        width = file.integer(key("embedding_length"))
        head_dim = file.integer(key("attention.key_length"), default=None)
        if file.integer(key("attention.value_length"), default=head_dim) != head_dim:
            raise ConfigError(f"{where}: {key('attention.value_length')} differs from {key('attention.key_length')}="
                              f"{head_dim} (LLaMA's values and keys have one head size)")
        if head_dim is None:
            with prefixed(where):
                require_divides(key("attention.head_count"), heads, key("embedding_length"), width)
        d_head = head_dim or width // heads
        rotated = file.integer(key("rope.dimension_count"), default=d_head)
        if rotated != d_head:
            raise ConfigError(f"{where}: {key('rope.dimension_count')} is {rotated}, not the head size {d_head} "
                              "(LLaMA rotates every dimension of a head)")
        embed = file.tensors.get("token_embd.weight")
        if embed is None or len(embed.shape) != 2:
            raise ConfigError(f"{where}: no 2-D tensor token_embd.weight (the token embeddings)")
        vocab = file.integer(key("vocab_size"), default=embed.shape[0])
        if vocab != embed.shape[0]:
            raise ConfigError(f"{where}: {key('vocab_size')} is {vocab}, but token_embd.weight has {embed.shape[0]} rows")
        factors = _gguf_rope_factors(file, key, d_head // 2)
        with prefixed(where):
            return cls(vocab_size=vocab, hidden_size=width, intermediate_size=file.integer(key("feed_forward_length")),
                       num_hidden_layers=file.integer(key("block_count")), num_attention_heads=heads,
                       num_key_value_heads=file.integer(key("attention.head_count_kv"), default=heads),
                       max_position_embeddings=file.integer(key("context_length")),
                       rms_norm_eps=file.number(key("attention.layer_norm_rms_epsilon")),
                       rope_theta=file.number(key("rope.freq_base"), default=10000.0), head_dim=head_dim,
                       attention_bias="blk.0.attn_q.bias" in file.tensors, mlp_bias="blk.0.ffn_up.bias" in file.tensors,
                       tie_word_embeddings="output.weight" not in file.tensors, rope_freq_factors=factors)


def _gguf_rope_factors(file, key, pairs: int) -> tuple[float, ...] | None:
    """The divisor of each rotary frequency a GGUF file asks for: a linear scaling's factor
    (`rope.scaling.type` "linear", or the older `rope.scale_linear`) times the rope_freqs tensor,
    or None. Other scalings (yarn, longrope) are refused by name."""
    where = str(file.path)
    kind = file.string(key("rope.scaling.type"), default="none")
    linear = file.number(key("rope.scale_linear"), default=1.0)
    if kind == "linear":
        linear = file.number(key("rope.scaling.factor"))
    elif kind != "none":
        raise ConfigError(f"{where}: {key('rope.scaling.type')} is {kind!r} (minigpt applies \"none\" and \"linear\", and "
                          "llama.cpp's rope_freqs tensor)")
    if not linear > 0:
        raise ConfigError(f"{where}: the linear rope scaling factor is {linear} (expected a positive number)")
    if linear == 1.0 and "rope_freqs.weight" not in file.tensors:
        return None
    if pairs > 1 << 16:                                     # before a tuple of that many numbers
        raise ConfigError(f"{where}: a head size of {2 * pairs:,} (at most {1 << 17:,})")
    factors = np.full(pairs, float(linear))
    if "rope_freqs.weight" in file.tensors:
        info = file.tensors["rope_freqs.weight"]
        if info.shape != (pairs,):
            raise ConfigError(f"{where}: tensor 'rope_freqs.weight' has shape {info.shape}, expected ({pairs},): one "
                              "divisor per rotated pair of a head's dimensions")
        file.check_kinds(["rope_freqs.weight"])
        freqs = np.asarray(file.tensor("rope_freqs.weight", lazy=False), dtype=np.float64)
        if not np.all(np.isfinite(freqs) & (freqs > 0)):
            raise ConfigError(f"{where}: tensor 'rope_freqs.weight' holds {freqs[~(np.isfinite(freqs) & (freqs > 0))][0]} "
                              "(expected positive divisors)")
        factors = factors * freqs
    return None if np.all(factors == 1.0) else tuple(float(f) for f in factors)


def expected_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter under its name inside `model.` (and `lm_head.weight` if untied)."""
    D, V, F = config.hidden_size, config.vocab_size, config.intermediate_size
    Q, KV = config.n_head * config.d_head, config.n_kv_head * config.d_head
    shapes = {"embed_tokens.weight": (V, D), "norm.weight": (D,)}
    for i in range(config.num_hidden_layers):
        b = f"layers.{i}."
        shapes.update({b + "input_layernorm.weight": (D,), b + "post_attention_layernorm.weight": (D,),
                       b + "self_attn.q_proj.weight": (Q, D), b + "self_attn.k_proj.weight": (KV, D),
                       b + "self_attn.v_proj.weight": (KV, D), b + "self_attn.o_proj.weight": (D, Q),
                       b + "mlp.gate_proj.weight": (F, D), b + "mlp.up_proj.weight": (F, D),
                       b + "mlp.down_proj.weight": (D, F)})
        if config.attention_bias:
            shapes.update({b + "self_attn.q_proj.bias": (Q,), b + "self_attn.k_proj.bias": (KV,),
                           b + "self_attn.v_proj.bias": (KV,), b + "self_attn.o_proj.bias": (D,)})
        if config.mlp_bias:
            shapes.update({b + "mlp.gate_proj.bias": (F,), b + "mlp.up_proj.bias": (F,), b + "mlp.down_proj.bias": (D,)})
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, D)
    return shapes


def canonical_state_dict(tensors: dict, config: LlamaConfig, source: str = "checkpoint") -> dict:
    check_blocks(tensors, config.num_hidden_layers, r"(?:^|\.)layers\.(\d+)\.", "num_hidden_layers", source)
    expected = expected_shapes(config)

    def bare(name: str, tensor):
        if name.endswith("rotary_emb.inv_freq"):             # a buffer some files carry: recomputed here
            return None
        if name == "lm_head.weight" and config.tie_word_embeddings:
            if tuple(tensor.shape) != expected["embed_tokens.weight"]:
                raise CheckpointError(f"{source}: {name!r} has shape {tuple(tensor.shape)}, expected "
                                      f"{expected['embed_tokens.weight']} (tied to embed_tokens)")
            return None
        return name if name == "lm_head.weight" else name.removeprefix("model.")
    return select_tensors(tensors, expected, bare, source, f"a LLaMA with num_hidden_layers={config.num_hidden_layers}")


# llama.cpp's tensor names -> the checkpoint's (inside `model.`), block by block.
GGUF_NAMES = {"token_embd": "embed_tokens", "output_norm": "norm", "output": "lm_head",
              "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
              "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
              "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
              "ffn_down": "mlp.down_proj"}


def gguf_name(name: str) -> str:
    """blk.3.attn_q.weight -> layers.3.self_attn.q_proj.weight; a name not of LLaMA's is kept,
    to be refused as unexpected by name."""
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in GGUF_NAMES and parts[1].isascii() and parts[1].isdigit():
        return f"layers.{int(parts[1])}.{GGUF_NAMES[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in GGUF_NAMES:
        return f"{GGUF_NAMES[parts[0]]}.{parts[1]}"
    return name


def gguf_interleaved_heads(config: LlamaConfig, name: str) -> int | None:
    """How many heads' rows llama.cpp's converter interleaved in this tensor (q: the query heads,
    k: the key/value heads; see gguf.interleaved_rows), or None."""
    if ".self_attn.q_proj." in name:
        return config.n_head
    if ".self_attn.k_proj." in name:
        return config.n_kv_head
    return None


# ---------------------------------------------------------------------------------------------
# Primitives


def inverse_frequencies(config: LlamaConfig) -> np.ndarray:
    """float32 [d_head / 2]: theta^(-2i / d_head), and with "llama3" scaling the long wavelengths
    divided by `factor`, the short ones kept, and those between interpolated smoothly."""
    d = config.d_head
    inv = (1.0 / (config.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))).astype(np.float32)
    if config.rope_freq_factors is not None:                  # llama.cpp's divisors (GGUF files)
        inv = (inv.astype(np.float64) / np.array(config.rope_freq_factors)).astype(np.float32)
    s = config.rope_scaling
    if s is None:
        return inv
    wavelen = 2 * math.pi / inv.astype(np.float64)
    low, high = s.original_max_position_embeddings / s.low_freq_factor, s.original_max_position_embeddings / s.high_freq_factor
    scaled = np.where(wavelen > low, inv / s.factor, inv)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = ~(wavelen < high) & ~(wavelen > low)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def silu(x):
    """x * sigmoid(x) = x / (1 + exp(-x)), in float32, step by step in one new buffer: the
    same floats as the formula written out, without its three temporaries (a prefill's are
    800 kB each, fresh pages every time: 3x slower)."""
    xp = array_namespace(x)
    y = xp.negative(x)
    xp.exp(y, out=y)
    y += 1.0
    return xp.divide(x, y, out=y)


def parameter_count(config: LlamaConfig) -> int:
    return sum(math.prod(shape) for shape in expected_shapes(config).values())


# ---------------------------------------------------------------------------------------------
# The model


class Llama(Transformer):
    """LLaMA. Parameters keep their names inside the checkpoint's `model.`:

    self.embed_tokens                        # [vocab, d_model]
    self.layers[L]["self_attn"]["q_proj"]    # {"weight": [n_head * d_head, d_model]} (+ "bias" with attention_bias)
    self.layers[L]["self_attn"]["k_proj"]    # [n_kv_head * d_head, d_model]: grouped-query attention
    self.layers[L]["mlp"]["gate_proj"], ["up_proj"], ["down_proj"]
    self.layers[L]["input_layernorm"], ["post_attention_layernorm"], self.norm   # RMSNorm weights
    self.lm_head                             # [vocab, d_model]: embed_tokens itself when tied
    """

    config_class = LlamaConfig
    model_type = "llama"          # config.json's model_type
    canonical_state_dict = staticmethod(canonical_state_dict)
    gguf_architecture = "llama"   # a GGUF file's general.architecture
    gguf_name = staticmethod(gguf_name)
    gguf_interleaved_heads = staticmethod(gguf_interleaved_heads)
    gguf_config_tensors = ("rope_freqs.weight",)   # read into the config, not a parameter
    repr_fields = ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "hidden_size", "vocab_size")
    hook_name_help = HOOK_NAME_HELP

    def __init__(self, config: LlamaConfig, state_dict: dict, source: str = "state_dict",
                 backend: str | Backend = "numpy"):
        tree = self._to_device(canonical_state_dict(state_dict, config, source=source), source, backend)
        self.config = config
        self.embed_tokens = tree["embed_tokens"]["weight"]
        self.layers = [tree["layers"][str(L)] for L in range(config.num_hidden_layers)]
        # q/k/v, and gate/up, multiplied as one matrix each (at SmolLM2's width, one product of
        # 960 rows reads its weights twice as fast as three of 192-576: OpenBLAS threads it)
        self.products = [{"attn": stacked([b["self_attn"][n] for n in ("q_proj", "k_proj", "v_proj")], self.xp),
                          "mlp": stacked([b["mlp"]["gate_proj"], b["mlp"]["up_proj"]], self.xp)} for b in self.layers]
        self.norm = tree["norm"]
        self.lm_head = self.embed_tokens if config.tie_word_embeddings else tree["lm_head"]["weight"]
        self.hook_names = hook_names(config.num_hidden_layers)
        self.inv_freq = inverse_frequencies(config)                           # [d_head / 2], host
        self.cos = self.sin = self.backend.to_device(np.zeros((0, config.d_head), np.float32))

    def rotary_table(self, upto: int):
        """cos and sin of the angles of positions 0..upto-1 at least, [rows, d_head] on the
        device. Grown (to a power of two, at most max_position_embeddings rows) when a pass
        reaches past it: memory follows the positions used, not the config's maximum (Llama
        3.1's 131,072 would cost 134 MB, and a hostile config any amount)."""
        if upto > len(self.cos):
            rows = min(max(256, 1 << (upto - 1).bit_length()), self.config.max_position_embeddings)
            angles = np.arange(rows, dtype=np.float32)[:, None] * self.inv_freq        # [rows, d_head / 2]
            angles = np.concatenate([angles, angles], axis=-1)                # [rows, d_head]: (i, i + d/2) share
            self.cos, self.sin = (self.backend.to_device(f(angles)) for f in (np.cos, np.sin))
        return self.cos, self.sin

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
        would alone."""
        hook = hook or HookPoints({}, None, set())
        self._check_stop(stop_at_layer, start_at_layer, cache, last_only)
        ids, positions, tokens, mask_bias, start, real = self._prepare(tokens, attention_mask, cache, hook)
        cos, sin = self.rotary_table(int(positions.max()) + 1)
        at = self.backend.to_device(np.maximum(positions, 0))                  # [batch, pos]
        rotary = (cos[at][:, :, None], sin[at][:, :, None])                    # [batch, pos, 1, d_head] each

        if start_at_layer or resid_pre is not None:
            x = self._check_resid_pre(resid_pre, start_at_layer, ids.shape, cache)
        else:
            x = hook("hook_embed", self.embed_tokens[tokens])                  # [batch, pos, d_model]
        for L, block in enumerate(self.layers[start_at_layer:stop_at_layer], start_at_layer):
            kv = (cache.keys[L], cache.values[L]) if cache is not None else None
            x = self.block(L, block, self.products[L], x, hook, mask_bias, kv, start, rotary)
        if stop_at_layer is not None:
            return x                                                           # [batch, pos, d_model]
        self._advance(cache, ids.shape[1], real)
        if last_only:
            x = x[:, -1:]
            hook.positions = positions[:, -1:]
        x = self.rms_norm("ln_final", x, self.norm, hook)
        return linear_t(x, self.lm_head)                                       # [batch, pos, vocab]

    def block(self, L: int, p: dict, products: dict, x, hook: HookPoints, mask_bias, kv, start: int, rotary):
        b = f"blocks.{L}."
        resid_pre = hook(b + "hook_resid_pre", x)                              # [batch, pos, d_model]
        ln1 = self.rms_norm(b + "ln1", resid_pre, p["input_layernorm"], hook)
        attn_out = hook(b + "hook_attn_out", self.attention(b + "attn", ln1, products["attn"], p["self_attn"]["o_proj"],
                                                            hook, mask_bias, kv, start, rotary))
        resid_mid = hook(b + "hook_resid_mid", resid_pre + attn_out)
        ln2 = self.rms_norm(b + "ln2", resid_mid, p["post_attention_layernorm"], hook)
        mlp_out = hook(b + "hook_mlp_out", self.mlp(b + "mlp", ln2, products["mlp"], p["mlp"]["down_proj"], hook))
        return hook(b + "hook_resid_post", resid_mid + mlp_out)

    def rms_norm(self, name: str, x, p: dict, hook: HookPoints):
        scale = hook(name + ".hook_scale", (mean_last(x * x) + self.config.rms_norm_eps) ** 0.5)  # [batch, pos, 1]
        normalized = hook(name + ".hook_normalized", x / scale)               # before the weight
        return normalized * p["weight"]

    def attention(self, name: str, x, qkv: list, o_proj: dict, hook: HookPoints, mask_bias, kv, start: int, rotary):
        c = self.config
        batch, seq, _ = x.shape
        q, k, v = project(x, qkv)                                              # q_proj, k_proj, v_proj
        q = hook(name + ".hook_q", q.reshape(batch, seq, c.n_head, c.d_head))
        k = hook(name + ".hook_k", k.reshape(batch, seq, c.n_kv_head, c.d_head))
        v = hook(name + ".hook_v", v.reshape(batch, seq, c.n_kv_head, c.d_head))
        cos, sin = rotary                                                      # [batch, pos, 1, d_head]
        q = hook(name + ".hook_rot_q", q * cos + rotate_half(q) * sin)         # [batch, pos, head, d_head]
        k = hook(name + ".hook_rot_k", k * cos + rotate_half(k) * sin)         # [batch, pos, kv_head, d_head]
        z = self.attend(name, q, k, v, hook, mask_bias, kv, start)             # [batch, pos, head, d_head]
        return linear_t(z.reshape(batch, seq, c.n_head * c.d_head), **o_proj)  # [batch, pos, d_model]

    def mlp(self, name: str, x, gate_up: list, down_proj: dict, hook: HookPoints):
        gate, up = project(x, gate_up)                                         # gate_proj, up_proj
        gate = hook(name + ".hook_pre", gate)                                  # [batch, pos, d_mlp]
        up = hook(name + ".hook_pre_linear", up)
        post = silu(gate)
        post *= up                                                             # silu's own buffer
        post = hook(name + ".hook_post", post)
        return linear_t(post, **down_proj)                                     # [batch, pos, d_model]
