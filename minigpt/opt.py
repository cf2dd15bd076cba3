"""OPT's forward pass in NumPy (Zhang et al. 2022; `OPTForCausalLM`), every residual-stream step
under the TransformerLens hook names that GPT-2 uses, so that ActAdd is the same addition.

    resid_pre_0 = project_in(embed_tokens[tokens]) + embed_positions[positions + 2]
    for each block L (pre-LayerNorm: every size but opt-350m):
        resid_mid_L  = resid_pre_L + attn(self_attn_layer_norm(resid_pre_L))   # hook_attn_out
        resid_post_L = resid_mid_L + mlp(final_layer_norm(resid_mid_L))        # hook_mlp_out
    for each block L (post-LayerNorm, opt-350m):
        resid_mid_L  = self_attn_layer_norm(resid_pre_L + attn(resid_pre_L))
        resid_post_L = final_layer_norm(resid_mid_L + mlp(resid_mid_L))
    logits = project_out(final_layer_norm(resid_post_last)) @ lm_head.T        # decoder's final LN: pre-LN only

Differences from GPT-2: learned positions offset by 2 (row 0 and 1 of embed_positions are never a
real token's; padding reads row 1, as transformers does), separate q/k/v projections with
biases, q scaled by 1/sqrt(d_head) before the product, ReLU MLP (fc1, fc2), an unembedding tied to
embed_tokens or its own lm_head, and opt-350m's 512-wide embeddings projected to and from the
1024-wide residual stream. Weights are torch Linear's [out, in]: products use weight.T.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backend import Backend, array_namespace
from .config import (check_header, config_fields, prefixed, read_json, require_bool, require_divides,
                     require_positive_int)
from .model import HookPoints, KVCache, Transformer, hook_names, linear_t
from .weights import CheckpointError, check_blocks, select_tensors

POSITION_OFFSET = 2   # OPT's learned positions start at row 2 (fairseq kept rows for padding)
LAYER_NORM_EPS = 1e-5  # torch's LayerNorm default; OPT's config has no field for it

# Fields of transformers' OPTConfig that change the computation, and the value implemented here.
FIXED_FIELDS = {"activation_function": "relu", "enable_bias": True, "layer_norm_elementwise_affine": True,
                 "_remove_final_layer_norm": False}


@dataclass(frozen=True)
class OPTConfig:
    vocab_size: int = 50272
    hidden_size: int = 768               # the residual stream, d_model
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    ffn_dim: int = 3072
    max_position_embeddings: int = 2048
    word_embed_proj_dim: int | None = None  # embeddings' width (512 in opt-350m, projected in and out); None: hidden_size
    do_layer_norm_before: bool = True    # False only in opt-350m: post-LayerNorm blocks
    tie_word_embeddings: bool = True     # lm_head is embed_tokens

    def __post_init__(self):
        if self.word_embed_proj_dim is None:                   # as transformers' OPTConfig
            object.__setattr__(self, "word_embed_proj_dim", self.hidden_size)
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "ffn_dim",
                     "max_position_embeddings", "word_embed_proj_dim"):
            require_positive_int(name, getattr(self, name))
        require_divides("num_attention_heads", self.num_attention_heads, "hidden_size", self.hidden_size)
        for name in ("do_layer_norm_before", "tie_word_embeddings"):
            require_bool(name, getattr(self, name))

    # The sizes every family's config has (generation, ActAdd and the evals read these).
    n_layer = property(lambda self: self.num_hidden_layers)
    n_head = property(lambda self: self.num_attention_heads)
    n_embd = property(lambda self: self.hidden_size)
    n_positions = property(lambda self: self.max_position_embeddings)
    d_head = property(lambda self: self.hidden_size // self.num_attention_heads)
    d_mlp = property(lambda self: self.ffn_dim)

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config") -> OPTConfig:
        check_header(raw, source, "opt", FIXED_FIELDS, "OPT")
        fields = config_fields(raw, source, required=("vocab_size", "hidden_size", "num_hidden_layers",
                                                      "num_attention_heads", "ffn_dim", "max_position_embeddings"),
                               optional=("do_layer_norm_before", "tie_word_embeddings"),
                               nullable=("word_embed_proj_dim",))
        with prefixed(source):
            return cls(**fields)

    @classmethod
    def from_json(cls, path: str | Path) -> OPTConfig:
        return cls.from_dict(read_json(path, "an OPT"), source=str(path))


def expected_shapes(config: OPTConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter under its name inside `model.decoder.` (and `lm_head.weight` if untied)."""
    D, V, E, F = config.hidden_size, config.vocab_size, config.word_embed_proj_dim, config.ffn_dim
    shapes = {"embed_tokens.weight": (V, E), "embed_positions.weight": (config.max_position_embeddings + POSITION_OFFSET, D)}
    if E != D:
        shapes.update({"project_in.weight": (D, E), "project_out.weight": (E, D)})
    for i in range(config.num_hidden_layers):
        b = f"layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes.update({f"{b}self_attn.{proj}.weight": (D, D), f"{b}self_attn.{proj}.bias": (D,)})
        shapes.update({b + "self_attn_layer_norm.weight": (D,), b + "self_attn_layer_norm.bias": (D,),
                       b + "fc1.weight": (F, D), b + "fc1.bias": (F,), b + "fc2.weight": (D, F), b + "fc2.bias": (D,),
                       b + "final_layer_norm.weight": (D,), b + "final_layer_norm.bias": (D,)})
    if config.do_layer_norm_before:
        shapes.update({"final_layer_norm.weight": (D,), "final_layer_norm.bias": (D,)})
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, E)
    return shapes


