"""GPT-2's forward pass in NumPy, every residual-stream step under its TransformerLens hook name.

    resid_pre_0 = wte[tokens] + wpe[positions]
    for each block L:
        resid_mid_L  = resid_pre_L + attn(ln_1(resid_pre_L))      # hook_attn_out
        resid_post_L = resid_mid_L + mlp(ln_2(resid_mid_L))       # hook_mlp_out
        resid_pre_{L+1} = resid_post_L
    logits = ln_f(resid_post_last) @ wte.T

ActAdd adds a matrix to `blocks.{L}.hook_resid_pre`; everything here exists so that that
addition is a plain array addition at a named point.

Array code gets its namespace from the arrays (`array_namespace(x)`) or from `self.xp`, never
from a bare `np.` call on an activation, so that CuPy runs the same code (see backend.py).
Token ids, masks and position ids are checked and made on the host with NumPy, then moved.
"""

from __future__ import annotations

import numpy as np

from .backend import Backend
from .config import GPT2Config
from .model import HookPoints, KVCache, Transformer, gelu_new, hook_names, linear, linear_t
from .weights import canonical_state_dict


class GPT2(Transformer):
    """GPT-2 with tied unembedding. Parameters keep their checkpoint names:

    self.wte, self.wpe                   # [vocab, d_model], [n_positions, d_model]
    self.h[L]["ln_1"]["weight"], ...     # h.{L}.ln_1.weight in the checkpoint
    self.h[L]["attn"]["c_attn"]          # {"weight": [d_model, 3*d_model], "bias": [3*d_model]}
    self.ln_f                            # {"weight": [d_model], "bias": [d_model]}

    Every parameter is an array of `self.backend` (NumPy by default; CuPy with backend="cupy"),
    moved there once, here.
    """

    config_class = GPT2Config
    model_type = "gpt2"          # config.json's model_type
    canonical_state_dict = staticmethod(canonical_state_dict)
    repr_fields = ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size")

    def __init__(self, config: GPT2Config, state_dict: dict, source: str = "state_dict",
                 backend: str | Backend = "numpy"):
        tree = self._to_device(canonical_state_dict(state_dict, config, source=source), source, backend)
        self.config = config
        self.wte, self.wpe = tree["wte"]["weight"], tree["wpe"]["weight"]
        self.h = [tree["h"][str(L)] for L in range(config.n_layer)]
        self.ln_f = tree["ln_f"]
        self.hook_names = hook_names(config.n_layer)

    def _tree(self) -> dict:
        return {"wte": {"weight": self.wte}, "wpe": {"weight": self.wpe},
                "h": {str(L): block for L, block in enumerate(self.h)}, "ln_f": self.ln_f}

    # --- the forward pass ----------------------------------------------------------------------

    def forward(self, tokens, hook: HookPoints | None = None, *, attention_mask=None,
                cache: KVCache | None = None, last_only: bool = False,
                start_at_layer: int = 0, resid_pre=None, stop_at_layer: int | None = None):
        """Logits [batch, pos, vocab] (pos = 1 with `last_only`) for `tokens`.

        attention_mask  [batch, pos] of 0/1 or bool, 1 for real tokens, 0 for left padding.
                        Each row's position ids count its real tokens (HF's cumsum(mask) - 1),
                        so a left-padded row computes what it would alone.
        cache           a KVCache: this pass's keys and values are appended to it, and its
                        earlier positions are attended to. Prefill with the prompt, then pass
                        one token per row per step.
        last_only       unembed the last position only (what generation needs).
        start_at_layer  with `resid_pre`, the activation at blocks.{L}.hook_resid_pre of these
                        tokens (e.g. cached from an unsteered pass): run blocks L onward only,
                        from it, as TransformerLens's start_at_layer. Hooks at that point and
                        later run as usual; a sweep over layers skips the blocks before each.
        stop_at_layer   return the residual stream entering block L (L = n_layer: leaving the
                        last block, before ln_final) instead of logits, running nothing after
                        it, as TransformerLens's stop_at_layer: reading activations at early
                        layers costs only those layers.
        """
        hook = hook or HookPoints({}, None, set())
        self._check_stop(stop_at_layer, start_at_layer, cache, last_only)
        ids, positions, tokens, mask_bias, start, real = self._prepare(tokens, attention_mask, cache, hook)

        if start_at_layer or resid_pre is not None:
            x = self._check_resid_pre(resid_pre, start_at_layer, ids.shape, cache)
        else:
            embed = hook("hook_embed", self.wte[tokens])                       # [batch, pos, d_model]
            pos_embed = hook("hook_pos_embed", self.wpe[self.backend.to_device(np.maximum(positions, 0))])  # [batch, pos, d_model]
            x = embed + pos_embed
        for L, block in enumerate(self.h[start_at_layer:stop_at_layer], start_at_layer):
            kv = (cache.keys[L], cache.values[L]) if cache is not None else None
            x = self.block(L, block, x, hook, mask_bias, kv, start)
        if stop_at_layer is not None:
            return x                                                           # [batch, pos, d_model]
        self._advance(cache, ids.shape[1], real)
        if last_only:
            x = x[:, -1:]
            hook.positions = positions[:, -1:]
        x = self.layer_norm("ln_final", x, self.ln_f, hook, self.config.layer_norm_epsilon)
        return linear_t(x, self.wte)                                           # [batch, pos, vocab]

    def block(self, L: int, p: dict, x, hook: HookPoints, mask_bias, kv, start: int):
        b = f"blocks.{L}."
        resid_pre = hook(b + "hook_resid_pre", x)                              # [batch, pos, d_model]
        ln1 = self.layer_norm(b + "ln1", resid_pre, p["ln_1"], hook, self.config.layer_norm_epsilon)
        attn_out = hook(b + "hook_attn_out", self.attention(b + "attn", ln1, **p["attn"], hook=hook,
                                                            mask_bias=mask_bias, kv=kv, start=start))
        resid_mid = hook(b + "hook_resid_mid", resid_pre + attn_out)
        ln2 = self.layer_norm(b + "ln2", resid_mid, p["ln_2"], hook, self.config.layer_norm_epsilon)
        mlp_out = hook(b + "hook_mlp_out", self.mlp(b + "mlp", ln2, **p["mlp"], hook=hook))
        return hook(b + "hook_resid_post", resid_mid + mlp_out)

    def attention(self, name: str, x, c_attn: dict, c_proj: dict, hook: HookPoints, mask_bias, kv, start: int):
        c = self.config
        batch, seq, d_model = x.shape
        qkv = linear(x, **c_attn).reshape(batch, seq, 3, c.n_head, c.d_head)  # q, k, v in that order
        q = hook(name + ".hook_q", qkv[:, :, 0])                               # [batch, pos, head, d_head]
        k = hook(name + ".hook_k", qkv[:, :, 1])
        v = hook(name + ".hook_v", qkv[:, :, 2])
        z = self.attend(name, q, k, v, hook, mask_bias, kv, start)             # [batch, pos, head, d_head]
        return linear(z.reshape(batch, seq, d_model), **c_proj)                # [batch, pos, d_model]

    def mlp(self, name: str, x, c_fc: dict, c_proj: dict, hook: HookPoints):
        pre = hook(name + ".hook_pre", linear(x, **c_fc))                      # [batch, pos, d_mlp]
        post = hook(name + ".hook_post", gelu_new(pre))
        return linear(post, **c_proj)                                          # [batch, pos, d_model]