def canonical_state_dict(tensors: dict, config: OPTConfig, source: str = "checkpoint") -> dict:
    """Names inside the decoder (`model.decoder.x`, or the hub's older `decoder.x`, becomes `x`),
    checked against the config's shapes. A tied lm_head stored beside embed_tokens must equal
    its shape and is dropped (it is embed_tokens)."""
    check_blocks(tensors, config.num_hidden_layers, r"(?:^|\.)layers\.(\d+)\.", "num_hidden_layers", source)
    expected = expected_shapes(config)

    def bare(name: str, tensor):
        if name == "lm_head.weight":
            if config.tie_word_embeddings:
                if tuple(tensor.shape) != expected["embed_tokens.weight"]:
                    raise CheckpointError(f"{source}: {name!r} has shape {tuple(tensor.shape)}, expected "
                                      f"{expected['embed_tokens.weight']} (tied to embed_tokens)")
                return None
            return name
        return name.removeprefix("model.").removeprefix("decoder.")
    return select_tensors(tensors, expected, bare, source, f"an OPT with num_hidden_layers={config.num_hidden_layers}")


def relu(x):
    return array_namespace(x).maximum(x, x.dtype.type(0))          # a float32 zero: no promotion


class OPT(Transformer):
    """OPT. Parameters keep their names inside the checkpoint's `model.decoder.`:

    self.embed_tokens, self.embed_positions     # [vocab, E], [n_positions + 2, d_model]
    self.project_in, self.project_out           # [d_model, E], [E, d_model]; None when E == d_model
    self.layers[L]["self_attn"]["q_proj"]       # {"weight": [d_model, d_model], "bias": [d_model]}
    self.layers[L]["fc1"], ["fc2"], ["self_attn_layer_norm"], ["final_layer_norm"]
    self.final_layer_norm                       # None in post-LayerNorm models
    self.lm_head                                # [vocab, E]: embed_tokens itself when tied
    """

    config_class = OPTConfig
    model_type = "opt"          # config.json's model_type
    canonical_state_dict = staticmethod(canonical_state_dict)
    repr_fields = ("num_hidden_layers", "num_attention_heads", "hidden_size", "vocab_size")

    def __init__(self, config: OPTConfig, state_dict: dict, source: str = "state_dict",
                 backend: str | Backend = "numpy"):
        tree = self._to_device(canonical_state_dict(state_dict, config, source=source), source, backend)
        self.config = config
        self.embed_tokens = tree["embed_tokens"]["weight"]
        self.embed_positions = tree["embed_positions"]["weight"]
        self.project_in = tree.get("project_in", {}).get("weight")
        self.project_out = tree.get("project_out", {}).get("weight")
        self.layers = [tree["layers"][str(L)] for L in range(config.num_hidden_layers)]
        self.final_layer_norm = tree.get("final_layer_norm")
        self.lm_head = self.embed_tokens if config.tie_word_embeddings else tree["lm_head"]["weight"]
        # A post-LayerNorm OPT ends with its last block's LayerNorm: it has no ln_final.
        self.hook_names = [n for n in hook_names(config.num_hidden_layers)
                           if self.final_layer_norm is not None or not n.startswith("ln_final.")]

    def _tree(self) -> dict:
        tree = {"embed_tokens": {"weight": self.embed_tokens}, "embed_positions": {"weight": self.embed_positions},
                "layers": {str(L): block for L, block in enumerate(self.layers)}}
        if self.project_in is not None:
            tree.update(project_in={"weight": self.project_in}, project_out={"weight": self.project_out})
        if self.final_layer_norm is not None:
            tree["final_layer_norm"] = self.final_layer_norm
        if not self.config.tie_word_embeddings:
            tree["lm_head"] = {"weight": self.lm_head}
        return tree

    # --- the forward pass ----------------------------------------------------------------------

    def forward(self, tokens, hook: HookPoints | None = None, *, attention_mask=None,
                cache: KVCache | None = None, last_only: bool = False,
                start_at_layer: int = 0, resid_pre=None, stop_at_layer: int | None = None):
        """Logits [batch, pos, vocab] (pos = 1 with `last_only`); arguments as GPT2.forward."""
        hook = hook or HookPoints({}, None, set())
        self._check_stop(stop_at_layer, start_at_layer, cache, last_only)
        ids, positions, tokens, mask_bias, start, real = self._prepare(tokens, attention_mask, cache, hook)

        if start_at_layer or resid_pre is not None:
            x = self._check_resid_pre(resid_pre, start_at_layer, ids.shape, cache)
        else:
            embed = self.embed_tokens[tokens]                                  # [batch, pos, E]
            if self.project_in is not None:
                embed = linear_t(embed, self.project_in)                       # [batch, pos, d_model]
            embed = hook("hook_embed", embed)
            rows = np.where(positions < 0, -1, positions) + POSITION_OFFSET     # padding reads row 1
            pos_embed = hook("hook_pos_embed", self.embed_positions[self.backend.to_device(rows)])  # [batch, pos, d_model]
            x = embed + pos_embed
        for L, block in enumerate(self.layers[start_at_layer:stop_at_layer], start_at_layer):
            kv = (cache.keys[L], cache.values[L]) if cache is not None else None
            x = self.block(L, block, x, hook, mask_bias, kv, start)
        if stop_at_layer is not None:
            return x                                                           # [batch, pos, d_model]
        self._advance(cache, ids.shape[1], real)
        if last_only:
            x = x[:, -1:]
            hook.positions = positions[:, -1:]
        if self.final_layer_norm is not None:
            x = self.layer_norm("ln_final", x, self.final_layer_norm, hook, LAYER_NORM_EPS)
        if self.project_out is not None:
            x = linear_t(x, self.project_out)                                  # [batch, pos, E]
        return linear_t(x, self.lm_head)                                       # [batch, pos, vocab]

    def block(self, L: int, p: dict, x, hook: HookPoints, mask_bias, kv, start: int):
        b = f"blocks.{L}."
        resid_pre = hook(b + "hook_resid_pre", x)                              # [batch, pos, d_model]
        pre = self.config.do_layer_norm_before
        attn_in = self.layer_norm(b + "ln1", resid_pre, p["self_attn_layer_norm"], hook, LAYER_NORM_EPS) if pre else resid_pre
        attn_out = hook(b + "hook_attn_out", self.attention(b + "attn", attn_in, **p["self_attn"], hook=hook,
                                                            mask_bias=mask_bias, kv=kv, start=start))
        resid_mid = resid_pre + attn_out
        if not pre:
            resid_mid = self.layer_norm(b + "ln1", resid_mid, p["self_attn_layer_norm"], hook, LAYER_NORM_EPS)
        resid_mid = hook(b + "hook_resid_mid", resid_mid)
        mlp_in = self.layer_norm(b + "ln2", resid_mid, p["final_layer_norm"], hook, LAYER_NORM_EPS) if pre else resid_mid
        mlp_out = hook(b + "hook_mlp_out", self.mlp(b + "mlp", mlp_in, p["fc1"], p["fc2"], hook))
        resid_post = resid_mid + mlp_out
        if not pre:
            resid_post = self.layer_norm(b + "ln2", resid_post, p["final_layer_norm"], hook, LAYER_NORM_EPS)
        return hook(b + "hook_resid_post", resid_post)

    def attention(self, name: str, x, q_proj: dict, k_proj: dict, v_proj: dict, out_proj: dict,
                  hook: HookPoints, mask_bias, kv, start: int):
        c = self.config
        batch, seq, d_model = x.shape
        split = (batch, seq, c.n_head, c.d_head)
        q = hook(name + ".hook_q", linear_t(x, **q_proj).reshape(split))       # [batch, pos, head, d_head]
        k = hook(name + ".hook_k", linear_t(x, **k_proj).reshape(split))
        v = hook(name + ".hook_v", linear_t(x, **v_proj).reshape(split))
        z = self.attend(name, q, k, v, hook, mask_bias, kv, start)             # [batch, pos, head, d_head]
        return linear_t(z.reshape(batch, seq, d_model), **out_proj)            # [batch, pos, d_model]

    def mlp(self, name: str, x, fc1: dict, fc2: dict, hook: HookPoints):
        pre = hook(name + ".hook_pre", linear_t(x, **fc1))                     # [batch, pos, d_mlp]
        post = hook(name + ".hook_post", relu(pre))
        return linear_t(post, **fc2)                                           # [batch, pos, d_model]
